"""`umbrafs restore`: roll back what a process did, from the versions the mount kept (docs/versions.md)."""
from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import click

from wire import clock
from fs.vault import restore as restore_mod
from fs.vault import restore_driver
from fs.vault import config as vault_mod
from fs.vault import versions as versions_mod

from cli import common, detach, exitcodes, passphrase
from cli.common import parse_since, parse_user
from cli.state import State

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str) -> int:
    """ns since the epoch from an integer of ns, '30m'/'2h' (before the events' clock's now), or ISO."""
    text = text.strip()
    if text.isdigit() and len(text) > 12:
        return int(text)
    m = _RELATIVE.match(text)
    if m:  # relative to the clock the mount stamps records with (it may be simulated)
        return clock.now_ns() - int(m.group(1)) * _UNIT[m.group(2)] * 1_000_000_000
    return parse_since(text)


def _temporary_mount(state: State, vault: Path, secret: bytes) -> tuple[Path, int]:
    mountpoint = Path(tempfile.mkdtemp(prefix="umbrafs-restore-"))
    try:
        common.spawn_mount(state, vault, mountpoint, False, False, "auto", secret)
    except BaseException:
        mountpoint.rmdir()
        raise
    record = state.mount_record(mountpoint) or {}
    return mountpoint, int(record.get("pid", 0))


def _temporary_unmount(mountpoint: Path, pid: int) -> None:
    common.unmount_quietly(mountpoint)
    if pid:
        detach.wait_for_exit(pid, 60.0)
    try:
        mountpoint.rmdir()
    except OSError:
        pass


@click.command()
@click.argument("target", metavar="MOUNTPOINT|VAULT", type=click.Path(path_type=Path))
@click.option("--since", required=True, metavar="T", help="Undo changes from T on: 30m, 2h, 7d, an ISO date/time, or ns since the epoch.")
@click.option("--until", metavar="T", help="... up to T (default: now).")
@click.option("--pid", "pids", type=int, multiple=True, help="Only what this process did (repeatable).")
@click.option("--comm", "comms", multiple=True, metavar="NAME", help="Only what processes of this name did (repeatable).")
@click.option("--uid", "uids", multiple=True, metavar="U", help="Only what this user (name or uid) did (repeatable).")
@click.option("--path", "path_prefix", metavar="PREFIX", help="Only at or below this path of the drive (e.g. /projects).")
@click.option("--dry-run", is_flag=True, help="List what would be done; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per step, then a summary.")
@click.option("--unlock", is_flag=True, help="If the mount was locked (e.g. by the anomaly detector), unlock it first.")
@common.vault_passphrase_option
@click.pass_obj
def restore(state: State, target: Path, since: str, until: str | None, pids: tuple[int, ...], comms: tuple[str, ...],
            uids: tuple[str, ...], path_prefix: str | None, dry_run: bool, as_json: bool, unlock: bool,
            passphrase_file: Path | None) -> None:
    """Put back, byte for byte, what processes changed or deleted since T; move away what they created.

    Works through the running mount of the vault (audited; whatever it replaces is itself kept
    as a version), or, when the vault is not mounted, through a private temporary mount.
    Exit code 0: everything done; 17: some version was no longer kept or a step was skipped.
    """
    selection = restore_mod.Selection(
        since_ns=parse_time(since), until_ns=parse_time(until) if until else None, pids=frozenset(pids),
        comms=frozenset(comms), uids=frozenset(parse_user(u) for u in uids), path_prefix=path_prefix or "",
    )
    vault_path, info = restore_driver.find(state.home, target)
    vault_mod.read_config(vault_path)
    secret = passphrase.get(passphrase_file)
    unlocked = vault_mod.unlock(vault_path, secret)
    if info is not None:
        for text in restore_driver.prepare(info, secret, unlock):
            common.warn(text)
    records, damaged = versions_mod.read_records(vault_path, unlocked.root_wrap_key)
    if damaged:
        common.warn(f"{damaged} damaged record frame(s) in the versions area were skipped")
    steps = restore_mod.plan(records, selection)
    if dry_run or not steps:
        _report_plan(steps, as_json, dry_run)
        return
    temp = _temporary_mount(state, vault_path, secret) if info is None else None
    del secret
    mountpoint = Path(info.mountpoint) if info is not None else temp[0]  # type: ignore[index]

    def progress(outcome: restore_mod.Outcome) -> None:
        if as_json:
            click.echo(json.dumps(outcome.public(), sort_keys=True))
        elif outcome.result != "ok":
            click.echo(f"{outcome.step.describe()}: {outcome.result}")

    try:
        outcomes = restore_driver.run(state.home, mountpoint, unlocked, steps, progress, common.warn)
    finally:
        if temp is not None:
            _temporary_unmount(*temp)
    counts = restore_mod.summarize(outcomes)
    click.echo(json.dumps({"summary": counts}) if as_json else
               ", ".join(f"{n} {what}" for what, n in counts.items() if n or what == "restored"))
    if counts["lost"] or counts["skipped"] or counts["errors"]:
        sys.exit(exitcodes.RESTORE_INCOMPLETE)


def _report_plan(steps: list[restore_mod.Step], as_json: bool, dry_run: bool) -> None:
    if not dry_run:
        click.echo(json.dumps({"summary": restore_mod.summarize([])}) if as_json else "nothing to restore")
        return
    for step in steps:
        click.echo(json.dumps(step.public(), sort_keys=True) if as_json else step.describe())
    lost = sum(1 for s in steps if s.record is not None and not s.record.available)
    if as_json:
        click.echo(json.dumps({"summary": {"steps": len(steps), "lost": lost, "dry_run": True}}))
    else:
        click.echo(f"{len(steps)} step(s) planned" + (f", {lost} version(s) no longer kept" if lost else "") + " (dry run)")


COMMANDS = [restore]
