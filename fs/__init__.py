"""The umbrafs mount: on-disk format, crypto layers and the pyfuse3 adapter."""
