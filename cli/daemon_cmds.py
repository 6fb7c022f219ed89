"""`umbrafs daemon start|status|stop`: the audit daemon's lifecycle."""
from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path

import click

from wire import daemonclient as client
from daemon.paths import running_pid
from wire.errors import DaemonError, DaemonUnavailable

from cli import common, detach, exitcodes, passphrase
from cli.state import State


@click.group()
def daemon() -> None:
    """The audit daemon: keeps the ledger of every access to your mounts."""


@daemon.command()
@click.option("-f", "--foreground", is_flag=True, help="Stay attached and log to stderr.")
@common.identity_option
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path), help="The identity's passphrase (else $UMBRAFS_PASSPHRASE, else a prompt).")
@click.option("--passphrase-fd", type=int, hidden=True)
@click.option("--ready-fd", type=int, hidden=True)
@click.pass_obj
def start(
    state: State, foreground: bool, identity: str | None, passphrase_file: Path | None,
    passphrase_fd: int | None, ready_fd: int | None,
) -> None:
    """Start the daemon (returns once it listens); its checkpoints are signed by IDENTITY."""
    state.ensure()
    pid = running_pid(state.home)
    if pid is not None:
        if ready_fd is not None:
            detach.report(ready_fd, f"err 1 a daemon is already running (pid {pid})")
            raise SystemExit(1)
        click.echo(f"daemon already running (pid {pid})")
        return
    name = common.resolve_identity(state, identity)
    if not foreground and ready_fd is None:
        secret = passphrase.get(passphrase_file, prompt=f"Passphrase of identity {name}")
        common.unlock_identity(state, name, secret)  # a wrong passphrase fails here, not in the child
        detach.spawn(["--home", str(state.home), "daemon", "start", "--identity", name], secret,
                     state.logs_dir / "daemon.log", "daemon")
        click.echo(f"daemon started (pid {running_pid(state.home)})")
        return
    try:
        secret = passphrase.read_fd(passphrase_fd) if passphrase_fd is not None else passphrase.get(passphrase_file)
        signer = common.unlock_identity(state, name, secret).ed25519_sk
        from daemon import service  # the ledger and its dependencies load only here
        from daemon.respond import load_guard

        guard = load_guard(state.home, name, secret)  # `daemon credential` made one: revoke can act
        del secret
        asyncio.run(service.run(state.home, signer, ready=lambda: detach.report(ready_fd, "ok"), guard=guard))
    except exitcodes.PROJECT_ERRORS as exc:
        detach.report(ready_fd, f"err {exitcodes.for_error(exc)} {exc}")
        raise


@daemon.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_obj
def status(state: State, as_json: bool) -> None:
    """Is the daemon running, how big is the ledger, which mounts are connected."""
    reply = client.request(state.home, {"type": "status"})
    if as_json:
        click.echo(json.dumps(reply, indent=2, sort_keys=True))
        return
    started = datetime.datetime.fromtimestamp(reply["started"]).isoformat(timespec="seconds")
    click.echo(f"running (pid {reply['pid']}, since {started})")
    click.echo(f"ledger: {reply['ledger']} ({reply['entries']} entries)")
    click.echo(f"connected sources: {len(reply['sources'])}; spooled sources: {len(reply['spooled_sources'])}")


@daemon.command()
@click.pass_obj
def stop(state: State) -> None:
    """Stop the daemon: it stores what is spooled, checkpoints, and exits."""
    pid = running_pid(state.home)
    if pid is None:
        raise DaemonUnavailable("the audit daemon is not running")
    client.request(state.home, {"type": "stop"})
    if not detach.wait_for_exit(pid, 60.0):
        raise DaemonError(f"daemon (pid {pid}) did not exit within 60s")
    click.echo("daemon stopped")


@daemon.command()
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_obj
def train(state: State, as_json: bool) -> None:
    """Refit every user's baseline from the ledger's history now (the daemon also does it by itself)."""
    reply = client.request(state.home, {"type": "train"}, timeout=600.0)
    if as_json:
        click.echo(json.dumps(reply, indent=2, sort_keys=True))
        return
    for user, info in sorted(reply["users"].items()):
        click.echo(f"{user}: {info['windows']} windows over {info['days']} day(s), "
                   + ("model trained" if info["trained"] else "below the minimum: rules only"))
    click.echo(f"fitted in {reply['fit_ms']} ms")


@daemon.command()
@common.identity_option
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path), help="The identity's passphrase (else $UMBRAFS_PASSPHRASE, else a prompt).")
@common.kdf_options
@click.pass_obj
def credential(state: State, identity: str | None, passphrase_file: Path | None, kdf_memory_kib: int,
               kdf_iterations: int, kdf_lanes: int) -> None:
    """Make the daemon's guard key (for `revoke` responses); prints the public file an admin registers with
    `umbrafs proxy register URL FILE --role guard --scope RECIPIENT`."""
    from proxy import keyring as identity_mod
    from daemon.respond import guard_home, guard_name

    state.ensure()
    name = common.resolve_identity(state, identity)
    secret = passphrase.get(passphrase_file, prompt=f"Passphrase of identity {name}")
    common.unlock_identity(state, name, secret)  # wrapped under the same passphrase the daemon starts with
    home = guard_home(state.home)
    home.mkdir(mode=0o700, exist_ok=True)
    guard = guard_name(name)
    if not identity_mod.identity_path(home, guard).exists():
        identity_mod.create(home, guard, secret, common.kdf_params(identity_mod.KdfParams, kdf_memory_kib, kdf_iterations, kdf_lanes))
    public = home / f"{guard}.pub"
    public.write_text(identity_mod.export_public(home, guard), encoding="utf-8")
    click.echo(str(public))


COMMANDS = [daemon]
