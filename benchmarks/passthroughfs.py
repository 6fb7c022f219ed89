#!/usr/bin/env python3
"""A plain pyfuse3 passthrough filesystem with no cryptography.

This is the "Python ceiling" for the umbrafs benchmarks: the same stack as
umbrafs (pyfuse3 + trio, one Python process, synchronous syscalls inside the
handlers) minus encryption, name mangling and metadata.  It follows the shape
of pyfuse3's examples/passthroughfs.py, with the changes needed to make it a
fair peer of gocryptfs:

* entry and attribute timeouts of 1 s (gocryptfs/go-fuse use 1 s too);
* the kernel writeback cache is enabled (``enable_writeback_cache``), so
  files opened write-only are reopened read-write on the backing side and
  O_APPEND is left to the kernel, as libfuse's passthrough_ll does;
* pread/pwrite instead of lseek+read/write, one backing fd per open();
* readdir works on a snapshot taken at opendir (index offsets), so large
  directories are not re-listed and re-sorted on every readdir call;
* extended attributes are passed through (``ls -l`` asks for them, and a
  real filesystem answers).

O_DIRECT is stripped from the backing open (Python's buffers are not
aligned); gocryptfs does the same for its backing files.

pyfuse3 runs on the same trio shim as umbrafs (``fs.mount.quick_pyfuse3_trio``:
no scheduler pass per request while requests keep coming), so this stays the
ceiling for umbrafs; ``--plain-trio`` runs stock pyfuse3 + trio instead.

Usage::

    python benchmarks/passthroughfs.py SOURCE MOUNTPOINT

It stays in the foreground and unmounts on SIGTERM, SIGINT or SIGHUP, or
exits when unmounted with ``fusermount3 -u MOUNTPOINT``.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import stat as stat_m
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pyfuse3
import trio
from pyfuse3 import FUSEError

log = logging.getLogger("passthroughfs")

#: Seconds the kernel may cache names and attributes (gocryptfs uses 1 s).
CACHE_TIMEOUT = 1.0

_ROOT = pyfuse3.ROOT_INODE


def _oserror(exc: OSError) -> FUSEError:
    return FUSEError(exc.errno or errno.EIO)


class PassthroughOperations(pyfuse3.Operations):
    """Mirror the directory tree *source*; FUSE inode numbers are the backing
    st_ino values, except that the source directory itself is ROOT_INODE."""

    enable_writeback_cache = True

    def __init__(self, source: str) -> None:
        super().__init__()
        self._source = os.path.abspath(source)
        self._source_ino = os.lstat(self._source).st_ino
        self._uid_is_root = os.geteuid() == 0
        # inode -> backing paths (more than one with hard links)
        self._paths: dict[int, set[str]] = {_ROOT: {self._source}}
        self._lookups: defaultdict[int, int] = defaultdict(int)
        # open files: fd -> inode, inode -> fds
        self._fd_inode: dict[int, int] = {}
        self._inode_fds: defaultdict[int, set[int]] = defaultdict(set)
        # open directories: handle -> (path, snapshot of names)
        self._dirs: dict[int, tuple[str, list[str]]] = {}
        self._next_dir_handle = 1

    # -- helpers ---------------------------------------------------------

    def _fuse_ino(self, st_ino: int) -> int:
        return _ROOT if st_ino == self._source_ino else st_ino

    def _path(self, inode: int) -> str:
        paths = self._paths.get(inode)
        if not paths:
            raise FUSEError(errno.ENOENT)
        return next(iter(paths))

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    def _remember(self, inode: int, path: str) -> None:
        self._lookups[inode] += 1
        self._paths.setdefault(inode, set()).add(path)

    def _drop_path(self, inode: int, path: str) -> None:
        paths = self._paths.get(inode)
        if paths is None:
            return
        paths.discard(path)
        if not paths and inode != _ROOT:
            del self._paths[inode]

    def _attr(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = self._fuse_ino(st.st_ino)
        entry.generation = 0
        entry.entry_timeout = CACHE_TIMEOUT
        entry.attr_timeout = CACHE_TIMEOUT
        entry.st_mode = st.st_mode
        entry.st_nlink = st.st_nlink
        entry.st_uid = st.st_uid
        entry.st_gid = st.st_gid
        entry.st_rdev = st.st_rdev
        entry.st_size = st.st_size
        entry.st_blksize = st.st_blksize
        entry.st_blocks = st.st_blocks
        entry.st_atime_ns = st.st_atime_ns
        entry.st_mtime_ns = st.st_mtime_ns
        entry.st_ctime_ns = st.st_ctime_ns
        return entry

    def _lstat(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            return self._attr(os.lstat(path))
        except OSError as exc:
            raise _oserror(exc) from None

    def _chown_new(self, path: str, ctx: pyfuse3.RequestContext) -> None:
        if self._uid_is_root:
            try:
                os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)
            except OSError as exc:
                raise _oserror(exc) from None

    @staticmethod
    def _backing_flags(flags: int) -> int:
        """Flags for opening the backing file (see the module docstring)."""
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | getattr(os, "O_DIRECT", 0))
        if (flags & os.O_ACCMODE) == os.O_WRONLY:
            flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return flags & ~os.O_APPEND

    def _register_fd(self, fd: int, inode: int) -> None:
        self._fd_inode[fd] = inode
        self._inode_fds[inode].add(fd)

    # -- lookups and attributes ------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        attr = self._lstat(path)
        if name not in (b".", b".."):
            self._remember(attr.st_ino, path)
        return attr

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, nlookup in inode_list:
            remaining = self._lookups.get(inode, 0) - nlookup
            if remaining > 0:
                self._lookups[inode] = remaining
                continue
            self._lookups.pop(inode, None)
            if inode != _ROOT and not self._inode_fds.get(inode):
                self._paths.pop(inode, None)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        fds = self._inode_fds.get(inode)
        try:
            if fds:
                return self._attr(os.fstat(next(iter(fds))))
            return self._attr(os.lstat(self._path(inode)))
        except OSError as exc:
            raise _oserror(exc) from None

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        target: int | str = fh if fh is not None else self._path(inode)
        by_fd = fh is not None
        try:
            if fields.update_size:
                if by_fd:
                    os.ftruncate(fh, attr.st_size)  # type: ignore[arg-type]
                else:
                    os.truncate(target, attr.st_size)
            if fields.update_mode:
                if by_fd:
                    os.fchmod(fh, stat_m.S_IMODE(attr.st_mode))  # type: ignore[arg-type]
                else:
                    os.chmod(target, stat_m.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                uid = attr.st_uid if fields.update_uid else -1
                gid = attr.st_gid if fields.update_gid else -1
                if by_fd:
                    os.fchown(fh, uid, gid)  # type: ignore[arg-type]
                else:
                    os.chown(target, uid, gid, follow_symlinks=False)
            if fields.update_atime or fields.update_mtime:
                old = os.fstat(fh) if by_fd else os.lstat(target)  # type: ignore[arg-type]
                atime = attr.st_atime_ns if fields.update_atime else old.st_atime_ns
                mtime = attr.st_mtime_ns if fields.update_mtime else old.st_mtime_ns
                if by_fd:
                    os.utime(fh, ns=(atime, mtime))  # type: ignore[arg-type]
                else:
                    os.utime(target, ns=(atime, mtime), follow_symlinks=False)
        except OSError as exc:
            raise _oserror(exc) from None
        return await self.getattr(inode, ctx)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        try:
            return os.fsencode(os.readlink(self._path(inode)))
        except OSError as exc:
            raise _oserror(exc) from None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        try:
            st = os.statvfs(self._source)
        except OSError as exc:
            raise _oserror(exc) from None
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(out, name, getattr(st, name))
        out.f_namemax = st.f_namemax
        return out

    # -- directories -----------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        path = self._path(inode)
        try:
            names = os.listdir(path)
        except OSError as exc:
            raise _oserror(exc) from None
        handle = self._next_dir_handle
        self._next_dir_handle += 1
        self._dirs[handle] = (path, names)
        return handle

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        path, names = self._dirs[fh]
        for index in range(start_id, len(names)):
            child = os.path.join(path, names[index])
            try:
                attr = self._attr(os.lstat(child))
            except OSError:
                continue  # vanished since opendir
            if not pyfuse3.readdir_reply(token, os.fsencode(names[index]), attr, index + 1):
                return
            self._remember(attr.st_ino, child)

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            os.mkdir(path, mode & ~ctx.umask)
        except OSError as exc:
            raise _oserror(exc) from None
        self._chown_new(path, ctx)
        attr = self._lstat(path)
        self._remember(attr.st_ino, path)
        return attr

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._child(parent_inode, name)
        try:
            inode = self._fuse_ino(os.lstat(path).st_ino)
            os.rmdir(path)
        except OSError as exc:
            raise _oserror(exc) from None
        self._drop_path(inode, path)

    # -- names -----------------------------------------------------------

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            os.mknod(path, mode & ~ctx.umask, rdev)
        except OSError as exc:
            raise _oserror(exc) from None
        self._chown_new(path, ctx)
        attr = self._lstat(path)
        self._remember(attr.st_ino, path)
        return attr

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            os.symlink(os.fsdecode(target), path)
        except OSError as exc:
            raise _oserror(exc) from None
        self._chown_new(path, ctx)
        attr = self._lstat(path)
        self._remember(attr.st_ino, path)
        return attr

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(new_parent_inode, new_name)
        try:
            os.link(self._path(inode), path, follow_symlinks=False)
        except OSError as exc:
            raise _oserror(exc) from None
        attr = self._lstat(path)
        self._remember(inode, path)
        return attr

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._child(parent_inode, name)
        try:
            inode = self._fuse_ino(os.lstat(path).st_ino)
            os.unlink(path)
        except OSError as exc:
            raise _oserror(exc) from None
        self._drop_path(inode, path)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise FUSEError(errno.EINVAL)  # RENAME_EXCHANGE is not supported
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        try:
            st = os.lstat(old)
            try:
                replaced: int | None = self._fuse_ino(os.lstat(new).st_ino)
            except FileNotFoundError:
                replaced = None
            if replaced is not None and flags & pyfuse3.RENAME_NOREPLACE:
                raise FUSEError(errno.EEXIST)
            os.rename(old, new)
        except OSError as exc:
            raise _oserror(exc) from None
        inode = self._fuse_ino(st.st_ino)
        if replaced is not None and replaced != inode:
            self._drop_path(replaced, new)
        if inode in self._paths:
            self._drop_path(inode, old)
            self._paths.setdefault(inode, set()).add(new)
        if stat_m.S_ISDIR(st.st_mode):
            prefix = old + os.sep
            for paths in self._paths.values():
                moved = {p for p in paths if p.startswith(prefix)}
                if moved:
                    paths.difference_update(moved)
                    paths.update(new + p[len(old):] for p in moved)

    # -- files -----------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        try:
            fd = os.open(self._path(inode), self._backing_flags(flags))
        except OSError as exc:
            raise _oserror(exc) from None
        self._register_fd(fd, inode)
        return pyfuse3.FileInfo(fh=fd)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        try:
            fd = os.open(path, self._backing_flags(flags) | os.O_CREAT | os.O_TRUNC, mode & ~ctx.umask)
        except OSError as exc:
            raise _oserror(exc) from None
        try:
            self._chown_new(path, ctx)
            attr = self._attr(os.fstat(fd))
        except (OSError, FUSEError) as exc:
            os.close(fd)
            raise exc if isinstance(exc, FUSEError) else _oserror(exc) from None
        self._remember(attr.st_ino, path)
        self._register_fd(fd, attr.st_ino)
        return pyfuse3.FileInfo(fh=fd), attr

    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            return os.pread(fh, size, off)
        except OSError as exc:
            raise _oserror(exc) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        try:
            return os.pwrite(fh, buf, off)
        except OSError as exc:
            raise _oserror(exc) from None

    async def flush(self, fh: int) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        try:
            (os.fdatasync if datasync else os.fsync)(fh)
        except OSError as exc:
            raise _oserror(exc) from None

    async def release(self, fh: int) -> None:
        inode = self._fd_inode.pop(fh, None)
        if inode is not None:
            fds = self._inode_fds.get(inode)
            if fds is not None:
                fds.discard(fh)
                if not fds:
                    del self._inode_fds[inode]
                    if inode not in self._lookups and inode != _ROOT:
                        self._paths.pop(inode, None)
        try:
            os.close(fh)
        except OSError as exc:
            raise _oserror(exc) from None

    # -- extended attributes ---------------------------------------------

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        try:
            os.setxattr(self._path(inode), name, value, follow_symlinks=False)
        except OSError as exc:
            raise _oserror(exc) from None

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        try:
            return os.getxattr(self._path(inode), name, follow_symlinks=False)
        except OSError as exc:
            raise _oserror(exc) from None

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        try:
            return [os.fsencode(n) for n in os.listxattr(self._path(inode), follow_symlinks=False)]
        except OSError as exc:
            raise _oserror(exc) from None

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        try:
            os.removexattr(self._path(inode), name, follow_symlinks=False)
        except OSError as exc:
            raise _oserror(exc) from None


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("got signal %d, unmounting", signum)
            pyfuse3.terminate()
            return


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def _quick_loop(plain: bool) -> contextlib.AbstractContextManager[None]:
    if plain:
        return contextlib.nullcontext()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    try:
        from fs.mount.serve import quick_pyfuse3_trio
    except ImportError as exc:  # run outside the repository
        log.warning("umbrafs's fs.mount not importable (%s): stock pyfuse3 loop", exc)
        return contextlib.nullcontext()
    return quick_pyfuse3_trio()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="directory tree to mirror")
    parser.add_argument("mountpoint", help="where to mount it")
    parser.add_argument("--debug", action="store_true", help="debug logging")
    parser.add_argument("--debug-fuse", action="store_true", help="libfuse debug output")
    parser.add_argument("--plain-trio", action="store_true", help="stock pyfuse3 + trio loop (no umbrafs shim)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    operations = PassthroughOperations(args.source)
    options = set(pyfuse3.default_options)
    options.add("fsname=passthroughfs")
    if args.debug_fuse:
        options.add("debug")
    pyfuse3.init(operations, args.mountpoint, options)
    log.info("mounted %s on %s", args.source, args.mountpoint)
    try:
        with _quick_loop(args.plain_trio):
            trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", args.mountpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
