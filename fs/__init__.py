"""The umbrafs drive: format/ (pure bytes) < vault/ (the backing directory, offline and in the mount) < mount/ (the pyfuse3 adapter)."""
