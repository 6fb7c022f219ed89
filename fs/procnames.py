"""Process names (/proc/<pid>/comm) of FUSE callers, cached briefly.

Events and version records name the process behind a request; reading /proc for every request
would cost a syscall each, and pids are reused, so a name is trusted for two seconds only."""
from __future__ import annotations

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
