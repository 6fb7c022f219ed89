"""Driving `umbrafs restore`: find the vault and its live mount, make the mount serve and flush
its records, tag the restore's own changes for the detector, run the steps through a mount.

The byte work is in fs/vault/restore.py (plan, MountExecutor); this is the part that talks to
the owner's live mount over its control socket (wire/mountsock.py).  Nothing here prints: what
the user should be told comes back as warnings.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from fs.errors import MountpointError, NotAVault
from fs.format.cryptocore import restore_proof
from fs.vault import restore as restore_mod
from fs.vault.config import UnlockedVault
from wire.mountsock import MountControlError, MountInfo, list_mounts, request
from wire.procfs import mounted_paths

RECORD_BUFFER_S = 1.5  # a mount without versions-flush writes its records within a second


def find(home: Path, target: Path) -> tuple[Path, MountInfo | None]:
    """(vault path, live owner mount of it or None) for a vault directory or a mountpoint."""
    target = target.absolute()
    mounts = list_mounts(home)
    info = next((m for m in mounts if m.mountpoint == str(target)), None)  # first: a locked mount answers EACCES
    if info is not None:
        if info.share_id:
            raise MountpointError(f"{target}: a share mount; only the owner's versions can be restored")
        return Path(info.vault), info
    if str(target) not in mounted_paths() and os.path.isfile(target / "vault.json"):
        return target, next((m for m in mounts if os.path.abspath(m.vault) == str(target) and not m.share_id), None)
    if str(target) in mounted_paths():
        raise MountpointError(f"{target}: mounted, but not by this state directory (use --home)")
    raise NotAVault(f"{target}: neither a vault nor an umbrafs mountpoint")


def prepare(info: MountInfo, secret: bytes, unlock: bool) -> list[str]:
    """Make sure the mount serves (unlock it if asked) and has written its buffered records;
    the warnings for the user."""
    try:
        status = request(info, {"type": "status"}, 2.0)
        if status.get("locked"):
            if not unlock:
                raise MountpointError(f"{info.mountpoint}: the mount is locked ({status.get('lock_reason') or 'no reason'}); "
                                      "stop the offending process, then add --unlock")
            reply = request(info, {"type": "unlock", "passphrase": secret.decode("utf-8")}, 60.0)
            if reply.get("type") != "unlocked":
                raise MountpointError(f"{info.mountpoint}: unlock failed: {reply.get('message', reply.get('code'))}")
        reply = request(info, {"type": "versions-flush"}, 5.0)
        if reply.get("type") != "versions-flushed":
            time.sleep(RECORD_BUFFER_S)
        elif not reply.get("enabled"):
            return [f"{info.mountpoint} keeps no versions (mounted with --keep-versions off)"]
    except MountControlError:
        time.sleep(RECORD_BUFFER_S)
    return []


def _tag(info: MountInfo | None, root_wrap_key: bytes, begin: bool) -> list[str]:
    """Have the mount tag this process's events as a restore, so the detector does not take the
    undoing for another attack (fs/mount/control/restore.py); the proof needs the vault key."""
    if info is None or not info.source:
        return []
    message: dict[str, str] = {"type": "restore-end"}
    if begin:
        message = {"type": "restore-begin", "proof": restore_proof(root_wrap_key, info.source, os.getpid())}
    try:
        reply = request(info, message, 5.0)
    except MountControlError as exc:
        reply = {"message": str(exc)}
    if begin and reply.get("type") != "restore-begun":
        return [f"the restore's own changes are not marked for the detector ({reply.get('message', reply.get('type'))})"]
    return []


def run(home: Path, mountpoint: Path, unlocked: UnlockedVault, steps: list[restore_mod.Step],
        progress: Callable[[restore_mod.Outcome], None], warn: Callable[[str], None]) -> list[restore_mod.Outcome]:
    """Carry *steps* out through the live mount at *mountpoint*, tagged as a restore, and have
    the mount write the restore's own records."""
    live = next((m for m in list_mounts(home) if m.mountpoint == str(mountpoint)), None)
    for text in _tag(live, unlocked.root_wrap_key, True):
        warn(text)
    try:
        return restore_mod.MountExecutor(mountpoint, unlocked).run(steps, progress)
    finally:
        _tag(live, unlocked.root_wrap_key, False)
        if live is not None:
            with contextlib.suppress(MountControlError):  # the restore's own records, on disk now
                request(live, {"type": "versions-flush"}, 5.0)
