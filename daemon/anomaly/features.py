"""Features of access events per user and time window (pure: no I/O, no clock of its own).

The detector turns every stored event into at most one `Obs` (an observation: who, when, what
kind, how many bytes since the last report of that session) with `Normalizer`; the same `Obs`
stream feeds the fast rules (daemon/anomaly/rules.py) and `WindowBuilder`, which sums it into tumbling
windows by EVENT time (default 60 s) and closes a user's window when an event of a later window
arrives or the clock passes its end.  A closed `Window` carries the features, as ints for the
ledger (`f_<name>`) and as the model's vector.  docs/anomaly.md lists each feature and why.
"""
from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from ledger.events import Event

WINDOW_NS = 60 * 1_000_000_000
FRESH_S = 120  # a file created this recently is the user's own work in progress
DAY_NS = 86400 * 1_000_000_000
HI_ENTROPY = 7500  # milli-bits per byte: compressed or encrypted data is ≥ 7.9, text ~4.5, office XML ~5

# Kinds of observation.
OPEN = "open"          # an access session ended (refused opens are left out: after a lock they are our own doing)
PROGRESS = "progress"  # bytes of a still-open session
CREATE = "create"
DELETE = "delete"
RENAME = "rename"
TRUNCATE = "truncate"  # setattr that changed the size

_NAMESPACE = {"create": CREATE, "mknod": CREATE, "mkdir": CREATE, "symlink": CREATE, "link": CREATE,
              "unlink": DELETE, "rmdir": DELETE, "rename": RENAME}

# The features of a window, in the order of the ledger's f_<name> fields.
FEATURES = (
    "hour_sin", "hour_cos",        # milli: time of day on the unit circle (23:59 is next to 00:00)
    "bytes_read", "bytes_written",
    "files_opened", "distinct_dirs", "opens_per_min",
    "overwrites_per_min", "renames_per_min", "deletes_per_min",
    "entropy_mean", "entropy_max",  # milli-bits per byte of written plaintext; -1 if nothing written
    "share_reader",                # 1 if the user is a share recipient
    "read_24h",                    # bytes read by the user in the 24 h ending with this window
)


@dataclass(slots=True)
class Obs:
    """One event as the detector sees it."""

    t: int            # event time, ns
    user: str
    kind: str
    file: str         # file id, else the path
    path: str
    pid: int
    comm: str
    read: int = 0     # bytes read since the last report of this session
    written: int = 0
    overwrite: bool = False
    entropy: int = -1
    share: bool = False
    source: str = ""
    seq: int = 0
    vault: str = ""
    fresh: bool = False   # the file was created within the last `fresh_s`: work in progress, not a victim
    replaced: str = ""    # RENAME over a pre-existing file: that file's id


@dataclass(slots=True)
class Window:
    user: str
    start_ns: int
    end_ns: int
    features: dict[str, int]
    comm_read: dict[str, int] = field(default_factory=dict)  # bytes read per process name
    files_read: int = 0
    flagged: bool = False  # a rule or the model flagged it: never used as baseline
    source: str = ""       # the source of its last event (→ mount, vault, policy)
    vault_id: str = ""
    score: int = -1        # milli, once scored

    def vector(self) -> list[float]:
        return model_vector(self.features)


def model_vector(f: Mapping[str, int]) -> list[float]:
    """What IsolationForest sees: sizes and counts on a log scale (a 10x jump matters, not +1 MB)."""
    lg = math.log1p
    ent = f["entropy_mean"]
    return [
        f["hour_sin"] / 1000.0, f["hour_cos"] / 1000.0,
        lg(f["bytes_read"]), lg(f["bytes_written"]),
        lg(f["files_opened"]), lg(f["distinct_dirs"]),
        lg(f["overwrites_per_min"]), lg(f["renames_per_min"]), lg(f["deletes_per_min"]),
        (ent if ent >= 0 else 0) / 1000.0, (f["entropy_max"] if f["entropy_max"] >= 0 else 0) / 1000.0,
        float(f["share_reader"]), lg(f["read_24h"]),
    ]


MODEL_FEATURES = ("hour_sin", "hour_cos", "bytes_read", "bytes_written", "files_opened", "distinct_dirs",
                  "overwrites_per_min", "renames_per_min", "deletes_per_min", "entropy_mean", "entropy_max",
                  "share_reader", "read_24h")


class Normalizer:
    """Event → Obs: who the user is, and byte counts that are never counted twice.

    A long session reports `progress` events with cumulative counts before its final `access`;
    only the increase since the last report of that session is counted.

    A file created within `fresh_s` is marked fresh on later observations: deleting, renaming or
    rewriting what one just made (a git clone's lock and temporary files, a build's objects) is
    work in progress, not destruction; the rules and the window features count only the rest."""

    MAX_SESSIONS = 100_000
    MAX_CREATED = 50_000

    def __init__(self, user_of: Callable[[Event], tuple[str, bool]], fresh_s: int = FRESH_S) -> None:
        self.user_of = user_of
        self.fresh_ns = fresh_s * 1_000_000_000
        self._sessions: collections.OrderedDict[tuple[Any, ...], tuple[int, int]] = collections.OrderedDict()
        self._created: collections.OrderedDict[str, int] = collections.OrderedDict()

    def _made(self, t: int, *keys: str) -> None:
        created = self._created
        for key in keys:
            if key:
                created[key] = t
                created.move_to_end(key)
        while len(created) > self.MAX_CREATED:
            created.popitem(last=False)

    def _born(self, t: int, *keys: str) -> int | None:
        """When the newest of these (file id, path) was created, if within fresh_s."""
        for key in keys:
            made = self._created.get(key) if key else None
            if made is not None and t - made < self.fresh_ns:
                return made
        return None

    def _session_key(self, e: Event) -> tuple[Any, ...]:
        fh = e.detail.get("fh")
        if fh is not None:
            return (e.source, fh)
        return (e.source, e.file_id or e.path, e.pid, e.opened_ns)

    def obs(self, e: Event) -> Obs | None:
        if e.detail.get("restore") is True:
            return None  # `umbrafs restore` undoing an attack, proven to the mount with the vault key
        op = e.op
        if op == "access" or op == "progress":
            key = self._session_key(e)
            prev_r, prev_w = self._sessions.pop(key, (0, 0))
            read = max(0, e.bytes_read - prev_r)
            written = max(0, e.bytes_written - prev_w)
            if op == "progress":
                self._sessions[key] = (max(prev_r, e.bytes_read), max(prev_w, e.bytes_written))
                if len(self._sessions) > self.MAX_SESSIONS:  # sessions whose end we never saw
                    self._sessions.popitem(last=False)
            kind = OPEN if op == "access" else PROGRESS
        elif op in _NAMESPACE:
            if e.result != "ok":
                return None
            read = written = 0
            kind = _NAMESPACE[op]
        elif op == "setattr":
            if e.result != "ok" or "size" not in str(e.detail.get("changed", "")):
                return None
            read = written = 0
            kind = TRUNCATE
        else:
            return None
        user, share = self.user_of(e)
        d = e.detail
        entropy = d.get("entropy", -1) if written or e.bytes_written else -1
        file = e.file_id or e.path
        t = e.time_ns
        # Freshness by file id and by path: a rename or unlink of a file the mount has not
        # opened since its creation carries no file id (git's lock files), only the path.
        if kind == CREATE and op != "link":  # a new name for an old file makes nothing new
            self._made(t, e.file_id, e.path)
            fresh = True
        else:
            born = self._born(t, e.file_id, e.path)
            fresh = born is not None
        replaced = ""
        if kind == RENAME:
            target = d.get("replaced")
            if isinstance(target, str) and target and self._born(t, target, e.path2) is None:
                replaced = target
            if born is not None:
                self._made(born, e.path2)  # the finished file (index.lock -> index) is as new as the lock
        return Obs(e.time_ns, user, kind, file, e.path, e.pid, e.comm, read, written,
                   d.get("overwrite") is True, entropy if type(entropy) is int else -1, share, e.source, e.seq,
                   e.vault, fresh, replaced)


class _Acc:
    __slots__ = ("start", "bytes_read", "bytes_written", "opens", "dirs", "overwrites", "renames", "deletes",
                 "ent_sum", "ent_n", "ent_max", "share", "comm_read", "files_read", "source", "vault")

    def __init__(self, start: int) -> None:
        self.start = start
        self.bytes_read = self.bytes_written = self.opens = 0
        self.dirs: set[str] = set()
        self.overwrites = self.renames = self.deletes = 0
        self.ent_sum = self.ent_n = 0
        self.ent_max = -1
        self.share = False
        self.comm_read: dict[str, int] = {}
        self.files_read = 0
        self.source = self.vault = ""

    def add(self, o: Obs) -> None:
        kind = o.kind
        self.source = o.source
        self.vault = o.vault
        if o.read:
            self.bytes_read += o.read
            self.comm_read[o.comm] = self.comm_read.get(o.comm, 0) + o.read
        self.bytes_written += o.written
        if o.share:
            self.share = True
        if kind == OPEN:
            self.opens += 1
            if o.read:
                self.files_read += 1
            if o.overwrite and not o.fresh:
                self.overwrites += 1
            if o.entropy >= 0:
                self.ent_sum += o.entropy
                self.ent_n += 1
                if o.entropy > self.ent_max:
                    self.ent_max = o.entropy
        elif kind == DELETE:
            if not o.fresh:
                self.deletes += 1
        elif kind == RENAME:
            if not o.fresh or o.replaced:
                self.renames += 1
        elif kind == TRUNCATE:
            if not o.fresh:
                self.overwrites += 1
        self.dirs.add(o.path.rpartition("/")[0])


def hour_of_day(t_ns: int) -> float:
    """Local time of day in hours (0.0 … 24.0): "3 AM" means the user's 3 AM."""
    lt = time.localtime(t_ns // 1_000_000_000)
    return lt.tm_hour + lt.tm_min / 60.0 + lt.tm_sec / 3600.0


class WindowBuilder:
    """Tumbling windows per user by event time, and each user's trailing 24 h of reads.

    An event older than the user's open window (a spooled event delivered late) is counted
    in the open window: windows are for scoring behaviour, the ledger keeps exact times."""

    def __init__(self, window_ns: int = WINDOW_NS) -> None:
        self.window_ns = window_ns
        self.open: dict[str, _Acc] = {}
        self._trail: dict[str, collections.deque[tuple[int, int]]] = {}
        self._trail_sum: dict[str, int] = {}
        self._flagged: set[tuple[str, int]] = set()

    def add(self, o: Obs) -> Window | None:
        """Count o; the user's previous window if o closed it."""
        acc = self.open.get(o.user)
        closed = None
        if acc is None or o.t >= acc.start + self.window_ns:
            if acc is not None:
                closed = self._close(o.user, acc)
            acc = self.open[o.user] = _Acc(o.t - o.t % self.window_ns)
        acc.add(o)
        return closed

    def close_before(self, now_ns: int) -> list[Window]:
        """Close every window that ended at or before now_ns."""
        done = [u for u, acc in self.open.items() if acc.start + self.window_ns <= now_ns]
        return [self._close(u, self.open.pop(u)) for u in done]

    def flag_open(self, user: str) -> None:
        """Mark the user's open window: a rule fired in it, so it never becomes baseline."""
        acc = self.open.get(user)
        if acc is not None:
            self._flagged.add((user, acc.start))

    def _close(self, user: str, acc: _Acc) -> Window:
        end = acc.start + self.window_ns
        trail = self._trail.setdefault(user, collections.deque())
        total = self._trail_sum.get(user, 0)
        while trail and trail[0][0] <= end - DAY_NS:
            total -= trail.popleft()[1]
        if acc.bytes_read:
            trail.append((acc.start, acc.bytes_read))
            total += acc.bytes_read
        self._trail_sum[user] = total
        minutes = self.window_ns / 60e9
        hour = hour_of_day(acc.start + self.window_ns // 2)
        angle = 2 * math.pi * hour / 24.0
        f = {
            "hour_sin": round(1000 * math.sin(angle)), "hour_cos": round(1000 * math.cos(angle)),
            "bytes_read": acc.bytes_read, "bytes_written": acc.bytes_written,
            "files_opened": acc.opens, "distinct_dirs": len(acc.dirs), "opens_per_min": round(acc.opens / minutes),
            "overwrites_per_min": round(acc.overwrites / minutes), "renames_per_min": round(acc.renames / minutes),
            "deletes_per_min": round(acc.deletes / minutes),
            "entropy_mean": acc.ent_sum // acc.ent_n if acc.ent_n else -1, "entropy_max": acc.ent_max,
            "share_reader": int(acc.share), "read_24h": total,
        }
        flagged = (user, acc.start) in self._flagged
        if flagged:
            self._flagged.discard((user, acc.start))
        return Window(user, acc.start, end, f, acc.comm_read, acc.files_read, flagged, acc.source, acc.vault)


def windows_of(events: Iterable[Event], user_of: Callable[[Event], tuple[str, bool]],
               window_ns: int = WINDOW_NS) -> list[Window]:
    """All windows of an event sequence (for tests and for training from history)."""
    norm = Normalizer(user_of)
    builder = WindowBuilder(window_ns)
    out: list[Window] = []
    last = 0
    for e in events:
        o = norm.obs(e)
        if o is None:
            continue
        last = max(last, o.t)
        w = builder.add(o)
        if w is not None:
            out.append(w)
    out.extend(builder.close_before(last + window_ns + 1))
    out.sort(key=lambda w: (w.start_ns, w.user))
    return out
