"""Choosing and unlocking the identity a command acts as (shared by command groups)."""
from __future__ import annotations

from typing import Any, Callable

import click

from cli.state import State

identity_option: Callable[[Any], Any] = click.option(
    "--identity", "identity", metavar="NAME", default=None,
    help="Identity to act as (default: the only identity in the state directory).",
)


def resolve_identity(state: State, name: str | None) -> str:
    """NAME, or the only identity there is; a clear error otherwise."""
    if name:
        return name
    from proxy import keyring as identity_mod

    names = [public.name for public in identity_mod.list_identities(state.home)]
    if len(names) == 1:
        return names[0]
    if not names:
        raise click.ClickException("no identity yet: create one with `umbrafs identity create NAME`")
    raise click.ClickException(f"several identities ({', '.join(names)}): choose one with --identity")


def unlock_identity(state: State, name: str, secret: bytes) -> Any:
    from proxy import keyring as identity_mod

    return identity_mod.unlock(state.home, name, secret)


def signing_public_key(state: State, name: str | None) -> Any:
    """The Ed25519 public key that signs NAME's ledger checkpoints (no passphrase needed)."""
    from proxy import keyring as identity_mod

    return identity_mod.load_own_public(state.home, resolve_identity(state, name)).ed25519_public_key()
