"""Errors of the contracts between processes (mapped to exit codes by the CLI)."""
from __future__ import annotations


class WireError(Exception):
    """Another umbrafs process could not be reached or answered wrongly."""


class DaemonError(WireError):
    """A problem with the audit daemon the user can act on from the message."""


class DaemonUnavailable(DaemonError):
    """No daemon is running (or it does not answer) for this state directory."""


class MountControlError(DaemonError):
    """A mount's control socket is missing, refused the connection, timed out or hung up."""


class AuditUnavailable(WireError):
    """--audit required, and the audit daemon cannot be reached."""
