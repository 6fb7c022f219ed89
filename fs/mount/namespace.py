"""Key-slot moves behind link, unlink, rmdir and rename (docs/format.md, "Hard links and renames").

A file's DEK is wrapped once per directory it is linked from (up to FILE_SLOTS), a
directory's key once under its parent (two slots: old and new parent while a rename is
in flight).  So a link or a move into another directory first adds a slot for the new
parent, and only once the object is in place is the old parent's slot removed: a crash
in between leaves an object that opens from both, never from neither.

The functions: the backing-directory work of the namespace, by backing path (relative
to *root_fd*) and keys.  Namespace: the bodies of the FUSE handlers that make, link,
remove and rename entries (create, mknod, mkdir, symlink, link, unlink, rmdir, rename),
by node; fs/mount/operations.py checks the request may write, translates inode numbers
to nodes and calls them.  They use the Operations object's tables and helpers (where a
node is now, its keys, its attributes) through the reference they hold.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import pyfuse3

from fs.format import layout as fmt
from fs.format.names import is_reserved
from fs.mount.handles import FileHandle
from fs.mount.inodes import Link, Node
from fs.vault import backing, entries
from fs.vault.backing import join
from fs.vault.content import OpenFile
from fs.vault.headers import (
    DirKeys,
    new_header,
    read_dir_header,
    read_file_header,
    update_dir_slot,
    write_dir_header,
    write_file_slot,
)
from fs.vault.versions import object_id_at

if TYPE_CHECKING:
    from fs.mount.events import Audit
    from fs.mount.handles import HandleTable
    from fs.mount.inodes import InodeTable
    from fs.vault.versions import VersionStore
    from wire.sink import EventSink

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
    other = header.slots[free]
    if other is not None and other.parent_id == header.obj_id:
        # The previous key of a rotation in progress (its self slot): overwriting it would
        # leave the entries still under their old names unreadable.  The rotation clears it
        # within one step; the rename can be tried again then.
        raise OSError(errno.EBUSY, "directory is being re-keyed")
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


class Adapter(Protocol):
    """What Namespace uses of the Operations object (fs/mount/operations.py): its tables,
    and its helpers for where a node is now, its keys and its attributes.  A Protocol, not
    an import: operations imports this module."""

    root_fd: int
    inodes: InodeTable
    audit: Audit
    versions: VersionStore | None
    events: EventSink | None
    handles: HandleTable
    enable_writeback_cache: bool

    def dir_keys(self, node: Node) -> DirKeys: ...
    def _name(self, parent: Node, name: bytes) -> tuple[str, str]: ...
    def _rel(self, node: Node) -> str: ...
    def _dir_rel(self, node: Node) -> str: ...
    def _lstat(self, rel: str) -> os.stat_result: ...
    def _exists(self, rel: str) -> bool: ...
    def _locate(self, node: Node, dir_by_ino: bool = False) -> tuple[str, os.stat_result]: ...
    def _node_at(self, rel: str, st: os.stat_result, dir_by_ino: bool = False) -> Node | None: ...
    def _entry(
        self, parent: Node, p_name: bytes, c_name: str, b_name: str, count: bool = True, parent_rel: str | None = None,
        obj_id: bytes = b"",
    ) -> tuple[Node, pyfuse3.EntryAttributes]: ...
    def _chown_new(self, rel: str, parent: Node, ctx: pyfuse3.RequestContext, is_dir: bool = False) -> None: ...
    def _close_file(self, node: Node) -> None: ...
    def _add_file_slot(self, node: Node, rel: str, new_parent: Node) -> None: ...
    def _drop_file_slot(self, rel: str, parent: Node, other_link_check: bool) -> None: ...
    def _readlink(self, node: Node) -> bytes: ...
    def _make_symlink(self, parent: Node, b_name: str, target: bytes) -> None: ...
    def _drop_longlink(self, rel: str, parent_rel: str, st: os.stat_result) -> None: ...


class Namespace:
    """The namespace handlers' bodies, moved out of Operations (issue 14) unchanged:
    same checks, errno values, audit events, versions calls and order of system calls."""

    def __init__(self, ops: Adapter) -> None:
        self.ops = ops

    # -- creating entries ---------------------------------------------------

    def _new_file(self, parent: Node, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> tuple[Node, pyfuse3.EntryAttributes]:
        """Create a regular file with its header; the node holds it open (refs 0)."""
        c_name, b_name = self.ops._name(parent, name)
        parent_rel = self.ops._dir_rel(parent)
        rel = join(parent_rel, b_name)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with entries.new_entry(self.ops.root_fd, parent_rel, c_name, b_name):
            fd = os.open(rel, flags, stat.S_IMODE(mode), dir_fd=self.ops.root_fd)
            try:
                header, dek = new_header(fmt.KIND_FILE, self.ops.dir_keys(parent))
                os.write(fd, header.pack())
                self.ops._chown_new(rel, parent, ctx)
                node, attr = self.ops._entry(parent, name, c_name, b_name, obj_id=header.obj_id)
            except BaseException:
                os.close(fd)
                backing.unlink_quiet(self.ops.root_fd, rel)
                raise
        if node.file is None:
            node.file = OpenFile(fd, header, dek)
        else:
            os.close(fd)
        return node, attr

    def create(
        self, parent: Node, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node, attr = self._new_file(parent, name, mode, ctx)
        assert node.file is not None
        node.file.refs += 1
        path = self.ops.inodes.child_path(parent, name) if self.ops.events is not None else ""
        fh = self.ops.handles.add(FileHandle(node, bool(flags & os.O_APPEND) and not self.ops.enable_writeback_cache, ctx, path, flags, 0))
        self.ops.audit.emit("create", ctx, path, node)
        if self.ops.versions is not None:  # no copy for a new file: a record, so restore can undo it
            self.ops.versions.created(ctx.pid, ctx.uid, path or self.ops.inodes.child_path(parent, name), node.file.file_id, fh, node.ino)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), attr

    def mknod(self, parent: Node, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if stat.S_ISREG(mode):
            node, attr = self._new_file(parent, name, mode, ctx)
            assert node.file is not None
            node.file.refs += 1
            if self.ops.versions is not None:
                self.ops.versions.created(ctx.pid, ctx.uid, self.ops.inodes.child_path(parent, name), node.file.file_id, 0, node.ino)
            self.ops._close_file(node)
            self.ops.audit.emit("create", ctx, lambda: self.ops.inodes.plain_path(node), node)
            return attr
        c_name, b_name = self.ops._name(parent, name)
        parent_rel = self.ops._dir_rel(parent)
        rel = join(parent_rel, b_name)
        with entries.new_entry(self.ops.root_fd, parent_rel, c_name, b_name):
            os.mknod(rel, mode, rdev, dir_fd=self.ops.root_fd)
        self.ops._chown_new(rel, parent, ctx)
        node, attr = self.ops._entry(parent, name, c_name, b_name)
        self.ops.audit.emit("mknod", ctx, lambda: self.ops.inodes.plain_path(node), node)
        return attr

    def mkdir(self, parent: Node, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        c_name, b_name = self.ops._name(parent, name)
        parent_rel = self.ops._dir_rel(parent)
        rel = join(parent_rel, b_name)
        with entries.new_entry(self.ops.root_fd, parent_rel, c_name, b_name):
            os.mkdir(rel, 0o700, dir_fd=self.ops.root_fd)
            try:
                keys = write_dir_header(self.ops.root_fd, rel, self.ops.dir_keys(parent))
                os.chmod(rel, stat.S_IMODE(mode), dir_fd=self.ops.root_fd)
                self.ops._chown_new(rel, parent, ctx, is_dir=True)
            except BaseException:
                backing.unlink_quiet(self.ops.root_fd, join(rel, fmt.DIR_HEADER_NAME))
                os.rmdir(rel, dir_fd=self.ops.root_fd)
                raise
        node, attr = self.ops._entry(parent, name, c_name, b_name, parent_rel=parent_rel, obj_id=keys.dir_id)
        node.keys = keys
        self.ops.audit.emit("mkdir", ctx, lambda: self.ops.inodes.plain_path(node), node)
        return attr

    def symlink(self, parent: Node, name: bytes, target: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        c_name, b_name = self.ops._name(parent, name)
        parent_rel = self.ops._dir_rel(parent)
        with entries.new_entry(self.ops.root_fd, parent_rel, c_name, b_name):
            self.ops._make_symlink(parent, b_name, target)
        rel = join(parent_rel, b_name)
        self.ops._chown_new(rel, parent, ctx)
        node, attr = self.ops._entry(parent, name, c_name, b_name)
        self.ops.audit.emit("symlink", ctx, lambda: self.ops.inodes.plain_path(node), node)
        return attr

    def link(self, node: Node, new_parent: Node, new_name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EPERM)
        c_name, b_name = self.ops._name(new_parent, new_name)
        src_rel = self.ops._locate(node)[0]
        parent_rel = self.ops._dir_rel(new_parent)
        dst_rel = join(parent_rel, b_name)
        if self.ops._exists(dst_rel):
            raise pyfuse3.FUSEError(errno.EEXIST)
        with entries.new_entry(self.ops.root_fd, parent_rel, c_name, b_name):
            if node.fmt == stat.S_IFLNK and node.link_in(new_parent) is None:
                # Symlink targets are encrypted under their directory's key: a link
                # into another directory is a copy (documented in docs/format.md).
                self.ops._make_symlink(new_parent, b_name, self.ops._readlink(node))
            else:
                if node.fmt == stat.S_IFREG and node.link_in(new_parent) is None:
                    self.ops._add_file_slot(node, src_rel, new_parent)
                os.link(src_rel, dst_rel, src_dir_fd=self.ops.root_fd, dst_dir_fd=self.ops.root_fd, follow_symlinks=False)
        new_node, attr = self.ops._entry(new_parent, new_name, c_name, b_name, obj_id=node.obj_id if node.fmt == stat.S_IFREG else b"")
        self.ops.audit.emit("link", ctx, lambda: self.ops.inodes.plain_path(node), new_node, path2=lambda: self.ops.inodes.child_path(new_parent, new_name))
        return attr

    # -- removing entries -----------------------------------------------------

    def unlink(self, parent: Node, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        c_name, b_name = self.ops._name(parent, name)
        parent_rel = self.ops._rel(parent)  # the name, encrypted under its key, is the check
        rel = join(parent_rel, b_name)
        st = self.ops._lstat(rel)
        if stat.S_ISDIR(st.st_mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            self.ops._drop_file_slot(rel, parent, other_link_check=True)
        self.ops._drop_longlink(rel, parent_rel, st)
        node = self.ops._node_at(rel, st)
        # The last link of a regular file goes into the versions area instead (fs/vault/versions.py).
        if not (self.ops.versions is not None and stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and self.ops.versions.keep_unlinked(
                rel, st, self.ops.dir_keys(parent), node.file if node is not None else None, ctx.pid, ctx.uid,
                self.ops.inodes.child_path(parent, name))):
            os.unlink(rel, dir_fd=self.ops.root_fd)
        entries.drop_longname(self.ops.root_fd, parent_rel, c_name, b_name)
        self.ops.audit.emit("unlink", ctx, lambda: self.ops.inodes.child_path(parent, name), node)
        if node is not None:
            node.drop_link(parent, c_name)

    def rmdir(self, parent: Node, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        c_name, b_name = self.ops._name(parent, name)
        parent_rel = self.ops._rel(parent)  # the name, encrypted under its key, is the check
        rel = join(parent_rel, b_name)
        st = self.ops._lstat(rel)
        if not stat.S_ISDIR(st.st_mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        saved = empty_dir_header(self.ops.root_fd, rel)
        try:
            os.rmdir(rel, dir_fd=self.ops.root_fd)
        except BaseException:
            restore_dir_header(self.ops.root_fd, rel, saved)
            raise
        entries.drop_longname(self.ops.root_fd, parent_rel, c_name, b_name)
        node = self.ops._node_at(rel, st, dir_by_ino=True)
        self.ops.audit.emit("rmdir", ctx, lambda: self.ops.inodes.child_path(parent, name), node)
        if node is not None:
            node.drop_link(parent, c_name)
            node.keys = None

    # -- rename ---------------------------------------------------------------

    def _move_keys(self, node: Node | None, st: os.stat_result, rel: str, old_parent: Node, new_parent: Node) -> Callable[[str], None]:
        """Make the object at *rel* openable from *new_parent*; return the step
        that removes the old parent's slot once the object has moved to its new path."""
        file_fmt = stat.S_IFMT(st.st_mode)
        if file_fmt == stat.S_IFREG:
            tmp = node or Node(self.ops.inodes.fuse_ino(st.st_ino), file_fmt)  # not in the table: a placeholder
            if tmp.link_in(old_parent) is None:
                tmp.add_link(Link(old_parent, b"", "", os.path.basename(rel)))
            self.ops._add_file_slot(tmp, rel, new_parent)
            multi = st.st_nlink > 1
            return lambda new_rel: self.ops._drop_file_slot(new_rel, old_parent, other_link_check=multi)
        if file_fmt == stat.S_IFDIR:
            return add_dir_slot(self.ops.root_fd, rel, self.ops.dir_keys(old_parent), self.ops.dir_keys(new_parent))
        return lambda new_rel: None

    def rename(
        self, old_parent: Node, name_old: bytes, new_parent: Node, name_new: bytes, flags: int, ctx: pyfuse3.RequestContext
    ) -> None:
        c_old, b_old = self.ops._name(old_parent, name_old)
        c_new, b_new = self.ops._name(new_parent, name_new)
        old_parent_rel, new_parent_rel = self.ops._rel(old_parent), self.ops._dir_rel(new_parent)
        rel_old, rel_new = join(old_parent_rel, b_old), join(new_parent_rel, b_new)
        exchange = bool(flags & pyfuse3.RENAME_EXCHANGE)
        st_src = self.ops._lstat(rel_old)
        try:
            st_dst: os.stat_result | None = self.ops._lstat(rel_new)
        except FileNotFoundError:
            st_dst = None
        if flags & pyfuse3.RENAME_NOREPLACE and st_dst is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if exchange and st_dst is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if st_dst is not None and st_dst.st_ino == st_src.st_ino and st_dst.st_dev == st_src.st_dev:
            return  # same object (hard links or the very same name): POSIX says do nothing
        src = self.ops._node_at(rel_old, st_src)
        dst = self.ops._node_at(rel_new, st_dst) if st_dst is not None else None
        cross = old_parent is not new_parent
        saved_header = b""
        if st_dst is not None and not exchange:
            if stat.S_ISDIR(st_dst.st_mode) and not stat.S_ISDIR(st_src.st_mode):
                raise pyfuse3.FUSEError(errno.EISDIR)
            if stat.S_ISDIR(st_src.st_mode) and not stat.S_ISDIR(st_dst.st_mode):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
        if cross and exchange and (stat.S_ISLNK(st_src.st_mode) or stat.S_ISLNK(st_dst.st_mode)):  # type: ignore[union-attr]
            raise pyfuse3.FUSEError(errno.EINVAL)

        kept = None  # the replaced file, kept in the versions area (fs/vault/versions.py)
        replaced = ""
        if cross and stat.S_ISLNK(st_src.st_mode):
            self._rename_symlink_across(src, st_src, old_parent, new_parent, rel_old, rel_new, b_old, b_new, c_old, c_new, st_dst, flags)
        else:
            finish_src = self._move_keys(src, st_src, rel_old, old_parent, new_parent) if cross else None
            finish_dst = (
                self._move_keys(dst, st_dst, rel_new, new_parent, old_parent) if cross and exchange and st_dst else None
            )
            if st_dst is not None and not exchange and stat.S_ISDIR(st_dst.st_mode):
                saved_header = empty_dir_header(self.ops.root_fd, rel_new)
            if not exchange:
                entries.write_longname(self.ops.root_fd, new_parent_rel, c_new, b_new)
            if st_dst is not None and not exchange and stat.S_ISREG(st_dst.st_mode) and self.ops.events is not None:
                # The detector counts a file replaced by rename as destroyed (encrypt-to-new-name ransomware).
                replaced = object_id_at(self.ops.root_fd, rel_new, st_dst, dst).hex() or "?"
            if self.ops.versions is not None and st_dst is not None and not exchange and stat.S_ISREG(st_dst.st_mode) and st_dst.st_nlink == 1:
                kept = self.ops.versions.before_replace(rel_new, st_dst, self.ops.dir_keys(new_parent), dst.file if dst is not None else None)
            try:
                backing.renameat2(self.ops.root_fd, rel_old, rel_new, flags & (backing.RENAME_EXCHANGE | backing.RENAME_NOREPLACE))
            except BaseException:
                restore_dir_header(self.ops.root_fd, rel_new, saved_header)
                if self.ops.versions is not None:
                    self.ops.versions.abort_replace(kept)
                raise
            if st_dst is not None and not exchange:
                self._drop_longlink_after_overwrite(st_dst, new_parent_rel)
            if not exchange and b_old != b_new:
                entries.drop_longname(self.ops.root_fd, old_parent_rel, c_old, b_old)
            if finish_src:
                finish_src(rel_new)
            if finish_dst:
                finish_dst(rel_old)
        # The inode table follows the backing tree.
        if src is not None:
            src.drop_link(old_parent, c_old)
            src.add_link(Link(new_parent, name_new, c_new, b_new))
        if dst is not None:
            dst.drop_link(new_parent, c_new)
            if exchange:
                dst.add_link(Link(old_parent, name_old, c_old, b_old))
            elif dst.is_dir:
                dst.keys = None
        self.ops.audit.emit("rename", ctx, lambda: self.ops.inodes.child_path(old_parent, name_old), src, path2=lambda: self.ops.inodes.child_path(new_parent, name_new),
                   detail={"replaced": replaced} if replaced else None)
        if self.ops.versions is not None and not exchange:
            self.ops.versions.renamed(kept, ctx.pid, ctx.uid, self.ops.inodes.child_path(old_parent, name_old), self.ops.inodes.child_path(new_parent, name_new),
                                  self.ops.versions.object_id(rel_new, st_src, src), stat.S_ISDIR(st_src.st_mode))
        if src is not None:
            if cross and stat.S_ISLNK(st_src.st_mode):
                # The symlink was re-created (new backing inode).  The kernel keeps the
                # old inode on the moved dentry; with no links it answers ESTALE and the
                # kernel looks the name up again, instead of the old node going stale
                # (ENOENT) at the next rename of the new object.
                src.links = []

    def _drop_longlink_after_overwrite(self, st_dst: os.stat_result, parent_rel: str) -> None:
        """A symlink replaced by rename may leave its long-target sidecar behind."""
        if entries.may_have_sidecar(st_dst):
            # The marker is gone with the link; sweep sidecars no link points to.
            entries.sweep_sidecars(self.ops.root_fd, parent_rel)

    def _rename_symlink_across(
        self, src: Node | None, st_src: os.stat_result, old_parent: Node, new_parent: Node,
        rel_old: str, rel_new: str, b_old: str, b_new: str, c_old: str, c_new: str,
        st_dst: os.stat_result | None, flags: int,
    ) -> None:
        """A symlink's target is encrypted under its directory key: re-create it."""
        tmp_node = src or Node(self.ops.inodes.fuse_ino(st_src.st_ino), stat.S_IFLNK)  # not in the table: a placeholder
        if tmp_node.link_in(old_parent) is None:
            tmp_node.add_link(Link(old_parent, b"", c_old, b_old))
        target = self.ops._readlink(tmp_node)
        new_parent_rel = self.ops._rel(new_parent)
        tmp_b = entries.make_temp_symlink(self.ops.root_fd, new_parent_rel, target, self.ops.dir_keys(new_parent), st_src)
        entries.write_longname(self.ops.root_fd, new_parent_rel, c_new, b_new)
        if st_dst is not None and stat.S_ISDIR(st_dst.st_mode):
            backing.unlink_quiet(self.ops.root_fd, join(new_parent_rel, tmp_b))
            raise pyfuse3.FUSEError(errno.EISDIR)
        backing.renameat2(self.ops.root_fd, join(new_parent_rel, tmp_b), rel_new, flags & backing.RENAME_NOREPLACE)
        if st_dst is not None:
            self._drop_longlink_after_overwrite(st_dst, new_parent_rel)
        self.ops._drop_longlink(rel_old, self.ops._rel(old_parent), st_src)
        os.unlink(rel_old, dir_fd=self.ops.root_fd)
        entries.drop_longname(self.ops.root_fd, self.ops._rel(old_parent), c_old, b_old)
        if src is not None:
            # New backing object, new inode number: the kernel must look it up again.
            src.links = []
