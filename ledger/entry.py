"""Ledger entry bytes: an encoded event with its position bound in (pure).

Entry ``idx`` is ``b'{"idx":<idx>,' + ledger.events.encode(event)[1:]``: the canonical event JSON
with an ``idx`` member spliced in front.  It stays one JSON object, and binding the index into the
hashed bytes is what makes a moved, swapped or inserted entry detectable from its own bytes (a
verifier checks the prefix without parsing JSON).
"""
from __future__ import annotations

import json

from ledger import events
from ledger.errors import LedgerError


class EntryError(LedgerError):
    """Stored entry bytes that are not a valid bound event."""


def prefix(idx: int) -> bytes:
    return b'{"idx":%d,' % idx


def bind(idx: int, event: events.Event) -> bytes:
    """The stored, hashed bytes of ``event`` at position ``idx``."""
    return prefix(idx) + events.encode(event)[1:]


def unbind(data: bytes) -> tuple[int, events.Event]:
    """Parse untrusted entry bytes into (bound idx, event)."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, TypeError):
        raise EntryError("entry is not JSON") from None
    if not isinstance(obj, dict) or type(obj.get("idx")) is not int or obj["idx"] < 0:
        raise EntryError("entry has no valid idx")
    idx = obj.pop("idx")
    if not data.startswith(prefix(idx)):
        raise EntryError("entry idx is not in canonical position")
    try:
        return idx, events.from_dict(obj)
    except events.EventError as exc:
        raise EntryError(f"entry {idx}: {exc}") from None
