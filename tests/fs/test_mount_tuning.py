"""The mount's speed knobs: the trio shim pyfuse3 runs on, and `--no-xattr`."""
from __future__ import annotations

import errno
import os
import select
from pathlib import Path

import pyfuse3
import pytest
import trio

from fs.mount.serve import _QuickTrio, _RequestLock, quick_pyfuse3_trio
from tests.conftest import Env, live_mount


def test_request_lock_excludes_and_wakes_waiters() -> None:
    lock = _RequestLock()
    inside: list[str] = []
    order: list[str] = []

    async def worker(name: str) -> None:
        async with lock:
            inside.append(name)
            assert len(inside) == 1, inside
            await trio.sleep(0.01)  # hold it across a checkpoint
            order.append(name)
            inside.remove(name)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for name in "abc":
                nursery.start_soon(worker, name)

    trio.run(main)
    assert sorted(order) == ["a", "b", "c"]


def test_quick_trio_returns_at_once_when_readable_and_waits_otherwise() -> None:
    quick = _QuickTrio()
    assert quick.open_nursery is trio.open_nursery  # everything else is trio's
    assert quick.lowlevel.current_trio_token is trio.lowlevel.current_trio_token
    r, w = os.pipe()

    async def main() -> None:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def writer() -> None:
                    await trio.sleep(0.05)
                    os.write(w, b"x")

                nursery.start_soon(writer)
                await quick.lowlevel.wait_readable(r)  # not readable yet: a real wait
                assert select.select([r], [], [], 0)[0]
        # readable: no scheduler pass, up to MAX_STREAK times in a row, then a real one
        for _ in range(quick.MAX_STREAK + 3):
            await quick.lowlevel.wait_readable(r)

    try:
        trio.run(main)
    finally:
        os.close(r)
        os.close(w)


def test_pyfuse3_trio_swapped_only_inside_the_block() -> None:
    # pyfuse3 looks trio up as a module attribute; if that ever changes the shim is skipped.
    assert pyfuse3.trio is trio  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError), quick_pyfuse3_trio():
        assert isinstance(pyfuse3.trio, _QuickTrio)  # type: ignore[attr-defined]
        raise RuntimeError("the mount failed")
    assert pyfuse3.trio is trio  # type: ignore[attr-defined]


def test_no_xattr_mount(env: Env, vault: Path) -> None:
    with live_mount(env, vault, env.tmp / "mnt", "--no-xattr") as mount:
        path = mount.path / "f"
        path.write_bytes(b"data" * 1000)
        with open(path, "ab") as fh:  # writes need no security.capability round trip now
            for _ in range(100):
                fh.write(b"more")
        assert path.read_bytes() == b"data" * 1000 + b"more" * 100
        for target in (path, mount.path):
            assert os.listxattr(target) == []
            with pytest.raises(OSError) as exc:
                os.setxattr(target, "user.colour", b"blue")
            assert exc.value.errno == errno.EOPNOTSUPP
            with pytest.raises(OSError) as exc:
                os.getxattr(target, "user.colour")
            assert exc.value.errno == errno.EOPNOTSUPP
    # the same vault mounted normally has xattrs again
    with live_mount(env, vault, env.tmp / "mnt") as mount:
        os.setxattr(mount.path / "f", "user.colour", b"blue")
        assert os.getxattr(mount.path / "f", "user.colour") == b"blue"


def test_no_xattr_refused_with_share(env: Env, vault: Path) -> None:
    (env.tmp / "mnt").mkdir()
    result = env.run("mount", vault, env.tmp / "mnt", "--share", "x", "--no-xattr", "--passphrase-file", env.passfile)
    assert result.returncode == 2
    assert "--no-xattr" in result.stderr and "Traceback" not in result.stderr
