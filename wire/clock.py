"""The wall clock of events: real time, or a simulated one for replaying weeks in minutes.

``now_ns()`` is ``time.time_ns()`` unless the process was started with a simulated clock:
``use_clock_file(path)`` (the CLI's hidden ``--clock-file``, set by the tests and the anomaly
evaluation; never by an environment variable, so nothing in a user's environment can move
the ledger's timestamps) names a JSON file ``{"base_ns": int, "real_ns": int, "speed": float}``;
then ``now = base_ns + (time.time_ns() - real_ns) * speed``.  The file is re-read when its
mtime (or inode) changes, looked at no more than every 10 ms, so a running mount and daemon
follow an evaluation that moves the clock.  Event times and the daemon's windows
use this clock; latencies (how fast a response came) are measured in real time.
An unreadable or malformed file leaves the last good setting in force (real time
if there never was one): the clock must never take a FUSE request down.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

_CHECK_NS = 10_000_000  # look at the file at most every 10 ms


class FileClock:
    __slots__ = ("path", "_checked", "_mtime", "_base", "_real", "_speed")

    def __init__(self, path: str) -> None:
        self.path = path
        self._checked = 0
        self._mtime: tuple[int, int, int] | None = None
        self._base = self._real = 0
        self._speed = 1.0

    def now_ns(self) -> int:
        mono = time.monotonic_ns()
        if mono - self._checked >= _CHECK_NS:
            self._checked = mono
            self._reload()
        real = time.time_ns()
        if self._mtime is None:
            return real
        return self._base + int((real - self._real) * self._speed)

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            return
        # mtime is coarse (a few ms); the inode changes with every atomic rewrite
        mtime = (st.st_mtime_ns, st.st_ino, st.st_size)
        if mtime == self._mtime:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            base, real, speed = int(data["base_ns"]), int(data["real_ns"]), float(data.get("speed", 1.0))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("clock file %s unreadable; keeping the previous setting", self.path)
            return
        if speed < 0:
            log.warning("clock file %s: negative speed ignored", self.path)
            return
        self._mtime, self._base, self._real, self._speed = mtime, base, real, speed


_file_clock: FileClock | None = None
_now: Callable[[], int] = time.time_ns


def now_ns() -> int:
    """Event time in ns since the epoch: the real clock unless ``use_clock_file`` was called."""
    return _now()


def use_clock_file(path: str | os.PathLike[str]) -> None:
    """From now on this process follows the simulated clock in *path*."""
    global _file_clock, _now
    _file_clock = FileClock(os.fspath(path))
    _now = _file_clock.now_ns


def clock_file() -> str | None:
    """The simulated clock's file, for passing it on to a child process; None on real time."""
    return None if _file_clock is None else _file_clock.path


def write_clock_file(path: Path, base_ns: int, speed: float = 1.0) -> None:
    """Set a simulated clock: from now on it reads *base_ns*, advancing *speed* times real time.

    Written atomically (rename), so a reader never sees half a file.
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"base_ns": int(base_ns), "real_ns": time.time_ns(), "speed": float(speed)}) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)
