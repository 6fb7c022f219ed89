"""Client side of a mount's control socket: find live mounts, send them requests.

Every mount registers ``<home>/mounts/<key>.json`` (`register`, from fs/mount/session.py) and
listens on ``<home>/mounts/<key>.sock`` (fs/mount/control/server.py) for JSON lines like the
daemon's protocol: status, lock, unlock, unmount and whatever other modules register.
This module is pure stdlib + wire.daemonsock so that the daemon, the CLI and the
mount itself can use it; it holds the one writer and the one reader of the registry.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from wire import daemonsock as protocol
from wire.errors import MountControlError
from wire.procfs import mounted_paths, peer_credentials, pid_alive, serves_fuse

MOUNTS_DIR = "mounts"
# sun_path holds 108 bytes; longer paths are reached through /proc/self/fd/<dir fd>/<name>.
_SUN_PATH_MAX = 100


@dataclass(frozen=True)
class MountInfo:
    pid: int
    mountpoint: str
    vault: str
    read_only: bool = False
    started: float = 0.0
    source: str = ""       # the mount's AuditSink source ("" if auditing is off)
    vault_id: str = ""
    share_id: str = ""     # "" for the owner's mount
    identity: str = ""     # recipient identity name of a share mount, else ""
    uid: int = -1
    control: str = ""      # path of the control socket
    record: str = ""       # path of the record file

    @classmethod
    def from_record(cls, record: dict[str, Any], record_path: Path) -> "MountInfo":
        return cls(
            pid=int(record["pid"]), mountpoint=str(record["mountpoint"]), vault=str(record.get("vault", "")),
            read_only=bool(record.get("read_only", False)), started=float(record.get("started", 0.0)),
            source=str(record.get("source", "")), vault_id=str(record.get("vault_id", "")),
            share_id=str(record.get("share_id", "")), identity=str(record.get("identity", "")),
            uid=int(record.get("uid", -1)), control=str(record.get("control", "")), record=str(record_path),
        )


# -- the registry: <home>/mounts/<key>.json, one per mountpoint ------------------------

def mount_key(mountpoint: Path | str) -> str:
    """The name a mountpoint's record, socket and log go under (a hash: paths may be long)."""
    return hashlib.sha256(os.fsencode(Path(mountpoint).absolute())).hexdigest()[:16]


def record_path(home: Path, mountpoint: Path | str) -> Path:
    return Path(home) / MOUNTS_DIR / f"{mount_key(mountpoint)}.json"


def control_path(home: Path, mountpoint: Path | str) -> Path:
    """The mount's control socket (fs/mount/control/server.py listens, `request` connects)."""
    return Path(home) / MOUNTS_DIR / f"{mount_key(mountpoint)}.sock"


def register(
    home: Path, mountpoint: Path, vault: Path, read_only: bool, *, source: str = "", vault_id: str = "",
    share_id: str = "", identity: str = "",
) -> None:
    """Record this process as the mount at *mountpoint* (atomically: readers never see half a record)."""
    record = {
        "pid": os.getpid(),
        "mountpoint": str(Path(mountpoint).absolute()),
        "vault": str(Path(vault).absolute()),
        "read_only": read_only,
        "started": time.time(),
        "source": source,  # the AuditSink source of the mount's events ("" if auditing is off)
        "vault_id": vault_id,
        "share_id": share_id,
        "identity": identity,
        "uid": os.getuid(),
        "control": str(control_path(home, mountpoint)),
    }
    path = record_path(home, mountpoint)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    tmp.replace(path)


def unregister(home: Path, mountpoint: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(home, mountpoint).unlink()


def read_record(home: Path, mountpoint: Path) -> dict[str, Any] | None:
    """The raw record of *mountpoint*, live or not (None if there is none)."""
    try:
        return json.loads(record_path(home, mountpoint).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def attached_mounts(home: Path) -> list[MountInfo]:
    """The mounts registered in *home* whose mountpoint is attached, whether or not their process
    still runs (a dead one leaves its mountpoint attached until it is unmounted)."""
    directory = Path(home) / MOUNTS_DIR
    if not directory.is_dir():
        return []
    live = mounted_paths()
    found = []
    for path in sorted(directory.glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            info = MountInfo.from_record(json.loads(path.read_text(encoding="utf-8")), path)
            if info.mountpoint in live:
                found.append(info)
    return found


def list_mounts(home: Path) -> list[MountInfo]:
    """The live mounts registered in *home*: process alive and mountpoint attached."""
    return [info for info in attached_mounts(home) if pid_alive(info.pid)]


def find_by_source(home: Path, source: str) -> MountInfo | None:
    """The live mount whose events carry *source*."""
    if not source:
        return None
    return next((m for m in list_mounts(home) if m.source == source), None)


def find_by_mountpoint(home: Path, mountpoint: Path | str) -> MountInfo | None:
    target = os.path.abspath(mountpoint)
    return next((m for m in list_mounts(home) if m.mountpoint == target), None)


@contextlib.contextmanager
def socket_address(path: str | os.PathLike[str]) -> Iterator[str]:
    """An address for *path* that fits in sun_path (bind or connect inside the block)."""
    path = os.fspath(path)
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    parent, name = os.path.split(path)
    fd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def request(
    target: MountInfo | Path | str, source_or_message: str | dict[str, Any],
    message: dict[str, Any] | None = None, timeout: float = 2.0,
) -> dict[str, Any]:
    """Send one request to a mount and return its reply.

    ``request(info, message)`` or ``request(home, source, message)``.  Error replies
    ({"type": "error", ...}) are returned; an unreachable mount raises MountControlError.
    """
    if isinstance(target, MountInfo):
        if not isinstance(source_or_message, dict):
            raise TypeError("request(info, message)")
        info, msg = target, source_or_message
        if isinstance(message, (int, float)):  # request(info, message, 5.0)
            timeout = float(message)
    else:
        if not isinstance(source_or_message, str) or message is None:
            raise TypeError("request(home, source, message)")
        found = find_by_source(Path(target), source_or_message)
        if found is None:
            raise MountControlError(f"no live mount with source {source_or_message!r}")
        info, msg = found, message
    return request_socket(info.control, msg, timeout, server_pid=info.pid)


def _check_server(sock: socket.socket, control: str, server_pid: int) -> None:
    """The socket is served by the mount's own process: a same-uid process that replaced the
    socket (or the record's `control` field) after a lock must not be handed a passphrase
    (security review, finding 13)."""
    pid, uid = peer_credentials(sock)
    if uid not in (os.geteuid(), 0) or pid != server_pid or not serves_fuse(pid):
        raise MountControlError(f"{control} is served by pid {pid} (uid {uid}), not by the mount's process "
                                f"{server_pid}: nothing sent")


def request_socket(control: str, message: dict[str, Any], timeout: float = 2.0,
                   server_pid: int | None = None) -> dict[str, Any]:
    """*server_pid*: refuse unless that process (a FUSE server) answers on the socket."""
    if not control:
        raise MountControlError("this mount has no control socket (started by an older umbrafs)")
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            with socket_address(control) as address:
                sock.connect(address)
            if server_pid is not None:
                _check_server(sock, control, server_pid)
            sock.sendall(protocol.encode(message))
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            return protocol.receive(sock)
        except FileNotFoundError:
            raise MountControlError(f"{control}: no control socket (is the mount running?)") from None
        except socket.timeout:
            raise MountControlError(f"mount did not answer within {timeout:g} s") from None
        except (OSError, protocol.ProtocolError) as exc:
            raise MountControlError(f"mount control socket {control}: {exc}") from None
    finally:
        sock.close()
