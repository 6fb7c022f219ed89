"""Attacks by whoever can write the backing directory (a sync peer, the cloud, a share
recipient): each test plants what the security review describes (../shared/SECURITY-REVIEW.md,
finding number in the test's docstring), then lets the owner use the vault as usual through
the real CLI and a real mount, and shows the attack fails and loses nothing.
"""
from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import time
from pathlib import Path

from fs.format import layout as fmt
from tests.conftest import PASSPHRASE, Env, Mount, force_unmount, live_mount

LONG = "n" * 200  # encrypted, longer than LONGNAME_MAX: stored as ~<hash> plus a sidecar


def _offline(mounted: Mount, plant) -> None:  # type: ignore[no-untyped-def]
    """Unmount, let the attacker change the backing dir, mount again (the same Mount object,
    so the fixture still unmounts it)."""
    mounted.unmount()
    plant()
    again = mounted.env.mount(mounted.vault, mounted.path)
    mounted.pid = again.pid


def _timed(*cmd: str | Path, timeout: float = 10) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    result = subprocess.run([*map(str, cmd)], capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - start


def _sidecars(directory: Path, suffix: str) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(fmt.LONGNAME_PREFIX) and p.name.endswith(suffix)]


def test_passwd_does_not_follow_a_planted_temp_file_symlink(env: Env, vault: Path) -> None:
    """Finding 8: `vault.json.tmp` planted as a symlink made `passwd` overwrite its target."""
    precious = env.tmp / "precious.txt"
    precious.write_text("keep me\n")
    (vault / "vault.json.tmp").symlink_to(precious)
    (vault / ".vault.json.tmp").symlink_to(precious)
    new = env.tmp / "new-passphrase"
    new.write_text("a new passphrase\n")
    env.run("passwd", vault, "--passphrase-file", env.passfile, "--new-passphrase-file", new, check=True)
    assert precious.read_text() == "keep me\n"
    assert not (vault / fmt.VAULT_CONFIG_NAME).is_symlink()
    assert json.loads((vault / fmt.VAULT_CONFIG_NAME).read_text())["format"] == "umbrafs-vault"
    assert sorted(p.name for p in vault.iterdir() if p.name.startswith(".vault.json.")) == [".vault.json.tmp"]
    mountpoint = env.tmp / "mnt"
    mountpoint.mkdir()
    env.run("mount", vault, mountpoint, "--passphrase-file", new, check=True)
    env.run("unmount", mountpoint, check=True)


def test_a_fifo_for_vault_json_is_refused_at_once(env: Env, vault: Path) -> None:
    """Finding 9, for the config: opening a FIFO for reading waits for a writer forever."""
    (vault / fmt.VAULT_CONFIG_NAME).unlink()
    os.mkfifo(vault / fmt.VAULT_CONFIG_NAME)
    mountpoint = env.tmp / "mnt"
    mountpoint.mkdir()
    start = time.monotonic()
    result = env.run("mount", vault, mountpoint, "--passphrase-file", env.passfile, timeout=20)
    assert time.monotonic() - start < 10
    assert result.returncode != 0 and "not a regular file" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_swapped_owner_public_key_is_refused(env: Env, vault: Path) -> None:
    """Finding 12: the clear public key names the vault in every audit event, anchor and
    policy lookup; a storage attacker could swap it for another key's."""
    import umbral_pre

    config = json.loads((vault / fmt.VAULT_CONFIG_NAME).read_text())
    config["owner"]["public_key"] = umbral_pre.SecretKey.random().public_key().to_compressed_bytes().hex()
    (vault / fmt.VAULT_CONFIG_NAME).write_text(json.dumps(config))
    mountpoint = env.tmp / "mnt"
    mountpoint.mkdir()
    result = env.run("mount", vault, mountpoint, "--passphrase-file", env.passfile)
    if result.returncode == 0:
        force_unmount(mountpoint, int(env.mount_record(mountpoint)["pid"]))
    assert result.returncode == 16, (result.returncode, result.stderr)  # DAMAGE (docs/operations.md#exit-codes)
    assert "owner public key" in result.stderr and "altered" in result.stderr


def test_fifos_planted_for_sidecars_and_headers_do_not_hang_the_mount(mounted: Mount) -> None:
    """Finding 9: a FIFO where a long-name sidecar, a long-symlink sidecar or a directory
    header belongs hung `ls` (and, on the one trio loop, the whole mount) for 27 minutes."""
    m = mounted.path
    (m / "a").mkdir()
    (m / "a" / LONG).write_text("long name\n")
    (m / "a" / "short").write_text("short name\n")
    os.symlink("t" * 4000, m / "a" / "longlink")
    (m / "b").mkdir()
    (m / "b" / "inside").write_text("x\n")
    (m / "c").mkdir()
    (m / "c" / "fine").write_text("still fine\n")

    def plant() -> None:
        dirs = [p for p in mounted.vault.iterdir() if p.is_dir() and not p.name.startswith(".")]
        a = next(d for d in dirs if _sidecars(d, fmt.LONGNAME_SUFFIX))
        for sidecar in _sidecars(a, fmt.LONGNAME_SUFFIX) + _sidecars(a, fmt.LONGLINK_SUFFIX):
            sidecar.unlink()
            os.mkfifo(sidecar)
        b = next(d for d in dirs if d != a and len(list(d.iterdir())) == 2)  # header + one entry
        (b / fmt.DIR_HEADER_NAME).unlink()
        os.mkfifo(b / fmt.DIR_HEADER_NAME)

    _offline(mounted, plant)
    listing, took = _timed("ls", m / "a")
    assert took < 5, took
    assert listing.stdout.split() == ["longlink", "short"], listing  # the long name is dropped, and logged
    result, took = _timed("readlink", m / "a" / "longlink")
    assert took < 5 and result.returncode != 0
    broken = [d for d in ("b", "c") if _timed("ls", m / d)[0].returncode != 0]
    assert len(broken) == 1  # the one whose header is a FIFO: EIO, at once
    assert (m / "a" / "short").read_text() == "short name\n"
    assert sorted(os.listdir(m)) == ["a", "b", "c"]
    assert "not a regular file" in mounted.log()


def test_policy_set_does_not_follow_planted_temp_symlinks(env: Env, vault: Path) -> None:
    """Finding 8, the policy: its temp name was the pid's, so symlinks planted for the next
    few hundred pids made `policy set` overwrite the file they point to."""
    precious = env.tmp / "precious.txt"
    precious.write_text("keep me\n")
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    for pid in range(last + 1, last + 400):
        (vault / f".umbrafs.policy.json.{pid}.tmp").symlink_to(precious)
    env.run("policy", "set", vault, "--on-anomaly", "lock", "--passphrase-file", env.passfile, check=True)
    assert precious.read_text() == "keep me\n"
    shown = env.run("policy", "show", vault, check=True)
    assert "on anomaly lock" in shown.stdout


def test_a_fifo_for_the_policy_file_is_refused_at_once(env: Env, vault: Path) -> None:
    """Finding 9, the policy: the daemon and `policy show` read it; a FIFO waited for a writer."""
    os.mkfifo(vault / ".umbrafs.policy.json")
    start = time.monotonic()
    result = env.run("policy", "show", vault, timeout=20)
    assert time.monotonic() - start < 10
    assert result.returncode == 22 and "not a regular file" in result.stderr, result  # POLICY_INVALID


# -- the rotation journal (.umbrafs.rotate/ in the synced vault) --------------------------

_SKEL_PROFILE = b"# ~/.profile: executed by the command interpreter for login shells.\n"


def _plant_journal(vault: Path, job: dict, redo: bytes) -> None:
    journal = vault / ".umbrafs.rotate"
    journal.mkdir(exist_ok=True)
    (journal / "job.json").write_text(json.dumps(job))
    (journal / "redo").write_bytes(redo)


def _redo_body(rel: str, obj_id: bytes, off: int, data: bytes) -> bytes:
    raw = rel.encode()
    return (struct.pack(">I", 1) + struct.pack(">H", len(raw)) + raw + obj_id + struct.pack(">I", 1)
            + struct.pack(">QI", off, len(data)) + data)


def test_a_planted_redo_record_writes_nothing_on_the_next_mount(env: Env, vault: Path) -> None:
    """Finding 1 (critical): a redo record naming ../victim made the owner's next mount write
    chosen bytes into any file the owner can write (the review's ~/.profile proof), and one
    naming a backing file inside the vault corrupts that file."""
    victim = env.tmp / "victim-profile"  # beside the vault: reached by "../"
    victim.write_bytes(_SKEL_PROFILE)
    payload = b"echo PWNED-by-storage-attacker; #"
    # the review's record, byte for byte: the old format with no checksum
    old = _redo_body("../victim-profile", _SKEL_PROFILE[8:24], 0, payload)
    _plant_journal(vault, {}, b"umbrafs-redo-1\n\0" + struct.pack(">QI4x", len(old), 0) + old)
    mountpoint = env.tmp / "mnt"
    with live_mount(env, vault, mountpoint) as m:
        (m.path / "inside.txt").write_bytes(b"owner data\n")
    assert victim.read_bytes() == _SKEL_PROFILE
    # the current format, with a made-up job nonce and MAC: into the victim, and into a backing file
    inside = next(p for p in vault.iterdir() if p.is_file() and "." not in p.name)
    inside_before = inside.read_bytes()
    job = {"format": "umbrafs-rotate", "version": 1, "kind": "dir", "target": ".", "object_id": "00" * 16,
           "reason": "", "started": "2026-12-08T00:00:00Z", "nonce": "11" * 16, "mac": "22" * 32}
    records = _redo_body("../victim-profile", _SKEL_PROFILE[8:24], 0, payload)
    records += _redo_body(inside.name, inside_before[8:24], 400, payload)[4:]
    records = struct.pack(">I", 2) + records[4:]
    _plant_journal(vault, job, b"umbrafs-redo-2\n\0" + struct.pack(">Q", len(records)) + os.urandom(32) + records)
    with live_mount(env, vault, mountpoint) as m:
        assert (m.path / "inside.txt").read_bytes() == b"owner data\n"
        log = m.log()
    assert victim.read_bytes() == _SKEL_PROFILE
    assert inside.read_bytes() == inside_before
    assert "not acted on" in log


def test_planted_journal_symlinks_are_not_followed_by_a_rotation(env: Env, vault: Path, tmp_path: Path) -> None:
    """Finding 5: `.umbrafs.rotate` (or its `log`, `redo`, `job.json.tmp`) planted as a symlink
    made the owner's next rotation write megabytes of ciphertext and log lines into its target."""
    from fs.vault import config as vault_mod
    from fs.vault import keywalk
    from fs.vault.rotate import engine as rotate

    with live_mount(env, vault, env.tmp / "mnt") as m:
        (m.path / "d").mkdir()
        (m.path / "d" / "big.bin").write_bytes(os.urandom(3 << 20))
        (m.path / "d" / "small.txt").write_text("small\n")
    precious = {name: tmp_path / f"precious-{name}" for name in ("log", "redo", "job.json")}
    for path in precious.values():
        path.write_bytes(b"keep me\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "log").symlink_to(precious["log"])
    unlocked = vault_mod.unlock(vault, PASSPHRASE.encode())
    target = keywalk.find(unlocked, "/d")
    spec = rotate.TargetSpec(target.kind, target.backing_rel, target.obj_id)

    (vault / ".umbrafs.rotate").symlink_to(outside)  # the directory itself
    assert rotate.run_offline(vault, unlocked.root_wrap_key, spec).state == "done"
    journal = vault / ".umbrafs.rotate"
    journal.mkdir()  # then its files, in a real directory
    for name, path in precious.items():
        (journal / name).symlink_to(path)
    assert rotate.run_offline(vault, unlocked.root_wrap_key, spec).state == "done"
    for path in precious.values():
        assert path.read_bytes() == b"keep me\n"
    assert sorted(p.name for p in outside.iterdir()) == ["log"]
    with live_mount(env, vault, env.tmp / "mnt") as m:
        assert len((m.path / "d" / "big.bin").read_bytes()) == 3 << 20
        assert (m.path / "d" / "small.txt").read_text() == "small\n"


# -- sidecars ------------------------------------------------------------------------------

def test_a_long_name_sidecar_copied_over_another_is_refused(mounted: Mount) -> None:
    """Finding 10: copying ~h1.name over ~h2.name listed entry ~h2 under h1's name, so reading
    name A returned file Z's content."""
    m = mounted.path
    a, z = "a" * 200, "z" * 200
    (m / a).write_text("content of the A file\n")
    (m / z).write_text("content of the Z file\n")

    def plant() -> None:
        sidecars = {p.read_text(): p for p in _sidecars(mounted.vault, fmt.LONGNAME_SUFFIX)}
        assert len(sidecars) == 2
        (first, path_a), (second, path_z) = sorted(sidecars.items())  # which is which does not matter
        path_a.write_text(second)  # entry 1 now claims entry 2's name

    _offline(mounted, plant)
    listing = os.listdir(m)
    assert len(listing) == 1 and len(set(listing)) == 1, [n[:3] for n in listing]
    (only,) = listing
    assert (m / only).read_text() == f"content of the {only[0].upper()} file\n"
    assert "holds another entry's name" in mounted.log()
    fsck = mounted.env.run("fsck", mounted.vault, "--passphrase-file", mounted.env.passfile)
    assert fsck.returncode == 16 and "holds another entry's name" in fsck.stdout + fsck.stderr


def test_a_symlink_marker_pointing_outside_the_vault_is_not_followed(mounted: Mount) -> None:
    """Finding 11: a backing symlink target starting with "~" was joined as <dir>/<target>.link,
    so "~/../../<name>" (with a planted directory "~") let the mount read, and unlink, a
    .link file outside the vault."""
    m, vault = mounted.path, mounted.vault
    victim = mounted.env.tmp / ("v" * 25 + ".link")  # vault/~/../../ is the vault's parent
    victim.write_text("not the vault's\n")
    os.symlink("somewhere", m / "link")

    def plant() -> None:
        (vault / "~").mkdir()
        (backing_link,) = [p for p in vault.iterdir() if p.is_symlink()]
        marker = "~/../../" + "v" * 25
        assert len(marker) == 33  # the length of a real marker: unlink drops its sidecar
        backing_link.unlink()
        backing_link.symlink_to(marker)

    _offline(mounted, plant)
    result, took = _timed("readlink", m / "link")
    assert result.returncode != 0 and took < 5
    os.unlink(m / "link")
    assert victim.read_text() == "not the vault's\n"
    assert "neither sealed nor a sidecar marker" in mounted.log()


# -- the revoked recipient against `revoke --rotate` ---------------------------------------

def test_the_revoked_recipient_opens_nothing_after_the_rotation_despite_planted_slots(env: Env, vault: Path) -> None:
    """Finding 2 (high): the recipient being revoked holds key_D and writes the backing dir. It
    planted a self slot in D's header (the rotation then "finished" D with the old key), self
    slots in large files and files with xattrs (they kept their DEK), and a slot naming a
    directory S whose key it holds (the rotation wrapped the new DEK for S). Afterwards, with
    every key it ever had, it must open nothing below D."""
    from fs.format import cryptocore as keys
    from fs.vault import config as vault_mod
    from fs.vault import keywalk
    from fs.vault.content import OpenFile
    from fs.vault.headers import read_dir_header, read_file_header
    from fs.vault.rotate import engine as rotate
    from fs.errors import IntegrityError

    files = {"/D/small.txt": b"small\n", "/D/big.bin": os.urandom(3 << 20), "/D/sub/inner.txt": b"inner\n",
             "/D/xattr.txt": b"with an xattr\n", "/S/x.txt": b"another share\n"}
    with live_mount(env, vault, env.tmp / "mnt") as m:
        for path, data in files.items():
            (m.path / path[1:]).parent.mkdir(parents=True, exist_ok=True)
            (m.path / path[1:]).write_bytes(data)
        os.setxattr(m.path / "D" / "xattr.txt", "user.note", b"kept")
    unlocked = vault_mod.unlock(vault, PASSPHRASE.encode())
    find = {p: keywalk.find(unlocked, p) for p in ("/D", "/D/sub", "/S", *files)}
    stolen = {t.key for t in find.values()} - {find["/S/x.txt"].key}  # every key below D, and key_S
    junk = os.urandom(32)
    stolen.add(junk)
    d, s = find["/D"], find["/S"]

    def plant_dir(rel: str, slot_index: int, slot) -> None:  # type: ignore[no-untyped-def]
        header = read_dir_header(os.open(vault, os.O_RDONLY | os.O_DIRECTORY), rel)
        (vault / rel / fmt.DIR_HEADER_NAME).write_bytes(header.with_slot(slot_index, slot).pack())

    def plant_file(path: str, slot) -> None:  # type: ignore[no-untyped-def]
        backing = vault / find[path].backing_rel
        with open(backing, "r+b") as f:
            header = read_file_header(f.fileno())
            free = header.slots.index(None)
            f.write(header.with_slot(free, slot).pack())

    d_header = read_dir_header(os.open(vault, os.O_RDONLY | os.O_DIRECTORY), d.backing_rel)
    other = 1 if d_header.slots[0] is not None else 0
    plant_dir(d.backing_rel, other, keys.wrap_slot(d.key, d.obj_id, fmt.KIND_DIR, d.obj_id, junk))
    for path in ("/D/big.bin", "/D/xattr.txt"):
        plant_file(path, keys.self_slot(find[path].key, find[path].obj_id, junk))
    plant_file("/D/small.txt", keys.wrap_slot(s.key, s.obj_id, fmt.KIND_FILE, find["/D/small.txt"].obj_id,
                                              find["/D/small.txt"].key))

    rotate.run_offline(vault, unlocked.root_wrap_key, rotate.TargetSpec(d.kind, d.backing_rel, d.obj_id))

    opened = []
    root_fd = os.open(vault, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for path in ("/D", "/D/sub", *[p for p in files if p.startswith("/D/")]):
            target = keywalk.find(unlocked, path)  # the owner still opens it
            if target.kind == keywalk.KIND_DIR:
                header = read_dir_header(root_fd, target.backing_rel)
            else:
                fd = os.open(target.backing_rel, os.O_RDONLY, dir_fd=root_fd)
                header = read_file_header(fd)
                for key in stolen:  # the content, under any DEK it ever had
                    try:
                        OpenFile(fd, header, key).read(0, 16)
                        opened.append(f"{path} content")
                    except IntegrityError:
                        pass
                os.close(fd)
            for slot in header.slots:
                for key in stolen:
                    try:
                        keys.unwrap_slot(key, header, slot.parent_id) if slot else None
                        if slot and slot.parent_id != header.obj_id:
                            opened.append(f"{path} slot of {slot.parent_id.hex()[:8]}")
                    except IntegrityError:
                        pass
    finally:
        os.close(root_fd)
    assert opened == [], opened
    with live_mount(env, vault, env.tmp / "mnt") as m:
        for path, data in files.items():
            assert (m.path / path[1:]).read_bytes() == data, path
        assert os.getxattr(m.path / "D" / "xattr.txt", "user.note") == b"kept"


def test_a_directory_being_re_keyed_is_not_moved_over_its_previous_key(mounted: Mount) -> None:
    """Security review, finding 17: a directory rename wrote the new parent's slot into "the
    other" slot even when it held a rotation's self slot (the previous key, still needed for
    entries under their old names), which then were lost."""
    from fs.format import cryptocore as keys
    from fs.vault import config as vault_mod
    from fs.vault import keywalk
    from fs.vault.headers import read_dir_header

    m = mounted.path
    (m / "a" / "d").mkdir(parents=True)
    (m / "a" / "d" / "f").write_text("kept\n")
    (m / "b").mkdir()

    def plant() -> None:  # as a rotation mid-way leaves it: the previous key in the free slot
        unlocked = vault_mod.unlock(mounted.vault, PASSPHRASE.encode())
        d = keywalk.find(unlocked, "/a/d")
        root_fd = os.open(mounted.vault, os.O_RDONLY | os.O_DIRECTORY)
        try:
            header = read_dir_header(root_fd, d.backing_rel)
        finally:
            os.close(root_fd)
        free = 1 if header.slots[0] is not None else 0
        previous = keys.wrap_slot(d.key, d.obj_id, fmt.KIND_DIR, d.obj_id, os.urandom(32))
        (mounted.vault / d.backing_rel / fmt.DIR_HEADER_NAME).write_bytes(header.with_slot(free, previous).pack())

    _offline(mounted, plant)
    try:
        os.rename(m / "a" / "d", m / "b" / "d")
        moved = True
    except OSError as exc:
        assert exc.errno == errno.EBUSY, exc
        moved = False
    assert not moved
    assert (m / "a" / "d" / "f").read_text() == "kept\n"
