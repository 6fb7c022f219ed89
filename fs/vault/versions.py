"""Previous versions: the old ciphertext of files that are deleted, renamed over, truncated or overwritten.

The mount keeps them in ``.umbrafs.versions/`` at the root of the backing directory (a dotted
name: no mount lists or looks it up, fsck and keywalk skip it) so that ``umbrafs restore`` can
roll back what a process did.  Keeping costs O(1) where it can: an unlinked file is *renamed*
into the area, a file replaced by rename is *hard-linked* there first; only truncation and the
first write into existing data need a copy (FICLONE where the backing fs can, else
copy_file_range), once per file and process per COALESCE window.  New files cost no copy: a
small record, buffered and written once a second, says who created or renamed what.

Records are encrypted (names must not leak from the backing dir) under a key derived from the
root wrap key, and carry the file's DEK, so a restore needs only the vault passphrase even if
the directories the file lived in are gone.  Layout: docs/format.md; reasons: docs/versions.md.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wire.clock import now_ns

from fs.format import layout as fmt
from fs.format import cryptocore as keys
from fs.errors import IntegrityError, UmbrafsError
from fs.vault.headers import DirKeys, read_dir_header, read_file_header
from wire.procfs import ProcessNames

log = logging.getLogger(__name__)

AREA = ".umbrafs.versions"
# The journal key's HKDF label and the frames' AAD are fs/format/cryptocore.py's (one place).
INFO_VERSIONS = keys.INFO_VERSIONS
FRAME_AAD = keys.FRAME_AAD
JOURNAL_PREFIX = "j-"
JOURNAL_SUFFIX = ".log"
DATA_PREFIX = "v-"
JOURNAL_ROTATE = 8 << 20  # a new journal after this many bytes, so old ones can be pruned whole
_FRAME_LEN = struct.Struct(">I")
_FRAME_MAX = 64 << 20
_FICLONE = 0x40049409
_PENDING_MAX = 512  # buffered create/rename records before a write is forced
FLUSH_EVERY = 1.0
_PRUNE_EVERY = 30.0
_COMPARE_MAX = 1 << 20
_RETRY_MAX = 100_000
_FRESH_MAX = 200_000  # files created in the last coalesce_s that are remembered  # records held while the journal cannot be written  # bytes of a first write compared with what they replace

OP_UNLINK = "unlink"
OP_RENAME_OVER = "rename-over"
OP_TRUNCATE = "truncate"
OP_OVERWRITE = "overwrite"
OP_CREATE = "create"
OP_RENAME = "rename"
OP_APPEND = "append"  # wrote past the end: size = the size before (no copy)
CONTENT_OPS = frozenset({OP_UNLINK, OP_RENAME_OVER, OP_TRUNCATE, OP_OVERWRITE})
OPS = CONTENT_OPS | {OP_CREATE, OP_RENAME, OP_APPEND}

_SIZE = re.compile(r"^(\d+)\s*([kmgt]?)(i?b)?$", re.IGNORECASE)
_AGE = re.compile(r"^(\d+)([smhdw])$")
_AGE_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class VersionsError(UmbrafsError):
    """A bad --keep-versions value, or the versions area cannot be used."""

    errno = errno.EINVAL


@dataclass(frozen=True, slots=True)
class Limits:
    """How much the area may hold.  Versions younger than min_keep_s are never pruned for size,
    so an attack stopped within that time loses nothing even if it destroyed more than max_bytes."""

    max_bytes: int = 2 << 30
    max_age_s: int = 7 * 86400
    min_keep_s: int = 600
    coalesce_s: int = 60


DEFAULT_LIMITS = Limits()


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise VersionsError(f"{text!r}: not a size (e.g. 500M, 2G)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]


def parse_age(text: str) -> int:
    m = _AGE.match(text.strip().lower())
    if not m:
        raise VersionsError(f"{text!r}: not an age (e.g. 12h, 7d)")
    return int(m.group(1)) * _AGE_UNIT[m.group(2)]


def parse_limits(text: str) -> Limits | None:
    """'off' → None; 'SIZE,AGE' (e.g. '2G,7d'), 'SIZE' or 'AGE' → Limits (defaults for what is left
    out).  Alone, '500m' is a size: an age on its own needs s, h, d or w ('30m,7d' is 30 MiB)."""
    text = text.strip().lower()
    if text in ("off", "no", "none", "0"):
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 2 or not all(parts):
        raise VersionsError(f"{text!r}: use SIZE,AGE (e.g. 2G,7d), SIZE, AGE or off")
    max_bytes, max_age = DEFAULT_LIMITS.max_bytes, DEFAULT_LIMITS.max_age_s
    if len(parts) == 2:
        max_bytes, max_age = parse_size(parts[0]), parse_age(parts[1])
    elif _AGE.match(parts[0]) and not parts[0].endswith("m"):
        max_age = parse_age(parts[0])
    else:
        max_bytes = parse_size(parts[0])
    return Limits(max_bytes=max_bytes, max_age_s=max_age)


def versions_key(root_wrap_key: bytes) -> bytes:
    return keys.versions_key(root_wrap_key)


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One entry of the journal (docs/versions.md)."""

    t: int
    op: str
    pid: int = 0
    uid: int = 0
    comm: str = ""
    fid: str = ""  # hex file id (directory id for a directory rename)
    path: str = ""  # plaintext path in the drive at that time, "/a/b"
    path2: str = ""  # rename target
    data: str = ""  # name of the kept backing file in the area, "" if none
    dek: str = field(default="", repr=False)
    size: int = 0  # plaintext size of the kept version
    mode: int = 0
    mtime_ns: int = 0
    owner: tuple[int, int] = (0, 0)
    is_dir: bool = False
    src_fid: str = ""  # rename-over: the file that took the path
    dir_id: str = ""  # no dek: the id and key of a directory the kept file has a key slot for
    dir_key: str = field(default="", repr=False)
    available: bool = True  # the kept file is still in the area (not pruned)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], present: set[str] | None = None) -> "Record":
        data = str(raw.get("data", ""))
        owner = raw.get("owner") or (0, 0)
        return cls(
            t=int(raw["t"]), op=str(raw["op"]), pid=int(raw.get("pid", 0)), uid=int(raw.get("uid", 0)),
            comm=str(raw.get("comm", "")), fid=str(raw.get("fid", "")), path=str(raw.get("path", "")),
            path2=str(raw.get("path2", "")), data=data, dek=str(raw.get("dek", "")), size=int(raw.get("size", 0)),
            mode=int(raw.get("mode", 0)), mtime_ns=int(raw.get("mtime", 0)), owner=(int(owner[0]), int(owner[1])),
            is_dir=bool(raw.get("dir", False)), src_fid=str(raw.get("src_fid", "")),
            dir_id=str(raw.get("dir_id", "")), dir_key=str(raw.get("dir_key", "")), available=bool(data) and (present is None or data in present),
        )

    def dek_for(self, header: fmt.Header) -> bytes:
        """The DEK of the kept file whose header is *header* (IntegrityError if it does not open)."""
        if self.dek:
            return bytes.fromhex(self.dek)
        if not self.dir_key:
            raise IntegrityError("the version's key was not kept")
        return DirKeys(bytes.fromhex(self.dir_id), bytes.fromhex(self.dir_key)).unwrap(header)

    def public(self) -> dict[str, Any]:
        """What `restore --json` shows: everything but the key."""
        return {
            "t": self.t, "op": self.op, "pid": self.pid, "uid": self.uid, "comm": self.comm, "fid": self.fid,
            "path": self.path, "path2": self.path2, "data": self.data, "size": self.size, "mode": self.mode,
            "mtime_ns": self.mtime_ns, "is_dir": self.is_dir, "src_fid": self.src_fid, "available": self.available,
        }


def seal_frame(aead: AESGCM, records: list[dict[str, Any]], nonce: bytes | None = None) -> bytes:
    """One journal frame: u32be(length) || nonce || AES-GCM(JSON of *records*, FRAME_AAD).
    *nonce* is for test vectors only: by default it is random."""
    payload = json.dumps(records, separators=(",", ":")).encode("ascii")
    nonce = os.urandom(fmt.NONCE_LEN) if nonce is None else nonce
    body = nonce + aead.encrypt(nonce, payload, FRAME_AAD)
    return _FRAME_LEN.pack(len(body)) + body


def open_frames(aead: AESGCM, data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The records of one journal, and how many frames failed authentication (a torn last frame,
    from a crash mid-write, is not counted: it was never acknowledged to anyone)."""
    out: list[dict[str, Any]] = []
    damaged = 0
    pos = 0
    while pos + _FRAME_LEN.size <= len(data):
        (n,) = _FRAME_LEN.unpack_from(data, pos)
        start, end = pos + _FRAME_LEN.size, pos + _FRAME_LEN.size + n
        if n > _FRAME_MAX or end > len(data):
            break
        body = data[start:end]
        try:
            records = json.loads(aead.decrypt(body[: fmt.NONCE_LEN], body[fmt.NONCE_LEN :], FRAME_AAD))
            out.extend(r for r in records if isinstance(r, dict))
        except (InvalidTag, ValueError):
            damaged += 1
        pos = end
    return out, damaged


def journal_name(t: int) -> str:
    return f"{JOURNAL_PREFIX}{t:016x}-{os.urandom(4).hex()}{JOURNAL_SUFFIX}"


def data_name(t: int) -> str:
    return f"{DATA_PREFIX}{t:016x}-{os.urandom(4).hex()}"


def name_time(name: str) -> int:
    try:
        return int(name[2:18], 16)
    except ValueError:
        return 0


def read_records(vault_path: os.PathLike[str] | str, root_wrap_key: bytes) -> tuple[list[Record], int]:
    """Every record of the vault's versions area in time order, and the count of damaged frames."""
    area = Path(vault_path) / AREA
    try:
        names = sorted(os.listdir(area))
    except FileNotFoundError:
        return [], 0
    present = {n for n in names if n.startswith(DATA_PREFIX)}
    aead = AESGCM(versions_key(root_wrap_key))
    records: list[Record] = []
    damaged = 0
    for name in names:
        if not (name.startswith(JOURNAL_PREFIX) and name.endswith(JOURNAL_SUFFIX)):
            continue
        try:
            raw = (area / name).read_bytes()
        except OSError as exc:
            log.warning("versions: cannot read journal %s: %s", name, exc)
            continue
        found, bad = open_frames(aead, raw)
        damaged += bad
        for item in found:
            try:
                records.append(Record.from_dict(item, present))
            except (KeyError, TypeError, ValueError, IndexError):
                damaged += 1
    records.sort(key=lambda r: r.t)  # stable: journal order breaks ties
    return records, damaged


# -- the mount's side -----------------------------------------------------------------------


def _copy_into(src_fd: int, dst_fd: int, reflink: bool) -> bool:
    """Copy a whole backing file; returns whether reflinks are still worth trying."""
    if reflink:
        try:
            fcntl.ioctl(dst_fd, _FICLONE, src_fd)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS, errno.EPERM):
                raise
            reflink = False
    size = os.fstat(src_fd).st_size
    os.ftruncate(dst_fd, size)  # holes stay holes: only the data extents are copied
    for start, end in _extents(src_fd, size):
        off = start
        try:
            while off < end:
                n = os.copy_file_range(src_fd, dst_fd, end - off, off, off)
                if n <= 0:
                    break
                off += n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            while off < end:  # plain copy
                chunk = os.pread(src_fd, min(1 << 20, end - off), off)
                if not chunk:
                    break
                os.pwrite(dst_fd, chunk, off)
                off += len(chunk)
    return reflink


def _extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The (start, end) byte ranges of *fd* that hold data (a sparse 1 TiB file has few)."""
    out = []
    off = 0
    try:
        while off < size:
            start = os.lseek(fd, off, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, min(end, size)))
            off = end
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data after off
            return out
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return [(0, size)]  # no SEEK_DATA here: copy it all
        raise
    return out


# A file kept before a rename replaced it: (area name, file id, DEK, stat, or the directory keys that open it).
_Replaced = tuple[str, bytes, bytes, os.stat_result, DirKeys | None]


def object_id_at(root_fd: int, rel: str, st: os.stat_result, node: Any) -> bytes:
    """The file or directory id of what is now at *rel* (the node's, if it has it loaded)."""
    if node is not None:
        if node.file is not None:
            return node.file.file_id
        if node.keys is not None:
            return node.keys.dir_id
    try:
        if stat.S_ISDIR(st.st_mode):
            return read_dir_header(root_fd, rel).obj_id
        if stat.S_ISREG(st.st_mode):
            fd = os.open(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
            try:
                return read_file_header(fd).obj_id
            finally:
                os.close(fd)
    except (OSError, UmbrafsError):
        pass
    return b""


class VersionStore:
    """The mount's writer of the versions area (one per owner mount; runs on the trio thread,
    except prune(), which a worker thread runs)."""

    def __init__(self, root_fd: int, root_wrap_key: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
        self.root_fd = root_fd
        self.limits = limits
        self._aead: Any = AESGCM(versions_key(root_wrap_key))  # Any: lockdown's stand-in while locked
        try:
            os.mkdir(AREA, 0o700, dir_fd=root_fd)
        except FileExistsError:
            pass
        self.area_fd = os.open(AREA, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
        self._journal_fd = -1
        self._journal = ""
        self._journal_size = 0
        self._pending: list[dict[str, Any]] = []
        # (file id, pid) -> (time, record of the copy): a process writing the same file again
        # within coalesce_s gets a record pointing at that copy, not another copy.
        self._recent: dict[tuple[bytes, int], tuple[int, dict[str, Any]]] = {}
        self._fresh: dict[int, tuple[int, int]] = {}  # backing inode -> (pid, time) of files created here
        self.kept_fh: set[int] = set()  # handles of new files, or whose first real overwrite has been kept
        self.appended_fh: set[int] = set()  # handles that wrote past the end (size before recorded)
        self._comm_of = ProcessNames()
        self._reflink = True
        self.added_bytes = 0
        self._since_prune = _PRUNE_EVERY  # the first tick prunes
        self.kept = 0

    def forget_key(self, stand_in: object) -> None:
        """Lock (fs/mount/lockdown.py): flush, then let *stand_in*, which refuses every use,
        take the journal cipher's place."""
        self.flush()  # its journal is sealed under the versions key: write it out while there is one
        self._aead = stand_in

    def set_key(self, root_wrap_key: bytes) -> None:
        """Unlock: the journal cipher again, from the root wrap key."""
        self._aead = AESGCM(versions_key(root_wrap_key))

    # -- journal ------------------------------------------------------------------------

    def _record(self, op: str, pid: int, uid: int, path: str, **fields: Any) -> dict[str, Any]:
        rec = {"t": now_ns(), "op": op, "pid": pid, "uid": uid, "comm": self._comm_of(pid), "path": path}
        rec.update(fields)
        return rec

    def note(self, rec: dict[str, Any], now: bool = False) -> None:
        self._pending.append(rec)
        if now or len(self._pending) >= _PENDING_MAX:
            self.flush()

    def flush(self) -> None:
        """Write buffered records (never raises: a request must not fail on the journal)."""
        if not self._pending:
            return
        records, self._pending = self._pending, []
        try:
            frame = seal_frame(self._aead, records)
            if self._journal_fd < 0 or self._journal_size >= JOURNAL_ROTATE:
                self._open_journal()
            os.write(self._journal_fd, frame)
            self._journal_size += len(frame)
        except OSError as exc:
            log.error("versions: journal write failed (%d records), retrying in a second: %s", len(records), exc)
            if len(records) + len(self._pending) <= _RETRY_MAX:  # e.g. disk full: keep them for the next try
                self._pending = records + self._pending

    def _open_journal(self) -> None:
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
            self._journal_fd = -1
        name = journal_name(now_ns())
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        self._journal_fd = os.open(name, flags, 0o600, dir_fd=self.area_fd)
        self._journal, self._journal_size = name, 0

    # -- keeping --------------------------------------------------------------------------

    def _meta(self, st: os.stat_result, header_len: int = fmt.FILE_HEADER_LEN) -> dict[str, Any]:
        return {
            "size": fmt.plain_size(st.st_size, header_len), "mode": st.st_mode, "mtime": st.st_mtime_ns,
            "owner": [st.st_uid, st.st_gid],
        }

    def _copy(self, src_fd: int) -> str:
        name = data_name(now_ns())
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.area_fd)
        try:
            self._reflink = _copy_into(src_fd, dst, self._reflink)
        except BaseException:
            os.close(dst)
            with _quiet():
                os.unlink(name, dir_fd=self.area_fd)
            raise
        os.close(dst)
        return name

    def keep_unlinked(self, rel: str, st: os.stat_result, parent: DirKeys, open_file: Any, pid: int, uid: int, path: str) -> bool:
        """Before the last link of a regular file goes: keep it.  True if it was moved into the area
        (the caller must not unlink it); False if the caller should unlink as usual (an open file
        was copied, since its handles may still write to it; or keeping failed, which is logged)."""
        if self._own_fresh(st.st_ino, pid):
            del self._fresh[st.st_ino]
            return False
        try:
            if open_file is not None:
                name = self._copy(open_file.fd)
                self._kept(OP_UNLINK, pid, uid, path, name, open_file.file_id, open_file.dek, st)
                return False
            name = data_name(now_ns())
            os.rename(rel, name, src_dir_fd=self.root_fd, dst_dir_fd=self.area_fd)
        except (OSError, UmbrafsError) as exc:
            log.error("versions: could not keep a deleted file: %s", exc)
            return False
        # No header read here (rm -rf pays per file): the record carries the key of the directory
        # the file was in, and restore unwraps the DEK from the kept header's slot for it.
        self._kept(OP_UNLINK, pid, uid, path, name, b"", b"", st, dir_keys=parent)
        return True

    def _kept(self, op: str, pid: int, uid: int, path: str, name: str, fid: bytes, dek: bytes, st: os.stat_result,
              path2: str = "", write: bool = True, dir_keys: DirKeys | None = None) -> dict[str, Any]:
        rec = self._record(op, pid, uid, path, path2=path2, data=name, fid=fid.hex(), dek=dek.hex(), **self._meta(st))
        if dir_keys is not None:
            rec["dir_id"], rec["dir_key"] = dir_keys.dir_id.hex(), dir_keys.key.hex()
        self.added_bytes += st.st_blocks * 512
        self.kept += 1
        if write:
            self.note(rec)
        return rec

    def before_replace(self, rel: str, st: os.stat_result, parent: DirKeys, open_file: Any) -> _Replaced | None:
        """Before a rename replaces the regular file at *rel*: hard-link it into the area (a copy if
        it is open).  Returns what renamed()/abort_replace() need, or None (nothing kept)."""
        try:
            if open_file is not None:
                return self._copy(open_file.fd), open_file.file_id, open_file.dek, st, None
            name = data_name(now_ns())
            os.link(rel, name, src_dir_fd=self.root_fd, dst_dir_fd=self.area_fd, follow_symlinks=False)
            return name, b"", b"", st, parent
        except (OSError, UmbrafsError) as exc:
            log.error("versions: could not keep a file replaced by rename: %s", exc)
            return None

    def abort_replace(self, kept: _Replaced | None) -> None:
        if kept is not None:
            with _quiet():
                os.unlink(kept[0], dir_fd=self.area_fd)

    def renamed(self, kept: _Replaced | None, pid: int, uid: int, path: str, path2: str, fid: bytes, is_dir: bool) -> None:
        """After a rename: the record (with the replaced file, if one was kept)."""
        if kept is not None:
            name, old_fid, dek, st, dir_keys = kept
            rec = self._kept(OP_RENAME_OVER, pid, uid, path, name, old_fid, dek, st, path2=path2, write=False, dir_keys=dir_keys)
            rec["src_fid"] = fid.hex()
            self.note(rec)
        else:
            self.note(self._record(OP_RENAME, pid, uid, path, path2=path2, fid=fid.hex(), dir=is_dir))

    def object_id(self, rel: str, st: os.stat_result, node: Any) -> bytes:
        return object_id_at(self.root_fd, rel, st, node)

    def created(self, pid: int, uid: int, path: str, fid: bytes, fh: int = 0, ino: int = 0) -> None:
        """A new file: a record only.  Writes through its handle need no watching (nothing to keep)."""
        rec = self._record(OP_CREATE, pid, uid, path, fid=fid.hex())
        self.note(rec)
        if fh:
            self.kept_fh.add(fh)
        if ino:
            if len(self._fresh) > _FRESH_MAX:
                self._fresh.clear()
            self._fresh[ino] = (pid, rec["t"])

    def _own_fresh(self, ino: int, pid: int) -> bool:
        """Did *pid* itself create this file less than coalesce_s ago?  Then deleting or rewriting
        it destroys nothing of anyone else's (temp files, build outputs, tar x then rm -rf by the
        same process): nothing is kept, and the data need never reach the disk."""
        hit = self._fresh.get(ino)
        return hit is not None and hit[0] == pid and now_ns() - hit[1] < self.limits.coalesce_s * 1_000_000_000

    def keep_open(self, op: str, open_file: Any, pid: int, uid: int, path: str | Callable[[], str]) -> None:
        """Before an open file's data is cut or overwritten: copy it (once per file and process per
        coalesce window).  Raises OSError (e.g. ENOSPC) if it cannot: the change is then refused,
        never made without its version."""
        path = path() if callable(path) else path
        t = now_ns()
        key = (open_file.file_id, pid)
        hit = self._recent.get(key)
        if hit is not None and t - hit[0] < self.limits.coalesce_s * 1_000_000_000:
            rec = dict(hit[1], t=t, op=op, path=path)
            self.note(rec)
            return
        st = os.fstat(open_file.fd)
        if self._own_fresh(st.st_ino, pid):
            return
        name = self._copy(open_file.fd)
        rec = self._kept(op, pid, uid, path, name, open_file.file_id, open_file.dek, st)
        self._recent[key] = (t, rec)

    def before_write(self, fh: int, open_file: Any, off: int, buf: bytes | memoryview, pid: int, uid: int,
                     path: Callable[[], str]) -> None:
        """A write through a handle of a file that existed before it was opened (handles of files
        they created are in kept_fh from the start, as are handles whose overwrite was kept).

        Into existing data: keep the file if these bytes really change it (the writeback cache
        rewrites a partial last page when appending; that is not an overwrite).  Past the end: the
        first such write records the size before (an "append" record, no copy), so restore can cut
        the file back."""
        size = open_file.size
        overlap = min(size - off, len(buf), _COMPARE_MAX)
        if overlap > 0:
            try:
                same = bytes(open_file.read(off, overlap)) == bytes(buf[:overlap])
            except UmbrafsError:
                same = False
            if not (same and overlap == min(size - off, len(buf))):
                self.keep_open(OP_OVERWRITE, open_file, pid, uid, path)
                self.kept_fh.add(fh)
                return
        if off + len(buf) > size and fh not in self.appended_fh:
            self.appended_fh.add(fh)
            self.note(self._record(OP_APPEND, pid, uid, path(), fid=open_file.file_id.hex(), size=size))

    # -- background --------------------------------------------------------------------

    def tick(self, live_fh: Iterable[int], locked: bool) -> bool:
        """The mount's once-a-second upkeep (fs/mount/tasks.py): flush buffered records, and
        say whether it is time to prune (every 30 s, or sooner once a tenth of max_bytes has
        been added; prune() then runs in a worker thread)."""
        self.flush()
        if locked:
            self._recent.clear()  # a locked mount keeps no DEKs around (fs/mount/lockdown.py)
        self._since_prune += FLUSH_EVERY
        if self._since_prune < _PRUNE_EVERY and self.added_bytes <= self.limits.max_bytes // 10:
            return False
        self._since_prune = 0.0
        self.added_bytes = 0
        live = set(live_fh)
        self.kept_fh.intersection_update(live)
        self.appended_fh.intersection_update(live)
        horizon = now_ns() - self.limits.coalesce_s * 1_000_000_000
        self._recent = {k: v for k, v in self._recent.items() if v[0] >= horizon}
        self._fresh = {k: v for k, v in self._fresh.items() if v[1] >= horizon}
        return True

    def prune(self) -> int:
        """Drop versions past max_age, then the oldest while over max_bytes (sparing those younger
        than min_keep_s), and journals no version needs any more.  Returns how many went."""
        now = now_ns()
        lim = self.limits
        try:
            names = os.listdir(self.area_fd)
        except OSError as exc:
            log.error("versions: cannot list the area: %s", exc)
            return 0
        data: list[tuple[int, str, int]] = []
        journals: list[tuple[int, str]] = []
        for name in names:
            if name.startswith(DATA_PREFIX):
                try:
                    st = os.stat(name, dir_fd=self.area_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                data.append((name_time(name), name, st.st_blocks * 512))
            elif name.startswith(JOURNAL_PREFIX):
                journals.append((name_time(name), name))
        data.sort()
        journals.sort()
        too_old = now - lim.max_age_s * 1_000_000_000
        young = now - lim.min_keep_s * 1_000_000_000
        total = sum(d[2] for d in data)
        dropped = 0
        for t, name, used in data:
            if not (t < too_old or (total > lim.max_bytes and t < young)):
                break
            with _quiet():
                os.unlink(name, dir_fd=self.area_fd)
                dropped += 1
            total -= used
        # A journal's records are all older than the next journal's start.
        for (t, name), (t_next, _) in zip(journals, journals[1:]):
            if t_next < too_old and name != self._journal:
                with _quiet():
                    os.unlink(name, dir_fd=self.area_fd)
        if dropped:
            log.info("versions: pruned %d old version(s); %d bytes kept", dropped, total)
        return dropped

    def close(self) -> None:
        self.flush()
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
            self._journal_fd = -1
        os.close(self.area_fd)


class _quiet:
    """Suppress a missing file (cleanup of something that may already be gone)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        return kind is not None and issubclass(kind, FileNotFoundError)

