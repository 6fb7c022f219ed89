"""`umbrafs restore`: roll back what a process did, from the versions the mount kept (docs/versions.md)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import click

from wire import clock
from wire.mountsock import MountControlError, MountInfo, list_mounts, request
from fs.mount.control import restore as control_restore
from fs.vault import restore as restore_mod
from fs.vault import config as vault_mod
from fs.vault import versions as versions_mod
from fs.errors import MountpointError, NotAVault
from wire.procfs import mounted_paths

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


def _find_mount(state: State, target: Path) -> tuple[Path, MountInfo | None]:
    """(vault path, live mount of it or None) for a vault directory or a mountpoint."""
    target = target.absolute()
    mounts = list_mounts(state.home)
    info = next((m for m in mounts if m.mountpoint == str(target)), None)  # first: a locked mount answers EACCES
    if info is not None:
        if info.share_id:
            raise MountpointError(f"{target}: a share mount; only the owner's versions can be restored")
        return Path(info.vault), info
    if str(target) not in mounted_paths() and os.path.isfile(target / "vault.json"):
        return target, next((m for m in mounts if os.path.abspath(m.vault) == str(target) and not m.share_id), None)
    if str(target) in mounted_paths():
        raise MountpointError(f"{target}: mounted, but not by this state directory (use --home)")
    raise NotAVault(f"{target}: neither a vault nor an umbrafs mountpoint")


def _prepare_mount(info: MountInfo, secret: bytes, unlock: bool) -> None:
    """Make sure the mount serves (unlock it if asked) and has written its buffered records."""
    try:
        status = request(info, {"type": "status"}, 2.0)
        if status.get("locked"):
            if not unlock:
                raise MountpointError(f"{info.mountpoint}: the mount is locked ({status.get('lock_reason') or 'no reason'}); "
                                      "stop the offending process, then add --unlock")
            reply = request(info, {"type": "unlock", "passphrase": secret.decode("utf-8")}, 60.0)
            if reply.get("type") != "unlocked":
                raise MountpointError(f"{info.mountpoint}: unlock failed: {reply.get('message', reply.get('code'))}")
        reply = request(info, {"type": "versions-flush"}, 5.0)
        if reply.get("type") != "versions-flushed":
            time.sleep(1.5)  # an older mount: wait out its one-second record buffer
        elif not reply.get("enabled"):
            click.echo(f"umbrafs: warning: {info.mountpoint} keeps no versions (mounted with --keep-versions off)", err=True)
    except MountControlError:
        time.sleep(1.5)  # no control socket: wait out the mount's one-second record buffer


def _tag_restore(info: MountInfo | None, root_wrap_key: bytes, begin: bool) -> None:
    """Have the mount tag this process's events as a restore, so the detector does not take the
    undoing for another attack (fs/mount/control/restore.py); the proof needs the vault key."""
    if info is None or not info.source:
        return
    message: dict[str, str] = {"type": "restore-end"}
    if begin:
        message = {"type": "restore-begin", "proof": control_restore.proof(root_wrap_key, info.source, os.getpid())}
    try:
        reply = request(info, message, 5.0)
    except MountControlError as exc:
        reply = {"message": str(exc)}
    if begin and reply.get("type") != "restore-begun":
        click.echo(f"umbrafs: warning: the restore's own changes are not marked for the detector "
                   f"({reply.get('message', reply.get('type'))})", err=True)


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
    vault_path, info = _find_mount(state, target)
    vault_mod.read_config(vault_path)
    secret = passphrase.get(passphrase_file)
    unlocked = vault_mod.unlock(vault_path, secret)
    if info is not None:
        _prepare_mount(info, secret, unlock)
    records, damaged = versions_mod.read_records(vault_path, unlocked.root_wrap_key)
    if damaged:
        click.echo(f"umbrafs: warning: {damaged} damaged record frame(s) in the versions area were skipped", err=True)
    steps = restore_mod.plan(records, selection)
    if dry_run:
        for step in steps:
            click.echo(json.dumps(step.public(), sort_keys=True) if as_json else step.describe())
        lost = sum(1 for s in steps if s.record is not None and not s.record.available)
        if as_json:
            click.echo(json.dumps({"summary": {"steps": len(steps), "lost": lost, "dry_run": True}}))
        else:
            click.echo(f"{len(steps)} step(s) planned" + (f", {lost} version(s) no longer kept" if lost else "") + " (dry run)")
        return
    if not steps:
        click.echo(json.dumps({"summary": restore_mod.summarize([])}) if as_json else "nothing to restore")
        return
    temp: tuple[Path, int] | None = None
    if info is None:
        temp = _temporary_mount(state, vault_path, secret)
    mountpoint = Path(info.mountpoint) if info is not None else temp[0]  # type: ignore[index]
    del secret

    def progress(outcome: restore_mod.Outcome) -> None:
        if as_json:
            click.echo(json.dumps(outcome.public(), sort_keys=True))
        elif outcome.result != "ok":
            click.echo(f"{outcome.step.describe()}: {outcome.result}")

    live = info if info is not None else next((m for m in list_mounts(state.home) if m.mountpoint == str(mountpoint)), None)
    _tag_restore(live, unlocked.root_wrap_key, True)
    try:
        outcomes = restore_mod.MountExecutor(mountpoint, unlocked).run(steps, progress)
    finally:
        _tag_restore(live, unlocked.root_wrap_key, False)
        if temp is not None:
            _temporary_unmount(*temp)
        else:
            with contextlib.suppress(MountControlError):  # the restore's own records, on disk now
                request(info, {"type": "versions-flush"}, 5.0)  # type: ignore[arg-type]
    counts = restore_mod.summarize(outcomes)
    if as_json:
        click.echo(json.dumps({"summary": counts}))
    else:
        click.echo(", ".join(f"{n} {what}" for what, n in counts.items() if n or what == "restored"))
    if counts["lost"] or counts["skipped"] or counts["errors"]:
        sys.exit(exitcodes.RESTORE_INCOMPLETE)


COMMANDS = [restore]
