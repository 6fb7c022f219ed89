"""`umbrafs mount` (the owner's, or a share recipient's with --share) and `umbrafs unmount`.

Without -f the command checks what it can, then starts itself again detached (cli/detach.py)
and returns once that child serves; the child runs one fs/mount/session.py session.
"""
from __future__ import annotations

from pathlib import Path

import click

from daemon.paths import ledger_path
from fs.errors import MountpointError, UmbrafsError
from fs.mount.control.server import ControlRequestError, Rekey, Unlocked
from fs.mount.serve import check_fuse, check_mountpoint
from fs.mount.session import MountSession, ShareKeys, share_keys
from fs.mount.singlefile import SharedFile
from fs.vault import config as vault_mod
from fs.vault import keywalk
from fs.vault import versions as versions_mod
from proxy import errors as proxy_errors
from proxy import keyring as identity_mod
from proxy import sharing
from proxy.shares import ShareRecord
from wire import sink as audit
from wire.procfs import mounted_paths

from cli import common, detach, exitcodes, passphrase
from cli.state import State


@click.command()
@click.argument("vault", type=click.Path(path_type=Path))
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("-f", "--foreground", is_flag=True, help="Stay attached; unmount on Ctrl-C.")
@click.option("--read-only", is_flag=True, help="Mount read-only.")
@click.option("--allow-other", is_flag=True, help="Let other users use the mount (root, or user_allow_other in /etc/fuse.conf). Permissions are then checked by the kernel (default_permissions).")
@click.option("--no-xattr", is_flag=True, help="No extended attributes: writes of many small files get faster (docs/operations.md).")
@click.option("--keep-versions", "keep_versions", metavar="SIZE,AGE", default="2G,7d", show_default=True,
              help="Keep the old content of deleted, overwritten or truncated files for `umbrafs restore`, up to SIZE "
              "and AGE (docs/versions.md); 'off' keeps none.")
@click.option("--cache-timeout", type=click.FloatRange(0, 3600), default=1.0, show_default=True, metavar="SECONDS",
              help="How long the kernel may trust names and attributes before asking again. Changes that another "
              "writer (a sync tool, another device) makes in the vault show after at most this long; 0 shows them "
              "at once at the cost of more requests.")
@common.vault_passphrase_option
@click.option("--passphrase-fd", type=int, help="Read the passphrase from this file descriptor until EOF.")
@click.option(
    "--audit", type=click.Choice(("auto", *audit.MODES)), default="auto", show_default=True,
    help="Events to the audit daemon: best-effort spools while it is down; required refuses to mount without it; "
    "auto is best-effort once a daemon has been started with this state directory, else off.",
)
@click.option("--share", "share_id", metavar="ID", help="Mount a share made with you: its directory (or file) is the root. "
              "--passphrase-file/--passphrase-fd then carry your identity's passphrase.")
@click.option("--identity", "identity_name", metavar="NAME", help="With --share: your identity (default: the only one).")
@click.option("--ready-fd", type=int, hidden=True)
@click.pass_obj
def mount(
    state: State, vault: Path, mountpoint: Path, foreground: bool, read_only: bool, allow_other: bool,
    passphrase_file: Path | None, passphrase_fd: int | None, audit: str, share_id: str | None,
    identity_name: str | None, ready_fd: int | None, no_xattr: bool = False, keep_versions: str = "2G,7d",
    cache_timeout: float = 1.0,
) -> None:
    """Mount VAULT on MOUNTPOINT; returns once the mount is ready."""
    vault, mountpoint = vault.absolute(), mountpoint.absolute()
    try:
        versions = versions_mod.parse_limits(keep_versions)
    except versions_mod.VersionsError as exc:
        raise click.BadParameter(str(exc), param_hint="--keep-versions") from None
    state.ensure()
    if share_id is not None:
        if no_xattr:
            raise click.UsageError("--no-xattr does not go with --share")
        _mount_share(state, vault, mountpoint, share_id, identity_name, foreground=foreground, read_only=read_only,
                     allow_other=allow_other, audit_mode=audit, passphrase_file=passphrase_file,
                     passphrase_fd=passphrase_fd, ready_fd=ready_fd)
        return
    if identity_name is not None:
        raise click.UsageError("--identity goes with --share")
    if foreground or ready_fd is not None:
        _serve_vault(state, vault, mountpoint, read_only, allow_other, audit, passphrase_file, passphrase_fd, ready_fd,
                     xattr=not no_xattr, versions=versions, cache_timeout=cache_timeout)
        return
    vault_mod.read_config(vault)
    check_fuse()
    check_mountpoint(mountpoint)
    secret = passphrase.read_fd(passphrase_fd) if passphrase_fd is not None else passphrase.get(passphrase_file)
    common.spawn_mount(state, vault, mountpoint, read_only, allow_other, audit, secret, xattr=not no_xattr,
                       keep_versions=keep_versions, cache_timeout=cache_timeout)


def _serve_vault(
    state: State, vault: Path, mountpoint: Path, read_only: bool, allow_other: bool, audit_mode: str,
    passphrase_file: Path | None, passphrase_fd: int | None, ready_fd: int | None, xattr: bool = True,
    versions: versions_mod.Limits | None = versions_mod.DEFAULT_LIMITS, cache_timeout: float = 1.0,
) -> None:
    """The owner's mount, in this process: unlock, then serve until unmounted."""
    try:
        config = vault_mod.read_config(vault)
        secret = passphrase.read_fd(passphrase_fd) if passphrase_fd is not None else passphrase.get(passphrase_file)
        if audit_mode == "auto":
            audit_mode = "best-effort" if ledger_path(state.home).exists() else "off"
        session = MountSession(state.home, vault, mountpoint, vault_mod.vault_id(config), audit_mode)
        control = session.unlock_vault(secret)
        del secret
        session.serve(control, read_only=read_only, allow_other=allow_other, ready=lambda: detach.report(ready_fd, "ok"),
                      xattr=xattr, versions=versions, cache_timeout=cache_timeout)
    except exitcodes.PROJECT_ERRORS as exc:
        detach.report(ready_fd, f"err {exitcodes.for_error(exc)} {exc}")
        raise


# -- the recipient's mount ----------------------------------------------------------

def _mount_share(state: State, vault: Path, mountpoint: Path, share_id: str, identity: str | None, *,
                 foreground: bool, read_only: bool, allow_other: bool, audit_mode: str,
                 passphrase_file: Path | None, passphrase_fd: int | None, ready_fd: int | None) -> None:
    """`mount VAULT MNT --share ID`: check what can be checked here, then serve (detached unless -f)."""
    name = common.resolve_identity(state, identity)
    if foreground or ready_fd is not None:
        _serve_share(state, vault, mountpoint, share_id, name, read_only, allow_other, audit_mode,
                     passphrase_file, passphrase_fd, ready_fd)
        return
    vault_mod.read_config(vault)
    me = identity_mod.load_own_public(state.home, name)
    sharing.trusted_record(state.home, vault, share_id, me)  # fail fast: no such share, bad signature, revoked
    check_fuse()
    check_mountpoint(mountpoint)
    secret = passphrase.read_fd(passphrase_fd) if passphrase_fd is not None else \
        common.identity_passphrase(passphrase_file, prompt=f"Passphrase of identity {name}")
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
    """The recipient's mount, in this process: the share is opened once, here (cfrags from the
    proxies); its key lives in this process's memory only, and only in the mount."""

    def secret() -> bytes:
        return passphrase.read_fd(passphrase_fd) if passphrase_fd is not None else \
            common.identity_passphrase(passphrase_file, prompt=f"Passphrase of identity {name}")

    def build(record: ShareRecord, key: bytes, plain_name: bytes) -> tuple[str, list[ShareKeys]]:
        rel = keywalk.locate(vault, record.backing_path, record.object_id, record.kind)
        return rel, [share_keys(record.kind, record.object_id, rel, key, plain_name)]

    try:
        config = vault_mod.read_config(vault)
        record, (rel, box) = sharing.open_share(state.home, vault, share_id, name, secret, build)
        effective_ro = read_only or record.read_only or record.kind == keywalk.KIND_FILE
        # "auto" is best-effort here: the recipient's events go to its own daemon if it runs.
        session = MountSession(state.home, vault, mountpoint, vault_mod.vault_id(config), audit_mode,
                               share_id=share_id, identity=name)
        # The keys are held by the mount only: the control socket drops them at lock, and unlock
        # opens the share again through the proxies.
        control = session.control(rekey=_share_rekey(state.home, vault, share_id, name, rel))
        session.serve(control, read_only=effective_ro, allow_other=allow_other, ready=lambda: detach.report(ready_fd, "ok"),
                      share=box, detail={"share": share_id, "owner": record.owner.fingerprint, "read_only": effective_ro})
    except exitcodes.PROJECT_ERRORS as exc:
        detach.report(ready_fd, f"err {exitcodes.for_error(exc)} {exc}")
        raise


def _share_rekey(home: Path, vault: Path, share_id: str, name: str, rel: str) -> Rekey:
    """How a locked share mount gets its key back: identity passphrase, then cfrags from the proxies."""

    def rekey(secret: bytes) -> Unlocked:
        try:
            _, keys = sharing.open_share(home, vault, share_id, name, lambda: secret,
                                         lambda r, key, plain_name: share_keys(r.kind, r.object_id, rel, key, plain_name))
        except proxy_errors.WrongIdentityPassphrase:
            raise ControlRequestError("wrong-passphrase", "wrong identity passphrase; the mount stays locked") from None
        except proxy_errors.AccessRevoked as exc:
            raise ControlRequestError("revoked", f"the share was revoked: {exc}") from None
        except proxy_errors.ProxyUnreachable as exc:
            raise ControlRequestError("unreachable", str(exc)) from None
        except (proxy_errors.ProxyError, UmbrafsError) as exc:
            raise ControlRequestError("failed", str(exc)) from None
        if isinstance(keys, SharedFile):
            return Unlocked(shared_file=keys)
        return Unlocked(root=keys[1])

    return rekey


# -- unmount ------------------------------------------------------------------------

@click.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--lazy", is_flag=True, help="Detach now even if busy; finish when the last file closes.")
@click.pass_obj
def unmount(state: State, mountpoint: Path, lazy: bool) -> None:
    """Flush and unmount MOUNTPOINT; waits for the mount process to exit."""
    mountpoint = mountpoint.absolute()
    if str(mountpoint) not in mounted_paths():
        raise MountpointError(f"{mountpoint}: not mounted")
    record = state.mount_record(mountpoint)
    result = common.fusermount_unmount(mountpoint, lazy)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "fusermount3 failed"
        if "busy" in detail.lower():
            raise MountpointError(f"{mountpoint}: busy (a file or directory in it is in use); close it or use --lazy")
        raise MountpointError(f"{mountpoint}: {detail}")
    if record and not lazy and not detach.wait_for_exit(int(record["pid"]), 60.0):
        raise MountpointError(f"mount process {record['pid']} did not exit within 60s")


COMMANDS = [mount, unmount]
