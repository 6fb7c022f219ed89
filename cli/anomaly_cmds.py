"""`umbrafs anomalies [ack ID]` and `umbrafs policy set|show` (docs/anomaly.md).

The list reads the ledger directly (read-only, like `audit log`), so it works with the daemon
up or down; an ack is an `ack` event delivered like any other (spooled if the daemon is down).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any

import click

from daemon.paths import ledger_path

from cli import common, passphrase
from cli.common import parse_since
from cli.state import State

log = logging.getLogger(__name__)


def _read_anomalies(state: State, since_ns: int | None) -> list[dict[str, Any]]:
    from ledger import read

    path = ledger_path(state.home)
    if not path.exists():
        raise click.ClickException(f"no ledger at {path} (start the daemon with `umbrafs daemon start`)")
    conn = read.open_readonly(path)
    try:
        found = [(idx, e) for idx, e in read.entries(conn, since_ns=since_ns, op="anomaly")]
        acks: dict[str, int] = {}
        for _, e in read.entries(conn, op="ack"):
            if isinstance(e.detail.get("id"), str):
                acks[e.detail["id"]] = e.time_ns
    finally:
        conn.close()
    rows = []
    for idx, e in found:
        d = dict(e.detail)
        features = {k[2:]: v for k, v in d.items() if k.startswith("f_")}
        rest = {k: v for k, v in d.items() if not k.startswith("f_")}
        rows.append({"idx": idx, "time_ns": e.time_ns, "vault": e.vault, **rest, "features": features,
                     "acked": rest.get("id") in acks, "acked_ns": acks.get(str(rest.get("id")))})
    return rows


def _when(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="seconds")


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--since", metavar="T", help="Only anomalies after T (30m, 2h, 7d, or an ISO date/time).")
@click.option("--unacked", is_flag=True, help="Only those nobody has acknowledged yet.")
@click.pass_context
def anomalies(ctx: click.Context, as_json: bool, since: str | None, unacked: bool) -> None:
    """Flagged behaviour: who, when, score, the features that drove it, the action taken."""
    if ctx.invoked_subcommand is not None:
        return
    state: State = ctx.obj
    rows = _read_anomalies(state, parse_since(since) if since else None)
    if unacked:
        rows = [r for r in rows if not r["acked"]]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, sort_keys=True))
        return
    if not rows:
        click.echo("no anomalies")
    for r in rows:
        why = r.get("rule") or "model"
        drivers = r.get("drivers") or ",".join(f"{k}={v}" for k, v in sorted(r["features"].items())[:4])
        outcome = r.get("action", "?") + ("" if r.get("action_result") == "ok" else f" ({r.get('action_result')})")
        click.echo(f"{r.get('id', '?')}  {_when(r['time_ns'])}  {r.get('user', '?'):<24} score {r.get('score', 0) / 1000:.2f}"
                   f"  {why:<11} {outcome} in {r.get('action_ms', '?')} ms  [{drivers}]"
                   f"{'  acked' if r['acked'] else ''}")


@anomalies.command()
@click.argument("anomaly_id")
@click.pass_obj
def ack(state: State, anomaly_id: str) -> None:
    """Mark anomaly ANOMALY_ID reviewed (an `ack` event; re-grant with `share` if it was revoked)."""
    rows = [r for r in _read_anomalies(state, None) if r.get("id") == anomaly_id]
    if not rows:
        raise click.ClickException(f"no anomaly {anomaly_id!r} in the ledger (see `umbrafs anomalies`)")
    if rows[0]["acked"]:
        click.echo(f"{anomaly_id} was already acknowledged")
        return
    from wire.sink import AuditSink

    sink = AuditSink(state.home, rows[0]["vault"])
    try:
        sink.emit("ack", pid=os.getpid(), detail={"id": anomaly_id, "user": str(rows[0].get("user", ""))})
    finally:
        sink.close(timeout=5)
    click.echo(f"acknowledged {anomaly_id}")


# -- policy ------------------------------------------------------------------------

@click.group()
def policy() -> None:
    """What the daemon does when it flags an anomaly in a vault: alert, lock, revoke or unmount."""


@policy.command("set")
@click.argument("where", type=click.Path(path_type=Path), metavar="VAULT_OR_MOUNTPOINT")
@click.option("--on-anomaly", "action", type=click.Choice(["alert", "lock", "revoke", "unmount"]), required=True,
              help="alert: ledger only; lock: the mount drops its keys; revoke: the share recipient's grants are "
                   "deleted at the proxies (and its mount locked); unmount: the mount goes away.")
@click.option("--threshold", type=click.FloatRange(0.5, 1.0), default=0.7, show_default=True,
              help="Model score (0.5 = ordinary … 1 = most unusual) from which the model acts.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The VAULT's passphrase (it signs the policy; else $UMBRAFS_PASSPHRASE, else a prompt).")
@click.pass_obj
def set_(state: State, where: Path, action: str, threshold: float, passphrase_file: Path | None) -> None:
    """Set the vault's response policy (signed with the vault's owner key, so only its owner can)."""
    from daemon import policy as policy_mod
    from fs.vault import config as vault_mod

    vault = common.vault_of(state, where)
    unlocked = vault_mod.unlock(vault, passphrase.get(passphrase_file, prompt="Vault passphrase"))
    data = policy_mod.make(vault, unlocked.owner_key, action, int(round(threshold * 1000)))
    policy_mod.write(vault, data)
    with contextlib.suppress(Exception):  # best effort: the policy is in force whether or not this is recorded
        from wire.sink import AuditSink

        sink = AuditSink(state.home, unlocked.vault_id)
        try:
            sink.emit("policy", pid=os.getpid(), path=str(vault),
                      detail={"on_anomaly": action, "threshold": int(round(threshold * 1000))})
        finally:
            sink.close(timeout=2)
    click.echo(f"policy of {vault}: on anomaly {action}, model threshold {threshold:.2f}")


@policy.command()
@click.argument("where", type=click.Path(path_type=Path), metavar="VAULT_OR_MOUNTPOINT")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(state: State, where: Path, as_json: bool) -> None:
    """Show the vault's policy and whether its signature holds."""
    from daemon import policy as policy_mod

    vault = common.vault_of(state, where)
    path = policy_mod.policy_path(vault)
    if not path.exists():
        doc: dict[str, Any] = {**policy_mod.Policy().to_dict(), "vault": str(vault), "valid": True}
    else:
        try:
            pol, _ = policy_mod.verify(vault, policy_mod.read_regular(path, policy_mod.MAX_FILE))
            doc = {**pol.to_dict(), "vault": str(vault), "valid": True}
        except policy_mod.PolicyError as exc:
            doc = {"vault": str(vault), "valid": False, "error": str(exc)}
        except OSError as exc:
            doc = {"vault": str(vault), "valid": False, "error": f"{path}: cannot read ({exc.strerror})"}
    if as_json:
        click.echo(json.dumps(doc, sort_keys=True))
        return
    if not doc["valid"]:
        raise policy_mod.PolicyError(doc["error"])
    origin = "no policy set: the default" if doc["source"] == "default" else f"set {doc['set']}, signature ok"
    click.echo(f"{vault}: on anomaly {doc['on_anomaly']}, model threshold {doc['threshold'] / 1000:.2f} ({origin})")


COMMANDS = [anomalies, policy]
