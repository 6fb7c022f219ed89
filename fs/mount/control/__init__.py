"""The mount's control socket (lock, unlock, unmount, status, rotate, versions, restore)."""
