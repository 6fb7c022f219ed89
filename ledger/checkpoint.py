"""Signed checkpoints: (tree size, Merkle root, chain head, time) under the identity's Ed25519 key (pure).

The signature covers a fixed text form, documented in docs/ledger.md::

    umbrafs-checkpoint v1
    size <decimal>
    root <64 lowercase hex>
    chain <64 lowercase hex>
    time <decimal ns since the epoch>
    key <16 lowercase hex>

each line ending in "\\n".  ``key`` is the key id: the first 16 hex digits of SHA-256 of the raw
32-byte public key.  A ``Checkpoint`` parsed from JSON is *unverified* until ``verify_checkpoint``
says otherwise.
"""
from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.errors import CheckpointError

MAGIC = "umbrafs-checkpoint v1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_SIG = re.compile(r"^[0-9a-f]{128}$")


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw public key."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return sha256(raw).hexdigest()[:16]


def signed_text(size: int, root: bytes, chain_head: bytes, time_ns: int, key_id: str) -> bytes:
    """The exact bytes an Ed25519 checkpoint signature covers."""
    return (
        f"{MAGIC}\nsize {size}\nroot {root.hex()}\nchain {chain_head.hex()}\n"
        f"time {time_ns}\nkey {key_id}\n"
    ).encode("ascii")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    size: int
    root: bytes
    chain_head: bytes
    time_ns: int
    key_id: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        return signed_text(self.size, self.root, self.chain_head, self.time_ns, self.key_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size, "root": self.root.hex(), "chain_head": self.chain_head.hex(),
            "time_ns": self.time_ns, "key_id": self.key_id, "signature": self.signature.hex(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Checkpoint":
        """Parse an untrusted mapping; the result is still unverified."""
        if not isinstance(d, Mapping) or set(d) != {"size", "root", "chain_head", "time_ns", "key_id", "signature"}:
            raise CheckpointError("checkpoint must have exactly size, root, chain_head, time_ns, key_id, signature")
        for name in ("size", "time_ns"):
            if type(d[name]) is not int or not 0 <= d[name] < 1 << 63:
                raise CheckpointError(f"checkpoint {name} must be a non-negative integer")
        for name, pattern in (("root", _HEX64), ("chain_head", _HEX64), ("key_id", _KEY_ID), ("signature", _SIG)):
            if not isinstance(d[name], str) or not pattern.match(d[name]):
                raise CheckpointError(f"checkpoint {name} is not well-formed lowercase hex")
        return cls(d["size"], bytes.fromhex(d["root"]), bytes.fromhex(d["chain_head"]), d["time_ns"],
                   d["key_id"], bytes.fromhex(d["signature"]))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Checkpoint":
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise CheckpointError("checkpoint is not JSON") from None
        return cls.from_dict(obj)


def sign_checkpoint(key: Ed25519PrivateKey, size: int, root: bytes, chain_head: bytes, time_ns: int) -> Checkpoint:
    """Sign (size, root, chain_head, time_ns) with the identity key."""
    if size < 0 or time_ns < 0 or len(root) != 32 or len(chain_head) != 32:
        raise CheckpointError("checkpoint fields out of range")
    key_id = key_id_of(key.public_key())
    signature = key.sign(signed_text(size, root, chain_head, time_ns, key_id))
    return Checkpoint(size, bytes(root), bytes(chain_head), time_ns, key_id, signature)


def verify_checkpoint(cp: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    """True only if ``cp`` names this key and its signature over ``signed_bytes()`` holds."""
    try:
        if not hmac.compare_digest(cp.key_id.encode("ascii"), key_id_of(public_key).encode("ascii")):
            return False
        public_key.verify(cp.signature, cp.signed_bytes())
    except (InvalidSignature, ValueError, TypeError, AttributeError, UnicodeEncodeError):
        return False
    return True
