"""File contents: AES-256-GCM blocks over a backing file descriptor.

The block format and its one encrypt/decrypt loop are fs/format/blocks.py; this module
is the fd I/O (pread/pwrite/ftruncate) and the read-modify-write of partial blocks.

An OpenFile is shared by all FUSE handles of one inode.  Every method runs to
completion without awaiting, so on the trio loop each read-modify-write is
atomic with respect to other requests.  The last block is encrypted with the
"final" flag in its associated data, so cutting a file at a block boundary is
detected; an all-zero non-final block is a hole (sparse files stay sparse).
"""
from __future__ import annotations

import contextlib
import errno
import os

from fs.format import blocks, cryptocore
from fs.vault import backing
from fs.format import layout as fmt
from fs.errors import UmbrafsError

B = fmt.BLOCK_SIZE
CB = fmt.CIPHER_BLOCK_SIZE


class FileTooBig(UmbrafsError):
    errno = errno.EFBIG


def previous_dek(header: fmt.Header, dek: bytes) -> bytes | None:
    """The DEK a file had before `revoke --rotate` began re-encrypting it, or None.

    While a file is mid-rotation its header holds a *self slot* (parent id = the file's
    own id): the previous DEK wrapped under the new one (docs/format.md, "Rotation";
    the slot format is fs/format/cryptocore.py's self_slot).
    """
    return cryptocore.previous_dek(header, dek)


class OpenFile:
    __slots__ = ("fd", "file_id", "header", "dek", "_aead", "_prev", "header_len", "size", "refs")

    def __init__(self, fd: int, header: fmt.Header, dek: bytes) -> None:
        self.fd = fd
        self.header_len = header.length
        self.size = fmt.plain_size(os.fstat(fd).st_size, self.header_len)
        self.refs = 0
        self.rekey(header, dek, previous_dek(header, dek))

    def rekey(self, header: fmt.Header, dek: bytes, previous: bytes | None) -> None:
        """Switch to a new DEK (fs/vault/rotate/engine.py); blocks still under *previous* keep reading."""
        self.header = header
        self.file_id = header.obj_id
        self.dek = dek
        self._aead = blocks.block_cipher(dek)
        # Mid-rotation blocks are under either key: GCM tells them apart (a wrong key fails).
        self._prev = blocks.block_cipher(previous) if previous is not None else None

    # -- blocks -----------------------------------------------------------

    def _decrypt_blocks(self, first: int, last: int, size: int) -> bytearray:
        """Plaintext of blocks first..last of a file of plaintext *size* (fs/format/blocks.py)."""
        cipher = os.pread(self.fd, (last - first + 1) * CB, fmt.block_offset(first, self.header_len))
        # Looked up per call, not cached in rekey(): fs/mount/lockdown.py swaps _aead/_prev.
        keys = (self._aead,) if self._prev is None else (self._aead, self._prev)
        return blocks.decrypt_blocks(keys, self.file_id, size, first, last, cipher)

    def _encrypt_blocks(self, first: int, plain: bytes | bytearray | memoryview, new_size: int) -> bytearray:
        return blocks.encrypt_blocks(self._aead, self.file_id, new_size, first, plain)

    # -- file operations --------------------------------------------------

    def read(self, off: int, length: int) -> memoryview | bytes:
        size = self.size
        if off >= size or length <= 0:
            return b""
        end = min(off + length, size)
        first, last = off // B, (end - 1) // B
        plain = self._decrypt_blocks(first, last, size)
        base = first * B
        return memoryview(plain)[off - base : end - base]

    def write(self, off: int, data: bytes | memoryview) -> int:
        length = len(data)
        if length == 0:
            return 0
        end = off + length
        if end > fmt.MAX_FILE_SIZE:
            raise FileTooBig("file too large")
        old_size = self.size
        new_size = max(old_size, end)
        first, last = off // B, (end - 1) // B
        base = first * B
        span_end = min((last + 1) * B, new_size)
        if off == base and end == span_end:
            # Whole blocks (the common case for big writes): encrypt straight from the request.
            self._put(first, self._encrypt_blocks(first, data, new_size), old_size, new_size)
            self.size = new_size
            return length
        buf = bytearray(span_end - base)
        # Existing bytes of a partly overwritten first or last block survive.
        if base < old_size and not (off == base and end >= min(base + B, old_size)):
            head = self._decrypt_blocks(first, first, old_size)
            buf[: len(head)] = head
        last_base = last * B
        if last != first and last_base < old_size and end < min(last_base + B, old_size):
            tail = self._decrypt_blocks(last, last, old_size)
            buf[last_base - base : last_base - base + len(tail)] = tail
        buf[off - base : end - base] = data
        self._put(first, self._encrypt_blocks(first, buf, new_size), old_size, new_size)
        self.size = new_size
        return length

    def _put(self, first: int, cipher: bytes | bytearray, old_size: int, new_size: int) -> None:
        """Write the ciphertext of blocks from *first* on.  If they start past the old final
        block, that block stops being final (padded if partial), re-encrypted only once the
        new blocks are all on the file; and a write the disk cannot take (ENOSPC, EDQUOT) is
        taken back whole, so the file stays as it was: nothing already there turns EIO."""
        old_last = (old_size - 1) // B if old_size else -1
        start = fmt.block_offset(first, self.header_len)
        old_end = fmt.cipher_size(old_size, self.header_len)
        # A growing write that rewrites blocks already there (the last one, partial) may fail
        # half-way: keep their ciphertext to put back (it fits where it was).
        saved = os.pread(self.fd, old_end - start, start) if new_size > old_size and start < old_end else b""
        try:
            backing.pwrite_all(self.fd, cipher, start)
        except OSError:
            if new_size > old_size:  # it grew the file: back to what was there
                with contextlib.suppress(OSError):
                    backing.pwrite_all(self.fd, saved, start)
                    os.ftruncate(self.fd, old_end)
            raise
        if 0 <= old_last < first:
            self._rewrite_block(old_last, old_size, (old_last + 1) * B, new_size)

    def _rewrite_block(self, block_no: int, old_size: int, new_block_end: int, new_size: int) -> None:
        """Re-encrypt one block for a new file size (zero-extended)."""
        plain = self._decrypt_blocks(block_no, block_no, old_size)
        want = min(new_block_end, new_size) - block_no * B
        if want > len(plain):
            plain += bytes(want - len(plain))
        else:
            del plain[want:]
        backing.pwrite_all(self.fd, self._encrypt_blocks(block_no, plain, new_size), fmt.block_offset(block_no, self.header_len))

    def truncate(self, new_size: int) -> None:
        if new_size > fmt.MAX_FILE_SIZE:
            raise FileTooBig("file too large")
        old_size = self.size
        if new_size == old_size:
            return
        new_last = (new_size - 1) // B if new_size else -1
        if new_size < old_size:
            if new_size:
                self._rewrite_block(new_last, old_size, new_size, new_size)
            os.ftruncate(self.fd, fmt.cipher_size(new_size, self.header_len))
        else:
            old_last = (old_size - 1) // B if old_size else -1
            if new_last != old_last:
                # Blocks in between stay holes; only the final block is real.  It is written
                # first: the old final block stops being final only once the new one exists.
                zeros = bytes(new_size - new_last * B)
                self._put(new_last, self._encrypt_blocks(new_last, zeros, new_size), old_size, new_size)
            elif old_last >= 0:
                self._rewrite_block(old_last, old_size, new_size, new_size)
        self.size = new_size

    def verify_all(self) -> None:
        """Decrypt every block (fsck); IntegrityError names the first bad one."""
        size = self.size
        if size == 0:
            return
        last = (size - 1) // B
        step = 64
        for first in range(0, last + 1, step):
            self._decrypt_blocks(first, min(first + step - 1, last), size)

