"""The backing directory, synchronous: headers, contents, config, key walks, fsck, versions, restore, rotation. Used offline by the CLI and inside the mount."""
