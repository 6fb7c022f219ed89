"""What `lock` takes out of a running mount and `unlock` puts back (docs/operations.md).

Key material a mount holds: the directory keys cached on inode nodes (each with its
name cipher, symlink cipher and xattr cipher), the DEK and AES-GCM context of every
open file, and (owner mounts) the UnlockedVault kept by fs/mount/control/server.py for unlock.
Plaintext it holds: names in the inode table's links, the entries of open directory
handles, the paths of open file handles and the entropy samples of writes.

Python cannot promise erasure: ``drop`` removes every reference, and overwrites the
key buffers themselves when nothing else references them any more (a refcount
check, so a buffer still in use somewhere can never be zeroed under that user's
feet).  Subkeys inside cryptography's cipher objects are freed with them, not
overwritten (OpenSSL clears its own contexts when they are freed).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import sys
from dataclasses import dataclass, field
from typing import Any

import pyfuse3

from fs.format import entropy
from fs.format import layout as fmt
from fs.vault.content import OpenFile, previous_dek
from fs.errors import UmbrafsError
from fs.vault.headers import DirKeys, read_file_header
from fs.mount.handles import DirHandle, FileHandle
from fs.mount.inodes import Node
from fs.mount.operations import Operations
from fs.mount.singlefile import SharedFile, SingleFileOperations

log = logging.getLogger(__name__)

_BYTES_DATA = bytes.__basicsize__ - 1  # offset of ob_sval in a CPython bytes object


class KeysDropped(UmbrafsError):
    """A key was needed while the mount is locked."""

    errno = errno.EACCES


class _NoCipher:
    """Stands in for a dropped AES-GCM context: any use is EACCES, never a crash or a zero key."""

    def _refuse(self, *args: Any) -> Any:
        raise KeysDropped("the mount is locked")

    encrypt = decrypt = encrypt_into = decrypt_into = _refuse


NO_CIPHER = _NoCipher()


@dataclass
class Dropped:
    """What a lock collected: kernel cache entries to invalidate and key buffers to wipe."""

    inodes: list[int] = field(default_factory=list)
    entries: list[tuple[int, bytes]] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    wiped: int = 0
    kept: int = 0


def wipe_unreferenced(dropped: Dropped) -> None:
    """Overwrite each collected key buffer that nothing but this list refers to, then forget them."""
    keys = list({id(k): k for k in dropped.keys}.values())  # one buffer may be collected twice
    dropped.keys = []
    for i in range(len(keys)):
        key = keys[i]
        # References: the list slot, `key`, getrefcount's argument.
        if isinstance(key, bytes) and len(key) >= 16 and sys.getrefcount(key) <= 3:
            ctypes.memset(id(key) + _BYTES_DATA, 0, len(key))
            dropped.wiped += 1
        elif isinstance(key, bytearray):
            key[:] = bytes(len(key))
            dropped.wiped += 1
        else:
            dropped.kept += 1
        del key
    keys.clear()


def _nodes(ops: Operations) -> list[Node]:
    return list(ops.inodes)


def _forget_open_file_key(of: OpenFile, dropped: Dropped) -> None:
    if of.dek:
        dropped.keys.append(of.dek)
    of.dek = b""
    # OpenFile (fs/vault/content.py) has no public way to drop its cipher yet: the two
    # private fields are set here, the last reach-in into it.
    of._aead = NO_CIPHER  # type: ignore[assignment]
    of._prev = None  # the DEK before a rotation (fs/vault/rotate/engine.py): re-read from the header at unlock


def _reopen_file_key(of: OpenFile, header: fmt.Header, dek: bytes) -> None:
    of.rekey(header, dek, previous_dek(header, dek))


def drop(ops: Operations) -> Dropped:
    """Forget every key and plaintext name *ops* holds (ops.locked must already be True)."""
    ops.flush_events()  # a held-back setattr event carries a plaintext path
    dropped = Dropped()
    if ops.versions is not None:
        ops.versions.forget_key(NO_CIPHER)
    for node in _nodes(ops):
        dropped.inodes.append(node.ino)
        for link in node.links:
            if link.p_name:
                dropped.entries.append((link.parent.ino, link.p_name))
                link.p_name = b""
        if node.keys is not None:
            dropped.keys.append(node.keys.key)
            node.keys = None
        node.xattr = None
        if node.file is not None:
            _forget_open_file_key(node.file, dropped)
    for handle in ops.handles:
        if isinstance(handle, FileHandle):
            handle.path = ""
            entropy.scramble(handle.sample)
        elif isinstance(handle, DirHandle):
            handle.entries = [(b"", c_name, b_name) for _, c_name, b_name in handle.entries]
    return dropped


def restore(ops: Operations, root: DirKeys, root_wrap_key: bytes | None = None) -> None:
    """Put keys back after unlock: the root's now, the others lazily from headers; names and open files now."""
    ops.inodes.root.keys = root
    if ops.versions is not None and root_wrap_key is not None:
        ops.versions.set_key(root_wrap_key)
    for node in _nodes(ops):
        for link in list(node.links):
            if link.p_name or not link.c_name:
                continue
            try:
                link.p_name = ops.dir_keys(link.parent).names.decrypt(link.c_name)
            except (pyfuse3.FUSEError, UmbrafsError, OSError) as exc:
                # The parent went away or changed: the kernel looks the name up again.
                log.info("unlock: a cached name could not be restored (%s)", exc)
                node.links.remove(link)
        of = node.file
        if of is not None and not of.dek and stat.S_ISREG(node.fmt):
            try:
                header = read_file_header(of.fd)
                _reopen_file_key(of, header, ops.dek_from(node, header))
            except (pyfuse3.FUSEError, UmbrafsError, OSError) as exc:
                log.info("unlock: an open file stays closed to I/O (%s)", exc)  # e.g. unlinked while locked
                continue
    for handle in ops.handles:
        try:
            if isinstance(handle, FileHandle):
                handle.path = ops.inodes.plain_path(handle.node) if ops.events is not None else ""
            elif isinstance(handle, DirHandle):
                names = ops.dir_keys(handle.node).names
                handle.entries = [(names.decrypt(c_name), c_name, b_name) for _, c_name, b_name in handle.entries]
        except (pyfuse3.FUSEError, UmbrafsError, OSError) as exc:
            log.info("unlock: an open handle could not be restored (%s)", exc)
            if isinstance(handle, DirHandle):
                handle.entries = []


def forget_cached_keys(ops: Operations) -> None:
    """Drop cached keys below the root so they are read again from the headers (after a re-key)."""
    for node in _nodes(ops):
        if node is not ops.inodes.root:
            node.keys = None
        node.xattr = None


# -- a share recipient's single-file view -------------------------------------------

def drop_single(ops: SingleFileOperations) -> Dropped:
    dropped = Dropped(inodes=[pyfuse3.ROOT_INODE, pyfuse3.ROOT_INODE + 1])
    if ops.name:
        dropped.entries.append((pyfuse3.ROOT_INODE, ops.name))
    dek = ops.take_key()
    if dek:
        dropped.keys.append(dek)
    del dek
    for of in ops.open_files():
        _forget_open_file_key(of, dropped)
    return dropped


def restore_single(ops: SingleFileOperations, shared: SharedFile) -> None:
    ops.give_key(shared.dek, shared.name)
    for of in ops.open_files():
        if not of.dek and of.file_id == shared.file_id:
            _reopen_file_key(of, of.header, shared.dek)


def invalidate(dropped: Dropped) -> tuple[int, int, dict[str, int]]:
    """Make the kernel forget names, attributes and cached pages (blocking: run in a thread).

    Returns (entries, inodes) invalidated and the unexpected errors by errno.
    """
    entries = inodes = 0
    errors: dict[str, int] = {}
    for parent, name in dropped.entries:
        try:
            pyfuse3.invalidate_entry(parent, name)
            entries += 1
        except OSError as exc:
            # ENOENT: not cached, or gone with its parent's dentry (invalidating a directory's
            # dentry drops its whole subtree, and the kernel evicts those inodes).
            if exc.errno != errno.ENOENT:
                key = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                errors[key] = errors.get(key, 0) + 1
    for ino in dropped.inodes:
        try:
            pyfuse3.invalidate_inode(ino)
            inodes += 1
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                key = "inode " + errno.errorcode.get(exc.errno or 0, str(exc.errno))
                errors[key] = errors.get(key, 0) + 1
    return entries, inodes, errors


def syncfs(mountpoint: str) -> None:
    """Write back dirty pages before the keys go (blocking: run in a thread)."""
    try:
        fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:  # a lock must happen even if this cannot
        log.warning("lock: dirty pages not written back first: %s", exc)
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            log.warning("lock: syncfs: %s", os.strerror(ctypes.get_errno()))
    finally:
        os.close(fd)
