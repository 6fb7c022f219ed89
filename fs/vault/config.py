"""The vault: vault.json, the owner key and the root directory.

vault.json holds no secret in the clear: the owner key is wrapped under an
Argon2id key of the passphrase.  Changing the passphrase rewrites only that
wrapped key, never data.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fs.format import layout as fmt
from fs.format import cryptocore as keys
from fs.errors import IntegrityError, NotAVault, UnsupportedFormat, VaultExists
from fs.vault import backing
from fs.vault.headers import create_root

log = logging.getLogger(__name__)

FORMAT_NAME = "umbrafs-vault"


@dataclass(frozen=True, slots=True)
class KdfParams:
    memory_kib: int = 131072
    iterations: int = 3
    lanes: int = 4

    def validate(self) -> None:
        if self.lanes < 1 or self.iterations < 1 or self.memory_kib < 8 * self.lanes:
            raise ValueError("Argon2id needs lanes >= 1, iterations >= 1, memory >= 8 KiB per lane")


@dataclass(frozen=True, slots=True)
class UnlockedVault:
    path: Path
    config: dict[str, Any]
    owner_key: bytes

    @property
    def root_wrap_key(self) -> bytes:
        return keys.root_wrap_key(self.owner_key)

    @property
    def vault_id(self) -> str:
        return vault_id(self.config)


def vault_id(config: dict[str, Any]) -> str:
    """Stable public id of a vault (names it in audit events): 16 hex digits of its owner key's hash."""
    return hashlib.sha256(bytes.fromhex(config["owner"]["public_key"])).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


CONFIG_MAX = 1 << 16


def _write_config(path: Path, config: dict[str, Any]) -> None:
    """Atomically, through a fresh temp file: the vault dir is writable by others (a sync
    peer, a recipient), so a fixed temp name could be a planted symlink to any file."""
    data = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tmp = f".{fmt.VAULT_CONFIG_NAME}.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        try:
            os.write(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp, dir_fd=dir_fd)
            raise
        os.close(fd)
        os.replace(tmp, fmt.VAULT_CONFIG_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_config_bytes(path: Path) -> bytes:
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return backing.read_small_file(dir_fd, fmt.VAULT_CONFIG_NAME, CONFIG_MAX)
    finally:
        os.close(dir_fd)


def read_config(path: Path) -> dict[str, Any]:
    """Load and check vault.json; NotAVault / UnsupportedFormat with a clear message."""
    if not path.exists():
        raise NotAVault(f"{path}: no such directory")
    if not path.is_dir():
        raise NotAVault(f"{path}: not a directory")
    cfg_path = path / fmt.VAULT_CONFIG_NAME
    try:
        config = json.loads(_read_config_bytes(path).decode("utf-8"))
    except FileNotFoundError:
        raise NotAVault(f"{path}: not an umbrafs vault (no {fmt.VAULT_CONFIG_NAME})") from None
    except OSError as exc:  # a symlink (ELOOP) or unreadable
        raise NotAVault(f"{cfg_path}: cannot read ({os.strerror(exc.errno or 0)})") from None
    except IntegrityError as exc:
        raise NotAVault(f"{cfg_path}: damaged ({exc})") from None
    except (ValueError, UnicodeDecodeError):
        raise NotAVault(f"{cfg_path}: damaged (not JSON)") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise NotAVault(f"{cfg_path}: not an umbrafs vault config")
    version = config.get("version")
    if not isinstance(version, int):
        raise NotAVault(f"{cfg_path}: damaged (no version)")
    if version > fmt.FORMAT_VERSION:
        raise UnsupportedFormat(
            f"{path}: vault format version {version} is newer than this umbrafs supports "
            f"({fmt.FORMAT_VERSION}); upgrade umbrafs"
        )
    if config.get("content", {}).get("block_size") != fmt.BLOCK_SIZE:
        raise UnsupportedFormat(f"{path}: unsupported block size")
    return config


def check_new(path: Path) -> None:
    """A vault can be made in *path*: it is absent or an empty directory."""
    if path.exists():
        if not path.is_dir():
            raise VaultExists(f"{path}: exists and is not a directory")
        if any(path.iterdir()):
            raise VaultExists(f"{path}: directory is not empty")


def create(path: Path, passphrase: bytes, kdf: KdfParams = KdfParams()) -> UnlockedVault:
    """Make a new vault in *path* (absent or empty)."""
    kdf.validate()
    check_new(path)
    path.mkdir(parents=True, exist_ok=True)
    import umbral_pre  # imported here: only init and sharing need it

    secret = umbral_pre.SecretKey.random()
    owner_key = secret.to_be_bytes()
    salt = os.urandom(16)
    kek = keys.passphrase_kek(passphrase, salt, kdf.memory_kib, kdf.iterations, kdf.lanes)
    config: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": fmt.FORMAT_VERSION,
        "content": {"cipher": "AES-256-GCM", "block_size": fmt.BLOCK_SIZE},
        "names": {"cipher": "AES-SIV-512", "encoding": "base64url", "longname_max": fmt.LONGNAME_MAX},
        "kdf": {
            "algorithm": "argon2id",
            "salt": _b64(salt),
            "memory_kib": kdf.memory_kib,
            "iterations": kdf.iterations,
            "lanes": kdf.lanes,
        },
        "owner": {
            "public_key": secret.public_key().to_compressed_bytes().hex(),
            "wrapped_key": _b64(keys.wrap_owner_key(kek, owner_key)),
        },
        "features": [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    vault = UnlockedVault(path, config, owner_key)
    create_root(path, vault.root_wrap_key)
    _write_config(path, config)
    log.info("created vault %s", path)
    return vault


def _kek(config: dict[str, Any], passphrase: bytes) -> bytes:
    kdf = config["kdf"]
    if kdf.get("algorithm") != "argon2id":
        raise UnsupportedFormat("unsupported KDF")
    return keys.passphrase_kek(
        passphrase, _unb64(kdf["salt"]), int(kdf["memory_kib"]), int(kdf["iterations"]), int(kdf["lanes"])
    )


def unlock(path: Path, passphrase: bytes) -> UnlockedVault:
    config = read_config(path)
    try:
        wrapped = _unb64(config["owner"]["wrapped_key"])
        kek = _kek(config, passphrase)
    except (KeyError, TypeError, ValueError):
        raise NotAVault(f"{path / fmt.VAULT_CONFIG_NAME}: damaged (bad key fields)") from None
    owner_key = keys.unwrap_owner_key(kek, wrapped)
    _check_public_key(path, config, owner_key)
    return UnlockedVault(path, config, owner_key)


def _check_public_key(path: Path, config: dict[str, Any], owner_key: bytes) -> None:
    """vault.json's public key names the vault in every audit event, anchor and policy, and
    is in the clear: it must be the one of the key the passphrase unwrapped."""
    import umbral_pre

    actual = umbral_pre.SecretKey.from_be_bytes(owner_key).public_key().to_compressed_bytes().hex()
    stated = config["owner"].get("public_key")
    if not isinstance(stated, str) or not hmac.compare_digest(actual, stated):
        raise IntegrityError(f"{path / fmt.VAULT_CONFIG_NAME}: the owner public key is not the vault's "
                             "(vault.json was altered)")


def change_passphrase(path: Path, old: bytes, new: bytes, kdf: KdfParams | None = None) -> None:
    """Re-wrap the owner key under *new*; no data is re-encrypted."""
    vault = unlock(path, old)
    config = dict(vault.config)
    params = kdf or KdfParams(
        int(config["kdf"]["memory_kib"]), int(config["kdf"]["iterations"]), int(config["kdf"]["lanes"])
    )
    params.validate()
    salt = os.urandom(16)
    kek = keys.passphrase_kek(new, salt, params.memory_kib, params.iterations, params.lanes)
    config["kdf"] = {
        "algorithm": "argon2id",
        "salt": _b64(salt),
        "memory_kib": params.memory_kib,
        "iterations": params.iterations,
        "lanes": params.lanes,
    }
    config["owner"] = dict(config["owner"], wrapped_key=_b64(keys.wrap_owner_key(kek, vault.owner_key)))
    _write_config(path, config)
    log.info("changed passphrase of %s", path)
