"""The mount's control socket: lock, unlock, unmount and status on request (docs/operations.md).

A trio task next to the FUSE loop listens on ``<home>/mounts/<key>.sock`` (mode 0600;
the peer's uid is checked with SO_PEERCRED: same uid or root) for JSON lines like
the daemon's protocol, one reply per request.  Request types are looked up in the
table the mount passes in (``fs/mount/control/handlers.py``).  Handlers run on the
trio loop between FUSE requests; blocking work goes through ``ctl.run_sync``.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from wire import daemonsock as protocol
from wire.clock import now_ns
from wire.mountsock import socket_address
from wire.procfs import peer_credentials

from fs.mount import lockdown
from wire.sink import EventSink
from fs.errors import UmbrafsError, WrongPassphrase
from fs.vault.headers import DirKeys, load_dir_keys, owner_keys
from fs.mount.operations import Operations
from fs.mount.singlefile import SharedFile, SingleFileOperations
from fs.vault.config import UnlockedVault
from fs.vault.config import unlock as unlock_vault

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 16
SYNC_TIMEOUT = 2.0  # seconds a lock waits for dirty pages to be written back
INVALIDATE_TIMEOUT = 10.0


class ControlRequestError(Exception):
    """A request that cannot be served; becomes {"type": "error", "code": code, "message": message}."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Unlocked:
    """What an unlock produces: the owner's vault, or a share's root keys or file."""

    vault: UnlockedVault | None = None
    root: DirKeys | None = None
    shared_file: SharedFile | None = None


# Blocking (KDF, proxies): runs in a worker thread.  Raises WrongPassphrase or ControlRequestError.
Rekey = Callable[[bytes], Unlocked]
Handler = Callable[["MountControl", dict[str, Any]], Awaitable[dict[str, Any]]]

@dataclass
class ControlSpec:
    """How the CLI configures a mount's control socket (passed to fs.mount.serve)."""

    socket_path: Path
    home: Path
    share_id: str = ""
    identity: str = ""
    vault: UnlockedVault | None = None  # owner mounts: moved into MountControl, dropped at lock
    rekey: Rekey | None = None  # share mounts: identity passphrase -> keys (owner mounts: the vault's)


@dataclass
class MountControl:
    """What a handler gets: the running mount and its lock state."""

    ops: Operations | SingleFileOperations
    spec: ControlSpec
    mountpoint: Path
    vault_path: Path
    events: EventSink | None = None
    source: str = ""
    vault: UnlockedVault | None = None
    nursery: trio.Nursery | None = None
    lock_reason: str = ""
    locked_at_ns: int = 0
    peer: tuple[int, int] = (0, 0)  # (pid, uid) of the requester being served
    handlers: Mapping[str, Handler] = field(default_factory=dict)  # request type -> handler (control/handlers.py)
    _state_lock: trio.Lock = field(default_factory=trio.Lock)

    def __post_init__(self) -> None:
        self.vault, self.spec.vault = self.spec.vault, None

    # -- for handlers ------------------------------------------------------------

    @property
    def home(self) -> Path:
        return self.spec.home

    @property
    def share_id(self) -> str:
        return self.spec.share_id

    @property
    def identity(self) -> str:
        return self.spec.identity

    @property
    def locked(self) -> bool:
        return bool(self.ops.locked)

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args)

    def emit(self, op: str, *, result: int = 0, detail: dict[str, Any] | None = None, **fields: Any) -> None:
        if self.events is None:
            return
        pid, uid = self.peer
        try:
            self.events.emit(op, uid=uid, pid=pid, path=str(self.mountpoint), path2=str(self.vault_path),
                             result=result, detail=detail, **fields)
        except Exception:
            log.exception("event sink failed")

    def forget_keys(self) -> None:
        """Drop cached keys below the root (they are read again from the headers), e.g. after a re-key."""
        if isinstance(self.ops, Operations):
            lockdown.forget_cached_keys(self.ops)

    # -- lock / unlock / unmount -------------------------------------------------------

    async def lock(self, reason: str, by: str) -> bool:
        """Drop every key and refuse requests; False if already locked."""
        async with self._state_lock:
            if self.locked:
                return False
            with trio.move_on_after(SYNC_TIMEOUT):
                # Dirty pages need the keys to be written: give them a moment first.
                await trio.to_thread.run_sync(lockdown.syncfs, str(self.mountpoint), abandon_on_cancel=True)
            self.ops.locked = True
            self.lock_reason, self.locked_at_ns = reason, now_ns()
            if isinstance(self.ops, Operations):
                dropped = lockdown.drop(self.ops)
            else:
                dropped = lockdown.drop_single(self.ops)
            if self.vault is not None:
                dropped.keys.append(self.vault.owner_key)
                self.vault = None
            lockdown.wipe_unreferenced(dropped)
            entries, inodes, errors = 0, 0, {"timeout": 1}
            with trio.move_on_after(INVALIDATE_TIMEOUT):
                entries, inodes, errors = await trio.to_thread.run_sync(lockdown.invalidate, dropped, abandon_on_cancel=True)
            log.warning("locked (%s, by %s): %d key buffers overwritten, %d freed; %d names, %d inodes invalidated %s",
                        reason, by, dropped.wiped, dropped.kept, entries, inodes, errors or "")
            self.emit("lock", detail={"reason": reason, "by": by, "wiped": dropped.wiped, "freed": dropped.kept})
            return True

    async def unlock(self, passphrase: bytes, by: str) -> bool:
        """Re-derive the keys from *passphrase* and serve again; False if not locked."""
        async with self._state_lock:
            if not self.locked:
                return False
            rekey = self.spec.rekey or self._owner_rekey
            try:
                unlocked = await trio.to_thread.run_sync(rekey, passphrase)
            except WrongPassphrase:
                self.emit("unlock-mount", result=errno.EACCES, detail={"by": by})
                raise ControlRequestError("wrong-passphrase", "wrong passphrase; the mount stays locked") from None
            except ControlRequestError as exc:
                self.emit("unlock-mount", result=errno.EACCES, detail={"by": by, "error": exc.code})
                raise
            except UmbrafsError as exc:
                self.emit("unlock-mount", result=errno.EIO, detail={"by": by})
                raise ControlRequestError("failed", f"unlock failed: {exc}") from None
            finally:
                del passphrase
            if isinstance(self.ops, Operations):
                root, rwk = unlocked.root, None
                if root is None and unlocked.vault is not None:
                    rwk = unlocked.vault.root_wrap_key
                    root = load_dir_keys(self.ops.root_fd, ".", owner_keys(rwk))
                if root is None:
                    raise ControlRequestError("failed", "unlock produced no keys for this mount")
                lockdown.restore(self.ops, root, rwk)
            else:
                if unlocked.shared_file is None:
                    raise ControlRequestError("failed", "unlock produced no key for this shared file")
                lockdown.restore_single(self.ops, unlocked.shared_file)
            self.vault = unlocked.vault
            refused = self.ops.locked_refusals
            self.ops.locked_refusals = 0
            self.ops.locked = False
            self.lock_reason, self.locked_at_ns = "", 0
            log.warning("unlocked by %s (%d requests were refused while locked)", by, refused)
            self.emit("unlock-mount", detail={"by": by, "refused": refused})
            return True

    def _owner_rekey(self, passphrase: bytes) -> Unlocked:
        if self.spec.share_id:
            raise ControlRequestError("failed", "this share mount cannot be unlocked (no key source)")
        return Unlocked(vault=unlock_vault(self.vault_path, passphrase))

    async def unmount(self, reason: str, by: str) -> None:
        """Lock (keys gone first), then detach the mount; serving stops and the process exits."""
        await self.lock(reason, by)
        assert self.nursery is not None
        self.nursery.start_soon(self._detach)

    async def _detach(self) -> None:
        await trio.sleep(0.05)  # let the reply reach the requester first
        mp = str(self.mountpoint)
        result = await trio.to_thread.run_sync(
            lambda: subprocess.run(["fusermount3", "-u", mp], capture_output=True, text=True))
        if result.returncode == 0:
            return  # the kernel ends the session; pyfuse3.main returns
        log.warning("unmount: %s; detaching lazily", result.stderr.strip() or "fusermount3 failed")
        await trio.to_thread.run_sync(lambda: subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True))
        pyfuse3.terminate()  # open files see ENOTCONN from now on; nothing more is served

    def status(self) -> dict[str, Any]:
        return {
            "type": "status", "locked": self.locked, "lock_reason": self.lock_reason,
            "locked_at_ns": self.locked_at_ns, "refused": int(self.ops.locked_refusals),
            "mountpoint": str(self.mountpoint), "vault": str(self.vault_path), "source": self.source,
            "share_id": self.share_id, "identity": self.identity, "read_only": bool(getattr(self.ops, "read_only", True)),
            "pid": os.getpid(), "handlers": sorted(self.handlers),
            "inodes": len(self.ops.inodes) if isinstance(self.ops, Operations) else 2,
        }

    # -- the socket ------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        path = self.spec.socket_path
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            with socket_address(path) as address:
                await sock.bind(address)
            os.chmod(path, 0o600)
        except OSError as exc:
            # The mount still serves; only lock/unlock/unmount on request are unavailable.
            log.error("control socket %s unavailable: %s", path, exc)
            sock.close()
            task_status.started()
            return
        finally:
            os.umask(old_umask)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        task_status.started()
        try:
            await trio.serve_listeners(self._client, [listener])
        finally:
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    async def _client(self, stream: trio.SocketStream) -> None:
        try:
            pid, uid = peer_credentials(stream.socket)
            if uid not in (os.getuid(), 0):
                log.warning("control: refused a connection from uid %d (pid %d)", uid, pid)
                return
            buf = b""
            while True:
                while b"\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                    if len(buf) > MAX_REQUEST:
                        await stream.send_all(protocol.encode({"type": "error", "code": "too-long", "message": "request too long"}))
                        return
                line, _, buf = buf.partition(b"\n")
                reply = await self._dispatch(line, pid, uid)
                await stream.send_all(protocol.encode(reply))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("control client went away: %s", exc)
        finally:
            await stream.aclose()

    async def _dispatch(self, line: bytes, pid: int, uid: int) -> dict[str, Any]:
        try:
            message = protocol.decode(line)
        except protocol.ProtocolError as exc:
            return {"type": "error", "code": "bad-request", "message": str(exc)}
        fn = self.handlers.get(message["type"])
        if fn is None:
            return {"type": "error", "code": "unknown-request", "message": f"unknown request type {message['type']!r}"}
        self.peer = (pid, uid)
        try:
            return await fn(self, message)
        except ControlRequestError as exc:
            return {"type": "error", "code": exc.code, "message": exc.message}
        except UmbrafsError as exc:
            return {"type": "error", "code": "failed", "message": str(exc)}
        except Exception:
            log.exception("control request %r failed", message["type"])
            return {"type": "error", "code": "failed", "message": "internal error (see the mount log)"}


def _process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().strip().decode("utf-8", "replace")
    except OSError:
        return f"pid {pid}"


def by(ctl: MountControl, message: dict[str, Any]) -> str:
    """Who asked: the name the client gave, else the peer process's."""
    name = message.get("by")
    return name if isinstance(name, str) and name else _process_name(ctl.peer[0])


def text(message: dict[str, Any], key: str) -> str:
    """A short string field of a request."""
    value = message.get(key, "")
    if not isinstance(value, str):
        raise ControlRequestError("bad-request", f"{key} must be a string")
    return value[:500]
