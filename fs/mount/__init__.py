"""The pyfuse3 + trio adapter: the only part of umbrafs that imports either."""
