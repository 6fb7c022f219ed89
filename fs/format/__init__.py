"""The on-disk format as pure bytes: layout and offsets, key derivation and AEADs, names, xattrs, entropy. No file descriptors, no pyfuse3, no trio."""
