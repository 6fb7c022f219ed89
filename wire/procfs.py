"""What /proc says: process names of FUSE callers (cached briefly), whether a pid runs,
which paths are mount points.

Events and version records name the process behind a request; reading /proc for every request
would cost a syscall each, and pids are reused, so a name is trusted for two seconds only."""
from __future__ import annotations

import contextlib
import os
import socket
import struct
import time

TTL = 2.0
_MAX = 4096


class ProcessNames:
    def __init__(self) -> None:
        self._cache: dict[int, tuple[str, float]] = {}

    def __call__(self, pid: int) -> str:
        if pid <= 0:
            return ""
        now = time.monotonic()
        hit = self._cache.get(pid)
        if hit is not None and now - hit[1] < TTL:
            return hit[0]
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                name = f.read().strip().decode("utf-8", "replace")
        except OSError:
            name = ""
        if len(self._cache) > _MAX:
            self._cache.clear()
        self._cache[pid] = (name, now)
        return name


def pid_alive(pid: int) -> bool:
    """Running, and not a zombie: a detached process is reparented to init, and a
    slow init (containers) leaves it a zombie for seconds after it has exited."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _mountinfo() -> list[list[str]]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return [fields for fields in (line.split(" ") for line in f) if len(fields) > 4]


def mounted_paths() -> set[str]:
    """The mount points this process sees (/proc/self/mountinfo, field 5)."""
    return {_unescape(fields[4]) for fields in _mountinfo()}


def mount_device(mountpoint: str) -> str | None:
    """The "major:minor" of the mount at *mountpoint* (the last one: mounts stack), from
    mountinfo: no stat, since stat-ing our own mount before its loop runs would hang."""
    devices = [fields[2] for fields in _mountinfo() if _unescape(fields[4]) == mountpoint]
    return devices[-1] if devices else None


def serves_fuse(pid: int) -> bool:
    """Whether process *pid* holds /dev/fuse open (every FUSE server does; a process that
    only pretends to be a mount's control socket does not, unless it opens it too)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        with contextlib.suppress(OSError):
            if os.readlink(f"{fd_dir}/{name}") == "/dev/fuse":
                return True
    return False


def peer_credentials(sock: "socket.socket") -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a connected unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    return pid, uid
