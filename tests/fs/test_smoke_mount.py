"""The mount basics, through a real kernel mount."""
from __future__ import annotations

import os

from tests.conftest import Mount


def test_write_read_and_backing_is_ciphertext(mounted: Mount) -> None:
    data = os.urandom(100_000) + b"needle-in-plaintext"
    (mounted.path / "secret-name.txt").write_bytes(data)
    assert (mounted.path / "secret-name.txt").read_bytes() == data
    backing_names = [p.name for p in mounted.vault.rglob("*")]
    assert not any("secret-name" in n for n in backing_names)
    for p in mounted.vault.rglob("*"):
        if p.is_file():
            assert b"needle-in-plaintext" not in p.read_bytes()


def test_survives_remount(mounted: Mount) -> None:
    (mounted.path / "d").mkdir()
    (mounted.path / "d" / "f").write_bytes(b"x" * 50_000)
    ino = os.stat(mounted.path / "d" / "f").st_ino
    mounted.remount()
    assert (mounted.path / "d" / "f").read_bytes() == b"x" * 50_000
    assert os.stat(mounted.path / "d" / "f").st_ino == ino
