"""Key derivation and key wrapping: the key tree of DESIGN.md.

owner key --HKDF--> root wrap key --wraps--> root dir key --wraps--> child dir keys ...
every dir key --HKDF--> name key (AES-SIV), symlink key; every file DEK wrapped under
its directory key in a header slot.  Pure functions, no I/O.
"""
from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fs.format import layout as fmt
from fs.errors import IntegrityError, WrongPassphrase

INFO_ROOT_WRAP = b"umbrafs v1 root wrap"
INFO_NAMES = b"umbrafs v1 names"
INFO_SYMLINKS = b"umbrafs v1 symlinks"
INFO_XATTR_NAMES = b"umbrafs v1 xattr names"
INFO_XATTR_VALUES = b"umbrafs v1 xattr values"
OWNER_KEY_AAD = b"umbrafs v1 owner key"
INFO_ROTATE_JOURNAL = b"umbrafs v1 rotation journal"


def hkdf(key: bytes, info: bytes, length: int = fmt.KEY_LEN) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


def journal_key(root_wrap_key: bytes) -> bytes:
    """MAC key of the rotation journal: it lies in the synced vault, and a replay of it writes
    into files, so only the owner's key may vouch for what it says."""
    return hkdf(root_wrap_key, INFO_ROTATE_JOURNAL)


def new_key() -> bytes:
    return os.urandom(fmt.KEY_LEN)


def new_id() -> bytes:
    return os.urandom(fmt.ID_LEN)


def passphrase_kek(passphrase: bytes, salt: bytes, memory_kib: int, iterations: int, lanes: int) -> bytes:
    """Key-encryption key from a passphrase (Argon2id, parameters from vault.json)."""
    return Argon2id(
        salt=salt, length=fmt.KEY_LEN, iterations=iterations, lanes=lanes, memory_cost=memory_kib
    ).derive(passphrase)


def wrap_owner_key(kek: bytes, owner_key: bytes) -> bytes:
    nonce = os.urandom(fmt.NONCE_LEN)
    return nonce + AESGCM(kek).encrypt(nonce, owner_key, OWNER_KEY_AAD)


def unwrap_owner_key(kek: bytes, wrapped: bytes) -> bytes:
    try:
        return AESGCM(kek).decrypt(wrapped[: fmt.NONCE_LEN], wrapped[fmt.NONCE_LEN :], OWNER_KEY_AAD)
    except (InvalidTag, ValueError):
        raise WrongPassphrase("wrong passphrase") from None


def _slot_aad(kind: int, obj_id: bytes, parent_id: bytes) -> bytes:
    magic = fmt.FILE_MAGIC if kind == fmt.KIND_FILE else fmt.DIR_MAGIC
    return magic + bytes([fmt.FORMAT_VERSION]) + obj_id + parent_id


def wrap_slot(parent_key: bytes, parent_id: bytes, kind: int, obj_id: bytes, key: bytes) -> fmt.Slot:
    """Wrap *key* (a DEK or dir key) so that holders of *parent_key* can open it."""
    nonce = os.urandom(fmt.NONCE_LEN)
    wrapped = AESGCM(parent_key).encrypt(nonce, key, _slot_aad(kind, obj_id, parent_id))
    return fmt.Slot(parent_id, nonce, wrapped)


def unwrap_slot(parent_key: bytes, header: fmt.Header, parent_id: bytes) -> bytes:
    index = header.find_slot(parent_id)
    if index is None:
        raise IntegrityError("no key slot for this directory")
    slot = header.slots[index]
    assert slot is not None
    try:
        return AESGCM(parent_key).decrypt(slot.nonce, slot.wrapped, _slot_aad(header.kind, header.obj_id, parent_id))
    except InvalidTag:
        raise IntegrityError("key slot failed authentication") from None


def root_wrap_key(owner_key: bytes) -> bytes:
    return hkdf(owner_key, INFO_ROOT_WRAP)
