"""Every request type the mount's control socket serves, in one table (no plugin scan)."""
from __future__ import annotations

from fs.mount.control import lock, restore, rotate, versions
from fs.mount.control.server import Handler

HANDLERS: dict[str, Handler] = {**lock.HANDLERS, **rotate.HANDLERS, **restore.HANDLERS, **versions.HANDLERS}
