"""Carrying out a decision: alert, lock, unmount or revoke, and the guard credential revoke uses.

Every decision ends as one `anomaly` event in the ledger, with the action taken, whether it
worked, and `action_ms`: REAL time from the triggering event's arrival at the daemon to the
action having taken effect (the mount answered "locked"/"unmounting"; for revoke, the mount is
locked first — that stops the reads at once — and `revoke_ms` says when the proxies had deleted).

`revoke` applies to share recipients: the grants of the offending recipient in that vault are
deleted at their proxies with the daemon's guard key (a proxy role that may only revoke grants of
the recipients in its scope), and its share mount is locked, since a revoked grant stops new
cfrags but not a key already in the mount's memory.  For the owner's own mount there is nothing
to revoke: it is locked instead (recorded as action "lock", requested "revoke").
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from wire import mountsock as mounts
from wire.errors import DaemonError
from daemon.policy import Policy, PolicyStore

log = logging.getLogger(__name__)

GUARD_DIR = "guard"  # <home>/guard/identities/<name>.json: a keyring of its own, so the daemon's
                     # guard never becomes "another identity" that `--identity` must disambiguate
READ_DRIVERS = frozenset({"bytes_read", "read_24h"})
LOCK_TIMEOUT = 3.0
REVOKE_TIMEOUT = 5.0


@dataclass
class SourceInfo:
    """What the daemon knows about one event source (a mount session)."""

    vault_path: str = ""
    share_id: str = ""
    recipient: str = ""        # fingerprint of a share's recipient
    recipient_name: str = ""
    owner: str = ""            # fingerprint of the share's owner


@dataclass
class Decision:
    user: str
    rule: str                  # "" = the model
    score: int                 # milli (rules: 1000)
    features: dict[str, int]
    window_start: int
    window_end: int
    source: str                # of the triggering event
    seq: int
    vault_id: str
    arrived_mono_ns: int
    drivers: list[str] = field(default_factory=list)
    read_out: bool = True      # the window's reads were not written back into the vault
    id: str = field(default_factory=lambda: secrets.token_hex(6))


def guard_home(home: Path) -> Path:
    return Path(home) / GUARD_DIR


def guard_name(identity_name: str) -> str:
    return f"guard-{identity_name}"[:64]


def load_guard(home: Path, identity_name: str, passphrase: bytes) -> Any | None:
    """The unlocked guard credential made by `umbrafs daemon credential`, or None if there is none."""
    from proxy import keyring as identity_mod

    name = guard_name(identity_name)
    if not identity_mod.identity_path(guard_home(home), name).exists():
        return None
    return identity_mod.unlock(guard_home(home), name, passphrase)


def choose_action(policy: Policy, d: Decision) -> str:
    """Rules act as the policy says; the model alone only alerts.

    An unusual window is not an attack by itself: in the evaluation the model's only locks were a
    `tar czf` and a big grep (reads that "left the vault" to a terminal or an archive), while every
    attack it would have caught was caught first by a rule.  So the model surfaces, rules act."""
    return policy.on_anomaly if d.rule else "alert"


class Responder:
    def __init__(self, home: Path, policies: PolicyStore, sources: dict[str, SourceInfo],
                 record: Callable[[str, dict[str, Any]], Awaitable[None]], guard: Any | None = None) -> None:
        self.home = Path(home)
        self.policies = policies
        self.sources = sources
        self.record = record
        self.guard = guard

    def vault_of(self, source: str) -> str:
        info = self.sources.get(source)
        if info is not None and info.vault_path:
            return info.vault_path
        found = mounts.find_by_source(self.home, source)
        return found.vault if found else ""

    async def respond(self, d: Decision, policy: Policy | None = None) -> dict[str, Any]:
        vault = await asyncio.to_thread(self.vault_of, d.source)
        if policy is None:
            policy = await asyncio.to_thread(self.policies.get, vault)
        requested = choose_action(policy, d)
        action, result, extra = requested, "ok", {}
        try:
            if requested in ("lock", "unmount"):
                await asyncio.to_thread(self._mount_request, d, requested)
            elif requested == "revoke":
                action, result, extra = await self._revoke(d, vault)
        except (DaemonError, OSError) as exc:
            result = str(exc)[:300]
        elapsed_ms = (time.monotonic_ns() - d.arrived_mono_ns) / 1e6
        detail: dict[str, Any] = {
            "id": d.id, "user": d.user, "window_start": d.window_start, "window_end": d.window_end,
            "score": d.score, "rule": d.rule, "action": action, "requested": requested, "action_result": result,
            "action_ms": int(round(elapsed_ms)), "action_us": int(elapsed_ms * 1000),
            "trigger_source": d.source, "trigger_seq": d.seq, "policy": policy.source,
            "threshold": policy.threshold, "drivers": ",".join(d.drivers[:6]),
        }
        detail.update(extra)
        detail.update({f"f_{k}": int(v) for k, v in d.features.items()})
        if result != "ok":
            log.error("anomaly %s (%s): %s failed: %s", d.id, d.rule or "model", action, result)
        else:
            log.warning("anomaly %s: %s %s score %d -> %s in %.1f ms", d.id, d.user, d.rule or "model", d.score,
                        action, elapsed_ms)
        await self.record(d.vault_id, detail)
        return detail

    def _mount_request(self, d: Decision, kind: str, source: str | None = None) -> None:
        info = mounts.find_by_source(self.home, source or d.source)
        if info is None:
            raise DaemonError("no live mount for the events' source (already unmounted?)")
        reply = mounts.request(info, {"type": kind, "reason": f"anomaly {d.id}: {d.rule or 'model'}",
                                      "by": "umbrafs-daemon"}, LOCK_TIMEOUT)
        if reply.get("type") == "error":
            raise DaemonError(f"mount refused {kind}: {reply.get('message', '?')}")

    async def _revoke(self, d: Decision, vault: str) -> tuple[str, str, dict[str, Any]]:
        info = self.sources.get(d.source)
        if info is None or not info.share_id:
            found = await asyncio.to_thread(mounts.find_by_source, self.home, d.source)
            if found is not None and found.share_id:
                info = SourceInfo(found.vault, found.share_id)
        # Lock first: that stops the reads now; the proxies are a network round trip away.
        lock_error = ""
        try:
            await asyncio.to_thread(self._mount_request, d, "lock")
        except (DaemonError, OSError) as exc:
            lock_error = str(exc)[:200]
        lock_ms = (time.monotonic_ns() - d.arrived_mono_ns) / 1e6
        if info is None or not info.share_id:
            return "lock", lock_error or "ok", {"note": "not a share mount: locked instead of revoking"}
        if self.guard is None:
            return "revoke", "no guard credential (umbrafs daemon credential)" + (f"; {lock_error}" if lock_error else ""), {}
        reports = await asyncio.to_thread(self._revoke_grants, vault or info.vault_path, info)
        revoke_ms = (time.monotonic_ns() - d.arrived_mono_ns) / 1e6
        holds = all(r.get("holds") for r in reports) and bool(reports)
        problems = [r["summary"] for r in reports if not r.get("holds")]
        result = "ok" if holds and not lock_error else "; ".join(filter(None, [lock_error, *problems]))[:300]
        return "revoke", result or "ok", {"lock_ms": int(round(lock_ms)), "revoke_ms": int(round(revoke_ms)),
                                          "grants": ",".join(r["grant"] for r in reports)[:200]}

    def _revoke_grants(self, vault: str, info: SourceInfo) -> list[dict[str, Any]]:
        """Delete at the proxies every active grant of this share's recipient in this vault."""
        from proxy import sharing
        from proxy.errors import ProxyError

        out = []
        for r in sharing.recipient_shares(Path(vault), info.share_id, info.recipient):
            try:
                # Not as the owner: the record stays unmarked (the owner's `revoke` marks it).
                report = sharing.revoke_share(Path(vault), r, self.guard, timeout=REVOKE_TIMEOUT)
                out.append({"grant": r.grant_id, "holds": report.holds, "summary": report.summary()})
            except ProxyError as exc:
                out.append({"grant": r.grant_id, "holds": False, "summary": f"grant {r.grant_id}: {exc}"})
        return out
