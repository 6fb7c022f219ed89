"""Names, renames, symlinks and hard links on a real umbrafs mount.

Behaviour is compared with a plain directory where the two must agree, and
every test checks the backing directory holds no plaintext names or targets.
"""
from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

from fs.format import layout as fmt
from tests.conftest import Mount
from tests.fs.posix_support import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    assert_no_plaintext,
    backing_leftovers,
    drop_cache,
    outcome,
    plain,  # noqa: F401  (fixture)
    raises_errno,
    renameat2,
    shared,  # noqa: F401  (fixture)
    work,  # noqa: F401  (fixture)
)


def tree(root: Path) -> dict[str, bytes | str | int]:
    """Relative path -> file content, symlink target, or the file type of anything else."""
    out: dict[str, bytes | str | int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                out[rel] = os.readlink(path)
            elif stat.S_ISREG(mode):
                out[rel] = path.read_bytes()
            else:
                out[rel] = stat.S_IFMT(mode)
    return out


def inodes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): os.lstat(p).st_ino for p in root.rglob("*")}


# -- rename ----------------------------------------------------------------------


def test_rename_files_matches_a_plain_directory(work: Path, plain: Path, shared: Mount) -> None:
    for root in (work, plain):
        (root / "a").mkdir()
        (root / "b").mkdir()
        (root / "a" / "src-renamefile").write_bytes(b"S" * 20_000)
        (root / "a" / "dst-renamefile").write_bytes(b"D" * 30_000)
        (root / "a" / "dir").mkdir()
        (root / "a" / "dir" / "child").mkdir()
    ino_src = os.stat(work / "a" / "src-renamefile").st_ino
    held = os.open(work / "a" / "dst-renamefile", os.O_RDONLY)
    try:
        for root in (work, plain):
            os.rename(root / "a" / "src-renamefile", root / "a" / "dst-renamefile")
        # The replaced file lives on through its open descriptor.
        assert os.pread(held, 40_000, 0) == b"D" * 30_000
    finally:
        os.close(held)
    assert os.stat(work / "a" / "dst-renamefile").st_ino == ino_src
    assert (work / "a" / "dst-renamefile").read_bytes() == b"S" * 20_000
    assert not (work / "a" / "src-renamefile").exists()
    # Across directories: same object, same content.
    for root in (work, plain):
        os.rename(root / "a" / "dst-renamefile", root / "b" / "moved-renamefile")
    assert os.stat(work / "b" / "moved-renamefile").st_ino == ino_src
    # An open file moved to another directory: its descriptor reads and writes on.
    fd = os.open(work / "b" / "moved-renamefile", os.O_RDWR)
    try:
        os.rename(work / "b" / "moved-renamefile", work / "a" / "back")
        os.pwrite(fd, b"s", 0)
        assert os.pread(fd, 3, 0) == b"sSS"
        os.rename(work / "a" / "back", work / "b" / "moved-renamefile")
        os.pwrite(fd, b"S", 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    drop_cache(work / "b" / "moved-renamefile")
    assert (work / "b" / "moved-renamefile").read_bytes() == b"S" * 20_000
    for root in (work, plain):
        (root / "b" / "moved-renamefile").write_bytes(b"rewritten in b")
    assert (work / "b" / "moved-renamefile").read_bytes() == b"rewritten in b"
    # Onto itself, and onto another hard link of itself: nothing happens.
    for root in (work, plain):
        os.rename(root / "b" / "moved-renamefile", root / "b" / "moved-renamefile")
        os.link(root / "b" / "moved-renamefile", root / "b" / "hardlink")
        os.rename(root / "b" / "moved-renamefile", root / "b" / "hardlink")
    assert sorted(os.listdir(work / "b")) == sorted(os.listdir(plain / "b")) == ["hardlink", "moved-renamefile"]
    assert (work / "b" / "hardlink").read_bytes() == b"rewritten in b"
    # Errors agree with a plain directory.
    cases = [
        ("b/hardlink", "a/dir"),  # file onto directory
        ("a/dir", "b/hardlink"),  # directory onto file
        ("a/dir", "a/dir/child/x"),  # directory into itself
        ("a/missing", "b/x"),
        ("b/hardlink", "missing/x"),
        ("b/hardlink/x", "b/y"),
    ]
    for old, new in cases:
        assert outcome(os.rename, work / old, work / new) == outcome(os.rename, plain / old, plain / new) != "ok", (old, new)
    assert tree(work) == tree(plain)
    assert_no_plaintext(shared.vault, "renamefile", "hardlink")


def _populate(root: Path) -> None:
    (root / "deep" / "er" / "est").mkdir(parents=True)
    (root / "deep" / "er" / "est" / "leaf.bin").write_bytes(os.urandom(50_000))
    (root / "deep" / "notes.txt").write_bytes(b"notes")
    (root / ("long-" + "n" * 190)).write_bytes(b"long name inside")
    os.symlink("deep/notes.txt", root / "to-notes")
    os.symlink("../" + "/" * 3000 + "outside", root / "long-link")
    os.mkfifo(root / "pipe")


def test_rename_directory_across_directories_keeps_everything(mounted: Mount) -> None:
    mnt = mounted.path
    (mnt / "p" / "q").mkdir(parents=True)
    (mnt / "r").mkdir()
    (mnt / "r" / "outside").write_bytes(b"outside file")  # what dir2/long-link points at
    (mnt / "p" / "q" / "dir").mkdir()
    _populate(mnt / "p" / "q" / "dir")
    held = os.open(mnt / "p" / "q" / "dir" / "deep" / "notes.txt", os.O_RDWR)
    before = tree(mnt / "p" / "q" / "dir")
    inos = inodes(mnt / "p" / "q" / "dir")
    dir_ino = os.stat(mnt / "p" / "q" / "dir").st_ino
    os.rename(mnt / "p" / "q" / "dir", mnt / "r" / "dir2")
    moved = mnt / "r" / "dir2"
    try:  # a file open inside the moved directory keeps working
        os.pwrite(held, b"NOTES", 0)
        os.fsync(held)
    finally:
        os.close(held)
    before["deep/notes.txt"] = b"NOTES"
    assert os.stat(moved).st_ino == dir_ino
    assert tree(moved) == before
    assert inodes(moved) == inos
    assert (moved / "long-link").read_bytes() == b"outside file"
    # Move the parent of the moved dir too: paths below it are rebuilt lazily.
    os.rename(mnt / "r", mnt / "p" / "q" / "r")
    moved = mnt / "p" / "q" / "r" / "dir2"
    assert tree(moved) == before
    assert (moved / "long-link").read_bytes() == b"outside file"
    (moved / "deep" / "er" / "new").write_bytes(b"written after the move")
    before = tree(moved)
    mounted.remount()
    assert tree(moved) == before
    assert inodes(moved) == {**inos, "deep/er/new": os.lstat(moved / "deep" / "er" / "new").st_ino}
    assert os.stat(moved).st_ino == dir_ino
    # Onto an empty directory: replaces it.
    (mnt / "empty").mkdir()
    os.rename(moved, mnt / "empty")
    assert tree(mnt / "empty") == before
    # Onto a non-empty directory: ENOTEMPTY, and nothing is lost on either side.
    (mnt / "full").mkdir()
    (mnt / "full" / "mine").write_bytes(b"do not lose me")
    raises_errno(errno.ENOTEMPTY, os.rename, mnt / "empty", mnt / "full")
    raises_errno(errno.ENOTEMPTY, renameat2, mnt / "empty", mnt / "full", 0)
    assert tree(mnt / "empty") == before
    assert tree(mnt / "full") == {"mine": b"do not lose me"}
    mounted.remount()
    assert tree(mnt / "empty") == before
    assert (mnt / "full" / "mine").read_bytes() == b"do not lose me"
    assert_no_plaintext(mounted.vault, "notes", "leaf.bin", "dir2", "long-nnnn", "outside", "do not lose")


def test_rename_noreplace_and_exchange(mounted: Mount, plain: Path) -> None:
    mnt = mounted.path
    for root in (mnt, plain):
        (root / "x").mkdir()
        (root / "y").mkdir()
        (root / "x" / "one").write_bytes(b"first file")
        (root / "x" / "two").write_bytes(b"second file" * 2000)
        (root / "y" / "three").write_bytes(b"third file")
        (root / "x" / "dirA").mkdir()
        (root / "x" / "dirA" / "a.txt").write_bytes(b"in A")
        (root / "y" / "dirB").mkdir()
        (root / "y" / "dirB" / "b.txt").write_bytes(b"in B")
        (root / "y" / "dirB" / "sub").mkdir()
        (root / "y" / "dirB" / "sub" / "deep.txt").write_bytes(b"deep in B")
    cases = [
        ("x/one", "x/two", RENAME_NOREPLACE),
        ("x/dirA", "y/dirB", RENAME_NOREPLACE),
        ("x/one", "x/none", RENAME_EXCHANGE),
        ("x/none", "x/one", RENAME_EXCHANGE),
        ("x/one", "x/two", RENAME_NOREPLACE | RENAME_EXCHANGE),
    ]
    for old, new, flags in cases:
        got = outcome(renameat2, mnt / old, mnt / new, flags)
        assert got == outcome(renameat2, plain / old, plain / new, flags) != "ok", (old, new, flags)
    raises_errno(errno.EEXIST, renameat2, mnt / "x" / "one", mnt / "x" / "two", RENAME_NOREPLACE)
    assert tree(mnt) == tree(plain)
    ino = {n: os.stat(mnt / n).st_ino for n in ("x/one", "x/two", "y/three", "x/dirA", "y/dirB")}
    for root in (mnt, plain):
        renameat2(root / "x" / "one", root / "x" / "fresh", RENAME_NOREPLACE)
        renameat2(root / "x" / "fresh", root / "x" / "two", RENAME_EXCHANGE)  # two files, same dir
        renameat2(root / "x" / "two", root / "y" / "three", RENAME_EXCHANGE)  # two files, across dirs
        renameat2(root / "x" / "dirA", root / "y" / "dirB", RENAME_EXCHANGE)  # two dirs, across dirs
        renameat2(root / "x" / "fresh", root / "x" / "dirA", RENAME_EXCHANGE)  # a file and a dir
    assert tree(mnt) == tree(plain)
    assert (mnt / "x" / "fresh").is_dir() and (mnt / "x" / "fresh" / "sub" / "deep.txt").read_bytes() == b"deep in B"
    assert (mnt / "y" / "dirB" / "a.txt").read_bytes() == b"in A"
    assert (mnt / "y" / "three").read_bytes() == b"first file"
    assert os.stat(mnt / "y" / "three").st_ino == ino["x/one"]
    assert os.stat(mnt / "x" / "dirA").st_ino == ino["x/two"]
    assert os.stat(mnt / "x" / "fresh").st_ino == ino["y/dirB"]
    assert os.stat(mnt / "y" / "dirB").st_ino == ino["x/dirA"]
    expected = tree(plain)
    for path in mnt.rglob("*"):
        if path.is_file():
            drop_cache(path)
    assert tree(mnt) == expected
    mounted.remount()
    assert tree(mnt) == expected
    (mnt / "x" / "fresh" / "sub" / "new").write_bytes(b"new")  # keys still usable after the swaps
    assert (mnt / "x" / "fresh" / "sub" / "new").read_bytes() == b"new"
    assert_no_plaintext(mounted.vault, "dirA", "dirB", "deep.txt", "fresh", "three")


# -- symlinks --------------------------------------------------------------------


def resolving_target(length: int) -> str:
    """A relative target of exactly *length* bytes pointing at ../data-target (extra slashes collapse)."""
    head, tail = "../", "data-target"
    return head + "/" * (length - len(head) - len(tail)) + tail


def test_symlinks_short_and_long_targets(mounted: Mount, plain: Path) -> None:
    mnt = mounted.path
    for root in (mnt, plain):
        (root / "data-target").write_bytes(b"the data")
        (root / "s1").mkdir()
        (root / "s2").mkdir()
    lengths = [11 + 3, 200, 2000, 3500, 4095]
    for n in lengths:
        for root in (mnt, plain):
            os.symlink(resolving_target(n), root / "s1" / f"ln{n}")
    # Dangling, absolute and odd-byte targets are stored verbatim too.
    odd = {"dangling": "no/such/file", "absolute": "/etc/hostname", "bytes": os.fsdecode(b"\xff\xfe weird\n target")}
    for name, target in odd.items():
        os.symlink(target, mnt / "s1" / name)
        assert os.readlink(mnt / "s1" / name) == target
    assert outcome(os.symlink, "x" * 4096, mnt / "s1" / "too-long") == outcome(
        os.symlink, "x" * 4096, plain / "s1" / "too-long"
    ) == "ENAMETOOLONG"
    assert outcome(os.symlink, "x", mnt / "s1" / "ln200") == "EEXIST"

    def check(directory: str) -> None:
        for n in lengths:
            link = mnt / directory / f"ln{n}"
            assert os.readlink(link) == resolving_target(n)
            assert os.lstat(link).st_size == n
            assert stat.S_ISLNK(os.lstat(link).st_mode)
            assert link.read_bytes() == b"the data"

    check("s1")
    # Renamed into another directory (at the same depth) they still resolve.
    for n in lengths:
        os.rename(mnt / "s1" / f"ln{n}", mnt / "s2" / f"ln{n}")
    check("s2")
    # Renamed within a directory they keep their inode.
    ino = os.lstat(mnt / "s2" / "ln4095").st_ino
    os.rename(mnt / "s2" / "ln4095", mnt / "s2" / "renamed4095")
    assert os.lstat(mnt / "s2" / "renamed4095").st_ino == ino
    os.rename(mnt / "s2" / "renamed4095", mnt / "s2" / "ln4095")
    mounted.remount()
    check("s2")
    assert os.readlink(mnt / "s1" / "bytes") == odd["bytes"]
    # Overwriting a long symlink by rename, and unlinking the rest, leaves no sidecars.
    (mnt / "s2" / "plainfile").write_bytes(b"p")
    os.rename(mnt / "s2" / "plainfile", mnt / "s2" / "ln3500")
    assert (mnt / "s2" / "ln3500").read_bytes() == b"p"
    os.rename(mnt / "s2" / "ln4095", mnt / "s2" / "ln2000")
    assert os.readlink(mnt / "s2" / "ln2000") == resolving_target(4095)
    assert len(backing_leftovers(mounted.vault, fmt.LONGLINK_SUFFIX)) == 1
    assert_no_plaintext(mounted.vault, "data-target", "weird", "no/such", "/etc/hostname", "///")
    for name in os.listdir(mnt / "s2"):
        os.unlink(mnt / "s2" / name)
    assert backing_leftovers(mounted.vault, fmt.LONGLINK_SUFFIX) == []


# -- hard links ------------------------------------------------------------------


def test_hard_links_across_directories(mounted: Mount, plain: Path) -> None:
    mnt = mounted.path
    for root in (mnt, plain):
        for d in ("a", "b", "c", "d", "e"):
            (root / d).mkdir()
        (root / "a" / "f").write_bytes(b"A" * 20_000)
    before = os.stat(mnt / "a" / "f")
    time.sleep(0.02)
    os.link(mnt / "a" / "f", mnt / "b" / "g")
    os.link(plain / "a" / "f", plain / "b" / "g")
    st = os.stat(mnt / "a" / "f")
    assert st.st_nlink == 2 and os.stat(mnt / "b" / "g").st_nlink == 2
    assert st.st_ino == os.stat(mnt / "b" / "g").st_ino == before.st_ino
    assert st.st_ctime_ns > before.st_ctime_ns
    assert (mnt / "b" / "g").read_bytes() == b"A" * 20_000
    # Writes through one name show through the other.
    with open(mnt / "b" / "g", "r+b") as f:
        f.seek(16_380)
        f.write(b"via-g")
    drop_cache(mnt / "a" / "f")
    assert (mnt / "a" / "f").read_bytes() == b"A" * 16_380 + b"via-g" + b"A" * 3615
    # A second link inside the same directory as the first.
    os.link(mnt / "a" / "f", mnt / "a" / "f-again")
    assert os.stat(mnt / "b" / "g").st_nlink == 3
    for old, new in (("a/f", "b/g"), ("a", "z"), ("a/f", "missing/x"), ("missing", "a/x")):
        assert outcome(os.link, mnt / old, mnt / new) == outcome(os.link, plain / old, plain / new) != "ok", (old, new)
    # Unlinking one name keeps the others readable, with the count right away.
    before = os.stat(mnt / "b" / "g")
    time.sleep(0.02)
    os.unlink(mnt / "a" / "f")
    st = os.stat(mnt / "b" / "g")
    assert st.st_nlink == 2 and st.st_ctime_ns > before.st_ctime_ns
    drop_cache(mnt / "b" / "g")
    assert (mnt / "b" / "g").read_bytes()[16_380:16_385] == b"via-g"
    assert (mnt / "a" / "f-again").read_bytes() == (mnt / "b" / "g").read_bytes()
    # Moving one link to a third directory keeps every name working.
    os.rename(mnt / "a" / "f-again", mnt / "c" / "h")
    expected = (mnt / "b" / "g").read_bytes()
    ino = os.stat(mnt / "b" / "g").st_ino
    mounted.remount()
    for name in ("b/g", "c/h"):
        assert (mnt / name).read_bytes() == expected
        assert os.stat(mnt / name).st_nlink == 2
        assert os.stat(mnt / name).st_ino == ino
    (mnt / "c" / "h").write_bytes(b"rewritten via h")
    assert (mnt / "b" / "g").read_bytes() == b"rewritten via h"
    os.unlink(mnt / "c" / "h")
    mounted.remount()
    assert (mnt / "b" / "g").read_bytes() == b"rewritten via h"
    assert os.stat(mnt / "b" / "g").st_nlink == 1
    # The header holds four directory key slots: a fifth distinct directory is EMLINK.
    for i, d in enumerate(("a", "c", "d")):
        os.link(mnt / "b" / "g", mnt / d / f"l{i}")
    raises_errno(errno.EMLINK, os.link, mnt / "b" / "g", mnt / "e" / "l")
    os.link(mnt / "b" / "g", mnt / "d" / "same-dir-is-fine")
    assert os.stat(mnt / "b" / "g").st_nlink == 5
    assert_no_plaintext(mounted.vault, "via-g", "rewritten", "f-again", "same-dir")


def test_link_counts_ctime_and_mode_in_replies(work: Path, plain: Path) -> None:
    """The stat right after an operation shows its effect (no stale cached attributes)."""
    def snapshot(root: Path) -> dict[str, tuple[int, int]]:
        return {str(p.relative_to(root)): (os.lstat(p).st_nlink, os.lstat(p).st_mode) for p in [root, *root.rglob("*")]}

    steps = [
        lambda r: (r / "d1").mkdir(),
        lambda r: (r / "d1" / "sub").mkdir(),
        lambda r: (r / "d2").mkdir(mode=0o705),
        lambda r: (r / "d1" / "f").write_bytes(b"f"),
        lambda r: os.link(r / "d1" / "f", r / "d2" / "f2"),
        lambda r: os.rename(r / "d1" / "sub", r / "d2" / "sub"),
        lambda r: os.chmod(r / "d2" / "f2", 0o4711),
        lambda r: os.symlink("d1", r / "sl"),
        lambda r: os.unlink(r / "d1" / "f"),
        lambda r: os.rmdir(r / "d2" / "sub"),
        lambda r: os.chmod(r / "d1", 0o1755),
        lambda r: os.rename(r / "d1", r / "d2" / "d1"),
        lambda r: os.mkfifo(r / "d2" / "fifo", 0o604),
    ]
    for i, step in enumerate(steps):
        step(work)
        step(plain)
        assert snapshot(work) == snapshot(plain), i
    # ctime moves with link, unlink, rename and chmod, visible immediately.
    target = work / "d2" / "f2"
    for change in (
        lambda: os.link(target, work / "d2" / "f3"),
        lambda: os.unlink(work / "d2" / "f3"),
        lambda: os.rename(target, work / "d2" / "f4"),
        lambda: os.chmod(work / "d2" / "f4", 0o600),
    ):
        path = target if target.exists() else work / "d2" / "f4"
        before = os.stat(path).st_ctime_ns
        time.sleep(0.02)
        change()
        path = target if target.exists() else work / "d2" / "f4"
        assert os.stat(path).st_ctime_ns > before


def test_inode_numbers_stable_across_rename_and_remount(mounted: Mount) -> None:
    mnt = mounted.path
    (mnt / "a").mkdir()
    (mnt / "b").mkdir()
    (mnt / "a" / "file").write_bytes(b"x")
    (mnt / "a" / "dir").mkdir()
    os.mkfifo(mnt / "a" / "fifo")
    os.symlink("file", mnt / "a" / "sym")
    ino = {n: os.lstat(mnt / "a" / n).st_ino for n in ("file", "dir", "fifo", "sym")}
    assert len(set(ino.values())) == 4
    os.rename(mnt / "a" / "sym", mnt / "a" / "sym2")  # symlinks: within a directory
    for n in ("file", "dir", "fifo"):
        os.rename(mnt / "a" / n, mnt / "b" / n)
    now = {**{n: os.lstat(mnt / "b" / n).st_ino for n in ("file", "dir", "fifo")}, "sym": os.lstat(mnt / "a" / "sym2").st_ino}
    assert now == ino
    root_ino = os.stat(mnt).st_ino
    mounted.remount()
    again = {**{n: os.lstat(mnt / "b" / n).st_ino for n in ("file", "dir", "fifo")}, "sym": os.lstat(mnt / "a" / "sym2").st_ino}
    assert again == ino
    assert os.stat(mnt).st_ino == root_ino == 1
    # readdir reports the same numbers as stat.
    with os.scandir(mnt / "b") as it:
        assert {e.name: e.inode() for e in it} == {n: ino[n] for n in ("file", "dir", "fifo")}


# -- long and unusual names --------------------------------------------------------


NAMES_255 = [
    "needle255" + "L" * 246,
    "é" * 127 + "z",  # two-byte UTF-8
    "日本" * 42 + "語",  # three-byte UTF-8
    "🙂" * 63 + "abc",  # four-byte UTF-8
]


@pytest.mark.parametrize("name", NAMES_255 + ["m" * 200, "sidecarless-" + "k" * 88], ids=["ascii255", "utf8-2", "utf8-3", "utf8-4", "len200", "len100"])
def test_long_names(work: Path, shared: Mount, name: str) -> None:
    size = len(name.encode())
    assert size in (255, 200, 100)
    other = "o" * (size - 1) + "Q"
    (work / "sub").mkdir()
    (work / name).write_bytes(b"long name content")
    assert name in os.listdir(work)
    assert os.stat(work / name).st_size == len(b"long name content")
    assert (work / name).read_bytes() == b"long name content"
    if size > 100:
        assert backing_leftovers(backing_dir(shared, work), fmt.LONGNAME_SUFFIX)
    os.rename(work / name, work / other)
    assert sorted(os.listdir(work)) == sorted([other, "sub"])
    os.rename(work / other, work / "sub" / name)
    assert os.listdir(work / "sub") == [name]
    os.link(work / "sub" / name, work / name)
    assert os.stat(work / name).st_nlink == 2
    os.unlink(work / "sub" / name)
    os.mkdir(work / "sub" / name)
    (work / "sub" / name / name).write_bytes(b"nested")
    os.symlink(name, work / "sub" / name / other)
    assert (work / "sub" / name / other).read_bytes() == b"nested"
    assert sorted(os.listdir(work / "sub" / name)) == sorted([name, other])
    assert_no_plaintext(shared.vault, name, name[: len(name) // 2], other)
    os.rename(work / "sub" / name, work / other)  # a directory with a long name, renamed
    assert (work / other / name).read_bytes() == b"nested"
    for p in (work / other / other, work / other / name):
        os.unlink(p)
    os.rmdir(work / other)
    os.unlink(work / name)
    os.rmdir(work / "sub")
    assert os.listdir(work) == []
    assert backing_leftovers(backing_dir(shared, work), fmt.LONGNAME_SUFFIX) == []


def backing_dir(mount: Mount, path: Path) -> Path:
    ino = os.stat(path).st_ino
    return next(p for p in mount.vault.rglob("*") if p.is_dir() and os.stat(p).st_ino == ino)


def test_names_over_255_bytes_are_refused(work: Path, plain: Path) -> None:
    for root in (work, plain):
        (root / "f").write_bytes(b"x")
        (root / "d").mkdir()
    for long in ("x" * 256, "é" * 128, "日" * 86, "y" * 1000):
        attempts = [
            lambda r: os.open(r / long, os.O_CREAT | os.O_WRONLY, 0o644),
            lambda r: os.mkdir(r / long),
            lambda r: os.stat(r / long),
            lambda r: os.rename(r / "f", r / long),
            lambda r: os.rename(r / "d", r / "d" / ".." / long),
            lambda r: os.symlink("f", r / long),
            lambda r: os.link(r / "f", r / long),
            lambda r: os.mkfifo(r / long),
            lambda r: os.unlink(r / long),
        ]
        for i, attempt in enumerate(attempts):
            assert outcome(attempt, work) == outcome(attempt, plain) == "ENAMETOOLONG", (len(long), i)
    assert sorted(os.listdir(work)) == ["d", "f"]


def test_unusual_bytes_in_names(work: Path, plain: Path, shared: Mount) -> None:
    names = [b"new\nline", b"back\\slash", b"non-utf8-\xff\xfe", b" lead and trail ", b"-", b"...", b"a" * 16, b"a" * 15]
    for root in (work, plain):
        for n in names:
            path = os.path.join(os.fsencode(root), n)
            with open(path, "wb") as f:
                f.write(n)
    assert sorted(os.listdir(os.fsencode(work))) == sorted(os.listdir(os.fsencode(plain))) == sorted(names)
    for n in names:
        with open(os.path.join(os.fsencode(work), n), "rb") as f:
            assert f.read() == n
    assert_no_plaintext(shared.vault, *names)
    for bad in (".", ".."):
        for fn in (os.mkdir, os.rmdir, os.unlink):
            got = outcome(fn, os.path.join(work, bad))
            assert got == outcome(fn, os.path.join(plain, bad)) != "ok", (fn.__name__, bad)
