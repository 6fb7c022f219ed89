"""The ledger's exception classes (the CLI maps ``LedgerError`` to one line and an exit code)."""
from __future__ import annotations


class LedgerError(Exception):
    """The ledger cannot do what was asked (missing file, bad arguments, unreadable database)."""


class LedgerTampered(LedgerError):
    """The ledger contradicts itself or its anchors; run ``umbrafs audit verify`` for details."""


class CheckpointError(LedgerError):
    """A checkpoint record (database row, anchor file, proof document) is malformed."""
