"""`umbrafs identity …`: create, list, export, import, passwd.

Passphrases come from --passphrase-file, else $UMBRAFS_IDENTITY_PASSPHRASE, else
$UMBRAFS_PASSPHRASE, else a prompt (never argv).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from proxy import keyring as identity_mod
from proxy.errors import IdentityError

from cli import common, passphrase
from cli.state import State


@click.group(cls=common.SharingGroup)
def identity() -> None:
    """Your identities (keys for sharing) and the public identities of your contacts."""


@identity.command()
@click.argument("name")
@common.identity_passphrase_option
@common.kdf_options
@click.pass_obj
def create(state: State, name: str, passphrase_file: Path | None, kdf_memory_kib: int, kdf_iterations: int,
           kdf_lanes: int) -> None:
    """Create identity NAME: Umbral and signing keys, wrapped by a passphrase."""
    kdf = common.kdf_params(identity_mod.KdfParams, kdf_memory_kib, kdf_iterations, kdf_lanes)
    identity_mod.check_name(name)
    if identity_mod.identity_path(state.home, name).exists():
        raise IdentityError(f"identity {name!r} already exists")
    secret = common.identity_passphrase(passphrase_file, confirm=True, prompt=f"New passphrase for {name}")
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
@common.identity_passphrase_option
@click.option("--new-passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
              help="New passphrase (else $UMBRAFS_NEW_PASSPHRASE, else a prompt).")
@click.pass_obj
def passwd(state: State, name: str, passphrase_file: Path | None, new_passphrase_file: Path | None) -> None:
    """Change the passphrase of identity NAME (the keys stay the same)."""
    identity_mod.load_own_public(state.home, name)
    old = common.identity_passphrase(passphrase_file, prompt=f"Current passphrase of {name}")
    identity_mod.unlock(state.home, name, old)  # fail on a wrong passphrase before asking for the new one
    new = passphrase.get(new_passphrase_file, env="UMBRAFS_NEW_PASSPHRASE", confirm=True, prompt="New passphrase")
    identity_mod.change_passphrase(state.home, name, old, new)
    click.echo(f"passphrase of identity {name} changed")


COMMANDS = [identity]
