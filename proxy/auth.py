"""Request signatures between clients and proxies (pure: no I/O, no clock of its own).

Every request to /v1/… carries four headers:

    X-Umbrafs-Key        the caller's fingerprint (64 hex digits)
    X-Umbrafs-Time       Unix time in whole seconds
    X-Umbrafs-Nonce      16-64 characters [A-Za-z0-9_-], never reused
    X-Umbrafs-Signature  base64 Ed25519 signature over `signing_message(...)`

The signed message covers the method, the path with its query exactly as sent, the SHA-256 of
the body, the time, the nonce and the key id, so nothing of a request can be changed or moved
to another endpoint.  The proxy refuses a time outside ±window and a nonce it has seen; it keeps
nonces for the window (in SQLite, so a restart does not reopen it).
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

H_KEY = "X-Umbrafs-Key"
H_TIME = "X-Umbrafs-Time"
H_NONCE = "X-Umbrafs-Nonce"
H_SIGNATURE = "X-Umbrafs-Signature"
CONTEXT = b"umbrafs-proxy-request-v1"
DEFAULT_WINDOW = 60  # seconds either side of the proxy's clock

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_TIME = re.compile(r"^[0-9]{1,12}$")


class RequestSigner(Protocol):
    """Whatever signs requests: an unlocked `proxy.keyring.Identity`, or a `KeySigner`."""

    @property
    def fingerprint(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class KeySigner:
    """Only what signing requests needs — the fingerprint the proxy knows the caller by and the
    Ed25519 secret key — for a process that keeps no Umbral keys (the audit daemon as a guard)."""

    fingerprint: str
    key: Ed25519PrivateKey = field(repr=False)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)


class AuthError(Exception):
    """The request is not authenticated (HTTP 401); the message says why, without secrets."""


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    key_id: str
    time: int
    nonce: str
    signature: bytes


def signing_message(method: str, path_qs: str, body: bytes, time: int, nonce: str, key_id: str) -> bytes:
    body_hash = hashlib.sha256(body).hexdigest()
    return b"\n".join(
        part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part
        for part in (CONTEXT, method.upper(), path_qs, body_hash, str(time), nonce, key_id)
    )


def sign_request(identity: RequestSigner, method: str, path_qs: str, body: bytes, now: float,
                 nonce: str | None = None) -> dict[str, str]:
    """Headers that authenticate one request by *identity* (a fresh random nonce by default)."""
    nonce = nonce or secrets.token_urlsafe(18)
    t = int(now)
    signature = identity.sign(signing_message(method, path_qs, body, t, nonce, identity.fingerprint))
    return {
        H_KEY: identity.fingerprint,
        H_TIME: str(t),
        H_NONCE: nonce,
        H_SIGNATURE: base64.b64encode(signature).decode("ascii"),
    }


def parse_headers(headers: "dict[str, str] | object") -> SignedHeaders:
    """The four signature headers, syntax-checked; AuthError if any is missing or malformed."""
    get = headers.get  # type: ignore[attr-defined]
    values = [get(h) for h in (H_KEY, H_TIME, H_NONCE, H_SIGNATURE)]
    if any(v is None for v in values):
        raise AuthError("request is not signed (X-Umbrafs-Key/-Time/-Nonce/-Signature headers required)")
    key_id, time_s, nonce, sig_b64 = (str(v) for v in values)
    if not _FINGERPRINT.match(key_id) or not _TIME.match(time_s) or not _NONCE.match(nonce):
        raise AuthError("malformed signature headers")
    try:
        signature = base64.b64decode(sig_b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise AuthError("malformed signature headers") from None
    if len(signature) != 64:
        raise AuthError("malformed signature headers")
    return SignedHeaders(key_id, int(time_s), nonce, signature)


def check_time(signed: SignedHeaders, now: float, window: int = DEFAULT_WINDOW) -> None:
    if abs(now - signed.time) > window:
        raise AuthError(f"request time is more than {window} s away from the proxy's clock")


def check_signature(public_key: bytes | None, method: str, path_qs: str, body: bytes,
                    signed: SignedHeaders) -> None:
    """Verify with the caller's registered Ed25519 key; *None* (unknown key) fails the same way,
    so the answer does not tell which fingerprints are registered."""
    message = signing_message(method, path_qs, body, signed.time, signed.nonce, signed.key_id)
    try:
        if public_key is None:
            raise InvalidSignature()
        _ed25519_key(public_key).verify(signed.signature, message)
    except (InvalidSignature, ValueError):
        raise AuthError("signature does not verify (unknown key or bad signature)") from None


@functools.lru_cache(maxsize=1024)
def _ed25519_key(public_key: bytes) -> Ed25519PublicKey:
    """Registered keys come back with every request: parse each once (~40 µs)."""
    return Ed25519PublicKey.from_public_bytes(public_key)


def nonce_expiry(signed: SignedHeaders, window: int = DEFAULT_WINDOW) -> int:
    """Until when the nonce must be remembered: after that its time is stale anyway."""
    return signed.time + window + 1
