"""Helpers for the POSIX tests on a real mount: libc calls Python lacks,
errno comparison with a plain directory, a check that nothing plaintext
reached the backing directory, and a module-wide shared mount.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Mount, live_mount, new_env

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class Dirent(ctypes.Structure):  # glibc x86_64 / aarch64 struct dirent
    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
libc.utimensat.restype = ctypes.c_int
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
libc.renameat2.restype = ctypes.c_int
libc.opendir.argtypes = [ctypes.c_char_p]
libc.opendir.restype = ctypes.c_void_p
libc.readdir.argtypes = [ctypes.c_void_p]
libc.readdir.restype = ctypes.POINTER(Dirent)
libc.telldir.argtypes = [ctypes.c_void_p]
libc.telldir.restype = ctypes.c_long
libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
libc.seekdir.restype = None
libc.closedir.argtypes = [ctypes.c_void_p]
libc.closedir.restype = ctypes.c_int


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def utimensat(path: Path, atime: tuple[int, int], mtime: tuple[int, int], nofollow: bool = False) -> None:
    """(sec, nsec) pairs; nsec may be UTIME_NOW or UTIME_OMIT."""
    times = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    flags = AT_SYMLINK_NOFOLLOW if nofollow else 0
    _check(libc.utimensat(AT_FDCWD, os.fsencode(path), ctypes.byref(times), flags), "utimensat")


def renameat2(old: Path, new: Path, flags: int) -> None:
    _check(libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags), "renameat2")


class DirStream:
    """opendir/readdir/telldir/seekdir on libc, as C programs list directories."""

    def __init__(self, path: Path) -> None:
        ctypes.set_errno(0)
        self._dir = libc.opendir(os.fsencode(path))
        if not self._dir:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def tell(self) -> int:
        return libc.telldir(self._dir)

    def seek(self, pos: int) -> None:
        libc.seekdir(self._dir, pos)

    def read(self) -> bytes | None:
        ctypes.set_errno(0)
        ent = libc.readdir(self._dir)
        if not ent:
            err = ctypes.get_errno()
            if err:
                raise OSError(err, os.strerror(err))
            return None
        return ent.contents.d_name

    def close(self) -> None:
        if self._dir:
            libc.closedir(self._dir)
            self._dir = None

    def __enter__(self) -> "DirStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def outcome(fn: Callable[..., Any], *args: Any) -> str:
    """"ok" or the errno name of the OSError *fn* raised: comparable across filesystems."""
    try:
        fn(*args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def raises_errno(code: int, fn: Callable[..., Any], *args: Any) -> None:
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, f"expected {errno.errorcode[code]}, got {info.value!r}"


def backing_texts(vault: Path) -> Iterator[tuple[Path, bool, bytes]]:
    """Every name, symlink target and small file body in the backing tree, flagged is_name."""
    for dirpath, dirnames, filenames in os.walk(vault):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            yield path, True, os.fsencode(name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                yield path, True, os.fsencode(os.readlink(path))
            elif stat.S_ISREG(st.st_mode) and st.st_size <= 1 << 16:
                yield path, False, path.read_bytes()
            try:
                for xname in os.listxattr(path, follow_symlinks=False):
                    yield path, True, os.fsencode(xname)
            except OSError:
                pass


# Random ciphertext contains any given short byte string now and then (two bytes: once per 64 KiB),
# so short needles are only looked for as whole names, where a plaintext leak would show verbatim.
MIN_SUBSTRING_NEEDLE = 8


def assert_no_plaintext(vault: Path, *needles: str | bytes) -> None:
    wanted = [os.fsencode(n) if isinstance(n, str) else n for n in needles]
    for path, is_name, text in backing_texts(vault):
        for needle in wanted:
            if len(needle) >= MIN_SUBSTRING_NEEDLE:
                assert needle not in text, f"plaintext {needle[:40]!r} found in backing {path}"
            elif is_name:
                assert needle != text, f"plaintext name {needle!r} found in backing {path}"


def backing_leftovers(vault: Path, suffix: str) -> list[str]:
    """Backing sidecars (``~hash.name`` / ``~id.link``) anywhere in the vault."""
    return sorted(p.name for p in vault.rglob("~*" + suffix))


def drop_cache(path: Path) -> None:
    """Make the next read of *path* go to the filesystem instead of the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """One mount for a whole module (tests work in their own subdirectory)."""
    tmp = tmp_path_factory.mktemp("shared")
    env = new_env(tmp)
    with live_mount(env, env.init(tmp / "vault"), tmp / "mnt") as mount:
        yield mount


@pytest.fixture
def work(shared: Mount, request: pytest.FixtureRequest) -> Path:
    """A fresh directory inside the shared mount."""
    path = shared.path / request.node.name.replace("[", "-").replace("]", "")
    path.mkdir()
    return path


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    """A plain directory on the host filesystem to compare behaviour with."""
    path = tmp_path / "plain"
    path.mkdir()
    return path
