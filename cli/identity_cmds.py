"""`umbrafs identity …`: create, list, export, import, passwd.

Passphrases come from --passphrase-file, else $UMBRAFS_IDENTITY_PASSPHRASE, else
$UMBRAFS_PASSPHRASE, else a prompt (never argv).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from proxy import keyring as identity_mod
from proxy.errors import IdentityError, ProxyError

from cli import exitcodes, passphrase
from cli.state import State

IDENTITY_ENV = "UMBRAFS_IDENTITY_PASSPHRASE"


class SharingGroup(click.Group):
    """A command group whose ProxyErrors end as one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ProxyError as exc:
            click.echo(f"umbrafs: {exc}", err=True)
            ctx.exit(exitcodes.for_error(exc))


def identity_passphrase(file: Path | None, confirm: bool = False, prompt: str = "Identity passphrase") -> bytes:
    env = IDENTITY_ENV if os.environ.get(IDENTITY_ENV) is not None else "UMBRAFS_PASSPHRASE"
    return passphrase.get(file, env=env, confirm=confirm, prompt=prompt)


def unlock(state: State, name: str, passphrase_file: Path | None) -> identity_mod.Identity:
    """Unlock identity NAME for a command (checks it exists before asking for the passphrase)."""
    identity_mod.load_own_public(state.home, name)
    return identity_mod.unlock(state.home, name, identity_passphrase(passphrase_file, prompt=f"Passphrase of {name}"))


passphrase_file_option = click.option(
    "--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
    help=f"First line is the identity's passphrase (else ${IDENTITY_ENV}, $UMBRAFS_PASSPHRASE, a prompt).",
)


def kdf_options(func: Any) -> Any:
    defaults = identity_mod.KdfParams()
    func = click.option("--kdf-lanes", type=click.IntRange(1, 64), default=defaults.lanes, show_default=True, help="Argon2id parallelism.")(func)
    func = click.option("--kdf-iterations", type=click.IntRange(1, 100), default=defaults.iterations, show_default=True, help="Argon2id passes.")(func)
    func = click.option("--kdf-memory-kib", type=click.IntRange(8, 4 << 20), default=defaults.memory_kib, show_default=True, help="Argon2id memory in KiB.")(func)
    return func


def _kdf(memory_kib: int, iterations: int, lanes: int) -> identity_mod.KdfParams:
    kdf = identity_mod.KdfParams(memory_kib, iterations, lanes)
    try:
        kdf.validate()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return kdf


@click.group(cls=SharingGroup)
def identity() -> None:
    """Your identities (keys for sharing) and the public identities of your contacts."""


@identity.command()
@click.argument("name")
@passphrase_file_option
@kdf_options
@click.pass_obj
def create(state: State, name: str, passphrase_file: Path | None, kdf_memory_kib: int, kdf_iterations: int,
           kdf_lanes: int) -> None:
    """Create identity NAME: Umbral and signing keys, wrapped by a passphrase."""
    kdf = _kdf(kdf_memory_kib, kdf_iterations, kdf_lanes)
    identity_mod.check_name(name)
    if identity_mod.identity_path(state.home, name).exists():
        raise IdentityError(f"identity {name!r} already exists")
    secret = identity_passphrase(passphrase_file, confirm=True, prompt=f"New passphrase for {name}")
    created = identity_mod.create(state.home, name, secret, kdf)
    click.echo(f"created identity {name} (fingerprint {created.fingerprint})")


@identity.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: identities and contacts.")
@click.pass_obj
def list_(state: State, as_json: bool) -> None:
    """List your identities and your contacts."""
    own = identity_mod.list_identities(state.home)
    contacts = identity_mod.list_contacts(state.home)
    if as_json:
        click.echo(json.dumps({
            "identities": [{"name": p.name, "fingerprint": p.fingerprint} for p in own],
            "contacts": [{"name": p.name, "fingerprint": p.fingerprint} for p in contacts],
        }))
        return
    if not own and not contacts:
        click.echo("no identities or contacts (umbrafs identity create NAME)")
    for kind, entries in (("own", own), ("contact", contacts)):
        for public in entries:
            click.echo(f"{kind:8} {public.name:20} {public.fingerprint}")


@identity.command()
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file instead of stdout.")
@click.pass_obj
def export(state: State, name: str, output: Path | None) -> None:
    """Print the public part of identity NAME (give it to people who share with you)."""
    text = identity_mod.export_public(state.home, name)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@identity.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--name", help="Store the contact under this name (default: the name in the file).")
@click.option("--replace", is_flag=True, help="Replace a contact of that name that has other keys.")
@click.pass_obj
def import_(state: State, file: Path, name: str | None, replace: bool) -> None:
    """Import a public identity (from `identity export`; - for stdin) as a contact."""
    try:
        text = sys.stdin.read(identity_mod.MAX_PUBLIC_TEXT + 1) if str(file) == "-" else \
            file.read_text(encoding="utf-8", errors="replace")[: identity_mod.MAX_PUBLIC_TEXT + 1]
    except OSError as exc:
        raise IdentityError(f"cannot read {file}: {exc.strerror}") from None
    public = identity_mod.import_public(state.home, text, name=name, replace=replace)
    click.echo(f"imported contact {public.name} (fingerprint {public.fingerprint})")


@identity.command()
@click.argument("name")
@passphrase_file_option
@click.option("--new-passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
              help="New passphrase (else $UMBRAFS_NEW_PASSPHRASE, else a prompt).")
@click.pass_obj
def passwd(state: State, name: str, passphrase_file: Path | None, new_passphrase_file: Path | None) -> None:
    """Change the passphrase of identity NAME (the keys stay the same)."""
    identity_mod.load_own_public(state.home, name)
    old = identity_passphrase(passphrase_file, prompt=f"Current passphrase of {name}")
    identity_mod.unlock(state.home, name, old)  # fail on a wrong passphrase before asking for the new one
    new = passphrase.get(new_passphrase_file, env="UMBRAFS_NEW_PASSPHRASE", confirm=True, prompt="New passphrase")
    identity_mod.change_passphrase(state.home, name, old, new)
    click.echo(f"passphrase of identity {name} changed")


COMMANDS = [identity]
