"""What several command modules need (borg's _common.py): options, passphrases, identities,
the vault behind a path, key events, spawning a mount, the rotation's progress bar.

Command modules import this module and never each other (tests/test_layout.py).
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from fs.errors import MountpointError
from fs.vault import config as vault_mod
from proxy import keyring as identity_mod
from proxy.errors import ProxyError
from wire import daemonclient
from wire import mountsock
from wire.errors import DaemonError
from wire.sink import AuditSink

from cli import detach, exitcodes, passphrase
from cli.state import State

log = logging.getLogger(__name__)

IDENTITY_ENV = "UMBRAFS_IDENTITY_PASSPHRASE"

# -- options ------------------------------------------------------------------------
# `--passphrase-file` is the vault's passphrase in the vault commands and the identity's in
# the sharing ones; share and revoke need both and take the vault's as --vault-passphrase-file.

vault_passphrase_option: Callable[[Any], Any] = click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the passphrase from the first line of this file (else $UMBRAFS_PASSPHRASE, else a prompt).",
)

identity_passphrase_option: Callable[[Any], Any] = click.option(
    "--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
    help=f"First line is the identity's passphrase (else ${IDENTITY_ENV}, $UMBRAFS_PASSPHRASE, a prompt).",
)

share_vault_passphrase_option: Callable[[Any], Any] = click.option(
    "--vault-passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
    help="First line is the vault's passphrase (else $UMBRAFS_PASSPHRASE, else a prompt). "
         "The same file as --passphrase-file is read once.",
)

identity_option: Callable[[Any], Any] = click.option(
    "--identity", "identity", metavar="NAME", default=None,
    help="Identity to act as (default: the only identity in the state directory).",
)


def kdf_options(func: Any) -> Any:
    """--kdf-memory-kib, --kdf-iterations, --kdf-lanes (vaults and identities have the same defaults)."""
    defaults = vault_mod.KdfParams()
    func = click.option("--kdf-lanes", type=click.IntRange(1, 64), default=defaults.lanes, show_default=True, help="Argon2id parallelism.")(func)
    func = click.option("--kdf-iterations", type=click.IntRange(1, 100), default=defaults.iterations, show_default=True, help="Argon2id passes.")(func)
    func = click.option("--kdf-memory-kib", type=click.IntRange(8, 4 << 20), default=defaults.memory_kib, show_default=True, help="Argon2id memory in KiB.")(func)
    return func


K = TypeVar("K", vault_mod.KdfParams, identity_mod.KdfParams)


def kdf_params(cls: type[K], memory_kib: int, iterations: int, lanes: int) -> K:
    """The KDF options as *cls* (a vault's or an identity's), checked together: a bad mix is a usage error."""
    kdf = cls(memory_kib, iterations, lanes)
    try:
        kdf.validate()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return kdf


class SharingGroup(click.Group):
    """A command group whose ProxyErrors end as one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ProxyError as exc:
            click.echo(f"umbrafs: {exc}", err=True)
            ctx.exit(exitcodes.for_error(exc))


# -- times and users --------------------------------------------------------------

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> int:
    """'90m', '2d', an ISO date or date-time (local time unless it says otherwise) → ns since the epoch."""
    m = _RELATIVE.match(text.strip())
    if m:
        return time.time_ns() - int(m.group(1)) * _UNIT[m.group(2)] * 1_000_000_000
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: use e.g. 30m, 2h, 7d or 2026-11-29T08:00") from None
    return min(int(moment.timestamp() * 1e9), (1 << 63) - 1)


def parse_user(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise click.BadParameter(f"no such user {text!r}") from None


# -- identities -------------------------------------------------------------------

def resolve_identity(state: State, name: str | None) -> str:
    """NAME, or the only identity there is; a clear error otherwise."""
    if name:
        return name
    names = [public.name for public in identity_mod.list_identities(state.home)]
    if len(names) == 1:
        return names[0]
    if not names:
        raise click.ClickException("no identity yet: create one with `umbrafs identity create NAME`")
    raise click.ClickException(f"several identities ({', '.join(names)}): choose one with --identity")


def identity_passphrase(file: Path | None, confirm: bool = False, prompt: str = "Identity passphrase") -> bytes:
    """An identity's passphrase: *file*, else $UMBRAFS_IDENTITY_PASSPHRASE, else $UMBRAFS_PASSPHRASE, else a prompt."""
    env = IDENTITY_ENV if os.environ.get(IDENTITY_ENV) is not None else "UMBRAFS_PASSPHRASE"
    return passphrase.get(file, env=env, confirm=confirm, prompt=prompt)


def unlock_identity(state: State, name: str, secret: bytes) -> identity_mod.Identity:
    return identity_mod.unlock(state.home, name, secret)


def ask_and_unlock_identity(state: State, name: str, passphrase_file: Path | None) -> identity_mod.Identity:
    """Unlock identity NAME for a command (checks it exists before asking for the passphrase)."""
    identity_mod.load_own_public(state.home, name)
    return identity_mod.unlock(state.home, name, identity_passphrase(passphrase_file, prompt=f"Passphrase of {name}"))


def signing_public_key(state: State, name: str | None) -> Any:
    """The Ed25519 public key that signs NAME's ledger checkpoints (no passphrase needed)."""
    return identity_mod.load_own_public(state.home, resolve_identity(state, name)).ed25519_public_key()


# -- the vault behind a path ---------------------------------------------------------

def path_in_mount(state: State, path: Path) -> tuple[mountsock.MountInfo, str]:
    """(the mount, the path inside its drive) for a path inside one of our attached mounts.

    The path is made absolute without resolving it through the mount; symlinks outside
    the mount are resolved only if the plain absolute path is in no mount."""
    mounts = mountsock.attached_mounts(state.home)
    for candidate in (os.path.abspath(path), os.path.realpath(path)):
        best: mountsock.MountInfo | None = None
        for info in mounts:
            mnt = info.mountpoint
            if (candidate == mnt or candidate.startswith(mnt.rstrip("/") + "/")) and \
                    (best is None or len(mnt) > len(best.mountpoint)):
                best = info
        if best is not None:
            return best, candidate[len(best.mountpoint):] or "/"
    raise MountpointError(f"{path}: not inside a mounted umbrafs drive (mount the vault first)")


def vault_of(state: State, where: Path) -> Path:
    """The vault behind a mountpoint (or a path inside it), or a vault directory itself."""
    try:
        return Path(path_in_mount(state, where)[0].vault)
    except MountpointError:
        if (where / "vault.json").is_file():
            return where.absolute()
        raise MountpointError(f"{where}: neither a vault nor inside a mounted umbrafs drive") from None


# -- key events -------------------------------------------------------------------

def key_event(state: State, vault_id: str, op: str, path: str, detail: dict[str, str | int | bool]) -> None:
    """Best effort: record *op* in the audit trail and ask a running daemon for a checkpoint."""
    try:
        sink = AuditSink(state.home, vault_id)
        try:
            sink.emit(op, pid=os.getpid(), path=path, detail=detail)
        finally:
            sink.close(timeout=2)
    except Exception as exc:  # the share or revocation itself has happened: never fail it here
        log.warning("audit: could not record the %s event: %s", op, exc)
        return
    with contextlib.suppress(DaemonError, OSError):
        daemonclient.request(state.home, {"type": "checkpoint"}, timeout=5.0)


def key_events(state: State, vault_id: str) -> Callable[[str, str, dict[str, str | int | bool]], None]:
    """`key_event` for one vault, as the library's use cases take it (proxy.sharing.KeyEvent)."""
    return lambda op, path, detail: key_event(state, vault_id, op, path, detail)


def warn(message: str) -> None:
    click.echo(f"umbrafs: warning: {message}", err=True)


# -- mounts -----------------------------------------------------------------------

def spawn_mount(state: State, vault: Path, mountpoint: Path, read_only: bool, allow_other: bool, audit_mode: str,
                secret: bytes, xattr: bool = True, keep_versions: str = "2G,7d", cache_timeout: float = 1.0) -> None:
    """Start the owner's mount of *vault* as a detached child; returns once it serves."""
    args = ["--home", str(state.home), "mount", str(vault), str(mountpoint), "--audit", audit_mode, "--keep-versions", keep_versions,
            "--cache-timeout", repr(cache_timeout)]
    if not xattr:
        args.append("--no-xattr")
    if read_only:
        args.append("--read-only")
    if allow_other:
        args.append("--allow-other")
    detach.spawn(args, secret, state.log_path(mountpoint), "mount")


def fusermount_unmount(mountpoint: Path, lazy: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(mountpoint)],
                          capture_output=True, text=True)


def unmount_quietly(mountpoint: Path) -> None:
    """`fusermount3 -u`, else `-uz` (detach now, finish when the last file closes); errors ignored."""
    if fusermount_unmount(mountpoint).returncode != 0:
        fusermount_unmount(mountpoint, lazy=True)


# -- progress -----------------------------------------------------------------------

class RotationBar:
    """click's progress bar on stderr, in plaintext bytes, with files and directories beside it."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.shown = 0

    def update(self, p: dict[str, Any]) -> None:
        if self.quiet or p.get("state") in (None, "starting", "scanning", "none"):
            return
        if self.bar is None:
            self.bar = click.progressbar(length=max(int(p["bytes_total"]), 1), label="rotating keys",
                                         file=sys.stderr, show_eta=True, show_percent=True,
                                         item_show_func=lambda item: item)
            self.bar.__enter__()
        done = min(int(p["bytes_done"]), self.bar.length)
        self.bar.update(done - self.shown, current_item=(
            f"{p['files_done']}/{p['files_total']} files, {p['dirs_done']}/{p['dirs_total']} dirs"))
        self.shown = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
