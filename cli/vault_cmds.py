"""Commands on a vault: init, passwd, fsck (mount and unmount: cli/mount_cmds.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from fs.vault import config as vault_mod
from fs.vault import fsck as fsck_mod

from cli import common, exitcodes, passphrase


@click.command()
@click.argument("vault", type=click.Path(path_type=Path))
@common.vault_passphrase_option
@common.kdf_options
def init(vault: Path, passphrase_file: Path | None, kdf_memory_kib: int, kdf_iterations: int, kdf_lanes: int) -> None:
    """Create a new vault in VAULT (a missing or empty directory)."""
    kdf = common.kdf_params(vault_mod.KdfParams, kdf_memory_kib, kdf_iterations, kdf_lanes)
    vault_mod.check_new(vault)  # before prompting
    secret = passphrase.get(passphrase_file, confirm=True, prompt="New passphrase")
    vault_mod.create(vault, secret, kdf)
    click.echo(f"created vault {vault}")


@click.command()
@click.argument("vault", type=click.Path(path_type=Path))
@common.vault_passphrase_option
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
@common.vault_passphrase_option
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


COMMANDS = [init, passwd, fsck]
