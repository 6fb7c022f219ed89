"""A recipient's view of one shared file: a read-only root directory holding that file only.

The recipient holds the file's DEK and nothing else: not the key of the directory it
lives in, so not its encrypted name either (the share carries the plaintext name in
the sealed payload).  The view is read-only.  Each open reads the header again and
checks the file id, so the owner's in-place edits show up; an editor that saves by
writing a new file and renaming it over the old one gives it a new id and a new DEK,
which this share does not open (EIO) — share the directory for that.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import time
from typing import NamedTuple

import pyfuse3
import trio

from fs.format import layout as fmt
from wire.sink import EventSink
from fs.vault.content import OpenFile
from fs.errors import IntegrityError
from fs.mount.boundary import GatedOperations, fuse
from fs.vault.headers import read_file_header
from fs.vault.keywalk import open_dir

log = logging.getLogger(__name__)

FILE_INODE = pyfuse3.ROOT_INODE + 1


class SharedFile(NamedTuple):
    """What a recipient needs to serve one shared file (the DEK stays out of reprs)."""

    backing_rel: str   # relative to the vault
    file_id: bytes
    dek: bytes
    name: bytes        # plaintext name shown in the mount

    def __repr__(self) -> str:
        return f"SharedFile({self.backing_rel!r}, {self.file_id.hex()})"


class SingleFileOperations(GatedOperations):
    """Serves `/<name>` (read-only) from the backing file *backing_rel* with its DEK.

    Every handler goes through the same errno boundary and lock gate as Operations
    (fs/mount/boundary.py): an OSError of the backing file answers its errno, it does
    not end the mount."""

    def __init__(self, vault_path: str, backing_rel: str, file_id: bytes, dek: bytes, name: bytes, *,
                 events: EventSink | None = None, timeout: float = 1.0) -> None:
        super().__init__()
        parent, _, self._b_name = backing_rel.rpartition("/")
        if not name or b"/" in name or name in (b".", b".."):
            raise IntegrityError("the shared file's name is not a valid file name")
        self.root_fd = open_dir(vault_path, parent or ".")  # the directory holding the file
        self.file_id = file_id
        self.name = name
        self._dek = dek
        self.events = events
        self.timeout = timeout
        self._handles: dict[int, tuple[OpenFile, int, int, int]] = {}  # fh → file, pid, uid, bytes read
        self._next_fh = 1
        self._mounted_ns = time.time_ns()
        self.initialized = trio.Event()
        self.locked = False  # fs/mount/lockdown.py: the DEK dropped, requests refused
        self.locked_refusals = 0

    def init(self) -> None:
        self.initialized.set()

    # -- for fs/mount/lockdown.py ---------------------------------------------------

    def open_files(self) -> list[OpenFile]:
        return [of for of, *_ in self._handles.values()]

    def take_key(self) -> bytes:
        """Lock: hand over the DEK (for wiping) and hide the name."""
        dek, self._dek = self._dek, b""
        self.name = b"\0"  # matches no lookup (a name never holds NUL)
        return dek

    def give_key(self, dek: bytes, name: bytes) -> None:
        """Unlock: the DEK and the plaintext name again."""
        self._dek, self.name = dek, name

    def close(self) -> None:
        for of, *_ in self._handles.values():
            os.close(of.fd)
        self._handles.clear()
        os.close(self.root_fd)

    # -- attributes -------------------------------------------------------------

    def _base_attr(self, ino: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = ino
        attr.entry_timeout = self.timeout
        attr.attr_timeout = self.timeout
        attr.st_uid, attr.st_gid = os.getuid(), os.getgid()
        attr.st_blksize = fmt.BLOCK_SIZE
        return attr

    def _root_attr(self) -> pyfuse3.EntryAttributes:
        attr = self._base_attr(pyfuse3.ROOT_INODE)
        attr.st_mode = stat.S_IFDIR | 0o555
        attr.st_nlink = 2
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self._mounted_ns
        return attr

    def _file_attr(self) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(self._b_name, dir_fd=self.root_fd)
        except FileNotFoundError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        attr = self._base_attr(FILE_INODE)
        attr.st_mode = stat.S_IFREG | (stat.S_IMODE(st.st_mode) & 0o555)
        attr.st_nlink = 1
        attr.st_size = fmt.plain_size(st.st_size, fmt.FILE_HEADER_LEN)
        attr.st_blocks = st.st_blocks
        attr.st_atime_ns, attr.st_mtime_ns, attr.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        return attr

    @fuse
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name in (b".", b".."):
            return self._root_attr()
        if name != self.name:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._file_attr()

    @fuse
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode == pyfuse3.ROOT_INODE:
            return self._root_attr()
        if inode == FILE_INODE:
            return self._file_attr()
        raise pyfuse3.FUSEError(errno.ENOENT)

    @fuse
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = fmt.BLOCK_SIZE
        data.f_namemax = 255
        return data

    # -- the directory ------------------------------------------------------------

    @fuse
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return 0

    @fuse
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            try:
                attr = self._file_attr()
            except pyfuse3.FUSEError:
                return  # the owner deleted it: an empty directory
            pyfuse3.readdir_reply(token, self.name, attr, 1)

    @fuse
    async def releasedir(self, fh: int) -> None:
        pass

    # -- the file -------------------------------------------------------------------

    @fuse
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            fd = os.open(self._b_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.root_fd)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        try:
            header = read_file_header(fd)
            if header.obj_id != self.file_id:
                raise IntegrityError("the shared file was replaced by another file (new DEK)")
            of = OpenFile(fd, header, self._dek)
        except Exception as exc:
            os.close(fd)
            log.error("shared file: %s", exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = (of, ctx.pid, ctx.uid, 0)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False)

    @fuse
    async def read(self, fh: int, off: int, size: int) -> bytes:
        entry = self._handles.get(fh)
        if entry is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        of, pid, uid, done = entry
        try:
            data = bytes(of.read(off, size))
        except IntegrityError as exc:
            log.error("integrity: shared file: %s", exc)
            self._emit("integrity", pid, uid, result=errno.EIO)
            raise pyfuse3.FUSEError(errno.EIO) from None
        self._handles[fh] = (of, pid, uid, done + len(data))
        return data

    @fuse
    async def release(self, fh: int) -> None:
        entry = self._handles.pop(fh, None)
        if entry is None:
            return
        of, pid, uid, done = entry
        os.close(of.fd)
        self._emit("access", pid, uid, bytes_read=done, detail={"mode": "r", "size": of.size})

    @fuse
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP if not name.startswith(b"user.") else pyfuse3.ENOATTR)

    @fuse
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return []

    def _emit(self, op: str, pid: int, uid: int, *, result: int = 0, detail: dict[str, str | int | bool] | None = None,
              **counts: int) -> None:
        if self.events is None:
            return
        try:
            self.events.emit(op, uid=uid, pid=pid, path="/" + self.name.decode("utf-8", "surrogateescape"),
                             file_id=self.file_id.hex(), result=result, detail=detail, **counts)
        except Exception:  # a sink must never take a request down
            log.exception("event sink failed")
