"""Content blocks: seal and open a run of one file's blocks.  Pure: bytes in, bytes out.

The one block loop of umbrafs: fs/vault/content.py (the mount's read/write path) and the
rotation engine's re-encryption (fs/vault/rotate/engine.py) both call it and only do the
pread/pwrite around it.  Frozen by tests/fs/test_format_vectors.py; docs/format.md,
"File contents", has the byte table::

    block i = nonce(12) || AES-256-GCM(DEK, plain_i, aad = block_aad(file id, i, final)) || tag(16)

``final`` is set exactly on the last block of the file (block ``(size - 1) // BLOCK_SIZE``),
so a file cut at a block boundary fails to open.  A non-final block that is all zero bytes
(nonce, ciphertext and tag) is a hole and reads as zeros: sparse files stay sparse.  Every
block but the final one has BLOCK_SIZE plaintext bytes; a shorter one is truncated.

Blocks are addressed by plaintext *size* of the whole file (which tells where the final block
is and how long each block is) and by the number of the first block in the run.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fs.errors import IntegrityError
from fs.format.layout import BLOCK_OVERHEAD, BLOCK_SIZE, CIPHER_BLOCK_SIZE, NONCE_LEN, TAG_LEN, block_aad

ZERO_NONCE = bytes(NONCE_LEN)
# A hole: what the backing file holds (reads as) where no block was ever written.
ZERO_CIPHER_BLOCK = bytes(CIPHER_BLOCK_SIZE)
_ZERO_PLAIN = memoryview(bytes(BLOCK_SIZE))

# decrypt_blocks(status=...) codes, one byte per block of the run.  1..len(keys) is
# "opened under keys[code - 1]"; the others below are what a lenient caller skips.
HOLE = 0
TRUNCATED = 0xFE
UNOPENED = 0xFF

# What pread returns and what a FUSE write hands over (collections.abc.Buffer is 3.12+).
Bytes = bytes | bytearray | memoryview


def block_cipher(key: bytes) -> AESGCM:
    """The AEAD context blocks are sealed with (a DEK); build once per key, not per call."""
    return AESGCM(key)


def run_plain_len(size: int, first: int, last: int) -> int:
    """Plaintext bytes of blocks first..last of a file of plaintext *size*."""
    return min((last + 1) * BLOCK_SIZE, size) - first * BLOCK_SIZE


def decrypt_blocks(keys: Sequence[AESGCM], file_id: bytes, size: int, first: int, last: int,
                   cipher: Bytes, status: bytearray | memoryview | None = None) -> bytearray:
    """Plaintext of blocks first..last of a file of plaintext *size*, whose ciphertext (from
    block *first* on) is *cipher*.

    Each block is tried under *keys* in order (a file mid-rotation has blocks under two DEKs;
    GCM tells them apart).  Without *status*, a block that is cut short or opens under no key
    raises IntegrityError naming it.  With *status* (one byte per block of the run), nothing
    raises: each block's code (HOLE, 1 + index of the key that opened it, TRUNCATED, UNOPENED)
    is stored there, and blocks that did not open read as zeros.

    Decrypts in place into one preallocated buffer: fresh bytes per block cost 4x the AES
    time itself (110 vs 28 us per 128 KiB, measured on the read path).
    """
    out = bytearray(run_plain_len(size, first, last))
    _decrypt(keys, file_id, size, first, last, cipher, memoryview(out), status, True)
    return out


def decrypt_blocks_into(keys: Sequence[AESGCM], file_id: bytes, size: int, first: int, last: int,
                        cipher: Bytes, out: memoryview, status: bytearray | memoryview | None = None) -> None:
    """decrypt_blocks() into *out* (run_plain_len(size, first, last) bytes), a buffer the caller
    reuses: the rotation engine, whose ~1 MiB half-chunks would otherwise cost a fresh zeroed
    buffer (and its page faults) per step.  Holes and blocks that did not open are zero-filled,
    so nothing of an earlier run, nor unauthenticated output, is left in *out*."""
    _decrypt(keys, file_id, size, first, last, cipher, out, status, False)


def _decrypt(keys: Sequence[AESGCM], file_id: bytes, size: int, first: int, last: int, cipher: Bytes,
             ov: memoryview, status: bytearray | memoryview | None, fresh: bool) -> None:
    """The block loop of decrypt_blocks(_into); *fresh*: *ov* is known to be all zero."""
    final_no = (size - 1) // BLOCK_SIZE
    mv = memoryview(cipher)
    decrypt_into = keys[0].decrypt_into
    for block_no in range(first, last + 1):
        i = block_no - first
        start = i * CIPHER_BLOCK_SIZE
        plain_len = min(BLOCK_SIZE, size - block_no * BLOCK_SIZE)
        chunk = mv[start : start + plain_len + BLOCK_OVERHEAD]
        dst = ov[i * BLOCK_SIZE : i * BLOCK_SIZE + plain_len]
        if len(chunk) != plain_len + BLOCK_OVERHEAD:
            if status is None:
                raise IntegrityError(f"block {block_no} truncated")
            status[i] = TRUNCATED
            if not fresh:
                dst[:] = _ZERO_PLAIN[:plain_len]
            continue
        final = block_no == final_no
        # The nonce compare first: a random nonce is never all zero, so the full compare is rare.
        if not final and chunk[:NONCE_LEN] == ZERO_NONCE and chunk == ZERO_CIPHER_BLOCK:
            if status is not None:
                status[i] = HOLE
            if not fresh:
                dst[:] = _ZERO_PLAIN
            continue  # a fresh buffer is already zero
        aad = block_aad(file_id, block_no, final)
        nonce, body = chunk[:NONCE_LEN], chunk[NONCE_LEN:]
        try:
            decrypt_into(nonce, body, aad, dst)
            code = 1
        except InvalidTag:
            code = _try_others(keys, nonce, body, aad, dst)
            if code == UNOPENED:
                if status is None:
                    raise IntegrityError(f"block {block_no} failed authentication") from None
                dst[:] = _ZERO_PLAIN[:plain_len]  # never hand on what a failed decryption wrote
        if status is not None:
            status[i] = code


def _try_others(keys: Sequence[AESGCM], nonce: memoryview, body: memoryview, aad: bytes, dst: memoryview) -> int:
    """The status code of a block that failed under keys[0] (off the hot path: no slice per call)."""
    for k in range(1, len(keys)):
        try:
            keys[k].decrypt_into(nonce, body, aad, dst)
            return k + 1
        except InvalidTag:
            continue
    return UNOPENED


def encrypt_blocks(key: AESGCM, file_id: bytes, size: int, first: int, plain: Bytes,
                   nonces: bytes | None = None) -> bytearray:
    """Ciphertext of *plain* as blocks first.. of a file whose plaintext size will be *size*.

    *plain* starts at a block boundary; only its last block may be short.  *nonces*
    (NONCE_LEN bytes per block) is for test vectors: by default they are random.
    """
    length = len(plain)
    n = (length + BLOCK_SIZE - 1) // BLOCK_SIZE
    out = bytearray(length + n * BLOCK_OVERHEAD)
    encrypt_blocks_into(key, file_id, size, first, plain, out, None, nonces)
    return out


def encrypt_blocks_into(key: AESGCM, file_id: bytes, size: int, first: int, plain: Bytes,
                        out: bytearray | memoryview, select: Bytes | None = None,
                        nonces: bytes | None = None) -> None:
    """Seal *plain* (blocks first.., laid out BLOCK_SIZE apart) into *out* (CIPHER_BLOCK_SIZE
    apart).  With *select* (one byte per block), only blocks whose byte is non-zero are sealed
    and the rest of *out* is left as it was: rotation re-seals just the blocks it opened.
    """
    final_no = (size - 1) // BLOCK_SIZE
    mv = memoryview(plain)
    n = (len(mv) + BLOCK_SIZE - 1) // BLOCK_SIZE
    if nonces is None:
        nonces = os.urandom(NONCE_LEN * n)  # one call: urandom per block costs ~1 us each
    ov = memoryview(out)
    sv = None if select is None else memoryview(select)
    encrypt_into = key.encrypt_into
    for i in range(n):
        if sv is not None and not sv[i]:
            continue
        block_no = first + i
        chunk = mv[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
        o = i * CIPHER_BLOCK_SIZE
        nonce = nonces[i * NONCE_LEN : (i + 1) * NONCE_LEN]
        ov[o : o + NONCE_LEN] = nonce
        encrypt_into(nonce, chunk, block_aad(file_id, block_no, block_no == final_no),
                     ov[o + NONCE_LEN : o + NONCE_LEN + len(chunk) + TAG_LEN])
