"""The mount's control socket: its record, its permissions, its protocol and its registry.

Real mounts through the CLI, a real socket; the registry test serves a real vault's
Operations object (no FUSE needed to dispatch a request) on a real unix socket.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from wire.mountsock import MountControlError, find_by_mountpoint, list_mounts, request, request_socket
from fs.mount.control import server as control
from fs.mount.control.handlers import HANDLERS
from fs.vault import config as vault_mod
from fs.mount.operations import Operations
from tests.conftest import PASSPHRASE, Env, Mount


def _raw(path: str, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(payload)
        data = b""
        while data.count(b"\n") < payload.count(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_record_socket_and_status(env: Env, mounted: Mount) -> None:
    record = env.mount_record(mounted.path)
    for key in ("source", "vault_id", "share_id", "identity", "uid", "control"):
        assert key in record, key
    assert record["uid"] == os.getuid() and record["share_id"] == "" and len(record["vault_id"]) == 16
    sock = Path(record["control"])
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert sock.parent == env.home / "mounts"
    [info] = list_mounts(env.home)
    assert info.pid == mounted.pid and info.mountpoint == str(mounted.path)
    assert find_by_mountpoint(env.home, mounted.path) == info
    status = request(info, {"type": "status"})
    assert status["type"] == "status" and status["locked"] is False and status["pid"] == mounted.pid
    assert {"status", "lock", "unlock", "unmount"} <= set(status["handlers"])


def test_protocol_errors_and_several_requests_per_connection(env: Env, mounted: Mount) -> None:
    info = find_by_mountpoint(env.home, mounted.path)
    assert info is not None
    reply = request(info, {"type": "no-such-request"})
    assert reply["type"] == "error" and reply["code"] == "unknown-request"
    lines = _raw(info.control, b'not json\n{"type":"status"}\n{"type":"unlock"}\n').splitlines()
    replies = [json.loads(line) for line in lines]
    assert [r["type"] for r in replies] == ["error", "status", "error"]
    assert replies[0]["code"] == "bad-request" and replies[2]["code"] == "bad-request"
    assert (mounted.path / ".").exists()  # the mount still serves


def test_audit_source_maps_to_the_mount(env: Env, vault: Path) -> None:
    from wire.mountsock import find_by_source
    from tests.conftest import live_mount

    with live_mount(env, vault, env.tmp / "m2", "--audit", "best-effort") as m:
        record = env.mount_record(m.path)
        assert len(record["source"]) == 16
        info = find_by_source(env.home, record["source"])
        assert info is not None and info.pid == m.pid
        assert request(env.home, record["source"], {"type": "status"})["source"] == record["source"]
    assert list_mounts(env.home) == []  # unmounted: record gone
    with pytest.raises(MountControlError):
        request(env.home, record["source"], {"type": "status"})


def test_another_uid_cannot_use_the_socket(env: Env, mounted: Mount) -> None:
    info = find_by_mountpoint(env.home, mounted.path)
    assert info is not None
    # A second name for the same socket inode in a directory anyone may enter.
    public = Path(tempfile.mkdtemp(prefix="umbrafs-ctl-"))
    try:
        public.chmod(0o755)
        alias = public / "ctl.sock"
        os.link(info.control, alias)
        probe = (
            "import os, socket, sys\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            "    s.connect(sys.argv[1])\n"
            "except PermissionError:\n"
            "    print('EACCES'); sys.exit(0)\n"
            "s.settimeout(5)\n"
            "try:\n"
            "    s.sendall(b'{\"type\":\"lock\",\"reason\":\"x\"}\\n')\n"
            "    data = s.recv(4096)\n"
            "except (ConnectionResetError, BrokenPipeError):\n"
            "    data = b''\n"
            "print('closed' if not data else 'reply:' + repr(data))\n"
        )
        run = lambda: subprocess.run([sys.executable, "-c", probe, str(alias)], capture_output=True, text=True,  # noqa: E731
                                     timeout=30)
        assert run().stdout.strip() == "EACCES"  # mode 0600
        alias.chmod(0o666)  # even if the mode let it in, SO_PEERCRED does not
        out = run()
        assert out.stdout.strip() == "closed", out
    finally:
        os.chmod(info.control, 0o600)
        for p in public.iterdir():
            p.unlink()
        public.rmdir()
    assert request(info, {"type": "status"})["locked"] is False
    assert "refused a connection from uid 65534" in mounted.log()


def test_registered_handlers_reach_the_running_operations(tmp_path: Path) -> None:

    vault_path = tmp_path / "vault"
    vault_mod.create(vault_path, PASSPHRASE.encode(), vault_mod.KdfParams(1024, 1, 1))
    unlocked = vault_mod.unlock(vault_path, PASSPHRASE.encode())
    ops = Operations(str(vault_path), unlocked.root_wrap_key)
    # A socket path longer than sun_path allows: reached through /proc/self/fd.
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    spec = control.ControlSpec(deep / "ctl.sock", tmp_path, vault=unlocked)
    del unlocked
    ctl = control.MountControl(ops, spec, tmp_path / "mnt", vault_path, handlers=HANDLERS)
    assert ctl.vault is not None and spec.vault is None

    async def peek(c: control.MountControl, message: dict[str, Any]) -> dict[str, Any]:
        assert c is ctl and c.nursery is not None
        ino = await c.run_sync(lambda: c.ops.inodes.root.ino)
        return {"type": "peek", "root": ino, "echo": message.get("x"), "peer_pid": c.peer[0]}

    async def fails(c: control.MountControl, message: dict[str, Any]) -> dict[str, Any]:
        raise control.ControlRequestError("nope", "refused on purpose")

    ctl.handlers = {**HANDLERS, "test-peek": peek, "test-fail": fails}
    replies: list[dict[str, Any]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ctl.nursery = nursery
            await nursery.start(ctl.serve)
            for message in ({"type": "test-peek", "x": 7}, {"type": "test-fail"}, {"type": "status"}):
                replies.append(await trio.to_thread.run_sync(request_socket, str(spec.socket_path), message))
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        ops.close()
    assert replies[0] == {"type": "peek", "root": 1, "echo": 7, "peer_pid": os.getpid()}
    assert replies[1] == {"type": "error", "code": "nope", "message": "refused on purpose"}
    assert replies[2]["locked"] is False and "test-peek" in replies[2]["handlers"]
    assert not spec.socket_path.exists()  # removed when the server stops
