"""The mount's background tasks, next to the FUSE loop in one nursery (cancelled at unmount)."""
from __future__ import annotations

import trio

from fs.mount.operations import Operations
from fs.vault.versions import FLUSH_EVERY


async def flush_events(ops: Operations, interval: float = 1.0) -> None:
    """Send held-back setattr events at least every *interval* seconds."""
    while True:
        await trio.sleep(interval)
        ops.flush_events()


async def keep_versions(ops: Operations) -> None:
    """The versions area's upkeep: records flushed every second, pruning in a worker thread."""
    versions = ops.versions
    assert versions is not None
    while True:
        await trio.sleep(FLUSH_EVERY)
        if versions.tick(ops.open_handles(), ops.locked):
            await trio.to_thread.run_sync(versions.prune)
