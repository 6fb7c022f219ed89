"""Copies of the latest checkpoint kept outside the database (state dir, vault).

An anchor is what catches a cut tail or a database replaced by an older copy: the database must
contain the anchored checkpoint and the entries it covers.  Written atomically: temporary file,
fsync, rename, fsync of the directory, so a crash leaves the old or the new anchor, never half.
"""
from __future__ import annotations

import os
from pathlib import Path

from ledger.checkpoint import Checkpoint
from ledger.errors import CheckpointError

_MAX_ANCHOR = 4096


def write_anchor(path: Path, cp: Checkpoint) -> None:
    """Atomically replace ``path`` with ``cp`` as one line of JSON."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = (cp.to_json() + "\n").encode("ascii")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_anchor(path: Path) -> Checkpoint | None:
    """The anchored checkpoint (unverified), or None if the file does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"anchor {path}: {exc.strerror}") from None
    try:
        data = os.read(fd, _MAX_ANCHOR + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_ANCHOR:
        raise CheckpointError(f"anchor {path} is too large to be a checkpoint")
    try:
        return Checkpoint.from_json(data)
    except CheckpointError as exc:
        raise CheckpointError(f"anchor {path}: {exc}") from None
