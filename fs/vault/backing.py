"""System calls on the backing directory.

Every path is relative to the vault's root descriptor and every final
component is opened without following symlinks: the backing dir may be
writable by others (a synced folder), and we never want to leave it.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import stat
from collections.abc import Iterator

from fs.errors import IntegrityError

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
IS_ROOT = os.geteuid() == 0

_SYS_OPENAT2 = 437  # one number on every architecture (the syscall came after the unified table)
_RESOLVE = 0x02 | 0x04 | 0x08  # RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH
_libc.syscall.restype = ctypes.c_long
DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # a directory, never via a symlink


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def safe_rel(rel: str) -> bool:
    """A relative path below the vault root: no "..", no "." inside, not absolute, no empty part."""
    return rel == "." or (not rel.startswith("/") and all(p and p not in (".", "..") for p in rel.split("/")))


def open_beneath(root_fd: int, rel: str, flags: int, mode: int = 0) -> int:
    """Open *rel* below *root_fd* following no symlink in ANY component (O_NOFOLLOW covers
    only the last): for paths that come from state another writer could have made, such as
    the rotation journal.  openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), or a walk one
    component at a time where the kernel has no openat2."""
    if not safe_rel(rel):
        raise OSError(errno.EINVAL, "not a path below the vault", rel)
    how = _OpenHow(flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, _RESOLVE)
    fd = _libc.syscall(_SYS_OPENAT2, ctypes.c_int(root_fd), rel.encode("utf-8", "surrogateescape"),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd >= 0:
        return int(fd)
    err = ctypes.get_errno()
    if err not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter that predates openat2
        raise OSError(err, os.strerror(err), rel)
    *dirs, last = rel.split("/")
    cur = os.dup(root_fd)
    try:
        for part in dirs:
            nxt = os.open(part, DIR_NOFOLLOW, dir_fd=cur)
            os.close(cur)
            cur = nxt
        return os.open(last, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=cur)
    finally:
        os.close(cur)


def join(parent_rel: str, name: str) -> str:
    return name if parent_rel == "." else f"{parent_rel}/{name}"


def renameat2(root_fd: int, old: str, new: str, flags: int = 0) -> None:
    if flags == 0:
        os.rename(old, new, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        return
    if _renameat2(root_fd, os.fsencode(old), root_fd, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def owner_writable(root_fd: int, rel: str) -> Iterator[None]:
    """Let us write an object the user made read-only (e.g. a 0444 file's header).

    Root needs no help; others temporarily add u+w (and u+x for dirs).
    """
    if IS_ROOT:
        yield
        return
    st = os.lstat(rel, dir_fd=root_fd)
    extra = stat.S_IWUSR | stat.S_IRUSR | (stat.S_IXUSR if stat.S_ISDIR(st.st_mode) else 0)
    mode = stat.S_IMODE(st.st_mode)
    if mode & extra == extra or st.st_uid != os.geteuid():
        yield
        return
    os.chmod(rel, mode | extra, dir_fd=root_fd)
    try:
        yield
    finally:
        os.chmod(rel, mode, dir_fd=root_fd)


def open_file(root_fd: int, rel: str, writable: bool) -> int:
    """Open a backing file read-write if we may (reads-modify-writes need it)."""
    flags = os.O_NOFOLLOW | os.O_CLOEXEC
    if writable:
        try:
            return os.open(rel, flags | os.O_RDWR, dir_fd=root_fd)
        except PermissionError:
            with owner_writable(root_fd, rel):
                try:
                    return os.open(rel, flags | os.O_RDWR, dir_fd=root_fd)
                except PermissionError:
                    pass
    return os.open(rel, flags | os.O_RDONLY, dir_fd=root_fd)


def write_small_file(root_fd: int, rel: str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=root_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


SMALL_FILE_MAX = 1 << 16  # sidecars, headers, journal records: anything larger is not ours


def open_regular(root_fd: int, rel: str, flags: int = os.O_RDONLY) -> int:
    """Open *rel* only if it is a regular file: a FIFO, socket or device that another writer
    put where a sidecar or header belongs is refused at once (O_NONBLOCK: opening a FIFO
    for reading would otherwise wait for a writer, and hold up the mount's one loop)."""
    fd = os.open(rel, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=root_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IntegrityError(f"{rel}: not a regular file")
    return fd


def read_small_file(root_fd: int, rel: str, limit: int = SMALL_FILE_MAX) -> bytes:
    """The whole of a small regular file; IntegrityError if it is something else or larger."""
    fd = open_regular(root_fd, rel)
    try:
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise IntegrityError(f"{rel}: larger than {limit} bytes")
    return data


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, off: int) -> None:
    """pwrite until all of *data* is written: a short write (a disk filling up) left unnoticed
    would leave a block cut short, which reads as EIO.  ENOSPC once nothing more fits."""
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, off)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        mv, off = mv[n:], off + n


def unlink_quiet(root_fd: int, rel: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(rel, dir_fd=root_fd)


def errno_of(exc: BaseException) -> int:
    return exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
