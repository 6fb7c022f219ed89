"""Key rotation engine (fs/vault/rotate/engine.py) on real vaults written through real mounts.

After a rotation every file reads back byte for byte with the same tree, names, links and holes,
and none of the keys a revoked recipient could have kept (every directory key and DEK below the
rotated directory) opens any header slot, name, symlink target, xattr or block of the new tree.
A rotation killed (SIGKILL, in a subprocess) between steps or in the middle of an in-place write,
or stopped by a failed write, leaves a vault the owner's mount reads completely, and a second run
finishes it.
"""
from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fs.format import layout as fmt
from fs.format import cryptocore as keys_mod
from fs.vault import keywalk
from fs.vault.rotate import engine as rotate
from fs.vault import config as vault_mod
from fs.errors import IntegrityError
from fs.vault.headers import DirKeys, read_dir_header, read_file_header
from fs.format.names import is_reserved
from fs.format.xattrs import XattrCipher
from tests.conftest import PASSPHRASE, Env, live_mount, new_env

ROOT = Path(__file__).resolve().parents[2]


def _tree(m: Path) -> dict[str, bytes]:
    """Content of a small tree with everything a rotation must carry along."""
    files = {
        "d/a.txt": b"alpha\n",
        "d/empty": b"",
        "d/one": b"1",
        "d/block": os.urandom(16384),
        "d/block+1": os.urandom(16385),
        "d/big.bin": os.urandom(2 * rotate.CHUNK + 12345),  # several chunks: the large-file path
        "d/sub/b.txt": b"beta\n",
        "d/sub/deeper/c.txt": os.urandom(70000),
        "d/" + "L" * 150: b"a long name",  # a sidecar name
        "outside.txt": b"not rotated\n",
    }
    for rel, data in files.items():
        (m / rel).parent.mkdir(parents=True, exist_ok=True)
        (m / rel).write_bytes(data)
    for i in range(40):
        files[f"d/many/f{i:02d}"] = os.urandom(i * 97)
        (m / "d" / "many").mkdir(exist_ok=True)
        (m / f"d/many/f{i:02d}").write_bytes(files[f"d/many/f{i:02d}"])
    with open(m / "d" / "sparse", "wb") as f:
        f.truncate(8 << 20)
        f.seek(4 << 20)
        f.write(b"middle")
    os.symlink("a.txt", m / "d" / "sym")
    os.symlink("t" * 3000, m / "d" / "longsym")  # a sidecar target
    os.link(m / "d" / "a.txt", m / "d" / "sub" / "hard-a")
    os.link(m / "d" / "one", m / "outside-hard")  # a hard link from a directory that is not rotated
    os.mkfifo(m / "d" / "fifo")
    os.setxattr(m / "d" / "a.txt", "user.color", b"blue")
    os.setxattr(m / "d" / "sub", "user.tag", b"dir attr")
    return files


def _snapshot(m: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(m):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(m))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_size, st.st_nlink, stat.S_IMODE(st.st_mode), p.read_bytes())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


@dataclass
class OldKeys:
    """Everything below a directory that its key opens: what a recipient could keep."""

    dirs: list[DirKeys] = field(default_factory=list)
    deks: list[bytes] = field(default_factory=list)


def _collect(vault: Path, top: keywalk.Target) -> OldKeys:
    fd = os.open(vault, os.O_RDONLY | os.O_DIRECTORY)
    out = OldKeys()
    try:
        stack = [(top.backing_rel, top.dir_keys())]
        while stack:
            rel, k = stack.pop()
            out.dirs.append(k)
            for name in os.listdir(os.path.join(vault, rel)):
                if is_reserved(name):
                    continue
                child = name if rel == "." else f"{rel}/{name}"
                st = os.lstat(child, dir_fd=fd)
                if stat.S_ISDIR(st.st_mode):
                    h = read_dir_header(fd, child)
                    stack.append((child, DirKeys(h.obj_id, k.unwrap(h))))
                elif stat.S_ISREG(st.st_mode):
                    ffd = os.open(child, os.O_RDONLY, dir_fd=fd)
                    try:
                        out.deks.append(k.unwrap(read_file_header(ffd)))
                    finally:
                        os.close(ffd)
    finally:
        os.close(fd)
    return out


def _assert_nothing_opens(vault: Path, rel: str, old: OldKeys) -> int:
    """No old key opens any slot, name, symlink target, xattr or block below backing dir *rel*;
    returns how many objects were tried (so the caller can check the walk saw the tree)."""
    tried = 0
    ciphers = [(k, k.names) for k in old.dirs]
    for dirpath, dirnames, filenames in os.walk(vault / rel):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if name.endswith(fmt.LONGNAME_SUFFIX):
                c_names = [p.read_text()]
            elif is_reserved(name):
                continue
            else:
                c_names = [name]
            for c in c_names:
                for _, nc in ciphers:
                    with pytest.raises(IntegrityError):
                        nc.decrypt(c)
            if is_reserved(name):
                continue
            st = os.lstat(p)
            tried += 1
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(p)
                if target.startswith("~"):
                    target = (p.parent / (target + fmt.LONGLINK_SUFFIX)).read_text()
                for k, _ in ciphers:
                    with pytest.raises(IntegrityError):
                        k.decrypt_link(target)
            elif stat.S_ISDIR(st.st_mode):
                h = fmt.parse_header((p / fmt.DIR_HEADER_NAME).read_bytes(), fmt.KIND_DIR)
                _no_slot_opens(h, [k.key for k in old.dirs])
                _no_xattr_opens(p, [XattrCipher(k.key, h.obj_id) for k in old.dirs])
            elif stat.S_ISREG(st.st_mode):
                data = p.read_bytes()
                h = fmt.parse_header(data, fmt.KIND_FILE)
                assert h.find_slot(h.obj_id) is None, "a finished file keeps no previous DEK"
                _no_slot_opens(h, [k.key for k in old.dirs] + old.deks)
                _no_xattr_opens(p, [XattrCipher(d, h.obj_id) for d in old.deks])
                if len(data) > h.length:
                    first = data[h.length : h.length + fmt.CIPHER_BLOCK_SIZE]
                    size = fmt.plain_size(len(data), h.length)
                    aad = fmt.block_aad(h.obj_id, 0, size <= fmt.BLOCK_SIZE)
                    if first[:12] != bytes(12):
                        for dek in old.deks:
                            with pytest.raises(InvalidTag):
                                AESGCM(dek).decrypt(first[:12], first[12:], aad)
        dir_header = Path(dirpath) / fmt.DIR_HEADER_NAME
        if Path(dirpath) == vault / rel:
            h = fmt.parse_header(dir_header.read_bytes(), fmt.KIND_DIR)
            _no_slot_opens(h, [k.key for k in old.dirs])
    return tried


def _no_slot_opens(h: fmt.Header, candidates: list[bytes]) -> None:
    for slot in h.slots:
        if slot is None:
            continue
        aad = (fmt.FILE_MAGIC if h.kind == fmt.KIND_FILE else fmt.DIR_MAGIC) + bytes([1]) + h.obj_id + slot.parent_id
        for key in candidates:
            with pytest.raises(InvalidTag):
                AESGCM(key).decrypt(slot.nonce, slot.wrapped, aad)


def _no_xattr_opens(p: Path, ciphers: list[XattrCipher]) -> None:
    for b_name in os.listxattr(p, follow_symlinks=False):
        for c in ciphers:
            assert c.plain_name(b_name) is None


def _unlocked(vault: Path) -> vault_mod.UnlockedVault:
    return vault_mod.unlock(vault, PASSPHRASE.encode())


def _spec(t: keywalk.Target) -> rotate.TargetSpec:
    return rotate.TargetSpec(t.kind, t.backing_rel, t.obj_id)


def _fsck_ok(env: Env, vault: Path) -> None:
    result = env.run("fsck", vault, "--passphrase-file", env.passfile)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple]]:
    """One vault with the tree, written through a real mount once per module."""
    env = new_env(tmp_path_factory.mktemp("rotate-template"))
    vault = env.init(env.tmp / "vault")
    with live_mount(env, vault, env.tmp / "mnt") as m:
        _tree(m.path)
        snap = _snapshot(m.path)
    return vault, snap


@pytest.fixture
def vault(env: Env, template: tuple[Path, dict[str, tuple]]) -> Path:
    """A copy of the template vault (hard links, xattrs and holes kept)."""
    copy = env.tmp / "vault"
    subprocess.run(["cp", "-a", "--sparse=always", str(template[0]), str(copy)], check=True)
    return copy


@pytest.fixture
def built(template: tuple[Path, dict[str, tuple]]) -> tuple[dict[str, tuple], None]:
    return template[1], None


def _backing_inos(unlocked: vault_mod.UnlockedVault, paths: tuple[str, ...]) -> dict[str, int]:
    return {p: os.lstat(unlocked.path / keywalk.find(unlocked, p).backing_rel).st_ino
            for p in paths if keywalk.find(unlocked, p) is not None}


def test_rotation_keeps_every_byte_and_kills_every_old_key(env: Env, vault: Path, built) -> None:
    snap, _ = built
    unlocked = _unlocked(vault)
    inos = _backing_inos(unlocked, ("/d/a.txt", "/d/big.bin", "/d/sub", "/d/many/f03"))
    before = keywalk.find(unlocked, "/d")
    old = _collect(vault, before)
    assert len(old.dirs) == 4 and len(old.deks) >= 45
    progress = rotate.run_offline(vault, unlocked.root_wrap_key, _spec(before))
    assert progress.state == "done" and not progress.problems
    assert progress.files_done == progress.files_total >= 45 and progress.dirs_done == 4
    after = keywalk.find(unlocked, "/d")
    assert after.obj_id == before.obj_id and after.key != before.key
    assert not (vault / rotate.JOURNAL_DIR).exists()
    assert _assert_nothing_opens(vault, after.backing_rel, old) >= 50
    # In place: inode numbers (the mount's too: they are the backing ones) survive.
    assert _backing_inos(unlocked, tuple(inos)) == inos
    _fsck_ok(env, vault)
    with live_mount(env, vault, env.tmp / "mnt") as m:
        assert _snapshot(m.path) == snap
        assert os.stat(m.path / "d/a.txt").st_ino == os.stat(m.path / "d/sub/hard-a").st_ino
        assert os.stat(m.path / "d/sparse").st_blocks * 512 < 1 << 20
        assert os.getxattr(m.path / "d/a.txt", "user.color") == b"blue"
        assert os.getxattr(m.path / "d/sub", "user.tag") == b"dir attr"
        assert (m.path / "outside-hard").read_bytes() == b"1"  # its other directory's slot re-wrapped too


def test_single_file_gets_a_new_dek(env: Env, vault: Path, built) -> None:
    snap, _ = built
    unlocked = _unlocked(vault)
    before = keywalk.find(unlocked, "/d/big.bin")
    progress = rotate.run_offline(vault, unlocked.root_wrap_key, _spec(before))
    assert progress.files_done == 1 and progress.bytes_done == len(snap["d/big.bin"][4])
    after = keywalk.find(unlocked, "/d/big.bin")
    assert after.key != before.key and after.backing_rel == before.backing_rel
    data = (vault / after.backing_rel).read_bytes()
    h = fmt.parse_header(data, fmt.KIND_FILE)
    with pytest.raises(InvalidTag):
        AESGCM(before.key).decrypt(data[h.length : h.length + 12], data[h.length + 12 : h.length + fmt.CIPHER_BLOCK_SIZE],
                                   fmt.block_aad(h.obj_id, 0, False))
    with live_mount(env, vault, env.tmp / "mnt") as m:
        assert (m.path / "d/big.bin").read_bytes() == snap["d/big.bin"][4]


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from fs.vault import config as vault_mod
    from fs.vault.rotate import engine as rotate
    vault, rel, obj, kind, mode, n = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
    rotate.CHUNK = 2 * 16412; rotate._CHUNK_BLOCKS = 2; rotate.SMALL_MAX = 2 * 16412; rotate.BATCH_FILES = 4
    from pathlib import Path
    u = vault_mod.unlock(Path(vault), os.environ["PW"].encode())
    count = [0]
    if mode == "step":      # SIGKILL between two steps
        def on_step(p):
            count[0] += 1
            if count[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
        rotate.run_offline(vault, u.root_wrap_key, rotate.TargetSpec(kind, rel, obj), on_step=on_step)
    else:                   # SIGKILL in the middle of the n-th in-place write: a torn write
        real = rotate._write_all
        def torn(fd, data, off):
            count[0] += 1
            if count[0] == n and len(data) > 100:
                os.pwrite(fd, bytes(data)[: len(data) // 2 + 7], off)
                os.kill(os.getpid(), signal.SIGKILL)
            real(fd, data, off)
        rotate._write_all = torn
        rotate.run_offline(vault, u.root_wrap_key, rotate.TargetSpec(kind, rel, obj))
    print("finished")
""")


def _kill_run(vault: Path, t: keywalk.Target, mode: str, n: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _KILLER, str(vault), t.backing_rel, t.obj_id.hex(), t.kind, mode, str(n)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, env={**os.environ, "PW": PASSPHRASE})


@pytest.mark.parametrize("mode,points", [pytest.param("step", (3, 30), marks=pytest.mark.slow), ("torn", (4, 41))])
def test_killed_rotation_stays_readable_and_resumes(env: Env, vault: Path, built, mode: str, points: tuple[int, ...]) -> None:
    snap, _ = built
    unlocked = _unlocked(vault)
    target = keywalk.find(unlocked, "/d")
    old = _collect(vault, target)
    killed = 0
    for n in points:
        result = _kill_run(vault, target, mode, n)
        if result.returncode == -signal.SIGKILL:
            killed += 1
            assert rotate.pending(vault) is not None
        # Readable in between: the owner's mount repairs the last step and reads every byte.
        with live_mount(env, vault, env.tmp / "mnt") as m:
            assert _snapshot(m.path) == snap
        target = keywalk.find(unlocked, "/d")
    assert killed == len(points)
    progress = rotate.run_offline(vault, unlocked.root_wrap_key)  # no target: finish the pending one
    assert progress.state == "done" and not progress.problems
    assert rotate.pending(vault) is None
    _assert_nothing_opens(vault, keywalk.find(unlocked, "/d").backing_rel, old)
    with live_mount(env, vault, env.tmp / "mnt") as m:
        assert _snapshot(m.path) == snap


def test_failed_write_stops_cleanly_and_resumes(env: Env, vault: Path, built, monkeypatch: pytest.MonkeyPatch) -> None:
    snap, _ = built
    unlocked = _unlocked(vault)
    target = keywalk.find(unlocked, "/d")
    calls = [0]
    real = rotate.Journal.write_redo

    def full(self, files):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, files)

    monkeypatch.setattr(rotate.Journal, "write_redo", full)
    with pytest.raises(rotate.RotationError, match="No space left"):
        rotate.run_offline(vault, unlocked.root_wrap_key, _spec(target))
    assert rotate.pending(vault) is not None
    monkeypatch.setattr(rotate.Journal, "write_redo", real)
    with live_mount(env, vault, env.tmp / "mnt") as m:
        assert _snapshot(m.path) == snap
    # Asking for the same target again resumes the pending job instead of starting over.
    progress = rotate.run_offline(vault, unlocked.root_wrap_key, _spec(keywalk.find(unlocked, "/d")))
    assert progress.state == "done" and rotate.pending(vault) is None
    _fsck_ok(env, vault)


def test_a_rotation_in_flight_is_refused_a_second_runner(env: Env, vault: Path) -> None:
    unlocked = _unlocked(vault)
    with rotate.Rotation(vault, unlocked.root_wrap_key):
        with pytest.raises(rotate.RotationError, match="another rotation"):
            rotate.run_offline(vault, unlocked.root_wrap_key)


def test_previous_key_slot_is_only_there_mid_rotation(env: Env, vault: Path, built) -> None:
    """The self slot (previous DEK wrapped under the new one) opens old blocks for readers."""
    snap, _ = built
    unlocked = _unlocked(vault)
    target = keywalk.find(unlocked, "/d/big.bin")
    result = _kill_run(vault, target, "step", 3)  # header written with both DEKs, one chunk done
    assert result.returncode == -signal.SIGKILL
    data = (vault / target.backing_rel).read_bytes()
    h = fmt.parse_header(data, fmt.KIND_FILE)
    assert h.find_slot(h.obj_id) is not None
    parent = keywalk.find(unlocked, "/d").dir_keys()
    new_dek = parent.unwrap(h)
    assert keys_mod.unwrap_slot(new_dek, h, h.obj_id) == target.key
    # fsck reads it (both keys) without a repair: every block opens under one of them.
    _fsck_ok(env, vault)
    rotate.run_offline(vault, unlocked.root_wrap_key)
    h = fmt.parse_header((vault / target.backing_rel).read_bytes(), fmt.KIND_FILE)
    assert h.find_slot(h.obj_id) is None


@pytest.mark.parametrize("nblocks", [5, 20], ids=["one-thread", "two-threads"])  # >= 16 blocks: split in halves
def test_reencrypt_chunk_reseals_only_what_an_old_key_opens(tmp_path: Path, nblocks: int) -> None:
    """The engine's chunk step over the shared block loop (fs/format/blocks.py), without a mount:
    blocks under the old DEK are re-sealed under the new one; holes, blocks already under the
    new DEK (a live mount wrote them) and a damaged block (reported) are left as they are."""
    from fs.format import blocks

    old, new = AESGCM(os.urandom(32)), AESGCM(os.urandom(32))
    file_id, size = os.urandom(16), (nblocks - 1) * fmt.BLOCK_SIZE + 100
    plain = os.urandom(size)
    hole, under_new, damaged = {1, 11}, {3, 13}, 2
    cipher = bytearray(blocks.encrypt_blocks(old, file_id, size, 0, plain))
    cb = fmt.CIPHER_BLOCK_SIZE
    for b in hole:
        cipher[b * cb : (b + 1) * cb] = blocks.ZERO_CIPHER_BLOCK
    for b in under_new:
        cipher[b * cb : (b + 1) * cb] = blocks.encrypt_blocks(new, file_id, size, b, plain[b * fmt.BLOCK_SIZE : (b + 1) * fmt.BLOCK_SIZE])
    cipher[damaged * cb + 40] ^= 1
    header = fmt.Header(fmt.KIND_FILE, file_id, (None,) * fmt.FILE_SLOTS)
    path = tmp_path / "f"
    path.write_bytes(header.pack() + cipher)
    rot = rotate.Rotation.__new__(rotate.Rotation)
    rot.progress = rotate.Progress()
    fd = os.open(path, os.O_RDWR)
    try:
        runs = rot._reencrypt(fd, header.length, file_id, size, 0, nblocks - 1, [old], new, True)
        for off, data in runs:
            os.pwrite(fd, data, off)
        after = os.pread(fd, len(cipher), header.length)
    finally:
        os.close(fd)
    resealed = {(off - header.length) // cb + i for off, data in runs for i in range(-(-len(data) // cb))}
    assert resealed == set(range(nblocks)) - hole - under_new - {damaged}
    assert rot.progress.problems == [f"block {damaged} of file {file_id.hex()} opens under no key; left as it is"]
    status = bytearray(nblocks)
    out = blocks.decrypt_blocks([new, old], file_id, size, 0, nblocks - 1, after, status)
    want = [blocks.HOLE if b in hole else blocks.UNOPENED if b == damaged else 1 for b in range(nblocks)]
    assert list(status) == want
    good = [b for b in range(nblocks) if b not in hole and b != damaged]
    assert all(out[b * fmt.BLOCK_SIZE : (b + 1) * fmt.BLOCK_SIZE] == plain[b * fmt.BLOCK_SIZE : (b + 1) * fmt.BLOCK_SIZE] for b in good)
    assert after[damaged * cb : (damaged + 1) * cb] == cipher[damaged * cb : (damaged + 1) * cb]
