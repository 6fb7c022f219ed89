"""Commands on a vault: init, mount, unmount, passwd, fsck."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from daemon.paths import ledger_path
from wire import sink as audit
from fs.vault import fsck as fsck_mod
from fs.vault import config as vault_mod
from fs.vault import versions as versions_mod
from fs.errors import MountpointError, WrongPassphrase
from fs.mount.control.server import ControlSpec
from fs.mount.serve import check_fuse, check_mountpoint, serve
from wire.procfs import mounted_paths

from cli import detach, exitcodes, passphrase
from cli.state import State

passphrase_file_option = click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the passphrase from the first line of this file (else $UMBRAFS_PASSPHRASE, else a prompt).",
)


def _kdf_options(func):  # type: ignore[no-untyped-def]
    defaults = vault_mod.KdfParams()
    func = click.option("--kdf-lanes", type=click.IntRange(1, 64), default=defaults.lanes, show_default=True, help="Argon2id parallelism.")(func)
    func = click.option("--kdf-iterations", type=click.IntRange(1, 100), default=defaults.iterations, show_default=True, help="Argon2id passes.")(func)
    func = click.option("--kdf-memory-kib", type=click.IntRange(8, 4 << 20), default=defaults.memory_kib, show_default=True, help="Argon2id memory in KiB.")(func)
    return func


@click.command()
@click.argument("vault", type=click.Path(path_type=Path))
@passphrase_file_option
@_kdf_options
def init(vault: Path, passphrase_file: Path | None, kdf_memory_kib: int, kdf_iterations: int, kdf_lanes: int) -> None:
    """Create a new vault in VAULT (a missing or empty directory)."""
    kdf = vault_mod.KdfParams(kdf_memory_kib, kdf_iterations, kdf_lanes)
    try:
        kdf.validate()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    vault_mod.check_new(vault)  # before prompting
    secret = passphrase.get(passphrase_file, confirm=True, prompt="New passphrase")
    vault_mod.create(vault, secret, kdf)
    click.echo(f"created vault {vault}")


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
@passphrase_file_option
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
        from cli.share_cmds import mount_share

        mount_share(state, vault, mountpoint, share_id, identity_name, foreground=foreground, read_only=read_only,
                    allow_other=allow_other, audit_mode=audit, passphrase_file=passphrase_file,
                    passphrase_fd=passphrase_fd, ready_fd=ready_fd)
        return
    if identity_name is not None:
        raise click.UsageError("--identity goes with --share")
    if foreground or ready_fd is not None:
        _mount_here(state, vault, mountpoint, read_only, allow_other, audit, passphrase_file, passphrase_fd, ready_fd,
                    xattr=not no_xattr, versions=versions, cache_timeout=cache_timeout)
        return
    vault_mod.read_config(vault)
    check_fuse()
    check_mountpoint(mountpoint)
    secret = passphrase.read_fd(passphrase_fd) if passphrase_fd is not None else passphrase.get(passphrase_file)
    _spawn_mount(state, vault, mountpoint, read_only, allow_other, audit, secret, xattr=not no_xattr, keep_versions=keep_versions,
                 cache_timeout=cache_timeout)


def _mount_here(
    state: State, vault: Path, mountpoint: Path, read_only: bool, allow_other: bool, audit_mode: str,
    passphrase_file: Path | None, passphrase_fd: int | None, ready_fd: int | None, xattr: bool = True,
    versions: versions_mod.Limits | None = versions_mod.DEFAULT_LIMITS, cache_timeout: float = 1.0,
) -> None:
    try:
        config = vault_mod.read_config(vault)
        secret = passphrase.read_fd(passphrase_fd) if passphrase_fd is not None else passphrase.get(passphrase_file)
        if audit_mode == "auto":
            audit_mode = "best-effort" if ledger_path(state.home).exists() else "off"
        sink = None
        if audit_mode != "off":
            sink = audit.AuditSink(state.home, vault_mod.vault_id(config), required=audit_mode == "required")
        try:
            unlocked = vault_mod.unlock(vault, secret)
        except WrongPassphrase as exc:
            if sink:  # failed unlocks go on the record too
                sink.emit("unlock", pid=os.getpid(), path=str(vault), result=exc.errno)
                sink.close(timeout=1.0)
            raise
        del secret
        state.register_mount(mountpoint, vault, read_only, source=sink.source if sink else "",
                             vault_id=unlocked.vault_id)
        # The control socket holds the only reference to the unlocked vault, so `lock` can drop it.
        control = ControlSpec(state.control_path(mountpoint), state.home, vault=unlocked)
        del unlocked
        try:
            if sink:
                sink.emit("unlock", pid=os.getpid(), path=str(vault))
                sink.emit("mount", pid=os.getpid(), path=str(mountpoint), path2=str(vault), detail={"read_only": read_only})
            serve(
                control.vault, mountpoint, read_only=read_only, allow_other=allow_other, events=sink,  # type: ignore[arg-type]
                ready=lambda: detach.report(ready_fd, "ok"), xattr=xattr, control=control,
                versions=versions, cache_timeout=cache_timeout,
            )
        finally:
            state.unregister_mount(mountpoint)
            if sink:
                sink.emit("unmount", pid=os.getpid(), path=str(mountpoint), path2=str(vault))
                sink.close()
    except exitcodes.PROJECT_ERRORS as exc:
        detach.report(ready_fd, f"err {exitcodes.for_error(exc)} {exc}")
        raise


def _spawn_mount(state: State, vault: Path, mountpoint: Path, read_only: bool, allow_other: bool, audit_mode: str, secret: bytes,
                 xattr: bool = True, keep_versions: str = "2G,7d", cache_timeout: float = 1.0) -> None:
    args = ["--home", str(state.home), "mount", str(vault), str(mountpoint), "--audit", audit_mode, "--keep-versions", keep_versions,
            "--cache-timeout", repr(cache_timeout)]
    if not xattr:
        args.append("--no-xattr")
    if read_only:
        args.append("--read-only")
    if allow_other:
        args.append("--allow-other")
    detach.spawn(args, secret, state.log_path(mountpoint), "mount")


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
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(mountpoint)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "fusermount3 failed"
        if "busy" in detail.lower():
            raise MountpointError(f"{mountpoint}: busy (a file or directory in it is in use); close it or use --lazy")
        raise MountpointError(f"{mountpoint}: {detail}")
    if record and not lazy and not detach.wait_for_exit(int(record["pid"]), 60.0):
        raise MountpointError(f"mount process {record['pid']} did not exit within 60s")


@click.command()
@click.argument("vault", type=click.Path(path_type=Path))
@passphrase_file_option
@click.option("--new-passphrase-file", type=click.Path(dir_okay=False, path_type=Path), help="New passphrase (else $UMBRAFS_NEW_PASSPHRASE, else a prompt).")
def passwd(vault: Path, passphrase_file: Path | None, new_passphrase_file: Path | None) -> None:
    """Change the passphrase of VAULT (no data is re-encrypted)."""
    vault_mod.read_config(vault)
    old = passphrase.get(passphrase_file, prompt="Current passphrase")
    vault_mod.unlock(vault, old)  # fail on a wrong passphrase before asking for the new one
    new = passphrase.get(new_passphrase_file, env="UMBRAFS_NEW_PASSPHRASE", confirm=True, prompt="New passphrase")
    vault_mod.change_passphrase(vault, old, new)
    click.echo(f"passphrase of {vault} changed")


@click.command()
@click.argument("vault", type=click.Path(path_type=Path))
@passphrase_file_option
def fsck(vault: Path, passphrase_file: Path | None) -> None:
    """Decrypt every header, name and block of VAULT offline and report damage.

    Exit code 0: no damage; 16: damage found (listed on stdout). Copies (two objects
    with one id, e.g. a sync tool's) are listed too but are not damage.
    """
    vault_mod.read_config(vault)
    unlocked = vault_mod.unlock(vault, passphrase.get(passphrase_file))
    report = fsck_mod.check(unlocked)
    for problem in report.problems:
        click.echo(f"DAMAGED {problem.plain_path} (backing {problem.backing_path}): {problem.message}")
    for copy in report.copies:
        click.echo(f"COPY {copy.plain_path} (backing {copy.backing_path}): {copy.message}")
    click.echo(
        f"checked {report.dirs} directories, {report.files} files ({report.plain_bytes} bytes), "
        f"{report.symlinks} symlinks, {report.others} other: "
        + ("no damage" if report.ok else f"{len(report.problems)} problem(s)")
        + (f", {len(report.copies)} copies" if report.copies else "")
    )
    if not report.ok:
        sys.exit(exitcodes.DAMAGE)


COMMANDS = [init, mount, unmount, passwd, fsck]
