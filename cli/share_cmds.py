"""`umbrafs share`, `shares` and `revoke` (docs/sharing.md); the recipient's `mount --share` is
in cli/mount_cmds.py.

The owner's key of a path comes from the vault offline (fs.vault.keywalk), never through the
mount; the use cases themselves are proxy/sharing.py, which writes the share record into the
vault (proxy.shares) where the recipient finds it.  `revoke --rotate` and `--resume` drive
fs/vault/rotate/driver.py.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from fs.vault import config as vault_mod
from fs.vault import keywalk
from fs.vault.rotate import driver as rotation
from fs.vault.rotate import engine as rotate_engine
from proxy import client
from proxy import keyring as identity_mod
from proxy import shares as shares_mod
from proxy import sharing
from proxy.errors import ShareError

from cli import common, exitcodes, passphrase
from cli.state import State


# -- the owner's side ----------------------------------------------------------------

def _same_file(a: Path | None, b: Path | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _owner_side(
    state: State, path: Path, identity: str | None, recipient_name: str,
    passphrase_file: Path | None, vault_passphrase_file: Path | None, offline_vault: Path | None = None,
) -> tuple[Path, str, identity_mod.Identity, identity_mod.PublicIdentity, vault_mod.UnlockedVault, keywalk.Target]:
    """What share and revoke both need: the vault and path inside it, the unlocked owner
    identity, the recipient contact, the unlocked vault and the target's key.  With
    *offline_vault* (revoke --vault), *path* is a path inside that vault's drive, no mount needed."""
    if offline_vault is None:
        info, inner = common.path_in_mount(state, path)
        if info.share_id:
            # A recipient's share mount: only the vault's owner shares or revokes what is in it (the
            # recipient has no vault passphrase, and proxies give readers no owner role).
            raise ShareError(f"{info.mountpoint} mounts share {info.share_id}, a share you received: only the "
                             "vault's owner can share or revoke what is in it")
        vault = Path(info.vault)
    else:
        vault_mod.read_config(offline_vault)
        vault, inner = offline_vault.absolute(), "/" + str(path).lstrip("/")
    owner_name = common.resolve_identity(state, identity)
    identity_mod.load_own_public(state.home, owner_name)
    recipient = identity_mod.load_public(state.home, recipient_name)
    identity_secret, vault_secret = _secrets(owner_name, passphrase_file, vault_passphrase_file)
    owner = identity_mod.unlock(state.home, owner_name, identity_secret)
    unlocked = vault_mod.unlock(vault, vault_secret)
    del identity_secret, vault_secret
    return vault, inner, owner, recipient, unlocked, keywalk.find(unlocked, inner)


def _secrets(owner: str, passphrase_file: Path | None, vault_passphrase_file: Path | None) -> tuple[bytes, bytes]:
    """The identity's and the vault's passphrases; one file given for both is read once."""
    identity_secret = common.identity_passphrase(passphrase_file, prompt=f"Passphrase of identity {owner}")
    if _same_file(passphrase_file, vault_passphrase_file):
        return identity_secret, identity_secret
    return identity_secret, passphrase.get(vault_passphrase_file, prompt="Vault passphrase")


# -- share ----------------------------------------------------------------------------

@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--with", "recipient_name", required=True, metavar="NAME", help="The contact to share with.")
@click.option("--proxy", "proxies", multiple=True, metavar="URL", help="A proxy to hold one kfrag; repeat for N proxies.")
@click.option("--threshold", type=int, default=None, help="M: proxies needed to open the share (default: a majority of N).")
@click.option("--read-only/--read-write", default=True, show_default=True, help="May the recipient change the directory?")
@common.identity_option
@common.identity_passphrase_option
@common.share_vault_passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object with the share's id and details.")
@click.pass_obj
def share(state: State, path: Path, recipient_name: str, proxies: tuple[str, ...], threshold: int | None,
          read_only: bool, identity: str | None, passphrase_file: Path | None, vault_passphrase_file: Path | None,
          as_json: bool) -> None:
    """Share PATH (a directory or file inside a mounted drive) with contact NAME; prints the share id."""
    threshold = sharing.threshold_for(proxies, threshold)  # before asking for any passphrase
    vault, inner, owner, recipient, unlocked, target = _owner_side(
        state, path, identity, recipient_name, passphrase_file, vault_passphrase_file)
    record = sharing.create_share(vault, inner, target, owner, recipient, proxies, threshold, read_only,
                                  on_event=common.key_events(state, unlocked.vault_id))
    if as_json:
        click.echo(json.dumps({"id": record.grant_id, "path": inner, "kind": record.kind, "recipient": recipient.name,
                               "fingerprint": recipient.fingerprint, "proxies": list(record.proxies),
                               "threshold": record.threshold, "read_only": record.read_only}))
    else:
        click.echo(record.grant_id)


# -- shares ---------------------------------------------------------------------------

def _row(vault: Path, share_id: str, unlocked: vault_mod.UnlockedVault | None) -> dict[str, Any]:
    try:
        signed = shares_mod.read(vault, share_id)
    except ShareError as exc:
        return {"id": share_id, "error": str(exc)}
    r = signed.record
    path = r.backing_path
    if unlocked is not None:
        try:
            rel = keywalk.locate(vault, r.backing_path, r.object_id, r.kind)
            path = keywalk.plain_path(unlocked, rel)
        except keywalk.PathNotFound:
            path = f"{r.backing_path} (gone)"
        except Exception as exc:  # a damaged header on the way: still list the share
            path = f"{r.backing_path} ({exc})"
    return {
        "id": r.grant_id, "kind": r.kind, "path": path, "backing_path": r.backing_path,
        "owner": r.owner.name, "owner_fingerprint": r.owner.fingerprint,
        "recipient": r.recipient_name, "recipient_fingerprint": r.recipient,
        "proxies": list(r.proxies), "threshold": r.threshold, "read_only": r.read_only,
        "created": r.created, "revoked": r.revoked, "signature_ok": signed.self_signed(),
    }


@click.command()
@click.argument("where", type=click.Path(path_type=Path))
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The vault's passphrase, to show plaintext paths (else $UMBRAFS_PASSPHRASE; without either, backing paths).")
@click.option("--check", is_flag=True, help="Ask the proxies whether each active share still works (a daemon's guard "
                                             "may have revoked it there); needs your identity.")
@common.identity_option
@click.option("--identity-passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
              help="With --check: first line is the identity's passphrase (else $UMBRAFS_IDENTITY_PASSPHRASE, "
                   "else a prompt).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of shares.")
@click.pass_obj
def shares(state: State, where: Path, passphrase_file: Path | None, check: bool, identity: str | None,
           identity_passphrase_file: Path | None, as_json: bool) -> None:
    """List the shares of the vault behind WHERE (a mountpoint, a path in it, or the vault)."""
    vault = common.vault_of(state, where)
    vault_mod.read_config(vault)
    unlocked = None
    if passphrase_file is not None or os.environ.get("UMBRAFS_PASSPHRASE") is not None:
        unlocked = vault_mod.unlock(vault, passphrase.get(passphrase_file))
    rows = [_row(vault, share_id, unlocked) for share_id in shares_mod.list_ids(vault)]
    if check:
        _check_at_proxies(state, rows, identity, identity_passphrase_file)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no shares")
    for row in rows:
        if "error" in row:
            click.echo(f"{row['id']}  DAMAGED: {row['error']}")
            continue
        state_text = f"revoked {row['revoked']}" if row["revoked"] else "active"
        if "at_proxies" in row:
            state_text += f" ({_proxy_summary(row)})"
        bad = "" if row["signature_ok"] else "  BAD SIGNATURE"
        click.echo(f"{row['id']}  {row['path']}  {row['kind']} -> {row['recipient']} ({row['recipient_fingerprint'][:16]})  "
                   f"{row['threshold']}-of-{len(row['proxies'])} via {','.join(row['proxies'])}  "
                   f"{'read-only' if row['read_only'] else 'read-write'}  since {row['created']}  {state_text}{bad}")


def _check_at_proxies(state: State, rows: list[dict[str, Any]], identity: str | None,
                      passphrase_file: Path | None) -> None:
    """Add each active share's state at its proxies (row["at_proxies"]), asked as its owner."""
    name = common.resolve_identity(state, identity)
    me = identity_mod.unlock(state.home, name, common.identity_passphrase(passphrase_file, prompt=f"Passphrase of identity {name}"))
    for row in rows:
        if "error" in row or row["revoked"] or row["owner_fingerprint"] != me.fingerprint:
            continue
        st = client.grant_status(row["proxies"], me, row["id"], row["threshold"])
        row["at_proxies"] = {"works": st.works, "active": st.active, "missing": st.missing,
                             "revoked": {u: {"time": t, "by": by} for u, (t, by) in st.revoked.items()},
                             "unreachable": st.unreachable}


def _proxy_summary(row: dict[str, Any]) -> str:
    at = row["at_proxies"]
    n = len(row["proxies"])
    parts = [f"works at the proxies ({len(at['active'])} of {n} hold it)" if at["works"] else
             "undecided: too many proxies unreachable" if at["works"] is None else
             f"NO LONGER WORKS: {len(at['active'])} of {n} proxies hold it, {row['threshold']} needed"]
    if at["revoked"]:
        by = sorted({v["by"][:16] for v in at["revoked"].values()})
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(v["time"] for v in at["revoked"].values())))
        parts.append(f"revoked at {len(at['revoked'])} by {','.join(by)} on {when}")
    if at["missing"]:
        parts.append(f"unknown to {len(at['missing'])}")
    if at["unreachable"]:
        parts.append(f"{len(at['unreachable'])} unreachable")
    if at["works"] is False:
        parts.append(f"`umbrafs revoke PATH --from {row['recipient']}` marks it revoked")
    return "; ".join(parts)


# -- revoke ---------------------------------------------------------------------------

@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--from", "recipient_name", metavar="NAME", help="The contact whose access ends (required but with --resume).")
@click.option("--rotate", is_flag=True, help="Also give PATH fresh keys: every directory key below it and every file's "
                                             "DEK (content re-encrypted), so keys NAME kept open nothing new.")
@click.option("--resume", is_flag=True, help="Only finish a rotation that was cut short; PATH: the vault, a mountpoint "
                                             "or a path in it.")
@click.option("--durable", is_flag=True, help="Rotation safe against a power cut too (fdatasync around every write; slower).")
@click.option("--vault", "offline_vault", type=click.Path(file_okay=False, path_type=Path),
              help="The vault directory, not mounted: PATH is then a path inside its drive (/projects/x); "
                   "a rotation runs offline.")
@common.identity_option
@common.identity_passphrase_option
@common.share_vault_passphrase_option
@click.option("--json", "as_json", is_flag=True, help="One JSON array with each share's revocation report "
                                                       "(with --rotate: an object with revocations and rotation).")
@click.pass_obj
def revoke(state: State, path: Path, recipient_name: str | None, rotate: bool, resume: bool, durable: bool,
           offline_vault: Path | None, identity: str | None, passphrase_file: Path | None, vault_passphrase_file: Path | None,
           as_json: bool) -> None:
    """Revoke NAME's shares of PATH at every proxy; exit 31 while a revocation does not hold."""
    if resume:
        _resume(state, path, vault_passphrase_file or passphrase_file, as_json, durable)
        return
    if not recipient_name:
        raise click.UsageError("--from NAME is required (or --resume)")
    vault, inner, owner, recipient, unlocked, target = _owner_side(
        state, path, identity, recipient_name, passphrase_file, vault_passphrase_file, offline_vault)
    done = sharing.revoke_shares(vault, inner, target.obj_id, owner, recipient, include_revoked=rotate,
                                 on_event=common.key_events(state, unlocked.vault_id), on_warning=common.warn)
    revocations = [{"id": r.grant_id, "deleted": r.deleted, "already": r.already,
                    "unreachable": r.unreachable, "refused": r.refused, "holds": r.holds} for r in done.reports]
    if not as_json:
        for r in done.reports:
            click.echo(r.summary())
        if not done.revoked:
            click.echo(f"{inner}: already revoked from {recipient_name}")
    if rotate:
        # Even while a revocation does not hold: cfrags would open only the replaced key.
        spec = rotate_engine.TargetSpec(target.kind, target.backing_rel, target.obj_id)
        progress = _rotate(state, vault, spec, unlocked, reason=f"revoke {inner} from {recipient.fingerprint[:16]}",
                           quiet=as_json, durable=durable, path=inner)
        _report(progress, as_json)
        ids = rotate_engine.object_ids(vault, progress.get("target") or target.backing_rel)
        skip = {r.grant_id for r in done.revoked + done.revoked_before}
        for other in sharing.shares_below(vault, ids, owner.fingerprint, skip):
            common.warn(f"share {other.grant_id} with {other.recipient_name} sealed a key that was just "
                        "replaced: it no longer opens; share that path with them again")
        if as_json:
            click.echo(json.dumps({"revocations": revocations, "rotation": progress}))
    elif as_json:
        click.echo(json.dumps(revocations))
    if not done.holds:
        sys.exit(exitcodes.PROXY_UNREACHABLE)


def _rotate(state: State, vault: Path, target: rotate_engine.TargetSpec | None, unlocked: vault_mod.UnlockedVault | None,
            *, reason: str, quiet: bool, durable: bool, path: str = "", passphrase_file: Path | None = None) -> dict[str, Any]:
    """fs.vault.rotate.driver with a progress bar on stderr and the key event in the audit trail."""

    def detached(mountpoint: str) -> None:
        click.echo(f"umbrafs: the rotation goes on inside the mount at {mountpoint}; "
                   "`umbrafs revoke --resume` shows its progress", err=True)

    return rotation.rotate(
        state.home, vault, target, unlocked, passphrase=lambda: passphrase.get(passphrase_file, prompt="Vault passphrase"),
        reason=reason, durable=durable, path=path, progress=common.RotationBar(quiet),
        on_event=common.key_events(state, vault_mod.vault_id(vault_mod.read_config(vault))), on_detach=detached,
    )


def _report(progress: dict[str, Any], as_json: bool) -> None:
    """One line (or nothing with --json: the caller prints the object) and the problems on stderr."""
    for problem in progress.get("problems", []):
        common.warn(f"rotation: {problem}")
    if not as_json:
        click.echo(f"rotated keys: {progress['dirs_done']} directories, {progress['files_done']} files, "
                   f"{progress['bytes_done']} bytes re-encrypted")


def _resume(state: State, where: Path, passphrase_file: Path | None, as_json: bool, durable: bool) -> None:
    """`revoke --resume WHERE`: finish a rotation that was cut short (WHERE: vault, mountpoint, or inside)."""
    vault = common.vault_of(state, where)
    vault_mod.read_config(vault)
    if rotate_engine.pending(vault) is None:
        click.echo(json.dumps({"state": "none"}) if as_json else "no rotation pending")
        return
    progress = _rotate(state, vault, None, None, reason="resume", quiet=as_json, durable=durable,
                       passphrase_file=passphrase_file)
    if as_json:
        click.echo(json.dumps(progress))
    else:
        _report(progress, False)


COMMANDS = [share, shares, revoke]
