"""Share records: what a share leaves in the vault for its recipient, signed by its owner.

`<vault>/.umbrafs.shares/<grant id>.json` (a dotted name, so no mount ever lists it) holds
the grant's id, proxies and threshold, the target's backing path and object id, the
owner's public identity, the recipient's fingerprint, and the sealed key: an Umbral
capsule and ciphertext of the directory key (or file DEK) followed by the target's
plaintext name, under the share's own delegating public key (proxy.envelope).  Nothing in it is secret; the
owner's Ed25519 signature over its canonical JSON makes it tamper-evident.

As with umbral-pre's kfrags, bytes from disk parse to an *unverified* `SignedShare`; only
`verify` against an owner the reader already trusts (an imported contact) yields a
`ShareRecord` whose capsule, proxies and paths may be used.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from proxy import api
from proxy.errors import IdentityError, NoSuchShare, ShareRecordInvalid
from proxy.keyring import Identity, PublicIdentity, parse_public

FORMAT_NAME = "umbrafs-share"
FORMAT_VERSION = 1
SHARES_DIR = ".umbrafs.shares"
KINDS = ("dir", "file")
KEY_LEN = 32  # the sealed payload is the key, then the target's plaintext name
MAX_RECORD = 64 * 1024
_SIGNATURE_CONTEXT = b"umbrafs-share-record-v1\0"


@dataclass(frozen=True, slots=True)
class ShareRecord:
    grant_id: str
    kind: str                 # "dir" or "file"
    backing_path: str         # relative to the vault, "." for its root
    object_id: bytes          # the directory's or file's id (headers hold it in the clear)
    owner: PublicIdentity
    recipient_name: str       # the owner's label for the recipient
    recipient: str            # the recipient's fingerprint
    proxies: tuple[str, ...]
    threshold: int
    read_only: bool
    created: str              # ISO 8601, UTC
    capsule: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)
    revoked: str | None = None
    delegating_pk: bytes = b""  # the share's own Umbral key the capsule is under (proxy.envelope)

    @property
    def delegating_key(self) -> bytes:
        """The key cfrags are checked against; records from before per-share keys used the owner's."""
        return self.delegating_pk or self.owner.umbral_pk

    def body(self) -> dict[str, Any]:
        """The signed JSON object (everything but the signature)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "id": self.grant_id,
            "kind": self.kind,
            "target": {"backing_path": self.backing_path, "object_id": self.object_id.hex()},
            "owner": self.owner.to_text(),
            "recipient": {"name": self.recipient_name, "fingerprint": self.recipient},
            "proxies": list(self.proxies),
            "threshold": self.threshold,
            "read_only": self.read_only,
            "created": self.created,
            "revoked": self.revoked,
            "sealed": {"capsule": _b64(self.capsule), "ciphertext": _b64(self.ciphertext),
                       **({"delegating_pk": _b64(self.delegating_pk)} if self.delegating_pk else {})},
        }

    def signed_by(self, owner: Identity) -> bytes:
        """The record file's bytes, signed with *owner*'s Ed25519 key."""
        if owner.fingerprint != self.owner.fingerprint:
            raise IdentityError("a share record is signed by its own owner only")
        body = self.body()
        signature = owner.sign(_message(body))
        return (json.dumps(body | {"signature": _b64(signature)}, indent=2, sort_keys=True) + "\n").encode()

    def revoked_now(self) -> "ShareRecord":
        return replace(self, revoked=now_iso())


@dataclass(frozen=True, slots=True)
class SignedShare:
    """A record as read from disk: parsed, signature not yet checked."""

    record: ShareRecord
    signature: bytes = field(repr=False)
    _message: bytes = field(repr=False)

    def verify(self, trusted_owner: PublicIdentity) -> ShareRecord:
        """The record, if *trusted_owner* (an imported contact or own identity) signed it."""
        if not secrets.compare_digest(trusted_owner.fingerprint, self.record.owner.fingerprint):
            raise ShareRecordInvalid(f"share {self.record.grant_id}: not made by the identity you trust for it")
        try:
            trusted_owner.ed25519_public_key().verify(self.signature, self._message)
        except InvalidSignature:
            raise ShareRecordInvalid(
                f"share {self.record.grant_id}: the owner's signature does not verify (record altered)") from None
        return self.record

    def self_signed(self) -> bool:
        """Signed by the owner it names (a listing's sanity check; not trust)."""
        try:
            self.verify(self.record.owner)
        except ShareRecordInvalid:
            return False
        return True


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _message(body: dict[str, Any]) -> bytes:
    return _SIGNATURE_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _bad(grant_id: str, what: str) -> ShareRecordInvalid:
    return ShareRecordInvalid(f"share {grant_id}: damaged record ({what})")


def parse(data: bytes, grant_id: str = "?") -> SignedShare:
    """Parse a record file (untrusted bytes); ShareRecordInvalid if it is not one."""
    if len(data) > MAX_RECORD:
        raise _bad(grant_id, "too large")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _bad(grant_id, "not JSON") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        raise _bad(grant_id, "not a share record")
    if not isinstance(obj.get("version"), int) or obj["version"] > FORMAT_VERSION:
        raise ShareRecordInvalid(f"share {grant_id}: record format {obj.get('version')!r} is newer than this umbrafs supports")
    try:
        signature = base64.b64decode(obj.pop("signature"), validate=True)
        target, recipient, sealed = obj["target"], obj["recipient"], obj["sealed"]
        record = ShareRecord(
            grant_id=_check(obj["id"], str, "id"),
            kind=_check(obj["kind"], str, "kind"),
            backing_path=_check(target["backing_path"], str, "backing_path"),
            object_id=bytes.fromhex(_check(target["object_id"], str, "object_id")),
            owner=parse_public(_check(obj["owner"], str, "owner")),
            recipient_name=_check(recipient["name"], str, "recipient"),
            recipient=_check(recipient["fingerprint"], str, "recipient"),
            proxies=tuple(_check(u, str, "proxies") for u in _check(obj["proxies"], list, "proxies")),
            threshold=_check(obj["threshold"], int, "threshold"),
            read_only=_check(obj["read_only"], bool, "read_only"),
            created=_check(obj["created"], str, "created"),
            revoked=obj["revoked"] if obj["revoked"] is None else _check(obj["revoked"], str, "revoked"),
            capsule=base64.b64decode(_check(sealed["capsule"], str, "capsule"), validate=True),
            ciphertext=base64.b64decode(_check(sealed["ciphertext"], str, "ciphertext"), validate=True),
            delegating_pk=base64.b64decode(_check(sealed.get("delegating_pk", ""), str, "delegating_pk"),
                                           validate=True),
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise _bad(grant_id, str(exc) if isinstance(exc, _FieldError) else "missing or malformed field") from None
    except IdentityError as exc:
        raise _bad(grant_id, f"owner: {exc}") from None
    if not api.GRANT_ID.match(record.grant_id) or (grant_id != "?" and record.grant_id != grant_id):
        raise _bad(grant_id, "id does not match the file")
    if record.kind not in KINDS or len(record.object_id) != 16 or not 1 <= record.threshold <= len(record.proxies):
        raise _bad(grant_id, "kind, object id or threshold")
    if len(record.delegating_pk) not in (0, 33):
        raise _bad(grant_id, "delegating_pk")
    return SignedShare(record, signature, _message(obj))


class _FieldError(ValueError):
    pass


def _check(value: Any, kind: type, what: str) -> Any:
    if type(value) is not kind:
        raise _FieldError(f"{what} has the wrong type")
    return value


# -- in the vault --------------------------------------------------------------------

def shares_dir(vault: Path) -> Path:
    return Path(vault) / SHARES_DIR


def record_path(vault: Path, grant_id: str) -> Path:
    if not isinstance(grant_id, str) or not api.GRANT_ID.match(grant_id):
        raise NoSuchShare(f"no share {grant_id!r}: a share id is 8-128 characters of [A-Za-z0-9_-]")
    return shares_dir(vault) / f"{grant_id}.json"


def write(vault: Path, grant_id: str, data: bytes) -> Path:
    """Store (or replace) a record atomically: temp file, fsync, rename."""
    path = record_path(vault, grant_id)
    path.parent.mkdir(mode=0o755, exist_ok=True)
    tmp = path.with_name(f".{grant_id}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read(vault: Path, grant_id: str) -> SignedShare:
    path = record_path(vault, grant_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NoSuchShare(f"no share {grant_id} in {vault}") from None
    except OSError as exc:
        raise NoSuchShare(f"share {grant_id}: cannot read its record ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        return parse(f.read(MAX_RECORD + 1), grant_id)


def list_ids(vault: Path) -> list[str]:
    directory = shares_dir(vault)
    if not directory.is_dir():
        return []
    return sorted(p.name[:-5] for p in directory.iterdir()
                  if p.name.endswith(".json") and api.GRANT_ID.match(p.name[:-5]))
