"""The audit daemon: receives events from mounts, keeps the ledger."""
