"""The inode table: FUSE inode numbers, their backing paths and lookup counts.

FUSE inode numbers are the backing files' inode numbers (the backing root is
swapped with 1), so they stay stable across rename, hard links and remounts.
A node knows the (parent, name) links it was reached through; directory nodes
cache their keys, so a backing path is rebuilt from the parents on demand and a
renamed directory carries its whole subtree along.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import pyfuse3

from .content import OpenFile
from .headers import DirKeys


@dataclass(slots=True)
class Link:
    parent: "Node"
    p_name: bytes
    c_name: str
    b_name: str


class Node:
    __slots__ = ("ino", "generation", "fmt", "links", "lookups", "keys", "file", "xattr")

    def __init__(self, ino: int, file_fmt: int, generation: int = 0) -> None:
        self.ino = ino
        self.generation = generation  # bumped when the backing inode number is reused
        self.fmt = file_fmt  # stat.S_IFMT of the backing object
        self.links: list[Link] = []
        self.lookups = 0
        self.keys: DirKeys | None = None  # directories: their keys, loaded lazily
        self.file: OpenFile | None = None  # regular files: shared by all open handles
        self.xattr: object | None = None  # cached xattr ciphers

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


class InodeTable:
    def __init__(self, root_backing_ino: int) -> None:
        self._root_backing = root_backing_ino
        self.root = Node(pyfuse3.ROOT_INODE, stat.S_IFDIR)
        self.root.lookups = 1
        self._nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: self.root}

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

    def remember(self, st: os.stat_result, link: Link, count: bool = True) -> Node:
        """The node for a backing object just reached through *link*."""
        ino = self.fuse_ino(st.st_ino)
        file_fmt = stat.S_IFMT(st.st_mode)
        node = self._nodes.get(ino)
        if node is None:
            node = self._nodes[ino] = Node(ino, file_fmt)
        elif node.file is None and (node.fmt != file_fmt or not node.links):
            # The backing fs reused the inode number of a deleted object the kernel
            # still holds (ext4 does so at once, e.g. write-tmp-then-rename). A new
            # generation makes the kernel drop its old inode (cached size, pages,
            # pending time updates and write errors) instead of reusing it for the
            # new object. The kernel will still forget the old lookups: keep them.
            fresh = Node(ino, file_fmt, node.generation + 1)
            fresh.lookups = node.lookups
            node = self._nodes[ino] = fresh
        node.add_link(link)
        if count:
            node.lookups += 1
        return node

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
