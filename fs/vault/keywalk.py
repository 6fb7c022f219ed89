"""Reaching a directory's key or a file's DEK offline, without a mount.

Sharing hands out the key of one directory (or the DEK of one file).  The owner's
`share` finds it from the root keys, the way a lookup would but without going
through FUSE: each plaintext component is encrypted under its parent's name key
(long names give their hashed backing name), and each directory header on the
way is unwrapped with the key of the one above it — the walk fsck does, along one
path.  ``plain_path`` goes the other way for `shares`; ``locate`` lets a recipient,
who holds only the shared key, find the shared object by its id if the owner has
moved it since sharing; ``open_dir`` opens a backing directory below the vault
one component at a time without following symlinks (the backing dir may be
writable by others, and a planted symlink must not lead the mount elsewhere).
"""
from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from fs.vault import backing
from fs.vault.backing import join, safe_rel as _safe_rel
from fs.vault.entries import read_c_name
from fs.errors import IntegrityError, NotAVault, UmbrafsError
from fs.vault.headers import DirKeys, load_dir_keys, owner_keys, read_dir_header, read_file_header
from fs.format.names import NAME_MAX, backing_name, is_reserved
from fs.vault.config import UnlockedVault

KIND_DIR = "dir"
KIND_FILE = "file"



class PathNotFound(NotAVault):
    """A path that does not exist in the vault (exit code 11, like a missing vault path)."""

    errno = errno.ENOENT


class NotShareable(UmbrafsError):
    """Only directories and regular files carry a key that can be shared."""

    errno = errno.EINVAL


@dataclass(frozen=True, slots=True)
class Target:
    """What a plaintext path leads to: its backing path, object id and key (dir key or DEK)."""

    kind: str            # KIND_DIR or KIND_FILE
    backing_rel: str     # relative to the vault; "." for the root
    obj_id: bytes
    key: bytes = field(repr=False)
    name: bytes = b""    # last plaintext component (b"" for the root)

    def dir_keys(self) -> DirKeys:
        if self.kind != KIND_DIR:
            raise NotShareable("not a directory")
        return DirKeys(self.obj_id, self.key)


def split_plain(path: str | bytes) -> list[bytes]:
    """"/projects/x" (relative to the drive's root) → [b"projects", b"x"]; "" or "/" → []."""
    # Lexical, as the kernel resolves a path inside the mount: "/.." is "/" again.
    norm = posixpath.normpath(b"/" + os.fsencode(path).lstrip(b"/"))
    return [p for p in norm.split(b"/") if p]


def _vault_fd(vault_path: os.PathLike[str] | str) -> int:
    try:
        return os.open(vault_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotAVault(f"{vault_path}: no such directory") from None


def find(vault: UnlockedVault, plain_path: str | bytes) -> Target:
    """The key of *plain_path* (a path inside the drive, "/" = its root), found offline.

    PathNotFound if a component is missing or a non-final one is not a directory;
    NotShareable for a symlink or special file; IntegrityError if a header on the way
    does not authenticate.
    """
    parts = split_plain(plain_path)
    fd = _vault_fd(vault.path)
    try:
        keys = load_dir_keys(fd, ".", owner_keys(vault.root_wrap_key))
        rel, shown = ".", ""
        for index, p_name in enumerate(parts):
            shown += "/" + os.fsdecode(p_name)
            if len(p_name) > NAME_MAX:
                raise PathNotFound(f"{shown}: no such file or directory in the drive")
            child_rel = join(rel, backing_name(keys.names.encrypt(p_name)))
            try:
                st = os.lstat(child_rel, dir_fd=fd)
            except FileNotFoundError:
                raise PathNotFound(f"{shown}: no such file or directory in the drive") from None
            if stat.S_ISDIR(st.st_mode):
                keys = load_dir_keys(fd, child_rel, keys)
                rel = child_rel
                continue
            if index != len(parts) - 1:
                raise PathNotFound(f"{shown}: not a directory")
            if not stat.S_ISREG(st.st_mode):
                raise NotShareable(f"{shown}: only directories and regular files can be shared")
            file_fd = os.open(child_rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                header = read_file_header(file_fd)
            finally:
                os.close(file_fd)
            return Target(KIND_FILE, child_rel, header.obj_id, keys.unwrap(header), p_name)
        return Target(KIND_DIR, rel, keys.dir_id, keys.key, parts[-1] if parts else b"")
    finally:
        os.close(fd)


_c_name = read_c_name


def plain_path(vault: UnlockedVault, backing_rel: str) -> str:
    """The plaintext path ("/a/b") of a backing path; PathNotFound if it is gone."""
    parts = [p for p in backing_rel.split("/") if p and p != "."]
    fd = _vault_fd(vault.path)
    try:
        keys = load_dir_keys(fd, ".", owner_keys(vault.root_wrap_key))
        rel, out = ".", []
        for index, b_name in enumerate(parts):
            if is_reserved(b_name) or b_name == "..":
                raise PathNotFound(f"{backing_rel}: not a path of the drive")
            try:
                c_name = _c_name(fd, rel, b_name)
                st = os.lstat(join(rel, b_name), dir_fd=fd)
            except FileNotFoundError:
                raise PathNotFound(f"{backing_rel}: no longer in the vault (moved or deleted)") from None
            out.append(keys.names.decrypt(c_name).decode("utf-8", "backslashreplace"))
            rel = join(rel, b_name)
            if index != len(parts) - 1:
                if not stat.S_ISDIR(st.st_mode):
                    raise PathNotFound(f"{backing_rel}: not a directory on the way")
                keys = load_dir_keys(fd, rel, keys)
        return "/" + "/".join(out)
    finally:
        os.close(fd)


def _obj_id(fd: int, rel: str, kind: str) -> bytes | None:
    """The object id of the directory or file at *rel*, or None if there is none of that kind."""
    try:
        if kind == KIND_DIR:
            return read_dir_header(fd, rel).obj_id
        file_fd = os.open(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            if not stat.S_ISREG(os.fstat(file_fd).st_mode):
                return None
            return read_file_header(file_fd).obj_id
        finally:
            os.close(file_fd)
    except (IntegrityError, OSError, ValueError):
        return None


def _tree(fd: int, rel: str) -> Iterator[tuple[str, bool]]:
    """Every (backing path, is_dir) below *rel*, depth first, never following symlinks."""
    try:
        dir_fd = os.open(rel, backing.DIR_NOFOLLOW, dir_fd=fd)
    except OSError:
        return
    try:
        with os.scandir(dir_fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it if not is_reserved(e.name)]
    finally:
        os.close(dir_fd)
    for name, is_dir in sorted(entries):
        child = join(rel, name)
        yield child, is_dir
        if is_dir:
            yield from _tree(fd, child)


def locate(vault_path: os.PathLike[str] | str, backing_rel: str, obj_id: bytes, kind: str) -> str:
    """Where the shared object *obj_id* is now: *backing_rel* if it is still there, else the
    first match of a walk of the vault (the owner may have moved or renamed it).  Needs no key:
    object ids sit in the clear in the headers.  PathNotFound if it is nowhere."""
    fd = _vault_fd(vault_path)
    try:
        if _safe_rel(backing_rel) and _obj_id(fd, backing_rel, kind) == obj_id:
            return backing_rel
        if kind == KIND_DIR and _obj_id(fd, ".", kind) == obj_id:
            return "."
        for rel, is_dir in _tree(fd, "."):
            if is_dir == (kind == KIND_DIR) and _obj_id(fd, rel, kind) == obj_id:
                return rel
    finally:
        os.close(fd)
    what = "directory" if kind == KIND_DIR else "file"
    raise PathNotFound(f"the shared {what} is no longer in the vault (deleted?)")


def open_dir(vault_path: os.PathLike[str] | str, rel: str) -> int:
    """A descriptor of the backing directory *rel* below the vault, opened one component at a
    time with O_NOFOLLOW (a symlink planted in the backing dir is refused, not followed)."""
    if not _safe_rel(rel):
        raise PathNotFound(f"{rel}: not a path below the vault")
    fd = _vault_fd(vault_path)
    if rel == ".":
        return fd
    try:
        for part in rel.split("/"):
            child = os.open(part, backing.DIR_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as exc:
        os.close(fd)
        raise PathNotFound(f"{rel}: cannot open the shared directory ({exc.strerror})") from None
    return fd
