"""The sharing use cases: make a share, revoke shares, open a share (docs/sharing.md).

These are what `umbrafs share`, `revoke` and `mount --share` do, and what the daemon's
`revoke` response does, in one place: the CLI and the daemon call them, a test can too.

proxy/ imports nothing else of the project, so what the vault side knows comes in as plain
values: the target of a share is any object with the fields of fs.vault.keywalk.Target (the
`ShareTarget` protocol), an opened share's key is handed to a *build* callable that makes the
caller's key objects, and key events leave through a `KeyEvent` callable the caller binds to
its audit trail.  Nothing here prompts or prints: warnings go to an `on_warning` callable.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from proxy import auth, client
from proxy import keyring
from proxy import shares
from proxy.envelope import seal
from proxy.errors import (
    AccessRevoked,
    GrantError,
    IdentityError,
    NoSuchShare,
    ShareError,
    ShareRecordInvalid,
)
from proxy.keyring import Identity, PublicIdentity
from proxy.shares import ShareRecord

T = TypeVar("T")

# (op, path inside the drive, detail): one key event for the vault's audit trail.  Best effort:
# by the time it is called the share or revocation has happened, so it must not raise.
KeyEvent = Callable[[str, str, dict[str, str | int | bool]], None]
Warn = Callable[[str], None]


class ShareTarget(Protocol):
    """What is shared: a directory's key or a file's DEK, with where the recipient finds it."""

    kind: str          # "dir" or "file"
    backing_rel: str   # relative to the vault
    obj_id: bytes
    key: bytes
    name: bytes        # the target's plaintext name


def _no_event(op: str, path: str, detail: dict[str, str | int | bool]) -> None:
    pass


def _no_warning(message: str) -> None:
    pass


# -- create ----------------------------------------------------------------------------

def threshold_for(proxies: Sequence[str], threshold: int | None) -> int:
    """M for N = len(proxies): *threshold*, or a majority of N; GrantError outside 1..N.

    Checked before any passphrase is asked for."""
    if not proxies:
        raise GrantError("give at least one --proxy URL")
    threshold = len(proxies) // 2 + 1 if threshold is None else threshold
    if not 1 <= threshold <= len(proxies):
        raise GrantError(f"threshold must be between 1 and the number of proxies ({len(proxies)}), got {threshold}")
    return threshold


def create_share(
    vault: Path, path: str, target: ShareTarget, owner: Identity, recipient: PublicIdentity,
    proxies: Sequence[str], threshold: int | None, read_only: bool, *, on_event: KeyEvent = _no_event,
) -> ShareRecord:
    """Share *target* (at *path* inside the drive) with *recipient* through *proxies*.

    Seals the key under a fresh per-share key, grants at the N proxies (all or nothing), then
    writes the owner-signed record into the vault; if that write fails the grant is withdrawn
    again, so no grant exists that no record names."""
    threshold = threshold_for(proxies, threshold)
    if target.kind == "file" and not read_only:
        raise ShareError(f"{path}: a shared file is read-only for its recipient; share its directory to let "
                         f"{recipient.name} write")
    sealed, delegation = seal(target.key + target.name)  # a fresh key for this share only
    grant_id = client.new_grant_id()
    report = client.grant(list(proxies), owner, recipient, threshold, grant_id, delegation)
    del delegation
    record = ShareRecord(
        grant_id, target.kind, target.backing_rel, target.obj_id, owner.public, recipient.name,
        recipient.fingerprint, tuple(report.proxies), threshold, read_only, shares.now_iso(),
        sealed.capsule, sealed.ciphertext, delegating_pk=sealed.delegating_pk,
    )
    try:
        shares.write(vault, grant_id, record.signed_by(owner))
    except OSError as exc:
        client.revoke(report.proxies, owner, grant_id, threshold)
        raise ShareError(f"could not write the share record into {vault} ({exc.strerror}); the grant was withdrawn") from None
    on_event("share", path, {
        "grant": grant_id, "recipient": recipient.fingerprint, "kind": target.kind,
        "threshold": threshold, "proxies": len(report.proxies), "read_only": read_only,
    })
    return record


# -- revoke ----------------------------------------------------------------------------

@dataclass
class Revocation:
    """What `revoke_shares` did: the shares it revoked now, each with its proxies' report."""

    revoked: list[ShareRecord] = field(default_factory=list)         # were active
    reports: list[client.RevokeReport] = field(default_factory=list)  # one per revoked share
    revoked_before: list[ShareRecord] = field(default_factory=list)   # already marked revoked

    @property
    def holds(self) -> bool:
        return all(r.holds for r in self.reports)


def owned_shares(vault: Path, owner: PublicIdentity, object_id: bytes, recipient: str, *,
                 on_warning: Warn = _no_warning) -> tuple[list[ShareRecord], list[ShareRecord]]:
    """(active, revoked) shares of *object_id* with *recipient* (a fingerprint) that *owner*
    signed; records that do not parse or verify are skipped with a warning."""
    active, revoked = [], []
    for share_id in shares.list_ids(vault):
        try:
            signed = shares.read(vault, share_id)
        except ShareError as exc:
            on_warning(str(exc))
            continue
        if signed.record.owner.fingerprint != owner.fingerprint:
            continue
        try:
            record = signed.verify(owner)
        except ShareRecordInvalid as exc:
            on_warning(f"{exc}; revoke it with `umbrafs proxy revoke {share_id}`")
            continue
        if record.object_id == object_id and record.recipient == recipient:
            (active if record.revoked is None else revoked).append(record)
    return active, revoked


def recipient_shares(vault: Path, share_id: str, recipient: str = "") -> list[ShareRecord]:
    """Active shares in *vault* that are *share_id* or made for *recipient* (a fingerprint).

    For a revoker that is not the owner (the daemon's guard): the records are only checked to
    be signed by the owner they name; the proxies decide whether the revoker may act on them."""
    found = []
    for other in shares.list_ids(vault):
        try:
            signed = shares.read(vault, other)
        except ShareError:
            continue
        r = signed.record
        if (other == share_id or (recipient and r.recipient == recipient)) and signed.self_signed() and r.revoked is None:
            found.append(r)
    return found


def revoke_share(vault: Path, record: ShareRecord, revoker: Identity | auth.RequestSigner, *,
                 owner: Identity | None = None, timeout: float = client.DEFAULT_TIMEOUT) -> client.RevokeReport:
    """Delete *record*'s grant at its proxies.  As its *owner*, also mark the record revoked, but
    only once the revocation holds: until then, `revoke` finds the share again and retries."""
    report = client.revoke(list(record.proxies), revoker, record.grant_id, record.threshold, timeout=timeout)
    if owner is not None and report.holds:
        shares.write(vault, record.grant_id, record.revoked_now().signed_by(owner))
    return report


def revoke_shares(
    vault: Path, path: str, object_id: bytes, owner: Identity, recipient: PublicIdentity, *,
    include_revoked: bool = False, on_event: KeyEvent = _no_event, on_warning: Warn = _no_warning,
) -> Revocation:
    """Revoke at their proxies *owner*'s active shares of *object_id* (at *path*) with *recipient*.

    NoSuchShare if there is none (with *include_revoked*: none revoked before either, so a
    `revoke --rotate` can still rotate what was revoked earlier)."""
    active, before = owned_shares(vault, owner.public, object_id, recipient.fingerprint, on_warning=on_warning)
    if not active and (not include_revoked or not before):
        raise NoSuchShare(f"no active share of {path} with {recipient.name}")
    out = Revocation(revoked_before=before if include_revoked else [])
    for record in active:
        report = revoke_share(vault, record, owner, owner=owner)
        on_event("revoke", path, {
            "grant": record.grant_id, "recipient": recipient.fingerprint, "holds": report.holds,
            "deleted": len(report.deleted) + len(report.already), "proxies": len(report.proxies),
        })
        out.revoked.append(record)
        out.reports.append(report)
    return out


def shares_below(vault: Path, object_ids: set[bytes], owner: str, skip: set[str]) -> list[ShareRecord]:
    """Active shares (not in *skip*) by *owner* (a fingerprint) of any of *object_ids*.

    After a rotation, the ids of everything at or below the rotated path: those shares sealed
    keys the rotation replaced, so they no longer open and the owner must share again."""
    out = []
    for share_id in shares.list_ids(vault):
        if share_id in skip:
            continue
        try:
            record = shares.read(vault, share_id).record
        except ShareError:
            continue
        if record.revoked is None and record.object_id in object_ids and record.owner.fingerprint == owner:
            out.append(record)
    return out


# -- open ------------------------------------------------------------------------------

def _trusted_public(home: Path, fingerprint: str, what: str, named: str) -> PublicIdentity:
    """One of our contacts or identities with that fingerprint; IdentityError if none."""
    for public in keyring.list_identities(home) + keyring.list_contacts(home):
        if public.fingerprint == fingerprint:
            return public
    raise IdentityError(
        f"{what} was made by {named} (fingerprint {fingerprint[:16]}…), who is not among your contacts: "
        "import their public identity first (umbrafs identity import FILE)"
    )


def trusted_record(home: Path, vault: Path, share_id: str, me: PublicIdentity) -> ShareRecord:
    """Share *share_id*, once its owner's signature checks against our contact, it is for *me*
    and it is not marked revoked."""
    signed = shares.read(vault, share_id)
    owner = _trusted_public(home, signed.record.owner.fingerprint, f"share {share_id}", signed.record.owner.name)
    record = signed.verify(owner)
    if record.recipient != me.fingerprint:
        raise IdentityError(f"share {share_id} is for {record.recipient_name} (fingerprint {record.recipient[:16]}…), "
                            f"not for your identity {me.name}")
    if record.revoked is not None:
        raise AccessRevoked(f"access revoked: share {share_id} was revoked by its owner at {record.revoked}")
    return record


def open_share(
    home: Path, vault: Path, share_id: str, identity: str, passphrase: Callable[[], bytes],
    build: Callable[[ShareRecord, bytes, bytes], T],
) -> tuple[ShareRecord, T]:
    """Open share *share_id* as our *identity*: (the trusted record, what *build* made of it).

    *passphrase* is asked for only once the record is trusted.  The cfrags come from the
    proxies now; *build(record, key, name)* gets the opened key and the target's plaintext name
    and makes the caller's key objects, so no other object here outlives this call holding them."""
    record = trusted_record(home, vault, share_id, keyring.load_own_public(home, identity))
    me = keyring.unlock(home, identity, passphrase())
    payload = client.open_capsule(list(record.proxies), me, record.owner, record.capsule, record.ciphertext,
                                  record.threshold, record.grant_id, record.delegating_key)
    del me
    if len(payload) < shares.KEY_LEN:
        raise ShareRecordInvalid(f"share {share_id}: the sealed key is too short")
    return record, build(record, payload[: shares.KEY_LEN], payload[shares.KEY_LEN :])
