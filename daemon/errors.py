"""Errors of the daemon and its clients (mapped to exit codes by the CLI)."""
from __future__ import annotations


class DaemonError(Exception):
    """A problem with the audit daemon the user can act on from the message."""


class DaemonUnavailable(DaemonError):
    """No daemon is running (or it does not answer) for this state directory."""
