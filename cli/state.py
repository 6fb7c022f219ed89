"""The per-person state directory: mount registry and logs.

Chosen by --home, else $UMBRAFS_HOME, else $XDG_STATE_HOME/umbrafs
(~/.local/state/umbrafs).  Two people can be tried on one machine by giving
each a home.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any


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
        return self.home / "mounts"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @staticmethod
    def _key(mountpoint: Path) -> str:
        return hashlib.sha256(os.fsencode(mountpoint.absolute())).hexdigest()[:16]

    def mount_record_path(self, mountpoint: Path) -> Path:
        return self.mounts_dir / f"{self._key(mountpoint)}.json"

    def control_path(self, mountpoint: Path) -> Path:
        """The mount's control socket (fs/mount/control/server.py, wire/mountsock.py)."""
        return self.mounts_dir / f"{self._key(mountpoint)}.sock"

    def log_path(self, mountpoint: Path) -> Path:
        return self.logs_dir / f"mount-{self._key(mountpoint)}.log"

    def register_mount(
        self, mountpoint: Path, vault: Path, read_only: bool, *, source: str = "", vault_id: str = "",
        share_id: str = "", identity: str = "",
    ) -> None:
        record = {
            "pid": os.getpid(),
            "mountpoint": str(mountpoint.absolute()),
            "vault": str(vault.absolute()),
            "read_only": read_only,
            "started": time.time(),
            "source": source,  # the AuditSink source of the mount's events ("" if auditing is off)
            "vault_id": vault_id,
            "share_id": share_id,
            "identity": identity,
            "uid": os.getuid(),
            "control": str(self.control_path(mountpoint)),
        }
        path = self.mount_record_path(mountpoint)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        tmp.replace(path)

    def unregister_mount(self, mountpoint: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.mount_record_path(mountpoint).unlink()

    def mount_record(self, mountpoint: Path) -> dict[str, Any] | None:
        try:
            return json.loads(self.mount_record_path(mountpoint).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
