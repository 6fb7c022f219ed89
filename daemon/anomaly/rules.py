"""Fast rules, checked on every observation (not when a window closes).

A rule is better than the model where the pattern is known and the damage grows by the
millisecond: ransomware (pre-existing files overwritten, renamed or deleted while high-entropy
data is written), mass deletion, a bulk read at an hour the user is never active, a share
recipient reading far more than it ever did, and a slow 24 h read volume far above the user's
days.  Each keeps O(1) state per observation (counters with expiring deques).  Thresholds and
the reasons for them are in docs/anomaly.md; `Limits` can be tuned in `<home>/anomaly.json`.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, fields
from typing import Any

from daemon.anomaly.features import (
    CREATE,
    DELETE,
    FRESH_S,
    HI_ENTROPY,
    OPEN,
    PROGRESS,
    RENAME,
    TRUNCATE,
    Obs,
    hour_of_day,
)
from daemon.anomaly.model import Profile

S = 1_000_000_000
MB = 1 << 20


@dataclass(frozen=True)
class Limits:
    ransom_files: int = 5              # victims (pre-existing files destroyed while writing high-entropy data)
    ransom_window_s: int = 10
    fresh_s: int = FRESH_S             # a file created this recently is the user's own work in progress
    mass_delete_files: int = 100       # pre-existing files deleted …
    mass_delete_window_s: int = 30     # … within this many seconds
    bulk_floor_mb: int = 16            # bytes read in 5 minutes at an unusual hour
    bulk_factor: int = 4               # … and this many times the most the user read in 5 minutes at that hour
    unusual_share_pm: int = 10         # an hour is unusual if < 1 % (10 per mille) of the user's windows fall within ±1 h
    share_floor_mb: int = 64           # a share recipient reading this much in an hour …
    share_floor_files: int = 300       # … or this many files
    share_factor: int = 4              # … and this many times its own most in an hour
    off_hours_mb: int = 16             # read in 24 h at hours the user is never active, by unfamiliar processes
    slow_floor_mb: int = 64            # 24 h read volume …
    slow_factor: int = 3               # … and this many times the user's 95th-percentile day
    cooldown_s: int = 60               # one decision per user and rule per cooldown

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Limits":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and type(v) is int and v >= 0})


@dataclass
class Hit:
    rule: str
    user: str
    obs: Obs
    facts: dict[str, int]  # the counts that made it fire (f_<name> in the anomaly event)
    span_ns: int


class _Counter:
    """Distinct keys seen within the last `span` ns (amortised O(1))."""

    __slots__ = ("span", "q", "count")

    def __init__(self, span: int) -> None:
        self.span = span
        self.q: collections.deque[tuple[int, str]] = collections.deque()
        self.count: dict[str, int] = {}

    def add(self, t: int, key: str) -> None:
        self.q.append((t, key))
        self.count[key] = self.count.get(key, 0) + 1
        self.expire(t)

    def expire(self, now: int) -> None:
        q, count = self.q, self.count
        while q and q[0][0] <= now - self.span:
            _, key = q.popleft()
            n = count[key] - 1
            if n:
                count[key] = n
            else:
                del count[key]

    def __len__(self) -> int:
        return len(self.count)


class _Sum:
    """Sum of values within the last `span` ns, in buckets of `bucket` ns (bounded memory)."""

    __slots__ = ("span", "bucket", "q", "total")

    def __init__(self, span: int, bucket: int) -> None:
        self.span, self.bucket = span, bucket
        self.q: collections.deque[list[int]] = collections.deque()
        self.total = 0

    def add(self, t: int, value: int) -> None:
        b = t - t % self.bucket
        if self.q and self.q[-1][0] >= b:
            self.q[-1][1] += value
        else:
            self.q.append([b, value])
        self.total += value
        q = self.q
        while q and q[0][0] <= t - self.span:
            self.total -= q.popleft()[1]


class _Victims:
    """Pre-existing files whose content one process replaced with high-entropy data, in the last `span` ns.

    A victim is either a file overwritten in place with high-entropy data, or a pair made by ONE
    process in ONE directory: a pre-existing file deleted, renamed away or truncated, and a
    high-entropy file written (encrypt-then-delete, encrypt-to-new-name).  Counting the two sides
    per user only (the first version) paired a build's rewritten objects with a photo import in
    another folder, and a git clone's packs with its lock-file renames; per (pid, directory) they
    stay apart.  Pairs are counted min(written, destroyed) per key, so nothing counts twice."""

    __slots__ = ("span", "q", "in_place", "hi", "gone", "paired")

    def __init__(self, span: int) -> None:
        self.span = span
        self.q: collections.deque[tuple[int, int, Any, str]] = collections.deque()  # (t, side, key, file)
        self.in_place: dict[str, int] = {}
        self.hi: dict[tuple[int, str], dict[str, int]] = {}
        self.gone: dict[tuple[int, str], dict[str, int]] = {}
        self.paired = 0

    @staticmethod
    def _key(o: Obs) -> tuple[int, str]:
        return (o.pid, o.path.rpartition("/")[0])

    def _pairs(self, key: tuple[int, str]) -> int:
        return min(len(self.hi.get(key, ())), len(self.gone.get(key, ())))

    def _put(self, side: int, table: dict[tuple[int, str], dict[str, int]], o: Obs, file: str = "") -> None:
        key = self._key(o)
        file = file or o.file
        before = self._pairs(key)
        table.setdefault(key, {})[file] = o.t
        self.paired += self._pairs(key) - before
        self.q.append((o.t, side, key, file))
        self.expire(o.t)

    def replaced(self, o: Obs) -> None:
        self.in_place[o.file] = o.t
        self.q.append((o.t, 0, None, o.file))
        key = self._key(o)
        if o.file in self.gone.get(key, {}):  # renamed away, then encrypted: one victim, not two
            before = self._pairs(key)
            del self.gone[key][o.file]
            self.paired += self._pairs(key) - before
        self.expire(o.t)

    def wrote(self, o: Obs) -> None:
        self._put(1, self.hi, o)

    def destroyed(self, o: Obs, file: str = "") -> None:
        """o deleted, renamed away or truncated a pre-existing file (or renamed over one: `file`)."""
        file = file or o.file
        if file not in self.in_place:
            self._put(2, self.gone, o, file)

    def expire(self, now: int) -> None:
        q = self.q
        while q and q[0][0] <= now - self.span:
            t, side, key, file = q.popleft()
            if side == 0:
                if self.in_place.get(file) == t:
                    del self.in_place[file]
                continue
            table = self.hi if side == 1 else self.gone
            entries = table.get(key)
            if entries is None or entries.get(file) != t:
                continue
            before = self._pairs(key)
            del entries[file]
            if not entries:
                del table[key]
            self.paired += self._pairs(key) - before


class UserRules:
    """The live state of one user's rules."""

    def __init__(self, user: str, limits: Limits) -> None:
        self.user = user
        self.limits = limits
        w = limits.ransom_window_s * S
        self.ransom = _Victims(w)
        self.deleted = _Counter(limits.mass_delete_window_s * S)
        self.read5 = _Sum(300 * S, S)
        self.read1h = _Sum(3600 * S, 10 * S)
        self.files1h = _Counter(3600 * S)
        self.read24h = _Sum(86400 * S, 60 * S)
        self.off_hours = _Sum(86400 * S, 60 * S)
        self.last: dict[str, int] = {}
        self._minute: tuple[Any, int, bool] = (None, 0, False)  # ((minute, profile), hour, unusual)

    def check(self, o: Obs, profile: Profile | None) -> Hit | None:
        kind = o.kind
        hit = None
        if kind == CREATE:
            return None
        if kind == OPEN or kind == PROGRESS:
            if o.written and o.entropy >= HI_ENTROPY:
                if o.overwrite and not o.fresh:
                    self.ransom.replaced(o)
                else:
                    self.ransom.wrote(o)
            if o.read:
                hit = self._reads(o, profile)
            if kind == OPEN and o.share and (o.read or not o.written):
                self.files1h.add(o.t, o.file)
        elif kind in (DELETE, RENAME, TRUNCATE):
            if not o.fresh:
                self.ransom.destroyed(o)
                if kind == DELETE:
                    self.deleted.add(o.t, o.file)
                    hit = hit or self._mass_delete(o, profile)
            if o.replaced:  # encrypt to a new file, then rename it over the original
                self.ransom.destroyed(o, o.replaced)
        if hit is None and self.ransom.q:
            hit = self._ransomware(o)
        if hit is None and o.share and kind == OPEN:
            hit = self._share(o, profile)
        return hit

    def _fire(self, rule: str, o: Obs, facts: dict[str, int], span_s: int) -> Hit | None:
        last = self.last.get(rule)
        if last is not None and o.t - last < self.limits.cooldown_s * S:
            return None
        self.last[rule] = o.t
        return Hit(rule, self.user, o, facts, span_s * S)

    def _ransomware(self, o: Obs) -> Hit | None:
        r = self.ransom
        r.expire(o.t)
        victims = len(r.in_place) + r.paired
        if victims >= self.limits.ransom_files:
            return self._fire("ransomware", o, {"victims": victims, "in_place": len(r.in_place), "paired": r.paired},
                              self.limits.ransom_window_s)
        return None

    def _mass_delete(self, o: Obs, profile: Profile | None) -> Hit | None:
        lim = self.limits
        need = lim.mass_delete_files
        if profile is not None:
            need = max(need, 2 * profile.max_window_deletes * lim.mass_delete_window_s // 60)
        if len(self.deleted) >= need:
            return self._fire("mass-delete", o, {"deleted_files": len(self.deleted), "needed": need},
                              lim.mass_delete_window_s)
        return None

    def _reads(self, o: Obs, profile: Profile | None) -> Hit | None:
        lim = self.limits
        self.read5.add(o.t, o.read)
        self.read24h.add(o.t, o.read)
        if o.share:
            self.read1h.add(o.t, o.read)
            hit = self._share(o, profile)
            if hit:
                return hit
        if profile is None:
            return None
        hour, unusual = self._hour(o.t, profile)
        # Reads at hours the person is never active add up over a day: an hourly trickle stays
        # under every 5-minute limit, and a nightly backup is familiar, so it does not count.
        off_hours = unusual and not profile.familiar(o.comm, hour)
        if off_hours:
            self.off_hours.add(o.t, o.read)
        # Cheap bounds first: almost every read leaves the totals far below any floor.
        if self.read5.total >= lim.bulk_floor_mb * MB:
            familiar = profile.familiar(o.comm, hour)
            # A process that reads here every night (a backup) is measured against its own volume,
            # anything else against what the person read at this hour.
            usual = profile.max_read_5min_all if familiar else profile.max_read_5min
            need = max(lim.bulk_floor_mb * MB, lim.bulk_factor * max(usual[(hour + d) % 24] for d in (-1, 0, 1)))
            if self.read5.total >= need:
                if unusual or familiar:
                    return self._fire("bulk-read", o, {"read_5min": self.read5.total, "needed": need,
                                                       "hour": hour, "unusual_hour": int(unusual)}, 300)
        if off_hours and self.off_hours.total >= lim.off_hours_mb * MB:
            hit = self._fire("off-hours-read", o, {"read_off_hours_24h": self.off_hours.total,
                                                   "needed": lim.off_hours_mb * MB, "hour": hour}, 86400)
            if hit is not None:
                self.off_hours = _Sum(86400 * S, 60 * S)  # the next report takes as much again
                return hit
        if self.read24h.total >= lim.slow_floor_mb * MB:
            need24 = max(lim.slow_floor_mb * MB, lim.slow_factor * profile.p95_daily_read)
            if self.read24h.total >= need24:
                return self._fire("slow-exfil", o, {"read_24h": self.read24h.total, "needed": need24}, 86400)
        return None

    def _hour(self, t: int, profile: Profile) -> tuple[int, bool]:
        """(local hour, is it unusual for the user): computed once a minute and profile."""
        key = (t // (60 * S), id(profile))
        if self._minute[0] != key:
            hour = int(hour_of_day(t)) % 24
            self._minute = (key, hour, profile.hour_share(hour) * 1000 < self.limits.unusual_share_pm)
        return self._minute[1], self._minute[2]

    def _share(self, o: Obs, profile: Profile | None) -> Hit | None:
        lim = self.limits
        need_b = lim.share_floor_mb * MB
        need_f = lim.share_floor_files
        if profile is not None:
            need_b = max(need_b, lim.share_factor * profile.max_hour_read)
            need_f = max(need_f, lim.share_factor * profile.max_hour_files)
        self.files1h.expire(o.t)
        if self.read1h.total >= need_b or len(self.files1h) >= need_f:
            return self._fire("share-bulk", o, {"read_1h": self.read1h.total, "files_1h": len(self.files1h),
                                                "needed_bytes": need_b, "needed_files": need_f}, 3600)
        return None
