"""What a mount tells its audit sink: one event per request that changed something, per
access session, per refusal worth recording (docs/audit.md).

Out of Operations so that the handlers only say what happened; the shaping lives here:
runs of setattr on one path by one process become one event, paths are built only
when a sink listens, a proven `umbrafs restore` gets its events tagged, and a failing
sink never takes a request down.
"""
from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import Any

import pyfuse3

from ledger.events import OPS
from wire.sink import EventSink
from fs.format import entropy
from fs.mount.handles import NO_PROGRESS, PROGRESS_BYTES, FileHandle, access_mode
from fs.mount.inodes import InodeTable, Node

log = logging.getLogger(__name__)

# Refused requests that go on the record (a missing name or a full directory is not news).
AUDITED = frozenset({"create", "mknod", "mkdir", "symlink", "unlink", "rmdir", "link", "rename", "setattr", "open"})
AUDITED_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.ENOSPC, errno.EDQUOT})

Detail = dict[str, str | int | bool]
Who = pyfuse3.RequestContext | FileHandle | None  # anything with uid and pid
Path = str | Callable[[], str]


class Audit:
    """The event side of one mount; with no sink every call returns at once."""

    __slots__ = ("sink", "inodes", "restoring", "progress", "_pending_setattr")

    def __init__(self, sink: EventSink | None, inodes: InodeTable) -> None:
        self.sink = sink
        self.inodes = inodes
        # pid -> monotonic deadline: a proven `umbrafs restore` (fs/mount/control/restore.py), whose events
        # are tagged so that the detector does not take the undoing for the attack.
        self.restoring: dict[int, float] = {}
        self.progress = sink is not None and "progress" in OPS
        self._pending_setattr: list[Any] | None = None  # see emit

    def emit(
        self, op: str, ctx: Who, path: Path, node: Node | None = None, *, path2: Path = "", result: int = 0,
        detail: Detail | None = None, **counts: int,
    ) -> None:
        if self.sink is None:
            return
        # Paths come as callables so that a mount without auditing never builds them.
        path = path() if callable(path) else path
        path2 = path2() if callable(path2) else path2
        if op == "setattr" and result == 0 and detail is not None:
            # tar, cp -p and the kernel's own time updates send 3-5 SETATTRs per file: one
            # event per run of them on one path by one process, listing what changed.
            key = (path, ctx.uid if ctx else 0, ctx.pid if ctx else 0)
            pending = self._pending_setattr
            if pending is not None and pending[0] == key:
                pending[3] += 1
                pending[4].update(str(detail["changed"]).split(","))
                return
            self.flush()
            self._pending_setattr = [key, ctx, node, 1, set(str(detail["changed"]).split(","))]
            return
        self.flush()
        self._send(op, ctx, path, node, path2=path2, result=result, detail=detail, **counts)

    def flush(self) -> None:
        """Emit a held-back run of setattr events (the mount calls this every second too)."""
        pending, self._pending_setattr = self._pending_setattr, None
        if pending is not None:
            (path, _, _), ctx, node, count, changed = pending
            self._send("setattr", ctx, path, node, detail={"changed": ",".join(sorted(changed)), "count": count})

    def _send(
        self, op: str, ctx: Who, path: str, node: Node | None = None, *,
        path2: str = "", result: int = 0, detail: Detail | None = None, **counts: int,
    ) -> None:
        assert self.sink is not None
        try:
            file_id = ""
            if node is not None:
                if node.file is not None:
                    file_id = node.file.file_id.hex()
                elif node.keys is not None:
                    file_id = node.keys.dir_id.hex()
            pid = ctx.pid if ctx else 0
            if self.restoring and pid in self.restoring:
                if time.monotonic() < self.restoring[pid]:
                    detail = {**(detail or {}), "restore": True}
                else:
                    del self.restoring[pid]
            self.sink.emit(
                op, uid=ctx.uid if ctx else 0, pid=pid, path=path, path2=path2,
                file_id=file_id, result=result, detail=detail, **counts,
            )
        except Exception:  # a sink must never take a request down
            log.exception("event sink failed")

    def refused(self, op: str, args: tuple[Any, ...], code: int) -> None:
        """Record a namespace change or open that was refused (EACCES, EROFS, EIO…); *args*
        are the handler's."""
        if self.sink is None:
            return
        get = self.inodes.get
        ctx = args[-1] if isinstance(args[-1], pyfuse3.RequestContext) else None
        path2 = ""
        nodes = [get(args[0])] + ([get(args[2])] if op == "rename" else [get(args[1])] if op == "link" else [])
        if any(n is None for n in nodes):
            return  # the request named an inode we no longer know (it answered ESTALE)
        if op == "rename":
            path, path2 = self.inodes.child_path(nodes[0], args[1]), self.inodes.child_path(nodes[1], args[3])  # type: ignore[arg-type]
        elif op == "link":
            path, path2 = self.inodes.plain_path(nodes[0]), self.inodes.child_path(nodes[1], args[2])  # type: ignore[arg-type]
        elif op in ("setattr", "open"):
            path = self.inodes.plain_path(nodes[0])  # type: ignore[arg-type]
        else:
            path = self.inodes.child_path(nodes[0], args[1])  # type: ignore[arg-type]
        self.emit(op, ctx, path, path2=path2, result=code)

    # -- access sessions ------------------------------------------------------------

    def report_progress(self, handle: FileHandle, fh: int) -> None:
        """A long session reports as it goes, so the daemon need not wait for release."""
        if not self.progress:
            handle.progress_at = NO_PROGRESS
            return
        done = handle.bytes_read + handle.bytes_written
        handle.progress_at = (done // PROGRESS_BYTES + 1) * PROGRESS_BYTES
        self.emit(
            "progress", handle, handle.path, handle.node, bytes_read=handle.bytes_read, bytes_written=handle.bytes_written,
            reads=handle.reads, writes=handle.writes, opened_ns=handle.opened_ns, detail={"fh": fh},
        )

    def session_end(self, handle: FileHandle, fh: int) -> None:
        """The "access" event of a handle being released."""
        if self.sink is None:
            return
        # Re-reads served from the page cache never reach us: the size says what the session could see.
        detail: Detail = {
            "mode": access_mode(handle.flags), "size": handle.node.file.size if handle.node.file else 0,
            "size_before": handle.size_before, "fh": fh,
        }
        if handle.overwrite:
            detail["overwrite"] = True
        if handle.bytes_written:
            detail["entropy"] = entropy.milli_bits(handle.sample)
        self.emit(
            "access", handle, handle.path, handle.node, bytes_read=handle.bytes_read, bytes_written=handle.bytes_written,
            reads=handle.reads, writes=handle.writes, opened_ns=handle.opened_ns, detail=detail,
        )
