"""Sealing a key for a share with Umbral (pure): what a share stores beside its grant.

Every share gets its own *delegating* key pair (`Delegation`): the directory key (or file DEK)
is sealed in a capsule under its public key, and the share's kfrags are made from its secret
key — never from the owner identity's Umbral key.  A kfrag re-encrypts *every* capsule under
its delegating key, so with one key per share a recipient's kfrags (at M proxies, colluding or
not) turn only that share's capsule into something the recipient can open — never another
share's capsule found in the vault.  The owner's identity still authenticates the delegation:
the kfrags are signed with the owner's signing key, which proxies and recipients check.

The delegating secret key lives in memory while the share is made and is then dropped; nobody
needs it afterwards (the owner reaches the data through the vault, not the capsule).
Neither the capsule, the ciphertext nor the delegating public key is secret.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import umbral_pre

from proxy.errors import CapsuleError


@dataclass(frozen=True, slots=True)
class Sealed:
    capsule: bytes        # 105 B
    ciphertext: bytes     # plaintext + 40 B
    delegating_pk: bytes  # 33 B: the share's own public key the capsule is under


@dataclass(frozen=True, slots=True)
class Delegation:
    """The fresh key pair of one share (secret in memory only, never in repr)."""

    secret_key: umbral_pre.SecretKey = field(repr=False)

    @classmethod
    def new(cls) -> "Delegation":
        return cls(umbral_pre.SecretKey.random())

    @property
    def public_key(self) -> umbral_pre.PublicKey:
        return self.secret_key.public_key()

    @property
    def public_bytes(self) -> bytes:
        return self.secret_key.public_key().to_compressed_bytes()

    def seal(self, secret: bytes) -> Sealed:
        capsule, ciphertext = umbral_pre.encrypt(self.public_key, secret)
        return Sealed(bytes(capsule), bytes(ciphertext), self.public_bytes)

    def open(self, sealed: Sealed) -> bytes:
        """Open a capsule sealed under this delegation (no proxy involved: tests, self-checks)."""
        try:
            return bytes(umbral_pre.decrypt_original(self.secret_key, parse_capsule(sealed.capsule), sealed.ciphertext))
        except ValueError:
            raise CapsuleError("the capsule or its ciphertext is damaged, or sealed for another key") from None


def seal(secret: bytes) -> tuple[Sealed, Delegation]:
    """Seal *secret* under a fresh delegation: (what the share record keeps, what grant needs)."""
    delegation = Delegation.new()
    return delegation.seal(secret), delegation


def parse_capsule(capsule: bytes) -> umbral_pre.Capsule:
    try:
        return umbral_pre.Capsule.from_bytes(capsule)
    except ValueError:
        raise CapsuleError("the capsule is damaged (does not parse)") from None


def parse_public_key(data: bytes, what: str = "delegating key") -> umbral_pre.PublicKey:
    try:
        return umbral_pre.PublicKey.from_compressed_bytes(data)
    except (ValueError, TypeError):
        raise CapsuleError(f"the share's {what} is damaged (not a public key)") from None
