"""`umbrafs proxy …`: run a proxy, register users at one, list and revoke grants, verify its record."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from proxy import identity as identity_mod
from proxy.errors import IdentityError

from . import exitcodes
from .identities import resolve_identity
from .identity_cmds import SharingGroup, passphrase_file_option, unlock
from .state import State

DEFAULT_PORT = 8700


def default_db(state: State, port: int) -> Path:
    """One database per port, so several proxies can run from one state directory."""
    return state.home / "proxy" / f"proxy-{port}.db"


@click.group(cls=SharingGroup)
def proxy() -> None:
    """The proxy re-encryption service and its administration."""


@proxy.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, help="TCP port (0: any free port).")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), help="SQLite database (default: <home>/proxy/proxy-<port>.db).")
@click.option("--admin", "admins", multiple=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Public identity file (identity export) of an admin; repeatable. Admins are kept in the database.")
@click.option("--pidfile", type=click.Path(dir_okay=False, path_type=Path), help="Write the process id here once listening.")
@click.option("--window", type=click.IntRange(1, 3600), default=60, show_default=True, help="Allowed clock difference of signed requests, seconds.")
@click.pass_obj
def serve(state: State, host: str, port: int, db: Path | None, admins: tuple[Path, ...], pidfile: Path | None,
          window: int) -> None:
    """Run a proxy until SIGTERM or Ctrl-C; prints its URL once it accepts connections."""
    from proxy import server  # aiohttp is only needed here

    publics = []
    for path in admins:
        try:
            publics.append(identity_mod.parse_public(path.read_text(encoding="utf-8", errors="replace")))
        except IdentityError as exc:
            raise IdentityError(f"--admin {path}: {exc}") from None
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("proxy").setLevel(logging.INFO)  # the startup line and refused requests
    config = server.ServeConfig(host, port, (db or default_db(state, port)).absolute(), publics,
                                pidfile.absolute() if pidfile else None, window)

    def ready(url: str) -> None:
        click.echo(f"listening on {url}")
        sys.stdout.flush()

    server.run(config, ready)


def _client(state: State, url: str, name: str | None, passphrase_file: Path | None):  # type: ignore[no-untyped-def]
    from proxy.client import ProxyClient

    return ProxyClient(url, unlock(state, resolve_identity(state, name), passphrase_file))


@proxy.command()
@click.argument("url")
@click.argument("who")
@click.option("--role", type=click.Choice(["reader", "owner", "admin"]), default="reader", show_default=True)
@click.option("--identity", "as_name", metavar="NAME", help="Your (admin) identity (default: the only one).")
@passphrase_file_option
@click.pass_obj
def register(state: State, url: str, who: str, role: str, as_name: str, passphrase_file: Path | None) -> None:
    """Register WHO (an identity or contact name, or a public identity file) at the proxy URL."""
    if "/" in who or who.endswith(".pub"):
        try:
            text = Path(who).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise IdentityError(f"cannot read {who}: {exc.strerror}") from None
        public = identity_mod.parse_public(text)
    else:
        public = identity_mod.load_public(state.home, who)
    with _client(state, url, as_name, passphrase_file) as client:
        user = client.register(public, role)
    click.echo(f"{user['name']} ({user['fingerprint'][:16]}) is {user['role']} at {client.url}")


@proxy.command()
@click.argument("url")
@click.option("--identity", "as_name", metavar="NAME", help="Your identity (default: the only one).")
@click.option("--active", is_flag=True, help="Only grants that are not revoked.")
@click.option("--json", "as_json", is_flag=True)
@passphrase_file_option
@click.pass_obj
def grants(state: State, url: str, as_name: str, active: bool, as_json: bool, passphrase_file: Path | None) -> None:
    """List the grants you may see at the proxy URL (an admin sees all)."""
    with _client(state, url, as_name, passphrase_file) as client:
        found = client.list_grants(active=True if active else None)
    if as_json:
        click.echo(json.dumps(found))
        return
    for g in found:
        state_text = "revoked" if g["revoked"] is not None else "active"
        click.echo(f"{g['grant_id']}  {g['owner'][:16]} -> {g['recipient'][:16]}  "
                   f"{g['threshold']}-of-{g['shares']}  {state_text}")


@proxy.command()
@click.argument("grant_id")
@click.option("--proxy", "proxies", multiple=True, required=True, metavar="URL", help="Every proxy holding the grant; repeat.")
@click.option("--threshold", type=int, required=True, help="The grant's M.")
@click.option("--identity", "as_name", metavar="NAME", help="The grant's owner or an admin (default: the only identity).")
@passphrase_file_option
@click.pass_obj
def revoke(state: State, grant_id: str, proxies: tuple[str, ...], threshold: int, as_name: str,
           passphrase_file: Path | None) -> None:
    """Delete GRANT_ID's kfrags at the proxies; exit 31 if revocation does not hold yet."""
    from proxy.client import revoke as revoke_grant

    report = revoke_grant(list(proxies), unlock(state, resolve_identity(state, as_name), passphrase_file), grant_id, threshold)
    click.echo(report.summary())
    if not report.holds:
        sys.exit(exitcodes.PROXY_UNREACHABLE)


@proxy.command(name="verify-log")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), help="The proxy's database (default: <home>/proxy/proxy-<port>.db).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, help="Which proxy's default database.")
@click.pass_obj
def verify_log(state: State, db: Path | None, port: int) -> None:
    """Check the proxy's hash-chained record of register, grant, re-encrypt and revoke."""
    from proxy.store import verify_records

    report = verify_records(db or default_db(state, port))
    click.echo(f"record intact: {report.rows} rows, head {report.head.hex()}")


COMMANDS = [proxy]
