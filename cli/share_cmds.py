"""`umbrafs share`, `shares`, `revoke`, and the recipient's `mount --share` (docs/sharing.md).

The owner's key of a path comes from the vault offline (fs.vault.keywalk), never through the
mount; the share record goes into the vault (proxy.shares) where the recipient finds it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from fs.vault import keywalk
from fs.vault import config as vault_mod
from fs.mount.serve import check_fuse, check_mountpoint
from wire.procfs import mounted_paths
from proxy import keyring as identity_mod
from proxy import shares as shares_mod
from proxy.errors import AccessRevoked, GrantError, IdentityError, ShareError, ShareRecordInvalid

from cli import detach, exitcodes, passphrase
from cli.identities import identity_option, resolve_identity
from cli.identity_cmds import identity_passphrase, passphrase_file_option
from cli.state import State

log = logging.getLogger(__name__)

vault_passphrase_file_option = click.option(
    "--vault-passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
    help="First line is the vault's passphrase (else $UMBRAFS_PASSPHRASE, else a prompt). "
         "The same file as --passphrase-file is read once.",
)


# -- finding the vault behind a path --------------------------------------------------

def _mount_records(state: State) -> list[dict[str, Any]]:
    live = mounted_paths()
    records = []
    for path in sorted(state.mounts_dir.glob("*.json")) if state.mounts_dir.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(record, dict) and record.get("mountpoint") in live:
                records.append(record)
    return records


def _in_mount(state: State, path: Path) -> tuple[Path, Path, str]:
    """(mountpoint, vault, path inside the drive) for a path inside one of our live mounts.

    The path is made absolute without resolving it through the mount; symlinks outside
    the mount are resolved only if the plain absolute path is in no mount."""
    records = _mount_records(state)
    for candidate in (os.path.abspath(path), os.path.realpath(path)):
        best: dict[str, Any] | None = None
        for record in records:
            mnt = record["mountpoint"]
            if (candidate == mnt or candidate.startswith(mnt.rstrip("/") + "/")) and \
                    (best is None or len(mnt) > len(best["mountpoint"])):
                best = record
        if best is not None:
            inner = candidate[len(best["mountpoint"]):] or "/"
            return Path(best["mountpoint"]), Path(best["vault"]), inner
    from fs.errors import MountpointError

    raise MountpointError(f"{path}: not inside a mounted umbrafs drive (mount the vault first)")


def _vault_of(state: State, where: Path) -> Path:
    """The vault behind a mountpoint (or a path inside it), or a vault directory itself."""
    from fs.errors import MountpointError

    try:
        return _in_mount(state, where)[1]
    except MountpointError:
        if (where / "vault.json").is_file():
            return where.absolute()
        raise MountpointError(f"{where}: neither a vault nor inside a mounted umbrafs drive") from None


# -- passphrases and identities ---------------------------------------------------

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
) -> tuple[Path, str, Any, Any, Any, Any]:
    """What share and revoke both need: the vault and path inside it, the unlocked owner
    identity, the recipient contact, the unlocked vault and the target's key.  With
    *offline_vault* (revoke --vault), *path* is a path inside that vault's drive, no mount needed."""
    if offline_vault is None:
        mountpoint, vault, inner = _in_mount(state, path)
        _refuse_received_share(state, mountpoint)
    else:
        vault_mod.read_config(offline_vault)
        vault, inner = offline_vault.absolute(), "/" + str(path).lstrip("/")
    owner_name = resolve_identity(state, identity)
    identity_mod.load_own_public(state.home, owner_name)
    recipient = identity_mod.load_public(state.home, recipient_name)
    identity_secret, vault_secret = _secrets(owner_name, passphrase_file, vault_passphrase_file)
    owner = identity_mod.unlock(state.home, owner_name, identity_secret)
    unlocked = vault_mod.unlock(vault, vault_secret)
    del identity_secret, vault_secret
    return vault, inner, owner, recipient, unlocked, keywalk.find(unlocked, inner)


def _refuse_received_share(state: State, mountpoint: Path) -> None:
    """A recipient's share mount: only the vault's owner shares or revokes what is in it (the
    recipient has no vault passphrase, and proxies give readers no owner role)."""
    for record in _mount_records(state):
        if record.get("mountpoint") == str(mountpoint) and record.get("share_id"):
            raise ShareError(f"{mountpoint} mounts share {record['share_id']}, a share you received: only the "
                             "vault's owner can share or revoke what is in it")


def _secrets(owner: str, passphrase_file: Path | None, vault_passphrase_file: Path | None) -> tuple[bytes, bytes]:
    """The identity's and the vault's passphrases; one file given for both is read once."""
    identity_secret = identity_passphrase(passphrase_file, prompt=f"Passphrase of identity {owner}")
    if _same_file(passphrase_file, vault_passphrase_file):
        return identity_secret, identity_secret
    return identity_secret, passphrase.get(vault_passphrase_file, prompt="Vault passphrase")


def _trusted_public(home: Path, fingerprint: str, what: str, named: str) -> identity_mod.PublicIdentity:
    """One of our contacts or identities with that fingerprint; IdentityError if none."""
    for public in identity_mod.list_identities(home) + identity_mod.list_contacts(home):
        if public.fingerprint == fingerprint:
            return public
    raise IdentityError(
        f"{what} was made by {named} (fingerprint {fingerprint[:16]}…), who is not among your contacts: "
        "import their public identity first (umbrafs identity import FILE)"
    )


def _trusted_record(home: Path, vault: Path, share_id: str, me: identity_mod.PublicIdentity) -> shares_mod.ShareRecord:
    """Read share *share_id*, check its owner's signature against our contact, its recipient and revocation."""
    signed = shares_mod.read(vault, share_id)
    owner = _trusted_public(home, signed.record.owner.fingerprint, f"share {share_id}", signed.record.owner.name)
    record = signed.verify(owner)
    if record.recipient != me.fingerprint:
        raise IdentityError(f"share {share_id} is for {record.recipient_name} (fingerprint {record.recipient[:16]}…), "
                            f"not for your identity {me.name}")
    if record.revoked is not None:
        raise AccessRevoked(f"access revoked: share {share_id} was revoked by its owner at {record.revoked}")
    return record


# -- key events ----------------------------------------------------------------------

def _key_event(state: State, vault_id: str, op: str, path: str, detail: dict[str, str | int | bool]) -> None:
    """Best effort: record *op* in the audit trail and ask a running daemon for a checkpoint."""
    try:
        from wire.sink import AuditSink

        sink = AuditSink(state.home, vault_id)
        try:
            sink.emit(op, pid=os.getpid(), path=path, detail=detail)
        finally:
            sink.close(timeout=2)
    except Exception as exc:  # the share or revocation itself has happened: never fail it here
        log.warning("audit: could not record the %s event: %s", op, exc)
        return
    from wire import daemonclient as daemon_client
    from wire.errors import DaemonError

    with contextlib.suppress(DaemonError, OSError):
        daemon_client.request(state.home, {"type": "checkpoint"}, timeout=5.0)


# -- share ----------------------------------------------------------------------------

@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--with", "recipient_name", required=True, metavar="NAME", help="The contact to share with.")
@click.option("--proxy", "proxies", multiple=True, metavar="URL", help="A proxy to hold one kfrag; repeat for N proxies.")
@click.option("--threshold", type=int, default=None, help="M: proxies needed to open the share (default: a majority of N).")
@click.option("--read-only/--read-write", default=True, show_default=True, help="May the recipient change the directory?")
@identity_option
@passphrase_file_option
@vault_passphrase_file_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object with the share's id and details.")
@click.pass_obj
def share(state: State, path: Path, recipient_name: str, proxies: tuple[str, ...], threshold: int | None,
          read_only: bool, identity: str | None, passphrase_file: Path | None, vault_passphrase_file: Path | None,
          as_json: bool) -> None:
    """Share PATH (a directory or file inside a mounted drive) with contact NAME; prints the share id."""
    from proxy import client
    from proxy.envelope import seal

    if not proxies:
        raise GrantError("give at least one --proxy URL")
    threshold = len(proxies) // 2 + 1 if threshold is None else threshold
    if not 1 <= threshold <= len(proxies):
        raise GrantError(f"threshold must be between 1 and the number of proxies ({len(proxies)}), got {threshold}")
    vault, inner, owner, recipient, unlocked, target = _owner_side(
        state, path, identity, recipient_name, passphrase_file, vault_passphrase_file)
    if target.kind == keywalk.KIND_FILE and not read_only:
        raise ShareError(f"{inner}: a shared file is read-only for its recipient; share its directory to let "
                         f"{recipient_name} write")
    sealed, delegation = seal(target.key + target.name)  # a fresh key for this share only
    grant_id = client.new_grant_id()
    report = client.grant(list(proxies), owner, recipient, threshold, grant_id, delegation)
    del delegation
    record = shares_mod.ShareRecord(
        grant_id, target.kind, target.backing_rel, target.obj_id, owner.public, recipient.name,
        recipient.fingerprint, tuple(report.proxies), threshold, read_only, shares_mod.now_iso(),
        sealed.capsule, sealed.ciphertext, delegating_pk=sealed.delegating_pk,
    )
    try:
        shares_mod.write(vault, grant_id, record.signed_by(owner))
    except OSError as exc:
        client.revoke(report.proxies, owner, grant_id, threshold)
        raise ShareError(f"could not write the share record into {vault} ({exc.strerror}); the grant was withdrawn") from None
    _key_event(state, unlocked.vault_id, "share", inner, {
        "grant": grant_id, "recipient": recipient.fingerprint, "kind": target.kind,
        "threshold": threshold, "proxies": len(report.proxies), "read_only": read_only,
    })
    if as_json:
        click.echo(json.dumps({"id": grant_id, "path": inner, "kind": target.kind, "recipient": recipient.name,
                               "fingerprint": recipient.fingerprint, "proxies": report.proxies,
                               "threshold": threshold, "read_only": read_only}))
    else:
        click.echo(grant_id)


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
@identity_option
@click.option("--identity-passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
              help="With --check: first line is the identity's passphrase (else $UMBRAFS_IDENTITY_PASSPHRASE, "
                   "else a prompt).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of shares.")
@click.pass_obj
def shares(state: State, where: Path, passphrase_file: Path | None, check: bool, identity: str | None,
           identity_passphrase_file: Path | None, as_json: bool) -> None:
    """List the shares of the vault behind WHERE (a mountpoint, a path in it, or the vault)."""
    vault = _vault_of(state, where)
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
    from proxy import client

    name = resolve_identity(state, identity)
    me = identity_mod.unlock(state.home, name, identity_passphrase(passphrase_file, prompt=f"Passphrase of identity {name}"))
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
@identity_option
@passphrase_file_option
@vault_passphrase_file_option
@click.option("--json", "as_json", is_flag=True, help="One JSON array with each share's revocation report "
                                                       "(with --rotate: an object with revocations and rotation).")
@click.pass_obj
def revoke(state: State, path: Path, recipient_name: str | None, rotate: bool, resume: bool, durable: bool,
           offline_vault: Path | None, identity: str | None, passphrase_file: Path | None, vault_passphrase_file: Path | None,
           as_json: bool) -> None:
    """Revoke NAME's shares of PATH at every proxy; exit 31 while a revocation does not hold."""
    from proxy import client

    from cli import rotate_cmds

    if resume:
        rotate_cmds.resume(state, path, vault_passphrase_file or passphrase_file, as_json, durable)
        return
    if not recipient_name:
        raise click.UsageError("--from NAME is required (or --resume)")
    vault, inner, owner, recipient, unlocked, target = _owner_side(
        state, path, identity, recipient_name, passphrase_file, vault_passphrase_file, offline_vault)
    matches, revoked_before = [], []
    for share_id in shares_mod.list_ids(vault):
        try:
            signed = shares_mod.read(vault, share_id)
        except ShareError as exc:
            click.echo(f"umbrafs: warning: {exc}", err=True)
            continue
        if signed.record.owner.fingerprint != owner.fingerprint:
            continue
        try:
            record = signed.verify(owner.public)
        except ShareRecordInvalid as exc:
            click.echo(f"umbrafs: warning: {exc}; revoke it with `umbrafs proxy revoke {share_id}`", err=True)
            continue
        if record.object_id == target.obj_id and record.recipient == recipient.fingerprint:
            if record.revoked is None:
                matches.append(record)
            elif rotate:
                revoked_before.append(record)
    if not matches and not revoked_before:
        from proxy.errors import NoSuchShare

        raise NoSuchShare(f"no active share of {inner} with {recipient_name}")
    reports = []
    for record in matches:
        report = client.revoke(list(record.proxies), owner, record.grant_id, record.threshold)
        if report.holds:
            # Only a revocation that holds is marked: until then, `revoke` finds the share again.
            shares_mod.write(vault, record.grant_id, record.revoked_now().signed_by(owner))
        _key_event(state, unlocked.vault_id, "revoke", inner, {
            "grant": record.grant_id, "recipient": recipient.fingerprint, "holds": report.holds,
            "deleted": len(report.deleted) + len(report.already), "proxies": len(report.proxies),
        })
        reports.append(report)
    revocations = [{"id": r.grant_id, "deleted": r.deleted, "already": r.already,
                    "unreachable": r.unreachable, "refused": r.refused, "holds": r.holds} for r in reports]
    if not as_json:
        for r in reports:
            click.echo(r.summary())
        if not matches:
            click.echo(f"{inner}: already revoked from {recipient_name}")
    if rotate:
        # Even while a revocation does not hold: cfrags would open only the replaced key.
        from fs.vault.rotate.engine import TargetSpec

        spec = TargetSpec(target.kind, target.backing_rel, target.obj_id)
        progress = rotate_cmds.run(state, vault, spec, unlocked, reason=f"revoke {inner} from {recipient.fingerprint[:16]}",
                                   quiet=as_json, durable=durable, path=inner)
        rotate_cmds.report(progress, as_json)
        skip = {r.grant_id for r in matches + revoked_before}
        for other in rotate_cmds.other_shares(vault, progress.get("target") or target.backing_rel, owner.fingerprint, skip):
            click.echo(f"umbrafs: warning: share {other.grant_id} with {other.recipient_name} sealed a key that was just "
                       "replaced: it no longer opens; share that path with them again", err=True)
        if as_json:
            click.echo(json.dumps({"revocations": revocations, "rotation": progress}))
    elif as_json:
        click.echo(json.dumps(revocations))
    if not all(r.holds for r in reports):
        sys.exit(exitcodes.PROXY_UNREACHABLE)


# -- the recipient's mount ----------------------------------------------------------

def mount_share(state: State, vault: Path, mountpoint: Path, share_id: str, identity: str | None, *,
                foreground: bool, read_only: bool, allow_other: bool, audit_mode: str,
                passphrase_file: Path | None, passphrase_fd: int | None, ready_fd: int | None) -> None:
    """`mount VAULT MNT --share ID`: check what can be checked here, then serve (detached unless -f)."""
    name = resolve_identity(state, identity)
    if foreground or ready_fd is not None:
        _serve_share(state, vault, mountpoint, share_id, name, read_only, allow_other, audit_mode,
                     passphrase_file, passphrase_fd, ready_fd)
        return
    vault_mod.read_config(vault)
    me = identity_mod.load_own_public(state.home, name)
    _trusted_record(state.home, vault, share_id, me)  # fail fast: no such share, bad signature, revoked
    check_fuse()
    check_mountpoint(mountpoint)
    secret = passphrase.read_fd(passphrase_fd) if passphrase_fd is not None else \
        identity_passphrase(passphrase_file, prompt=f"Passphrase of identity {name}")
    args = ["--home", str(state.home), "mount", str(vault), str(mountpoint), "--share", share_id,
            "--identity", name, "--audit", audit_mode]
    if read_only:
        args.append("--read-only")
    if allow_other:
        args.append("--allow-other")
    detach.spawn(args, secret, state.log_path(mountpoint), "mount")


def _serve_share(state: State, vault: Path, mountpoint: Path, share_id: str, name: str, read_only: bool,
                 allow_other: bool, audit_mode: str, passphrase_file: Path | None, passphrase_fd: int | None,
                 ready_fd: int | None) -> None:
    from wire import sink as audit
    from fs.vault.headers import DirKeys
    from fs.mount.serve import serve
    from fs.mount.singlefile import SharedFile
    from proxy.client import open_capsule

    try:
        config = vault_mod.read_config(vault)
        me_public = identity_mod.load_own_public(state.home, name)
        record = _trusted_record(state.home, vault, share_id, me_public)
        secret = passphrase.read_fd(passphrase_fd) if passphrase_fd is not None else \
            identity_passphrase(passphrase_file, prompt=f"Passphrase of identity {name}")
        me = identity_mod.unlock(state.home, name, secret)
        del secret
        # cfrags are fetched once, here; the opened key lives in this process's memory only.
        payload = open_capsule(list(record.proxies), me, record.owner, record.capsule, record.ciphertext,
                               record.threshold, record.grant_id, record.delegating_key)
        if len(payload) < shares_mod.KEY_LEN:
            raise ShareRecordInvalid(f"share {share_id}: the sealed key is too short")
        key, p_name = payload[: shares_mod.KEY_LEN], payload[shares_mod.KEY_LEN :]
        rel = keywalk.locate(vault, record.backing_path, record.object_id, record.kind)
        effective_ro = read_only or record.read_only or record.kind == keywalk.KIND_FILE
        sink = None
        if audit_mode != "off":
            sink = audit.AuditSink(state.home, vault_mod.vault_id(config), required=audit_mode == "required")
        state.register_mount(mountpoint, vault, effective_ro, source=sink.source if sink else "",
                             vault_id=vault_mod.vault_id(config), share_id=share_id, identity=name)
        # Keys held only by the mount (fs/mount/control/server.py drops them at lock; unlock fetches them again).
        from fs.mount.control.server import ControlSpec

        from cli.lock_cmds import share_rekey

        control = ControlSpec(state.control_path(mountpoint), state.home, share_id=share_id, identity=name,
                              rekey=share_rekey(state, vault, share_id, name, rel))
        is_dir = record.kind == keywalk.KIND_DIR
        # A box, not a local: this frame must not keep the key alive while the mount is locked.
        box = [DirKeys(record.object_id, key) if is_dir else SharedFile(rel, record.object_id, key, p_name)]
        del me, payload, key
        try:
            if sink:
                detail: dict[str, str | int | bool] = {"share": share_id, "owner": record.owner.fingerprint,
                                                       "read_only": effective_ro}
                sink.emit("unlock", pid=os.getpid(), path=str(vault), detail=detail)
                sink.emit("mount", pid=os.getpid(), path=str(mountpoint), path2=str(vault), detail=detail)
            ready = lambda: detach.report(ready_fd, "ok")  # noqa: E731
            if is_dir:
                serve(vault, mountpoint, read_only=effective_ro, allow_other=allow_other, events=sink, ready=ready,
                      root=(rel, box.pop()), control=control)  # type: ignore[arg-type]
            else:
                serve(vault, mountpoint, read_only=True, allow_other=allow_other, events=sink, ready=ready,
                      single_file=box.pop(), control=control)  # type: ignore[arg-type]
        finally:
            state.unregister_mount(mountpoint)
            if sink:
                sink.emit("unmount", pid=os.getpid(), path=str(mountpoint), path2=str(vault))
                sink.close()
    except exitcodes.PROJECT_ERRORS as exc:
        detach.report(ready_fd, f"err {exitcodes.for_error(exc)} {exc}")
        raise


COMMANDS = [share, shares, revoke]
