"""`revoke --rotate` inside a live owner mount: the "rotate" and "rotate-status" control requests.

A rotation done behind a running mount's back would lose writes (open handles write into files
whose DEK changed) and mislead its caches (directory keys, backing names).  So while the vault is
mounted, the CLI asks the mount to rotate (fs/mount/control/server.py, /tmp/team/R_api.md) and polls its progress.
The engine's steps (fs/vault/rotate/engine.py) run here on the trio loop, one at a time between FUSE requests:
each FUSE handler runs to completion without awaiting, so no request sees half a step, and a file
being re-encrypted is read with both keys and written with the new one in between steps.  After
each step the hooks below swap what the mount has cached: a directory's keys and its children's
backing names, open directory listings, an open file's DEK, xattr ciphers.
"""
from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from fs.format import cryptocore
from fs.format import layout as fmt
from fs.vault.rotate import engine as rotate
from fs.mount.control.server import ControlRequestError, MountControl
from fs.vault.headers import DirKeys
from fs.mount.operations import Operations

log = logging.getLogger(__name__)


class MountHooks(rotate.Hooks):
    """Keep a live Operations' caches true as the engine changes keys and names."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops

    def _node(self, st_ino: int) -> Any:
        return self.ops.inodes.get(self.ops.inodes.fuse_ino(st_ino))

    def dir_rekeyed(self, rel: str, st: Any, new: DirKeys, renames: list[rotate.Renamed]) -> None:
        node = self._node(st.st_ino)
        if node is None or not node.is_dir:
            return  # not cached: it loads the new key from its header when next reached
        node.keys = new
        node.xattr = None
        by_old: dict[str, rotate.Renamed] = {}
        for r in renames:
            by_old[r.old_c] = r
            child = self._node(r.old_st.st_ino)
            if child is None:
                continue
            if r.recreated:
                # A new backing symlink (new inode): the old node goes stale (ESTALE → the kernel
                # looks the name up again), and the kernel forgets its dentry now.
                child.links = [link for link in child.links if link.parent is not node]
                pyfuse3.invalidate_entry_async(node.ino, r.p_name, ignore_enoent=True)
                continue
            for link in child.links:
                if link.parent is node and link.c_name == r.old_c:
                    link.c_name, link.b_name = r.new_c, r.new_b
        for h in self.ops.handles.dirs():
            if h.node is node:
                h.entries = [(p, by_old[c].new_c, by_old[c].new_b) if c in by_old else (p, c, b) for p, c, b in h.entries]

    def file_rekeyed(self, st: Any, header: fmt.Header, dek: bytes, previous: bytes | None) -> None:
        node = self._node(st.st_ino)
        if node is None:
            return
        if node.file is not None:
            node.file.rekey(header, dek, previous)
        node.xattr = None


@dataclass
class _Task:
    rotation: rotate.Rotation
    target: str
    running: bool = True
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float = 0.0

    def status(self) -> dict[str, Any]:
        p = self.rotation.progress
        out = p.as_dict()
        out["problems"] = out["problems"][:20]
        out.update(running=self.running, error=self.error, started=self.started, finished=self.finished,
                   requested=self.target)
        return out


_task: _Task | None = None


def _spec(message: dict[str, Any]) -> rotate.TargetSpec | None:
    target = message.get("target")
    if target is None:
        return None
    try:
        kind, rel, obj_id = target["kind"], target["backing_rel"], bytes.fromhex(target["object_id"])
    except (KeyError, TypeError, ValueError):
        raise ControlRequestError("bad-request", "target needs kind, backing_rel and object_id (hex)") from None
    if kind not in (rotate.KIND_DIR, rotate.KIND_FILE) or not isinstance(rel, str) or len(obj_id) != fmt.ID_LEN:
        raise ControlRequestError("bad-request", "bad rotation target")
    return rotate.TargetSpec(kind, rel, obj_id)


async def rotate_request(ctl: MountControl, message: dict[str, Any]) -> dict[str, Any]:
    """{"type": "rotate", "target": {"kind", "backing_rel", "object_id"} | absent (finish a pending
    one), "reason": str} → {"type": "rotating", ...progress}; poll with "rotate-status"."""
    global _task
    ops = ctl.ops
    if ctl.locked:
        raise ControlRequestError("locked", "the mount is locked: unlock it first")
    if not isinstance(ops, Operations) or ctl.vault is None or ctl.share_id:
        raise ControlRequestError("not-owner", "only the owner's mount of the whole vault can rotate keys")
    if ops.read_only:
        raise ControlRequestError("read-only", "a read-only mount cannot rotate keys: unmount it and run the "
                                               "rotation offline (umbrafs revoke --resume VAULT)")
    given = message.get("proof")
    want = cryptocore.rotate_proof(ctl.vault.root_wrap_key, str(ctl.mountpoint), ctl.peer[0])
    if not isinstance(given, str) or not hmac.compare_digest(given, want):
        # Any process of the user can reach this socket; re-keying breaks shares and rewrites
        # the subtree, so it takes the vault key (security review, finding 16).
        raise ControlRequestError("refused", "rotate needs a proof made with the vault key")
    spec = _spec(message)
    if _task is not None and _task.running:
        return {"type": "rotating", "already": True, **_task.status()}
    rotation = rotate.Rotation(ctl.vault_path, ctl.vault.root_wrap_key, MountHooks(ops), durable=bool(message.get("durable")))
    try:
        rotation.open()
    except rotate.RotationError as exc:
        raise ControlRequestError("busy", str(exc)) from None
    task = _task = _Task(rotation, spec.backing_rel if spec else "")
    assert ctl.nursery is not None
    ctl.nursery.start_soon(_run, ctl, task, spec, str(message.get("reason", "")))
    return {"type": "rotating", "already": False, **task.status()}


async def rotate_status(ctl: MountControl, message: dict[str, Any]) -> dict[str, Any]:
    if _task is None:
        return {"type": "rotate-status", "running": False, "state": "none", "error": ""}
    return {"type": "rotate-status", **_task.status()}


async def _run(ctl: MountControl, task: _Task, spec: rotate.TargetSpec | None, reason: str) -> None:
    rotation = task.rotation
    try:
        for _ in rotation.steps(spec, reason):
            await trio.sleep(0)  # FUSE requests and control requests run between steps
            if ctl.locked:  # checked after the pause: a lock taken in it stops the next step
                raise rotate.RotationError("the mount was locked mid-way; unlock it and run `umbrafs revoke --resume` to finish")
        # The "reencrypt" key event is the CLI's to record (as for share and revoke): it is
        # on the record even when this mount audits nothing.
    except Exception as exc:  # reported through rotate-status; the journal stays for a resume
        rotation.progress.state = "failed"
        task.error = str(exc) if isinstance(exc, (rotate.RotationError, OSError)) else f"{type(exc).__name__}: {exc}"
        log.error("rotation failed: %s", task.error, exc_info=not isinstance(exc, rotate.RotationError))
    finally:
        rotation.close()
        task.running = False
        task.finished = time.time()


HANDLERS = {"rotate": rotate_request, "rotate-status": rotate_status}
