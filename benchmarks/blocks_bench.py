#!/usr/bin/env python3
"""CPU cost of the content block loop (fs/format/blocks.py) on the mount's read/write path.

Calls ``fs.vault.content.OpenFile`` read/write directly on a backing file in tmpfs (no
kernel round trip, no mount) and the rotation engine's chunk re-encryption, and prints the
median and minimum microseconds per call (and per 16 KiB block) over several batches::

    PYTHONPATH=$PWD python benchmarks/blocks_bench.py [--dir /dev/shm] [--n 2000] [--batches 7]

Only public-ish entry points that predate blocks.py are used, so the same script measures
a tree from before and after a change to the block loop.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from fs.format import layout as fmt  # noqa: E402
from fs.vault.content import OpenFile  # noqa: E402
from fs.vault.rotate.engine import Rotation  # noqa: E402

B = fmt.BLOCK_SIZE
FILE_BLOCKS = 256  # 4 MiB: stays in the page cache of tmpfs


def timed(label: str, blocks: int, n: int, batches: int, call: Callable[[int], Any]) -> None:
    per_call = []
    for _ in range(batches):
        start = time.perf_counter()
        for i in range(n):
            call(i)
        per_call.append((time.perf_counter() - start) / n * 1e6)
    med = statistics.median(per_call)
    print(f"{label:<34} median {med:8.1f} us   min {min(per_call):8.1f} us   per block {med / blocks:6.1f} us")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"), help="where the scratch file goes")
    parser.add_argument("--n", type=int, default=2000, help="calls per batch")
    parser.add_argument("--batches", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="blocks_bench.", dir=args.dir))
    try:
        dek, file_id = os.urandom(32), os.urandom(16)
        header = fmt.Header(fmt.KIND_FILE, file_id, (None,) * fmt.FILE_SLOTS)
        fd = os.open(work / "f", os.O_RDWR | os.O_CREAT, 0o600)
        os.write(fd, header.pack())
        of = OpenFile(fd, header, dek)
        of.write(0, os.urandom(FILE_BLOCKS * B))
        n, batches = args.n, args.batches
        one, eight, small = os.urandom(B), os.urandom(8 * B), os.urandom(4096)

        def slot(i: int, width: int) -> int:
            return (i * width) % (FILE_BLOCKS - width)

        timed("read 16 KiB (1 block)", 1, n, batches, lambda i: of.read(slot(i, 1) * B, B))
        timed("read 128 KiB (8 blocks)", 8, n, batches, lambda i: of.read(slot(i, 8) * B, 8 * B))
        timed("read 4 KiB inside a block", 1, n, batches, lambda i: of.read(slot(i, 1) * B + 4096, 4096))
        timed("write 16 KiB aligned (1 block)", 1, n, batches, lambda i: of.write(slot(i, 1) * B, one))
        timed("write 128 KiB aligned (8 blocks)", 8, n, batches, lambda i: of.write(slot(i, 8) * B, eight))
        timed("write 4 KiB inside a block (RMW)", 1, n, batches, lambda i: of.write(slot(i, 1) * B + 4096, small))

        # The rotation engine's step: one CHUNK (127 blocks) decrypted under the old DEK and
        # sealed under a new one (two threads when >= 16 blocks).
        rot = Rotation.__new__(Rotation)
        rot.progress = None  # type: ignore[assignment]  # only touched when a block opens under no key
        olds, new = [AESGCM(dek)], AESGCM(os.urandom(32))
        chunk = 127
        timed("rotate re-encrypt 127 blocks", chunk, max(n // 20, 5), batches,
              lambda i: rot._reencrypt(fd, header.length, file_id, of.size, 0, chunk - 1, olds, new, False))
        timed("rotate re-encrypt 8 blocks (1 thread)", 8, max(n // 4, 5), batches,
              lambda i: rot._reencrypt(fd, header.length, file_id, of.size, 0, 7, olds, new, False))
        os.close(fd)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
