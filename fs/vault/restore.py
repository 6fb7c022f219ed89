"""Roll back what selected processes did since a time, from the versions area (fs/vault/versions.py).

``plan`` is pure: it walks the selected records newest first and undoes each — a create by
removing the file, a rename by moving it back, a rename-over by moving back and putting the
replaced file's version in place, an overwrite / truncate / unlink by putting the version
back.  Content restores of one path are merged (only the oldest selected version of it counts)
until a rename touches that path, so a file rewritten ten times is written back once.

``execute`` carries a plan out through a live mountpoint with plain file operations: the
mount encrypts, audits and itself keeps versions of whatever a restore replaces or removes,
so a restore can be rolled back too.  Before a file is removed or moved, its object id (read
from the backing dir with the owner's keys) must be the one the record names, so a file
that another process put there since is left alone.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fs.vault import backing
from fs.vault import keywalk
from fs.vault import versions as ver
from fs.vault.content import OpenFile
from fs.errors import UmbrafsError
from fs.vault.headers import read_file_header
from fs.vault.config import UnlockedVault

log = logging.getLogger(__name__)

STEP_RESTORE = "restore"
STEP_MOVE = "move"
STEP_REMOVE = "remove"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Selection:
    """Which records to undo: time window and, optionally, who and where."""

    since_ns: int
    until_ns: int | None = None
    pids: frozenset[int] = frozenset()
    comms: frozenset[str] = frozenset()
    uids: frozenset[int] = frozenset()
    path_prefix: str = ""

    def matches(self, rec: ver.Record) -> bool:
        if rec.t < self.since_ns or (self.until_ns is not None and rec.t > self.until_ns):
            return False
        if self.pids and rec.pid not in self.pids:
            return False
        if self.comms and rec.comm not in self.comms:
            return False
        if self.uids and rec.uid not in self.uids:
            return False
        if self.path_prefix:
            return under(rec.path, self.path_prefix) or (bool(rec.path2) and under(rec.path2, self.path_prefix))
        return True


def under(path: str, prefix: str) -> bool:
    prefix = "/" + prefix.strip("/")
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True, slots=True)
class Step:
    kind: str  # STEP_RESTORE | STEP_MOVE | STEP_REMOVE
    path: str  # restore: where the version goes; move: the destination; remove: what goes
    path2: str = ""  # move: where the object is now
    fid: str = ""  # expected object id at the object's current place ("" = not checked)
    record: ver.Record | None = field(default=None, repr=False)  # restore: the version (None: the current file)
    is_dir: bool = False
    truncate_to: int | None = None  # restore: cut to this size (what was appended goes)

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.kind, "path": self.path, "path2": self.path2, "fid": self.fid}
        if self.record is not None:
            out["record"] = self.record.public()
        if self.truncate_to is not None:
            out["truncate_to"] = self.truncate_to
        return out

    def describe(self) -> str:
        if self.kind == STEP_MOVE:
            return f"move    {self.path2} -> {self.path}"
        if self.kind == STEP_REMOVE:
            return f"remove  {self.path} (into the versions area)"
        rec = self.record
        cut = f", cut to {self.truncate_to} B" if self.truncate_to is not None else ""
        if rec is None:
            return f"cut     {self.path} to {self.truncate_to} B (remove what was appended)"
        state = "" if rec.available else "  [version no longer kept]"
        return f"restore {self.path} ({rec.size} B{cut}, before {rec.op} by {rec.comm or '?'}[{rec.pid}]){state}"


def plan(records: Iterable[ver.Record], selection: Selection) -> list[Step]:
    chosen = [r for r in records if r.op in ver.OPS and selection.matches(r)]
    steps: list[Step] = []
    # path -> (version to put back, or None for the file there now; size to cut it to, or None)
    pending: dict[str, tuple[ver.Record | None, int | None]] = {}

    def settle(path: str, subtree: bool = False) -> None:
        for p in [p for p in pending if p == path or (subtree and under(p, path))]:
            rec, cut = pending.pop(p)
            steps.append(Step(STEP_RESTORE, p, fid=rec.fid if rec else "", record=rec, truncate_to=cut))

    for rec in reversed(chosen):
        if rec.op in (ver.OP_OVERWRITE, ver.OP_TRUNCATE, ver.OP_UNLINK):
            pending[rec.path] = (rec, None)  # an older version of the same path replaces a newer one
        elif rec.op == ver.OP_APPEND:
            # Only appended to since: what was there then is what is there later, cut back.
            base, cut = pending.get(rec.path, (None, None))
            pending[rec.path] = (base, rec.size if cut is None else min(cut, rec.size))
        elif rec.op == ver.OP_CREATE:
            pending.pop(rec.path, None)  # it did not exist before: no point restoring it first
            steps.append(Step(STEP_REMOVE, rec.path, fid=rec.fid))
        elif rec.op == ver.OP_RENAME:
            settle(rec.path2, rec.is_dir)
            settle(rec.path, rec.is_dir)
            steps.append(Step(STEP_MOVE, rec.path, rec.path2, fid=rec.fid, is_dir=rec.is_dir))
        elif rec.op == ver.OP_RENAME_OVER:
            settle(rec.path2)
            settle(rec.path)
            steps.append(Step(STEP_MOVE, rec.path, rec.path2, fid=rec.src_fid))
            pending[rec.path2] = (rec, None)
    for p in list(pending):
        settle(p)
    return steps


@dataclass
class Outcome:
    step: Step
    result: str  # "ok", "absent", "skipped: ...", "lost: ...", "error: ..."

    def public(self) -> dict[str, Any]:
        return {**self.step.public(), "result": self.result}


def summarize(outcomes: list[Outcome]) -> dict[str, int]:
    counts = {"restored": 0, "moved": 0, "removed": 0, "skipped": 0, "lost": 0, "errors": 0}
    for o in outcomes:
        if o.result in ("ok", "absent"):
            key = {STEP_RESTORE: "restored", STEP_MOVE: "moved", STEP_REMOVE: "removed"}[o.step.kind]
            counts[key] += o.result == "ok"
        elif o.result.startswith("skipped"):
            counts["skipped"] += 1
        elif o.result.startswith("lost"):
            counts["lost"] += 1
        else:
            counts["errors"] += 1
    return counts


class MountExecutor:
    """Carries steps out through *mountpoint*, a live mount of *vault*."""

    def __init__(self, mountpoint: os.PathLike[str] | str, vault: UnlockedVault) -> None:
        self.mountpoint = os.fspath(mountpoint)
        self.vault = vault
        self.area = os.path.join(vault.path, ver.AREA)
        self._ours: set[str] = set()  # paths this restore wrote (new object ids: no check against records)

    def _parent(self, path: str, create: bool = False) -> tuple[int, str]:
        """(descriptor of *path*'s parent in the mount, last component), walked from the
        mountpoint one directory at a time without following a symlink: whoever can make
        names in the drive (a recipient of a share, the malware being undone) must not
        turn a directory on the way into a symlink that takes decrypted files out of it."""
        parts = [os.fsdecode(p) for p in keywalk.split_plain(path)]
        if not parts:
            raise OSError(errno.EINVAL, "the root of the drive is not restored", path)
        fd = os.open(self.mountpoint, backing.DIR_NOFOLLOW)
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, backing.DIR_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    nxt = os.open(part, backing.DIR_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    @staticmethod
    def _kind(parent: int, name: str) -> int | None:
        try:
            return stat.S_IFMT(os.lstat(name, dir_fd=parent).st_mode)
        except FileNotFoundError:
            return None

    def _object_id(self, path: str) -> str | None:
        """Hex id of what is at *path* now (None: nothing; "": a symlink or special file)."""
        try:
            return keywalk.find(self.vault, path).obj_id.hex()
        except keywalk.PathNotFound:
            return None
        except keywalk.NotShareable:
            return ""

    def run(self, steps: list[Step], progress: Callable[[Outcome], None] = lambda o: None) -> list[Outcome]:
        outcomes = []
        for step in steps:
            try:
                result = {STEP_RESTORE: self._restore, STEP_MOVE: self._move, STEP_REMOVE: self._remove}[step.kind](step)
            except (OSError, UmbrafsError) as exc:
                result = f"error: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
            outcome = Outcome(step, result)
            progress(outcome)
            outcomes.append(outcome)
        return outcomes

    def _remove(self, step: Step) -> str:
        current = self._object_id(step.path)
        if current is None:
            return "absent"
        if step.fid and current != step.fid:
            return "skipped: changed by another process since"
        parent, name = self._parent(step.path)
        try:
            if self._kind(parent, name) == stat.S_IFDIR:
                return "skipped: a directory"
            os.unlink(name, dir_fd=parent)  # the mount moves it into the versions area
        finally:
            os.close(parent)
        return "ok"

    def _move(self, step: Step) -> str:
        current = self._object_id(step.path2)
        if current is None:
            return "skipped: no longer there"
        if step.fid and current and current != step.fid and step.path2 not in self._ours:
            return "skipped: changed by another process since"
        src_parent, src = self._parent(step.path2)
        try:
            dst_parent, dst = self._parent(step.path, create=True)
            try:  # a file it replaces is kept as a version by the mount
                os.rename(src, dst, src_dir_fd=src_parent, dst_dir_fd=dst_parent)
            finally:
                os.close(dst_parent)
        finally:
            os.close(src_parent)
        if step.path2 in self._ours:
            self._ours.add(step.path)
        return "ok"

    def _restore(self, step: Step) -> str:
        rec = step.record
        if rec is None:  # only appended to: cut the file there now back
            try:
                parent, name = self._parent(step.path)
            except FileNotFoundError:
                return "skipped: no longer there"
            try:
                if self._kind(parent, name) != stat.S_IFREG:
                    return "skipped: no longer there"
                fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    if step.truncate_to is not None and os.fstat(fd).st_size > step.truncate_to:
                        os.ftruncate(fd, step.truncate_to)  # the mount keeps what the cut drops
                finally:
                    os.close(fd)
            finally:
                os.close(parent)
            return "ok"
        if not rec.data or not rec.available:
            return "lost: the version is no longer kept (pruned)"
        fd = os.open(os.path.join(self.area, rec.data), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            header = read_file_header(fd)
            if rec.fid and header.obj_id.hex() != rec.fid:
                return "lost: the kept file is not the recorded one"
            old = OpenFile(fd, header, rec.dek_for(header))
            parent, name = self._parent(step.path, create=True)
            try:
                if self._kind(parent, name) == stat.S_IFDIR:
                    return "skipped: a directory is there now"
                self._write_back(parent, name, old, rec, step)
            finally:
                os.close(parent)
            self._ours.add(step.path)
        finally:
            os.close(fd)
        return "ok"

    @staticmethod
    def _write_back(parent: int, name: str, old: OpenFile, rec: ver.Record, step: Step) -> None:
        tmp = f".umbrafs-restore-{secrets.token_hex(6)}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            size = old.size if step.truncate_to is None else min(old.size, step.truncate_to)
            for off in range(0, size, _CHUNK):
                os.write(out, old.read(off, min(_CHUNK, size - off)))
            os.fchmod(out, stat.S_IMODE(rec.mode) or 0o644)
            if os.geteuid() == 0 and rec.owner != (0, 0):
                os.fchown(out, *rec.owner)
                os.fchmod(out, stat.S_IMODE(rec.mode) or 0o644)  # chown clears setuid/setgid
            os.utime(out, ns=(rec.mtime_ns, rec.mtime_ns))
        except BaseException:
            os.close(out)
            os.unlink(tmp, dir_fd=parent)
            raise
        os.close(out)
        # atomic; what it replaces is kept as a version by the mount
        os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
