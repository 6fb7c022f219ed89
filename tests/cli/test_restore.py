"""`umbrafs restore` after a ransomware-like process went through a real mount."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fs.vault import config as vault_mod
from fs.vault import versions
from tests.conftest import PASSPHRASE, Env, Mount, live_mount

# Reads every file, writes an "encrypted" (xor) version in place, as NAME.locked + delete,
# or after renaming (also one directory), then leaves a ransom note.  Prints its pid.
RANSOMWARE = r"""
import os, sys
root = sys.argv[1]
os.rename(os.path.join(root, "photos"), os.path.join(root, "photos.crypt"))
victims = []
for dirpath, dirnames, filenames in os.walk(root):
    victims += [os.path.join(dirpath, n) for n in sorted(filenames)]
for i, path in enumerate(victims):
    with open(path, "rb") as f:
        data = f.read()
    enc = (int.from_bytes(data, "big") ^ int.from_bytes(b"Z" * len(data), "big")).to_bytes(len(data), "big") + b"LOCKED"
    style = i % 4
    if style == 0:                      # in place
        with open(path, "r+b") as f:
            f.write(enc)
    elif style == 1:                    # a .locked copy, original deleted
        with open(path + ".locked", "wb") as f:
            f.write(enc)
        os.unlink(path)
    elif style == 2:                    # renamed, then rewritten (O_TRUNC)
        os.rename(path, path + ".enc")
        with open(path + ".enc", "wb") as f:
            f.write(enc)
    else:                               # temp file renamed over the original
        with open(path + ".tmp", "wb") as f:
            f.write(enc)
        os.rename(path + ".tmp", path)
with open(os.path.join(root, "README_RESTORE_FILES.txt"), "w") as f:
    f.write("pay up")
"""

SIZES = [0, 1, 100, 4095, 4096, 16383, 16384, 16385, 70000, (1 << 20) + 17, 3 << 20]


def populate(root: Path, count: int = 50) -> None:
    for i in range(count):
        sub = root / ("docs" if i % 3 == 0 else "photos" if i % 3 == 1 else "deep/er/dir")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"file{i:02d}.dat").write_bytes(os.urandom(SIZES[i % len(SIZES)]))


def snapshot(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


def attack(env: Env, mnt: Path) -> tuple[int, int]:
    """Run the ransomware; returns (its pid, a time just before it started)."""
    script = env.tmp / "ransom.py"
    script.write_text(RANSOMWARE)
    since = time.time_ns()
    proc = subprocess.Popen([sys.executable, str(script), str(mnt)])
    assert proc.wait(timeout=120) == 0
    return proc.pid, since


def restore(env: Env, target: Path, *args: str | int) -> subprocess.CompletedProcess[str]:
    return env.run("restore", target, "--passphrase-file", env.passfile, *map(str, args))


@pytest.fixture
def attacked(env: Env, mounted: Mount) -> tuple[Mount, dict[str, bytes], int, int]:
    populate(mounted.path)
    (mounted.path / "untouched-later.txt").write_bytes(b"before")
    before = snapshot(mounted.path)
    pid, since = attack(env, mounted.path)
    assert snapshot(mounted.path) != before
    return mounted, before, pid, since


def test_restore_puts_every_byte_back(env: Env, attacked: tuple[Mount, dict[str, bytes], int, int]) -> None:
    mount, before, pid, since = attacked
    mnt = mount.path
    damaged = snapshot(mnt)
    dry = restore(env, mnt, "--since", since, "--pid", pid, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    lines = [json.loads(line) for line in dry.stdout.splitlines()]
    steps, summary = lines[:-1], lines[-1]["summary"]
    assert summary["dry_run"] and summary["steps"] == len(steps) and summary["lost"] == 0
    assert {s["step"] for s in steps} == {"restore", "move", "remove"}
    assert all(s["record"]["pid"] == pid for s in steps if "record" in s)
    assert any(s["path"] == "/README_RESTORE_FILES.txt" and s["step"] == "remove" for s in steps)
    assert snapshot(mnt) == damaged  # a dry run changes nothing
    assert restore(env, mnt, "--since", since, "--pid", 1).stdout.strip() == "nothing to restore"
    # Another process's later change is not the attacker's: restore leaves it alone.
    (mnt / "mine.txt").write_bytes(b"written after the attack by someone else")
    result = restore(env, mnt, "--since", since, "--pid", pid)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restored" in result.stdout
    after = snapshot(mnt)
    assert after.pop("mine.txt") == b"written after the attack by someone else"
    assert after.keys() == before.keys()
    for name, data in before.items():
        assert after[name] == data, name
    assert not list(mnt.rglob("*.locked")) and not (mnt / "README_RESTORE_FILES.txt").exists()
    # What restore took away is kept, not destroyed: its own unlink of the note is a version now.
    records, _ = versions.read_records(mount.vault, vault_mod.unlock(mount.vault, PASSPHRASE.encode()).root_wrap_key)
    note = [r for r in records if r.op == versions.OP_UNLINK and r.path == "/README_RESTORE_FILES.txt"]  # flushed by restore
    assert len(note) == 1 and note[0].pid != pid and note[0].available and note[0].size == len(b"pay up")


def test_restore_of_an_unmounted_vault(env: Env, attacked: tuple[Mount, dict[str, bytes], int, int]) -> None:
    mount, before, pid, since = attacked
    mount.unmount()
    result = restore(env, mount.vault, "--since", since, "--pid", pid)
    assert result.returncode == 0, result.stdout + result.stderr
    with live_mount(env, mount.vault, mount.path) as again:
        assert snapshot(again.path) == before


def test_wrong_passphrase_bad_target_and_locked_mount(env: Env, mounted: Mount) -> None:
    subprocess.run(["sh", "-c", "echo precious > f"], cwd=mounted.path, check=True)  # not our own new file
    since = time.time_ns()  # after it was created: restore brings it back (created after T, it would go)
    os.unlink(mounted.path / "f")
    wrong = env.tmp / "wrong"
    wrong.write_text("not it\n")
    result = env.run("restore", mounted.path, "--since", "1h", "--passphrase-file", wrong)
    assert result.returncode == 10
    assert result.stderr.strip() == "umbrafs: wrong passphrase"
    nowhere = env.run("restore", env.tmp, "--since", "1h", "--passphrase-file", env.passfile)
    assert nowhere.returncode == 11 and len(nowhere.stderr.strip().splitlines()) == 1
    bad = env.run("restore", mounted.path, "--since", "yesterday-ish", "--passphrase-file", env.passfile)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    # A mount the detector locked: restore says so in one line, and --unlock unlocks it first.
    env.run("lock", mounted.path, "--reason", "test", check=True)
    locked = restore(env, mounted.path, "--since", since)
    assert locked.returncode == 14 and "locked" in locked.stderr and len(locked.stderr.strip().splitlines()) == 1
    unlocked = restore(env, mounted.path, "--since", since, "--unlock")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert (mounted.path / "f").read_bytes() == b"precious\n"


def test_restore_writes_nothing_through_a_symlink_planted_in_the_drive(env: Env, mounted: Mount) -> None:
    """Security review, finding 6: a directory on a restored path, replaced by a symlink to
    somewhere outside, made `restore` write the decrypted file there, in the clear."""
    mnt = mounted.path
    outside = env.tmp / "outside"
    outside.mkdir()
    since = time.time_ns()
    (mnt / "docs").mkdir()
    (mnt / "docs" / "a.txt").write_text("alice private plaintext\n")
    subprocess.run(["rm", str(mnt / "docs" / "a.txt")], check=True)
    (mnt / "docs").rmdir()
    os.symlink(outside, mnt / "docs")  # by anyone who can make names in the drive
    result = restore(env, mnt, "--since", since, "--comm", "rm")
    assert result.returncode == 17, result.stdout + result.stderr  # RESTORE_INCOMPLETE: the step was refused
    assert list(outside.iterdir()) == []
    assert os.path.islink(mnt / "docs")
