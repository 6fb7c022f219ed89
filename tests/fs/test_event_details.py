"""What the mount adds to its events, checked in the ledger of a real daemon: entropy,
overwrite and size_before of access sessions, lock / unlock-mount events, and the
simulated clock (umbrafs --clock-file) followed by both the mount and the daemon.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from wire.clock import write_clock_file
from ledger.events import Event
from tests.conftest import Env, force_unmount
from tests.daemon import conftest as daemon_fixtures
from tests.daemon.conftest import Daemon, wait_for

aenv = daemon_fixtures.aenv  # an environment with identity alice; its daemon is stopped at the end

BASE = 1_930_000_000 * 10**9  # 2031-02-28: far from today, so real time cannot pass for it
DAY = 86_400 * 10**9
SLACK = 300 * 10**9  # real seconds the test may take, in event time


def _access(events: list[Event], path: str) -> list[Event]:
    return [e for e in events if e.op == "access" and e.path == path]


def test_event_details_and_the_clock(aenv: Env) -> None:
    env = aenv
    clock = env.tmp / "clock.json"
    write_clock_file(clock, BASE)
    env.run("--clock-file", clock, "daemon", "start", "--passphrase-file", env.passfile, check=True)
    vault = env.init(env.tmp / "vault")
    mnt = env.tmp / "mnt"
    mnt.mkdir()
    env.run("--clock-file", clock, "mount", vault, mnt, "--passphrase-file", env.passfile, "--audit", "required", check=True)
    pid = int(env.mount_record(mnt)["pid"])
    try:
        (mnt / "random.bin").write_bytes(os.urandom(300_000))
        (mnt / "text.py").write_bytes(Path(__file__).read_bytes())
        (mnt / "small.txt").write_text("hello, world\n")
        (mnt / "trunc.txt").write_text("something that will be cut\n")
        subprocess.run(["bash", "-c", f": > '{mnt / 'trunc.txt'}'"], check=True)
        fd = os.open(mnt / "small.txt", os.O_WRONLY)  # no O_TRUNC: rewrite from offset 0
        os.pwrite(fd, b"HELLO", 0)
        os.close(fd)
        assert (mnt / "small.txt").read_text() == "HELLO, world\n"
        (mnt / "saved.tmp").write_text("new version\n")
        os.rename(mnt / "saved.tmp", mnt / "text.py")  # an editor's save: replaces text.py
        os.rename(mnt / "text.py", mnt / "moved.py")     # nothing replaced
        with open(mnt / "big.bin", "wb") as f:  # a long session reports progress every 4 MiB
            for _ in range(9):
                f.write(os.urandom(1 << 20))

        # Read twice: an audited mount keeps no page cache across opens, so both reads reach it.
        assert (mnt / "random.bin").read_bytes() == (mnt / "random.bin").read_bytes()

        env.run("lock", mnt, "--reason", "test-lock", check=True)
        wrong = env.tmp / "wrong"
        wrong.write_text("wrong\n")
        assert env.run("unlock", mnt, "--passphrase-file", wrong).returncode == 10
        with pytest.raises(PermissionError):
            os.listdir(mnt)
        env.run("unlock", mnt, "--passphrase-file", env.passfile, check=True)

        # Thirty days later, in simulated time: the running mount follows the file.
        write_clock_file(clock, BASE + 30 * DAY)
        time.sleep(0.05)
        (mnt / "later.txt").write_text("a month on\n")
    finally:
        force_unmount(mnt, pid)
    daemon = Daemon(env)
    # The daemon runs niced: on a busy machine it may take a while to store everything.
    wait_for(lambda: any(e.op == "unmount" for _, e in daemon.events()), "the unmount event in the ledger", timeout=120)
    events = [e for _, e in daemon.events()]

    rnd, *rereads = _access(events, "/random.bin")
    assert rnd.bytes_written == 300_000 and rnd.detail["entropy"] > 7900
    assert [e.bytes_read for e in rereads] == [300_000, 300_000]
    assert rnd.detail["size_before"] == 0 and "overwrite" not in rnd.detail
    [txt, *_] = _access(events, "/text.py")
    assert txt.detail["entropy"] < 5500
    trunc = _access(events, "/trunc.txt")
    assert [e.detail.get("overwrite", False) for e in trunc] == [False, True]
    assert trunc[1].detail["size_before"] == len("something that will be cut\n") and trunc[1].detail["size"] == 0
    assert "entropy" not in trunc[1].detail  # nothing written
    small = _access(events, "/small.txt")
    writes = [e for e in small if e.bytes_written]
    assert writes[-1].detail["overwrite"] is True and writes[-1].detail["size_before"] == 13
    reads = [e for e in small if not e.bytes_written]
    assert reads and all("entropy" not in e.detail and "overwrite" not in e.detail for e in reads)

    over, moved = [e for e in events if e.op == "rename"]
    [created] = [e for e in events if e.op == "create" and e.path == "/text.py"]
    assert (over.path, over.path2) == ("/saved.tmp", "/text.py") and over.detail["replaced"] == created.file_id
    assert "replaced" not in moved.detail

    [big] = _access(events, "/big.bin")
    progress = [e for e in events if e.op == "progress" and e.path == "/big.bin"]
    assert [e.bytes_written >= n << 20 for e, n in zip(progress, (4, 8))] == [True, True] and len(progress) == 2
    assert all(e.detail["fh"] == big.detail["fh"] and e.opened_ns == big.opened_ns for e in progress)
    assert big.bytes_written == 9 << 20 and big.detail["entropy"] > 7950

    [lock] = [e for e in events if e.op == "lock"]
    assert lock.detail["reason"] == "test-lock" and lock.detail["by"] == "cli" and lock.path == str(mnt)
    unlocks = [e for e in events if e.op == "unlock-mount"]
    assert [e.result for e in unlocks] == ["EACCES", "ok"]
    assert unlocks[1].detail["refused"] >= 1  # the listdir above

    # Event times come from the simulated clock: the mount's and the daemon's own.
    start = next(e for e in events if e.op == "daemon-start")
    assert BASE <= start.time_ns < BASE + SLACK
    assert BASE <= rnd.time_ns < BASE + SLACK and BASE <= rnd.opened_ns <= rnd.time_ns
    assert BASE <= lock.time_ns < BASE + SLACK
    [later] = [e for e in events if e.op == "create" and e.path == "/later.txt"]
    assert BASE + 30 * DAY <= later.time_ns < BASE + 30 * DAY + SLACK
