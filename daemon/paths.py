"""Where the daemon keeps things in the state directory (no imports beyond the stdlib)."""
from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

from wire.daemonsock import pidfile_path
from wire.procfs import pid_alive

LEDGER_NAME = "ledger.db"
CHECKPOINT_NAME = "ledger-checkpoint.json"
VAULT_ANCHORS_NAME = "vault-anchors.json"


def ledger_path(home: Path) -> Path:
    return home / LEDGER_NAME


def anchor_path(home: Path) -> Path:
    """The copy of the latest signed checkpoint kept outside the database."""
    return home / CHECKPOINT_NAME


def vault_anchor_path(vault: Path, home: Path, key_id: str) -> Path:
    """Where this ledger's latest checkpoint is copied inside a vault it records.

    The vault is the copy a rollback of the whole state directory (a restored
    backup of the home) does not take with it.  The name is reserved (it has a
    dot), carries the signing key and which ledger it is, so several people and
    machines can anchor in one synced vault.
    """
    which = hashlib.sha256(f"{socket.gethostname()}:{ledger_path(home).absolute()}".encode()).hexdigest()[:12]
    return vault / f".umbrafs.ledger-{key_id}-{which}.json"


def saved_vault_anchors(home: Path) -> list[Path]:
    """The vault anchors the daemon has been keeping, whose vault is still there."""
    try:
        paths = json.loads((home / VAULT_ANCHORS_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return []
    return [Path(p) for p in paths if isinstance(p, str) and Path(p).parent.is_dir()]


def save_vault_anchors(home: Path, paths: list[Path]) -> None:
    tmp = home / (VAULT_ANCHORS_NAME + ".tmp")
    tmp.write_text(json.dumps(sorted(map(str, paths)), indent=1) + "\n", encoding="utf-8")
    tmp.replace(home / VAULT_ANCHORS_NAME)


def running_pid(home: Path) -> int | None:
    """The pid in the daemon's pidfile if that process is alive."""
    try:
        pid = int(pidfile_path(home).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid > 0 and pid_alive(pid) else None
