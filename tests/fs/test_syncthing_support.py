"""Self-test of the Syncthing pair helper: two real devices on loopback keep
two directories identical through creates, atomic replaces, deletes and renames.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.fs.syncthing_support import syncthing_pair, tree_contents

pytestmark = pytest.mark.skipif(shutil.which("syncthing") is None, reason="syncthing is not installed")


def assert_same(dir_a: Path, dir_b: Path) -> None:
    a, b = tree_contents(dir_a), tree_contents(dir_b)
    assert sorted(a) == sorted(b)
    assert a == b
    assert not [n for n in a if ".syncthing." in n], a.keys()


def test_pair_keeps_dirs_identical(tmp_path: Path) -> None:
    dir_a, dir_b = tmp_path / "a", tmp_path / "b"
    (dir_a / "sub").mkdir(parents=True)
    (dir_a / "replace-me").write_bytes(b"old contents")
    (dir_a / "delete-me").write_bytes(b"doomed")
    (dir_a / "sub" / "rename-me").write_bytes(os.urandom(300_000))
    dir_b.mkdir()
    with syncthing_pair(dir_a, dir_b, tmp_path / "st") as pair:
        pair.wait_synced()
        assert_same(dir_a, dir_b)
        assert (dir_b / ".stfolder").is_dir()

        (dir_a / "new-file").write_bytes(os.urandom(70_000))
        tmp = dir_a / ".replace-me.tmp"
        tmp.write_bytes(b"new contents, longer than before")
        os.replace(tmp, dir_a / "replace-me")
        (dir_a / "delete-me").unlink()
        os.rename(dir_a / "sub" / "rename-me", dir_a / "renamed")
        pair.wait_synced()

        assert_same(dir_a, dir_b)
        assert (dir_b / "replace-me").read_bytes() == b"new contents, longer than before"
        assert not (dir_b / "delete-me").exists() and not (dir_b / "sub" / "rename-me").exists()
