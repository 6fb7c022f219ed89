"""Identities: a person's keys, wrapped on disk by their passphrase, and the public part others import.

Under the state directory:

    identities/<name>.json   own identities (mode 0600): public keys in the clear, the three secret
                             keys wrapped with AES-256-GCM under Argon2id(passphrase)
    contacts/<name>.pub      other people's public identities, as `export_public` prints them

An identity holds an Umbral ``SecretKey`` (shares are capsules under its public key and kfrags
are made from it), a second Umbral key that signs kfrags (``Signer``; recipients and proxies
check kfrags and cfrags against its public half) and an Ed25519 key that signs requests to
proxies and ledger checkpoints.  The fingerprint is a hash of the three public keys; the name
is only a local label (a contact may be imported under another name).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import umbral_pre
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from proxy.errors import IdentityError, WrongIdentityPassphrase

FORMAT_NAME = "umbrafs-identity"
FORMAT_VERSION = 1
PUBLIC_HEADER = "umbrafs-public-identity v1"
MAX_PUBLIC_TEXT = 8192

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FINGERPRINT_CONTEXT = b"umbrafs-fingerprint-v1\0"
_SELF_SIGNATURE_CONTEXT = b"umbrafs-public-identity-v1\0"
_WRAP_AAD = b"umbrafs-identity-secrets-v1\0"
_UMBRAL_PK_LEN = 33
_ED25519_PK_LEN = 32
_SECRET_LEN = 32  # each of the three secret keys
_SALT_LEN = 16
_NONCE_LEN = 12


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost; stored in the identity file.  Tests pass tiny values, never a hidden switch."""

    memory_kib: int = 131072
    iterations: int = 3
    lanes: int = 4

    def validate(self) -> None:
        if self.lanes < 1 or self.iterations < 1 or self.memory_kib < 8 * self.lanes:
            raise ValueError("Argon2id needs lanes >= 1, iterations >= 1, memory >= 8 KiB per lane")


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """What others know of a person: three public keys, bound together by a self-signature."""

    name: str
    umbral_pk: bytes      # 33 B compressed secp256k1 point: capsules are made for it
    verifying_pk: bytes   # 33 B: verifies the kfrags this person signs
    ed25519_pk: bytes     # 32 B: verifies this person's requests and checkpoints
    self_signature: bytes  # Ed25519 over the three keys

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.umbral_pk, self.verifying_pk, self.ed25519_pk)

    def umbral_public_key(self) -> umbral_pre.PublicKey:
        return umbral_pre.PublicKey.from_compressed_bytes(self.umbral_pk)

    def verifying_key(self) -> umbral_pre.PublicKey:
        return umbral_pre.PublicKey.from_compressed_bytes(self.verifying_pk)

    def ed25519_public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.ed25519_pk)

    def same_keys(self, other: "PublicIdentity") -> bool:
        return self.fingerprint == other.fingerprint

    def renamed(self, name: str) -> "PublicIdentity":
        check_name(name)
        return PublicIdentity(name, self.umbral_pk, self.verifying_pk, self.ed25519_pk, self.self_signature)

    def to_text(self) -> str:
        """The small text file `identity export` prints and `identity import` reads."""
        return "\n".join([
            PUBLIC_HEADER,
            f"name: {self.name}",
            f"fingerprint: {self.fingerprint}",
            f"umbral-pk: {_b64(self.umbral_pk)}",
            f"verifying-pk: {_b64(self.verifying_pk)}",
            f"ed25519-pk: {_b64(self.ed25519_pk)}",
            f"signature: {_b64(self.self_signature)}",
        ]) + "\n"


@dataclass(frozen=True, slots=True)
class Identity:
    """An unlocked identity: the secret keys, in memory only (never in repr, logs or messages)."""

    public: PublicIdentity
    umbral_sk: umbral_pre.SecretKey = field(repr=False)
    signer: umbral_pre.Signer = field(repr=False)
    ed25519_sk: Ed25519PrivateKey = field(repr=False)

    @property
    def name(self) -> str:
        return self.public.name

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature (requests to proxies, ledger checkpoints)."""
        return self.ed25519_sk.sign(message)


# -- pure helpers ------------------------------------------------------------

def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise IdentityError(
            f"invalid identity name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def fingerprint_of(umbral_pk: bytes, verifying_pk: bytes, ed25519_pk: bytes) -> str:
    return hashlib.sha256(_FINGERPRINT_CONTEXT + umbral_pk + verifying_pk + ed25519_pk).hexdigest()


def _self_signed_message(umbral_pk: bytes, verifying_pk: bytes, ed25519_pk: bytes) -> bytes:
    return _SELF_SIGNATURE_CONTEXT + umbral_pk + verifying_pk + ed25519_pk


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str, length: int | None = None) -> bytes:
    try:
        data = base64.b64decode(str(text).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise IdentityError(f"{what} is not base64") from None
    if length is not None and len(data) != length:
        raise IdentityError(f"{what} has {len(data)} bytes, expected {length}")
    return data


def generate(name: str) -> Identity:
    """Fresh keys for *name* (nothing written)."""
    check_name(name)
    umbral_sk = umbral_pre.SecretKey.random()
    signer_sk = umbral_pre.SecretKey.random()
    ed_sk = Ed25519PrivateKey.generate()
    return _assemble(name, umbral_sk, signer_sk, ed_sk)


def _assemble(name: str, umbral_sk: umbral_pre.SecretKey, signer_sk: umbral_pre.SecretKey,
              ed_sk: Ed25519PrivateKey) -> Identity:
    signer = umbral_pre.Signer(signer_sk)
    umbral_pk = umbral_sk.public_key().to_compressed_bytes()
    verifying_pk = signer.verifying_key().to_compressed_bytes()
    ed_pk = ed_sk.public_key().public_bytes_raw()
    signature = ed_sk.sign(_self_signed_message(umbral_pk, verifying_pk, ed_pk))
    public = PublicIdentity(name, umbral_pk, verifying_pk, ed_pk, signature)
    return Identity(public, umbral_sk, signer, ed_sk)


def _secret_blob(identity: Identity, signer_sk: umbral_pre.SecretKey) -> bytes:
    return identity.umbral_sk.to_be_bytes() + signer_sk.to_be_bytes() + identity.ed25519_sk.private_bytes_raw()


def parse_public(text: str) -> PublicIdentity:
    """Parse and check an exported public identity (untrusted text).

    The fingerprint line must match the keys and the self-signature must verify, so a
    damaged or spliced file is refused rather than imported.
    """
    if not isinstance(text, str) or len(text) > MAX_PUBLIC_TEXT:
        raise IdentityError("not an umbrafs public identity (too long)")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines or lines[0] != PUBLIC_HEADER:
        raise IdentityError(f"not an umbrafs public identity (first line must be {PUBLIC_HEADER!r})")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if not sep:
            raise IdentityError(f"public identity: malformed line {line[:40]!r}")
        fields[key.strip()] = value.strip()
    missing = [k for k in ("name", "fingerprint", "umbral-pk", "verifying-pk", "ed25519-pk", "signature") if k not in fields]
    if missing:
        raise IdentityError(f"public identity: missing {', '.join(missing)}")
    name = check_name(fields["name"])
    umbral_pk = _unb64(fields["umbral-pk"], "umbral-pk", _UMBRAL_PK_LEN)
    verifying_pk = _unb64(fields["verifying-pk"], "verifying-pk", _UMBRAL_PK_LEN)
    ed_pk = _unb64(fields["ed25519-pk"], "ed25519-pk", _ED25519_PK_LEN)
    signature = _unb64(fields["signature"], "signature", 64)
    try:
        umbral_pre.PublicKey.from_compressed_bytes(umbral_pk)
        umbral_pre.PublicKey.from_compressed_bytes(verifying_pk)
        ed_key = Ed25519PublicKey.from_public_bytes(ed_pk)
    except ValueError:
        raise IdentityError("public identity: a key is not a valid curve point") from None
    if not secrets.compare_digest(fields["fingerprint"].lower(), fingerprint_of(umbral_pk, verifying_pk, ed_pk)):
        raise IdentityError("public identity: fingerprint does not match the keys (damaged file?)")
    try:
        ed_key.verify(signature, _self_signed_message(umbral_pk, verifying_pk, ed_pk))
    except InvalidSignature:
        raise IdentityError("public identity: self-signature does not verify (damaged or spliced file)") from None
    return PublicIdentity(name, umbral_pk, verifying_pk, ed_pk, signature)


# -- the keyring on disk ------------------------------------------------------

def identities_dir(home: Path) -> Path:
    return Path(home) / "identities"


def contacts_dir(home: Path) -> Path:
    return Path(home) / "contacts"


def identity_path(home: Path, name: str) -> Path:
    return identities_dir(home) / f"{check_name(name)}.json"


def contact_path(home: Path, name: str) -> Path:
    return contacts_dir(home) / f"{check_name(name)}.pub"


def _ensure_dir(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.mkdir(exist_ok=True, mode=0o700)


def _write_file(path: Path, data: bytes, replace: bool) -> None:
    """Write atomically with mode 0600; without *replace*, refuse to overwrite (IdentityError)."""
    _ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic "create if absent", unlike rename
            except FileExistsError:
                raise IdentityError(f"{path.stem}: already exists ({path})") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _kek(passphrase: bytes, salt: bytes, kdf: KdfParams) -> bytes:
    return Argon2id(salt=salt, length=32, iterations=kdf.iterations, lanes=kdf.lanes,
                    memory_cost=kdf.memory_kib).derive(passphrase)


def _wrap_record(identity: Identity, signer_sk: umbral_pre.SecretKey, passphrase: bytes,
                 kdf: KdfParams, created: int) -> dict[str, Any]:
    kdf.validate()
    salt = os.urandom(_SALT_LEN)
    nonce = os.urandom(_NONCE_LEN)
    aad = _WRAP_AAD + identity.fingerprint.encode("ascii")  # binds the secrets to the public part
    wrapped = nonce + AESGCM(_kek(passphrase, salt, kdf)).encrypt(nonce, _secret_blob(identity, signer_sk), aad)
    pub = identity.public
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "name": pub.name,
        "created": created,
        "public": {
            "fingerprint": pub.fingerprint,
            "umbral_pk": _b64(pub.umbral_pk),
            "verifying_pk": _b64(pub.verifying_pk),
            "ed25519_pk": _b64(pub.ed25519_pk),
            "self_signature": _b64(pub.self_signature),
        },
        "kdf": {"algorithm": "argon2id", "salt": _b64(salt), "memory_kib": kdf.memory_kib,
                "iterations": kdf.iterations, "lanes": kdf.lanes},
        "cipher": "aes-256-gcm",
        "wrapped": _b64(wrapped),
    }


def _read_record(home: Path, name: str) -> dict[str, Any]:
    path = identity_path(home, name)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IdentityError(f"no identity named {name!r} (create it with `umbrafs identity create {name}`)") from None
    except (ValueError, UnicodeDecodeError):
        raise IdentityError(f"{path}: damaged identity file (not JSON)") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT_NAME:
        raise IdentityError(f"{path}: not an umbrafs identity file")
    if not isinstance(record.get("version"), int) or record["version"] > FORMAT_VERSION:
        raise IdentityError(f"{path}: identity format {record.get('version')!r} is newer than this umbrafs supports")
    return record


def _public_from_record(record: dict[str, Any], name: str) -> PublicIdentity:
    try:
        pub = record["public"]
        public = PublicIdentity(
            name,
            _unb64(pub["umbral_pk"], "umbral_pk", _UMBRAL_PK_LEN),
            _unb64(pub["verifying_pk"], "verifying_pk", _UMBRAL_PK_LEN),
            _unb64(pub["ed25519_pk"], "ed25519_pk", _ED25519_PK_LEN),
            _unb64(pub["self_signature"], "self_signature", 64),
        )
    except (KeyError, TypeError):
        raise IdentityError(f"identity {name!r}: damaged file (public part)") from None
    if public.fingerprint != pub.get("fingerprint"):
        raise IdentityError(f"identity {name!r}: damaged file (fingerprint does not match the keys)")
    return public


def _kdf_from_record(record: dict[str, Any], name: str) -> tuple[KdfParams, bytes]:
    try:
        kdf = record["kdf"]
        if kdf["algorithm"] != "argon2id":
            raise IdentityError(f"identity {name!r}: unsupported KDF {kdf['algorithm']!r}")
        params = KdfParams(int(kdf["memory_kib"]), int(kdf["iterations"]), int(kdf["lanes"]))
        params.validate()
        return params, _unb64(kdf["salt"], "salt")
    except (KeyError, TypeError, ValueError):
        raise IdentityError(f"identity {name!r}: damaged file (KDF parameters)") from None


def create(home: Path, name: str, passphrase: bytes, kdf: KdfParams = KdfParams()) -> Identity:
    """Make a new identity *name* in the keyring of *home*; IdentityError if it exists."""
    kdf.validate()
    check_name(name)
    if identity_path(home, name).exists():
        raise IdentityError(f"identity {name!r} already exists")
    signer_sk = umbral_pre.SecretKey.random()
    identity = _assemble(name, umbral_pre.SecretKey.random(), signer_sk, Ed25519PrivateKey.generate())
    record = _wrap_record(identity, signer_sk, passphrase, kdf, int(time.time()))
    _write_file(identity_path(home, name), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), replace=False)
    return identity


def _unlock_record(record: dict[str, Any], name: str, passphrase: bytes) -> tuple[Identity, umbral_pre.SecretKey]:
    public = _public_from_record(record, name)
    params, salt = _kdf_from_record(record, name)
    wrapped = _unb64(record.get("wrapped", ""), "wrapped keys")
    aad = _WRAP_AAD + public.fingerprint.encode("ascii")
    try:
        blob = AESGCM(_kek(passphrase, salt, params)).decrypt(wrapped[:_NONCE_LEN], wrapped[_NONCE_LEN:], aad)
    except (InvalidTag, ValueError):
        raise WrongIdentityPassphrase(f"wrong passphrase for identity {name!r}") from None
    if len(blob) != 3 * _SECRET_LEN:
        raise IdentityError(f"identity {name!r}: damaged file (secret keys)")
    signer_sk = umbral_pre.SecretKey.from_be_bytes(blob[_SECRET_LEN:2 * _SECRET_LEN])
    identity = _assemble(
        name,
        umbral_pre.SecretKey.from_be_bytes(blob[:_SECRET_LEN]),
        signer_sk,
        Ed25519PrivateKey.from_private_bytes(blob[2 * _SECRET_LEN:]),
    )
    if not identity.public.same_keys(public):
        raise IdentityError(f"identity {name!r}: damaged file (secret keys do not match the public keys)")
    # Keep the stored self-signature (Ed25519 is deterministic, but the stored file is what others have).
    return Identity(public, identity.umbral_sk, identity.signer, identity.ed25519_sk), signer_sk


def unlock(home: Path, name: str, passphrase: bytes) -> Identity:
    """Unwrap identity *name*; WrongIdentityPassphrase (one clear line) on a wrong passphrase."""
    identity, _ = _unlock_record(_read_record(home, name), name, passphrase)
    return identity


def change_passphrase(home: Path, name: str, old: bytes, new: bytes, kdf: KdfParams | None = None) -> None:
    """Re-wrap the same keys under *new* (fresh salt; the KDF cost is kept unless *kdf* is given)."""
    record = _read_record(home, name)
    identity, signer_sk = _unlock_record(record, name, old)
    params = kdf or _kdf_from_record(record, name)[0]
    fresh = _wrap_record(identity, signer_sk, new, params, int(record.get("created", time.time())))
    _write_file(identity_path(home, name), (json.dumps(fresh, indent=2, sort_keys=True) + "\n").encode(), replace=True)


def load_own_public(home: Path, name: str) -> PublicIdentity:
    return _public_from_record(_read_record(home, name), name)


def load_public(home: Path, name: str) -> PublicIdentity:
    """The public identity called *name*: one of ours first, else a contact."""
    if identity_path(home, name).exists():
        return load_own_public(home, name)
    try:
        text = contact_path(home, name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IdentityError(f"no identity or contact named {name!r} (import it with `umbrafs identity import FILE`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"contact {name!r}: cannot read ({exc.__class__.__name__})") from None
    return parse_public(text).renamed(name)


def export_public(home: Path, name: str) -> str:
    return load_own_public(home, name).to_text()


def import_public(home: Path, text: str, name: str | None = None, replace: bool = False) -> PublicIdentity:
    """Store a public identity as a contact (under *name*, default the name in the text).

    Re-importing the same keys is a no-op; other keys under a taken name need *replace*.
    A contact may not take the name of one of our own identities.
    """
    public = parse_public(text)
    if name is not None:
        public = public.renamed(name)
    if identity_path(home, public.name).exists():
        if load_own_public(home, public.name).same_keys(public):
            return public
        raise IdentityError(f"{public.name!r} is the name of one of your own identities; import with another name")
    path = contact_path(home, public.name)
    if path.exists():
        existing = load_public(home, public.name)
        if existing.same_keys(public):
            return existing
        if not replace:
            raise IdentityError(
                f"a different contact named {public.name!r} exists (fingerprint {existing.fingerprint[:16]}…); "
                "use another name or replace it"
            )
    _write_file(path, public.to_text().encode("utf-8"), replace=replace)
    return public


def _names(directory: Path, suffix: str) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(p.name[: -len(suffix)] for p in directory.iterdir()
                  if p.name.endswith(suffix) and _NAME.match(p.name[: -len(suffix)]))


def list_identities(home: Path) -> list[PublicIdentity]:
    return [load_own_public(home, n) for n in _names(identities_dir(home), ".json")]


def list_contacts(home: Path) -> list[PublicIdentity]:
    return [load_public(home, n) for n in _names(contacts_dir(home), ".pub")]
