"""Two devices, one vault kept in sync by real Syncthing (issue 18, item 4).

Device A and device B each mount their own copy of the vault; two Syncthing
instances on loopback keep the two backing directories in sync.  B edits files
while A's mount stays live (and the other way round): every file must read its
own content on the other side, with no remount.  Syncthing applies a remote
change by unlinking the old file and renaming a temp file into place, so the
freed inode numbers are handed on at once: the situation that made the mount
serve one file's content for another.
"""
from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import Env, live_mount, new_env
from tests.fs.syncthing_support import syncthing_pair

pytestmark = pytest.mark.skipif(shutil.which("syncthing") is None, reason="syncthing is not installed (make deps)")

ENTRY_TIMEOUT = 1.0  # the mounts' default --cache-timeout
# Per-device versions areas would sync into each other (docs/versions.md): not what this test is about.
MOUNT_ARGS = ("--keep-versions", "off")


def _paths() -> list[str]:
    return [f"d{d}/e{e}/f{f}.bin" for d in range(5) for e in range(2) for f in range(20)]


def _content(path: str, version: int, rng: random.Random) -> bytes:
    # Sizes across the block boundary; the header names the file and its version.
    return f"{path} version {version}\n".encode() + rng.randbytes(rng.choice([0, 100, 16383, 16384, 40000]))


def _wrong(mnt: Path, expected: dict[str, bytes]) -> list[str]:
    return [p for p in expected if (mnt / p).read_bytes() != expected[p]]


def test_two_devices_over_syncthing_read_their_own_files(tmp_path: Path) -> None:
    (tmp_path / "devA").mkdir()
    env_a: Env = new_env(tmp_path / "devA")
    env_b = Env(tmp_path / "devB", tmp_path / "devB" / "home", env_a.passfile)
    vault_a, vault_b = tmp_path / "devA" / "vault", tmp_path / "devB" / "vault"
    env_a.init(vault_a)
    vault_b.mkdir(parents=True)
    rng = random.Random(18)
    with syncthing_pair(vault_a, vault_b, tmp_path / "syncthing") as pair:
        pair.wait_synced()
        with live_mount(env_a, vault_a, tmp_path / "devA" / "mnt", *MOUNT_ARGS) as a, \
                live_mount(env_b, vault_b, tmp_path / "devB" / "mnt", *MOUNT_ARGS) as b:
            expected: dict[str, bytes] = {}
            for path in _paths():
                (b.path / path).parent.mkdir(parents=True, exist_ok=True)
                expected[path] = _content(path, 0, rng)
                (b.path / path).write_bytes(expected[path])
            pair.wait_synced()
            time.sleep(ENTRY_TIMEOUT + 0.2)
            assert _wrong(a.path, expected) == []  # A knows every file and inode now
            figures = []
            for round_no in range(1, 4):
                # B edits about half the files: rewrites in place, appends, and saves by rename.
                edited = rng.sample(sorted(expected), len(expected) // 2)
                for i, path in enumerate(edited):
                    if i % 3 == 0:
                        expected[path] = _content(path, round_no, rng)
                        (b.path / path).write_bytes(expected[path])
                    elif i % 3 == 1:
                        extra = f"appended on B in round {round_no}\n".encode()
                        with open(b.path / path, "ab") as f:
                            f.write(extra)
                        expected[path] += extra
                    else:
                        expected[path] = _content(path, round_no, rng)
                        tmp = b.path / (path + ".tmp")
                        tmp.write_bytes(expected[path])
                        tmp.rename(b.path / path)
                pair.wait_synced()
                time.sleep(ENTRY_TIMEOUT + 0.2)
                wrong_on_a = _wrong(a.path, expected)
                # A appends to files B did not touch this round; B must see A's appends in its own files.
                untouched = sorted(set(expected) - set(edited))[:40]
                for path in untouched:
                    extra = f"appended on A in round {round_no}\n".encode()
                    with open(a.path / path, "ab") as f:
                        f.write(extra)
                    expected[path] += extra
                pair.wait_synced()
                time.sleep(ENTRY_TIMEOUT + 0.2)
                wrong_on_b = _wrong(b.path, expected)
                figures.append((len(edited), len(wrong_on_a), len(untouched), len(wrong_on_b)))
                assert wrong_on_a == [] and wrong_on_b == [], (
                    f"round {round_no}: A read {len(wrong_on_a)} of {len(edited)} edited files wrong "
                    f"(e.g. {wrong_on_a[:3]}), B read {len(wrong_on_b)} wrong (e.g. {wrong_on_b[:3]})"
                )
            print("rounds (edited on B, wrong on A, appended on A, wrong on B):", figures)
            assert "integrity" not in a.log() + b.log()
        # And after a remount everything is where it belongs on both devices.
        with live_mount(env_a, vault_a, tmp_path / "devA" / "mnt", *MOUNT_ARGS) as a:
            assert _wrong(a.path, expected) == []
