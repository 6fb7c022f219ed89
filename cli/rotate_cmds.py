"""`revoke --rotate` / `revoke --resume`: run fs/vault/rotate/engine.py in the owner's live mount, or offline.

While the vault is mounted by its owner the rotation must run inside that mount (it caches keys
and open files): the CLI sends the mount a "rotate" control request and shows its progress.
Without a mount the CLI runs the same engine on the backing directory itself.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from fs.vault.rotate import engine as rotate
from fs.vault import config as vault_mod

from cli import passphrase
from cli.state import State

POLL = 0.2


class _Bar:
    """click's progress bar on stderr, in plaintext bytes, with files and directories beside it."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.shown = 0

    def update(self, p: dict[str, Any]) -> None:
        if self.quiet or p.get("state") in (None, "starting", "scanning", "none"):
            return
        if self.bar is None:
            self.bar = click.progressbar(length=max(int(p["bytes_total"]), 1), label="rotating keys",
                                         file=sys.stderr, show_eta=True, show_percent=True,
                                         item_show_func=lambda item: item)
            self.bar.__enter__()
        done = min(int(p["bytes_done"]), self.bar.length)
        self.bar.update(done - self.shown, current_item=(
            f"{p['files_done']}/{p['files_total']} files, {p['dirs_done']}/{p['dirs_total']} dirs"))
        self.shown = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _owner_mount(state: State, vault: Path) -> Any:
    """The live owner mount of *vault* in this state directory, or None."""
    from wire.mountsock import list_mounts

    real = os.path.realpath(vault)
    for info in list_mounts(state.home):
        if os.path.realpath(info.vault) == real and not info.share_id:
            return info
    return None


def run(state: State, vault: Path, target: rotate.TargetSpec | None, unlocked: vault_mod.UnlockedVault | None,
        reason: str = "", quiet: bool = False, passphrase_file: Path | None = None, durable: bool = False,
        path: str = "") -> dict[str, Any]:
    """Rotate *target* (None: finish a pending rotation) in the owner's mount or offline; the final
    progress as a dict.  RotationError if it did not finish (the journal stays for a resume)."""
    info = _owner_mount(state, vault)
    if info is not None:
        if info.read_only:
            raise rotate.RotationError(f"{vault} is mounted read-only at {info.mountpoint}: unmount it (or mount "
                                       "it read-write) and run again")
        out = _in_mount(info, target, reason, quiet, durable)
    else:
        if unlocked is None:
            unlocked = vault_mod.unlock(vault, passphrase.get(passphrase_file, prompt="Vault passphrase"))
        out = _offline(vault, target, unlocked, reason, quiet, durable)
    if out.get("state") == "done" and (target is not None or out["files_done"] or out["dirs_done"]):
        from cli.share_cmds import _key_event

        _key_event(state, vault_mod.vault_id(vault_mod.read_config(vault)), "reencrypt", path or out["target"], {
            "dirs": out["dirs_done"], "files": out["files_done"], "bytes": out["bytes_done"],
            "problems": len(out["problems"]), "reason": reason[:200]})
    return out


def _in_mount(info: Any, target: rotate.TargetSpec | None, reason: str, quiet: bool, durable: bool) -> dict[str, Any]:
    from wire.mountsock import MountControlError, request

    message: dict[str, Any] = {"type": "rotate", "reason": reason, "durable": durable}
    if target is not None:
        message["target"] = {"kind": target.kind, "backing_rel": target.backing_rel, "object_id": target.obj_id.hex()}
    bar = _Bar(quiet)
    try:
        reply = request(info, message, timeout=30.0)
        if reply.get("type") == "error":
            raise rotate.RotationError(f"the mount at {info.mountpoint} refused: {reply.get('message')}")
        if reply.get("already") and target is not None and reply.get("requested") != target.backing_rel:
            # Another rotation is running there: wait for it, then ask again for ours.
            _wait(info, bar)
            return _in_mount(info, target, reason, quiet, durable)
        status = _wait(info, bar)
    except MountControlError as exc:
        raise rotate.RotationError(f"lost the mount at {info.mountpoint} ({exc}); the journal in the vault stays: "
                                   "run `umbrafs revoke --resume` to finish") from None
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"umbrafs: the rotation goes on inside the mount at {info.mountpoint}; "
                   "`umbrafs revoke --resume` shows its progress", err=True)
        raise
    finally:
        bar.close()
    if status.get("error"):
        raise rotate.RotationError(f"rotation stopped: {status['error']}")
    return status


def _wait(info: Any, bar: _Bar) -> dict[str, Any]:
    from wire.mountsock import request

    while True:
        status = request(info, {"type": "rotate-status"}, timeout=30.0)
        if status.get("type") == "error":
            raise rotate.RotationError(f"the mount at {info.mountpoint}: {status.get('message')}")
        bar.update(status)
        if not status.get("running"):
            return status
        time.sleep(POLL)


def _offline(vault: Path, target: rotate.TargetSpec | None, unlocked: vault_mod.UnlockedVault,
             reason: str, quiet: bool, durable: bool) -> dict[str, Any]:
    bar = _Bar(quiet)
    try:
        progress = rotate.run_offline(vault, unlocked.root_wrap_key, target, reason,
                                      on_step=lambda p: bar.update(p.as_dict()), durable=durable)
    except KeyboardInterrupt:
        bar.close()
        raise rotate.RotationError("interrupted; the vault stays readable; run `umbrafs revoke --resume "
                                   f"{vault}` to finish") from None
    except OSError as exc:
        bar.close()
        raise rotate.RotationError(f"rotation stopped: {exc.strerror or exc}; the vault stays readable; "
                                   f"run `umbrafs revoke --resume {vault}` to finish") from None
    finally:
        bar.close()
    return progress.as_dict()


def report(progress: dict[str, Any], as_json: bool) -> None:
    """One line (or nothing with --json: the caller prints the object) and the problems on stderr."""
    for problem in progress.get("problems", []):
        click.echo(f"umbrafs: warning: rotation: {problem}", err=True)
    if not as_json:
        click.echo(f"rotated keys: {progress['dirs_done']} directories, {progress['files_done']} files, "
                   f"{progress['bytes_done']} bytes re-encrypted")


def other_shares(vault: Path, rel: str, owner_fp: str, skip: set[str]) -> list[Any]:
    """Active shares (not in *skip*) of anything at or below *rel*: they sealed keys that the
    rotation replaced, so they no longer open; the owner must share those again."""
    from proxy import shares as shares_mod
    from proxy.errors import ShareError

    ids = rotate.object_ids(vault, rel)
    out = []
    for share_id in shares_mod.list_ids(vault):
        if share_id in skip:
            continue
        try:
            record = shares_mod.read(vault, share_id).record
        except ShareError:
            continue
        if record.revoked is None and record.object_id in ids and record.owner.fingerprint == owner_fp:
            out.append(record)
    return out


def resume(state: State, where: Path, passphrase_file: Path | None, as_json: bool, durable: bool = False) -> None:
    """`revoke --resume WHERE`: finish a rotation that was cut short (WHERE: vault, mountpoint, or inside)."""
    from cli.share_cmds import _vault_of

    vault = _vault_of(state, where)
    vault_mod.read_config(vault)
    if rotate.pending(vault) is None:
        if as_json:
            click.echo(json.dumps({"state": "none"}))
        else:
            click.echo("no rotation pending")
        return
    progress = run(state, vault, None, None, reason="resume", quiet=as_json, passphrase_file=passphrase_file,
                   durable=durable)
    if as_json:
        click.echo(json.dumps(progress))
    else:
        report(progress, False)
