"""`umbrafs proxy …`: run a proxy, register users at one, list and revoke grants, verify its record."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from proxy import keyring as identity_mod
from proxy.errors import IdentityError

from cli import common, exitcodes
from cli.state import State

DEFAULT_PORT = 8700


def default_db(state: State, port: int) -> Path:
    """One database per port, so several proxies can run from one state directory."""
    return state.home / "proxy" / f"proxy-{port}.db"


@click.group(cls=common.SharingGroup)
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
@click.option("--workers", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Processes that re-encrypt beside the one serving HTTP (0: all in one process).")
# The tests' proof that nothing the proxy sees decrypts anything: hidden, since the file holds kfrags.
@click.option("--capture", type=click.Path(dir_okay=False, path_type=Path), default=None, hidden=True)
@click.pass_obj
def serve(state: State, host: str, port: int, db: Path | None, admins: tuple[Path, ...], pidfile: Path | None,
          window: int, workers: int, capture: Path | None) -> None:
    """Run a proxy until SIGTERM or Ctrl-C; prints its URL once it accepts connections."""
    from proxy.service import server  # aiohttp is only needed here

    publics = []
    for path in admins:
        try:
            publics.append(identity_mod.parse_public(path.read_text(encoding="utf-8", errors="replace")))
        except IdentityError as exc:
            raise IdentityError(f"--admin {path}: {exc}") from None
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("proxy").setLevel(logging.INFO)  # the startup line and refused requests
    config = server.ServeConfig(host, port, (db or default_db(state, port)).absolute(), publics,
                                pidfile.absolute() if pidfile else None, window, workers=workers,
                                capture=capture.absolute() if capture else None)

    def ready(url: str) -> None:
        click.echo(f"listening on {url}")
        sys.stdout.flush()

    server.run(config, ready)


def _client(state: State, url: str, name: str | None, passphrase_file: Path | None):  # type: ignore[no-untyped-def]
    from proxy.client import ProxyClient

    return ProxyClient(url, common.ask_and_unlock_identity(state, common.resolve_identity(state, name), passphrase_file))


def _public_of(state: State, who: str) -> identity_mod.PublicIdentity:
    """WHO: a public identity file (a path, or a name ending in .pub), else an identity or contact name."""
    if "/" in who or who.endswith(".pub"):
        try:
            text = Path(who).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise IdentityError(f"cannot read {who}: {exc.strerror}") from None
        return identity_mod.parse_public(text)
    return identity_mod.load_public(state.home, who)


def _scope_of(state: State, scope: tuple[str, ...]) -> list[str]:
    """--scope values as fingerprints: "*" alone, 64 hex digits as they are, names through contacts."""
    if "*" in scope:
        if len(scope) > 1:
            raise click.UsageError("--scope '*' covers every recipient: give it alone")
        return ["*"]
    out = []
    for item in scope:
        if len(item) == 64 and all(c in "0123456789abcdef" for c in item):
            out.append(item)
        else:
            out.append(identity_mod.load_public(state.home, item).fingerprint)
    return sorted(set(out))


@proxy.command()
@click.argument("args", nargs=-1, required=True, metavar="[URL] WHO")
@click.option("--proxy", "proxies", multiple=True, metavar="URL", help="A proxy to register at (repeatable; instead of URL).")
@click.option("--role", type=click.Choice(["reader", "owner", "admin", "guard"]), default="reader", show_default=True)
@click.option("--scope", multiple=True, metavar="NAME_OR_FINGERPRINT",
              help="A guard's recipients: contact name, fingerprint, or '*' for all; repeatable (guards only).")
@click.option("--identity", "as_name", metavar="NAME", help="Your (admin) identity (default: the only one).")
@common.identity_passphrase_option
@click.pass_obj
def register(state: State, args: tuple[str, ...], proxies: tuple[str, ...], role: str, scope: tuple[str, ...],
             as_name: str, passphrase_file: Path | None) -> None:
    """Register WHO (an identity or contact name, or a public identity file) at the proxy URL.

    A guard (--role guard --scope NAME…) may only revoke grants whose recipient is in its scope."""
    from proxy.client import ProxyClient

    if len(args) > 2:
        raise click.UsageError("give [URL] WHO")
    urls = [args[0], *proxies] if len(args) == 2 else list(proxies)
    if not urls:
        raise click.UsageError("give the proxy's URL (or --proxy URL, repeatable)")
    if (role == "guard") != bool(scope):
        raise click.UsageError("--scope is required for --role guard, and only for it")
    public = _public_of(state, args[-1])
    fingerprints = _scope_of(state, scope) if scope else None
    me = common.ask_and_unlock_identity(state, common.resolve_identity(state, as_name), passphrase_file)
    for url in urls:
        with ProxyClient(url, me) as client:
            user = client.register(public, role, fingerprints)
        extra = f" for {', '.join(s[:16] for s in user.get('scope', []))}" if role == "guard" else ""
        click.echo(f"{user['name']} ({user['fingerprint'][:16]}) is {user['role']}{extra} at {client.url}")


@proxy.command()
@click.argument("url")
@click.option("--identity", "as_name", metavar="NAME", help="Your identity (default: the only one).")
@click.option("--active", is_flag=True, help="Only grants that are not revoked.")
@click.option("--json", "as_json", is_flag=True)
@common.identity_passphrase_option
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
@common.identity_passphrase_option
@click.pass_obj
def revoke(state: State, grant_id: str, proxies: tuple[str, ...], threshold: int, as_name: str,
           passphrase_file: Path | None) -> None:
    """Delete GRANT_ID's kfrags at the proxies; exit 31 if revocation does not hold yet."""
    from proxy.client import revoke as revoke_grant

    report = revoke_grant(list(proxies), common.ask_and_unlock_identity(state, common.resolve_identity(state, as_name), passphrase_file), grant_id, threshold)
    click.echo(report.summary())
    if not report.holds:
        sys.exit(exitcodes.PROXY_UNREACHABLE)


@proxy.command(name="verify-log")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), help="The proxy's database (default: <home>/proxy/proxy-<port>.db).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, help="Which proxy's default database.")
@click.pass_obj
def verify_log(state: State, db: Path | None, port: int) -> None:
    """Check the proxy's hash-chained record of register, grant, re-encrypt and revoke."""
    from proxy.service.store import verify_records

    report = verify_records(db or default_db(state, port))
    click.echo(f"record intact: {report.rows} rows, head {report.head.hex()}")


COMMANDS = [proxy]
