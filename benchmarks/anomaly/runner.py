"""Run one activity as another user: fork, name the process, drop to the user's uid/gid, run.

The mount runs as root with allow_other + default_permissions, so a child that has become uid
1001 is, to the kernel and to the mount's events, user 1001.  The child writes one line to a
pipe: ``R <json>`` (its result) or ``E <text>`` (it failed).
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import select
import signal
import traceback
from pathlib import Path
from typing import Any

from benchmarks.anomaly import actions

log = logging.getLogger("anomaly_eval.runner")

_PR_SET_NAME = 15


class ActivityFailed(Exception):
    """The activity raised in the child (not a defence response: those are results)."""


def set_comm(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def become(uid: int) -> None:
    if uid == os.getuid():
        return
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


class Child:
    """One running activity; ``wait`` returns its result."""

    def __init__(self, pid: int, rfd: int) -> None:
        self.pid = pid
        self._r = os.fdopen(rfd, "rb", buffering=0)
        self._buf = b""

    def _line(self) -> bytes:
        while b"\n" not in self._buf:
            chunk = self._r.read(65536)
            if not chunk:
                line, self._buf = self._buf, b""
                return line
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def wait(self, timeout: float = 900.0) -> dict[str, Any]:
        line = b""
        try:
            ready, _, _ = select.select([self._r], [], [], timeout)
            if not ready:
                raise ActivityFailed(f"activity pid {self.pid} timed out after {timeout:.0f} s")
            line = self._line()
            tag, _, rest = line.partition(b" ")
            if tag == b"R":
                return json.loads(rest)
            if tag == b"E":
                raise ActivityFailed(rest.decode(errors="replace").replace("\\n", "\n"))
            raise ActivityFailed(f"activity pid {self.pid} exited without a result")
        except BaseException:
            if not line:  # timed out or interrupted: it must not run on
                self.kill()
            raise
        finally:
            self.close()

    def close(self) -> None:
        if not self._r.closed:
            self._r.close()
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return
        if os.WIFSIGNALED(status):
            log.warning("activity pid %d died of signal %d", self.pid, os.WTERMSIG(status))

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(kind: str, uid: int, root: Path, home: Path, seed: int, params: dict[str, Any]) -> Child:
    """Fork a child that becomes *uid*, names itself after the tool it plays, and runs *kind*."""
    fn = actions.ACTIONS[kind]
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the harness
        code = 0
        try:
            os.close(rfd)
            out = os.fdopen(wfd, "wb", buffering=0)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                set_comm(actions.COMM.get(kind, kind))
                become(uid)
                os.umask(0o022)
                os.chdir(home)
                result = fn(actions.Ctx(root, home, seed, params))
                out.write(b"R " + json.dumps(result).encode() + b"\n")
            except BaseException as exc:  # report, do not unwind into the parent's code
                text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                out.write(b"E " + f"{kind} as uid {uid}: {text}".replace("\n", "\\n").encode() + b"\n")
                code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    return Child(pid, rfd)


def run(kind: str, uid: int, root: Path, home: Path, seed: int, params: dict[str, Any],
        timeout: float = 900.0) -> tuple[int, dict[str, Any]]:
    child = start(kind, uid, root, home, seed, params)
    return child.pid, child.wait(timeout)
