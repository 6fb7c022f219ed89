"""The per-person state directory: mount registry (wire/mountsock.py) and logs.

Chosen by --home, else $UMBRAFS_HOME, else $XDG_STATE_HOME/umbrafs
(~/.local/state/umbrafs).  Two people can be tried on one machine by giving
each a home.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from wire import mountsock


def default_home() -> Path:
    if os.environ.get("UMBRAFS_HOME"):
        return Path(os.environ["UMBRAFS_HOME"])
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "umbrafs"


class State:
    def __init__(self, home: Path) -> None:
        self.home = home.absolute()

    def ensure(self) -> "State":
        for sub in (self.home, self.mounts_dir, self.logs_dir):
            sub.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

    @property
    def mounts_dir(self) -> Path:
        return self.home / mountsock.MOUNTS_DIR

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    def control_path(self, mountpoint: Path) -> Path:
        """The mount's control socket (fs/mount/control/server.py, wire/mountsock.py)."""
        return mountsock.control_path(self.home, mountpoint)

    def log_path(self, mountpoint: Path) -> Path:
        return self.logs_dir / f"mount-{mountsock.mount_key(mountpoint)}.log"

    def mount_record(self, mountpoint: Path) -> dict[str, Any] | None:
        return mountsock.read_record(self.home, mountpoint)
