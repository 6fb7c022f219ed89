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

from fs.errors import IntegrityError
from fs.format import blocks
from fs.format import layout as fmt
from fs.format import cryptocore as keys
from fs.mount.control.restore import proof as restore_proof
from fs.vault.content import OpenFile, previous_dek
from fs.vault.headers import DirKeys
from fs.vault.versions import open_frames, seal_frame
from fs.format.names import NameCipher, b64encode, backing_name
from fs.format.xattrs import XattrCipher
from tests.conftest import Env, force_unmount
from tests.fs.make_vectors import DERIVED, EXAMPLE, EXAMPLE_LINKS, EXAMPLE_PASSPHRASE, PREVIOUS_DEK, manifest, run_plain, vectors

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


def test_block_both_directions() -> None:
    b = V["block"]
    dek, nonce, file_id = h(V["dek"]), h(V["nonce"]), h(V["file_id"])
    assert fmt.block_aad(file_id, b["block_no"], b["final"]).hex() == b["aad"]
    assert (nonce + AESGCM(dek).encrypt(nonce, h(b["plain"]), h(b["aad"]))).hex() == b["cipher"]
    header = fmt.Header(fmt.KIND_FILE, file_id, (fmt.Slot(h(V["dir_id"]), nonce, bytes(48)), None, None, None))
    assert header.pack().hex() == V["header"]
    assert fmt.parse_header(h(V["header"]), fmt.KIND_FILE) == header
    # Our block loop seals the same bytes as block 3 (final) of a 3 * 16 KiB + 100 byte file...
    size = 3 * fmt.BLOCK_SIZE + 100
    assert blocks.encrypt_blocks(AESGCM(dek), file_id, size, 3, h(b["plain"]), nonces=nonce).hex() == b["cipher"]
    # ...and opens the stored block placed there, blocks 0..2 being holes (all zero).
    run = blocks.ZERO_CIPHER_BLOCK * 3 + h(b["cipher"])
    assert fmt.plain_size(fmt.FILE_HEADER_LEN + len(run), fmt.FILE_HEADER_LEN) == size
    plain = blocks.decrypt_blocks([AESGCM(dek)], file_id, size, 0, 3, run)
    assert plain[3 * fmt.BLOCK_SIZE :] == h(b["plain"])
    assert plain[:10] == bytes(10) and not any(plain[: 3 * fmt.BLOCK_SIZE])  # blocks 0..2 are holes
    status = bytearray(4)
    blocks.decrypt_blocks([AESGCM(PREVIOUS_DEK), AESGCM(dek)], file_id, size, 0, 3, run, status)
    assert list(status) == [blocks.HOLE] * 3 + [2]  # opened under the second key


def test_block_read_through_open_file(tmp_path: Path) -> None:
    """content.py's fd I/O around the block loop: the stored block read from a backing file."""
    b = V["block"]
    header = fmt.parse_header(h(V["header"]), fmt.KIND_FILE)
    path = tmp_path / "f"
    with open(path, "wb") as f:
        f.write(header.pack())
        f.truncate(fmt.block_offset(3, fmt.FILE_HEADER_LEN))
        f.seek(fmt.block_offset(3, fmt.FILE_HEADER_LEN))
        f.write(h(b["cipher"]))
    fd = os.open(path, os.O_RDONLY)
    try:
        of = OpenFile(fd, header, h(V["dek"]))
        assert of.size == 3 * fmt.BLOCK_SIZE + 100
        assert of.read(3 * fmt.BLOCK_SIZE, 100) == h(b["plain"])
        assert of.read(0, 10) == bytes(10)  # blocks 0..2 are holes
        with open(path, "r+b") as f:  # one flipped ciphertext byte: the class content.py raises
            f.seek(fmt.block_offset(3, fmt.FILE_HEADER_LEN) + 20)
            f.write(bytes([h(b["cipher"])[20] ^ 1]))
        with pytest.raises(IntegrityError, match="block 3 failed authentication"):
            of.read(3 * fmt.BLOCK_SIZE, 100)
    finally:
        os.close(fd)


def test_block_run_both_directions() -> None:
    r = V["block_run"]
    dek, file_id, plain = h(V["dek"]), h(V["file_id"]), run_plain()
    assert hashlib.sha256(plain).hexdigest() == r["plain_sha256"] and len(plain) == r["size"]
    cipher = blocks.encrypt_blocks(AESGCM(dek), file_id, r["size"], 0, plain, nonces=h(r["nonces"]))
    assert hashlib.sha256(cipher).hexdigest() == r["cipher_sha256"]
    cb, tag = fmt.CIPHER_BLOCK_SIZE, fmt.TAG_LEN
    assert [cipher[cb - tag : cb].hex(), cipher[-tag:].hex()] == r["tags"]
    assert len(cipher) == fmt.cipher_size(r["size"], 0)
    assert blocks.decrypt_blocks([AESGCM(dek)], file_id, r["size"], 0, 1, cipher) == plain
    assert blocks.decrypt_blocks([AESGCM(dek)], file_id, r["size"], 1, 1, cipher[cb:]) == plain[fmt.BLOCK_SIZE :]


@pytest.mark.parametrize("vector", V["block_failures"], ids=lambda v: v["what"])
def test_block_failures(vector: dict) -> None:
    """Damaged, moved or cut blocks: IntegrityError naming the block, never bytes.  The
    exception is the one the mount turns into EIO (fs/mount/operations.py _fuse)."""
    aead, file_id, size, first = AESGCM(h(vector["key"])), h(vector["file_id"]), vector["size"], vector["first"]
    cipher = h(vector["cipher"])
    with pytest.raises(IntegrityError, match=f"^{vector['error']}$"):
        blocks.decrypt_blocks([aead], file_id, size, first, first, cipher)
    # Lenient (rotation): no exception, the block is reported and reads as zeros.
    status = bytearray(1)
    out = blocks.decrypt_blocks([aead], file_id, size, first, first, cipher, status)
    want = blocks.TRUNCATED if vector["error"].endswith("truncated") else blocks.UNOPENED
    assert status[0] == want and not any(out)


def test_block_constants() -> None:
    assert blocks.ZERO_CIPHER_BLOCK == bytes(16412) and blocks.ZERO_NONCE == bytes(12)
    assert fmt.BLOCK_OVERHEAD == 28 and (blocks.HOLE, blocks.TRUNCATED, blocks.UNOPENED) == (0, 0xFE, 0xFF)
    # A non-final all-zero block is a hole (the final one is not: see block_failures).
    size = 2 * fmt.BLOCK_SIZE
    assert blocks.decrypt_blocks([AESGCM(h(V["dek"]))], h(V["file_id"]), size, 0, 0, blocks.ZERO_CIPHER_BLOCK) == bytes(fmt.BLOCK_SIZE)


def test_slot_both_directions() -> None:
    s = V["slot"]
    dir_keys = DirKeys(h(V["dir_id"]), h(V["dir_key"]))
    packed = h(s["packed"])
    slot = fmt.Slot(packed[:16], packed[16:28], packed[28:])
    header = fmt.Header(fmt.KIND_FILE, h(V["file_id"]), (slot, None, None, None))
    assert dir_keys.unwrap(header) == h(V["dek"])
    nonce = h(V["nonce"])
    assert (h(V["dir_id"]) + nonce + AESGCM(h(V["dir_key"])).encrypt(nonce, h(V["dek"]), h(s["aad"]))).hex() == s["packed"]


def test_self_slot_both_directions() -> None:
    """The rotation self slot: the previous DEK wrapped under the new one, parent id = own id."""
    v = V["self_slot"]
    dek, file_id, nonce = h(V["dek"]), h(V["file_id"]), h(V["nonce"])
    slot = keys.self_slot(dek, file_id, h(v["previous_dek"]), nonce)
    assert fmt.pack_slot(slot).hex() == v["packed"]
    assert slot.parent_id == file_id and h(v["previous_dek"]) == PREVIOUS_DEK
    header = fmt.parse_header(h(v["header"]), fmt.KIND_FILE)
    assert header.slots[1] == slot
    assert previous_dek(header, dek) == PREVIOUS_DEK
    assert DirKeys(h(V["dir_id"]), h(V["dir_key"])).unwrap(header) == dek
    assert previous_dek(header.with_slot(1, None), dek) is None
    with pytest.raises(IntegrityError):
        previous_dek(header, PREVIOUS_DEK)  # the self slot opens only under the new DEK


def test_owner_key_wrap_both_directions() -> None:
    v = V["owner_key_wrap"]
    assert v["kek"] == V["kdf"]["key"]
    assert keys.wrap_owner_key(h(v["kek"]), h(V["owner_key"]), h(V["nonce"])).hex() == v["wrapped"]
    assert keys.unwrap_owner_key(h(v["kek"]), h(v["wrapped"])) == h(V["owner_key"])


def test_xattr_both_directions() -> None:
    v = V["xattr"]
    cipher = XattrCipher(h(V[v["key_of"]]), h(v["obj_id"]))
    name, value = h(v["name"]), h(v["value"])
    assert cipher.backing_name(name) == v["backing_name"]
    assert cipher.plain_name(v["backing_name"]) == name
    assert cipher.seal(name, value, h(V["nonce"])).hex() == v["sealed"]
    assert cipher.open(name, h(v["sealed"])) == value
    sealed = h(v["sealed"])
    for bad in (sealed[:-1] + bytes([sealed[-1] ^ 1]), sealed[:20]):
        with pytest.raises(IntegrityError):
            cipher.open(name, bad)
    with pytest.raises(IntegrityError):
        cipher.open(b"user.other", sealed)  # the name is in the AAD: a value cannot move
    with pytest.raises(IntegrityError):
        XattrCipher(h(V[v["key_of"]]), h(V["dir_id"])).open(name, sealed)  # nor move to another object


def test_versions_frame_both_directions() -> None:
    v = V["versions_frame"]
    aead = AESGCM(keys.versions_key(h(V["root_wrap_key"])))
    frame = h(v["frame"])
    assert seal_frame(aead, v["records"], h(V["nonce"])) == frame
    assert open_frames(aead, frame) == (v["records"], 0)
    flipped = frame[:-1] + bytes([frame[-1] ^ 1])
    assert open_frames(aead, flipped) == ([], 1)  # a damaged frame is counted, its records dropped
    assert open_frames(aead, frame[:-1]) == ([], 0)  # a torn last frame (crash mid-write) is not damage


def test_restore_proof() -> None:
    v = V["restore_proof"]
    assert restore_proof(h(V["root_wrap_key"]), v["source"], v["pid"]) == v["proof"]
    assert keys.restore_proof(h(V["root_wrap_key"]), v["source"], v["pid"]) == v["proof"]
    assert restore_proof(h(V["root_wrap_key"]), v["source"], v["pid"] + 1) != v["proof"]


# gocryptfs hkdf_test.go style: the literal AND the constant, so that neither can drift.
LABELS = [
    ("INFO_ROOT_WRAP", b"umbrafs v1 root wrap", keys.root_wrap_key),
    ("INFO_NAMES", b"umbrafs v1 names", keys.names_key),
    ("INFO_SYMLINKS", b"umbrafs v1 symlinks", keys.symlinks_key),
    ("INFO_XATTR_NAMES", b"umbrafs v1 xattr names", keys.xattr_names_key),
    ("INFO_XATTR_VALUES", b"umbrafs v1 xattr values", keys.xattr_values_key),
    ("INFO_VERSIONS", b"umbrafs v1 versions", keys.versions_key),
    ("INFO_RESTORE", b"umbrafs v1 restore", keys.restore_key),
    ("INFO_ROTATE_JOURNAL", b"umbrafs v1 rotation journal", keys.journal_key),
    ("INFO_ROTATE_REQUEST", b"umbrafs v1 rotate request", lambda k: keys.hkdf(k, keys.INFO_ROTATE_REQUEST)),
]
AAD_LABELS = [
    ("OWNER_KEY_AAD", b"umbrafs v1 owner key"),
    ("FRAME_AAD", b"umbrafs v1 versions"),
    ("RESTORE_PROOF_PREFIX", "restore-begin|"),
    ("ROTATE_PROOF_PREFIX", "rotate|"),
]


@pytest.mark.parametrize(("name", "literal", "derive"), LABELS, ids=[n for n, _, _ in LABELS])
def test_hkdf_labels(name: str, literal: bytes, derive: object) -> None:
    v = V["derived_keys"][name]
    assert getattr(keys, name) == literal
    source = h(V[v["from"]])
    assert keys.hkdf(source, literal, v["length"]).hex() == v["key"]
    assert keys.hkdf(source, getattr(keys, name), v["length"]).hex() == v["key"]
    assert derive(source).hex() == v["key"]  # type: ignore[operator]
    assert DERIVED[name] == (v["from"], v["length"])


@pytest.mark.parametrize(("name", "literal"), AAD_LABELS, ids=[n for n, _ in AAD_LABELS])
def test_aad_labels(name: str, literal: bytes | str) -> None:
    assert getattr(keys, name) == literal


def test_every_label_is_vectored() -> None:
    """A label added to cryptocore.py without a vector here fails; so does one defined elsewhere
    (versions.py and control/restore.py re-export cryptocore's)."""
    found = {n for n in dir(keys) if n.startswith("INFO_") or n.endswith("_AAD") or n.endswith("_PREFIX")}
    assert found == {n for n, _, _ in LABELS} | {n for n, _ in AAD_LABELS}
    from fs.mount.control import restore
    from fs.vault import versions
    assert (versions.INFO_VERSIONS, versions.FRAME_AAD, restore.INFO_RESTORE) == (keys.INFO_VERSIONS, keys.FRAME_AAD, keys.INFO_RESTORE)
    assert V["derived_keys"]["INFO_ROOT_WRAP"]["key"] == V["root_wrap_key"]  # the first vector, again


def test_vectors_file_matches_generator() -> None:
    """make_vectors.py (our code, fixed keys and nonces) still writes exactly the stored file."""
    assert json.loads(json.dumps(vectors())) == V


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
