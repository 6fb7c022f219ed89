"""The journal of a key rotation (fs/vault/rotate/engine.py): ``.umbrafs.rotate/`` in the vault root.

job.json says what is being rotated, ``log`` what is done so far, ``redo`` the one in-place write
that may be in flight.  None of it is secret (backing paths, object ids, inode numbers and
ciphertext): every key a resumed rotation needs is in the headers.  Layout and the reasons each
state is crash-safe: docs/format.md, "Rotation".

But all of it lies in the synced vault, where a sync peer or a share recipient can write, and a
replay writes into files and re-keys directories.  So every part is authenticated with HMAC-SHA256
under a key derived from the owner's root wrap key (cryptocore.journal_key), bound to the job's
random nonce: job.json carries a MAC, every log line carries one, the redo head carries one over
its body.  What fails is not the owner's and is never acted on.  The directory and its files are
opened through one descriptor, never following a symlink, and new files are made with O_EXCL.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import struct
from typing import Any

from fs.vault import backing
from fs.format import cryptocore
from fs.format import layout as fmt
from fs.errors import UmbrafsError

log = logging.getLogger(__name__)

JOURNAL_DIR = ".umbrafs.rotate"
JOB_NAME = "job.json"
LOG_NAME = "log"
REDO_NAME = "redo"
_REDO_MAGIC = b"umbrafs-redo-2\n\0"  # 16 bytes
_REDO_HEAD = struct.Struct(">16sQ32s")  # magic, body length, HMAC of nonce + body
_LINE_TAG = 32  # hex digits of a log line's MAC (128 bits)
JOB_MAX = 1 << 16
LOG_MAX = 64 << 20  # one line per file: millions of files before this


class RotationError(UmbrafsError):
    """A rotation that cannot start or go on (the journal stays: run it again to finish)."""


class Journal:
    """``.umbrafs.rotate/`` in the vault root: job.json (what), log (done so far), redo (a pending write).

    None of it is secret: backing paths, object ids, inode numbers, and ciphertext.  *root_wrap_key*
    authenticates it; without one (``pending`` for display) job.json is read but not trusted."""

    def __init__(self, root_fd: int, root_wrap_key: bytes | None, durable: bool = False) -> None:
        self.root_fd = root_fd
        self.durable = durable
        self._key = cryptocore.journal_key(root_wrap_key) if root_wrap_key is not None else None
        self._nonce = b""  # the job's, once created or loaded: binds log lines and redo records to it
        # Objects whose self slot (previous key under the new) this job wrote, by id: a self
        # slot in any other header was planted (a revoked recipient keeping its key) and is ignored.
        self.dirs_started: set[str] = set()
        self.files_started: set[str] = set()
        self._dir_fd: int | None = None
        self._log_fd: int | None = None
        self._redo_fd: int | None = None

    # -- the directory: one descriptor, never a symlink, never someone else's ---------------

    def _dir(self, create: bool = False) -> int:
        if self._dir_fd is None:
            if create:
                self._drop_planted()
                with contextlib.suppress(FileExistsError):
                    os.mkdir(JOURNAL_DIR, 0o700, dir_fd=self.root_fd)
            try:
                fd = os.open(JOURNAL_DIR, backing.DIR_NOFOLLOW, dir_fd=self.root_fd)
            except OSError as exc:  # ELOOP/ENOTDIR: something else was planted under our name
                if exc.errno == errno.ENOENT:
                    raise
                raise ForeignJournal(f"rotation journal {JOURNAL_DIR} is not a directory: not used") from None
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                os.close(fd)
                raise ForeignJournal(f"rotation journal {JOURNAL_DIR} belongs to uid {st.st_uid}: not used")
            self._dir_fd = fd
        return self._dir_fd

    def _drop_planted(self) -> None:
        """A symlink or file where the journal directory belongs is not ours: remove it."""
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISDIR(os.lstat(JOURNAL_DIR, dir_fd=self.root_fd).st_mode):
                log.warning("rotation journal: %s was not a directory; removed", JOURNAL_DIR)
                os.unlink(JOURNAL_DIR, dir_fd=self.root_fd)

    def _mac(self, kind: bytes, data: bytes) -> bytes:
        if self._key is None:
            raise RotationError("the rotation journal needs the vault's key")
        return hmac.new(self._key, kind + b"\0" + self._nonce + data, hashlib.sha256).digest()

    def _read(self, name: str, limit: int) -> bytes:
        return backing.read_small_file(self._dir(), name, limit)

    def exists(self) -> bool:
        """Something stands where a journal would (load tells whether it is ours)."""
        try:
            st = os.lstat(JOURNAL_DIR, dir_fd=self.root_fd)
            if not stat.S_ISDIR(st.st_mode):
                return True
            os.lstat(JOB_NAME, dir_fd=self._dir())
        except FileNotFoundError:
            return False
        except ForeignJournal:
            return True
        return True

    def create(self, job: dict[str, Any]) -> None:
        dir_fd = self._dir(create=True)
        for name in (LOG_NAME, REDO_NAME):  # left by a foreign or abandoned journal: never ours to reuse
            backing.unlink_quiet(dir_fd, name)
        self._nonce = secrets.token_bytes(16)
        body = dict(job, nonce=self._nonce.hex())
        mac = self._mac(b"job", _canonical(body)).hex()
        _write_durable(dir_fd, JOB_NAME, json.dumps(dict(body, mac=mac), sort_keys=True).encode() + b"\n")
        _fsync_dir(self.root_fd, ".")

    def load(self) -> dict[str, Any]:
        """job.json, checked against the vault's key (if this journal has it)."""
        try:
            job = json.loads(self._read(JOB_NAME, JOB_MAX))
        except (OSError, ValueError, UmbrafsError) as exc:
            raise ForeignJournal(f"rotation journal {JOURNAL_DIR}/{JOB_NAME} unreadable ({exc}): not acted on") from None
        if not isinstance(job, dict) or job.get("format") != "umbrafs-rotate" or job.get("version") != 1:
            raise ForeignJournal(f"rotation journal {JOURNAL_DIR}/{JOB_NAME}: unknown format, not acted on")
        if self._key is not None:
            mac, nonce = job.pop("mac", None), job.get("nonce")
            try:
                self._nonce = bytes.fromhex(nonce) if isinstance(nonce, str) else b""
                claimed = bytes.fromhex(mac) if isinstance(mac, str) else b""
            except ValueError:
                claimed = b""
            if len(self._nonce) != 16 or not hmac.compare_digest(claimed, self._mac(b"job", _canonical(job))):
                self._nonce = b""
                raise ForeignJournal(f"rotation journal {JOURNAL_DIR}/{JOB_NAME} was not written by this vault's "
                                     "owner (failed authentication): not acted on")
        return job

    def append(self, line: str, sync: bool = True) -> None:
        if self._log_fd is None:
            self._log_fd = os.open(LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                                   0o600, dir_fd=self._dir())
        raw = line.encode("ascii")
        tag = self._mac(b"log", raw).hex()[:_LINE_TAG]
        os.write(self._log_fd, raw + b" " + tag.encode() + b"\n")
        if sync and self.durable:  # for a kill -9 the page cache is enough
            os.fdatasync(self._log_fd)

    def read_log(self) -> tuple[set[str], set[int], tuple[str, str] | None]:
        """(directories done by id, file inodes done, the last directory started and not done).
        Only lines this job wrote count: a cut line (a crash) or a foreign one is skipped."""
        dirs: set[str] = set()
        files: set[int] = set()
        started: tuple[str, str] | None = None
        self.dirs_started, self.files_started = set(), set()
        try:
            data = self._read(LOG_NAME, LOG_MAX)
        except FileNotFoundError:
            return dirs, files, None
        foreign = 0
        for raw in data.split(b"\n"):
            body, _, tag = raw.rpartition(b" ")
            if not body:
                continue
            if not hmac.compare_digest(tag, self._mac(b"log", body).hex()[:_LINE_TAG].encode()):
                foreign += 1
                continue
            parts = body.decode("ascii", "replace").split(" ", 2)
            if parts[0] == "dirstart" and len(parts) == 3:
                started = (parts[1], parts[2])
                self.dirs_started.add(parts[1])
            elif parts[0] == "filestart" and len(parts) >= 2:
                self.files_started.add(parts[1])
            elif parts[0] == "dirdone" and len(parts) >= 2:
                dirs.add(parts[1])
                if started and started[0] == parts[1]:
                    started = None
            elif parts[0] == "filedone" and len(parts) >= 2 and parts[1].isdigit():
                files.add(int(parts[1]))
        if foreign > 1:  # one is a line cut by a crash
            log.warning("rotation journal: %d log lines failed authentication and were ignored", foreign)
        return dirs, files, started

    # A redo record: a write that may span pages, recorded before it is applied in place.
    def write_redo(self, files: list[tuple[str, bytes, list[tuple[int, bytes]]]]) -> None:
        """Body first, then the head that makes it valid: one process's writes become visible in
        order, so after a kill -9 a valid head means a whole body.  The head's MAC covers the
        body (a power cut may persist the head and not all of it); durable mode also fdatasyncs."""
        out: list[bytes] = [struct.pack(">I", len(files))]
        for rel, obj_id, extents in files:
            raw = rel.encode("utf-8", "surrogateescape")
            out += [struct.pack(">H", len(raw)), raw, obj_id, struct.pack(">I", len(extents))]
            for off, data in extents:
                out += [struct.pack(">QI", off, len(data)), data]
        length = sum(len(b) for b in out)
        if self._key is None:
            raise RotationError("the rotation journal needs the vault's key")
        mac = hmac.new(self._key, b"redo\0" + self._nonce, hashlib.sha256)
        for b in out:
            mac.update(b)
        if self._redo_fd is None:
            self._redo_fd = os.open(REDO_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                    dir_fd=self._dir())
        fd = self._redo_fd
        pos = _REDO_HEAD.size
        for i in range(0, len(out), 512):  # IOV_MAX is 1024
            pos += _pwritev_all(fd, out[i : i + 512], pos)
        if self.durable:
            os.fdatasync(fd)
        os.pwrite(fd, _REDO_HEAD.pack(_REDO_MAGIC, length, mac.digest()), 0)
        if self.durable:
            os.fdatasync(fd)

    def read_redo(self) -> list[tuple[str, bytes, list[tuple[int, bytes]]]] | None:
        """The pending redo record, or None (none, cut short before its head was written: then
        nothing of it was applied yet; or not this job's: then it is not ours to apply)."""
        try:
            fd = backing.open_regular(self._dir(), REDO_NAME)
        except FileNotFoundError:
            return None
        try:
            head = os.pread(fd, _REDO_HEAD.size, 0)
            if len(head) < _REDO_HEAD.size:
                return None
            magic, length, tag = _REDO_HEAD.unpack(head)
            if magic != _REDO_MAGIC or length > os.fstat(fd).st_size - _REDO_HEAD.size:
                if magic != bytes(16):
                    log.warning("rotation journal: a redo record that is not ours was ignored")
                return None
            body = _pread_all(fd, length, _REDO_HEAD.size)
        finally:
            os.close(fd)
        if not hmac.compare_digest(tag, self._mac(b"redo", body)):
            log.warning("rotation journal: a redo record failed authentication and was ignored")
            return None
        pos = 0
        (count,), pos = struct.unpack_from(">I", body, pos), pos + 4
        files = []
        for _ in range(count):
            (n,) = struct.unpack_from(">H", body, pos)
            rel = body[pos + 2 : pos + 2 + n].decode("utf-8", "surrogateescape")
            pos += 2 + n
            obj_id = body[pos : pos + fmt.ID_LEN]
            (nx,) = struct.unpack_from(">I", body, pos + fmt.ID_LEN)
            pos += fmt.ID_LEN + 4
            extents = []
            for _ in range(nx):
                off, length = struct.unpack_from(">QI", body, pos)
                extents.append((off, body[pos + 12 : pos + 12 + length]))
                pos += 12 + length
            files.append((rel, obj_id, extents))
        return files

    def clear_redo(self) -> None:
        # Zeroing the head needs no fsync: a record that survives a crash is replayed, and
        # replaying a write that was already made changes nothing.  (Not truncated: keeping the
        # file's blocks allocated makes the next record cheaper, and ENOSPC cannot strike there.)
        if self._redo_fd is None:
            with contextlib.suppress(FileNotFoundError):
                self._redo_fd = os.open(REDO_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir())
        if self._redo_fd is not None:
            os.pwrite(self._redo_fd, bytes(_REDO_HEAD.size), 0)

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(OSError, RotationError):
            dir_fd = self._dir()
            for name in (REDO_NAME, LOG_NAME, JOB_NAME):
                backing.unlink_quiet(dir_fd, name)
        self.close()
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(JOURNAL_DIR, dir_fd=self.root_fd)
        self._drop_planted()
        _fsync_dir(self.root_fd, ".")

    def close(self) -> None:
        for name in ("_log_fd", "_redo_fd", "_dir_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


def _pwritev_all(fd: int, buffers: list[bytes], off: int) -> int:
    total = sum(len(b) for b in buffers)
    n = os.pwritev(fd, buffers, off)
    if n < total:  # short write (rare): finish the rest plainly
        backing.pwrite_all(fd, b"".join(buffers)[n:], off + n)
    return total



class ForeignJournal(RotationError):
    """A journal in the vault that the owner's key did not write: never replayed."""


def _canonical(job: dict[str, Any]) -> bytes:
    return json.dumps(job, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _pread_all(fd: int, length: int, off: int) -> bytes:
    parts, got = [], 0
    while got < length:
        chunk = os.pread(fd, length - got, off + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _write_durable(dir_fd: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """write new → fsync → rename: *name* holds the old or the new bytes, never a mix.
    The temp name is fresh and made with O_EXCL: nothing planted is ever written through."""
    tmp = f"{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        backing.pwrite_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _fsync_dir(root_fd: int, rel: str) -> None:
    fd = os.open(rel, backing.DIR_NOFOLLOW, dir_fd=root_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
