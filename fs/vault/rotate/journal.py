"""The journal of a key rotation (fs/vault/rotate/engine.py): ``.umbrafs.rotate/`` in the vault root.

job.json says what is being rotated, ``log`` what is done so far, ``redo`` the one in-place write
that may be in flight.  None of it is secret (backing paths, object ids, inode numbers and
ciphertext): every key a resumed rotation needs is in the headers.  Layout and the reasons each
state is crash-safe: docs/format.md, "Rotation".
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from typing import Any

from fs.vault import backing
from fs.format import layout as fmt
from fs.errors import UmbrafsError

JOURNAL_DIR = ".umbrafs.rotate"
JOB_NAME = "job.json"
LOG_NAME = "log"
REDO_NAME = "redo"
_REDO_MAGIC = b"umbrafs-redo-1\n\0"  # 16 bytes
_REDO_HEAD = struct.Struct(">16sQI4x")  # magic, body length, crc32 of the body (durable) or 0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RotationError(UmbrafsError):
    """A rotation that cannot start or go on (the journal stays: run it again to finish)."""


class Journal:
    """``.umbrafs.rotate/`` in the vault root: job.json (what), log (done so far), redo (a pending write).

    None of it is secret: backing paths, object ids, inode numbers, and ciphertext."""

    def __init__(self, root_fd: int, durable: bool = False) -> None:
        self.root_fd = root_fd
        self.durable = durable
        self._log_fd: int | None = None
        self._redo_fd: int | None = None

    def _rel(self, name: str) -> str:
        return f"{JOURNAL_DIR}/{name}"

    def _read(self, name: str) -> bytes:
        fd = os.open(self._rel(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.root_fd)
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
        finally:
            os.close(fd)

    def exists(self) -> bool:
        try:
            os.lstat(self._rel(JOB_NAME), dir_fd=self.root_fd)
        except FileNotFoundError:
            return False
        return True

    def create(self, job: dict[str, Any]) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(JOURNAL_DIR, 0o700, dir_fd=self.root_fd)
        _write_durable(self.root_fd, self._rel(JOB_NAME), json.dumps(job, sort_keys=True).encode() + b"\n")
        _fsync_dir(self.root_fd, ".")

    def load(self) -> dict[str, Any]:
        try:
            job = json.loads(backing.read_small_file(self.root_fd, self._rel(JOB_NAME)))
        except (OSError, ValueError) as exc:
            raise RotationError(f"rotation journal {JOURNAL_DIR}/{JOB_NAME} unreadable: {exc}") from None
        if not isinstance(job, dict) or job.get("format") != "umbrafs-rotate" or job.get("version") != 1:
            raise RotationError(f"rotation journal {JOURNAL_DIR}/{JOB_NAME}: unknown format")
        return job

    def append(self, line: str, sync: bool = True) -> None:
        if self._log_fd is None:
            self._log_fd = os.open(self._rel(LOG_NAME), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                                   0o600, dir_fd=self.root_fd)
        os.write(self._log_fd, line.encode("ascii") + b"\n")
        if sync and self.durable:  # for a kill -9 the page cache is enough
            os.fdatasync(self._log_fd)

    def read_log(self) -> tuple[set[str], set[int], tuple[str, str] | None]:
        """(directories done by id, file inodes done, the last directory started and not done)."""
        dirs: set[str] = set()
        files: set[int] = set()
        started: tuple[str, str] | None = None
        try:
            data = self._read(LOG_NAME)
        except FileNotFoundError:
            return dirs, files, None
        for raw in data.decode("ascii", "replace").splitlines():
            parts = raw.split(" ", 2)
            if len(parts) < 2:
                continue  # a line cut by a crash
            if parts[0] == "dirstart" and len(parts) == 3:
                started = (parts[1], parts[2])
            elif parts[0] == "dirdone":
                dirs.add(parts[1])
                if started and started[0] == parts[1]:
                    started = None
            elif parts[0] == "filedone" and parts[1].isdigit():
                files.add(int(parts[1]))
        return dirs, files, started

    # A redo record: a write that may span pages, recorded before it is applied in place.
    def write_redo(self, files: list[tuple[str, bytes, list[tuple[int, bytes]]]]) -> None:
        """Body first, then the head that makes it valid: one process's writes become visible in
        order, so after a kill -9 a valid head means a whole body.  Durable mode also
        fdatasyncs and checksums it (a power cut may persist the head and not all the body)."""
        out: list[bytes] = [struct.pack(">I", len(files))]
        for rel, obj_id, extents in files:
            raw = rel.encode("utf-8", "surrogateescape")
            out += [struct.pack(">H", len(raw)), raw, obj_id, struct.pack(">I", len(extents))]
            for off, data in extents:
                out += [struct.pack(">QI", off, len(data)), data]
        length = sum(len(b) for b in out)
        crc = 0
        if self.durable:
            for b in out:
                crc = zlib.crc32(b, crc)
        if self._redo_fd is None:
            self._redo_fd = os.open(self._rel(REDO_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600,
                                    dir_fd=self.root_fd)
        fd = self._redo_fd
        pos = _REDO_HEAD.size
        for i in range(0, len(out), 512):  # IOV_MAX is 1024
            pos += _pwritev_all(fd, out[i : i + 512], pos)
        if self.durable:
            os.fdatasync(fd)
        os.pwrite(fd, _REDO_HEAD.pack(_REDO_MAGIC, length, crc), 0)
        if self.durable:
            os.fdatasync(fd)

    def read_redo(self) -> list[tuple[str, bytes, list[tuple[int, bytes]]]] | None:
        """The pending redo record, or None (none, or cut short before its head was written:
        then nothing of it was applied yet)."""
        try:
            data = self._read(REDO_NAME)
        except FileNotFoundError:
            return None
        if len(data) < _REDO_HEAD.size:
            return None
        magic, length, crc = _REDO_HEAD.unpack_from(data)
        body = data[_REDO_HEAD.size : _REDO_HEAD.size + length]
        if magic != _REDO_MAGIC or len(body) != length or (crc and zlib.crc32(body) != crc):
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
                self._redo_fd = os.open(self._rel(REDO_NAME), os.O_RDWR | os.O_CLOEXEC, dir_fd=self.root_fd)
        if self._redo_fd is not None:
            os.pwrite(self._redo_fd, bytes(_REDO_HEAD.size), 0)

    def remove(self) -> None:
        self.close()
        for name in (REDO_NAME, LOG_NAME, JOB_NAME):
            backing.unlink_quiet(self.root_fd, self._rel(name))
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(JOURNAL_DIR, dir_fd=self.root_fd)
        _fsync_dir(self.root_fd, ".")

    def close(self) -> None:
        for name in ("_log_fd", "_redo_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


def _pwritev_all(fd: int, buffers: list[bytes], off: int) -> int:
    total = sum(len(b) for b in buffers)
    n = os.pwritev(fd, buffers, off)
    if n < total:  # short write (rare): finish the rest plainly
        _write_all(fd, b"".join(buffers)[n:], off + n)
    return total


def _write_all(fd: int, data: bytes | bytearray | memoryview, off: int) -> None:
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, off)
        mv, off = mv[n:], off + n


def _write_durable(root_fd: int, rel: str, data: bytes, mode: int = 0o600) -> None:
    """write new → fsync → rename: *rel* holds the old or the new bytes, never a mix."""
    tmp = rel + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=root_fd)
    try:
        _write_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, rel, src_dir_fd=root_fd, dst_dir_fd=root_fd)


def _fsync_dir(root_fd: int, rel: str) -> None:
    fd = os.open(rel, _DIR_FLAGS, dir_fd=root_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
