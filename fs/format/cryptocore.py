"""Key derivation and key wrapping: the key tree of DESIGN.md.

owner key --HKDF--> root wrap key --wraps--> root dir key --wraps--> child dir keys ...
every dir key --HKDF--> name key (AES-SIV), symlink key; every file DEK wrapped under
its directory key in a header slot.  Pure functions, no I/O.

Every domain-separation string of the fs format lives here (gocryptfs keeps its own in
cryptocore/hkdf.go), and this is the only fs module that derives keys: HKDF, Argon2id and
the HMAC of the restore proof.  tests/fs/test_format_vectors.py checks each label's literal
*and* the constant, and a derived key for each: changing one changes the on-disk format.
"""
from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fs.format import layout as fmt
from fs.errors import IntegrityError, WrongPassphrase

# HKDF "info" strings: what each derived key is for, so no two uses share a key.
INFO_ROOT_WRAP = b"umbrafs v1 root wrap"  # owner key -> root wrap key
INFO_NAMES = b"umbrafs v1 names"  # dir key -> AES-SIV name key (64 bytes)
INFO_SYMLINKS = b"umbrafs v1 symlinks"  # dir key -> AES-GCM symlink target key
INFO_XATTR_NAMES = b"umbrafs v1 xattr names"  # DEK or dir key -> AES-SIV xattr name key (64 bytes)
INFO_XATTR_VALUES = b"umbrafs v1 xattr values"  # DEK or dir key -> AES-GCM xattr value key
INFO_VERSIONS = b"umbrafs v1 versions"  # root wrap key -> key of the versions journal (docs/versions.md)
INFO_RESTORE = b"umbrafs v1 restore"  # root wrap key -> HMAC key of the restore-begin proof
INFO_ROTATE_JOURNAL = b"umbrafs v1 rotation journal"  # root wrap key -> HMAC key of .umbrafs.rotate/
INFO_ROTATE_REQUEST = b"umbrafs v1 rotate request"  # root wrap key -> HMAC key of the `rotate` control proof
# AES-GCM associated data that is a fixed label rather than ids.
OWNER_KEY_AAD = b"umbrafs v1 owner key"  # the owner key wrapped under the passphrase KEK (vault.json)
FRAME_AAD = b"umbrafs v1 versions"  # each frame of a versions journal (same text as INFO_VERSIONS, by history)
RESTORE_PROOF_PREFIX = "restore-begin|"  # the HMAC message: prefix || event source || "|" || pid
ROTATE_PROOF_PREFIX = "rotate|"  # the HMAC message: prefix || mountpoint || "|" || pid

SIV_KEY_LEN = 64  # AES-SIV with AES-256 takes two 256-bit keys


def hkdf(key: bytes, info: bytes, length: int = fmt.KEY_LEN) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


def names_key(dir_key: bytes) -> bytes:
    return hkdf(dir_key, INFO_NAMES, SIV_KEY_LEN)


def symlinks_key(dir_key: bytes) -> bytes:
    return hkdf(dir_key, INFO_SYMLINKS)


def xattr_names_key(key: bytes) -> bytes:
    return hkdf(key, INFO_XATTR_NAMES, SIV_KEY_LEN)


def xattr_values_key(key: bytes) -> bytes:
    return hkdf(key, INFO_XATTR_VALUES)


def versions_key(root_wrap_key: bytes) -> bytes:
    return hkdf(root_wrap_key, INFO_VERSIONS)


def restore_key(root_wrap_key: bytes) -> bytes:
    return hkdf(root_wrap_key, INFO_RESTORE)


def journal_key(root_wrap_key: bytes) -> bytes:
    """MAC key of the rotation journal: it lies in the synced vault, and a replay of it writes
    into files, so only the owner's key may vouch for what it says."""
    return hkdf(root_wrap_key, INFO_ROTATE_JOURNAL)


def rotate_proof(root_wrap_key: bytes, mountpoint: str, pid: int) -> str:
    """What a `rotate` control request must carry for process *pid* at the mount on
    *mountpoint* (fs/mount/control/rotate.py): re-keying breaks shares and rewrites the whole
    subtree, so only a holder of the vault key may ask for it."""
    message = f"{ROTATE_PROOF_PREFIX}{mountpoint}|{pid}".encode()
    return hmac.new(hkdf(root_wrap_key, INFO_ROTATE_REQUEST), message, hashlib.sha256).hexdigest()


def restore_proof(root_wrap_key: bytes, source: str, pid: int) -> str:
    """What `restore-begin` must carry for process *pid* at the mount whose event source is
    *source* (fs/mount/control/restore.py): only a holder of the vault key can make it."""
    message = f"{RESTORE_PROOF_PREFIX}{source}|{pid}".encode()
    return hmac.new(restore_key(root_wrap_key), message, hashlib.sha256).hexdigest()


def new_key() -> bytes:
    return os.urandom(fmt.KEY_LEN)


def new_id() -> bytes:
    return os.urandom(fmt.ID_LEN)


def passphrase_kek(passphrase: bytes, salt: bytes, memory_kib: int, iterations: int, lanes: int) -> bytes:
    """Key-encryption key from a passphrase (Argon2id, parameters from vault.json)."""
    return Argon2id(
        salt=salt, length=fmt.KEY_LEN, iterations=iterations, lanes=lanes, memory_cost=memory_kib
    ).derive(passphrase)


def wrap_owner_key(kek: bytes, owner_key: bytes, nonce: bytes | None = None) -> bytes:
    """*nonce* is for test vectors only: by default it is random."""
    nonce = os.urandom(fmt.NONCE_LEN) if nonce is None else nonce
    return nonce + AESGCM(kek).encrypt(nonce, owner_key, OWNER_KEY_AAD)


def unwrap_owner_key(kek: bytes, wrapped: bytes) -> bytes:
    try:
        return AESGCM(kek).decrypt(wrapped[: fmt.NONCE_LEN], wrapped[fmt.NONCE_LEN :], OWNER_KEY_AAD)
    except (InvalidTag, ValueError):
        raise WrongPassphrase("wrong passphrase") from None


def _slot_aad(kind: int, obj_id: bytes, parent_id: bytes) -> bytes:
    magic = fmt.FILE_MAGIC if kind == fmt.KIND_FILE else fmt.DIR_MAGIC
    return magic + bytes([fmt.FORMAT_VERSION]) + obj_id + parent_id


def wrap_slot(parent_key: bytes, parent_id: bytes, kind: int, obj_id: bytes, key: bytes,
              nonce: bytes | None = None) -> fmt.Slot:
    """Wrap *key* (a DEK or dir key) so that holders of *parent_key* can open it.  *nonce* is
    for test vectors only: by default it is random."""
    nonce = os.urandom(fmt.NONCE_LEN) if nonce is None else nonce
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


# -- the rotation self slot (docs/format.md, "Rotation") ----------------------------------------

def self_slot(dek: bytes, file_id: bytes, previous: bytes, nonce: bytes | None = None) -> fmt.Slot:
    """The slot a file carries while `revoke --rotate` re-encrypts it: the *previous* DEK wrapped
    under the new *dek*, with the file's own id as the parent id."""
    return wrap_slot(dek, file_id, fmt.KIND_FILE, file_id, previous, nonce)


def previous_dek(header: fmt.Header, dek: bytes) -> bytes | None:
    """The DEK a file had before a rotation began re-encrypting it (its self slot), or None."""
    if header.find_slot(header.obj_id) is None:
        return None
    return unwrap_slot(dek, header, header.obj_id)
