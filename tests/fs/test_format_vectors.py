"""Frozen test vectors: these must not change — changing them changes the on-disk format.

Each vector is checked in both directions: our code produces the stored bytes,
and our decoders turn the stored bytes back into the plaintext.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fs.format import layout as fmt
from fs.format import cryptocore as keys
from fs.vault.content import OpenFile
from fs.vault.headers import DirKeys
from fs.format.names import NameCipher, b64encode, backing_name
from tests.conftest import Env, force_unmount
from tests.fs.make_vectors import EXAMPLE, EXAMPLE_LINKS, EXAMPLE_PASSPHRASE, manifest

V = json.loads((Path(__file__).parent / "data" / "vectors_v1.json").read_text())
h = bytes.fromhex


def test_constants_are_frozen() -> None:
    assert (fmt.FORMAT_VERSION, fmt.BLOCK_SIZE, fmt.CIPHER_BLOCK_SIZE) == (1, 16384, 16412)
    assert (fmt.FILE_HEADER_LEN, fmt.DIR_HEADER_LEN, fmt.SLOT_LEN, fmt.LONGNAME_MAX) == (328, 176, 76, 175)


def test_key_derivations() -> None:
    assert keys.root_wrap_key(h(V["owner_key"])).hex() == V["root_wrap_key"]
    k = V["kdf"]
    assert keys.passphrase_kek(k["passphrase"].encode(), h(k["salt"]), k["memory_kib"], k["iterations"], k["lanes"]).hex() == k["key"]


@pytest.mark.parametrize("vector", V["names"], ids=lambda v: v["plain"][:16])
def test_names_both_directions(vector: dict) -> None:
    names = NameCipher(h(V["dir_key"]))
    assert names.encrypt(h(vector["plain"])) == vector["encrypted"]
    assert names.decrypt(vector["encrypted"]) == h(vector["plain"])
    assert backing_name(vector["encrypted"]) == vector["backing"]


def test_long_name_is_hashed() -> None:
    long = V["names"][-1]
    assert len(long["encrypted"]) > fmt.LONGNAME_MAX and long["backing"].startswith("~")
    assert long["backing"] == "~" + b64encode(hashlib.sha256(long["encrypted"].encode()).digest())


def test_block_both_directions(tmp_path: Path) -> None:
    b = V["block"]
    dek, nonce, file_id = h(V["dek"]), h(V["nonce"]), h(V["file_id"])
    assert fmt.block_aad(file_id, b["block_no"], b["final"]).hex() == b["aad"]
    assert (nonce + AESGCM(dek).encrypt(nonce, h(b["plain"]), h(b["aad"]))).hex() == b["cipher"]
    # Our reader decrypts the stored block placed as block 3 (final) of a file.
    header = fmt.Header(fmt.KIND_FILE, file_id, (fmt.Slot(h(V["dir_id"]), nonce, bytes(48)), None, None, None))
    assert header.pack().hex() == V["header"]
    assert fmt.parse_header(h(V["header"]), fmt.KIND_FILE) == header
    path = tmp_path / "f"
    with open(path, "wb") as f:
        f.write(header.pack())
        f.truncate(fmt.block_offset(3, fmt.FILE_HEADER_LEN))
        f.seek(fmt.block_offset(3, fmt.FILE_HEADER_LEN))
        f.write(h(b["cipher"]))
    fd = os.open(path, os.O_RDONLY)
    try:
        of = OpenFile(fd, header, dek)
        assert of.size == 3 * fmt.BLOCK_SIZE + 100
        assert of.read(3 * fmt.BLOCK_SIZE, 100) == h(b["plain"])
        assert of.read(0, 10) == bytes(10)  # blocks 0..2 are holes
    finally:
        os.close(fd)


def test_slot_both_directions() -> None:
    s = V["slot"]
    dir_keys = DirKeys(h(V["dir_id"]), h(V["dir_key"]))
    packed = h(s["packed"])
    slot = fmt.Slot(packed[:16], packed[16:28], packed[28:])
    header = fmt.Header(fmt.KIND_FILE, h(V["file_id"]), (slot, None, None, None))
    assert dir_keys.unwrap(header) == h(V["dek"])
    nonce = h(V["nonce"])
    assert (h(V["dir_id"]) + nonce + AESGCM(h(V["dir_key"])).encrypt(nonce, h(V["dek"]), h(s["aad"]))).hex() == s["packed"]


def test_symlink_target() -> None:
    dir_keys = DirKeys(h(V["dir_id"]), h(V["dir_key"]))
    c = V["symlink"]
    assert dir_keys.decrypt_link(b64encode(h(V["nonce"]) + h(c["cipher"]))) == c["target"].encode()


def test_sizes() -> None:
    for plain, cipher in V["sizes"]:
        assert fmt.cipher_size(plain, fmt.FILE_HEADER_LEN) == cipher
        assert fmt.plain_size(cipher, fmt.FILE_HEADER_LEN) == plain


def test_frozen_example_vault_still_mounts(env: Env) -> None:
    """tests/fs/data/example_vault_v1 was written by format v1 and must keep opening."""
    vault = env.tmp / "example"
    shutil.copytree(EXAMPLE, vault, symlinks=True)
    env.passfile.write_text(EXAMPLE_PASSPHRASE + "\n")
    assert env.run("fsck", vault, "--passphrase-file", env.passfile).returncode == 0
    mount = env.mount(vault, env.tmp / "mnt", "--read-only")
    try:
        for rel, digest in manifest().items():
            assert hashlib.sha256((mount.path / rel).read_bytes()).hexdigest() == digest, rel
        for rel, target in EXAMPLE_LINKS.items():
            assert os.readlink(mount.path / rel) == target
        assert sorted(p.name for p in mount.path.iterdir()) == ["deep", "docs", "hello.txt", "sparse"]
    finally:
        force_unmount(mount.path, mount.pid)
    assert not subprocess.run(["grep", "-r", "hello, umbrafs", str(vault)], capture_output=True).stdout
