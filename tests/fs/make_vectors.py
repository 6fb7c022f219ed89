"""Regenerate tests/fs/data/vectors_v1.json and the frozen example vault.

Run once per format version (python -m tests.fs.make_vectors); the committed
outputs must never change afterwards: they pin the on-disk format.
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

from fs.format import layout as fmt
from fs.format import cryptocore as keys
from fs.vault.headers import DirKeys
from fs.format.names import NameCipher, backing_name

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
    with tempfile.TemporaryDirectory() as tmp:
        make_example(Path(tmp))
    print("wrote", DATA)
