"""Encrypted file names: AES-SIV under the directory's name key, base64url.

Deterministic encryption makes lookup one stat.  Names are padded to a multiple
of 16 bytes so the backing name hides the exact length.  Encrypted names longer
than LONGNAME_MAX are stored as ``~<sha256>`` plus a ``~<sha256>.name`` sidecar
holding the full encrypted name.
"""
from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from fs.format import layout as fmt
from fs.errors import IntegrityError
from fs.format.cryptocore import names_key

PAD = 16
NAME_MAX = 255


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise IntegrityError("name is not base64url") from None


class NameCipher:
    """Encrypts and decrypts the names of one directory."""

    __slots__ = ("_siv",)

    def __init__(self, dir_key: bytes) -> None:
        self._siv = AESSIV(names_key(dir_key))

    def encrypt(self, p_name: bytes) -> str:
        """The full encrypted name (may be too long for the backing dir)."""
        pad = PAD - len(p_name) % PAD
        return b64encode(self._siv.encrypt(p_name + bytes([pad]) * pad, None))

    def decrypt(self, c_name: str) -> bytes:
        raw = b64decode(c_name)
        try:
            padded = self._siv.decrypt(raw, None)
        except (InvalidTag, ValueError):
            raise IntegrityError("name failed authentication") from None
        pad = padded[-1] if padded else 0
        if not 1 <= pad <= PAD or padded[-pad:] != bytes([pad]) * pad:
            raise IntegrityError("bad name padding")
        return padded[:-pad]


def is_long(c_name: str) -> bool:
    return len(c_name) > fmt.LONGNAME_MAX


def long_backing_name(c_name: str) -> str:
    return fmt.LONGNAME_PREFIX + b64encode(hashlib.sha256(c_name.encode("ascii")).digest())


def backing_name(c_name: str) -> str:
    """Name of the entry in the backing directory."""
    return long_backing_name(c_name) if is_long(c_name) else c_name


def is_reserved(b_name: str) -> bool:
    """Backing entries that are not plaintext entries: vault.json, headers, sidecars.

    base64url never contains ".", so every name with a dot is ours or foreign litter.
    """
    return "." in b_name
