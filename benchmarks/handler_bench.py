#!/usr/bin/env python3
"""CPU cost of umbrafs's FUSE handlers, called directly (no kernel, no mount).

A FUSE round trip through pyfuse3 costs ~25-50 us here, so a handler's own
cost matters in proportion.  This calls ``fs.mount.operations.Operations`` methods
the way pyfuse3 would, on a real vault in a scratch directory, and prints the
median and minimum microseconds per call over several batches::

    /tmp/venv/bin/python benchmarks/handler_bench.py [--dir /var/tmp] [--n 2000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import stat
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import pyfuse3  # noqa: E402
import trio  # noqa: E402

from fs.vault import config as vault_mod  # noqa: E402
from fs.mount.operations import Operations  # noqa: E402
from fs.vault.config import KdfParams  # noqa: E402

CTX = pyfuse3.RequestContext()


class Fields:
    """Stands in for pyfuse3.SetattrFields (read-only from Python)."""

    def __init__(self, **kw: bool) -> None:
        for name in ("update_atime", "update_mtime", "update_ctime", "update_mode", "update_uid", "update_gid",
                     "update_size"):
            setattr(self, name, kw.get(name, False))


async def timed(label: str, n: int, batches: int, make: Callable[[int], Awaitable[Any]],
                setup: Callable[[], Awaitable[None]] | None = None) -> None:
    per_call = []
    for b in range(batches):
        if setup is not None:
            await setup()
        start = time.perf_counter()
        for i in range(n):
            await make(b * n + i)
        per_call.append((time.perf_counter() - start) / n * 1e6)
    print(f"{label:<34} median {statistics.median(per_call):7.1f} us   min {min(per_call):7.1f} us")


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="handler_bench.", dir=args.dir))
    try:
        vault = vault_mod.create(work / "vault", b"x", KdfParams(memory_kib=8, iterations=1, lanes=1))
        ops = Operations(str(vault.path), vault.root_wrap_key)
        n, batches = args.n, args.batches
        root = pyfuse3.ROOT_INODE
        # a directory chain 6 deep, like a source tree
        parent = root
        for depth in range(6):
            parent = (await ops.mkdir(parent, f"level{depth}".encode(), 0o755, CTX)).st_ino
        deep = parent
        names = [f"file_{i:06d}.py".encode() for i in range(n * batches)]
        inos: list[int] = []

        async def create(i: int) -> None:
            info, attr = await ops.create(deep, names[i], 0o644, os.O_WRONLY, CTX)
            await ops.release(info.fh)
            inos.append(attr.st_ino)

        await timed("create+release (deep)", n, batches, create)
        await timed("lookup existing (deep)", n, batches, lambda i: ops.lookup(deep, names[i], CTX))
        await timed("lookup missing (deep)", n, batches, lambda i: ops.lookup(deep, b"nope%d" % i, CTX))
        await timed("getattr file", n, batches, lambda i: ops.getattr(inos[i], CTX))
        await timed("getattr dir", n, batches, lambda i: ops.getattr(deep, CTX))
        attr = pyfuse3.EntryAttributes()
        attr.st_atime_ns = attr.st_mtime_ns = 1_600_000_000 * 10**9
        times = Fields(update_atime=True, update_mtime=True)
        await timed("setattr utimens file", n, batches, lambda i: ops.setattr(inos[i], attr, times, None, CTX))
        attr_mode = pyfuse3.EntryAttributes()
        attr_mode.st_mode = stat.S_IFREG | 0o640
        await timed("setattr chmod file", n, batches,
                    lambda i: ops.setattr(inos[i], attr_mode, Fields(update_mode=True), None, CTX))
        await timed("getxattr security.capability", n, batches,
                    lambda i: _ignore(ops.getxattr(inos[i], b"security.capability", CTX)))

        replies: list[bytes] = []
        real_reply = pyfuse3.readdir_reply

        def fake_reply(token: Any, name: bytes, attr: Any, next_id: int) -> bool:
            replies.append(name)
            return True

        pyfuse3.readdir_reply = fake_reply  # type: ignore[assignment]
        try:
            small = (await ops.mkdir(root, b"small", 0o755, CTX)).st_ino
            for j in range(3):
                info, _ = await ops.create(small, b"f%d" % j, 0o644, os.O_WRONLY, CTX)
                await ops.release(info.fh)

            async def listdir(i: int) -> None:
                ops.inodes.get(small).keys = None  # a directory seen for the first time
                fh = await ops.opendir(small, CTX)
                await ops.readdir(fh, 0, None)
                await ops.readdir(fh, 3, None)
                await ops.releasedir(fh)

            await timed("opendir+2 readdir+releasedir (3)", n, batches, listdir)
        finally:
            pyfuse3.readdir_reply = real_reply  # type: ignore[assignment]

        dirs = [f"dir_{i:06d}".encode() for i in range(n * batches)]
        await timed("mkdir (deep)", n, batches, lambda i: ops.mkdir(deep, dirs[i], 0o755, CTX))
        await timed("rmdir (deep)", n, batches, lambda i: ops.rmdir(deep, dirs[i], CTX))
        await timed("unlink (deep)", n, batches, lambda i: ops.unlink(deep, names[i], CTX))
        ops.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _ignore(coro: Awaitable[Any]) -> None:
    try:
        await coro
    except pyfuse3.FUSEError:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where the scratch vault goes")
    parser.add_argument("--n", type=int, default=1000, help="calls per batch")
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    trio.run(run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
