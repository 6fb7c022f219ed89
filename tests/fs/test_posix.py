"""POSIX semantics of a real umbrafs mount, checked against a plain directory.

Attributes, directories, open flags, I/O at any offset, unlinked-but-open
files, special files, xattrs, statfs, mmap, sparse files and read-only mounts.
Names, renames, symlinks and hard links are in test_names_links.py.
"""
from __future__ import annotations

import errno
import mmap
import os
import random
import socket
import stat
import time
from pathlib import Path

import pytest

from fs.format import layout as fmt
from tests.conftest import Mount
from tests.fs.posix_support import (
    UTIME_NOW,
    UTIME_OMIT,
    DirStream,
    assert_no_plaintext,
    drop_cache,
    outcome,
    plain,  # noqa: F401  (fixture)
    raises_errno,
    shared,  # noqa: F401  (fixture)
    utimensat,
    work,  # noqa: F401  (fixture)
)

B = fmt.BLOCK_SIZE


def backing_of(mount: Mount, path: Path) -> Path:
    """The backing file of a plaintext path (found by its inode number, which umbrafs passes through)."""
    ino = os.lstat(path).st_ino
    for p in mount.vault.rglob("*"):
        if os.lstat(p).st_ino == ino:
            return p
    raise AssertionError(f"no backing object for {path}")


# -- lookup and getattr --------------------------------------------------------


def test_lookup_and_getattr_match_a_plain_directory(work: Path, plain: Path, shared: Mount) -> None:
    for root in (work, plain):
        (root / "sub-lookupdir").mkdir(mode=0o750)
        (root / "sub-lookupdir" / "inner").mkdir()
        (root / "sub-lookupdir" / "file-lookup").write_bytes(b"y" * 40_000)
        os.chmod(root / "sub-lookupdir" / "file-lookup", 0o604)
        os.symlink("sub-lookupdir/file-lookup", root / "link-lookup")
    for rel in ("sub-lookupdir", "sub-lookupdir/inner", "sub-lookupdir/file-lookup", "link-lookup"):
        a, b = os.lstat(work / rel), os.lstat(plain / rel)
        assert (a.st_mode, a.st_nlink, a.st_uid, a.st_gid) == (b.st_mode, b.st_nlink, b.st_uid, b.st_gid), rel
        if not stat.S_ISDIR(a.st_mode):
            assert a.st_size == b.st_size, rel
    assert os.stat(work / "link-lookup").st_ino == os.stat(work / "sub-lookupdir" / "file-lookup").st_ino
    assert os.stat(work / "sub-lookupdir" / "..").st_ino == os.stat(work).st_ino
    assert os.stat(work / "sub-lookupdir" / ".").st_ino == os.stat(work / "sub-lookupdir").st_ino
    for rel in ("missing", "sub-lookupdir/file-lookup/x", "sub-lookupdir/missing/x"):
        assert outcome(os.stat, work / rel) == outcome(os.stat, plain / rel) != "ok", rel
    # A negative lookup does not stick once the name is created.
    assert not (work / "later").exists()
    (work / "later").write_bytes(b"now")
    assert (work / "later").read_bytes() == b"now"
    assert_no_plaintext(shared.vault, "lookupdir", "file-lookup", "link-lookup")


# -- setattr -------------------------------------------------------------------


def test_chmod_is_in_the_reply_and_bumps_ctime(work: Path, plain: Path) -> None:
    for root in (work, plain):
        (root / "f").write_bytes(b"data")
        (root / "d").mkdir()
    for rel, mode in (("f", 0o640), ("f", 0o4755), ("d", 0o1777), ("d", 0o700), ("f", 0)):
        before = os.stat(work / rel)
        time.sleep(0.02)
        os.chmod(work / rel, mode)
        os.chmod(plain / rel, mode)
        after = os.stat(work / rel)
        assert after.st_mode == os.stat(plain / rel).st_mode
        assert stat.S_IMODE(after.st_mode) == mode
        assert after.st_ctime_ns > before.st_ctime_ns
        assert after.st_mtime_ns == before.st_mtime_ns
    fd = os.open(work / "f", os.O_RDONLY)
    try:
        os.fchmod(fd, 0o600)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    finally:
        os.close(fd)
    assert stat.S_IMODE(os.stat(work / "f").st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to other users needs root")
def test_chown_as_root(work: Path, shared: Mount) -> None:
    (work / "f").write_bytes(b"x")
    os.symlink("f", work / "ln")
    before = os.stat(work / "f")
    time.sleep(0.02)
    os.chown(work / "f", 1234, 5678)
    st = os.stat(work / "f")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert st.st_ctime_ns > before.st_ctime_ns
    os.chown(work / "f", -1, 4321)
    assert (os.stat(work / "f").st_uid, os.stat(work / "f").st_gid) == (1234, 4321)
    os.chown(work / "f", 99, -1)
    assert (os.stat(work / "f").st_uid, os.stat(work / "f").st_gid) == (99, 4321)
    # lchown changes the link, not its target.
    os.lchown(work / "ln", 7, 8)
    assert (os.lstat(work / "ln").st_uid, os.lstat(work / "ln").st_gid) == (7, 8)
    assert os.stat(work / "f").st_uid == 99
    # Ownership lives on the backing object.
    backing = backing_of(shared, work / "f")
    assert (os.lstat(backing).st_uid, os.lstat(backing).st_gid) == (99, 4321)
    assert (work / "f").read_bytes() == b"x"


@pytest.mark.parametrize("via_fd", [False, True], ids=["path", "fd"])
def test_truncate_up_and_down_matches_a_plain_file(work: Path, plain: Path, via_fd: bool) -> None:
    data = random.Random(7).randbytes(3 * B + 1000)
    sizes = [2 * B + 5, 40_000, B, B - 1, 0, 1, B + 1, 5 * B + 3, 3 * B, 100, 10 * B]
    files = [work / "t", plain / "t"]
    for f in files:
        f.write_bytes(data)
    fds = [os.open(f, os.O_RDWR) for f in files] if via_fd else []
    try:
        for size in sizes:
            for i, f in enumerate(files):
                if via_fd:
                    os.ftruncate(fds[i], size)
                else:
                    os.truncate(f, size)
            assert os.stat(files[0]).st_size == size
            assert files[0].read_bytes() == files[1].read_bytes(), size
            drop_cache(files[0])
            assert files[0].read_bytes() == files[1].read_bytes(), size
    finally:
        for fd in fds:
            os.close(fd)
    assert files[0].read_bytes() == bytes(10 * B)  # cut to 0, then only grown


def test_utimens_explicit_now_and_omit(work: Path, plain: Path) -> None:
    for root in (work, plain):
        (root / "f").write_bytes(b"x")
        (root / "d").mkdir()
        os.symlink("f", root / "ln")
    for rel in ("f", "d"):
        path = work / rel
        os.utime(path, ns=(1_000_000_123_456_789, 1_500_000_987_654_321))
        st = os.stat(path)
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123_456_789, 1_500_000_987_654_321)
        # mtime now, atime left alone
        t0 = time.time_ns()
        utimensat(path, (0, UTIME_OMIT), (0, UTIME_NOW))
        st = os.stat(path)
        assert st.st_atime_ns == 1_000_000_123_456_789
        assert t0 - 50_000_000 <= st.st_mtime_ns <= time.time_ns() + 50_000_000
        mtime_now = st.st_mtime_ns
        # atime now, mtime left alone
        utimensat(path, (0, UTIME_NOW), (0, UTIME_OMIT))
        st = os.stat(path)
        assert st.st_mtime_ns == mtime_now
        assert t0 - 50_000_000 <= st.st_atime_ns <= time.time_ns() + 50_000_000
        # both omitted: nothing changes
        utimensat(path, (0, UTIME_OMIT), (0, UTIME_OMIT))
        assert (os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns) == (st.st_atime_ns, st.st_mtime_ns)
        # explicit seconds with OMIT on the other side
        utimensat(path, (86400, 5), (0, UTIME_OMIT))
        assert (os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns) == (86400 * 10**9 + 5, mtime_now)
    # A symlink's own times, without touching its target.
    target_mtime = os.stat(work / "f").st_mtime_ns
    utimensat(work / "ln", (3, 0), (4, 0), nofollow=True)
    utimensat(plain / "ln", (3, 0), (4, 0), nofollow=True)
    assert os.lstat(work / "ln").st_mtime_ns == os.lstat(plain / "ln").st_mtime_ns == 4 * 10**9
    assert os.stat(work / "f").st_mtime_ns == target_mtime
    # Writing updates mtime.
    os.utime(work / "f", ns=(10**18, 10**18))
    with open(work / "f", "r+b") as f:
        f.write(b"y")
    assert os.stat(work / "f").st_mtime_ns > 10**18 + 10**17


# -- directories ---------------------------------------------------------------


def test_readdir_of_10000_entries_with_telldir_and_seekdir(work: Path, shared: Mount) -> None:
    big = work / "big"
    big.mkdir()
    names = {f"entry-readdir-{i:05d}" for i in range(10_200)}
    for name in names:
        os.close(os.open(big / name, os.O_CREAT | os.O_WRONLY, 0o644))
    listed = os.listdir(big)
    assert len(listed) == len(names) and set(listed) == names
    with os.scandir(big) as it:
        assert sorted(e.name for e in it if e.is_file(follow_symlinks=False)) == sorted(names)

    with DirStream(big) as d:
        order: list[tuple[int, bytes]] = []
        while True:
            pos = d.tell()
            name = d.read()
            if name is None:
                break
            order.append((pos, name))
        plain_names = [n for _, n in order if n not in (b".", b"..")]
        assert len(plain_names) == len(names) and set(plain_names) == {n.encode() for n in names}
        # Resume mid-listing (inside and across getdents chunks) from remembered positions.
        for index in (0, 1, 2999, 5000, 7777, len(order) - 1):
            d.seek(order[index][0])
            rest = []
            while (name := d.read()) is not None:
                rest.append(name)
            assert rest == [n for _, n in order[index:]], index
        # seekdir backwards after reaching the end, then read a few.
        d.seek(order[42][0])
        assert [d.read() for _ in range(3)] == [n for _, n in order[42:45]]
    assert len(list(shared.vault.rglob("*"))) > 10_000
    assert_no_plaintext(shared.vault, "entry-readdir")


def test_mkdir_and_rmdir(work: Path, plain: Path) -> None:
    for root in (work, plain):
        (root / "full").mkdir()
        (root / "full" / "keep.txt").write_bytes(b"precious")
        (root / "full" / "subdir").mkdir()
        (root / "empty").mkdir()
        (root / "file").write_bytes(b"f")
    cases = [
        (os.rmdir, "full"),
        (os.rmdir, "full/subdir/.."),
        (os.rmdir, "file"),
        (os.rmdir, "missing"),
        (os.mkdir, "full"),
        (os.mkdir, "file"),
        (os.mkdir, "file/sub"),
        (os.mkdir, "missing/sub"),
        (os.unlink, "full"),
    ]
    for fn, rel in cases:
        assert outcome(fn, work / rel) == outcome(fn, plain / rel) != "ok", (fn.__name__, rel)
    raises_errno(errno.ENOTEMPTY, os.rmdir, work / "full")
    # The non-empty directory survived the failed rmdir, contents intact.
    assert sorted(os.listdir(work / "full")) == ["keep.txt", "subdir"]
    assert (work / "full" / "keep.txt").read_bytes() == b"precious"
    (work / "full" / "subdir" / "new").write_bytes(b"still works")
    assert (work / "full" / "subdir" / "new").read_bytes() == b"still works"
    nlink = os.stat(work).st_nlink
    os.rmdir(work / "empty")
    assert not (work / "empty").exists()
    assert os.stat(work).st_nlink == nlink - 1
    os.mkdir(work / "empty", 0o711)
    assert stat.S_IMODE(os.stat(work / "empty").st_mode) == 0o711
    assert os.stat(work).st_nlink == nlink
    assert os.listdir(work / "empty") == []


# -- open flags ----------------------------------------------------------------


def test_open_flags_trunc_append_excl(work: Path, plain: Path) -> None:
    for root in (work, plain):
        (root / "f").write_bytes(b"hello")
        os.symlink("nowhere", root / "dangling")
        (root / "d").mkdir()
    excl = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    for rel in ("f", "dangling", "d"):
        assert outcome(os.open, work / rel, excl) == outcome(os.open, plain / rel, excl) == "EEXIST", rel
    assert outcome(os.open, work / "d", os.O_WRONLY) == outcome(os.open, plain / "d", os.O_WRONLY) == "EISDIR"
    assert outcome(os.open, work / "f" / "x", os.O_RDONLY) == "ENOTDIR"
    fd = os.open(work / "new", excl, 0o600)
    os.write(fd, b"fresh")
    os.close(fd)
    assert (work / "new").read_bytes() == b"fresh"
    assert stat.S_IMODE(os.stat(work / "new").st_mode) == 0o600

    for root in (work, plain):
        fd = os.open(root / "f", os.O_WRONLY | os.O_APPEND)
        os.write(fd, b" world")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"!")  # O_APPEND ignores the seek
        os.close(fd)
        # Two writers: one appending, one at explicit offsets.
        a = os.open(root / "f", os.O_WRONLY | os.O_APPEND)
        w = os.open(root / "f", os.O_WRONLY)
        os.pwrite(w, b"J", 0)
        os.write(a, b"+" * (B + 10))
        os.write(w, b"H")
        os.write(a, b"$")
        os.close(a)
        os.close(w)
    assert (work / "f").read_bytes() == (plain / "f").read_bytes() == b"Hello world!" + b"+" * (B + 10) + b"$"

    (work / "g").write_bytes(b"z" * 50_000)
    fd = os.open(work / "g", os.O_RDWR | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    assert os.read(fd, 10) == b""
    os.write(fd, b"short")
    os.close(fd)
    assert (work / "g").read_bytes() == b"short"
    drop_cache(work / "g")
    assert (work / "g").read_bytes() == b"short"
    fd = os.open(work / "g", os.O_RDONLY | os.O_TRUNC)  # Linux truncates even here
    os.close(fd)
    assert os.stat(work / "g").st_size == 0


# -- read and write ------------------------------------------------------------


def test_partial_block_writes_and_gaps(mounted: Mount, tmp_path: Path) -> None:
    mnt, ref = mounted.path / "rw", tmp_path / "rw-plain"
    rng = random.Random(1234)
    base = rng.randbytes(40_000)
    steps: list[tuple[int, bytes]] = [
        (B - 50, rng.randbytes(100)),  # read-modify-write across the 16 KiB boundary
        (2 * B - 1, b"\xff\xfe"),  # two bytes straddling the next boundary
        (1, b"a"),  # one byte inside block 0
        (B, rng.randbytes(B)),  # exactly one aligned block
        (40_000, b"tail"),  # extend the partial last block
        (100_000, b"gap!"),  # past EOF: a zero-filled gap, new partial block
        (5 * B, rng.randbytes(3 * B + 7)),  # overwrites spanning several blocks and the end
        (20 * B + 3, b"q"),  # gap of whole-block holes
        (19 * B, rng.randbytes(10)),  # fill into a hole
    ]
    for path in (mnt, ref):
        path.write_bytes(base)
        fd = os.open(path, os.O_RDWR)
        try:
            for off, data in steps:
                assert os.pwrite(fd, data, off) == len(data)
            os.fsync(fd)
        finally:
            os.close(fd)
    expected = ref.read_bytes()
    assert len(expected) == 20 * B + 4
    assert mnt.read_bytes() == expected
    drop_cache(mnt)
    fd = os.open(mnt, os.O_RDONLY)
    try:
        for off in (0, B - 60, B - 1, B, 2 * B - 2, 39_990, 99_990, 6 * B + 123, 19 * B - 5, 20 * B, 20 * B + 3):
            for length in (1, 17, B, 3 * B):
                assert os.pread(fd, length, off) == expected[off : off + length], (off, length)
        assert os.pread(fd, 100, len(expected)) == b""
        assert os.pread(fd, 100, len(expected) + 10_000) == b""
    finally:
        os.close(fd)
    assert expected[40_004 : 5 * B] == bytes(5 * B - 40_004)  # the gap reads as zeros
    # The backing file has exactly the documented size, and the gap blocks stay holes.
    backing = backing_of(mounted, mnt)
    assert os.stat(backing).st_size == fmt.cipher_size(len(expected), fmt.FILE_HEADER_LEN)
    mounted.remount()
    assert mnt.read_bytes() == expected


def test_random_io_matches_a_plain_file(mounted: Mount, tmp_path: Path) -> None:
    rng = random.Random(99)
    paths = [mounted.path / "fuzz", tmp_path / "fuzz-plain"]
    fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o644) for p in paths]
    try:
        for step in range(300):
            op = rng.random()
            if op < 0.55:
                off = rng.randrange(0, 6 * B)
                data = rng.randbytes(rng.choice([1, 7, 100, B - 1, B, B + 1, rng.randrange(1, 3 * B)]))
                for fd in fds:
                    os.pwrite(fd, data, off)
            elif op < 0.7:
                size = rng.randrange(0, 7 * B)
                for fd in fds:
                    os.ftruncate(fd, size)
            else:
                off, length = rng.randrange(0, 7 * B), rng.randrange(1, 3 * B)
                assert os.pread(fds[0], length, off) == os.pread(fds[1], length, off), step
            if step % 50 == 49:
                os.fsync(fds[0])
                os.posix_fadvise(fds[0], 0, 0, os.POSIX_FADV_DONTNEED)
                assert os.fstat(fds[0]).st_size == os.fstat(fds[1]).st_size
                assert os.pread(fds[0], 8 * B, 0) == os.pread(fds[1], 8 * B, 0), step
    finally:
        for fd in fds:
            os.close(fd)
    expected = paths[1].read_bytes()
    mounted.remount()
    assert paths[0].read_bytes() == expected


def test_flush_fsync_fsyncdir_release(mounted: Mount) -> None:
    d = mounted.path / "syncdir"
    d.mkdir()
    fd = os.open(d / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"a" * 30_000)
    os.fsync(fd)
    os.write(fd, b"b" * 10)
    os.fdatasync(fd)
    dup = os.dup(fd)
    os.close(dup)  # flush without release
    assert os.pread(fd, 5, 29_998) == b"aabbb"
    os.close(fd)  # flush + release
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # fsyncdir
    finally:
        os.close(dfd)
    rfd = os.open(mounted.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(rfd)
    finally:
        os.close(rfd)
    with open(d / "g", "wb") as f:  # buffered writes reach the fs on close
        f.write(b"xyz" * 10_000)
    mounted.remount()
    assert (d / "f").read_bytes() == b"a" * 30_000 + b"b" * 10
    assert (d / "g").read_bytes() == b"xyz" * 10_000


# -- unlinked but open ----------------------------------------------------------


def test_unlinked_file_stays_usable_through_its_descriptor(work: Path, shared: Mount) -> None:
    path = work / "doomed-unlinkopen"
    backing_dir = backing_of(shared, work)
    before = sorted(p.name for p in backing_dir.iterdir())
    path.write_bytes(b"a" * 20_000)
    fd = os.open(path, os.O_RDWR)
    other = os.open(path, os.O_RDONLY)
    try:
        os.unlink(path)
        assert not path.exists()
        assert "doomed-unlinkopen" not in os.listdir(work)
        st = os.fstat(fd)
        assert st.st_nlink == 0
        assert st.st_size == 20_000
        assert os.pread(fd, 10, 19_995) == b"aaaaa"
        os.pwrite(fd, b"b" * 5000, 18_000)  # across the block boundary
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(other, 30_000, 0) == b"a" * 18_000 + b"b" * 5000
        os.ftruncate(fd, 10)
        assert os.fstat(other).st_size == 10
        os.fchmod(fd, 0o600)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        # The name is free for a new file meanwhile.
        path.write_bytes(b"new one")
        assert os.pread(other, 100, 0) == b"a" * 10
    finally:
        os.close(fd)
        os.close(other)
    assert path.read_bytes() == b"new one"
    os.unlink(path)
    assert sorted(p.name for p in backing_dir.iterdir()) == before


# -- special files -------------------------------------------------------------


def test_fifo_socket_and_device_nodes(mounted: Mount) -> None:
    mnt = mounted.path
    os.mkfifo(mnt / "fifo", 0o640)
    assert stat.S_ISFIFO(os.stat(mnt / "fifo").st_mode)
    assert stat.S_IMODE(os.stat(mnt / "fifo").st_mode) == 0o640
    fd = os.open(mnt / "fifo", os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fd, b"through the pipe")
        assert os.read(fd, 100) == b"through the pipe"
    finally:
        os.close(fd)

    sock_path = mnt / "s"
    assert len(os.fsencode(sock_path)) < 100
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(sock_path))
        server.listen(1)
        assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(5)
        try:
            client.connect(str(sock_path))
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
        finally:
            client.close()
    finally:
        server.close()

    if os.geteuid() == 0:
        os.mknod(mnt / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        st = os.stat(mnt / "null")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
        os.mknod(mnt / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 200))
        assert stat.S_ISBLK(os.stat(mnt / "blk").st_mode)
    os.mknod(mnt / "regular", stat.S_IFREG | 0o644)
    assert stat.S_ISREG(os.stat(mnt / "regular").st_mode) and os.stat(mnt / "regular").st_size == 0
    (mnt / "regular").write_bytes(b"mknod made a real file")

    # The backing dir holds the same kinds of objects.
    kinds = sorted(stat.S_IFMT(os.lstat(p).st_mode) for p in mounted.vault.iterdir() if "." not in p.name)
    expected = [stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG] + ([stat.S_IFCHR, stat.S_IFBLK] if os.geteuid() == 0 else [])
    assert kinds == sorted(expected)
    mounted.remount()
    assert stat.S_ISFIFO(os.stat(mnt / "fifo").st_mode)
    assert stat.S_ISSOCK(os.stat(mnt / "s").st_mode)
    if os.geteuid() == 0:
        assert os.stat(mnt / "null").st_rdev == os.makedev(1, 3)
    assert (mnt / "regular").read_bytes() == b"mknod made a real file"
    for name in os.listdir(mnt):
        os.unlink(mnt / name)
    # (.umbrafs.versions holds what was deleted, for `umbrafs restore`: docs/versions.md)
    assert sorted(p.name for p in mounted.vault.iterdir() if p.name != ".umbrafs.versions") == [fmt.DIR_HEADER_NAME, fmt.VAULT_CONFIG_NAME]


# -- extended attributes ---------------------------------------------------------


def test_user_xattrs_on_files_and_dirs(work: Path, shared: Mount) -> None:
    (work / "f").write_bytes(b"content")
    (work / "d").mkdir()
    for rel in ("f", "d"):
        path = work / rel
        assert os.listxattr(path) == []
        os.setxattr(path, "user.colour-xattr", b"ultramarine-value")
        os.setxattr(path, "user.empty", b"")
        os.setxattr(path, "user.big", bytes(range(256)) * 8)
        assert os.getxattr(path, "user.colour-xattr") == b"ultramarine-value"
        assert os.getxattr(path, "user.empty") == b""
        assert os.getxattr(path, "user.big") == bytes(range(256)) * 8
        assert sorted(os.listxattr(path)) == ["user.big", "user.colour-xattr", "user.empty"]
        raises_errno(errno.ENODATA, os.getxattr, path, "user.missing")
        raises_errno(errno.ENODATA, os.removexattr, path, "user.missing")
        raises_errno(errno.EEXIST, os.setxattr, path, "user.empty", b"x", os.XATTR_CREATE)
        raises_errno(errno.ENODATA, os.setxattr, path, "user.missing", b"x", os.XATTR_REPLACE)
        os.setxattr(path, "user.empty", b"replaced", os.XATTR_REPLACE)
        assert os.getxattr(path, "user.empty") == b"replaced"
        os.removexattr(path, "user.big")
        raises_errno(errno.ENODATA, os.getxattr, path, "user.big")
        assert sorted(os.listxattr(path)) == ["user.colour-xattr", "user.empty"]
        for name in ("trusted.x", "security.x", "system.x"):
            with pytest.raises(OSError):
                os.setxattr(path, name, b"v")
            with pytest.raises(OSError):
                os.getxattr(path, name)
    # The file keeps its content and xattrs on write; the mount is alive.
    (work / "f").write_bytes(b"other content")
    assert os.getxattr(work / "f", "user.colour-xattr") == b"ultramarine-value"
    assert_no_plaintext(shared.vault, "colour-xattr", "ultramarine", "replaced")


def test_xattrs_survive_rename_and_remount(mounted: Mount) -> None:
    mnt = mounted.path
    (mnt / "a").mkdir()
    (mnt / "b").mkdir()
    (mnt / "a" / "f").write_bytes(b"x")
    os.setxattr(mnt / "a" / "f", "user.k", b"file-v")
    os.setxattr(mnt / "a", "user.k", b"dir-v")
    os.rename(mnt / "a" / "f", mnt / "b" / "f")
    os.rename(mnt / "a", mnt / "b" / "a")
    mounted.remount()
    assert os.getxattr(mnt / "b" / "f", "user.k") == b"file-v"
    assert os.getxattr(mnt / "b" / "a", "user.k") == b"dir-v"


# -- statfs ----------------------------------------------------------------------


def test_statfs(work: Path, shared: Mount) -> None:
    sv = os.statvfs(work)
    host = os.statvfs(shared.vault)
    assert sv.f_namemax == 255
    assert sv.f_bsize > 0 and sv.f_frsize > 0
    assert 0 < sv.f_blocks
    assert 0 <= sv.f_bavail <= sv.f_bfree <= sv.f_blocks
    assert sv.f_blocks * sv.f_frsize == host.f_blocks * host.f_frsize
    assert sv.f_ffree <= sv.f_files


# -- mmap ------------------------------------------------------------------------


def test_mmap_reads_and_writes(mounted: Mount) -> None:
    path = mounted.path / "mapped"
    data = bytearray(random.Random(5).randbytes(3 * B + 100))
    path.write_bytes(data)
    with open(path, "r+b") as f:
        with mmap.mmap(f.fileno(), 0) as m:
            assert m[: 3 * B + 100] == data
            m[B - 8 : B + 8] = b"M" * 16
            m[3 * B + 99] = 0x21
            data[B - 8 : B + 8] = b"M" * 16
            data[3 * B + 99] = 0x21
            m.flush()
        assert os.pread(f.fileno(), len(data) + 10, 0) == data
    drop_cache(path)
    assert path.read_bytes() == data
    # Writes through the ordinary path are visible in a fresh map.
    with open(path, "r+b") as f:
        f.seek(10)
        f.write(b"plainwrite")
        f.flush()
        data[10:20] = b"plainwrite"
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            assert m[:] == data
    mounted.remount()
    assert path.read_bytes() == data


# -- sparse and huge files ----------------------------------------------------------


def test_truncate_to_1_tib_stays_sparse_and_8_tib_is_the_limit(work: Path, shared: Mount) -> None:
    path = work / "huge"
    path.write_bytes(b"head")
    tib = 1 << 40
    os.truncate(path, tib)
    assert os.stat(path).st_size == tib
    backing = backing_of(shared, path)
    assert os.stat(backing).st_size == fmt.cipher_size(tib, fmt.FILE_HEADER_LEN)
    assert os.stat(backing).st_blocks * 512 < 1 << 20
    fd = os.open(path, os.O_RDWR)
    try:
        assert os.pread(fd, 100, tib - 100) == bytes(100)
        assert os.pread(fd, 100, tib // 2 + 12345) == bytes(100)  # a hole in the middle
        assert os.pread(fd, 10, 0) == b"head" + bytes(6)
        assert os.pread(fd, 10, tib) == b""
        os.pwrite(fd, b"end", tib - 3)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(fd, 10, tib - 10) == bytes(7) + b"end"
    finally:
        os.close(fd)
    assert os.stat(backing).st_blocks * 512 < 1 << 20
    # Up to the documented maximum, and not beyond.
    os.truncate(path, fmt.MAX_FILE_SIZE)
    assert os.stat(path).st_size == fmt.MAX_FILE_SIZE
    raises_errno(errno.EFBIG, os.truncate, path, fmt.MAX_FILE_SIZE + 1)
    assert os.stat(path).st_size == fmt.MAX_FILE_SIZE
    os.truncate(path, 1000)
    assert path.read_bytes() == b"head" + bytes(996)
    assert os.stat(backing).st_size == fmt.cipher_size(1000, fmt.FILE_HEADER_LEN)


def test_write_past_8_tib_fails_with_efbig(mounted: Mount) -> None:
    path = mounted.path / "far"
    path.write_bytes(b"x")
    backing_size = os.stat(backing_of(mounted, path)).st_size
    # O_DIRECT bypasses the writeback cache: the answer comes straight from the write.
    buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
    buf[:6] = b"beyond"
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        raises_errno(errno.EFBIG, os.pwrite, fd, buf, fmt.MAX_FILE_SIZE)
        raises_errno(errno.EFBIG, os.pwrite, fd, buf, fmt.MAX_FILE_SIZE - 2048)
        assert os.pwrite(fd, buf, fmt.MAX_FILE_SIZE - 4096) == 4096  # the last allowed page
    finally:
        os.close(fd)
    assert os.stat(path).st_size == fmt.MAX_FILE_SIZE
    with open(path, "rb") as f:
        f.seek(fmt.MAX_FILE_SIZE - 4096)
        assert f.read() == bytes(buf)
    os.truncate(path, 1)
    # Buffered: the kernel accepts the write into its cache; the filesystem refuses
    # it on write-back, so fsync reports EFBIG and nothing reaches the backing file.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"beyond", fmt.MAX_FILE_SIZE)
        raises_errno(errno.EFBIG, os.fsync, fd)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    assert os.stat(backing_of(mounted, path)).st_size == backing_size
    mounted.remount()
    assert path.read_bytes() == b"x"


# -- read-only mount ---------------------------------------------------------------


def test_read_only_mount_refuses_writes(mounted: Mount) -> None:
    mnt = mounted.path
    (mnt / "d").mkdir()
    (mnt / "d" / "f").write_bytes(b"keep me")
    (mnt / "empty").mkdir()
    os.setxattr(mnt / "d" / "f", "user.k", b"v")
    os.symlink("d/f", mnt / "ln")
    mounted.remount("--read-only")
    snapshot = sorted((str(p.relative_to(mounted.vault)), os.lstat(p).st_mtime_ns, os.lstat(p).st_size)
                      for p in mounted.vault.rglob("*"))
    attempts = [
        lambda: os.open(mnt / "d" / "f", os.O_WRONLY),
        lambda: os.open(mnt / "d" / "f", os.O_RDONLY | os.O_TRUNC),
        lambda: os.open(mnt / "d" / "new", os.O_CREAT | os.O_WRONLY, 0o644),
        lambda: os.mkdir(mnt / "d2"),
        lambda: os.rmdir(mnt / "empty"),
        lambda: os.unlink(mnt / "d" / "f"),
        lambda: os.rename(mnt / "d" / "f", mnt / "d" / "g"),
        lambda: os.chmod(mnt / "d" / "f", 0o600),
        lambda: os.utime(mnt / "d" / "f", (1, 1)),
        lambda: os.truncate(mnt / "d" / "f", 0),
        lambda: os.symlink("x", mnt / "ln2"),
        lambda: os.link(mnt / "d" / "f", mnt / "hard"),
        lambda: os.mkfifo(mnt / "fifo"),
        lambda: os.setxattr(mnt / "d" / "f", "user.k", b"w"),
        lambda: os.removexattr(mnt / "d" / "f", "user.k"),
    ]
    for i, attempt in enumerate(attempts):
        assert outcome(attempt) == "EROFS", i
    assert (mnt / "d" / "f").read_bytes() == b"keep me"
    assert os.readlink(mnt / "ln") == "d/f"
    assert os.getxattr(mnt / "d" / "f", "user.k") == b"v"
    assert sorted(os.listdir(mnt)) == ["d", "empty", "ln"]
    assert os.statvfs(mnt).f_flag & os.ST_RDONLY
    after = sorted((str(p.relative_to(mounted.vault)), os.lstat(p).st_mtime_ns, os.lstat(p).st_size)
                   for p in mounted.vault.rglob("*"))
    assert after == snapshot
