"""Sealing a key for its owner with Umbral (pure): what a share stores beside its grant.

`seal` makes a capsule and ciphertext of a small secret (a directory key or a file DEK) under
the owner's public key; the owner opens it alone (`open_own`), a recipient through M cfrags
(proxy.client.open_capsule).  Neither the capsule nor the ciphertext is secret.
"""
from __future__ import annotations

from dataclasses import dataclass

import umbral_pre

from .errors import CapsuleError
from .identity import Identity, PublicIdentity


@dataclass(frozen=True, slots=True)
class Sealed:
    capsule: bytes     # 105 B
    ciphertext: bytes  # plaintext + 40 B


def seal(owner: PublicIdentity, secret: bytes) -> Sealed:
    capsule, ciphertext = umbral_pre.encrypt(owner.umbral_public_key(), secret)
    return Sealed(bytes(capsule), bytes(ciphertext))


def parse_capsule(capsule: bytes) -> umbral_pre.Capsule:
    try:
        return umbral_pre.Capsule.from_bytes(capsule)
    except ValueError:
        raise CapsuleError("the capsule is damaged (does not parse)") from None


def open_own(owner: Identity, capsule: bytes, ciphertext: bytes) -> bytes:
    """The owner opens its own capsule (no proxy involved)."""
    try:
        return bytes(umbral_pre.decrypt_original(owner.umbral_sk, parse_capsule(capsule), ciphertext))
    except ValueError:
        raise CapsuleError("the capsule or its ciphertext is damaged, or sealed for another key") from None
