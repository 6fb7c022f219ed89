"""Tampered backing files: the mount answers EIO (never wrong bytes), logs the
backing file, and `umbrafs fsck` reports the damage with exit code 16.

Every test edits the backing directory while the vault is unmounted, then
mounts it again.  A plaintext file's backing file is found by inode number:
FUSE inode numbers are the backing inode numbers.
"""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cli import exitcodes
from fs.format import layout as fmt
from tests.conftest import Mount

B = fmt.BLOCK_SIZE
CB = fmt.CIPHER_BLOCK_SIZE
H = fmt.FILE_HEADER_LEN
NBLOCKS = 4  # files below: three full blocks and a partial final one
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


# -- helpers ----------------------------------------------------------------

def backing_of(m: Mount, path: Path) -> Path:
    ino = os.lstat(path).st_ino
    for candidate in m.vault.rglob("*"):
        if candidate.lstat().st_ino == ino:
            return candidate
    raise AssertionError(f"no backing file with inode {ino} for {path}")


def rel(m: Mount, backing: Path) -> str:
    return str(backing.relative_to(m.vault))


def mount_again(m: Mount) -> None:
    m.pid = m.env.mount(m.vault, m.path).pid


def fsck(m: Mount) -> subprocess.CompletedProcess[str]:
    return m.env.run("fsck", m.vault, "--passphrase-file", m.env.passfile)


def patch(path: Path, offset: int, edit: Callable[[bytes], bytes], length: int = 1) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(length)
        f.seek(offset)
        f.write(edit(old))


def flip(path: Path, offset: int) -> None:
    patch(path, offset, lambda b: bytes([b[0] ^ 0x01]))


def block_at(path: Path, block_no: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(H + block_no * CB)
        return f.read(CB)


def put_block(path: Path, block_no: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(H + block_no * CB)
        f.write(data)


def read_block(path: Path, block_no: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, B, block_no * B)
    finally:
        os.close(fd)


def assert_eio(func: Callable[[], object]) -> None:
    with pytest.raises(OSError) as info:
        func()
    assert info.value.errno == errno.EIO, info.value


def assert_logged(m: Mount, *needles: str) -> None:
    errors = [line for line in m.log().splitlines() if " ERROR " in line or " WARNING " in line]
    assert any(all(n in line for n in needles) for line in errors), (needles, errors)


def assert_fsck_reports(m: Mount, *needles: str) -> str:
    result = fsck(m)
    assert result.returncode == exitcodes.DAMAGE == 16, result
    assert "Traceback" not in result.stderr, result.stderr
    damaged = [line for line in result.stdout.splitlines() if line.startswith("DAMAGED")]
    assert any(all(n in line for n in needles) for line in damaged), (needles, result.stdout)
    return result.stdout


def make_file(m: Mount, name: str = "f") -> tuple[Path, bytes, Path]:
    """A file of NBLOCKS blocks (the last one partial); returns its path, data and backing file."""
    data = os.urandom((NBLOCKS - 1) * B + 500)
    path = m.path / name
    path.write_bytes(data)
    return path, data, backing_of(m, path)


def assert_blocks(path: Path, data: bytes, bad: set[int]) -> None:
    """Blocks in *bad* answer EIO; every other block reads its original bytes."""
    for block_no in range(NBLOCKS):
        if block_no in bad:
            assert_eio(lambda: read_block(path, block_no))
        else:
            assert read_block(path, block_no) == data[block_no * B : (block_no + 1) * B], block_no
    assert_eio(path.read_bytes)


# -- the clean case ------------------------------------------------------------

def test_clean_vault_fsck_ok(mounted: Mount) -> None:
    make_file(mounted)
    (mounted.path / "d").mkdir()
    (mounted.path / "d" / "small").write_bytes(b"hello")
    (mounted.path / "d" / "empty").touch()
    os.symlink("../f", mounted.path / "d" / "link")
    mounted.unmount()
    result = fsck(mounted)
    assert result.returncode == 0, result
    assert "no damage" in result.stdout and "DAMAGED" not in result.stdout
    assert "2 directories, 3 files" in result.stdout and "1 symlinks" in result.stdout


# -- content blocks ------------------------------------------------------------

def test_flipped_bit_in_block(mounted: Mount) -> None:
    path, data, backing = make_file(mounted)
    mounted.unmount()
    flip(backing, H + 1 * CB + fmt.NONCE_LEN + 1000)
    mount_again(mounted)
    assert_blocks(path, data, bad={1})
    # An unaligned read spanning the bad block fails as a whole: no partial garbage.
    fd = os.open(path, os.O_RDONLY)
    try:
        assert_eio(lambda: os.pread(fd, 100, 2 * B - 50))
    finally:
        os.close(fd)
    assert_logged(mounted, rel(mounted, backing), "block 1")
    assert_fsck_reports(mounted, "/f", rel(mounted, backing))


def test_flipped_bit_in_final_partial_block_tag(mounted: Mount) -> None:
    path, data, backing = make_file(mounted)
    mounted.unmount()
    flip(backing, backing.stat().st_size - 1)  # the last byte of the final block's tag
    mount_again(mounted)
    assert_blocks(path, data, bad={NBLOCKS - 1})
    assert_logged(mounted, rel(mounted, backing), f"block {NBLOCKS - 1}")
    assert_fsck_reports(mounted, rel(mounted, backing))


def test_swapped_blocks(mounted: Mount) -> None:
    path, data, backing = make_file(mounted)
    mounted.unmount()
    b0, b1 = block_at(backing, 0), block_at(backing, 1)
    put_block(backing, 0, b1)
    put_block(backing, 1, b0)
    mount_again(mounted)
    assert_blocks(path, data, bad={0, 1})
    assert_logged(mounted, rel(mounted, backing))
    assert_fsck_reports(mounted, rel(mounted, backing))


def test_block_copied_from_another_file(mounted: Mount) -> None:
    path, data, backing = make_file(mounted, "victim")
    other_path, other_data, other_backing = make_file(mounted, "other")
    mounted.unmount()
    put_block(backing, 1, block_at(other_backing, 1))
    mount_again(mounted)
    assert_blocks(path, data, bad={1})
    assert other_path.read_bytes() == other_data
    assert_logged(mounted, rel(mounted, backing), "block 1")
    out = assert_fsck_reports(mounted, "/victim", rel(mounted, backing))
    assert "DAMAGED /other" not in out and "block 1 is block 1 of /other" in out, out  # the source is named, not blamed


def test_truncated_mid_block(mounted: Mount) -> None:
    path, data, backing = make_file(mounted)
    mounted.unmount()
    os.truncate(backing, H + CB + CB // 2)
    mount_again(mounted)
    assert read_block(path, 0) == data[:B]
    assert_eio(lambda: read_block(path, 1))
    assert_eio(path.read_bytes)
    assert_logged(mounted, rel(mounted, backing), "block 1")
    assert_fsck_reports(mounted, rel(mounted, backing))


@pytest.mark.parametrize("tail", [1, fmt.BLOCK_OVERHEAD], ids=["1-byte-tail", "28-byte-tail"])
def test_truncated_to_a_tail_too_short_for_a_block(mounted: Mount, tail: int) -> None:
    path, data, backing = make_file(mounted)
    mounted.unmount()
    os.truncate(backing, H + 2 * CB + tail)
    mount_again(mounted)
    assert os.stat(path).st_size == 2 * B + 1  # the stub shows as one byte that fails
    assert read_block(path, 1) == data[B : 2 * B]
    assert_eio(lambda: read_block(path, 2))
    assert_fsck_reports(mounted, rel(mounted, backing))


def test_truncated_at_block_boundary(mounted: Mount) -> None:
    path, data, backing = make_file(mounted)
    mounted.unmount()
    os.truncate(backing, H + 2 * CB)
    mount_again(mounted)
    assert os.stat(path).st_size == 2 * B
    assert read_block(path, 0) == data[:B]
    # Block 1 was written as a non-final block: it must not pass as the last one.
    assert_eio(lambda: read_block(path, 1))
    assert_eio(path.read_bytes)
    assert_logged(mounted, rel(mounted, backing), "block 1")
    assert_fsck_reports(mounted, rel(mounted, backing))


def test_all_zero_final_block_is_not_a_hole(mounted: Mount) -> None:
    path, data, backing = make_file(mounted)
    mounted.unmount()
    os.truncate(backing, H + 3 * CB)  # drop the partial block, then zero the new last one
    put_block(backing, 2, bytes(CB))
    mount_again(mounted)
    assert read_block(path, 1) == data[B : 2 * B]
    assert_eio(lambda: read_block(path, 2))
    assert_fsck_reports(mounted, rel(mounted, backing))


def test_hole_in_sparse_file_reads_zeros(mounted: Mount) -> None:
    """By design: an all-zero block in the middle is a hole, so sparse files stay sparse."""
    path = mounted.path / "sparse"
    with open(path, "wb") as f:
        f.write(b"a" * 100)
        f.seek(5 * B)
        f.write(b"z" * 100)
    backing = backing_of(mounted, path)
    mounted.unmount()
    with open(backing, "rb") as f:
        f.seek(H + CB)
        assert f.read(4 * CB) == bytes(4 * CB)  # blocks 1..4 were never written
    assert backing.stat().st_blocks * 512 < 3 * CB  # and take no space
    mount_again(mounted)
    assert path.read_bytes() == b"a" * 100 + bytes(5 * B - 100) + b"z" * 100
    result = fsck(mounted)
    assert result.returncode == 0, result


# -- headers -------------------------------------------------------------------

HEADER_DAMAGE = {
    "magic": 0,
    "file-id": fmt.FIXED_LEN - fmt.ID_LEN + 3,
    "slot-parent-id": fmt.slot_offset(0) + 2,
    "slot-wrapped-key": fmt.slot_offset(0) + fmt.ID_LEN + fmt.NONCE_LEN + 5,
}


@pytest.mark.parametrize("where", list(HEADER_DAMAGE))
def test_corrupted_file_header(mounted: Mount, where: str) -> None:
    path, data, backing = make_file(mounted)
    (mounted.path / "fine").write_bytes(b"still readable")
    mounted.unmount()
    flip(backing, HEADER_DAMAGE[where])
    mount_again(mounted)
    assert os.stat(path).st_size == len(data)  # lookup needs no key
    assert_eio(lambda: open(path, "rb"))
    assert (mounted.path / "fine").read_bytes() == b"still readable"
    assert_logged(mounted, rel(mounted, backing))
    assert_fsck_reports(mounted, "/f", rel(mounted, backing))


def test_newer_header_version(mounted: Mount) -> None:
    path, _, backing = make_file(mounted)
    mounted.unmount()
    patch(backing, 4, lambda _: bytes([fmt.FORMAT_VERSION + 1]))
    mount_again(mounted)
    assert_eio(lambda: open(path, "rb"))
    assert_logged(mounted, rel(mounted, backing), "newer")
    assert_fsck_reports(mounted, rel(mounted, backing), "newer")


# -- names, directories, symlinks ------------------------------------------------

def corrupt_name(name: str) -> str:
    """Change a middle character: all six bits of it are used, so the bytes change."""
    i = len(name) // 2
    return name[:i] + next(c for c in B64URL if c != name[i]) + name[i + 1 :]


def test_corrupted_encrypted_name(mounted: Mount) -> None:
    (mounted.path / "victim").write_bytes(b"v")
    (mounted.path / "other").write_bytes(b"o")
    backing = backing_of(mounted, mounted.path / "victim")
    mounted.unmount()
    bad_name = corrupt_name(backing.name)
    backing.rename(backing.with_name(bad_name))
    mount_again(mounted)
    assert sorted(os.listdir(mounted.path)) == ["other"]
    assert (mounted.path / "other").read_bytes() == b"o"
    assert_logged(mounted, bad_name, "name")
    assert_fsck_reports(mounted, bad_name, "name")


def test_corrupted_directory_header(mounted: Mount) -> None:
    d = mounted.path / "d"
    d.mkdir()
    (d / "f").write_bytes(b"inside")
    (mounted.path / "top").write_bytes(b"outside")
    backing_dir = backing_of(mounted, d)
    mounted.unmount()
    flip(backing_dir / fmt.DIR_HEADER_NAME, fmt.slot_offset(0) + fmt.ID_LEN + fmt.NONCE_LEN + 3)
    mount_again(mounted)
    assert sorted(os.listdir(mounted.path)) == ["d", "top"]
    assert os.path.isdir(d)
    assert_eio(lambda: os.listdir(d))
    assert_eio(lambda: (d / "f").read_bytes())
    assert (mounted.path / "top").read_bytes() == b"outside"
    assert_logged(mounted, rel(mounted, backing_dir))
    assert_fsck_reports(mounted, "/d", rel(mounted, backing_dir))


def test_corrupted_symlink_target(mounted: Mount) -> None:
    link = mounted.path / "link"
    os.symlink("some/where/else", link)
    os.symlink("fine/target", mounted.path / "fine")
    backing = backing_of(mounted, link)
    mounted.unmount()
    c_target = os.readlink(backing)
    backing.unlink()
    os.symlink(corrupt_name(c_target), backing)
    mount_again(mounted)
    assert os.readlink(mounted.path / "fine") == "fine/target"
    assert_eio(lambda: os.readlink(link))
    assert_logged(mounted, rel(mounted, backing))
    assert_fsck_reports(mounted, "/link", rel(mounted, backing))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs for the backing directory")
def test_a_full_disk_on_append_or_extend_loses_nothing_already_there(tmp_path: Path) -> None:
    """Security review, finding 14 (and "disk full loses nothing"): an append past a block
    boundary re-encrypted the old final block as non-final before writing the new blocks; when
    the disk was full the second write failed (or was cut short, unnoticed), and the data that
    was already there, synced, read as EIO from then on."""
    from tests.conftest import live_mount, new_env

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "none", str(small)], check=True)
    try:
        env = new_env(tmp_path)
        vault = env.init(small / "vault")
        data = {"aligned": os.urandom(2 * fmt.BLOCK_SIZE), "partial": os.urandom(fmt.BLOCK_SIZE + 100)}
        with live_mount(env, vault, tmp_path / "mnt") as m:
            for name, content in data.items():
                (m.path / name).write_bytes(content)
            filler = os.open(small / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(filler, bytes(4096))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
            finally:
                os.close(filler)
            refused = 0
            for name in data:
                fd = os.open(m.path / name, os.O_WRONLY | os.O_APPEND)
                try:
                    os.write(fd, os.urandom(4 * fmt.BLOCK_SIZE))
                    os.fsync(fd)
                except OSError as exc:
                    assert exc.errno in (errno.ENOSPC, errno.EIO), exc
                    refused += 1
                finally:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            with contextlib.suppress(OSError):
                os.truncate(m.path / "aligned", 40 * fmt.BLOCK_SIZE)  # an extend needs a new final block too
            assert refused == len(data)
        with live_mount(env, vault, tmp_path / "mnt") as m:  # what is on the disk now
            for name, content in data.items():
                assert (m.path / name).read_bytes()[: len(content)] == content, name
                assert os.path.getsize(m.path / name) == len(content), name
        os.unlink(small / "filler")
        assert env.run("fsck", vault, "--passphrase-file", env.passfile).returncode == 0
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
