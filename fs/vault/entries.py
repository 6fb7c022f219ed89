"""Backing entries and their sidecars: long names and sealed symlink targets.

One copy of what the mount (fs/mount) and the rotation engine (fs/vault/rotate) both do
to a backing directory's entries (docs/format.md, "Names" and "Symlinks"):

- an encrypted name longer than LONGNAME_MAX is stored as ``~<sha256>`` plus a
  ``~<sha256>.name`` sidecar holding the full encrypted name (fs/format/names.py);
- a sealed symlink target longer than LONGLINK_MIN is stored in a ``<marker>.link``
  sidecar, the backing symlink pointing at the marker (fs/format/links.py).

Every path is relative to the vault's (or share's) root descriptor, as in fs/vault/backing.py.
Synchronous and key-agnostic beyond the DirKeys passed in: used live and offline.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator

from fs.format import layout as fmt
from fs.format import links
from fs.errors import IntegrityError
from fs.format.names import backing_name, is_long
from fs.vault import backing
from fs.vault.backing import join
from fs.vault.headers import DirKeys



# -- long names ---------------------------------------------------------------------

def write_longname(root_fd: int, parent_rel: str, c_name: str, b_name: str) -> None:
    """The ``.name`` sidecar of *c_name*, if it needs one (before the entry itself is made)."""
    if is_long(c_name):
        backing.write_small_file(root_fd, join(parent_rel, b_name + fmt.LONGNAME_SUFFIX), c_name.encode("ascii"))


def drop_longname(root_fd: int, parent_rel: str, c_name: str, b_name: str) -> None:
    if is_long(c_name):
        backing.unlink_quiet(root_fd, join(parent_rel, b_name + fmt.LONGNAME_SUFFIX))


def drop_longname_of(root_fd: int, parent_rel: str, b_name: str) -> None:
    """Drop the ``.name`` sidecar of backing name *b_name* (when the encrypted name is not at hand)."""
    if b_name.startswith(fmt.LONGNAME_PREFIX):
        backing.unlink_quiet(root_fd, join(parent_rel, b_name + fmt.LONGNAME_SUFFIX))


def read_c_name(root_fd: int, parent_rel: str, b_name: str) -> str:
    """The full encrypted name behind backing name *b_name*.  A sidecar must hold the name
    whose hash is its entry's: one copied over another's would list (and, with the
    kernel's cache, serve) entry Z under name A."""
    if not b_name.startswith(fmt.LONGNAME_PREFIX):
        return b_name
    c_name = backing.read_small_file(root_fd, join(parent_rel, b_name + fmt.LONGNAME_SUFFIX)).decode("ascii")
    if not is_long(c_name) or backing_name(c_name) != b_name:
        raise IntegrityError(f"long-name sidecar of {b_name} holds another entry's name")
    return c_name


@contextlib.contextmanager
def new_entry(root_fd: int, parent_rel: str, c_name: str, b_name: str) -> Iterator[None]:
    """Write *c_name*'s sidecar, then make the entry inside the block; if the block fails,
    the sidecar goes again (the block undoes its own part first)."""
    write_longname(root_fd, parent_rel, c_name, b_name)
    try:
        yield
    except BaseException:
        drop_longname(root_fd, parent_rel, c_name, b_name)
        raise


# -- symlinks -----------------------------------------------------------------------

def link_target(root_fd: int, parent_rel: str, c_target: str, keys: DirKeys) -> bytes:
    """The plaintext target of a backing symlink in *parent_rel* pointing at *c_target*."""
    if c_target.startswith(fmt.LONGNAME_PREFIX):
        if not links.is_marker(c_target):
            raise IntegrityError("symlink target is neither sealed nor a sidecar marker")
        c_target = backing.read_small_file(root_fd, join(parent_rel, links.sidecar_name(c_target))).decode("ascii")
    return keys.decrypt_link(c_target)


def read_link(root_fd: int, parent_rel: str, b_name: str, keys: DirKeys) -> bytes:
    """The plaintext target of symlink *b_name* of *parent_rel* (*keys*: the directory's)."""
    return link_target(root_fd, parent_rel, os.readlink(join(parent_rel, b_name), dir_fd=root_fd), keys)


def make_symlink(root_fd: int, parent_rel: str, b_name: str, target: bytes, keys: DirKeys) -> None:
    """Make symlink *b_name* in *parent_rel* to *target*, sealed under the directory's *keys*."""
    c_target = keys.encrypt_link(target)
    if len(c_target) > links.LONGLINK_MIN:
        marker = links.new_marker()
        backing.write_small_file(root_fd, join(parent_rel, links.sidecar_name(marker)), c_target.encode("ascii"))
        c_target = marker
    os.symlink(c_target, join(parent_rel, b_name), dir_fd=root_fd)


def make_temp_symlink(root_fd: int, parent_rel: str, target: bytes, keys: DirKeys, like: os.stat_result) -> str:
    """Make a symlink to *target* under a temporary name, owned as *like* (when we may chown);
    the caller renames it into place.  Returns its backing name."""
    tmp = links.tmp_name()
    make_symlink(root_fd, parent_rel, tmp, target, keys)
    if backing.IS_ROOT:
        os.chown(join(parent_rel, tmp), like.st_uid, like.st_gid, dir_fd=root_fd, follow_symlinks=False)
    return tmp


def may_have_sidecar(st: os.stat_result) -> bool:
    """Whether removing the entry *st* may leave a ``.link`` sidecar no other link points to
    (a hard-linked symlink shares its marker: the sidecar stays while one link is left)."""
    return stat.S_ISLNK(st.st_mode) and st.st_size == links.LINK_MARKER_LEN and st.st_nlink <= 1


def drop_link_sidecar(root_fd: int, parent_rel: str, link_rel: str) -> None:
    """Remove the ``.link`` sidecar of the backing symlink *link_rel* (before the link goes)."""
    with contextlib.suppress(OSError):  # gone, or not a symlink: nothing to drop
        marker = os.readlink(link_rel, dir_fd=root_fd)
        if links.is_marker(marker):
            backing.unlink_quiet(root_fd, join(parent_rel, links.sidecar_name(marker)))


def sweep_sidecars(root_fd: int, parent_rel: str, *, names: bool = False) -> None:
    """Remove the ``.link`` sidecars of *parent_rel* that no symlink points to any more, and with
    *names* the ``.name`` sidecars whose entry is gone.

    A live mount sweeps link sidecars only: another writer (a sync tool) may bring a name's
    sidecar before its entry.  A rotation holds the directory and sweeps both."""
    try:
        fd = os.open(parent_rel, backing.DIR_NOFOLLOW, dir_fd=root_fd)
    except FileNotFoundError:
        return
    try:
        with os.scandir(fd) as it:
            entries = [(e.name, e.is_symlink()) for e in it]
    finally:
        os.close(fd)
    present = {name for name, _ in entries}
    markers = set()
    for name, is_symlink in entries:
        if is_symlink:
            try:
                markers.add(os.readlink(join(parent_rel, name), dir_fd=root_fd))
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.EINVAL):  # gone since, or not a symlink after all
                    return  # a marker we cannot read: sweeping now could take a live link's target
    for name in present:
        if not name.startswith(fmt.LONGNAME_PREFIX):
            continue
        if name.endswith(fmt.LONGLINK_SUFFIX):
            if name[: -len(fmt.LONGLINK_SUFFIX)] not in markers:
                backing.unlink_quiet(root_fd, join(parent_rel, name))
        elif names and name.endswith(fmt.LONGNAME_SUFFIX) and name[: -len(fmt.LONGNAME_SUFFIX)] not in present:
            backing.unlink_quiet(root_fd, join(parent_rel, name))
