"""Regenerate tests/fs/data/vectors_v1.json and the frozen example vault.

Run once per format version (python -m tests.fs.make_vectors); the committed
outputs must never change afterwards: they pin the on-disk format.  New vectors of
format v1 are added at the end of vectors() and written with --vectors-only, which
leaves the example vault alone (it is written with random keys and would change);
check that `git diff tests/fs/data/vectors_v1.json` only adds lines.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fs.format import blocks
from fs.format import layout as fmt
from fs.format import cryptocore as keys
from fs.vault.headers import DirKeys
from fs.vault.versions import seal_frame
from fs.format.names import NameCipher, backing_name
from fs.format.xattrs import XattrCipher

DATA = Path(__file__).parent / "data"
EXAMPLE = DATA / "example_vault_v1"
EXAMPLE_PASSPHRASE = "umbrafs example v1"


def vectors() -> dict:
    owner_key = bytes(range(32))
    dir_key = bytes(range(32, 64))
    dek = bytes(range(64, 96))
    dir_id = bytes(range(16))
    file_id = bytes(range(16, 32))
    nonce = bytes(range(100, 112))
    names = NameCipher(dir_key)
    plain_block = bytes((i * 7) % 256 for i in range(100))
    aad = fmt.block_aad(file_id, 3, True)
    slot_aad = fmt.FILE_MAGIC + bytes([1]) + file_id + dir_id
    return {
        "owner_key": owner_key.hex(),
        "dir_key": dir_key.hex(),
        "dek": dek.hex(),
        "dir_id": dir_id.hex(),
        "file_id": file_id.hex(),
        "nonce": nonce.hex(),
        "root_wrap_key": keys.root_wrap_key(owner_key).hex(),
        "kdf": {"passphrase": "pass", "salt": "00" * 16, "memory_kib": 1024, "iterations": 1, "lanes": 1,
                "key": keys.passphrase_kek(b"pass", bytes(16), 1024, 1, 1).hex()},
        "names": [
            {"plain": p.hex(), "encrypted": names.encrypt(p), "backing": backing_name(names.encrypt(p))}
            for p in [b"a", b"notes.txt", "r\u00e9sum\u00e9 \u2603.pdf".encode(), b"x" * 15, b"x" * 16, b"L" * 200]
        ],
        "block": {
            "block_no": 3, "final": True, "plain": plain_block.hex(), "aad": aad.hex(),
            "cipher": (nonce + AESGCM(dek).encrypt(nonce, plain_block, aad)).hex(),
        },
        "slot": {
            "aad": slot_aad.hex(),
            "packed": (dir_id + nonce + AESGCM(dir_key).encrypt(nonce, dek, slot_aad)).hex(),
        },
        "header": fmt.Header(fmt.KIND_FILE, file_id, (fmt.Slot(dir_id, nonce, bytes(48)), None, None, None)).pack().hex(),
        "symlink": {"target": "../some/where", "cipher": DirKeys(dir_id, dir_key)._link.encrypt(nonce, b"../some/where", dir_id).hex()},
        "sizes": [[p, fmt.cipher_size(p, fmt.FILE_HEADER_LEN)] for p in (0, 1, 16383, 16384, 16385, 1 << 20, 10**9)],
        # -- added after v1 shipped (same format; these only pin more of it) --
        **more_vectors(owner_key, dir_key, dek, dir_id, file_id, nonce, plain_block, aad),
    }


PREVIOUS_DEK = bytes(range(96, 128))
NONCE2 = bytes(range(112, 124))
# HKDF label constant -> (input key's name in the vectors, output length)
DERIVED = {
    "INFO_ROOT_WRAP": ("owner_key", 32), "INFO_NAMES": ("dir_key", 64), "INFO_SYMLINKS": ("dir_key", 32),
    "INFO_XATTR_NAMES": ("dek", 64), "INFO_XATTR_VALUES": ("dek", 32), "INFO_VERSIONS": ("root_wrap_key", 32),
    "INFO_RESTORE": ("root_wrap_key", 32), "INFO_ROTATE_JOURNAL": ("root_wrap_key", 32),
    "INFO_ROTATE_REQUEST": ("root_wrap_key", 32),
}


def run_plain() -> bytes:
    """Two blocks: a full non-final one and a 100-byte final one."""
    return bytes((i * 13) % 251 for i in range(fmt.BLOCK_SIZE + 100))


def more_vectors(owner_key: bytes, dir_key: bytes, dek: bytes, dir_id: bytes, file_id: bytes, nonce: bytes,
                 plain_block: bytes, aad: bytes) -> dict:
    root_wrap_key = keys.root_wrap_key(owner_key)
    inputs = {"owner_key": owner_key, "dir_key": dir_key, "dek": dek, "root_wrap_key": root_wrap_key}
    cipher = nonce + AESGCM(dek).encrypt(nonce, plain_block, aad)
    run = blocks.encrypt_blocks(AESGCM(dek), file_id, len(run_plain()), 0, run_plain(), nonces=nonce + NONCE2)
    kek = keys.passphrase_kek(b"pass", bytes(16), 1024, 1, 1)
    xattrs = XattrCipher(dek, file_id)
    records = [{"t": 1_700_000_000_000_000_000, "op": "create", "pid": 42, "path": "/a.txt", "fid": file_id.hex()}]
    self_slot = keys.self_slot(dek, file_id, PREVIOUS_DEK, nonce)
    # A file mid-rotation: its directory's slot for the new DEK, and the self slot.
    mid_rotation = fmt.Header(fmt.KIND_FILE, file_id,
                              (keys.wrap_slot(dir_key, dir_id, fmt.KIND_FILE, file_id, dek, NONCE2), self_slot, None, None))

    def failure(what: str, data: bytes, error: str, *, file_id_: bytes = file_id, size: int = 3 * fmt.BLOCK_SIZE + 100,
                first: int = 3, key: bytes = dek) -> dict:
        return {"what": what, "cipher": data.hex(), "file_id": file_id_.hex(), "size": size, "first": first,
                "key": key.hex(), "error": error}

    def flip(data: bytes, at: int) -> bytes:
        return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]

    bad = "block 3 failed authentication"
    return {
        "derived_keys": {name: {"from": src, "length": n, "key": keys.hkdf(inputs[src], getattr(keys, name), n).hex()}
                         for name, (src, n) in DERIVED.items()},
        "owner_key_wrap": {"kek": kek.hex(), "wrapped": keys.wrap_owner_key(kek, owner_key, nonce).hex()},
        "block_run": {
            "size": len(run_plain()), "nonces": (nonce + NONCE2).hex(),
            "plain_sha256": hashlib.sha256(run_plain()).hexdigest(), "cipher_sha256": hashlib.sha256(run).hexdigest(),
            "tags": [run[fmt.CIPHER_BLOCK_SIZE - fmt.TAG_LEN : fmt.CIPHER_BLOCK_SIZE].hex(), run[-fmt.TAG_LEN :].hex()],
        },
        # Each must fail with IntegrityError(error) and never return bytes (the block vector,
        # read as block `first` of a file of plaintext `size`, unless said otherwise).
        "block_failures": [
            failure("flipped ciphertext byte", flip(cipher, fmt.NONCE_LEN + 5), bad),
            failure("flipped tag byte", flip(cipher, len(cipher) - 1), bad),
            failure("flipped nonce byte", flip(cipher, 0), bad),
            failure("wrong block number (moved to block 2)", cipher, "block 2 failed authentication",
                    size=2 * fmt.BLOCK_SIZE + 100, first=2),
            failure("wrong file id (copied from another file)", cipher, bad, file_id_=flip(file_id, 15)),
            failure("wrong key", cipher, bad, key=PREVIOUS_DEK),
            failure("truncated block", cipher[:-1], "block 3 truncated"),
            failure("final block read as a non-final one (size says there is more)", cipher, "block 3 truncated",
                    size=4 * fmt.BLOCK_SIZE + 100),
            failure("final flag mismatch: file cut at a block boundary", run[: fmt.CIPHER_BLOCK_SIZE],
                    "block 0 failed authentication", size=fmt.BLOCK_SIZE, first=0),
            failure("zeroed final block (a final block is never a hole)", bytes(len(cipher)), bad),
        ],
        "xattr": {
            "key_of": "dek", "obj_id": file_id.hex(), "name": b"user.comment".hex(), "value": b"hello xattr".hex(),
            "backing_name": xattrs.backing_name(b"user.comment"),
            "sealed": xattrs.seal(b"user.comment", b"hello xattr", nonce).hex(),
        },
        "versions_frame": {
            "records": records,
            "frame": seal_frame(AESGCM(keys.versions_key(root_wrap_key)), records, nonce).hex(),
        },
        "restore_proof": {"source": "vault-0123456789abcdef", "pid": 4242,
                          "proof": keys.restore_proof(root_wrap_key, "vault-0123456789abcdef", 4242)},
        "self_slot": {"previous_dek": PREVIOUS_DEK.hex(), "packed": fmt.pack_slot(self_slot).hex(),
                      "header": mid_rotation.pack().hex()},
    }


EXAMPLE_FILES = {
    "hello.txt": b"hello, umbrafs v1\n",
    "docs/one-block.bin": bytes(i % 251 for i in range(16384)),
    "docs/three-blocks.bin": bytes(i % 241 for i in range(40000)),
    "docs/empty": b"",
    "docs/" + "long-name-" + "n" * 180: b"long name\n",
    "deep/a/b/c/d.txt": b"deep\n",
}
EXAMPLE_LINKS = {"docs/link-to-hello": "../hello.txt"}


def make_example(tmp: Path) -> None:
    env = {**os.environ, "UMBRAFS_PASSPHRASE": EXAMPLE_PASSPHRASE}
    cli = [sys.executable, "-m", "cli", "--home", str(tmp / "home")]
    vault, mnt = tmp / "vault", tmp / "mnt"
    mnt.mkdir()
    subprocess.run([*cli, "init", str(vault), "--kdf-memory-kib", "1024", "--kdf-iterations", "1", "--kdf-lanes", "1"], env=env, check=True)
    subprocess.run([*cli, "mount", str(vault), str(mnt)], env=env, check=True)
    try:
        for rel, data in EXAMPLE_FILES.items():
            (mnt / rel).parent.mkdir(parents=True, exist_ok=True)
            (mnt / rel).write_bytes(data)
        (mnt / "sparse").open("wb").truncate(100_000)
        for rel, target in EXAMPLE_LINKS.items():
            os.symlink(target, mnt / rel)
    finally:
        subprocess.run([*cli, "unmount", str(mnt)], env=env, check=True)
    shutil.rmtree(EXAMPLE, ignore_errors=True)
    shutil.copytree(vault, EXAMPLE, symlinks=True)


def manifest() -> dict[str, str]:
    files = {rel: hashlib.sha256(data).hexdigest() for rel, data in EXAMPLE_FILES.items()}
    files["sparse"] = hashlib.sha256(bytes(100_000)).hexdigest()
    return files


if __name__ == "__main__":
    DATA.mkdir(exist_ok=True)
    (DATA / "vectors_v1.json").write_text(json.dumps(vectors(), indent=1) + "\n")
    if "--vectors-only" not in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as tmp:
            make_example(Path(tmp))
    print("wrote", DATA)
