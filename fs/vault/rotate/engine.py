"""`revoke --rotate`: fresh keys for a shared directory's whole subtree (or a shared file's DEK).

A revoked recipient may have kept key_D, and from it every key below D: the keys of the
subdirectories (wrapped under key_D and below), their name keys, and every file's DEK.  So the
rotation gives *every* directory of D's subtree a new key (its entries' names are re-encrypted,
so the backing entries are renamed; symlink targets and xattrs are re-sealed; the slots of the
children are re-wrapped) and *every* regular file below D a new DEK (content re-encrypted in
place, so inode numbers and hard links survive).  D's own new key is wrapped under its parent's
key, which the recipient never had.  A shared single file gets a new DEK.

Crash safety (kill -9 at any point, ENOSPC, power loss) rests on three things, written down in
docs/format.md ("Rotation"): headers carry a *self slot* while an object is mid-rotation (the
previous key wrapped under the new one), so readers open both generations; every multi-page
in-place write is preceded by a redo record in the journal (write, fdatasync, apply, fdatasync,
clear), so a torn write is replayed; each step is idempotent (names and slots are tried under the
new key first), so re-running finishes the job.  The journal ``.umbrafs.rotate/`` holds no key.

The engine is a generator of bounded *steps* (one directory's names, a batch of small files, one
chunk of a large file).  Offline it runs them back to back; inside a live mount
(fs/mount/control/rotate.py) each step runs on the trio loop between FUSE requests, so no request sees
half a step, and ``Hooks`` tell the mount which cached keys, names and open files to swap.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from fs.vault import backing, entries
from fs.format import blocks
from fs.format import cryptocore as keys
from fs.format import layout as fmt
from fs.vault.backing import join
from fs.vault.content import previous_dek
from fs.errors import IntegrityError, UmbrafsError
from fs.vault.headers import DirKeys, owner_keys, read_dir_header, read_file_header, update_dir_slot, write_file_slot
from fs.format.links import TMP_PREFIX
from fs.format.names import backing_name, is_reserved
from fs.format.xattrs import PREFIX as XATTR_PREFIX
from fs.vault.rotate.journal import JOURNAL_DIR, ForeignJournal, Journal, RotationError

__all__ = ["JOURNAL_DIR", "Hooks", "Journal", "Progress", "Renamed", "Rotation", "RotationError", "TargetSpec",
           "object_ids", "pending", "repair", "run_offline"]
from fs.format.xattrs import XattrCipher

log = logging.getLogger(__name__)
# Every in-place write of a rotation step (tests/fs/test_rotate.py tears one to play a kill -9 mid-write).
_write_all = backing.pwrite_all

_DIR_HEADER_TMP = ".umbrafs.dir.rotate"
# Ciphertext bytes per step: large enough that the two fdatasyncs of a step cost little next to
# the AES work, small enough that a live mount waits at most a few ms for one step.
CHUNK = 2 << 20
_CHUNK_BLOCKS = CHUNK // fmt.CIPHER_BLOCK_SIZE or 1
SMALL_MAX = CHUNK  # files up to this backing size are rewritten whole, in batches
_MAX_BACKING = fmt.cipher_size(fmt.MAX_FILE_SIZE, fmt.FILE_HEADER_LEN)  # bound for a redo record's writes
BATCH_FILES = 64
KIND_DIR = "dir"
KIND_FILE = "file"


@dataclass(slots=True)
class Progress:
    state: str = "starting"  # starting, scanning, keys, content, done, failed
    target: str = ""
    dirs_total: int = 0
    dirs_done: int = 0
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Renamed:
    """One entry of a rotated directory: its name before and after (for a live mount)."""

    p_name: bytes
    old_c: str
    old_b: str
    new_c: str
    new_b: str
    old_st: os.stat_result
    recreated: bool  # a symlink made anew (new inode): the kernel must look it up again


class Hooks:
    """What a live mount must hear to keep its caches true; offline nothing listens."""

    def dir_rekeyed(self, rel: str, st: os.stat_result, new: DirKeys, renames: list[Renamed]) -> None:
        pass

    def file_rekeyed(self, st: os.stat_result, header: fmt.Header, dek: bytes, previous: bytes | None) -> None:
        pass


def _parent_rel(rel: str) -> str:
    return rel.rpartition("/")[0] or "."


# -- the engine -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TargetSpec:
    """What to rotate: kind, backing path (relative to the vault) and object id."""

    kind: str
    backing_rel: str
    obj_id: bytes


class Rotation:
    def __init__(self, vault_path: os.PathLike[str] | str, root_wrap_key: bytes, hooks: Hooks | None = None,
                 durable: bool = False) -> None:
        """*durable*: also safe against a power cut mid-step (an fdatasync before and after every
        in-place write); without it, safe against the process dying at any point and against
        ENOSPC, with each file made durable before it is marked done."""
        self.vault_path = os.fspath(vault_path)
        self.durable = durable
        self.root_wrap_key = root_wrap_key
        self.hooks = hooks or Hooks()
        self.progress = Progress()
        self.root_fd = -1
        self.journal: Journal | None = None
        self._dir_keys: dict[bytes, DirKeys] = {}  # every directory key seen (new keys inside the subtree)
        self._outside: dict[bytes, DirKeys] | None = None  # the whole vault's, built only for hard links
        self._dir_rels: dict[bytes, str] = {}  # where each directory of _outside is
        self._dirs_done: set[str] = set()
        self._files_done: set[int] = set()

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        self.root_fd = os.open(self.vault_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # One rotation at a time per vault, offline or in a mount (flock on the vault root).
            fcntl.flock(self.root_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.root_fd)
            self.root_fd = -1
            raise RotationError("another rotation of this vault is running") from None
        self.journal = Journal(self.root_fd, self.root_wrap_key, self.durable)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        if self.root_fd >= 0:
            os.close(self.root_fd)  # also drops the flock
            self.root_fd = -1

    def __enter__(self) -> "Rotation":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _j(self) -> Journal:
        assert self.journal is not None
        return self.journal

    def pending(self) -> dict[str, Any] | None:
        return self._j.load() if self._j.exists() else None

    def begin(self, target: TargetSpec, reason: str = "") -> None:
        """Write the journal of a new rotation (after finishing any pending one: see steps)."""
        if self._j.exists():
            try:
                self._j.load()
            except ForeignJournal as exc:  # planted, or left by another vault: not ours to finish
                log.warning("%s; removed", exc)
                self._j.remove()
            else:
                raise RotationError("a rotation is already pending in this vault: finish it first "
                                    "(umbrafs revoke --resume)")
        self._j.create({
            "format": "umbrafs-rotate", "version": 1, "kind": target.kind, "target": target.backing_rel,
            "object_id": target.obj_id.hex(), "reason": reason,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })

    # -- repair: what must happen before anyone reads the vault after a crash --------------

    def repair(self) -> bool:
        """Replay a pending redo record and finish the directory whose names were being
        changed.  Cheap (bounded by one step).  False if no rotation is pending."""
        if not self._j.exists():
            return False
        try:
            self._j.load()  # the job's nonce: what the log and the redo record must be bound to
        except ForeignJournal as exc:
            log.error("%s", exc)
            return False
        redo = self._j.read_redo()
        if redo:
            self._apply(redo)
            self._j.clear_redo()
        self._dirs_done, self._files_done, started = self._j.read_log()
        if started is not None:
            dir_id, rel = started
            try:
                parent = self._keys_along(_parent_rel(rel)) if rel != "." else owner_keys(self.root_wrap_key)
                if read_dir_header(self.root_fd, rel).obj_id.hex() == dir_id:
                    self._rotate_dir(rel, parent)
            except (OSError, UmbrafsError) as exc:
                # The walk of the next run finds it again; readers meanwhile see its old names only.
                log.warning("rotation repair: directory %s not finished here: %s", rel, exc)
        return True

    def _apply(self, files: list[tuple[str, bytes, list[tuple[int, bytes]]]]) -> None:
        """Replay an (authenticated) redo record; still only into regular files below the vault,
        reached without following any symlink, that carry the recorded id, within the format's
        largest size."""
        for rel, obj_id, extents in files:
            if not backing.safe_rel(rel) or rel == "." or any(
                    off < 0 or off + len(data) > _MAX_BACKING for off, data in extents):
                log.error("rotation redo: a record for %r out of bounds was ignored", rel)
                continue
            try:
                fd = backing.open_beneath(self.root_fd, rel, os.O_RDWR)
            except FileNotFoundError:
                log.warning("rotation redo: %s is gone", rel)
                continue
            except PermissionError:  # the file's mode was read-only: the owner may change it
                try:
                    with backing.owner_writable(self.root_fd, rel):
                        fd = backing.open_beneath(self.root_fd, rel, os.O_RDWR)
                except OSError as exc:
                    log.warning("rotation redo: %s not writable: %s", rel, exc)
                    continue
            except OSError as exc:  # ELOOP: a symlink on the way
                log.error("rotation redo: %s not opened: %s", rel, exc)
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode) or os.pread(fd, fmt.FIXED_LEN, 0)[8:24] != obj_id:
                    log.warning("rotation redo: %s is another file now", rel)
                    continue
                for off, data in extents:
                    _write_all(fd, data, off)
                os.fdatasync(fd)
            finally:
                os.close(fd)

    # -- keys -----------------------------------------------------------------------------

    def _keys_along(self, rel: str) -> DirKeys:
        """The keys of backing directory *rel*, unwrapped header by header from the root."""
        root = read_dir_header(self.root_fd, ".")
        k = DirKeys(root.obj_id, owner_keys(self.root_wrap_key).unwrap(root))
        cur = "."
        for part in [p for p in rel.split("/") if p and p != "."]:
            cur = join(cur, part)
            header = read_dir_header(self.root_fd, cur)
            k = DirKeys(header.obj_id, k.unwrap(header))
        return k

    def _key_of(self, dir_id: bytes) -> DirKeys | None:
        """The current key of any directory of the vault by id (hard links into other dirs)."""
        if dir_id == fmt.ROOT_PARENT_ID:
            return owner_keys(self.root_wrap_key)
        if dir_id in self._dir_keys:
            return self._dir_keys[dir_id]
        return self._vault_dirs().get(dir_id)

    def _vault_dirs(self) -> dict[bytes, DirKeys]:
        """Every directory of the vault by id, with its current keys (built once per run)."""
        if self._outside is None:
            self._outside = {}
            root = self._keys_along(".")
            stack = [(".", root)]
            while stack:
                rel, k = stack.pop()
                self._outside[k.dir_id] = k
                self._dir_rels[k.dir_id] = rel
                for name, is_dir in _entries(self.root_fd, rel):
                    if is_dir:
                        child = join(rel, name)
                        with contextlib.suppress(OSError, UmbrafsError):
                            header = read_dir_header(self.root_fd, child)
                            stack.append((child, DirKeys(header.obj_id, k.unwrap(header))))
        return self._outside

    # -- the steps ----------------------------------------------------------------------------

    def steps(self, target: TargetSpec | None = None, reason: str = "") -> Iterator[None]:
        """Finish a pending rotation, then (with *target*) rotate *target*.  Yields between steps."""
        self.progress.state = "starting"
        if self.repair():
            yield
            job = self._j.load()
            pending = TargetSpec(job["kind"], job["target"], bytes.fromhex(job["object_id"]))
            yield from self._run(pending)
            self._j.remove()
            if target is not None and target.obj_id == pending.obj_id:
                return  # that was it
        if target is None:
            if self.progress.state == "starting":
                self.progress.state = "done"
            return
        self.progress = Progress()
        self.begin(target, reason)
        yield from self._run(target)
        self._j.remove()

    def _locate(self, target: TargetSpec) -> tuple[str, DirKeys]:
        """Where *target* is now (a live mount may have moved it) and its parent's keys."""
        from fs.vault.keywalk import KIND_DIR as KW_DIR, locate

        rel = locate(self.vault_path, target.backing_rel, target.obj_id, KW_DIR if target.kind == KIND_DIR else "file")
        parent = owner_keys(self.root_wrap_key) if rel == "." else self._keys_along(_parent_rel(rel))
        return rel, parent

    def _run(self, target: TargetSpec) -> Iterator[None]:
        self._dirs_done, self._files_done, _ = self._j.read_log()
        self._dir_keys.clear()
        self._outside = None
        rel, parent = self._locate(target)
        self.progress.target = rel
        self.progress.state = "scanning"
        pending = self._scan(rel, target.kind)
        yield
        if target.kind == KIND_DIR:
            self.progress.state = "keys"
            # A live mount may rename directories between steps: a directory that is not where
            # the walk expected it is found by the next pass (done ones cost one header read).
            for attempt in range(4):
                if attempt:
                    rel, parent = self._locate(target)
                missed = 0
                stack = [(rel, parent)]
                while stack:
                    dir_rel, parent_keys = stack.pop()
                    try:
                        new = self._rotate_dir(dir_rel, parent_keys)
                    except (FileNotFoundError, NotADirectoryError, IntegrityError) as exc:
                        missed += 1
                        log.info("rotation: %s moved or unreadable (%s); the next pass looks again", dir_rel, exc)
                        continue
                    self._dir_keys[new.dir_id] = new
                    if attempt == 0:
                        self.progress.dirs_done += 1
                    for name, is_dir in _entries(self.root_fd, dir_rel):
                        if is_dir:
                            stack.append((join(dir_rel, name), new))
                    yield
                if not missed:
                    break
            else:
                self._problem("some directories could not be reached (moved during the rotation?): run it again")
            self.progress.state = "content"
            # Likewise files renamed within the subtree between steps: walk again until nothing
            # that was there at the start is left.
            for _ in range(3):
                before = len(pending)
                rel, _parent = self._locate(target)
                yield from self._content(rel, self._dir_keys.get(self._top_id(rel)) or self._keys_of_dir(rel, _parent), pending)
                if not pending or len(pending) == before:
                    break
        else:
            self.progress.state = "content"
            st = os.lstat(rel, dir_fd=self.root_fd)
            yield from self._rotate_files([(_parent_rel(rel), parent, rel, st)], pending)
        # Without --durable the rewritten files reach the disk as any write through the mount
        # does (writeback); durable mode has synced each write already.
        self.progress.state = "done"

    def _keys_of_dir(self, rel: str, parent: DirKeys) -> DirKeys:
        header = read_dir_header(self.root_fd, rel)
        return DirKeys(header.obj_id, parent.unwrap(header))

    def _top_id(self, rel: str) -> bytes:
        return read_dir_header(self.root_fd, rel).obj_id

    def _scan(self, rel: str, kind: str) -> set[int]:
        """Count what is to do (progress) and note every file inode there now."""
        pending: set[int] = set()
        p = self.progress
        p.dirs_total = p.dirs_done = p.files_total = p.files_done = p.bytes_total = p.bytes_done = 0
        if kind == KIND_FILE:
            st = os.lstat(rel, dir_fd=self.root_fd)
            todo = [(st, rel)]
        else:
            todo = []
            stack = [rel]
            while stack:
                d = stack.pop()
                p.dirs_total += 1
                for name, is_dir in _entries(self.root_fd, d):
                    child = join(d, name)
                    if is_dir:
                        stack.append(child)
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        st = os.lstat(child, dir_fd=self.root_fd)
                        if stat.S_ISREG(st.st_mode):
                            todo.append((st, child))
        for st, _ in todo:
            if st.st_ino in pending:
                continue
            pending.add(st.st_ino)
            p.files_total += 1
            size = fmt.plain_size(st.st_size, fmt.FILE_HEADER_LEN)
            p.bytes_total += size
            if st.st_ino in self._files_done:
                p.files_done += 1
                p.bytes_done += size
        pending -= self._files_done
        return pending

    # -- phase 1: directory keys and names -------------------------------------------------------

    def _rotate_dir(self, rel: str, parent: DirKeys) -> DirKeys:
        """Give directory *rel* a new key (or finish doing so); returns its current keys."""
        header = read_dir_header(self.root_fd, rel)
        dir_id = header.obj_id
        index = header.find_slot(parent.dir_id)
        if index is None:
            raise IntegrityError(f"directory {rel}: no key slot for its parent")
        current = parent.unwrap(header)
        started = dir_id.hex() in self._j.dirs_started
        if started and header.find_slot(dir_id) is not None:  # cut short mid-way: the header holds both keys
            old_key, new_key = keys.unwrap_slot(current, header, dir_id), current
        elif dir_id.hex() in self._dirs_done:
            return DirKeys(dir_id, current)
        else:
            # A self slot this job did not write was planted (say by the recipient being revoked,
            # to have the rotation "finish" with the key it holds): the header is made anew.
            old_key, new_key = current, keys.new_key()
            self._j.append(f"dirstart {dir_id.hex()} {rel}")
            self._j.dirs_started.add(dir_id.hex())
            slots: list[fmt.Slot | None] = [None] * len(header.slots)
            slots[index] = keys.wrap_slot(parent.key, parent.dir_id, fmt.KIND_DIR, dir_id, new_key)
            # The other slot (a rename's second parent, normally free) holds the previous key
            # while names are being changed: readers and a resumed run open both generations.
            slots[1 if index == 0 else 0] = keys.wrap_slot(new_key, dir_id, fmt.KIND_DIR, dir_id, old_key)
            self._write_dir_header(rel, fmt.Header(fmt.KIND_DIR, dir_id, tuple(slots)))
        old, new = DirKeys(dir_id, old_key), DirKeys(dir_id, new_key)
        with backing.owner_writable(self.root_fd, rel):  # a read-only directory's entries get renamed too
            renames = self._rename_entries(rel, old, new)
        dir_fd = os.open(rel, backing.DIR_NOFOLLOW, dir_fd=self.root_fd)
        try:
            self._rekey_xattrs(dir_fd, XattrCipher(old_key, dir_id), XattrCipher(new_key, dir_id), rel)
            if self.durable:
                os.fsync(dir_fd)  # the renames are durable before the previous key goes
        finally:
            os.close(dir_fd)
        header = read_dir_header(self.root_fd, rel)
        self_index = header.find_slot(dir_id)
        if self_index is not None:
            self._write_dir_header(rel, header.with_slot(self_index, None))
        self._j.append(f"dirdone {dir_id.hex()}")
        self._dirs_done.add(dir_id.hex())
        self.hooks.dir_rekeyed(rel, os.lstat(rel, dir_fd=self.root_fd), new, renames)
        return new

    def _write_dir_header(self, rel: str, header: fmt.Header) -> None:
        with backing.owner_writable(self.root_fd, rel):
            tmp = join(rel, _DIR_HEADER_TMP)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=self.root_fd)
            try:
                _write_all(fd, header.pack(), 0)
                if self.durable:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, join(rel, fmt.DIR_HEADER_NAME), src_dir_fd=self.root_fd, dst_dir_fd=self.root_fd)

    def _rename_entries(self, rel: str, old: DirKeys, new: DirKeys) -> list[Renamed]:
        renames: list[Renamed] = []
        names = [name for name, _ in _entries(self.root_fd, rel, reserved=True)]
        for b_name in names:
            b_rel = join(rel, b_name)
            if b_name.startswith(TMP_PREFIX):  # a symlink being made when a run was cut short
                entries.drop_link_sidecar(self.root_fd, rel, b_rel)
                backing.unlink_quiet(self.root_fd, b_rel)
                continue
            if is_reserved(b_name):
                continue
            try:
                st = os.lstat(b_rel, dir_fd=self.root_fd)
                c_name = entries.read_c_name(self.root_fd, rel, b_name)
            except FileNotFoundError:
                continue
            try:
                p_name, converted = new.names.decrypt(c_name), True
            except IntegrityError:
                try:
                    p_name, converted = old.names.decrypt(c_name), False
                except IntegrityError:
                    self._problem(f"{b_rel}: name opens under neither key; left as it is")
                    continue
            new_c = new.names.encrypt(p_name) if not converted else c_name
            new_b = backing_name(new_c) if not converted else b_name
            recreated = False
            if not converted:
                entries.write_longname(self.root_fd, rel, new_c, new_b)
                if stat.S_ISLNK(st.st_mode):
                    self._recreate_symlink(rel, b_name, new_b, st, old, new)
                    recreated = True
                else:
                    try:
                        backing.renameat2(self.root_fd, b_rel, join(rel, new_b), backing.RENAME_NOREPLACE)
                    except FileExistsError:
                        self._problem(f"{b_rel}: its new name exists already; left as it is")
                        continue
                entries.drop_longname_of(self.root_fd, rel, b_name)
                renames.append(Renamed(p_name, c_name, b_name, new_c, new_b, st, recreated))
            new_rel = join(rel, new_b)
            if stat.S_ISDIR(st.st_mode):
                self._rewrap_dir_slot(new_rel, old, new)
            elif stat.S_ISREG(st.st_mode):
                self._rewrap_file_slot(new_rel, old, new)
        entries.sweep_sidecars(self.root_fd, rel, names=True)  # left by a run that was cut short
        return renames

    def _rewrap_dir_slot(self, rel: str, old: DirKeys, new: DirKeys) -> None:
        header = read_dir_header(self.root_fd, rel)
        index = header.find_slot(new.dir_id)
        if index is None:
            self._problem(f"{rel}: directory without a key slot for its parent")
            return
        try:
            new.unwrap(header)
            return  # done before
        except IntegrityError:
            key = old.unwrap(header)
        with backing.owner_writable(self.root_fd, rel):
            update_dir_slot(self.root_fd, rel, index, new.wrap(fmt.KIND_DIR, header.obj_id, key))

    def _rewrap_file_slot(self, rel: str, old: DirKeys, new: DirKeys) -> None:
        with backing.owner_writable(self.root_fd, rel):
            fd = backing.open_file(self.root_fd, rel, True)
            try:
                header = read_file_header(fd)
                index = header.find_slot(new.dir_id)
                if index is None:
                    self._problem(f"{rel}: file without a key slot for its directory")
                    return
                try:
                    new.unwrap(header)
                    return
                except IntegrityError:
                    dek = old.unwrap(header)
                # One 76-byte write inside the first sector: it lands whole or not at all.
                write_file_slot(fd, index, new.wrap(fmt.KIND_FILE, header.obj_id, dek))
            finally:
                os.close(fd)

    def _recreate_symlink(self, rel: str, b_old: str, b_new: str, st: os.stat_result, old: DirKeys, new: DirKeys) -> None:
        """A symlink's target is sealed under its directory's key: make it anew, then swap."""
        target = entries.read_link(self.root_fd, rel, b_old, old)
        tmp = entries.make_temp_symlink(self.root_fd, rel, target, new, st)
        with contextlib.suppress(OSError):
            os.utime(join(rel, tmp), ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=self.root_fd, follow_symlinks=False)
        try:
            backing.renameat2(self.root_fd, join(rel, tmp), join(rel, b_new), backing.RENAME_NOREPLACE)
        except FileExistsError:  # made by a run that was cut short before it removed the old one
            entries.drop_link_sidecar(self.root_fd, rel, join(rel, tmp))
            backing.unlink_quiet(self.root_fd, join(rel, tmp))
        if st.st_nlink <= 1:
            entries.drop_link_sidecar(self.root_fd, rel, join(rel, b_old))
        backing.unlink_quiet(self.root_fd, join(rel, b_old))

    def _rekey_xattrs(self, fd: int, old: XattrCipher, new: XattrCipher, what: str) -> None:
        try:
            names = os.listxattr(fd)
        except OSError:
            return
        for b_name in names:
            if not b_name.startswith(XATTR_PREFIX) or new.plain_name(b_name) is not None:
                continue
            p_name = old.plain_name(b_name)
            if p_name is None:
                self._problem(f"{what}: an extended attribute opens under neither key; left as it is")
                continue
            value = old.open(p_name, os.getxattr(fd, b_name))
            os.setxattr(fd, new.backing_name(p_name), new.seal(p_name, value))
            os.removexattr(fd, b_name)

    # -- phase 2: file contents -------------------------------------------------------------------

    def _content(self, top: str, top_keys: DirKeys, pending: set[int]) -> Iterator[None]:
        stack = [(top, top_keys)]
        batch: list[tuple[str, DirKeys, str, os.stat_result]] = []
        while stack:
            rel, k = stack.pop()
            self._dir_keys[k.dir_id] = k
            files = []
            for name, is_dir in _entries(self.root_fd, rel):
                child = join(rel, name)
                try:
                    if is_dir:
                        header = read_dir_header(self.root_fd, child)
                        stack.append((child, DirKeys(header.obj_id, k.unwrap(header))))
                        continue
                    st = os.lstat(child, dir_fd=self.root_fd)
                except (FileNotFoundError, UmbrafsError) as exc:
                    if not isinstance(exc, FileNotFoundError):
                        self._problem(f"{child}: {exc}")
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_ino in pending:
                    files.append((rel, k, child, st))
            yield from self._rotate_files(files, pending, batch, final=not stack)

    def _rotate_files(self, files: list[tuple[str, DirKeys, str, os.stat_result]], pending: set[int],
                      batch: list[tuple[str, DirKeys, str, os.stat_result]] | None = None, final: bool = True) -> Iterator[None]:
        """Small files go into *batch* (one redo record and one step per BATCH_FILES or CHUNK
        bytes, across directories); large ones get steps of their own."""
        batch = [] if batch is None else batch
        for item in files:
            st = item[3]
            if st.st_size <= SMALL_MAX:
                batch.append(item)
                if len(batch) >= BATCH_FILES or sum(b[3].st_size for b in batch) >= CHUNK:
                    self._small_files(batch, pending)
                    batch.clear()
                    yield
            else:
                yield from self._large_file(item, pending)
        if batch and final:
            self._small_files(batch, pending)
            batch.clear()
            yield

    def _open(self, rel: str, st: os.stat_result) -> int | None:
        """The file at *rel* if it is still the inode we listed."""
        try:
            with backing.owner_writable(self.root_fd, rel):
                fd = os.open(rel, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.root_fd)
        except FileNotFoundError:
            return None
        if os.fstat(fd).st_ino != st.st_ino:
            os.close(fd)
            return None
        return fd

    def _new_header(self, header: fmt.Header, dek: bytes, previous: bytes | None, rel: str,
                    st: os.stat_result, found_in: DirKeys) -> fmt.Header:
        """*header* with a slot for *dek* for each directory that really links the file (+ a self
        slot for *previous*).  Which directories those are comes from the filesystem, never from
        the header's slot list: a slot naming a directory whose key someone else holds would
        otherwise hand them the new DEK."""
        slots: list[fmt.Slot | None] = [None] * len(header.slots)
        for i, slot in enumerate(header.slots):
            if slot is None or slot.parent_id == header.obj_id:
                continue
            if slot.parent_id == found_in.dir_id:
                slots[i] = found_in.wrap(fmt.KIND_FILE, header.obj_id, dek)
                continue
            parent = self._key_of(slot.parent_id) if st.st_nlink > 1 else None
            if parent is None or not self._links(slot.parent_id, st.st_ino):
                self._problem(f"{rel}: dropped a key slot of a directory that does not link the file")
                continue
            slots[i] = parent.wrap(fmt.KIND_FILE, header.obj_id, dek)
        if previous is not None:
            free = slots.index(None) if None in slots else None
            if free is None:
                raise _NoFreeSlot()
            slots[free] = keys.self_slot(dek, header.obj_id, previous)
        return fmt.Header(fmt.KIND_FILE, header.obj_id, tuple(slots))

    def _links(self, dir_id: bytes, ino: int) -> bool:
        """Whether the directory with id *dir_id* has an entry for inode *ino* (a hard link)."""
        self._vault_dirs()
        rel = self._dir_rels.get(dir_id)
        if rel is None:
            return False
        with contextlib.suppress(OSError):
            fd = os.open(rel, backing.DIR_NOFOLLOW, dir_fd=self.root_fd)
            try:
                with os.scandir(fd) as it:
                    for entry in it:
                        if entry.inode() == ino and os.lstat(entry.name, dir_fd=fd).st_ino == ino:
                            return True
            finally:
                os.close(fd)
        return False

    def _reencrypt(self, fd: int, header_len: int, file_id: bytes, size: int, first: int, last: int,
                   olds: list[Any], new: Any, new_may_exist: bool) -> list[tuple[int, Any]]:
        """New ciphertext of blocks first..last as (offset, bytes) runs.  Holes stay holes; with
        *new_may_exist*, blocks already under the new key (written by a live mount since the
        header changed, or by a run cut short) are left alone.  The old keys are tried first:
        a failed GCM decryption costs as much as a good one."""
        start_off = fmt.block_offset(first, header_len)
        cipher = os.pread(fd, (last - first + 1) * fmt.CIPHER_BLOCK_SIZE, start_off)
        count = last - first + 1
        out = bytearray(len(cipher))
        done = bytearray(count)
        candidates = [*olds, new] if new_may_exist else list(olds)
        args = (memoryview(cipher), memoryview(out), done, first, size, file_id, candidates, new, len(olds))
        if count >= 16:
            # AES-GCM releases the GIL: the second half on another core.
            half = count // 2
            future = _pool().submit(self._crypt_blocks, *args, half, count)
            self._crypt_blocks(*args, 0, half)
            future.result()
        else:
            self._crypt_blocks(*args, 0, count)
        runs: list[tuple[int, Any]] = []
        ov = memoryview(out)
        cb = fmt.CIPHER_BLOCK_SIZE
        i = 0
        while i < count:
            if not done[i]:
                i += 1
                continue
            j = i
            while j + 1 < count and done[j + 1]:
                j += 1
            end = min((j + 1) * cb, len(cipher))
            runs.append((start_off + i * cb, ov[i * cb : end]))
            i = j + 1
        return runs  # memoryviews of one buffer: written to the redo record and in place without copies

    def _crypt_blocks(self, mv: memoryview, ov: memoryview, done: bytearray, first: int, size: int,
                      file_id: bytes, candidates: list[Any], new: Any, n_old: int, i0: int, i1: int) -> None:
        """Blocks first+i0 .. first+i1-1 of *mv*: the ones that open under one of the first *n_old*
        *candidates* are sealed under *new* into *ov* and marked in *done*.  The block loop itself is
        fs/format/blocks.py; a block cut short (a file shrinking under a live mount) or opening
        under no key is left as it is, to read as EIO."""
        cb = fmt.CIPHER_BLOCK_SIZE
        status = bytearray(i1 - i0)
        plain = _plain_buffer(blocks.run_plain_len(size, first + i0, first + i1 - 1))
        blocks.decrypt_blocks_into(candidates, file_id, size, first + i0, first + i1 - 1, mv[i0 * cb :], plain, status)
        if blocks.UNOPENED in status:
            for i, code in enumerate(status):
                if code == blocks.UNOPENED:
                    self._problem(f"block {first + i0 + i} of file {file_id.hex()} opens under no key; left as it is")
        reseal = status.translate(_reseal_table(n_old))
        blocks.encrypt_blocks_into(new, file_id, size, first + i0, plain, ov[i0 * cb :], reseal)
        done[i0:i1] = reseal

    def _commit(self, writes: list[tuple[str, int, bytes, list[tuple[int, Any]]]]) -> None:
        """Redo record → fdatasync → apply in place → fdatasync → clear (docs/format.md)."""
        if not any(extents for _, _, _, extents in writes):
            return
        self._j.write_redo([(rel, obj_id, extents) for rel, _, obj_id, extents in writes if extents])
        for _, fd, _, extents in writes:
            for off, data in extents:
                _write_all(fd, data, off)
        if self.durable:
            for _, fd, _, extents in writes:
                if extents:
                    os.fdatasync(fd)
        self._j.clear_redo()

    def _file_keys(self, rel: str, k: DirKeys, header: fmt.Header) -> tuple[bytes, bytes | None]:
        """(current DEK, previous DEK if this job started re-keying the file, else None)."""
        dek = k.unwrap(header)
        if header.obj_id.hex() not in self._j.files_started:
            return dek, None
        return dek, previous_dek(header, dek)

    def _small_files(self, batch: list[tuple[str, DirKeys, str, os.stat_result]], pending: set[int]) -> None:
        """Files of up to CHUNK bytes: header and content rewritten whole, a batch per redo record."""
        writes: list[tuple[str, int, bytes, list[tuple[int, bytes]]]] = []
        done: list[tuple[os.stat_result, fmt.Header, bytes, int, int]] = []
        large: list[tuple[str, DirKeys, str, os.stat_result]] = []
        seen: set[int] = set()
        try:
            for dir_rel, k, rel, st in batch:
                if st.st_ino not in pending or st.st_ino in seen:
                    continue  # done, or a hard link of one already in this batch
                seen.add(st.st_ino)
                fd = self._open(rel, st)
                if fd is None:
                    pending.discard(st.st_ino)
                    continue
                try:
                    header = read_file_header(fd)
                    cur, prev = self._file_keys(rel, k, header)
                    if _has_user_xattrs(fd):
                        large.append((dir_rel, k, rel, st))  # xattrs need the self slot while they change
                        os.close(fd)
                        continue
                    dek = keys.new_key()
                    new_header = self._new_header(header, dek, None, rel, st, k)
                    size = fmt.plain_size(os.fstat(fd).st_size, header.length)
                    extents = [(0, new_header.pack())]
                    if size:
                        extents += self._reencrypt(fd, header.length, header.obj_id, size, 0, (size - 1) // fmt.BLOCK_SIZE,
                                                   _aeads(cur, prev), blocks.block_cipher(dek), False)
                except (UmbrafsError, OSError) as exc:
                    os.close(fd)
                    self._problem(f"{rel}: {exc}")
                    pending.discard(st.st_ino)
                    continue
                writes.append((rel, fd, header.obj_id, extents))
                done.append((st, new_header, dek, fd, size))
            self._commit(writes)
            for st, new_header, dek, _, size in done:
                self._j.append(f"filedone {st.st_ino} {new_header.obj_id.hex()}", sync=False)
                pending.discard(st.st_ino)
                self._files_done.add(st.st_ino)
                self.progress.files_done += 1
                self.progress.bytes_done += size
                self.hooks.file_rekeyed(st, new_header, dek, None)
            if done:
                self._j.append("batch", sync=True)
        finally:
            for _, fd, _, _ in writes:
                os.close(fd)
        for item in large:
            for _ in self._large_file(item, pending):
                pass

    def _large_file(self, item: tuple[str, DirKeys, str, os.stat_result], pending: set[int]) -> Iterator[None]:
        """A file in chunks: header with both DEKs, then CHUNK of blocks per step, then the header
        without the previous DEK.  Between steps a live mount reads (both keys) and writes (new key)."""
        dir_rel, k, rel, st = item
        if st.st_ino not in pending:
            return
        fd = self._open(rel, st)
        if fd is None:
            pending.discard(st.st_ino)
            return
        try:
            header = read_file_header(fd)
            cur, prev = self._file_keys(rel, k, header)
            if prev is None:  # not started: new DEK, the old one in the self slot
                dek = keys.new_key()
                try:
                    new_header = self._new_header(header, dek, cur, rel, st, k)
                except _NoFreeSlot:
                    # Linked from as many directories as a header has slots: no room for the
                    # previous DEK, so the whole file goes in one redo record and one step.
                    os.close(fd)
                    fd = -1
                    self._whole_file(item, pending)
                    return
                self._j.append(f"filestart {header.obj_id.hex()} {st.st_ino}")  # before the self slot exists
                self._j.files_started.add(header.obj_id.hex())
                self._commit([(rel, fd, header.obj_id, [(0, new_header.pack())])])
                prev, cur = cur, dek
                self.hooks.file_rekeyed(st, new_header, cur, prev)
            yield
            aead, prev_aead = blocks.block_cipher(cur), blocks.block_cipher(prev)
            block = 0
            done_bytes = 0
            while True:
                size = fmt.plain_size(os.fstat(fd).st_size, header.length)
                nblocks = (size + fmt.BLOCK_SIZE - 1) // fmt.BLOCK_SIZE
                if block >= nblocks:
                    break
                last = min(block + _CHUNK_BLOCKS, nblocks) - 1
                extents = self._reencrypt(fd, header.length, header.obj_id, size, block, last, [prev_aead], aead, True)
                self._commit([(rel, fd, header.obj_id, extents)])
                step = min((last + 1) * fmt.BLOCK_SIZE, size) - block * fmt.BLOCK_SIZE
                done_bytes += step
                self.progress.bytes_done += step
                block = last + 1
                yield
            self._rekey_xattrs(fd, XattrCipher(prev, header.obj_id), XattrCipher(cur, header.obj_id), rel)
            header = read_file_header(fd)
            self_index = header.find_slot(header.obj_id)
            if self_index is not None:
                write_file_slot(fd, self_index, None)  # one sector: whole or not at all
                header = header.with_slot(self_index, None)
            if self.durable:
                os.fdatasync(fd)
            self._j.append(f"filedone {st.st_ino} {header.obj_id.hex()}")
            pending.discard(st.st_ino)
            self._files_done.add(st.st_ino)
            self.progress.files_done += 1
            self.hooks.file_rekeyed(st, header, cur, None)
        except (UmbrafsError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):  # stop, resumable
                raise RotationError(f"{rel}: {exc.strerror}; free some space and run again to finish") from None
            self._problem(f"{rel}: {exc}")
            pending.discard(st.st_ino)
        finally:
            if fd >= 0:
                os.close(fd)

    def _whole_file(self, item: tuple[str, DirKeys, str, os.stat_result], pending: set[int]) -> None:
        dir_rel, k, rel, st = item
        fd = self._open(rel, st)
        if fd is None:
            return
        try:
            header = read_file_header(fd)
            cur, prev = self._file_keys(rel, k, header)
            dek = keys.new_key()
            new_header = self._new_header(header, dek, None, rel, st, k)
            size = fmt.plain_size(os.fstat(fd).st_size, header.length)
            extents = [(0, new_header.pack())]
            if size:
                extents += self._reencrypt(fd, header.length, header.obj_id, size, 0, (size - 1) // fmt.BLOCK_SIZE,
                                           _aeads(cur, prev), blocks.block_cipher(dek), False)
            xattrs = _read_user_xattrs(fd, XattrCipher(cur, header.obj_id))
            self._commit([(rel, fd, header.obj_id, extents)])
            _write_user_xattrs(fd, xattrs, XattrCipher(dek, header.obj_id))
            self._j.append(f"filedone {st.st_ino} {header.obj_id.hex()}")
            pending.discard(st.st_ino)
            self._files_done.add(st.st_ino)
            self.progress.files_done += 1
            self.progress.bytes_done += size
            self.hooks.file_rekeyed(st, new_header, dek, None)
        finally:
            os.close(fd)

    def _problem(self, text: str) -> None:
        log.warning("rotation: %s", text)
        self.progress.problems.append(text)


class _NoFreeSlot(Exception):
    pass


_POOL: Any = None


def _pool() -> Any:
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="umbrafs-rotate")
    return _POOL


_PLAIN = threading.local()


def _plain_buffer(length: int) -> memoryview:
    """A plaintext buffer of this thread (the caller's or the pool's half of a chunk), kept from
    step to step: a fresh ~1 MiB one per step cost ~7% of the re-encryption time."""
    buf = getattr(_PLAIN, "buf", None)
    if buf is None or len(buf) < length:
        buf = _PLAIN.buf = bytearray(max(length, (_CHUNK_BLOCKS + 1) // 2 * fmt.BLOCK_SIZE))
    return memoryview(buf)[:length]


def _aeads(*dek: bytes | None) -> list[Any]:
    return [blocks.block_cipher(k) for k in dek if k is not None]


@functools.cache
def _reseal_table(n_old: int) -> bytes:
    """bytes.translate table: decrypt_blocks status -> 1 where one of the first *n_old* keys (the
    old DEKs) opened the block, else 0 (a hole, a block already under the new DEK, a bad one)."""
    return bytes(1 if 1 <= code <= n_old else 0 for code in range(256))


def _has_user_xattrs(fd: int) -> bool:
    try:
        return any(name.startswith(XATTR_PREFIX) for name in os.listxattr(fd))
    except OSError:
        return False


def _read_user_xattrs(fd: int, cipher: XattrCipher) -> list[tuple[str, bytes, bytes]]:
    out = []
    with contextlib.suppress(OSError):
        for b_name in os.listxattr(fd):
            p_name = cipher.plain_name(b_name)
            if p_name is not None:
                out.append((b_name, p_name, cipher.open(p_name, os.getxattr(fd, b_name))))
    return out


def _write_user_xattrs(fd: int, xattrs: list[tuple[str, bytes, bytes]], cipher: XattrCipher) -> None:
    for b_name, p_name, value in xattrs:
        os.setxattr(fd, cipher.backing_name(p_name), cipher.seal(p_name, value))
        with contextlib.suppress(OSError):
            os.removexattr(fd, b_name)


def _entries(root_fd: int, rel: str, reserved: bool = False) -> list[tuple[str, bool]]:
    """(name, is_dir) of a backing directory, sorted; plaintext entries only unless *reserved*."""
    try:
        fd = os.open(rel, backing.DIR_NOFOLLOW, dir_fd=root_fd)
    except FileNotFoundError:
        return []
    try:
        with os.scandir(fd) as it:
            out = [(e.name, e.is_dir(follow_symlinks=False)) for e in it if reserved or not is_reserved(e.name)]
    finally:
        os.close(fd)
    out.sort()
    return out


# -- drivers --------------------------------------------------------------------------------

def run_offline(vault_path: os.PathLike[str] | str, root_wrap_key: bytes, target: TargetSpec | None = None,
                reason: str = "", on_step: Callable[[Progress], None] | None = None, durable: bool = False) -> Progress:
    """Rotate *target* (after finishing any pending rotation) on an unmounted vault."""
    with Rotation(vault_path, root_wrap_key, durable=durable) as rotation:
        try:
            for _ in rotation.steps(target, reason):
                if on_step is not None:
                    on_step(rotation.progress)
        except OSError as exc:
            rotation.progress.state = "failed"
            raise RotationError(f"rotation stopped: {exc.strerror or exc}; the vault stays readable; "
                                "run it again to finish") from None
        except BaseException:
            rotation.progress.state = "failed"
            raise
        return rotation.progress


def repair(vault_path: os.PathLike[str] | str, root_wrap_key: bytes) -> bool:
    """Make a vault whose rotation was cut short fully readable (the owner's mount calls this
    before serving).  True if a rotation is still pending (finish it with `revoke --resume`)."""
    try:
        with Rotation(vault_path, root_wrap_key) as rotation:
            return rotation.repair()
    except RotationError:
        return True  # another process is rotating right now: it repairs as it goes
    except (UmbrafsError, OSError, ValueError, struct.error) as exc:
        log.error("rotation repair failed (run `umbrafs revoke --resume`): %s", exc)
        return True


def pending(vault_path: os.PathLike[str] | str) -> dict[str, Any] | None:
    """The journal of a pending rotation (no key needed), or None."""
    fd = os.open(vault_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        journal = Journal(fd, None)  # for display: not trusted
        return journal.load() if journal.exists() else None
    finally:
        os.close(fd)


def object_ids(vault_path: os.PathLike[str] | str, rel: str) -> set[bytes]:
    """Ids of every directory and regular file at or below backing path *rel* (no key needed:
    ids sit in the clear in the headers).  For telling which other shares a rotation touched."""
    fd = os.open(vault_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    ids: set[bytes] = set()
    try:
        stack = [rel]
        with contextlib.suppress(OSError, UmbrafsError):
            st = os.lstat(rel, dir_fd=fd)
            if not stat.S_ISDIR(st.st_mode):
                file_fd = os.open(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                try:
                    return {read_file_header(file_fd).obj_id}
                finally:
                    os.close(file_fd)
        while stack:
            d = stack.pop()
            with contextlib.suppress(OSError, UmbrafsError):
                ids.add(read_dir_header(fd, d).obj_id)
            for name, is_dir in _entries(fd, d):
                child = join(d, name)
                if is_dir:
                    stack.append(child)
                    continue
                with contextlib.suppress(OSError, UmbrafsError):
                    file_fd = os.open(child, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
                    try:
                        if stat.S_ISREG(os.fstat(file_fd).st_mode):
                            ids.add(read_file_header(file_fd).obj_id)
                    finally:
                        os.close(file_fd)
    finally:
        os.close(fd)
    return ids
