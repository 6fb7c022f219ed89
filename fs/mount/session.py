"""One mount session, the owner's (`umbrafs mount`) or a share recipient's (`mount --share`).

Around `serve`: the audit client, the record in the mount registry (wire/mountsock.py), the
unlock and mount events before serving, and after it, whatever ended it, the record removed,
the unmount event and the audit client closed.  The CLI decides what is served (it unlocks the
owner's vault here, or opens a share through proxy.sharing and hands the keys in).

Keys are handed along so that no frame of this module keeps one while the mount is locked: the
owner's unlocked vault lives only in the ControlSpec (the control socket drops it at lock), and
a share's keys arrive in a one-item list that is emptied into `serve`.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from fs.errors import WrongPassphrase
from fs.mount.control.server import ControlSpec, Rekey
from fs.mount.serve import serve
from fs.mount.singlefile import SharedFile
from fs.vault import config as vault_mod
from fs.vault.headers import DirKeys
from fs.vault.keywalk import KIND_DIR
from fs.vault.versions import DEFAULT_LIMITS, Limits
from wire import mountsock
from wire.sink import AuditSink

# What a share mount serves: a shared directory's (backing path, keys), or a shared file.
ShareKeys = tuple[str, DirKeys] | SharedFile


def share_keys(kind: str, object_id: bytes, rel: str, key: bytes, name: bytes) -> ShareKeys:
    """The key objects of an opened share: *key* is the directory's key or the file's DEK,
    *name* the file's plaintext name, *rel* where it is in the vault (keywalk.locate)."""
    if kind == KIND_DIR:
        return rel, DirKeys(object_id, key)
    return SharedFile(rel, object_id, key, name)


class MountSession:
    """One mount of *vault* on *mountpoint* by this process, as the ledger and the registry see it.

    *audit* is "off", "best-effort" or "required" (AuditUnavailable without a daemon)."""

    def __init__(self, home: Path, vault: Path, mountpoint: Path, vault_id: str, audit: str, *,
                 share_id: str = "", identity: str = "") -> None:
        self.home, self.vault, self.mountpoint = home, vault, mountpoint
        self.vault_id, self.share_id, self.identity = vault_id, share_id, identity
        self.sink = None if audit == "off" else AuditSink(home, vault_id, required=audit == "required")

    def control(self, *, rekey: Rekey | None = None) -> ControlSpec:
        """The mount's control socket (lock, unlock, status, …) for a share mount."""
        return ControlSpec(mountsock.control_path(self.home, self.mountpoint), self.home, share_id=self.share_id,
                           identity=self.identity, rekey=rekey)

    def unlock_vault(self, secret: bytes) -> ControlSpec:
        """The owner's control socket, holding the vault unlocked with *secret*: its only holder,
        so that `lock` can drop it.  A wrong passphrase goes on the record too, and ends the session."""
        try:
            unlocked = vault_mod.unlock(self.vault, secret)
        except WrongPassphrase as exc:
            if self.sink:
                self.sink.emit("unlock", pid=os.getpid(), path=str(self.vault), result=exc.errno)
                self.sink.close(timeout=1.0)
            raise
        return ControlSpec(mountsock.control_path(self.home, self.mountpoint), self.home, vault=unlocked)

    def serve(self, control: ControlSpec, *, read_only: bool, allow_other: bool, ready: Callable[[], None],
              share: list[ShareKeys] | None = None, detail: dict[str, str | int | bool] | None = None,
              xattr: bool = True, versions: Limits | None = DEFAULT_LIMITS, cache_timeout: float = 1.0) -> None:
        """Register, record unlock and mount, serve until unmounted, then unregister and record the unmount.

        Without *share* the owner's vault in *control* is served.  *detail* goes with the unlock
        and mount events."""
        mountsock.register(self.home, self.mountpoint, self.vault, read_only, source=self.sink.source if self.sink else "",
                           vault_id=self.vault_id, share_id=self.share_id, identity=self.identity)
        try:
            if self.sink:
                self.sink.emit("unlock", pid=os.getpid(), path=str(self.vault), detail=detail)
                self.sink.emit("mount", pid=os.getpid(), path=str(self.mountpoint), path2=str(self.vault),
                               detail=detail or {"read_only": read_only})
            is_file = bool(share) and isinstance(share[0], SharedFile)  # type: ignore[index]
            # Keys go in as call arguments only (no local, no **kwargs dict: either would hold them
            # here for as long as the mount serves, locked or not).
            serve(
                control.vault if share is None else self.vault, self.mountpoint,  # type: ignore[arg-type]
                read_only=read_only, allow_other=allow_other, events=self.sink, ready=ready, control=control,
                root=share.pop() if share and not is_file else None,  # type: ignore[arg-type]
                single_file=share.pop() if share and is_file else None,  # type: ignore[arg-type]
                xattr=xattr, versions=versions, cache_timeout=cache_timeout,
            )
        finally:
            mountsock.unregister(self.home, self.mountpoint)
            if self.sink:
                self.sink.emit("unmount", pid=os.getpid(), path=str(self.mountpoint), path2=str(self.vault))
                self.sink.close()
