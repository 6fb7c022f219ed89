"""`umbrafs lock`, `unlock` and `mounts`: a running mount's control socket from the shell.

A lock makes the mount drop its keys and refuse every request (EACCES) until it is
unlocked with the vault's passphrase (owner mount) or the recipient identity's
passphrase (share mount: the key is fetched again through the proxies).  See
docs/operations.md.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from wire.mountsock import MountControlError, MountInfo, find_by_mountpoint, list_mounts, request
from fs.errors import MountpointError, WrongPassphrase

from cli import common, passphrase
from cli.state import State

LOCK_TIMEOUT = 30.0  # a lock waits up to 2 s for dirty pages, then invalidates kernel caches
UNLOCK_TIMEOUT = 120.0  # Argon2id, and for a share the proxies


def _mount(state: State, mountpoint: Path) -> MountInfo:
    info = find_by_mountpoint(state.home, mountpoint)
    if info is None:
        raise MountpointError(f"{mountpoint.absolute()}: no live mount of this state directory ({state.home})")
    return info


def _ask(info: MountInfo, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    reply = request(info, message, timeout=timeout)
    if reply.get("type") == "error":
        if reply.get("code") == "wrong-passphrase":
            raise WrongPassphrase(f"{info.mountpoint}: {reply.get('message', 'wrong passphrase')}")
        raise MountControlError(f"{info.mountpoint}: {reply.get('message', 'request failed')}")
    return reply


@click.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--reason", default="manual", show_default=True, help="Recorded in the ledger's lock event.")
@click.pass_obj
def lock(state: State, mountpoint: Path, reason: str) -> None:
    """Make the mount at MOUNTPOINT drop its keys and refuse access until `umbrafs unlock`."""
    info = _mount(state, mountpoint)
    reply = _ask(info, {"type": "lock", "reason": reason, "by": "cli"}, LOCK_TIMEOUT)
    click.echo(f"{info.mountpoint}: {'already locked' if reply.get('already') else 'locked'}")


@click.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
              help="First line: the vault's passphrase (a share mount: your identity's). Else $UMBRAFS_PASSPHRASE, else a prompt.")
@click.pass_obj
def unlock(state: State, mountpoint: Path, passphrase_file: Path | None) -> None:
    """Give a locked mount its keys back (the vault passphrase; for a share mount, your identity's)."""
    info = _mount(state, mountpoint)
    if info.share_id:
        secret = common.identity_passphrase(passphrase_file, prompt=f"Passphrase of identity {info.identity}")
    else:
        secret = passphrase.get(passphrase_file, prompt="Vault passphrase")
    message = {"type": "unlock", "passphrase": secret.decode("utf-8", "surrogateescape"), "by": "cli"}
    del secret
    reply = _ask(info, message, UNLOCK_TIMEOUT)
    click.echo(f"{info.mountpoint}: {'not locked' if reply.get('already') else 'unlocked'}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per mount.")
@click.pass_obj
def mounts(state: State, as_json: bool) -> None:
    """List this state directory's live mounts and whether each is locked."""
    for info in list_mounts(state.home):
        try:
            status = request(info, {"type": "status"}, timeout=2.0)
            locked = "locked" if status.get("locked") else "unlocked"
        except MountControlError:
            status, locked = {}, "unknown"
        if as_json:
            click.echo(json.dumps({"mountpoint": info.mountpoint, "vault": info.vault, "pid": info.pid,
                                   "share_id": info.share_id, "read_only": info.read_only, "state": locked,
                                   "lock_reason": status.get("lock_reason", ""), "source": info.source}, sort_keys=True))
            continue
        started = datetime.fromtimestamp(info.started, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        kind = f"share {info.share_id}" if info.share_id else "owner"
        reason = f" ({status.get('lock_reason')})" if status.get("lock_reason") else ""
        click.echo(f"{info.mountpoint}\t{locked}{reason}\t{kind}{' ro' if info.read_only else ''}\t"
                   f"vault {info.vault}\tpid {info.pid}\tsince {started}")


COMMANDS = [lock, unlock, mounts]
