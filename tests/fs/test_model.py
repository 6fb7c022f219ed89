"""A stateful hypothesis test: random namespace and content operations run on
the mount and on a plain directory side by side, compared after every step.

Compared: the set of paths, every file's bytes, type/mode/size/nlink, which
paths share an inode (and that this pairing stays stable from step to step),
and the outcome of every operation down to the errno. One mount serves the
whole module; each example works in its own fresh directory pair, and the
last example's trees survive for a final remount comparison and an fsck.
"""
from __future__ import annotations

import itertools
import os
import random
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from fs.format.layout import FILE_SLOTS
from tests.conftest import Env, Mount, live_mount, new_env
from tests.fs.posix_support import outcome

BLOCK = 16384
# Short names collide often (EEXIST, overwrites); long ones need sidecar files.
NAMES = ["a", "b", "c", "d", "n" * 255, "m" * 180]
MODES = [0o644, 0o600, 0o755, 0o700, 0o444, 0o555, 0o000, 0o640, 0o751, 0o1777, 0o2755, 0o4755]
SIZES = st.one_of(
    st.sampled_from([0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK - 1, 2 * BLOCK, 2 * BLOCK + 1, 3 * BLOCK]),
    st.integers(0, 4 * BLOCK + 100),
)
LENGTHS = st.one_of(st.sampled_from([0, 1, 2, BLOCK - 1, BLOCK, BLOCK + 1]), st.integers(0, 2 * BLOCK + 10))
# Absolute offsets, or relative to the current end of file (past EOF makes holes).
OFFSETS = st.one_of(
    st.tuples(st.just("abs"), SIZES),
    st.tuples(st.just("eof"), st.sampled_from([-1, 0, 1, 100, BLOCK, BLOCK + 3]) | st.integers(-BLOCK, 2 * BLOCK)),
)
PICK = st.integers(0, 1 << 16)
ANY_KIND = st.sampled_from([False, False, False, True])  # mostly the kind an op is for, sometimes anything
MAX_HANDLES = 3
MAX_PLAIN_PATH = 3000  # stay clear of PATH_MAX with nested 255-byte names


def _not_dir(mode: int) -> bool:
    return not stat.S_ISDIR(mode)


def payload(length: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(length)




def write_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def pwrite_file(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
    finally:
        os.close(fd)


def read_uncached(path: Path) -> bytes:
    """Read a file's bytes, first dropping its clean pages so the filesystem answers."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Tree:
    """What must match between the mount and the plain directory."""
    attrs: dict[str, tuple[int, int, int | None, int]]  # path -> (type, mode, size of files, nlink)
    contents: dict[str, bytes]
    inodes: dict[str, int]  # path -> st_ino (compared as equality classes)

    def classes(self) -> set[frozenset[str]]:
        by_ino: dict[int, set[str]] = {}
        for path, ino in self.inodes.items():
            by_ino.setdefault(ino, set()).add(path)
        return {frozenset(paths) for paths in by_ino.values()}


def scan(root: Path) -> Tree:
    attrs: dict[str, tuple[int, int, int | None, int]] = {}
    contents: dict[str, bytes] = {}
    inodes: dict[str, int] = {}
    todo = [""]
    while todo:
        rel = todo.pop()
        path = root / rel if rel else root
        st_ = os.lstat(path)
        kind = stat.S_IFMT(st_.st_mode)
        attrs[rel] = (kind, st_.st_mode, st_.st_size if kind == stat.S_IFREG else None, st_.st_nlink)
        inodes[rel] = st_.st_ino
        if kind == stat.S_IFDIR:
            todo.extend(f"{rel}/{name}" if rel else name for name in os.listdir(path))
        elif kind == stat.S_IFREG:
            contents[rel] = read_uncached(path)
            assert len(contents[rel]) == st_.st_size, f"{path}: read {len(contents[rel])} bytes, stat says {st_.st_size}"
    return Tree(attrs, contents, inodes)


def assert_same(mount_tree: Tree, plain_tree: Tree, where: str = "") -> None:
    assert set(mount_tree.attrs) == set(plain_tree.attrs), f"{where} paths differ"
    for rel in sorted(plain_tree.attrs):
        assert mount_tree.attrs[rel] == plain_tree.attrs[rel], f"{where} {rel!r}: (type, mode, size, nlink) differ"
    for rel in sorted(plain_tree.contents):
        assert mount_tree.contents[rel] == plain_tree.contents[rel], f"{where} {rel!r}: contents differ"
    assert mount_tree.classes() == plain_tree.classes(), f"{where} hard-link classes differ"


@dataclass
class Shared:
    env: Env
    mount: Mount
    mount_root: Path
    plain_root: Path
    counter: Iterator[int]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """One mount for the module, built as tests/conftest.py builds `mounted`."""
    tmp = tmp_path_factory.mktemp("model")
    env = new_env(tmp)
    plain = tmp / "plain"
    plain.mkdir()
    with live_mount(env, env.init(tmp / "vault"), tmp / "mnt") as mount:
        yield Shared(env, mount, mount.path, plain, itertools.count())


class FsModel(RuleBasedStateMachine):
    shared: Shared  # set by the test before running

    def __init__(self) -> None:
        super().__init__()
        n = next(self.shared.counter)
        self.m = self.shared.mount_root / f"ex{n}"
        self.p = self.shared.plain_root / f"ex{n}"
        os.mkdir(self.m)
        os.mkdir(self.p)
        self.pairing: dict[int, int] = {}  # mount st_ino -> plain st_ino, from the last check
        self.handles: list[tuple[int, int, str]] = []  # (mount fd, plain fd, path when opened)

    # -- helpers ------------------------------------------------------------

    def _paths(self, want: Callable[[int], bool] = lambda mode: True) -> list[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.p):
            for name in sorted(dirnames) + sorted(filenames):
                full = Path(dirpath) / name
                if want(os.lstat(full).st_mode):
                    out.append(str(full.relative_to(self.p)))
        return sorted(out)

    def _dirs(self) -> list[str]:
        return [""] + self._paths(stat.S_ISDIR)

    @staticmethod
    def _pick(paths: list[str], i: int) -> str | None:
        return paths[i % len(paths)] if paths else None

    def _new_path(self, parent_pick: int, name: str) -> str | None:
        parent = self._pick(self._dirs(), parent_pick)
        assert parent is not None
        rel = f"{parent}/{name}" if parent else name
        if len(str(self.p / rel)) > MAX_PLAIN_PATH:
            return None
        return rel

    def _both(self, what: str, fn: Callable[..., Any], *rels: str, extra: tuple[Any, ...] = (), emlink_ok: bool = False) -> str:
        """Run *fn* on the mount, then on the plain side; the outcomes must match.

        *emlink_ok*: the op would give a file a key slot for a fifth directory, which
        the format does not have (docs/format.md): the mount may refuse with EMLINK.
        """
        mounted = outcome(fn, *(self.m / r if r else self.m for r in rels), *extra)
        if mounted == "EMLINK" and emlink_ok:
            event(f"{what}: EMLINK (documented limit)")
            return mounted
        plain = outcome(fn, *(self.p / r if r else self.p for r in rels), *extra)
        assert mounted == plain, f"{what} {rels}: mount says {mounted}, plain dir says {plain}"
        event(f"{what}: {plain}")
        return plain

    def _needs_new_slot(self, src: str, dst: str) -> bool:
        """Would linking or moving file *src* to *dst* span more than FILE_SLOTS directories?"""
        st_ = os.lstat(self.p / src)
        if not stat.S_ISREG(st_.st_mode):
            return False
        dirs = {os.path.dirname(rel) for rel in self._paths() if os.lstat(self.p / rel).st_ino == st_.st_ino}
        return os.path.dirname(dst) not in dirs and len(dirs) >= FILE_SLOTS

    # -- rules --------------------------------------------------------------

    @rule(parent=PICK, name=st.sampled_from(NAMES), length=LENGTHS, seed=st.integers(0, 255), mode=st.sampled_from(MODES))
    def create(self, parent: int, name: str, length: int, seed: int, mode: int) -> None:
        rel = self._new_path(parent, name)
        if rel is not None:
            self._both("create", write_file, rel, extra=(payload(length, seed), mode))

    @rule(which=PICK, any_kind=ANY_KIND, offset=OFFSETS, length=LENGTHS, seed=st.integers(0, 255))
    def write(self, which: int, any_kind: bool, offset: tuple[str, int], length: int, seed: int) -> None:
        rel = self._pick(self._paths() if any_kind else self._paths(stat.S_ISREG), which)
        if rel is None:
            return
        kind, value = offset
        if kind == "eof":
            st_ = os.lstat(self.p / rel)
            value = max(0, (st_.st_size if stat.S_ISREG(st_.st_mode) else 0) + value)
        self._both("pwrite", pwrite_file, rel, extra=(value, payload(length, seed)))

    @rule(which=PICK, any_kind=ANY_KIND, size=SIZES)
    def truncate(self, which: int, any_kind: bool, size: int) -> None:
        rel = self._pick(self._paths() if any_kind else self._paths(stat.S_ISREG), which)
        if rel is not None:
            self._both("truncate", os.truncate, rel, extra=(size,))

    @rule(source=PICK, parent=PICK, name=st.sampled_from(NAMES))
    def rename_to_name(self, source: int, parent: int, name: str) -> None:
        src = self._pick(self._paths(), source)
        dst = self._new_path(parent, name)
        if src is not None and dst is not None:
            self._both("rename", os.rename, src, dst, emlink_ok=self._needs_new_slot(src, dst))

    @rule(source=PICK, which=PICK)
    def rename_over(self, source: int, which: int) -> None:
        paths = self._paths()
        src, dst = self._pick(paths, source), self._pick([""] + paths, which)
        if src is not None and dst is not None:
            self._both("rename", os.rename, src, dst, emlink_ok=self._needs_new_slot(src, dst))

    @rule(which=PICK, any_kind=ANY_KIND)
    def unlink(self, which: int, any_kind: bool) -> None:
        rel = self._pick(self._paths() if any_kind else self._paths(_not_dir), which)
        if rel is not None:
            self._both("unlink", os.unlink, rel)

    @rule(source=PICK, any_kind=ANY_KIND, parent=PICK, name=st.sampled_from(NAMES))
    def link(self, source: int, any_kind: bool, parent: int, name: str) -> None:
        src = self._pick(self._paths() if any_kind else self._paths(_not_dir), source)
        dst = self._new_path(parent, name)
        if src is not None and dst is not None:
            self._both("link", os.link, src, dst, emlink_ok=self._needs_new_slot(src, dst))

    @rule(parent=PICK, name=st.sampled_from(NAMES), mode=st.sampled_from(MODES))
    def mkdir(self, parent: int, name: str, mode: int) -> None:
        rel = self._new_path(parent, name)
        if rel is not None:
            self._both("mkdir", os.mkdir, rel, extra=(mode,))

    @rule(which=PICK, any_kind=ANY_KIND)
    def rmdir(self, which: int, any_kind: bool) -> None:
        rel = self._pick(self._paths() if any_kind else self._paths(stat.S_ISDIR), which)
        if rel is not None:
            self._both("rmdir", os.rmdir, rel)

    @rule(which=PICK, mode=st.sampled_from(MODES))
    def chmod(self, which: int, mode: int) -> None:
        rel = self._pick([""] + self._paths(), which)
        assert rel is not None
        self._both("chmod", os.chmod, rel, extra=(mode,))

    # Open handles outlive renames and unlinks of their file, and see its changes.

    @rule(which=PICK)
    def open_handle(self, which: int) -> None:
        rel = self._pick(self._paths(stat.S_ISREG), which)
        if rel is None or len(self.handles) >= MAX_HANDLES:
            return
        self.handles.append((os.open(self.m / rel, os.O_RDWR), os.open(self.p / rel, os.O_RDWR), rel))

    @rule(which=PICK, offset=SIZES, length=LENGTHS, seed=st.integers(0, 255))
    def write_handle(self, which: int, offset: int, length: int, seed: int) -> None:
        if self.handles:
            m_fd, p_fd, rel = self.handles[which % len(self.handles)]
            data = payload(length, seed)
            assert os.pwrite(p_fd, data, offset) == len(data)
            assert os.pwrite(m_fd, data, offset) == len(data), f"pwrite through a handle on {rel!r}"

    @rule(which=PICK, size=SIZES)
    def truncate_handle(self, which: int, size: int) -> None:
        if self.handles:
            m_fd, p_fd, rel = self.handles[which % len(self.handles)]
            os.ftruncate(p_fd, size)
            os.ftruncate(m_fd, size)

    @rule(which=PICK)
    def close_handle(self, which: int) -> None:
        if self.handles:
            m_fd, p_fd, _ = self.handles.pop(which % len(self.handles))
            os.close(m_fd)
            os.close(p_fd)

    # -- the comparison after every step ---------------------------------------

    @invariant()
    def same_trees(self) -> None:
        mount_tree, plain_tree = scan(self.m), scan(self.p)
        assert_same(mount_tree, plain_tree)
        # The mount's inode numbers stay with their objects from step to step.
        pairing = {mount_tree.inodes[rel]: plain_tree.inodes[rel] for rel in plain_tree.inodes}
        for m_ino, p_ino in pairing.items():
            if m_ino in self.pairing:
                assert self.pairing[m_ino] == p_ino, f"mount inode {m_ino} now names a different object"
        self.pairing = pairing
        for m_fd, p_fd, rel in self.handles:
            m_st, p_st = os.fstat(m_fd), os.fstat(p_fd)
            assert (m_st.st_mode, m_st.st_size, m_st.st_nlink) == (p_st.st_mode, p_st.st_size, p_st.st_nlink), (
                f"handle opened on {rel!r}: (mode, size, nlink) differ"
            )
            assert os.pread(m_fd, p_st.st_size + 1, 0) == os.pread(p_fd, p_st.st_size + 1, 0), f"handle opened on {rel!r}: contents differ"

    def teardown(self) -> None:
        while self.handles:
            self.close_handle(0)
        # Keep this example's trees as "last" (for the final remount check), drop the previous ones.
        for root, mine in ((self.shared.mount_root, self.m), (self.shared.plain_root, self.p)):
            last = root / "last"
            if last.exists():
                shutil.rmtree(last)
            assert not last.exists()
            os.rename(mine, last)
        assert sorted(os.listdir(self.shared.mount_root)) == ["last"]


def _run(shared: Shared, max_examples: int, steps: int, machine: type[FsModel] = FsModel) -> None:
    FsModel.shared = shared
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
        ),
    )
    # Everything must have reached the backing directory: remount and compare again.
    mount = shared.mount
    before = scan(shared.mount_root / "last")
    mount.remount()
    after = scan(shared.mount_root / "last")
    assert_same(after, scan(shared.plain_root / "last"), "after remount:")
    assert after.inodes == before.inodes, "inode numbers changed across the remount"
    # And the vault must be sound offline.
    mount.unmount()
    result = shared.env.run("fsck", mount.vault, "--passphrase-file", shared.env.passfile)
    assert result.returncode == 0 and "no damage" in result.stdout, result.stdout + result.stderr
    mount.pid = shared.env.mount(mount.vault, mount.path).pid


def test_mount_matches_plain_directory(shared: Shared) -> None:
    _run(shared, max_examples=60, steps=40)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_mount_matches_plain_directory_long(shared: Shared) -> None:
    _run(shared, max_examples=600, steps=80)
