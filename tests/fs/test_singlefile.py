"""A share recipient's single-file view, called in-process (no FUSE needed to call a handler).

pyfuse3 ends the whole mount when a handler raises anything but FUSEError, so the view's
handlers share Operations' errno boundary (fs/mount/boundary.py): a backing descriptor that
starts failing answers an errno, and the view keeps serving once it works again.  The
end-to-end share mount is in tests/cli/test_sharing.py (it needs proxies and identities).
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import pytest
import trio

from fs.mount.operations import Operations
from fs.mount.singlefile import FILE_INODE, SingleFileOperations
from fs.vault import config as vault_mod

CTX = pyfuse3.RequestContext()


@pytest.fixture
def view(tmp_path: Path) -> Iterator[SingleFileOperations]:
    vault = vault_mod.create(tmp_path / "vault", b"x", vault_mod.KdfParams(1024, 1, 1))
    ops = Operations(str(vault.path), vault.root_wrap_key)

    async def make() -> tuple[str, bytes, bytes]:
        info, attr = await ops.create(pyfuse3.ROOT_INODE, b"a.txt", 0o644, os.O_RDWR, CTX)
        await ops.write(info.fh, 0, b"alpha\n")
        node = ops.inodes.get(attr.st_ino)
        assert node is not None and node.file is not None
        found = node.links[0].b_name, node.file.file_id, node.file.dek
        await ops.release(info.fh)
        return found

    try:
        b_name, file_id, dek = trio.run(make)
    finally:
        ops.close()
    sf = SingleFileOperations(str(vault.path), b_name, file_id, dek, b"a.txt")
    try:
        yield sf
    finally:
        sf.close()


def _errno(call) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(pyfuse3.FUSEError) as caught:  # not OSError: that would end the mount
        trio.run(call)
    return caught.value.errno


def test_a_failing_backing_file_answers_an_errno_and_the_view_goes_on(view: SingleFileOperations, tmp_path: Path) -> None:
    async def open_read() -> tuple[int, bytes]:
        info = await view.open(FILE_INODE, os.O_RDONLY, CTX)
        return info.fh, await view.read(info.fh, 0, 100)

    fh, data = trio.run(open_read)
    assert data == b"alpha\n"
    of = view._handles[fh][0]
    saved = os.dup(of.fd)
    # The open descriptor starts failing (as a disk error would): read(2) gives EISDIR here.
    elsewhere = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    os.dup2(elsewhere, of.fd)
    os.close(elsewhere)
    try:
        assert _errno(lambda: view.read(fh, 0, 100)) == errno.EISDIR
    finally:
        os.dup2(saved, of.fd)
        os.close(saved)
    assert trio.run(view.read, fh, 0, 100) == b"alpha\n"
    trio.run(view.release, fh)

    # The directory holding the file: a stat through it fails with ENOTDIR once it is not one.
    saved = os.dup(view.root_fd)
    not_a_dir = os.open(tmp_path / "vault" / "vault.json", os.O_RDONLY)
    os.dup2(not_a_dir, view.root_fd)
    os.close(not_a_dir)
    try:
        assert _errno(lambda: view.getattr(FILE_INODE, CTX)) == errno.ENOTDIR
        assert _errno(lambda: view.lookup(pyfuse3.ROOT_INODE, b"a.txt", CTX)) == errno.ENOTDIR
    finally:
        os.dup2(saved, view.root_fd)
        os.close(saved)
    assert trio.run(view.getattr, FILE_INODE, CTX).st_size == 6


def test_the_file_removed_behind_the_view(view: SingleFileOperations, tmp_path: Path) -> None:
    os.unlink(view._b_name, dir_fd=view.root_fd)
    assert _errno(lambda: view.getattr(FILE_INODE, CTX)) == errno.ENOENT
    assert _errno(lambda: view.open(FILE_INODE, os.O_RDONLY, CTX)) == errno.ENOENT
    assert trio.run(view.getattr, pyfuse3.ROOT_INODE, CTX).st_nlink == 2


def test_a_locked_view_refuses_what_needs_the_key(view: SingleFileOperations) -> None:
    view.locked = True
    assert _errno(lambda: view.lookup(pyfuse3.ROOT_INODE, b"a.txt", CTX)) == errno.EACCES
    assert _errno(lambda: view.getattr(FILE_INODE, CTX)) == errno.EACCES
    assert _errno(lambda: view.open(FILE_INODE, os.O_RDONLY, CTX)) == errno.EACCES
    assert trio.run(view.getattr, pyfuse3.ROOT_INODE, CTX).st_ino == pyfuse3.ROOT_INODE  # ciphertext-free
    trio.run(view.releasedir, 0)
    assert view.locked_refusals == 3
    view.locked = False
    assert trio.run(view.getattr, FILE_INODE, CTX).st_size == 6
