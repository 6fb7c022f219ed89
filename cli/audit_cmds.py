"""`umbrafs audit log|verify|prove|check-proof|export`: reading the ledger.

These read the SQLite file directly (read-only; WAL lets them run beside the
daemon), so they work whether or not the daemon is up.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import sys
from pathlib import Path

import click

from wire import daemonclient as client
from wire.errors import DaemonError
from daemon.paths import anchor_path, ledger_path, saved_vault_anchors
from ledger.errors import LedgerError
from ledger.events import OPS

from cli import common, exitcodes
from cli.common import parse_since, parse_user
from cli.state import State

def _ledger(state: State) -> Path:
    path = ledger_path(state.home)
    if not path.exists():
        raise click.ClickException(f"no ledger at {path} (start the daemon with `umbrafs daemon start`)")
    return path


@click.group()
def audit() -> None:
    """Read, verify and export the tamper-evident access ledger."""


def _describe(idx: int, event) -> str:  # type: ignore[no-untyped-def]
    when = datetime.datetime.fromtimestamp(event.time_ns / 1e9).isoformat(sep=" ", timespec="milliseconds")
    who = f"uid {event.uid} {event.comm or '?'}[{event.pid}]"
    where = event.path + (f" -> {event.path2}" if event.path2 else "")
    extra = ""
    if event.op == "access":
        # Re-reads from the kernel's page cache never reach the mount: hence the file size too.
        extra = (f" {event.detail.get('mode', '?')} of {event.detail.get('size', '?')} B: read {event.bytes_read} B"
                 f" in {event.reads}, wrote {event.bytes_written} B in {event.writes}")
    if event.op == "setattr" and "changed" in event.detail:
        extra = f" ({event.detail['changed']})"
    return f"{idx:>8} {when} {event.op:<8} {event.result:<6} {who} {where}{extra}"


@audit.command("log")
@click.option("--since", "since", metavar="T", help="Only events after T (30m, 2h, 7d, or an ISO date/time).")
@click.option("--path", "path_prefix", metavar="P", help="Only events on P or below it (vault-relative, e.g. /projects).")
@click.option("--op", type=click.Choice(sorted(OPS)), help="Only this kind of event.")
@click.option("--user", metavar="U", help="Only events caused by this user (name or uid).")
@click.option("--limit", type=click.IntRange(1), help="At most this many (the latest).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def log_cmd(state: State, since: str | None, path_prefix: str | None, op: str | None, user: str | None, limit: int | None, as_json: bool) -> None:
    """List ledger entries, oldest first."""
    from ledger import store

    conn = store.open_readonly(_ledger(state))
    try:
        rows = store.entries(
            conn, since_ns=parse_since(since) if since else None, path_prefix=path_prefix, op=op,
            uid=parse_user(user) if user else None, limit=limit,
        )
        for idx, event in rows:
            if as_json:
                click.echo(json.dumps({"idx": idx, **event.to_dict()}, sort_keys=True))
            else:
                click.echo(_describe(idx, event))
    finally:
        conn.close()


@audit.command()
@common.identity_option
@click.pass_obj
def verify(state: State, identity: str | None) -> None:
    """Check every entry, the Merkle tree, every checkpoint signature and the anchored checkpoint.

    Exit code 0 only if all hold; 21 (and the first bad entry) otherwise.
    """
    from ledger.verify import verify as verify_ledger

    with contextlib.suppress(DaemonError):
        client.request(state.home, {"type": "checkpoint"})  # a running daemon signs what it has so far

    report = verify_ledger(_ledger(state), common.signing_public_key(state, identity), anchors=[anchor_path(state.home), *saved_vault_anchors(state.home)])
    for problem in report.problems:
        click.echo(f"PROBLEM {problem}")
    if report.ok:
        click.echo(f"ledger ok: {report.entries} entries, {report.checkpoints} signed checkpoints")
        return
    where = f" (first bad entry {report.first_bad})" if report.first_bad is not None else ""
    click.echo(f"umbrafs: ledger verification failed{where}: {report.reason}", err=True)
    sys.exit(exitcodes.LEDGER_INVALID)


@audit.command()
@click.argument("idx", type=click.IntRange(0))
@click.option("--size", type=click.IntRange(1), help="Prove against the tree of this size (default: the latest checkpoint).")
@click.pass_obj
def prove(state: State, idx: int, size: int | None) -> None:
    """Print an inclusion proof (JSON) of entry IDX; check it with `audit check-proof` or docs/ledger.md."""
    from ledger import store

    conn = store.open_readonly(_ledger(state))
    try:
        doc = store.inclusion_proof(conn, idx, size)
    except (IndexError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        conn.close()
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


@audit.command("check-proof")
@click.argument("proof_file", type=click.File("r"))
@common.identity_option
@click.pass_obj
def check_proof(state: State, proof_file, identity: str | None) -> None:  # type: ignore[no-untyped-def]
    """Check an inclusion proof made by `audit prove` against the signed checkpoint it names."""
    from ledger import store

    try:
        doc = json.load(proof_file)
        ok = store.check_inclusion_proof(doc, common.signing_public_key(state, identity))
    except (ValueError, KeyError, TypeError) as exc:
        raise click.ClickException(f"not an inclusion proof: {exc}") from None
    if not ok:
        click.echo("umbrafs: the proof does NOT hold", err=True)
        sys.exit(exitcodes.LEDGER_INVALID)
    click.echo(f"proof holds: entry {doc['idx']} is in the signed tree of size {doc['size']}")


@audit.command()
@click.argument("saved", type=click.File("rb"))
@common.identity_option
@click.option("--json", "as_json", is_flag=True, help="Print the proof document too.")
@click.pass_obj
def consistency(state: State, saved, identity: str | None, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    """Prove the ledger only grew since SAVED, a checkpoint you kept (e.g. a copy of an anchor file).

    Checks both signatures and an RFC 6962 consistency proof from SAVED to the latest checkpoint;
    exit 21 if the ledger was rewritten, cut or forked since.
    """
    from ledger import merkle, read, store
    from ledger.checkpoint import Checkpoint, verify_checkpoint

    public_key = common.signing_public_key(state, identity)
    try:
        old = Checkpoint.from_json(saved.read())
    except (ValueError, LedgerError) as exc:
        raise click.ClickException(f"{saved.name}: not a checkpoint: {exc}") from None
    with contextlib.suppress(DaemonError):
        client.request(state.home, {"type": "checkpoint"})
    conn = store.open_readonly(_ledger(state))
    try:
        new = read.latest_checkpoint(conn)
        proof = store.consistency_proof(conn, old.size, new.size) if new and new.size >= old.size else []
    finally:
        conn.close()
    problem = None
    if not verify_checkpoint(old, public_key):
        problem = f"{saved.name} is not signed by this identity"
    elif new is None or not verify_checkpoint(new, public_key):
        problem = "the ledger has no validly signed checkpoint"
    elif new.size < old.size:
        problem = f"the ledger's latest checkpoint covers {new.size} entries, fewer than the {old.size} you saved: it was cut or replaced"
    elif not merkle.verify_consistency(old.size, new.size, old.root, new.root, proof):
        problem = f"the first {old.size} entries are not the ones you saved a checkpoint of: the ledger was rewritten"
    if as_json:
        click.echo(json.dumps({"old": old.to_dict(), "new": new.to_dict() if new else None,
                               "proof": [h.hex() for h in proof], "holds": problem is None}, indent=2, sort_keys=True))
    if problem:
        click.echo(f"umbrafs: consistency does NOT hold: {problem}", err=True)
        sys.exit(exitcodes.LEDGER_INVALID)
    click.echo(f"consistent: the ledger grew from {old.size} to {new.size} entries without changing the first {old.size}")


@audit.command()
@click.pass_obj
def export(state: State) -> None:
    """Every entry and checkpoint as JSON lines (for a SIEM), in ledger order."""
    with contextlib.suppress(DaemonError):
        client.request(state.home, {"type": "checkpoint"})
    from ledger import store

    conn = store.open_readonly(_ledger(state))
    try:
        for record in store.export(conn):
            click.echo(json.dumps(record, sort_keys=True))
    finally:
        conn.close()


COMMANDS = [audit]
