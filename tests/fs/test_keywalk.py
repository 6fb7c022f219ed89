"""fs.vault.keywalk against a vault filled through a real mount: the owner's offline walk to a
directory key or file DEK, its reverse, and the recipient's search by object id."""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import exitcodes
from fs.format import layout as fmt
from fs.vault import keywalk
from fs.vault import config as vault_mod
from fs.vault.content import OpenFile
from fs.vault.headers import read_dir_header, read_file_header
from fs.format.names import is_reserved
from tests.conftest import PASSPHRASE, Mount, live_mount, new_env

LONG = "L" * 200  # encrypted name > 175 characters: a hashed backing name and a sidecar


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mount, vault_mod.UnlockedVault]]:
    tmp = tmp_path_factory.mktemp("keywalk")
    env = new_env(tmp)
    vault = env.init(tmp / "vault")
    with live_mount(env, vault, tmp / "mnt") as mount:
        m = mount.path
        (m / "projects" / "x" / "sub").mkdir(parents=True)
        (m / "projects" / "x" / "a.txt").write_text("alpha")
        (m / "projects" / "x" / "sub" / "b.txt").write_text("beta")
        (m / "projects" / "secret.txt").write_text("not shared")
        (m / LONG / "inner").mkdir(parents=True)
        (m / LONG / "inner" / "c.txt").write_text("gamma")
        (m / "link").symlink_to("projects")
        (m / "moveme").mkdir()
        yield mount, vault_mod.unlock(vault, PASSPHRASE.encode())


def _children(vault: Path, target: keywalk.Target) -> set[str]:
    keys = target.dir_keys()
    names = set()
    for entry in os.scandir(vault / target.backing_rel):
        if is_reserved(entry.name):
            continue
        c_name = entry.name
        if c_name.startswith(fmt.LONGNAME_PREFIX):
            c_name = (vault / target.backing_rel / (entry.name + fmt.LONGNAME_SUFFIX)).read_text()
        names.add(keys.names.decrypt(c_name).decode())
    return names


def test_root_and_nested_directories(filled: tuple[Mount, vault_mod.UnlockedVault]) -> None:
    _, unlocked = filled
    root = keywalk.find(unlocked, "/")
    assert root.kind == keywalk.KIND_DIR and root.backing_rel == "." and root.name == b""
    fd = os.open(unlocked.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_dir_header(fd, ".").obj_id == root.obj_id
    finally:
        os.close(fd)
    assert _children(unlocked.path, root) == {"projects", LONG, "link", "moveme"}
    x = keywalk.find(unlocked, "/projects/x")
    assert x.kind == keywalk.KIND_DIR and x.name == b"x" and x.backing_rel.count("/") == 1
    assert _children(unlocked.path, x) == {"a.txt", "sub"}  # x's entries, not its parent's
    fd = os.open(unlocked.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_dir_header(fd, x.backing_rel).obj_id == x.obj_id
    finally:
        os.close(fd)
    assert keywalk.find(unlocked, "projects/./x/") == x  # the same path spelled differently
    assert keywalk.plain_path(unlocked, x.backing_rel) == "/projects/x"


def test_long_name_component(filled: tuple[Mount, vault_mod.UnlockedVault]) -> None:
    _, unlocked = filled
    inner = keywalk.find(unlocked, f"/{LONG}/inner")
    first = inner.backing_rel.split("/")[0]
    assert first.startswith(fmt.LONGNAME_PREFIX) and len(first) == 44  # "~" + 43 characters of base64url(SHA-256)
    assert _children(unlocked.path, inner) == {"c.txt"}
    assert keywalk.plain_path(unlocked, inner.backing_rel) == f"/{LONG}/inner"


def test_file_gives_its_dek(filled: tuple[Mount, vault_mod.UnlockedVault]) -> None:
    _, unlocked = filled
    target = keywalk.find(unlocked, f"/{LONG}/inner/c.txt")
    assert target.kind == keywalk.KIND_FILE and target.name == b"c.txt"
    fd = os.open(unlocked.path / target.backing_rel, os.O_RDONLY)
    try:
        header = read_file_header(fd)
        assert header.obj_id == target.obj_id
        assert bytes(OpenFile(fd, header, target.key).read(0, 100)) == b"gamma"
    finally:
        os.close(fd)
    with pytest.raises(keywalk.NotShareable):
        target.dir_keys()


def test_missing_paths_and_non_directories(filled: tuple[Mount, vault_mod.UnlockedVault]) -> None:
    _, unlocked = filled
    with pytest.raises(keywalk.PathNotFound, match="/projects/nope: no such file or directory") as info:
        keywalk.find(unlocked, "/projects/nope/deeper")
    assert exitcodes.for_error(info.value) == exitcodes.NOT_A_VAULT and info.value.errno == errno.ENOENT
    with pytest.raises(keywalk.PathNotFound, match="not a directory"):
        keywalk.find(unlocked, "/projects/secret.txt/x")
    with pytest.raises(keywalk.PathNotFound, match="^/etc: no such"):
        keywalk.find(unlocked, "/../etc")  # ".." of the root is the root, as in any filesystem
    with pytest.raises(keywalk.PathNotFound):
        keywalk.find(unlocked, "/" + "n" * 300)
    with pytest.raises(keywalk.NotShareable, match="only directories and regular files"):
        keywalk.find(unlocked, "/link")  # symlinks are not followed by the walk
    with pytest.raises(keywalk.PathNotFound):
        keywalk.plain_path(unlocked, "nonexistentbackingname/x")


def test_locate_follows_a_move(filled: tuple[Mount, vault_mod.UnlockedVault]) -> None:
    mount, unlocked = filled
    target = keywalk.find(unlocked, "/moveme")
    assert keywalk.locate(unlocked.path, target.backing_rel, target.obj_id, keywalk.KIND_DIR) == target.backing_rel
    os.rename(mount.path / "moveme", mount.path / "projects" / "moved")
    new_rel = keywalk.locate(unlocked.path, target.backing_rel, target.obj_id, keywalk.KIND_DIR)
    assert new_rel != target.backing_rel and keywalk.plain_path(unlocked, new_rel) == "/projects/moved"
    f = keywalk.find(unlocked, "/projects/x/a.txt")
    assert keywalk.locate(unlocked.path, "garbage/../..", f.obj_id, keywalk.KIND_FILE) == f.backing_rel
    (mount.path / "projects" / "moved").rmdir()
    with pytest.raises(keywalk.PathNotFound, match="no longer in the vault"):
        keywalk.locate(unlocked.path, target.backing_rel, target.obj_id, keywalk.KIND_DIR)


def test_open_dir_refuses_symlinks_in_the_backing_dir(filled: tuple[Mount, vault_mod.UnlockedVault], tmp_path: Path) -> None:
    _, unlocked = filled
    x = keywalk.find(unlocked, "/projects/x")
    fd = keywalk.open_dir(unlocked.path, x.backing_rel)
    try:
        assert os.fstat(fd).st_ino == os.stat(unlocked.path / x.backing_rel).st_ino
    finally:
        os.close(fd)
    planted = unlocked.path / "plantedlink"
    planted.symlink_to(tmp_path)
    try:
        with pytest.raises(keywalk.PathNotFound, match="cannot open"):
            keywalk.open_dir(unlocked.path, "plantedlink")
        with pytest.raises(keywalk.PathNotFound):
            keywalk.open_dir(unlocked.path, "../" + unlocked.path.name)
    finally:
        planted.unlink()
