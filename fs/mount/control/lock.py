"""The core control requests: status, lock, unlock, unmount."""
from __future__ import annotations

from typing import Any

from fs.mount.control.server import ControlRequestError, MountControl, by, text


async def _status(ctl: MountControl, message: dict[str, Any]) -> dict[str, Any]:
    return ctl.status()


async def _lock(ctl: MountControl, message: dict[str, Any]) -> dict[str, Any]:
    done = await ctl.lock(text(message, "reason") or "requested", by(ctl, message))
    return {"type": "locked", "already": not done}


async def _unlock(ctl: MountControl, message: dict[str, Any]) -> dict[str, Any]:
    secret = message.get("passphrase")
    if not isinstance(secret, str):
        raise ControlRequestError("bad-request", "unlock needs a passphrase")
    done = await ctl.unlock(secret.encode("utf-8", "surrogateescape"), by(ctl, message))
    return {"type": "unlocked", "already": not done}


async def _unmount(ctl: MountControl, message: dict[str, Any]) -> dict[str, Any]:
    await ctl.unmount(text(message, "reason") or "requested", by(ctl, message))
    return {"type": "unmounting"}


HANDLERS = {"status": _status, "lock": _lock, "unlock": _unlock, "unmount": _unmount}
