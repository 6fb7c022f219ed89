"""Commands on a vault: init, mount, unmount, passwd, fsck."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from fs import fsck as fsck_mod
from fs import vault as vault_mod
from fs.errors import MountpointError, UmbrafsError
from fs.mount import check_fuse, check_mountpoint, mounted_paths, serve

from . import exitcodes, passphrase
from .state import State

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
@passphrase_file_option
@click.option("--passphrase-fd", type=int, help="Read the passphrase from this file descriptor until EOF.")
@click.option("--ready-fd", type=int, hidden=True)
@click.pass_obj
def mount(
    state: State, vault: Path, mountpoint: Path, foreground: bool, read_only: bool, allow_other: bool,
    passphrase_file: Path | None, passphrase_fd: int | None, ready_fd: int | None,
) -> None:
    """Mount VAULT on MOUNTPOINT; returns once the mount is ready."""
    vault, mountpoint = vault.absolute(), mountpoint.absolute()
    state.ensure()
    if foreground or ready_fd is not None:
        _mount_here(state, vault, mountpoint, read_only, allow_other, passphrase_file, passphrase_fd, ready_fd)
        return
    vault_mod.read_config(vault)
    check_fuse()
    check_mountpoint(mountpoint)
    secret = passphrase.read_fd(passphrase_fd) if passphrase_fd is not None else passphrase.get(passphrase_file)
    _spawn_mount(state, vault, mountpoint, read_only, allow_other, secret)


def _mount_here(
    state: State, vault: Path, mountpoint: Path, read_only: bool, allow_other: bool,
    passphrase_file: Path | None, passphrase_fd: int | None, ready_fd: int | None,
) -> None:
    def report(message: str) -> None:
        if ready_fd is not None:
            os.write(ready_fd, message.encode("utf-8", "replace") + b"\n")
            os.close(ready_fd)

    try:
        vault_mod.read_config(vault)
        secret = passphrase.read_fd(passphrase_fd) if passphrase_fd is not None else passphrase.get(passphrase_file)
        unlocked = vault_mod.unlock(vault, secret)
        del secret
        state.register_mount(mountpoint, vault, read_only)
        try:
            serve(unlocked, mountpoint, read_only=read_only, allow_other=allow_other, ready=lambda: report("ok"))
        finally:
            state.unregister_mount(mountpoint)
    except UmbrafsError as exc:
        report(f"err {exitcodes.for_error(exc)} {exc}")
        raise


def _spawn_mount(state: State, vault: Path, mountpoint: Path, read_only: bool, allow_other: bool, secret: bytes) -> None:
    """Run the mount in a detached child; the passphrase travels through a pipe."""
    pw_r, pw_w = os.pipe()
    ready_r, ready_w = os.pipe()
    os.write(pw_w, secret)
    os.close(pw_w)
    cmd = [sys.executable, "-m", "cli", "--home", str(state.home), "mount", str(vault), str(mountpoint),
           "--passphrase-fd", str(pw_r), "--ready-fd", str(ready_w)]
    if read_only:
        cmd.append("--read-only")
    if allow_other:
        cmd.append("--allow-other")
    log_path = state.log_path(mountpoint)
    # The passphrase went through the pipe: keep it out of the long-lived child's environment.
    child_env = {k: v for k, v in os.environ.items() if k not in ("UMBRAFS_PASSPHRASE", "UMBRAFS_NEW_PASSPHRASE")}
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(
            cmd, pass_fds=(pw_r, ready_w), stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True, cwd="/", env=child_env,
        )
    os.close(pw_r)
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        message = ready.read().decode("utf-8", "replace").strip()
    if message == "ok":
        return
    if message.startswith("err "):
        _, code, text = message.split(" ", 2)
        click.echo(f"umbrafs: {text}", err=True)
        sys.exit(int(code))
    child.wait(timeout=10)
    raise click.ClickException(f"the mount process exited ({child.returncode}); see {log_path}")


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
    if record and not lazy:
        _wait_for_exit(int(record["pid"]), 60.0)


def _exited(pid: int) -> bool:
    """Gone, or a zombie: the detached mount process is reparented to init, and
    a slow init (containers) leaves it a zombie for seconds after it has exited."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.ESRCH
    return False


def _wait_for_exit(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _exited(pid):
            return
        time.sleep(0.02)
    raise MountpointError(f"mount process {pid} did not exit within {timeout:.0f}s")


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

    Exit code 0: no damage; 16: damage found (listed on stdout).
    """
    vault_mod.read_config(vault)
    unlocked = vault_mod.unlock(vault, passphrase.get(passphrase_file))
    report = fsck_mod.check(unlocked)
    for problem in report.problems:
        click.echo(f"DAMAGED {problem.plain_path} (backing {problem.backing_path}): {problem.message}")
    click.echo(
        f"checked {report.dirs} directories, {report.files} files ({report.plain_bytes} bytes), "
        f"{report.symlinks} symlinks, {report.others} other: "
        + ("no damage" if report.ok else f"{len(report.problems)} problem(s)")
    )
    if not report.ok:
        sys.exit(exitcodes.DAMAGE)


COMMANDS = [init, mount, unmount, passwd, fsck]
