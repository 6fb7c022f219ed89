"""Where passphrases come from: a file, a descriptor, $UMBRAFS_PASSPHRASE or a prompt.

Never from argv (other users can read it in /proc).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click


class PassphraseUnavailable(click.ClickException):
    """One line on stderr (a UsageError would add the usage text), exit code 2."""

    exit_code = 2


def _strip(data: bytes) -> bytes:
    return data[:-1] if data.endswith(b"\n") else data


def read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return _strip(b"".join(chunks))


def get(file: Path | None, env: str = "UMBRAFS_PASSPHRASE", confirm: bool = False, prompt: str = "Passphrase") -> bytes:
    if file is not None:
        try:
            data = _strip(file.read_bytes().split(b"\n", 1)[0] + b"\n")
        except OSError as exc:
            raise PassphraseUnavailable(f"cannot read passphrase file {file}: {exc.strerror}") from None
    elif os.environ.get(env) is not None:
        data = os.environ[env].encode("utf-8")
    elif sys.stdin.isatty():
        data = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm).encode("utf-8")
    else:
        raise PassphraseUnavailable(f"no passphrase: use --passphrase-file or set ${env} (stdin is not a terminal)")
    if not data:
        raise PassphraseUnavailable("empty passphrase")
    return data
