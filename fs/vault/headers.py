"""Directory keys and the headers that carry directory keys and file DEKs.

Each backing directory holds ``.umbrafs.dir``: its random id and key, wrapped
in a slot under the parent directory's key (the root's under the owner's root
wrap key).  Files carry their DEK the same way in their own header.
"""
from __future__ import annotations

import os
import stat

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fs.format import layout as fmt
from fs.format import cryptocore as keys
from fs.errors import IntegrityError
from fs.vault import backing
from fs.format.names import NameCipher, b64decode, b64encode


class DirKeys:
    """Everything derived from one directory key, built once per directory."""

    __slots__ = ("dir_id", "key", "names", "_link")

    def __init__(self, dir_id: bytes, key: bytes) -> None:
        self.dir_id = dir_id
        self.key = key
        self.names = NameCipher(key)
        self._link = AESGCM(keys.symlinks_key(key))

    def wrap(self, kind: int, obj_id: bytes, key: bytes) -> fmt.Slot:
        return keys.wrap_slot(self.key, self.dir_id, kind, obj_id, key)

    def unwrap(self, header: fmt.Header) -> bytes:
        return keys.unwrap_slot(self.key, header, self.dir_id)

    def encrypt_link(self, target: bytes) -> str:
        nonce = os.urandom(fmt.NONCE_LEN)
        return b64encode(nonce + self._link.encrypt(nonce, target, self.dir_id))

    def decrypt_link(self, c_target: str) -> bytes:
        raw = b64decode(c_target)
        try:
            return self._link.decrypt(raw[: fmt.NONCE_LEN], raw[fmt.NONCE_LEN :], self.dir_id)
        except (InvalidTag, ValueError):
            raise IntegrityError("symlink target failed authentication") from None


def owner_keys(root_wrap_key: bytes) -> DirKeys:
    """The pseudo-parent of the root directory."""
    return DirKeys(fmt.ROOT_PARENT_ID, root_wrap_key)


def new_header(kind: int, parent: DirKeys) -> tuple[fmt.Header, bytes]:
    """A fresh header for a new file or directory and its key."""
    obj_id, key = keys.new_id(), keys.new_key()
    nslots = fmt.FILE_SLOTS if kind == fmt.KIND_FILE else fmt.DIR_SLOTS
    slots: list[fmt.Slot | None] = [None] * nslots
    slots[0] = parent.wrap(kind, obj_id, key)
    return fmt.Header(kind, obj_id, tuple(slots)), key


def _header_rel(dir_rel: str) -> str:
    return fmt.DIR_HEADER_NAME if dir_rel == "." else f"{dir_rel}/{fmt.DIR_HEADER_NAME}"


def write_dir_header(root_fd: int, dir_rel: str, parent: DirKeys, mode: int = 0o644) -> DirKeys:
    header, key = new_header(fmt.KIND_DIR, parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(_header_rel(dir_rel), flags, mode, dir_fd=root_fd)
    try:
        os.write(fd, header.pack())
    finally:
        os.close(fd)
    return DirKeys(header.obj_id, key)


def read_dir_header(root_fd: int, dir_rel: str) -> fmt.Header:
    try:
        data = backing.read_small_file(root_fd, _header_rel(dir_rel), 4096)
    except FileNotFoundError:
        raise IntegrityError("directory header missing") from None
    return fmt.parse_header(data, fmt.KIND_DIR)


def load_dir_keys(root_fd: int, dir_rel: str, parent: DirKeys) -> DirKeys:
    header = read_dir_header(root_fd, dir_rel)
    return DirKeys(header.obj_id, parent.unwrap(header))


def update_dir_slot(root_fd: int, dir_rel: str, index: int, slot: fmt.Slot | None) -> None:
    fd = os.open(_header_rel(dir_rel), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    try:
        os.pwrite(fd, fmt.pack_slot(slot), fmt.slot_offset(index))
    finally:
        os.close(fd)


def create_root(path: os.PathLike[str] | str, root_wrap_key: bytes) -> DirKeys:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return write_dir_header(fd, ".", owner_keys(root_wrap_key))
    finally:
        os.close(fd)


def read_obj_id(root_fd: int, rel: str, file_fmt: int) -> bytes:
    """What the backing object at *rel* is: its file or directory id (from the header's
    fixed part, no key needed), or a symlink's backing target; b"" if unreadable.
    Never blocks: O_NONBLOCK keeps a FIFO swapped in by another writer from hanging us."""
    try:
        if file_fmt == stat.S_IFLNK:
            return os.readlink(rel, dir_fd=root_fd).encode("ascii", "replace")
        if file_fmt == stat.S_IFDIR:
            rel, magic = _header_rel(rel), fmt.DIR_MAGIC
        elif file_fmt == stat.S_IFREG:
            magic = fmt.FILE_MAGIC
        else:
            return b""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:  # a look at the id must not touch the file's atime (which the mount shows)
            fd = os.open(rel, flags | os.O_NOATIME, dir_fd=root_fd)
        except PermissionError:  # O_NOATIME needs ownership of the file
            fd = os.open(rel, flags, dir_fd=root_fd)
        try:
            prefix = os.pread(fd, fmt.FIXED_LEN, 0)
        finally:
            os.close(fd)
    except OSError:
        return b""
    if len(prefix) < fmt.FIXED_LEN or prefix[:4] != magic:
        return b""
    return prefix[fmt.FIXED_LEN - fmt.ID_LEN : fmt.FIXED_LEN]


def read_file_header(fd: int) -> fmt.Header:
    prefix = os.pread(fd, fmt.FIXED_LEN, 0)
    data = os.pread(fd, fmt.header_len_from_prefix(prefix), 0)
    return fmt.parse_header(data, fmt.KIND_FILE)


def write_file_slot(fd: int, index: int, slot: fmt.Slot | None) -> None:
    os.pwrite(fd, fmt.pack_slot(slot), fmt.slot_offset(index))
