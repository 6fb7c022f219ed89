"""Driving a rotation (`revoke --rotate`, `revoke --resume`): in the owner's live mount, or offline.

While the vault is mounted by its owner the rotation must run inside that mount (it caches keys
and open files): the driver sends the mount a "rotate" control request (fs/mount/control/rotate.py)
and polls its progress.  Without a mount it runs the same engine on the backing directory itself.
Either way the caller gets the final progress as a dict, or a RotationError worded for a user
(the journal stays in the vault, so `umbrafs revoke --resume` finishes the job).

The caller shows progress (an object with ``update(progress dict)`` and ``close()``) and
records the key event (``on_event(op, path, detail)``); nothing here prints.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fs.format.cryptocore import rotate_proof
from fs.vault import config as vault_mod
from fs.vault.rotate import engine
from fs.vault.rotate.engine import RotationError, TargetSpec
from wire.mountsock import MountControlError, MountInfo, list_mounts, request

POLL = 0.2

KeyEvent = Callable[[str, str, dict[str, str | int | bool]], None]


class ProgressView(Protocol):
    def update(self, progress: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class _Silent:
    def update(self, progress: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _no_event(op: str, path: str, detail: dict[str, str | int | bool]) -> None:
    pass


def owner_mount(home: Path, vault: Path) -> MountInfo | None:
    """The live owner mount of *vault* in the state directory *home*, or None."""
    real = os.path.realpath(vault)
    for info in list_mounts(home):
        if os.path.realpath(info.vault) == real and not info.share_id:
            return info
    return None


def rotate(
    home: Path, vault: Path, target: TargetSpec | None, unlocked: vault_mod.UnlockedVault | None, *,
    passphrase: Callable[[], bytes] | None = None, reason: str = "", durable: bool = False, path: str = "",
    progress: ProgressView | None = None, on_event: KeyEvent = _no_event,
    on_detach: Callable[[str], None] = lambda mountpoint: None,
) -> dict[str, Any]:
    """Rotate *target* (None: finish a pending rotation) in the owner's mount or offline; the final
    progress as a dict.  RotationError if it did not finish (the journal stays for a resume).

    *unlocked* is the vault (else *passphrase* is asked for it): offline it does the work, in the
    mount it makes the proof the mount asks for.  A Ctrl-C while the
    mount rotates leaves the rotation running there: *on_detach(mountpoint)* says so, then the
    KeyboardInterrupt goes on."""
    view = progress or _Silent()
    info = owner_mount(home, vault)
    if info is not None:
        if info.read_only:
            raise RotationError(f"{vault} is mounted read-only at {info.mountpoint}: unmount it (or mount "
                                "it read-write) and run again")
        if unlocked is None:  # the mount asks for a proof made with the vault key
            if passphrase is None:
                raise RotationError(f"rotating keys in the mount at {info.mountpoint} needs the vault's passphrase")
            unlocked = vault_mod.unlock(vault, passphrase())
        proof = rotate_proof(unlocked.root_wrap_key, info.mountpoint, os.getpid())
        out = _in_mount(info, target, reason, durable, view, on_detach, proof)
    else:
        if unlocked is None:
            if passphrase is None:
                raise RotationError(f"{vault} is not mounted: the rotation needs the vault's passphrase")
            unlocked = vault_mod.unlock(vault, passphrase())
        out = _offline(vault, target, unlocked, reason, durable, view)
    if out.get("state") == "done" and (target is not None or out["files_done"] or out["dirs_done"]):
        on_event("reencrypt", path or out["target"], {
            "dirs": out["dirs_done"], "files": out["files_done"], "bytes": out["bytes_done"],
            "problems": len(out["problems"]), "reason": reason[:200]})
    return out


def _in_mount(info: MountInfo, target: TargetSpec | None, reason: str, durable: bool, view: ProgressView,
              on_detach: Callable[[str], None], proof: str) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "rotate", "reason": reason, "durable": durable, "proof": proof}
    if target is not None:
        message["target"] = {"kind": target.kind, "backing_rel": target.backing_rel, "object_id": target.obj_id.hex()}
    try:
        reply = request(info, message, timeout=30.0)
        if reply.get("type") == "error":
            raise RotationError(f"the mount at {info.mountpoint} refused: {reply.get('message')}")
        if reply.get("already") and target is not None and reply.get("requested") != target.backing_rel:
            # Another rotation is running there: wait for it, then ask again for ours.
            _wait(info, view)
            return _in_mount(info, target, reason, durable, view, on_detach, proof)
        status = _wait(info, view)
    except MountControlError as exc:
        raise RotationError(f"lost the mount at {info.mountpoint} ({exc}); the journal in the vault stays: "
                            "run `umbrafs revoke --resume` to finish") from None
    except KeyboardInterrupt:
        view.close()
        on_detach(info.mountpoint)
        raise
    finally:
        view.close()
    if status.get("error"):
        raise RotationError(f"rotation stopped: {status['error']}")
    return status


def _wait(info: MountInfo, view: ProgressView) -> dict[str, Any]:
    while True:
        status = request(info, {"type": "rotate-status"}, timeout=30.0)
        if status.get("type") == "error":
            raise RotationError(f"the mount at {info.mountpoint}: {status.get('message')}")
        view.update(status)
        if not status.get("running"):
            return status
        time.sleep(POLL)


def _offline(vault: Path, target: TargetSpec | None, unlocked: vault_mod.UnlockedVault, reason: str,
             durable: bool, view: ProgressView) -> dict[str, Any]:
    try:
        progress = engine.run_offline(vault, unlocked.root_wrap_key, target, reason,
                                      on_step=lambda p: view.update(p.as_dict()), durable=durable)
    except KeyboardInterrupt:
        view.close()
        raise RotationError("interrupted; the vault stays readable; run `umbrafs revoke --resume "
                            f"{vault}` to finish") from None
    except OSError as exc:
        view.close()
        raise RotationError(f"rotation stopped: {exc.strerror or exc}; the vault stays readable; "
                            f"run `umbrafs revoke --resume {vault}` to finish") from None
    finally:
        view.close()
    return progress.as_dict()
