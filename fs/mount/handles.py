"""Open file and directory handles of a mount, and the table that numbers them.

Public because more than the FUSE handlers use them: fs/mount/lockdown.py wipes and restores
the plaintext they hold, fs/mount/control/rotate.py renames the entries of open listings, and
fs/mount/tasks.py tells the versions area which handles are still open.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pyfuse3

from wire.clock import now_ns
from fs.mount.inodes import Node

# An open handle reports a "progress" event each time its byte count crosses another step (long sessions).
PROGRESS_BYTES = 4 << 20
NO_PROGRESS = 1 << 62


class FileHandle:
    """An open file: also the access session reported to the audit sink at release."""

    __slots__ = ("node", "append", "bytes_read", "bytes_written", "reads", "writes", "uid", "pid", "path", "opened_ns", "flags",
                 "size_before", "overwrite", "sample", "progress_at")

    def __init__(self, node: Node, append: bool, ctx: pyfuse3.RequestContext, path: str, flags: int, size_before: int = 0) -> None:
        self.node = node
        self.append = append
        self.bytes_read = self.bytes_written = self.reads = self.writes = 0
        self.uid, self.pid = ctx.uid, ctx.pid
        self.path = path
        self.opened_ns = now_ns()
        self.flags = flags
        self.size_before = size_before
        # The session replaces existing content (interface 2 of the audit events): O_TRUNC of
        # a non-empty file here, or (set by write) a write at offset 0 into one.
        self.overwrite = bool(flags & os.O_TRUNC) and size_before > 0
        self.sample = bytearray()  # up to entropy.SAMPLE_MAX bytes of written plaintext
        self.progress_at = PROGRESS_BYTES


class DirHandle:
    """An open directory: its entries (plaintext, encrypted and backing name) as listed at opendir."""

    __slots__ = ("node", "entries")

    def __init__(self, node: Node, entries: list[tuple[bytes, str, str]]) -> None:
        self.node = node
        self.entries = entries


Handle = FileHandle | DirHandle


def access_mode(flags: int) -> str:
    """The open flags as the audit events spell them: r, w or rw, +append, +trunc."""
    mode = {os.O_RDONLY: "r", os.O_WRONLY: "w", os.O_RDWR: "rw"}.get(flags & os.O_ACCMODE, "?")
    return mode + ("+append" if flags & os.O_APPEND else "") + ("+trunc" if flags & os.O_TRUNC else "")


class HandleTable:
    """fh -> handle; numbers are never reused within a mount (the versions area keys state by fh)."""

    __slots__ = ("_open", "_next")

    def __init__(self) -> None:
        self._open: dict[int, Handle] = {}
        self._next = 1

    def add(self, handle: Handle) -> int:
        fh = self._next
        self._next += 1
        self._open[fh] = handle
        return fh

    def file(self, fh: int) -> FileHandle:
        handle = self._open.get(fh)
        if not isinstance(handle, FileHandle):
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle

    def dir(self, fh: int) -> DirHandle:
        handle = self._open.get(fh)
        if not isinstance(handle, DirHandle):
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle

    def pop(self, fh: int) -> Handle | None:
        return self._open.pop(fh, None)

    def numbers(self) -> list[int]:
        return list(self._open)

    def __iter__(self) -> Iterator[Handle]:
        return iter(list(self._open.values()))  # a snapshot: callers may open or close handles meanwhile

    def files(self) -> Iterator[FileHandle]:
        return (h for h in self if isinstance(h, FileHandle))

    def dirs(self) -> Iterator[DirHandle]:
        return (h for h in self if isinstance(h, DirHandle))
