"""The inode table: FUSE inode numbers, their backing paths and lookup counts.

FUSE inode numbers are the backing files' inode numbers (the backing root is
swapped with 1), so they stay stable across rename, hard links and remounts.
A node knows the (parent, name) links it was reached through; directory nodes
cache their keys, so a backing path is rebuilt from the parents on demand and a
renamed directory carries its whole subtree along.

The number is not the identity, though.  The backing directory has other
writers (sync tools, the owner's other devices, share recipients), and a sync
tool applies a remote change by writing a temp file and renaming it over the
old one: the old inode is freed, and ext4 hands its number to the next file
created, anywhere.  So a node also records what it *is*: the file id or
directory id in its header (a symlink: its encrypted target, random per link),
and the backing ctime at which that was last confirmed.  A number reached again
with an unchanged ctime is the same object; otherwise the id is read again and
compared.  Timestamps are coarse (ext4 without multigrain time gives every file
made in one 4 ms tick the same ctime), so a ctime is trusted only once it lies
CTIME_SETTLED in the past: a file replaced in the same tick as its last change
is always caught by its id.  A different id under a known number is a new object: it gets a new
generation, so the kernel drops the old inode (its size, pages and dentries)
instead of serving one file's cache for another (issue 18).
"""
from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyfuse3

from fs.vault.content import OpenFile
from fs.vault.headers import DirKeys

log = logging.getLogger(__name__)

# What an object is, read from the backing dir on demand (b"": unreadable or none).
Identity = Callable[[], bytes]
# A ctime this much older than our clock cannot be shared by an object made from now on
# (ticks are milliseconds; the margin also covers a backing fs whose clock lags ours a little).
CTIME_SETTLED = 2_000_000_000
_HAS_ID = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)


@dataclass(slots=True)
class Link:
    parent: "Node"
    p_name: bytes
    c_name: str
    b_name: str


class Node:
    __slots__ = ("ino", "generation", "fmt", "links", "lookups", "keys", "file", "xattr", "obj_id", "ctime")

    def __init__(self, ino: int, file_fmt: int, generation: int = 0) -> None:
        self.ino = ino
        self.generation = generation  # bumped when the backing inode number is reused
        self.fmt = file_fmt  # stat.S_IFMT of the backing object
        self.links: list[Link] = []
        self.lookups = 0
        self.keys: DirKeys | None = None  # directories: their keys, loaded lazily
        self.file: OpenFile | None = None  # regular files: shared by all open handles
        self.xattr: object | None = None  # cached xattr ciphers
        self.obj_id = b""  # file id, directory id or backing symlink target; b"" unknown
        self.ctime = 0  # backing st_ctime_ns when obj_id was last confirmed

    @property
    def is_dir(self) -> bool:
        return self.fmt == stat.S_IFDIR

    def link_in(self, parent: "Node") -> Link | None:
        for link in self.links:
            if link.parent is parent:
                return link
        return None

    def add_link(self, link: Link) -> None:
        for existing in self.links:
            if existing.parent is link.parent and existing.c_name == link.c_name:
                return
        self.links.append(link)

    def drop_link(self, parent: "Node", c_name: str) -> None:
        self.links = [l for l in self.links if not (l.parent is parent and l.c_name == c_name)]


def _read(identity: Identity | bytes) -> bytes:
    return identity() if callable(identity) else identity


def _settled(st: os.stat_result) -> bool:
    return st.st_ctime_ns < time.time_ns() - CTIME_SETTLED


class InodeTable:
    def __init__(self, root_backing_ino: int) -> None:
        self._root_backing = root_backing_ino
        self.root = Node(pyfuse3.ROOT_INODE, stat.S_IFDIR)
        self.root.lookups = 1
        self._nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: self.root}
        self._by_id: dict[bytes, Node] = {}  # to notice two backing objects claiming one id

    def fuse_ino(self, backing_ino: int) -> int:
        if backing_ino == self._root_backing:
            return pyfuse3.ROOT_INODE
        if backing_ino == pyfuse3.ROOT_INODE:
            return self._root_backing
        return backing_ino

    def get(self, ino: int) -> Node | None:
        return self._nodes.get(ino)

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes.values()))

    def plain_path(self, node: Node) -> str:
        """The plaintext path of *node* in the mount, by its first links (for events and versions)."""
        parts = []
        while node is not self.root and node.links:
            parts.append(node.links[0].p_name.decode("utf-8", "surrogateescape"))
            node = node.links[0].parent
        return "/" + "/".join(reversed(parts))

    def child_path(self, parent: Node, name: bytes) -> str:
        """The plaintext path of entry *name* of directory *parent*."""
        return self.plain_path(parent).rstrip("/") + "/" + name.decode("utf-8", "surrogateescape")

    def is_object(self, node: Node, st: os.stat_result, identity: Identity, dir_by_ino: bool = False) -> bool:
        """Whether *st* (and what *identity* reads) is the backing object *node* stands for.

        *dir_by_ino*: for a directory, the inode number will do (its attributes are all that
        is asked; whatever uses its keys checks its header id first: Operations._dir_rel)."""
        if node is self.root:
            return st.st_ino == self._root_backing
        if self.fuse_ino(st.st_ino) != node.ino or stat.S_IFMT(st.st_mode) != node.fmt:
            return False
        if node.file is not None or (dir_by_ino and node.is_dir):
            return True  # we hold it open: its number cannot have been handed on
        if node.ctime and st.st_ctime_ns == node.ctime:
            return True  # untouched since it was last confirmed, and that ctime had settled
        if node.fmt not in _HAS_ID:
            return bool(node.links)  # fifos, devices, sockets carry no id; nothing of theirs is cached
        got = identity()
        if not got or not node.obj_id:
            return False  # unreadable now or never known: a fresh inode is the safe answer
        if got != node.obj_id:
            log.info("backing inode %d now holds another object (%s, was %s): replaced by another writer",
                     st.st_ino, got.hex()[:16], node.obj_id.hex()[:16])
            return False
        self.confirmed(node, st)
        return True

    def remember(self, st: os.stat_result, link: Link, count: bool = True, identity: Identity | bytes = b"") -> Node:
        """The node for a backing object just reached through *link*.

        *identity* is the object's id, or a callable that reads it (called only when the
        table cannot tell otherwise: see is_object)."""
        ino = self.fuse_ino(st.st_ino)
        file_fmt = stat.S_IFMT(st.st_mode)
        node = self._nodes.get(ino)
        if node is None:
            node = self._nodes[ino] = Node(ino, file_fmt)
            # A file or symlink untouched for a while is known by its settled ctime until it is
            # opened (a listing need not read every header); a later change of an object whose
            # id was never read then gives a new generation, the safe answer.
            known = file_fmt in _HAS_ID and (file_fmt == stat.S_IFDIR or not _settled(st))
            self._identify(node, _read(identity) if known else b"", st)
        elif not self.is_object(node, st, identity if callable(identity) else lambda: identity):  # type: ignore[misc]
            # The backing fs reused the number of an object the kernel still holds. A new
            # generation makes the kernel drop its old inode (cached size, pages, pending
            # time updates and write errors) instead of reusing it for the new object.
            # The kernel will still forget the old lookups: keep them.
            fresh = Node(ino, file_fmt, node.generation + 1)
            fresh.lookups = node.lookups
            self._forget_id(node)
            node = self._nodes[ino] = fresh
            self._identify(node, _read(identity) if file_fmt in _HAS_ID else b"", st)
        links = node.links
        if links and (node.is_dir or st.st_nlink <= 1) and (len(links) > 1 or links[0].parent is not link.parent
                                                            or links[0].c_name != link.c_name):
            # One name only: whatever other link the node remembers is gone (moved or
            # replaced by another writer behind our back).
            links.clear()
        node.add_link(link)
        if count:
            node.lookups += 1
        return node

    def _identify(self, node: Node, obj_id: bytes, st: os.stat_result) -> None:
        node.obj_id = obj_id
        self.confirmed(node, st)
        if not obj_id or node.fmt == stat.S_IFLNK:
            return
        other = self._by_id.get(obj_id)
        if other is not None and other is not node and self._nodes.get(other.ino) is other:
            log.warning("backing inodes %d and %d carry the same id %s: a copy of one object (a sync "
                        "conflict or a restore); served as two separate files", other.ino, node.ino, obj_id.hex())
        self._by_id[obj_id] = node

    @staticmethod
    def confirmed(node: Node, st: os.stat_result) -> None:
        """*st* is a fresh stat of *node*'s own backing object (e.g. after our own write)."""
        node.ctime = st.st_ctime_ns if _settled(st) else 0

    def _forget_id(self, node: Node) -> None:
        if node.obj_id and self._by_id.get(node.obj_id) is node:
            del self._by_id[node.obj_id]

    def forget(self, ino: int, n: int) -> None:
        node = self._nodes.get(ino)
        if node is None or node is self.root:
            return
        node.lookups -= n
        self.maybe_drop(node)

    def maybe_drop(self, node: Node) -> None:
        if node.lookups <= 0 and node.file is None and node is not self.root:
            if self._nodes.get(node.ino) is node:
                del self._nodes[node.ino]
                self._forget_id(node)
