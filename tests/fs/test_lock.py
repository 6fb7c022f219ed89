"""`umbrafs lock` / `unlock` and the unmount request, on real mounts through the real CLI.

Owner mounts unlock with the vault passphrase; a share recipient's mount with the
identity passphrase, its key fetched again through real proxy processes.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli import exitcodes
from wire.mountsock import find_by_mountpoint, request
from tests.cli import test_sharing
from tests.cli.test_sharing import World
from tests.conftest import PASSPHRASE, Env, Mount, is_mounted, live_mount, process_gone


# Fixtures of the sharing tests: alice, bob, three proxy processes (used by the share-mount test).
world = test_sharing.world
w = test_sharing.w


def _state(env: Env, mnt: Path) -> dict:
    out = env.run("mounts", "--json", check=True).stdout.splitlines()
    return next(json.loads(line) for line in out if json.loads(line)["mountpoint"] == str(mnt))


def _refused(probe) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermissionError):
        probe()


def test_lock_refuses_access_and_unlock_restores(env: Env, mounted: Mount) -> None:
    m = mounted.path
    (m / "docs").mkdir()
    (m / "docs" / "plan.txt").write_text("secret plan\n")
    (m / "data.bin").write_bytes(os.urandom(100_000))
    assert (m / "docs" / "plan.txt").read_text() == "secret plan\n"  # now in the page cache
    fd = os.open(m / "docs" / "plan.txt", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == b"secret plan\n"
        out = env.run("lock", m, "--reason", "test", check=True)
        assert out.stdout.strip() == f"{m}: locked"
        assert _state(env, m)["state"] == "locked" and _state(env, m)["lock_reason"] == "test"
        _refused(lambda: os.listdir(m))
        _refused(lambda: (m / "docs" / "plan.txt").read_text())
        _refused(lambda: os.stat(m / "data.bin"))
        _refused(lambda: (m / "new.txt").write_text("x"))
        _refused(lambda: os.pread(fd, 100, 0))  # the cached pages were dropped
        assert os.stat(m).st_ino == 1  # the root's own attributes still answer
        assert env.run("lock", m, check=True).stdout.strip() == f"{m}: already locked"

        wrong = env.tmp / "wrong"
        wrong.write_text("not the passphrase\n")
        result = env.run("unlock", m, "--passphrase-file", wrong)
        assert result.returncode == exitcodes.WRONG_PASSPHRASE
        assert result.stderr.count("\n") == 1 and "wrong passphrase" in result.stderr and "Traceback" not in result.stderr
        _refused(lambda: os.listdir(m))
        assert _state(env, m)["state"] == "locked"

        assert env.run("unlock", m, "--passphrase-file", env.passfile, check=True).stdout.strip() == f"{m}: unlocked"
        assert sorted(os.listdir(m)) == ["data.bin", "docs"]
        assert (m / "docs" / "plan.txt").read_text() == "secret plan\n"
        assert os.pread(fd, 100, 0) == b"secret plan\n"  # handles opened before the lock work again
        (m / "docs" / "after.txt").write_text("written after unlock\n")
        assert (m / "docs" / "after.txt").read_text() == "written after unlock\n"
        assert _state(env, m)["state"] == "unlocked"
        assert env.run("unlock", m, "--passphrase-file", env.passfile, check=True).stdout.strip() == f"{m}: not locked"
    finally:
        os.close(fd)
    # What was written before and after the lock survives a remount byte for byte.
    mounted.remount()
    assert (m / "docs" / "after.txt").read_text() == "written after unlock\n"
    assert len((m / "data.bin").read_bytes()) == 100_000


def test_lock_of_an_unknown_mountpoint_is_one_line(env: Env, tmp_path: Path) -> None:
    result = env.run("lock", tmp_path)
    assert result.returncode == exitcodes.MOUNTPOINT and result.stderr.count("\n") == 1


def _wait_gone(mount: Mount, record: Path, sock: Path) -> None:
    deadline = time.monotonic() + 20
    while is_mounted(mount.path) or not process_gone(mount.pid) or record.exists():
        assert time.monotonic() < deadline, "the mount did not go away"
        time.sleep(0.05)
    assert not sock.exists()


def test_unmount_request(env: Env, vault: Path) -> None:
    with live_mount(env, vault, env.tmp / "mnt") as mount:
        (mount.path / "f").write_text("kept\n")
        info = find_by_mountpoint(env.home, mount.path)
        assert info is not None
        assert request(info, {"type": "unmount", "reason": "test"}) == {"type": "unmounting"}
        _wait_gone(mount, Path(info.record), Path(info.control))
    with live_mount(env, vault, env.tmp / "mnt") as again:
        assert (again.path / "f").read_text() == "kept\n"


def test_unmount_request_while_busy_detaches_and_exits(env: Env, vault: Path) -> None:
    with live_mount(env, vault, env.tmp / "mnt") as mount:
        (mount.path / "f").write_text("open\n")
        fd = os.open(mount.path / "f", os.O_RDONLY)
        try:
            info = find_by_mountpoint(env.home, mount.path)
            assert info is not None
            assert request(info, {"type": "unmount", "reason": "busy test"})["type"] == "unmounting"
            _wait_gone(mount, Path(info.record), Path(info.control))
            with pytest.raises(OSError) as caught:
                os.pread(fd, 10, 0)
            assert caught.value.errno in (errno.ENOTCONN, errno.EACCES, errno.ECONNABORTED)
        finally:
            with contextlib.suppress(OSError):  # ENOTCONN: the session is gone
                os.close(fd)
        assert "detaching lazily" in mount.log()


@pytest.mark.slow  # three proxy processes and two identities: ~30 s on the shared CI machine
def test_share_mounts_lock_and_unlock_with_the_identity_passphrase(w: World) -> None:
    share_id = w.share("/projects/x/sub")
    with live_mount(w.bob, w.vault, w.tmp / "lockview", "--share", share_id, "--identity", "bob") as view:
        assert w.bob.mount_record(view.path)["share_id"] == share_id
        assert (view.path / "b.txt").read_text() == "beta\n"
        w.bob.run("lock", view.path, "--reason", "test", check=True)
        _refused(lambda: (view.path / "b.txt").read_text())
        _refused(lambda: os.listdir(view.path))
        # The vault's passphrase is not bob's: still locked.
        result = w.bob.run("unlock", view.path, "--passphrase-file", w.alice.passfile)
        assert result.returncode == exitcodes.WRONG_PASSPHRASE, result.stderr
        _refused(lambda: os.listdir(view.path))
        w.bob.run("unlock", view.path, "--passphrase-file", w.bob.passfile, check=True)
        assert (view.path / "b.txt").read_text() == "beta\n"
        # Revoked while locked: the proxies refuse the key, the mount stays locked.
        w.bob.run("lock", view.path, check=True)
        w.alice.run("revoke", w.drive / "projects" / "x" / "sub", "--from", "bob", "--passphrase-file", w.alice.passfile,
                    "--vault-passphrase-file", w.alice.passfile, check=True)
        result = w.bob.run("unlock", view.path, "--passphrase-file", w.bob.passfile)
        assert result.returncode == exitcodes.ERROR and "revoked" in result.stderr and result.stderr.count("\n") == 1
        _refused(lambda: (view.path / "b.txt").read_text())
    # A shared single file: its DEK goes and comes back the same way.
    share_id = w.share("/projects/x/a.txt")
    with live_mount(w.bob, w.vault, w.tmp / "filelock", "--share", share_id, "--identity", "bob") as view:
        assert (view.path / "a.txt").read_text() == "alpha\n"
        w.bob.run("lock", view.path, check=True)
        _refused(lambda: (view.path / "a.txt").read_text())
        _refused(lambda: os.listdir(view.path))
        w.bob.run("unlock", view.path, "--passphrase-file", w.bob.passfile, check=True)
        assert os.listdir(view.path) == ["a.txt"]
        assert (view.path / "a.txt").read_text() == "alpha\n"


_IMPOSTOR = r"""
import os, socket, sys
path, out = sys.argv[1], sys.argv[2]
os.unlink(path)
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(4)
print("ready", flush=True)
s.settimeout(30)
with open(out, "ab") as f:
    while True:
        try:
            c, _ = s.accept()
        except socket.timeout:
            break
        c.settimeout(2)
        try:
            f.write(c.recv(65536))
            f.flush()
        except OSError:
            pass
        c.close()
"""


def test_unlock_sends_no_passphrase_to_a_socket_the_mount_does_not_serve(env: Env, mounted: Mount) -> None:
    """Security review, finding 13: after a lock, same-uid malware replaced the mount's control
    socket, and the user's `umbrafs unlock` handed it the vault passphrase."""
    env.run("lock", mounted.path, "--reason", "test", check=True)
    control = env.mount_record(mounted.path)["control"]
    caught = env.tmp / "caught"
    impostor = subprocess.Popen([sys.executable, "-c", _IMPOSTOR, control, str(caught)], stdout=subprocess.PIPE, text=True)
    try:
        assert impostor.stdout is not None and impostor.stdout.readline().strip() == "ready"
        result = env.run("unlock", mounted.path, "--passphrase-file", env.passfile)
        assert result.returncode != 0
        assert "not by the mount's process" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    finally:
        impostor.kill()
        impostor.wait(timeout=10)
    assert PASSPHRASE.encode() not in (caught.read_bytes() if caught.exists() else b"")


def test_the_rotate_request_needs_a_proof_made_with_the_vault_key(env: Env, mounted: Mount) -> None:
    """Security review, finding 16: any process of the user could have the owner's mount
    re-key any directory (root included: every share below it broken, the vault rewritten)."""
    from fs.format.cryptocore import rotate_proof
    from fs.vault import config as vault_mod

    (mounted.path / "d").mkdir()
    info = find_by_mountpoint(env.home, mounted.path)
    assert info is not None
    root_wrap_key = vault_mod.unlock(mounted.vault, PASSPHRASE.encode()).root_wrap_key
    for proof in (None, "00" * 32, rotate_proof(root_wrap_key, info.mountpoint, os.getpid() + 1)):
        message = {"type": "rotate", "reason": "malware"} | ({"proof": proof} if proof else {})
        reply = request(info, message, 5.0)
        assert reply["type"] == "error" and reply.get("code") == "refused", reply
    assert not (mounted.vault / ".umbrafs.rotate").exists()
    reply = request(info, {"type": "rotate", "proof": rotate_proof(root_wrap_key, info.mountpoint, os.getpid())}, 5.0)
    assert reply["type"] == "rotating", reply  # with the vault key it is the owner asking (nothing pending: done at once)
