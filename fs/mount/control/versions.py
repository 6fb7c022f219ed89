"""Control request of the versions area: `versions-flush` (fs/mount/control/server.py loads this module).

`umbrafs restore` reads the journal from the backing dir; create/rename records are buffered
for up to a second, so it first asks a running mount to write them out.
"""
from __future__ import annotations

from typing import Any

from fs.mount.control.server import MountControl
from fs.mount.operations import Operations


async def versions_flush(ctl: MountControl, message: dict[str, Any]) -> dict[str, Any]:
    ops = ctl.ops
    if isinstance(ops, Operations) and ops.versions is not None:
        ops.versions.flush()
        return {"type": "versions-flushed", "enabled": True, "kept": ops.versions.kept}
    return {"type": "versions-flushed", "enabled": False, "kept": 0}


HANDLERS = {"versions-flush": versions_flush}
