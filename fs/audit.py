"""The mount's event hook: where access and namespace events leave the mount.

The audit daemon (a later issue) plugs in here with a sink that never blocks a
FUSE request.  Until then a mount logs nothing beyond counters.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Event:
    op: str  # open-session, create, mkdir, unlink, rmdir, rename, setattr, symlink, link, integrity, ...
    ino: int
    path: str  # plaintext path inside the vault (stays on the owner's machine)
    result: int = 0  # 0 or an errno
    uid: int = 0
    pid: int = 0
    wall_time: float = field(default_factory=time.time)
    bytes_read: int = 0
    bytes_written: int = 0
    reads: int = 0
    writes: int = 0


class EventSink(Protocol):
    def emit(self, event: Event) -> None:
        """Hand over one event; must return at once and never raise."""


class CountingSink:
    """Default sink: counts events per op (used by tests and `--debug` logs)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.last: Event | None = None

    def emit(self, event: Event) -> None:
        self.counts[event.op] = self.counts.get(event.op, 0) + 1
        self.last = event
