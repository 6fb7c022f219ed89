"""Versions kept by a real mount: what is kept, what is not, what it costs, and pruning."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from wire.clock import write_clock_file
from fs.vault import config as vault_mod
from fs.vault import versions as ver
from fs.vault.content import OpenFile
from fs.vault.headers import read_file_header
from tests.conftest import PASSPHRASE, Env, Mount, live_mount
from tests.fs.posix_support import assert_no_plaintext


def put(path: Path, data: bytes) -> None:
    """Write a file from another process: what a process itself created less than a minute ago
    it may delete or rewrite without a version being kept (temp files, build outputs)."""
    subprocess.run(["sh", "-c", 'cat > "$1"', "sh", str(path)], input=data, check=True)


def records(vault: Path) -> list[ver.Record]:
    unlocked = vault_mod.unlock(vault, PASSPHRASE.encode())
    found, damaged = ver.read_records(vault, unlocked.root_wrap_key)
    assert damaged == 0
    return found


def wait_records(vault: Path, pred, timeout: float = 5.0) -> list[ver.Record]:  # type: ignore[no-untyped-def]
    """Creation/rename records are buffered for up to a second."""
    deadline = time.monotonic() + timeout
    while True:
        found = records(vault)
        if pred(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def content(vault: Path, rec: ver.Record) -> bytes:
    fd = os.open(vault / ver.AREA / rec.data, os.O_RDONLY)
    try:
        header = read_file_header(fd)
        assert not rec.fid or header.obj_id.hex() == rec.fid
        of = OpenFile(fd, header, rec.dek_for(header))
        return bytes(of.read(0, of.size))
    finally:
        os.close(fd)


def data_files(vault: Path) -> list[str]:
    area = vault / ver.AREA
    return sorted(n for n in os.listdir(area) if n.startswith(ver.DATA_PREFIX)) if area.exists() else []


def test_editor_save_and_truncate_keep_the_old_content(mounted: Mount) -> None:
    mnt, vault = mounted.path, mounted.vault
    put(mnt / "notes.txt", b"first draft\n")
    # An editor's save: write a temp file, rename it over the original.
    put(mnt / ".notes.txt.swp", b"second draft\n")
    os.rename(mnt / ".notes.txt.swp", mnt / "notes.txt")
    # A shell redirection: open(O_TRUNC) of a non-empty file.
    (mnt / "notes.txt").write_bytes(b"third\n")
    found = wait_records(vault, lambda rs: any(r.op == ver.OP_TRUNCATE for r in rs))
    over = [r for r in found if r.op == ver.OP_RENAME_OVER]
    assert [(r.path, r.path2) for r in over] == [("/.notes.txt.swp", "/notes.txt")]
    assert content(vault, over[0]) == b"first draft\n"
    trunc = [r for r in found if r.op == ver.OP_TRUNCATE]
    assert [r.path for r in trunc] == ["/notes.txt"] and content(vault, trunc[0]) == b"second draft\n"
    assert trunc[0].pid > 0 and trunc[0].comm and trunc[0].size == len(b"second draft\n")
    assert (mnt / "notes.txt").read_bytes() == b"third\n"
    # Records are encrypted: no name or content shows in the backing dir, versions area included.
    assert_no_plaintext(vault, "notes.txt", ".notes.txt.swp", b"first draft", b"second draft")


def test_new_files_and_appends_keep_no_copy(mounted: Mount) -> None:
    mnt, vault = mounted.path, mounted.vault
    subprocess.run(["sh", "-c", "for i in $(seq 1 200); do echo $i > f$i; done; mkdir d; cp f1 d/copy"], cwd=mnt, check=True)
    with open(mnt / "log", "ab") as f:
        f.write(b"x" * 5000)
    for _ in range(3):  # appends through the writeback cache rewrite the partial last page
        with open(mnt / "log", "ab") as f:
            f.write(b"y" * 333)
    found = wait_records(vault, lambda rs: sum(r.op == ver.OP_CREATE for r in rs) >= 202)
    assert data_files(vault) == []
    assert not [r for r in found if r.op in ver.CONTENT_OPS]
    assert sum(r.op == ver.OP_CREATE for r in found) == 202  # f1..f200, d/copy, log


def test_overwrite_in_place_is_kept_once_per_process(mounted: Mount) -> None:
    mnt, vault = mounted.path, mounted.vault
    original = os.urandom(100_000)
    put(mnt / "db", original)
    fd = os.open(mnt / "db", os.O_RDWR)
    try:
        for off in range(0, 100_000, 10_000):  # many writes into existing data: one copy
            os.pwrite(fd, b"\0" * 1000, off)
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(mnt / "db", os.O_RDWR)  # the same process again within a minute: no second copy
    os.pwrite(fd, b"again", 0)
    os.close(fd)
    found = wait_records(vault, lambda rs: sum(r.op == ver.OP_OVERWRITE for r in rs) >= 2)
    over = [r for r in found if r.op == ver.OP_OVERWRITE]
    assert len(over) == 2 and over[0].data == over[1].data
    assert len(data_files(vault)) == 1
    assert content(vault, over[0]) == original


def test_unlink_moves_and_the_area_is_invisible(mounted: Mount) -> None:
    mnt, vault = mounted.path, mounted.vault
    data = os.urandom(3 << 20)
    put(mnt / "big", data)
    put(mnt / "empty", b"")
    backing_before = {e.inode() for e in os.scandir(vault) if e.is_file()}
    os.unlink(mnt / "big")
    os.unlink(mnt / "empty")
    found = wait_records(vault, lambda rs: sum(r.op == ver.OP_UNLINK for r in rs) >= 2)
    gone = {r.path: r for r in found if r.op == ver.OP_UNLINK}
    assert set(gone) == {"/big", "/empty"}
    assert content(vault, gone["/big"]) == data and content(vault, gone["/empty"]) == b""
    # O(1): the very backing inodes moved into the area, nothing was copied.
    area_inodes = {os.stat(vault / ver.AREA / r.data).st_ino for r in gone.values()}
    assert area_inodes <= backing_before
    assert os.listdir(mnt) == []
    ls = subprocess.run(["ls", "-a", str(mnt)], capture_output=True, text=True, check=True).stdout.split()
    assert [n for n in ls if n not in (".", "..")] == []  # this mount lists no dot entries at all
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / ver.AREA)


def test_keep_versions_off_keeps_nothing(env: Env, vault: Path) -> None:
    with live_mount(env, vault, env.tmp / "mnt", "--keep-versions", "off") as mount:
        put(mount.path / "a", b"x")
        os.unlink(mount.path / "a")
    assert not (vault / ver.AREA).exists()


def test_limits_prune_the_oldest(env: Env, vault: Path) -> None:
    clock = env.tmp / "clock.json"
    start = time.time_ns()
    write_clock_file(clock, start)
    mountpoint = env.tmp / "mnt"
    mountpoint.mkdir()
    env.run("--clock-file", clock, "mount", vault, mountpoint, "--passphrase-file", env.passfile, "--keep-versions", "210K,1d",
            check=True)
    mount = Mount(env, vault, mountpoint, int(env.mount_record(mountpoint)["pid"]))
    try:
        for i in range(4):  # 4 x 64 KiB kept at "start"
            put(mountpoint / f"old{i}", os.urandom(64 << 10))
            os.unlink(mountpoint / f"old{i}")
        time.sleep(2.5)  # a prune pass ran (a tenth of the limit was added): all are younger than 10 min
        assert len(data_files(vault)) == 4
        write_clock_file(clock, start + 20 * 60 * 10**9)  # 20 minutes later
        for i in range(2):
            put(mountpoint / f"new{i}", os.urandom(64 << 10))
            os.unlink(mountpoint / f"new{i}")
        deadline = time.monotonic() + 10
        while len(data_files(vault)) > 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        kept = {r.path for r in records(vault) if r.op == ver.OP_UNLINK and r.available}
        assert kept == {"/old3", "/new0", "/new1"}  # oldest first, down to <= 200 KiB
        write_clock_file(clock, start + 2 * 86400 * 10**9)  # past the age limit
        put(mountpoint / "x", os.urandom(64 << 10))
        os.unlink(mountpoint / "x")
        deadline = time.monotonic() + 10
        while len(data_files(vault)) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert {r.path for r in records(vault) if r.available} == {"/x"}
    finally:
        from tests.conftest import force_unmount

        force_unmount(mountpoint, mount.pid)


def test_truncating_a_sparse_file_keeps_a_sparse_copy(mounted: Mount) -> None:
    mnt, vault = mounted.path, mounted.vault
    path = mnt / "sparse"
    subprocess.run(["sh", "-c", 'printf head > "$1"; printf tail | dd of="$1" bs=1 seek=1073741824 conv=notrunc status=none',
                    "sh", str(path)], check=True)
    os.truncate(path, 2)
    found = wait_records(vault, lambda rs: any(r.op == ver.OP_TRUNCATE for r in rs))
    (rec,) = [r for r in found if r.op == ver.OP_TRUNCATE]
    assert rec.size == (1 << 30) + 4
    kept = vault / ver.AREA / rec.data
    assert os.stat(kept).st_blocks * 512 < 1 << 20  # holes stayed holes
    fd = os.open(kept, os.O_RDONLY)
    try:
        header = read_file_header(fd)
        of = OpenFile(fd, header, rec.dek_for(header))
        assert bytes(of.read(0, 4)) == b"head" and bytes(of.read(1 << 30, 4)) == b"tail"
        assert bytes(of.read(1 << 20, 16)) == bytes(16)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"he"


def test_limits_parse_and_refuse() -> None:
    assert ver.parse_limits("off") is None
    assert ver.parse_limits("2G,7d") == ver.Limits(2 << 30, 7 * 86400)
    assert ver.parse_limits("500M") == ver.Limits(500 << 20, ver.DEFAULT_LIMITS.max_age_s)
    assert ver.parse_limits("12h").max_age_s == 12 * 3600  # type: ignore[union-attr]
    assert ver.parse_limits("30m,90m") == ver.Limits(30 << 20, 90 * 60)
    with pytest.raises(ver.VersionsError):
        ver.parse_limits("12q")


def test_plan_undoes_newest_first_and_merges_versions() -> None:
    from fs.vault.restore import Selection, plan

    def rec(t: int, op: str, path: str, path2: str = "", pid: int = 7, **kw: object) -> ver.Record:
        return ver.Record(t=t, op=op, pid=pid, path=path, path2=path2, data=f"v{t}" if op in ver.CONTENT_OPS else "",
                          **{"fid": f"f{t}", **kw})  # type: ignore[arg-type]

    records = [
        rec(5, ver.OP_OVERWRITE, "/old", pid=99),          # before T: ignored
        rec(10, ver.OP_OVERWRITE, "/a"),                   # first change of /a: this version counts
        rec(11, ver.OP_OVERWRITE, "/a"),                   # later version of /a: merged away
        rec(12, ver.OP_RENAME, "/a", "/a.enc", fid="A"),   # renamed after the overwrites
        rec(13, ver.OP_CREATE, "/note", fid="N"),
        rec(14, ver.OP_APPEND, "/log", size=100),
        rec(15, ver.OP_UNLINK, "/b", pid=8),               # another process: not selected
    ]
    steps = plan(records, Selection(since_ns=10, pids=frozenset({7})))
    assert [(s.kind, s.path, s.path2) for s in steps] == [
        ("remove", "/note", ""), ("move", "/a", "/a.enc"), ("restore", "/log", ""), ("restore", "/a", ""),
    ]
    assert steps[1].fid == "A" and steps[2].record is None and steps[2].truncate_to == 100
    assert steps[3].record is not None and steps[3].record.data == "v10"


def test_own_new_files_deleted_or_rewritten_soon_keep_nothing(mounted: Mount) -> None:
    mnt, vault = mounted.path, mounted.vault
    for i in range(20):  # a build or an editor's temp files: created, rewritten, deleted by one process
        (mnt / f"tmp{i}").write_bytes(os.urandom(5000))
        (mnt / f"tmp{i}").write_bytes(b"rewritten")
        os.unlink(mnt / f"tmp{i}")
    put(mnt / "theirs", b"someone else's")  # ... but another process's file is kept
    os.unlink(mnt / "theirs")
    found = wait_records(vault, lambda rs: any(r.op == ver.OP_UNLINK for r in rs))
    assert [(r.op, r.path) for r in found if r.op in ver.CONTENT_OPS] == [(ver.OP_UNLINK, "/theirs")]
    assert len(data_files(vault)) == 1
