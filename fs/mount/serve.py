"""Mount lifecycle: checks, pyfuse3 init, the trio main loop, clean unmount."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import signal
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from fs.mount.control import server as control_mod
from fs.mount import tasks
from fs.mount.control.handlers import HANDLERS
from fs.format import entropy
from wire.procfs import mount_device, mounted_paths
from wire.sink import EventSink
from fs.errors import FuseUnavailable, MountpointError
from fs.vault.headers import DirKeys
from fs.vault.rotate.engine import repair
from fs.mount.operations import Operations
from fs.mount.singlefile import SharedFile, SingleFileOperations
from fs.vault.config import UnlockedVault
from fs.vault.versions import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _tame_malloc() -> None:
    """Keep 1 MiB request buffers on the heap instead of mmap/munmap per request.

    Measured (shared/MEASUREMENTS.md): fresh 1 MiB buffers per request made
    about half the runs 2x slower from page faults; fixed thresholds keep it stable.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20)
    except (OSError, AttributeError):
        log.debug("mallopt not available")


class _RequestLock:
    """pyfuse3's read lock without trio.Lock's scheduler pass and owner bookkeeping.

    Not handed over on release: the worker task that just answered a request takes
    it again at once, so one task serves while requests keep coming, and a second
    one steps in only while the first waits (fsync in a thread).
    """

    def __init__(self) -> None:
        self._held = False
        self._waiters = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        while self._held:
            await self._waiters.park()
        self._held = True

    async def __aexit__(self, *exc: object) -> None:
        self._held = False
        if self._waiters:
            self._waiters.unpark()


class _QuickTrio(types.ModuleType):
    """What pyfuse3 uses as ``trio`` while we serve: trio, with two shortcuts on the
    path each FUSE request takes before pyfuse3 reads it from /dev/fuse.

    pyfuse3 looks ``trio`` up in its module namespace at run time (that is how
    ``pyfuse3.asyncio.enable()`` swaps in asyncio); this swaps in _RequestLock and a
    ``wait_readable`` that returns at once, after one poll(2), when a request is
    already queued, instead of re-arming epoll and going round trio's run loop. One
    wait in MAX_STREAK is a real one, so the other tasks (signals, fsync threads)
    still get their turn.  Measured: a round trip through a minimal pyfuse3
    filesystem 37-46 us before, 12-18 us after (through umbrafs, benchmarks/
    fuse_profile.py --workloads roundtrip: ~53 us, 22-29 us); `tar x`, `grep -r`
    and `rm -rf` of a 10k-entry tree 1.3-2x faster.  Handlers and replies are
    unchanged.
    """

    MAX_STREAK = 16

    def __init__(self) -> None:
        super().__init__("umbrafs_pyfuse3_trio")
        self.Lock = _RequestLock
        self.lowlevel = types.ModuleType("umbrafs_pyfuse3_trio.lowlevel")
        self.lowlevel.__getattr__ = lambda name: getattr(trio.lowlevel, name)  # type: ignore[method-assign]
        self.lowlevel.wait_readable = self._wait_readable
        self._poll: Any = None
        self._poll_fd = -1
        self._streak = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)

    async def _wait_readable(self, fd: int) -> None:
        if fd != self._poll_fd:  # pyfuse3 only ever waits on its session fd
            self._poll = select.poll()
            self._poll.register(fd, select.POLLIN)
            self._poll_fd = fd
        if self._streak < self.MAX_STREAK and self._poll.poll(0):
            self._streak += 1
            return
        self._streak = 0
        await trio.lowlevel.wait_readable(fd)


@contextlib.contextmanager
def quick_pyfuse3_trio() -> Iterator[None]:
    """Run pyfuse3 on _QuickTrio inside this block (if pyfuse3 is the one we know)."""
    if getattr(pyfuse3, "trio", None) is not trio:
        log.debug("pyfuse3 without a trio attribute: plain trio")
        yield
        return
    pyfuse3.trio = _QuickTrio()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        pyfuse3.trio = trio  # type: ignore[attr-defined]


def _tune_readahead(mountpoint: Path, kib: int = 1024) -> None:
    """Let the kernel read ahead 1 MiB (FUSE's max request) instead of 128 KiB.

    Measured here: warm sequential read 0.7 -> 1.2 GB/s.  Needs root (sysfs);
    without it the default stays, which is only slower.
    """
    device = mount_device(str(mountpoint))
    if device is None:
        return
    try:
        Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(f"{kib}\n")
    except OSError as exc:
        log.debug("readahead left at default: %s", exc)


def check_mountpoint(mountpoint: Path) -> None:
    if not mountpoint.exists():
        if str(mountpoint.absolute()) in mounted_paths():
            raise MountpointError(f"{mountpoint}: a dead mount is still attached (run: fusermount3 -u {mountpoint})")
        raise MountpointError(f"{mountpoint}: mountpoint does not exist")
    if str(mountpoint.resolve()) in mounted_paths():
        raise MountpointError(f"{mountpoint}: already mounted")
    if not mountpoint.is_dir():
        raise MountpointError(f"{mountpoint}: mountpoint is not a directory")
    try:
        if any(os.scandir(mountpoint)):
            raise MountpointError(f"{mountpoint}: mountpoint is not empty")
    except PermissionError:
        raise MountpointError(f"{mountpoint}: mountpoint is not readable") from None


def check_fuse() -> None:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except FileNotFoundError:
        raise FuseUnavailable("/dev/fuse does not exist: load the fuse module (modprobe fuse) or install fuse3") from None
    except PermissionError:
        raise FuseUnavailable("/dev/fuse is not accessible to this user") from None
    except OSError as exc:
        raise FuseUnavailable(f"/dev/fuse unusable: {exc.strerror}") from None
    os.close(fd)
    if os.geteuid() != 0 and not any(
        os.access(os.path.join(d, "fusermount3"), os.X_OK) for d in os.environ.get("PATH", "/usr/bin").split(":")
    ):
        raise FuseUnavailable("fusermount3 not found: install the fuse3 package")


async def _serve(
    ops: Operations | SingleFileOperations, when_live: Callable[[], None], ctl: control_mod.MountControl | None = None,
) -> None:
    async with trio.open_nursery() as nursery:
        if ctl is not None:
            ctl.nursery = nursery
            await nursery.start(ctl.serve)

        async def after_init() -> None:
            await ops.initialized.wait()
            await trio.sleep(0.01)  # let the kernel finish applying our INIT reply
            when_live()

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async for signum in signals:
                    log.info("signal %d: unmounting", signum)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signal)
        nursery.start_soon(after_init)
        if isinstance(ops, Operations) and ops.events is not None:
            nursery.start_soon(tasks.flush_events, ops)
        if isinstance(ops, Operations) and ops.versions is not None:
            nursery.start_soon(tasks.keep_versions, ops)  # flush records, prune the versions area
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def serve(
    vault: UnlockedVault | Path,
    mountpoint: Path,
    *,
    read_only: bool = False,
    allow_other: bool = False,
    events: EventSink | None = None,
    ready: Callable[[], None] = lambda: None,
    root: tuple[str, DirKeys] | None = None,
    single_file: SharedFile | None = None,
    xattr: bool = True,
    versions: Limits | None = DEFAULT_LIMITS,
    control: control_mod.ControlSpec | None = None,
    cache_timeout: float = 1.0,
) -> None:
    """Mount *vault* on *mountpoint* and serve until unmounted or signalled.

    A share recipient passes the vault's path with *root* (a shared directory: its backing
    path and keys) or *single_file* (a shared file, always read-only) instead of the
    owner's unlocked vault.  ``xattr=False`` turns extended attributes off (see
    Operations.enable_xattr): fewer requests per write(2).  *control* opens the mount's
    control socket (fs/mount/control/server.py: lock, unlock, unmount, status).
    """
    check_fuse()
    check_mountpoint(mountpoint)
    _tame_malloc()
    vault_path = vault.path if isinstance(vault, UnlockedVault) else vault
    ops: Operations | SingleFileOperations
    if single_file is not None:
        read_only = True
        ops = SingleFileOperations(str(vault_path), *single_file, events=events)
    elif root is not None:
        ops = Operations(str(vault_path), None, read_only=read_only, events=events, root=root, timeout=cache_timeout)
    else:
        assert isinstance(vault, UnlockedVault)
        if not read_only:  # a `revoke --rotate` cut short: finish its last step before serving anything
            repair(vault.path, vault.root_wrap_key)
        ops = Operations(str(vault.path), vault.root_wrap_key, read_only=read_only, events=events, versions=versions,
                         timeout=cache_timeout)
    # Keys live on only in ops and *control* (dropped at lock), not in this frame.
    vault, root, single_file = vault_path, None, None
    ops.enable_xattr = xattr
    ctl = None
    if control is not None:
        ctl = control_mod.MountControl(ops, control, mountpoint, vault_path, events=events,
                                       source=str(getattr(events, "source", "") or ""), handlers=HANDLERS)
    entropy.prepare()
    options = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    options |= {"fsname=umbrafs", "subtype=umbrafs"}
    if read_only:
        options.add("ro")
    if allow_other:
        options.add("allow_other")
    try:
        pyfuse3.init(ops, str(mountpoint), options)
    except RuntimeError as exc:
        ops.close()
        raise MountpointError(f"{mountpoint}: mounting failed: {exc}") from None
    log.info("mounted %s on %s", vault_path, mountpoint)

    def when_live() -> None:
        _tune_readahead(mountpoint)  # after INIT: the kernel sets readahead from our INIT reply
        ready()

    try:
        with quick_pyfuse3_trio():
            trio.run(_serve, ops, when_live, ctl)
    finally:
        try:
            pyfuse3.close(unmount=True)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        ops.close()
        log.info("unmounted %s", mountpoint)
