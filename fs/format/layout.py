"""Byte layout of the backing files: constants, headers and offset arithmetic.

Everything here is pure and frozen by tests/fs/test_format_vectors.py: changing a
constant changes the on-disk format (bump FORMAT_VERSION and keep reading v1).

File  = header || block_0 || block_1 || ...
header = magic(4) version(1) kind(1) nslots(1) reserved(1) id(16) nslots*slot(76)
slot   = parent_id(16) nonce(12) wrapped_key(32) tag(16)       (all-zero = free)
block  = nonce(12) AES-256-GCM(plain, aad=file_id || u64be(block_no) || u8(final)) tag(16)
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from fs.errors import IntegrityError, UnsupportedFormat

FORMAT_VERSION = 1

# 16 KiB blocks: a pure-Python block loop encrypts ~1.5 GB/s with 4 KiB blocks
# and ~3 GB/s with 16 KiB (benchmarks/block_size.py); the extra AES work of a
# 4 KiB random write inside a 16 KiB block (~8 us) is small next to one FUSE
# round trip (40-110 us).  See docs/format.md.
BLOCK_SIZE = 16384
NONCE_LEN = 12
TAG_LEN = 16
BLOCK_OVERHEAD = NONCE_LEN + TAG_LEN
CIPHER_BLOCK_SIZE = BLOCK_SIZE + BLOCK_OVERHEAD

KEY_LEN = 32
ID_LEN = 16
ROOT_PARENT_ID = bytes(ID_LEN)  # the root directory's key is wrapped for the owner

FILE_MAGIC = b"UMBF"
DIR_MAGIC = b"UMBD"
KIND_FILE = 1
KIND_DIR = 2
_FIXED = struct.Struct(">4sBBBx16s")
FIXED_LEN = _FIXED.size  # 24
SLOT_LEN = ID_LEN + NONCE_LEN + KEY_LEN + TAG_LEN  # 76
FILE_SLOTS = 4  # distinct directories a file can be hard-linked from (EMLINK beyond)
DIR_SLOTS = 2  # old and new parent while a rename is in flight
FILE_HEADER_LEN = FIXED_LEN + FILE_SLOTS * SLOT_LEN  # 328
DIR_HEADER_LEN = FIXED_LEN + DIR_SLOTS * SLOT_LEN  # 176

# Largest plaintext size: 8 TiB keeps the ciphertext under ext4's 16 TiB limit.
MAX_FILE_SIZE = 1 << 43

DIR_HEADER_NAME = ".umbrafs.dir"
VAULT_CONFIG_NAME = "vault.json"
LONGNAME_PREFIX = "~"
LONGNAME_SUFFIX = ".name"
LONGLINK_SUFFIX = ".link"
# Encrypted names longer than this go to a sidecar file; 175 leaves room for
# sync tools' conflict suffixes and filesystems with short name limits.
LONGNAME_MAX = 175


@dataclass(frozen=True, slots=True)
class Slot:
    parent_id: bytes
    nonce: bytes
    wrapped: bytes  # ciphertext || tag


@dataclass(frozen=True, slots=True)
class Header:
    kind: int
    obj_id: bytes
    slots: tuple[Slot | None, ...]

    @property
    def length(self) -> int:
        return FIXED_LEN + len(self.slots) * SLOT_LEN

    def pack(self) -> bytes:
        magic = FILE_MAGIC if self.kind == KIND_FILE else DIR_MAGIC
        out = [_FIXED.pack(magic, FORMAT_VERSION, self.kind, len(self.slots), self.obj_id)]
        for slot in self.slots:
            out.append(bytes(SLOT_LEN) if slot is None else slot.parent_id + slot.nonce + slot.wrapped)
        return b"".join(out)

    def find_slot(self, parent_id: bytes) -> int | None:
        for i, slot in enumerate(self.slots):
            if slot is not None and slot.parent_id == parent_id:
                return i
        return None

    def with_slot(self, index: int, slot: Slot | None) -> "Header":
        slots = list(self.slots)
        slots[index] = slot
        return Header(self.kind, self.obj_id, tuple(slots))


def slot_offset(index: int) -> int:
    return FIXED_LEN + index * SLOT_LEN


def pack_slot(slot: Slot | None) -> bytes:
    return bytes(SLOT_LEN) if slot is None else slot.parent_id + slot.nonce + slot.wrapped


def parse_header(data: bytes, kind: int) -> Header:
    """Parse a header; IntegrityError if damaged, UnsupportedFormat if newer."""
    if len(data) < FIXED_LEN:
        raise IntegrityError("truncated header")
    magic, version, got_kind, nslots, obj_id = _FIXED.unpack_from(data)
    if magic != (FILE_MAGIC if kind == KIND_FILE else DIR_MAGIC) or got_kind != kind:
        raise IntegrityError("bad header magic")
    if version > FORMAT_VERSION:
        raise UnsupportedFormat(f"header version {version} is newer than this umbrafs ({FORMAT_VERSION})")
    if version < 1 or nslots == 0:
        raise IntegrityError("bad header version or slot count")
    if len(data) < FIXED_LEN + nslots * SLOT_LEN:
        raise IntegrityError("truncated header")
    slots: list[Slot | None] = []
    for i in range(nslots):
        raw = data[slot_offset(i) : slot_offset(i) + SLOT_LEN]
        if raw == bytes(SLOT_LEN):
            slots.append(None)
        else:
            slots.append(Slot(raw[:ID_LEN], raw[ID_LEN : ID_LEN + NONCE_LEN], raw[ID_LEN + NONCE_LEN :]))
    return Header(kind, obj_id, tuple(slots))


def header_len_from_prefix(prefix: bytes) -> int:
    """Length of a header given at least its fixed part."""
    if len(prefix) < FIXED_LEN:
        raise IntegrityError("truncated header")
    return FIXED_LEN + prefix[6] * SLOT_LEN


# --- offsets -------------------------------------------------------------

def block_aad(file_id: bytes, block_no: int, final: bool) -> bytes:
    return file_id + block_no.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def plain_size(cipher_size: int, header_len: int) -> int:
    """Plaintext size of a file whose backing file has *cipher_size* bytes.

    A tail of 1..28 bytes cannot hold a block: it is reported as one byte so
    that reading it fails with EIO instead of the damage going unnoticed.
    """
    payload = cipher_size - header_len
    if payload <= 0:
        return 0
    full, rest = divmod(payload, CIPHER_BLOCK_SIZE)
    if rest == 0:
        return full * BLOCK_SIZE
    if rest <= BLOCK_OVERHEAD:
        return full * BLOCK_SIZE + 1
    return full * BLOCK_SIZE + rest - BLOCK_OVERHEAD


def cipher_size(size: int, header_len: int) -> int:
    """Backing file size holding *size* bytes of plaintext."""
    full, rest = divmod(size, BLOCK_SIZE)
    return header_len + full * CIPHER_BLOCK_SIZE + (rest + BLOCK_OVERHEAD if rest else 0)


def block_offset(block_no: int, header_len: int) -> int:
    return header_len + block_no * CIPHER_BLOCK_SIZE
