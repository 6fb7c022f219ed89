"""Per-vault response policy: `alert`, `lock`, `revoke` or `unmount`, and the model's threshold.

Where it lives, and why: `<vault>/.umbrafs.policy.json`, signed with the VAULT's owner key (the
secp256k1 key in vault.json that only the vault passphrase unwraps).  The vault is where every
daemon that watches it — the owner's, and the one on a recipient's machine that watches a share
mount — can find the owner's policy; the signature means no process that can merely write into
the backing directory (ransomware running as the user, a recipient with a read-write share) can
weaken it.  Against rollback (an older, weaker signed file copied back) and deletion, each daemon
pins per vault the owner key it first saw and the highest `counter` it accepted
(`<home>/policy-pins.json`): an older or deleted file leaves the pinned policy in force.

Format (canonical JSON, sorted keys)::

    {"format": "umbrafs-policy", "version": 1, "vault_id": "<16 hex>", "counter": <ms since epoch>,
     "on_anomaly": "lock", "threshold": 700, "set": "2026-11-29T12:00:00Z",
     "signature": "<base64 DER ECDSA over b'umbrafs-policy-v1\\0' + canonical body>"}
"""
from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire.errors import DaemonError

log = logging.getLogger(__name__)

POLICY_NAME = ".umbrafs.policy.json"
PINS_NAME = "policy-pins.json"
FORMAT = "umbrafs-policy"
VERSION = 1
ACTIONS = ("alert", "lock", "revoke", "unmount")
DEFAULT_THRESHOLD = 700  # milli: see docs/anomaly.md (a window must also beat its baseline's worst)
_CONTEXT = b"umbrafs-policy-v1\0"
MAX_FILE = 4096
CONFIG_MAX = 1 << 16  # vault.json


class PolicyError(DaemonError):
    """A policy file that is not valid, not signed by the vault's owner key, or older than the pinned one."""


@dataclass(frozen=True)
class Policy:
    on_anomaly: str = "alert"
    threshold: int = DEFAULT_THRESHOLD
    counter: int = 0
    vault_id: str = ""
    set: str = ""
    source: str = "default"   # "default" | "file" | "pinned"

    def to_dict(self) -> dict[str, Any]:
        return {"on_anomaly": self.on_anomaly, "threshold": self.threshold, "counter": self.counter,
                "vault_id": self.vault_id, "set": self.set, "source": self.source}


def policy_path(vault: Path) -> Path:
    return Path(vault) / POLICY_NAME


def _vault_key(vault: Path) -> tuple[bytes, str]:
    """The owner public key in vault.json and the vault id it gives."""
    try:
        config = json.loads(read_regular(Path(vault) / "vault.json", CONFIG_MAX))
        pk = bytes.fromhex(config["owner"]["public_key"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PolicyError(f"{vault}: cannot read the vault's owner key ({exc.__class__.__name__})") from None
    return pk, hashlib.sha256(pk).hexdigest()[:16]


def _body_bytes(body: dict[str, Any]) -> bytes:
    return _CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def make(vault: Path, owner_key: bytes, on_anomaly: str, threshold: int) -> bytes:
    """A signed policy file for *vault* (owner_key: the unwrapped vault owner secret key)."""
    import umbral_pre

    if on_anomaly not in ACTIONS:
        raise PolicyError(f"--on-anomaly must be one of {', '.join(ACTIONS)}")
    if not 0 < threshold <= 1000:
        raise PolicyError("--threshold must be a score between 0 and 1 (e.g. 0.7)")
    _, vault_id = _vault_key(vault)
    body = {"format": FORMAT, "version": VERSION, "vault_id": vault_id, "counter": time.time_ns() // 1_000_000,
            "on_anomaly": on_anomaly, "threshold": int(threshold),
            "set": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    signer = umbral_pre.Signer(umbral_pre.SecretKey.from_be_bytes(owner_key))
    signature = signer.sign(_body_bytes(body)).to_der_bytes()
    return (json.dumps(body | {"signature": base64.b64encode(signature).decode()}, indent=2, sort_keys=True)
            + "\n").encode()


def write(vault: Path, data: bytes) -> Path:
    """Atomically, through a fresh temp name: the vault dir is writable by others, and a
    predictable temp name could be a planted symlink to any of the owner's files."""
    path = policy_path(vault)
    tmp = path.with_name(f"{POLICY_NAME}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read_regular(path: Path, limit: int) -> bytes:
    """A small regular file, never a symlink, FIFO or device another writer put there
    (a FIFO would hold up the daemon's loop waiting for a writer)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(errno.EFBIG, "too large")
    return data


def verify(vault: Path, data: bytes) -> tuple[Policy, bytes]:
    """The policy in *data* if the vault's owner key signed it for this vault; (policy, owner pk)."""
    import umbral_pre

    pk, vault_id = _vault_key(vault)
    if len(data) > MAX_FILE:
        raise PolicyError(f"{policy_path(vault)}: too large")
    try:
        obj = json.loads(data)
        signature = base64.b64decode(obj.pop("signature"), validate=True)
        body = obj
        if body.get("format") != FORMAT or body.get("version") != VERSION:
            raise PolicyError(f"{policy_path(vault)}: not a policy of a version this umbrafs knows")
        action, threshold, counter = body["on_anomaly"], body["threshold"], body["counter"]
        if action not in ACTIONS or type(threshold) is not int or type(counter) is not int:
            raise PolicyError(f"{policy_path(vault)}: malformed")
        ok = umbral_pre.Signature.from_der_bytes(signature).verify(
            umbral_pre.PublicKey.from_compressed_bytes(pk), _body_bytes(body))
    except PolicyError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise PolicyError(f"{policy_path(vault)}: malformed") from None
    if not ok:
        raise PolicyError(f"{policy_path(vault)}: not signed by this vault's owner key")
    if body.get("vault_id") != vault_id:
        raise PolicyError(f"{policy_path(vault)}: made for another vault")
    return Policy(action, threshold, counter, vault_id, str(body.get("set", "")), "file"), pk


class PolicyStore:
    """The policies a daemon applies, re-read when a policy file changes, pinned against rollback."""

    def __init__(self, home: Path) -> None:
        self.pins_path = Path(home) / PINS_NAME
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, int] | None, Policy]] = {}
        try:
            self._pins: dict[str, Any] = json.loads(self.pins_path.read_text(encoding="utf-8"))
            if not isinstance(self._pins, dict):
                self._pins = {}
        except (OSError, ValueError):
            self._pins = {}

    def _save_pins(self) -> None:
        tmp = self.pins_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._pins, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.pins_path)

    def get(self, vault: str | Path) -> Policy:
        """The policy in force for the vault at *vault* (never raises: problems are logged)."""
        vault = str(Path(vault).absolute()) if vault else ""
        if not vault:
            return Policy()
        path = policy_path(Path(vault))
        try:
            st = path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_ino)
        except OSError:
            stamp = None
        with self._lock:
            cached = self._cache.get(vault)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            policy = self._load(vault, path, stamp)
            self._cache[vault] = (stamp, policy)
            return policy

    def _pinned(self, vault: str) -> Policy | None:
        pin = self._pins.get(vault)
        if not isinstance(pin, dict):
            return None
        try:
            return Policy(pin["on_anomaly"], int(pin["threshold"]), int(pin["counter"]), pin["vault_id"],
                          pin.get("set", ""), "pinned")
        except (KeyError, TypeError, ValueError):
            return None

    def _load(self, vault: str, path: Path, stamp: tuple[int, int] | None) -> Policy:
        pinned = self._pinned(vault)
        if stamp is None:
            return pinned or Policy()
        try:
            policy, pk = verify(Path(vault), read_regular(path, MAX_FILE))
        except (OSError, PolicyError) as exc:
            log.error("policy of %s not used: %s", vault, exc)
            return pinned or Policy()
        pin = self._pins.get(vault) if isinstance(self._pins.get(vault), dict) else None
        if pin is not None and pin.get("owner_key") not in (None, pk.hex()):
            log.error("policy of %s not used: the vault's owner key changed since it was pinned", vault)
            return pinned or Policy()
        if pinned is not None and policy.counter < pinned.counter:
            log.error("policy of %s not used: older than the one in force (rollback?)", vault)
            return pinned
        self._pins[vault] = policy.to_dict() | {"owner_key": pk.hex()}
        try:
            self._save_pins()
        except OSError as exc:
            log.error("cannot save policy pins: %s", exc)
        return policy
