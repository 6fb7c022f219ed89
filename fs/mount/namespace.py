"""Key-slot moves behind link, unlink, rmdir and rename (docs/format.md, "Hard links and renames").

A file's DEK is wrapped once per directory it is linked from (up to FILE_SLOTS), a
directory's key once under its parent (two slots: old and new parent while a rename is
in flight).  So a link or a move into another directory first adds a slot for the new
parent, and only once the object is in place is the old parent's slot removed: a crash
in between leaves an object that opens from both, never from neither.

The backing-directory work of Operations' namespace handlers, by backing path (relative
to *root_fd*) and keys; which node and which directory is Operations' business.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Callable

from fs.format import layout as fmt
from fs.format.names import is_reserved
from fs.vault import backing
from fs.vault.backing import join
from fs.vault.headers import DirKeys, read_dir_header, read_file_header, update_dir_slot, write_file_slot

Finish = Callable[[str], None]  # given the object's new backing path, drop what the old place needed


def add_file_slot(root_fd: int, rel: str, new_keys: DirKeys, dek_of: Callable[[fmt.Header], bytes]) -> None:
    """Wrap the DEK of file *rel* (*dek_of* unwraps it from the header) for the directory of
    *new_keys* too, before linking or moving the file there.  EMLINK when every slot is taken."""
    with backing.owner_writable(root_fd, rel):
        fd = backing.open_file(root_fd, rel, True)
        try:
            header = read_file_header(fd)
            if header.find_slot(new_keys.dir_id) is not None:
                return
            free = next((i for i, s in enumerate(header.slots) if s is None), None)
            if free is None:
                raise OSError(errno.EMLINK, os.strerror(errno.EMLINK))
            write_file_slot(fd, free, new_keys.wrap(fmt.KIND_FILE, header.obj_id, dek_of(header)))
        finally:
            os.close(fd)


def drop_file_slot(root_fd: int, rel: str, parent_rel: str, dir_id: Callable[[], bytes], other_link_check: bool) -> None:
    """Remove the slot of the directory *parent_rel* (id: *dir_id*) from file *rel*, unless
    another hard link still lives there (*other_link_check*) or it is the file's last slot."""
    if other_link_check:
        ino = os.lstat(rel, dir_fd=root_fd).st_ino
        for entry in _listdir(root_fd, parent_rel):
            if join(parent_rel, entry.name) != rel and not is_reserved(entry.name) and entry.inode() == ino:
                return
    slot_of = dir_id()
    with backing.owner_writable(root_fd, rel):
        fd = backing.open_file(root_fd, rel, True)
        try:
            header = read_file_header(fd)
            index = header.find_slot(slot_of)
            if index is not None and sum(s is not None for s in header.slots) > 1:
                write_file_slot(fd, index, None)
        finally:
            os.close(fd)


def add_dir_slot(root_fd: int, rel: str, old_keys: DirKeys, new_keys: DirKeys) -> Finish:
    """Wrap directory *rel*'s key under its new parent (*new_keys*) in its free slot; returns
    the step that clears the old parent's slot once the directory sits at its new path."""
    header = read_dir_header(root_fd, rel)
    key = old_keys.unwrap(header)
    old_index = header.find_slot(old_keys.dir_id)
    free = next(i for i in range(len(header.slots)) if i != old_index)
    with backing.owner_writable(root_fd, rel):
        update_dir_slot(root_fd, rel, free, new_keys.wrap(fmt.KIND_DIR, header.obj_id, key))

    def finish(new_rel: str) -> None:
        with backing.owner_writable(root_fd, new_rel):
            update_dir_slot(root_fd, new_rel, old_index, None)  # type: ignore[arg-type]

    return finish


def empty_dir_header(root_fd: int, rel: str) -> bytes:
    """Check directory *rel* is logically empty (ENOTEMPTY otherwise); remove its header and
    return it, for restore_dir_header if the removal or replacement then fails."""
    for entry in _listdir(root_fd, rel):
        if entry.name != fmt.DIR_HEADER_NAME:
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
    header_rel = join(rel, fmt.DIR_HEADER_NAME)
    try:
        data = backing.read_small_file(root_fd, header_rel)
    except FileNotFoundError:
        return b""
    with backing.owner_writable(root_fd, rel):
        os.unlink(header_rel, dir_fd=root_fd)
    return data


def restore_dir_header(root_fd: int, rel: str, data: bytes) -> None:
    if data:
        with backing.owner_writable(root_fd, rel):
            backing.write_small_file(root_fd, join(rel, fmt.DIR_HEADER_NAME), data)


def _listdir(root_fd: int, rel: str) -> list[os.DirEntry[str]]:
    fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    try:
        with os.scandir(fd) as it:
            return list(it)
    finally:
        os.close(fd)
