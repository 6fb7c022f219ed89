"""The pyfuse3 adapter: FUSE requests onto the encrypted backing directory.

Handlers run inline on the trio loop (a backing syscall costs ~2 us and AES of
a block ~4 us, far below the 40-110 us of a FUSE round trip); only fsync goes
to a worker thread.  Only FUSEError may leave a handler: the `fuse` decorator
(fs/mount/boundary.py, shared with the single-file view) maps OSError to its errno,
project errors to theirs, anything else to EIO.  The work behind the handlers lives
elsewhere: sidecars in fs/vault/entries.py, audit events in fs/mount/events.py,
handles in fs/mount/handles.py.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

from fs.vault import backing
from fs.format import entropy
from fs.format import layout as fmt
from fs.format.links import LINK_MARKER_LEN, SYMLINK_MAX
from fs.vault import entries
from wire.sink import EventSink
from fs.vault.backing import join
from fs.vault.content import OpenFile
from fs.errors import IntegrityError, UmbrafsError, UnsupportedFormat
from fs.vault.headers import (
    DirKeys,
    load_dir_keys,
    owner_keys,
    read_file_header,
    read_obj_id,
)
from fs.mount.boundary import GatedOperations, fuse
from fs.mount.events import Audit
from fs.mount import namespace
from fs.mount.handles import DirHandle, FileHandle, HandleTable
from fs.mount.inodes import InodeTable, Link, Node
from fs.vault.keywalk import open_dir
from fs.format.names import backing_name, is_reserved
from fs.vault.versions import Limits, VersionStore
from fs.format.xattrs import XattrCipher

log = logging.getLogger(__name__)


class Operations(GatedOperations):
    enable_writeback_cache = True
    # False (`mount --no-xattr`): getxattr answers ENOSYS, after which the kernel
    # stops sending GETXATTR for the whole mount, including the security.capability
    # query it makes before every write(2) on FUSE (10,163 of the 70,700 requests
    # of extracting the Django sdist); setting xattrs answers EOPNOTSUPP.
    enable_xattr = True

    def __init__(
        self,
        vault_path: str,
        root_wrap_key: bytes | None,
        *,
        read_only: bool = False,
        events: EventSink | None = None,
        timeout: float = 1.0,
        root: tuple[str, DirKeys] | None = None,
        versions: Limits | None = None,
    ) -> None:
        """Serve the owner's whole vault (*root_wrap_key*), or with *root* = (backing path
        below the vault, its keys) a shared directory as the root: a recipient's view.
        Every backing path is relative to root_fd, so nothing above it can be reached."""
        super().__init__()
        if root is None:
            self.root_fd = os.open(vault_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            self.root_fd = open_dir(vault_path, root[0])
        self.read_only = read_only
        self.events = events  # None: no audit sink attached
        self.timeout = timeout
        self.inodes = InodeTable(os.fstat(self.root_fd).st_ino)
        self.audit = Audit(events, self.inodes)
        self.restoring = self.audit.restoring  # fs/mount/control/restore.py tags a proven restore's pid here
        if root is None:
            assert root_wrap_key is not None  # a rotation cut short was repaired before (fs/mount/serve.py)
            self.inodes.root.keys = load_dir_keys(self.root_fd, ".", owner_keys(root_wrap_key))
        else:
            self.inodes.root.keys = root[1]
        self.handles = HandleTable()
        self.initialized = trio.Event()
        # Previous versions (fs/vault/versions.py): owner mounts only (the area's key derives from the root wrap key).
        self.versions: VersionStore | None = None
        if versions is not None and root is None and not read_only and root_wrap_key is not None:
            self.versions = VersionStore(self.root_fd, root_wrap_key, versions)
        self.locked = False  # fs/mount/lockdown.py: keys dropped, requests refused
        self.locked_refusals = 0
        self.namespace = namespace.Namespace(self)  # the bodies of create ... rename

    def init(self) -> None:
        # Called by pyfuse3 when the kernel's INIT arrives: the mount is live.
        self.initialized.set()

    def flush_events(self) -> None:
        """Emit a held-back run of setattr events (fs/mount/tasks.py calls this every second)."""
        self.audit.flush()

    def close(self) -> None:
        if self.events is not None:
            self.flush_events()
        if self.versions is not None:
            self.versions.close()
        os.close(self.root_fd)

    def open_handles(self) -> list[int]:
        """The file handles open now (the versions area forgets the others' state)."""
        return self.handles.numbers()

    # -- helpers ------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    def _rel(self, node: Node) -> str:
        """The backing path of *node*, relative to root_fd."""
        root = self.inodes.root
        if node is root:
            return "."
        parts = []
        while node is not root:  # a loop, not recursion: nearly every request comes here
            if not node.links:
                # A file reached by inode after its last name went (looked up, then
                # unlinked or replaced by rename, e.g. write-tmp-then-rename): ESTALE
                # makes the kernel redo the path walk with LOOKUP_REVAL and find the
                # new file, as open/stat on a local fs would; ENOENT would be a lie.
                # (Open files never get here: they are served from node.file.)
                raise pyfuse3.FUSEError(errno.ENOENT if node.is_dir else errno.ESTALE)
            link = node.links[0]
            parts.append(link.b_name)
            node = link.parent
        parts.reverse()
        return "/".join(parts)

    def dir_keys(self, node: Node) -> DirKeys:
        """The keys of directory *node*, loaded from its header (checked to be its own) when not cached."""
        while node.keys is None:
            if not node.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            if not node.links:
                raise pyfuse3.FUSEError(errno.ENOENT)
            parent_keys = self.dir_keys(node.links[0].parent)
            try:
                keys = load_dir_keys(self.root_fd, self._rel(node), parent_keys)
            except (IntegrityError, UnsupportedFormat) as exc:
                if node.obj_id and read_obj_id(self.root_fd, self._rel(node), stat.S_IFDIR) != node.obj_id:
                    self._stale(node)  # another directory sits at the path now
                    continue
                self._integrity(node, exc)  # name the damaged directory, not just the request
                raise
            if node.obj_id and keys.dir_id != node.obj_id:
                self._stale(node)
                continue
            node.obj_id = keys.dir_id
            node.keys = keys
        return node.keys

    # -- where a node is now: the backing dir has other writers ----------------

    def _identity(self, rel: str, file_fmt: int) -> Callable[[], bytes]:
        return lambda: read_obj_id(self.root_fd, rel, file_fmt)

    def _stale(self, node: Node) -> None:
        """*node*'s first link no longer leads to it: another writer moved, replaced or
        deleted it.  Forget that link (if the parent itself moved, forget the parent's);
        with no link left the request answers ESTALE and the kernel looks the path up again."""
        link = node.links[0]
        if link.parent is not self.inodes.root:
            self._locate(link.parent)  # raises if the parent is the one that went
        log.info("backing object of inode %d is no longer at %s (changed by another writer)", node.ino, self._rel(node))
        node.links.pop(0)
        if not node.links:
            raise pyfuse3.FUSEError(errno.ESTALE)

    def _locate(self, node: Node, dir_by_ino: bool = False) -> tuple[str, os.stat_result]:
        """The backing path of *node*, checked to hold *node*'s own object, and its stat
        (*dir_by_ino*: see InodeTable.is_object)."""
        while True:
            rel = self._rel(node)
            try:
                st = self._lstat(rel)
            except FileNotFoundError:
                st = None
            if st is not None and self.inodes.is_object(node, st, self._identity(rel, node.fmt), dir_by_ino):
                return rel, st
            if node is self.inodes.root:
                raise pyfuse3.FUSEError(errno.ESTALE)
            self._stale(node)

    def _node_at(self, rel: str, st: os.stat_result, dir_by_ino: bool = False) -> Node | None:
        """The node of the object just found at *rel*, if the table has one (not a stale
        node whose inode number the backing fs has since given to this object)."""
        node = self.inodes.get(self.inodes.fuse_ino(st.st_ino))
        if node is None or not self.inodes.is_object(node, st, self._identity(rel, stat.S_IFMT(st.st_mode)), dir_by_ino):
            return None
        return node

    def _dir_rel(self, node: Node) -> str:
        """The backing path of directory *node*, checked by its header's id (a directory
        changes ctime with every entry, so its id is read each time): before anything is
        created or listed in it.  Removing a name needs no such check: the name, encrypted
        under this directory's key, exists in no other directory."""
        keys = self.dir_keys(node)
        if node is self.inodes.root:
            return "."
        while True:
            rel = self._rel(node)
            if read_obj_id(self.root_fd, rel, stat.S_IFDIR) == keys.dir_id:
                return rel
            self._stale(node)

    def record_refusal(self, name: str, args: tuple[Any, ...], code: int) -> None:
        self.audit.refused(name, args, code)

    def _writable(self) -> None:
        if self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    def _name(self, parent: Node, name: bytes) -> tuple[str, str]:
        if len(name) > 255:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        if name in (b".", b"..") or b"/" in name or not name:
            raise pyfuse3.FUSEError(errno.EINVAL)
        c_name = self.dir_keys(parent).names.encrypt(name)
        return c_name, backing_name(c_name)

    def _lstat(self, rel: str) -> os.stat_result:
        return os.lstat(rel, dir_fd=self.root_fd)

    def _exists(self, rel: str) -> bool:
        try:
            self._lstat(rel)
        except FileNotFoundError:
            return False
        return True

    def _listdir(self, rel: str) -> list[os.DirEntry[str]]:
        fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.root_fd)
        try:
            with os.scandir(fd) as it:
                return list(it)
        finally:
            os.close(fd)

    def _attr(self, st: os.stat_result, node: Node | None = None) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = self.inodes.fuse_ino(st.st_ino)
        attr.generation = node.generation if node is not None else 0
        attr.entry_timeout = self.timeout
        attr.attr_timeout = self.timeout
        attr.st_mode = st.st_mode
        attr.st_nlink = st.st_nlink
        attr.st_uid = st.st_uid
        attr.st_gid = st.st_gid
        attr.st_rdev = st.st_rdev
        file_fmt = stat.S_IFMT(st.st_mode)
        if file_fmt == stat.S_IFREG:
            header_len = node.file.header_len if node is not None and node.file else fmt.FILE_HEADER_LEN
            attr.st_size = fmt.plain_size(st.st_size, header_len)
        elif file_fmt == stat.S_IFLNK:
            attr.st_size = self._link_size(st, node)
        else:
            attr.st_size = st.st_size
        attr.st_blksize = fmt.BLOCK_SIZE
        attr.st_blocks = st.st_blocks
        attr.st_atime_ns = st.st_atime_ns
        attr.st_mtime_ns = st.st_mtime_ns
        attr.st_ctime_ns = st.st_ctime_ns
        return attr

    def _link_size(self, st: os.stat_result, node: Node | None) -> int:
        if st.st_size != LINK_MARKER_LEN:
            return max(st.st_size * 3 // 4 - fmt.BLOCK_OVERHEAD, 0)
        if node is None or not node.links:
            return 0
        try:
            return len(self._readlink(node))
        except (OSError, UmbrafsError):
            return 0

    def _entry(
        self, parent: Node, p_name: bytes, c_name: str, b_name: str, count: bool = True, parent_rel: str | None = None,
        obj_id: bytes = b"",
    ) -> tuple[Node, pyfuse3.EntryAttributes]:
        """Stat and remember the entry *b_name* of *parent*; *obj_id*: its id when we just made it."""
        rel = join(self._rel(parent) if parent_rel is None else parent_rel, b_name)
        st = self._lstat(rel)
        node = self.inodes.remember(st, Link(parent, p_name, c_name, b_name), count, obj_id or self._identity(rel, stat.S_IFMT(st.st_mode)))
        return node, self._attr(st, node)

    def _chown_new(self, rel: str, parent: Node, ctx: pyfuse3.RequestContext, is_dir: bool = False) -> None:
        """As root, new entries belong to the caller (and a setgid dir's group)."""
        if not backing.IS_ROOT:
            return
        gid = ctx.gid
        pst = self._lstat(rel.rpartition("/")[0] or ".")  # the parent's backing path
        if ctx.uid == 0 and gid == 0 and not pst.st_mode & stat.S_ISGID:
            return  # already root's
        if pst.st_mode & stat.S_ISGID:
            gid = pst.st_gid
            if is_dir:
                st = self._lstat(rel)
                os.chmod(rel, stat.S_IMODE(st.st_mode) | stat.S_ISGID, dir_fd=self.root_fd)
        mode = self._lstat(rel).st_mode
        os.chown(rel, ctx.uid, gid, dir_fd=self.root_fd, follow_symlinks=False)
        if not stat.S_ISDIR(mode) and not stat.S_ISLNK(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
            # chown clears setuid/setgid of a non-directory, even for root; the kernel
            # already stripped what the caller may not have, so restore the rest.
            os.chmod(rel, stat.S_IMODE(mode), dir_fd=self.root_fd)

    # -- files: open state and key slots -------------------------------------

    def dek_from(self, node: Node, header: fmt.Header) -> bytes:
        """The DEK in *header*, unwrapped by the key of a directory *node* is linked from."""
        for link in node.links:
            keys = self.dir_keys(link.parent)
            if header.find_slot(keys.dir_id) is not None:
                return keys.unwrap(header)
        raise IntegrityError("file has no key slot for any directory it is linked from")

    def _open_backing(self, node: Node) -> tuple[int, fmt.Header]:
        """Open *node*'s backing file by path, checked to be *node*'s own object: the
        inode number it was known by and, once known, the file id in its header."""
        while True:
            fd = backing.open_file(self.root_fd, self._rel(node), not self.read_only)
            try:
                st = os.fstat(fd)
                if self.inodes.fuse_ino(st.st_ino) == node.ino and stat.S_ISREG(st.st_mode):
                    header = read_file_header(fd)
                    if not node.obj_id or header.obj_id == node.obj_id:
                        node.obj_id = header.obj_id
                        self.inodes.confirmed(node, st)
                        return fd, header
                    log.info("backing file %s holds file id %s, not %s: replaced by another writer",
                             self._rel(node), header.obj_id.hex(), node.obj_id.hex())
            except BaseException as exc:
                os.close(fd)
                if isinstance(exc, (IntegrityError, UnsupportedFormat)):
                    self._integrity(node, exc)  # name the damaged backing file
                raise
            os.close(fd)
            self._stale(node)

    def _open_file(self, node: Node) -> OpenFile:
        if node.file is None:
            fd, header = self._open_backing(node)
            try:
                node.file = OpenFile(fd, header, self.dek_from(node, header))
            except BaseException as exc:
                os.close(fd)
                if isinstance(exc, (IntegrityError, UnsupportedFormat)):
                    self._integrity(node, exc)
                raise
        node.file.refs += 1
        return node.file

    def _close_file(self, node: Node) -> None:
        of = node.file
        if of is None:
            return
        of.refs -= 1
        if of.refs <= 0:
            os.close(of.fd)
            node.file = None
            self.inodes.maybe_drop(node)

    def _add_file_slot(self, node: Node, rel: str, new_parent: Node) -> None:
        """Wrap the file's DEK for *new_parent* too (before linking or moving it there)."""
        namespace.add_file_slot(self.root_fd, rel, self.dir_keys(new_parent), lambda header: self.dek_from(node, header))

    def _drop_file_slot(self, rel: str, parent: Node, other_link_check: bool) -> None:
        """Remove the slot of *parent* unless another hard link still lives there."""
        namespace.drop_file_slot(self.root_fd, rel, self._rel(parent), lambda: self.dir_keys(parent).dir_id, other_link_check)

    # -- symlinks -----------------------------------------------------------

    def _readlink(self, node: Node) -> bytes:
        while True:
            rel = self._rel(node)  # first: a node without links answers ESTALE, not IndexError
            link = node.links[0]
            try:
                c_target = os.readlink(rel, dir_fd=self.root_fd)
            except (FileNotFoundError, NotADirectoryError):
                c_target = ""
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: not a symlink (any more)
                    raise
                c_target = ""
            # The backing target is random per symlink: it tells this link from one put in its place.
            if c_target and (not node.obj_id or c_target.encode("ascii", "replace") == node.obj_id):
                break
            self._stale(node)
        return entries.link_target(self.root_fd, self._rel(link.parent), c_target, self.dir_keys(link.parent))

    def _make_symlink(self, parent: Node, b_name: str, target: bytes) -> None:
        entries.make_symlink(self.root_fd, self._rel(parent), b_name, target, self.dir_keys(parent))

    def _drop_longlink(self, rel: str, parent_rel: str, st: os.stat_result) -> None:
        if entries.may_have_sidecar(st):
            entries.drop_link_sidecar(self.root_fd, parent_rel, rel)

    # -- lookup and attributes -------------------------------------------------

    @fuse
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if name == b".":
            return self._attr(self._lstat(self._rel(parent)), parent)
        if name == b"..":
            up = parent.links[0].parent if parent.links else parent
            return self._attr(self._lstat(self._rel(up)), up)
        c_name, b_name = self._name(parent, name)
        try:
            return self._entry(parent, name, c_name, b_name)[1]
        except FileNotFoundError:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self.timeout
            return negative

    @fuse
    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            self.inodes.forget(ino, n)

    @fuse
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if node.file is not None:
            return self._attr(os.fstat(node.file.fd), node)
        return self._attr(self._locate(node, dir_by_ino=True)[1], node)

    @fuse
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        node = self._node(inode)
        # An open (possibly unlinked) file is changed through its descriptor.
        target: int | str = node.file.fd if node.file is not None else self._locate(node, dir_by_ino=True)[0]
        at = {} if isinstance(target, int) else {"dir_fd": self.root_fd}
        nofollow = {} if isinstance(target, int) else {"follow_symlinks": False}
        if fields.update_size:
            if node.fmt != stat.S_IFREG:
                raise pyfuse3.FUSEError(errno.EINVAL if node.is_dir else errno.EPERM)
            of = self._open_file(node)
            try:
                if self.versions is not None and attr.st_size < of.size:  # keep what the cut drops
                    self.versions.keep_open("truncate", of, ctx.pid, ctx.uid, self.inodes.plain_path(node))
                of.truncate(attr.st_size)
            finally:
                self._close_file(node)
        if fields.update_mode and node.fmt != stat.S_IFLNK:
            os.chmod(target, stat.S_IMODE(attr.st_mode), **at)
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            os.chown(target, uid, gid, **at, **nofollow)
        if fields.update_atime and fields.update_mtime:  # tar, cp -p, touch: no stat needed
            os.utime(target, ns=(attr.st_atime_ns, attr.st_mtime_ns), **at, **nofollow)
        elif fields.update_atime or fields.update_mtime:
            st = os.stat(target, **at, **nofollow) if isinstance(target, str) else os.fstat(target)
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(target, ns=(atime, mtime), **at, **nofollow)
        changed = [name for name, on in (
            ("size", fields.update_size), ("mode", fields.update_mode), ("owner", fields.update_uid or fields.update_gid),
            ("atime", fields.update_atime), ("mtime", fields.update_mtime)) if on]
        self.audit.emit("setattr", ctx, lambda: self.inodes.plain_path(node), node, detail={"changed": ",".join(changed) or "none"})
        if node.file is not None:
            return self._attr(os.fstat(node.file.fd), node)
        rel = target if isinstance(target, str) else self._rel(node)
        st = self._lstat(rel)
        if not node.obj_id and node.fmt != stat.S_IFDIR:  # the ctime we just changed cannot stand for it
            node.obj_id = read_obj_id(self.root_fd, rel, node.fmt)
        self.inodes.confirmed(node, st)
        return self._attr(st, node)

    @fuse
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if node.fmt != stat.S_IFLNK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        try:
            return self._readlink(node)
        except IntegrityError as exc:
            self._integrity(node, exc)
            raise

    @fuse
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.root_fd)
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(data, name, getattr(sv, name))
        data.f_namemax = 255
        return data

    # -- the namespace: bodies in fs/mount/namespace.py ------------------------

    @fuse
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._writable()
        return self.namespace.create(self._node(parent_inode), name, mode, flags, ctx)

    @fuse
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._writable()
        return self.namespace.mknod(self._node(parent_inode), name, mode, rdev, ctx)

    @fuse
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._writable()
        return self.namespace.mkdir(self._node(parent_inode), name, mode, ctx)

    @fuse
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._writable()
        if len(target) > SYMLINK_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        return self.namespace.symlink(self._node(parent_inode), name, target, ctx)

    @fuse
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._writable()
        node = self._node(inode)
        return self.namespace.link(node, self._node(new_parent_inode), new_name, ctx)

    @fuse
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        self.namespace.unlink(self._node(parent_inode), name, ctx)

    @fuse
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        self.namespace.rmdir(self._node(parent_inode), name, ctx)

    @fuse
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int, ctx: pyfuse3.RequestContext
    ) -> None:
        self._writable()
        old_parent, new_parent = self._node(parent_inode_old), self._node(parent_inode_new)
        self.namespace.rename(old_parent, name_old, new_parent, name_new, flags, ctx)

    # -- file I/O -------------------------------------------------------------

    @fuse
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            self._writable()
        if node.fmt != stat.S_IFREG:
            raise pyfuse3.FUSEError(errno.EISDIR if node.is_dir else errno.EINVAL)
        of = self._open_file(node)
        size_before = of.size
        try:
            if flags & os.O_TRUNC:
                if self.versions is not None and of.size:  # keep what the truncation drops
                    self.versions.keep_open("truncate", of, ctx.pid, ctx.uid, self.inodes.plain_path(node))
                of.truncate(0)
        except BaseException:
            self._close_file(node)
            raise
        path = self.inodes.plain_path(node) if self.events is not None else ""
        fh = self.handles.add(FileHandle(node, bool(flags & os.O_APPEND) and not self.enable_writeback_cache, ctx, path, flags, size_before))
        # An audited mount must see every read: pages the kernel kept from an earlier open would be
        # served without a READ, so the ledger (and the detector) would count 0 bytes — a baseline of
        # "reads nothing" and an exfiltration of cached files nobody sees.  Unaudited mounts keep them.
        return pyfuse3.FileInfo(fh=fh, keep_cache=self.events is None)

    @fuse
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self.handles.file(fh)
        of = handle.node.file
        assert of is not None
        try:
            data = of.read(off, size)
        except IntegrityError as exc:
            self._integrity(handle.node, exc)
            raise
        handle.reads += 1
        handle.bytes_read += len(data)
        if handle.bytes_read + handle.bytes_written >= handle.progress_at:
            self.audit.report_progress(handle, fh)
        return data

    def _integrity(self, node: Node, exc: Exception) -> None:
        rel = "?"
        try:
            rel = self._rel(node)
        except pyfuse3.FUSEError:
            pass
        log.error("integrity: backing file %s (inode %d): %s", rel, node.ino, exc)
        self.audit.emit("integrity", None, lambda: self.inodes.plain_path(node), node, result=errno.EIO)

    @fuse
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self._writable()
        handle = self.handles.file(fh)
        of = handle.node.file
        assert of is not None
        if handle.append:
            off = of.size
        if self.versions is not None and fh not in self.versions.kept_fh:  # copy before overwrite (fs/vault/versions.py)
            self.versions.before_write(fh, of, off, buf, handle.pid, handle.uid, lambda: handle.path or self.inodes.plain_path(handle.node))
        try:
            n = of.write(off, buf)
        except IntegrityError as exc:
            self._integrity(handle.node, exc)
            raise
        handle.writes += 1
        handle.bytes_written += n
        if off == 0 and handle.size_before:
            handle.overwrite = True
        if len(handle.sample) < entropy.SAMPLE_MAX:
            entropy.add_sample(handle.sample, buf)
        if handle.bytes_read + handle.bytes_written >= handle.progress_at:
            self.audit.report_progress(handle, fh)
        return n

    @fuse
    async def flush(self, fh: int) -> None:
        self.handles.file(fh)

    @fuse
    async def fsync(self, fh: int, datasync: bool) -> None:
        of = self.handles.file(fh).node.file
        assert of is not None
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, of.fd)

    @fuse
    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        if not isinstance(handle, FileHandle):
            return
        self.audit.session_end(handle, fh)
        entropy.wipe(handle.sample)
        self._close_file(handle.node)

    # -- directories --------------------------------------------------------

    @fuse
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        keys = self.dir_keys(node)
        rel = self._dir_rel(node)
        names = [entry.name for entry in self._listdir(rel)]
        listing: list[tuple[bytes, str, str]] = []
        for b_name in names:
            if is_reserved(b_name):
                continue
            try:
                c_name = entries.read_c_name(self.root_fd, rel, b_name)
                listing.append((keys.names.decrypt(c_name), c_name, b_name))
            except (IntegrityError, OSError, UnicodeDecodeError) as exc:
                log.error("integrity: undecryptable name %s in backing dir %s: %s", b_name, rel, exc)
        return self.handles.add(DirHandle(node, listing))

    @fuse
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self.handles.dir(fh)
        node = handle.node
        rel = self._rel(node)
        for index in range(start_id, len(handle.entries)):
            p_name, c_name, b_name = handle.entries[index]
            child_rel = join(rel, b_name)
            try:
                st = self._lstat(child_rel)
            except FileNotFoundError:
                continue  # removed since opendir
            # Remember first: the reply must carry the generation remember() settles on.
            child = self.inodes.remember(st, Link(node, p_name, c_name, b_name), False, self._identity(child_rel, stat.S_IFMT(st.st_mode)))
            if not pyfuse3.readdir_reply(token, p_name, self._attr(st, child), index + 1):
                self.inodes.maybe_drop(child)
                break
            child.lookups += 1  # readdirplus: the kernel counts one lookup per entry sent

    @fuse
    async def releasedir(self, fh: int) -> None:
        self.handles.pop(fh)

    @fuse
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        handle = self.handles.dir(fh)
        fd = os.open(self._rel(handle.node), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.root_fd)
        try:
            await trio.to_thread.run_sync(os.fsync, fd)
        finally:
            os.close(fd)

    # -- extended attributes --------------------------------------------------

    def _xattr(self, node: Node) -> XattrCipher:
        if node.xattr is None:
            if node.is_dir:
                keys = self.dir_keys(node)
                node.xattr = XattrCipher(keys.key, keys.dir_id)
            elif node.fmt == stat.S_IFREG:
                of = self._open_file(node)
                try:
                    node.xattr = XattrCipher(of.dek, of.file_id)
                finally:
                    self._close_file(node)
            else:
                raise pyfuse3.FUSEError(errno.EPERM)
        return node.xattr  # type: ignore[return-value]

    def _xattr_target(self, node: Node) -> int | str:
        return node.file.fd if node.file is not None else f"/proc/self/fd/{self.root_fd}/{self._locate(node)[0]}"

    def _xattr_call(self, func: Callable[..., Any], node: Node, *args: Any) -> Any:
        target = self._xattr_target(node)
        # os.*xattr refuses follow_symlinks=False with an fd (ValueError); a path
        # must not follow a final symlink planted in the backing dir.
        return func(target, *args, follow_symlinks=isinstance(target, int))

    @staticmethod
    def _user_ns(name: bytes) -> None:
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)

    @fuse
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if not self.enable_xattr:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        self._writable()
        self._user_ns(name)
        node = self._node(inode)
        cipher = self._xattr(node)
        self._xattr_call(os.setxattr, node, cipher.backing_name(name), cipher.seal(name, value))

    @fuse
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not self.enable_xattr:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # the kernel stops asking (see enable_xattr)
        if not name.startswith(b"user."):
            # EOPNOTSUPP (not ENODATA) for ACLs and security labels: ls, cp and the
            # kernel then stop asking for this device, saving a round trip per file.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        node = self._node(inode)
        if node.fmt not in (stat.S_IFREG, stat.S_IFDIR):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        cipher = self._xattr(node)
        try:
            sealed = self._xattr_call(os.getxattr, node, cipher.backing_name(name))
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.EOPNOTSUPP):
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise
        return cipher.open(name, sealed)

    @fuse
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = self._node(inode)
        if node.fmt not in (stat.S_IFREG, stat.S_IFDIR) or not self.enable_xattr:
            return []  # none, rather than an error: cp -a and rsync -X then copy quietly
        cipher = self._xattr(node)
        names = []
        for b_name in self._xattr_call(os.listxattr, node):
            p_name = cipher.plain_name(b_name)
            if p_name is not None:
                names.append(p_name)
        return names

    @fuse
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if not self.enable_xattr:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        self._writable()
        self._user_ns(name)
        node = self._node(inode)
        cipher = self._xattr(node)
        try:
            self._xattr_call(os.removexattr, node, cipher.backing_name(name))
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise
