"""Control requests `restore-begin` / `restore-end`: mark a restore's own events.

`umbrafs restore` writes originals back through the mount, and doing so looks exactly like what
it undoes (high-entropy files written, the attacker's files moved away): the detector would lock
the mount halfway through.  So the restore asks the mount to tag the events of its process with
``detail.restore = true``; the detector leaves tagged events out (the ledger keeps them).

Anything running as the user can reach the control socket, ransomware included, so the request
must prove knowledge of the vault key: an HMAC, under a key derived from the root wrap key, over
the mount's event source and the requester's pid as the kernel reports it (SO_PEERCRED) — a
proof made for one process is useless to any other.
"""
from __future__ import annotations

import hmac
import time
from typing import Any

from fs.mount.control.server import ControlRequestError, MountControl
from fs.format import cryptocore
from fs.mount.operations import Operations

INFO_RESTORE = cryptocore.INFO_RESTORE  # the label and the HMAC live in fs/format/cryptocore.py
TAG_SECONDS = 3600  # a restore that never says restore-end stops being exempt after an hour


def proof(root_wrap_key: bytes, source: str, pid: int) -> str:
    """What `restore-begin` must carry for process `pid` at the mount whose event source is `source`."""
    return cryptocore.restore_proof(root_wrap_key, source, pid)


async def restore_begin(ctl: MountControl, message: dict[str, Any]) -> dict[str, Any]:
    ops = ctl.ops
    if not isinstance(ops, Operations) or ctl.vault is None:
        raise ControlRequestError("locked" if ctl.locked else "unsupported", "not an unlocked owner mount")
    pid = ctl.peer[0]
    given = message.get("proof")
    if not isinstance(given, str) or not hmac.compare_digest(given, proof(ctl.vault.root_wrap_key, ctl.source, pid)):
        raise ControlRequestError("refused", "restore-begin needs a proof made with the vault key")
    ops.restoring[pid] = time.monotonic() + TAG_SECONDS
    return {"type": "restore-begun", "pid": pid}


async def restore_end(ctl: MountControl, message: dict[str, Any]) -> dict[str, Any]:
    if isinstance(ctl.ops, Operations):
        ctl.ops.restoring.pop(ctl.peer[0], None)
    return {"type": "restore-ended"}


HANDLERS = {"restore-begin": restore_begin, "restore-end": restore_end}
