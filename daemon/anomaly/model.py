"""Per-user baselines: an IsolationForest over the user's windows, and the profile the rules use.

Nothing here is persisted: at daemon start the detector replays the ledger's history into
windows and fits again (100 trees on 10k windows take ~0.1 s), so there is no pickle to trust.
`fit_all` runs in a worker thread; scoring is a vectorised walk of all trees at once
(`FastForest`), ~100x cheaper than `score_samples` for a handful of rows and equal to it
(tests/daemon/test_detector.py checks).
"""
from __future__ import annotations

import collections
import datetime
import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from daemon.anomaly.features import MODEL_FEATURES, Window, hour_of_day

log = logging.getLogger(__name__)

N_TREES = 100
MAX_SAMPLES = 256
MB = 1 << 20


@dataclass(frozen=True)
class Settings:
    window_s: int = 60
    min_windows: int = 120      # active windows before a user has a baseline
    min_days: int = 3           # … spread over at least this many distinct days
    retrain_every: int = 500    # refit after this many new windows of a user
    max_history: int = 20_000   # newest windows kept per user (six weeks of full office days)
    margin: int = 30            # milli: a window must score this far above the baseline's worst
    min_destroy_pm: int = 10    # overwrites + renames + deletes a minute before destruction is reported
    min_read_mb: int = 16       # MiB read (in the window and the next) before unusual reading is reported

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        known = {k: int(v) for k, v in d.items() if k in cls.__dataclass_fields__ and type(v) is int and v > 0}
        return cls(**known)


@dataclass
class Profile:
    """What the rules need to know about a user's normal behaviour."""

    windows: int
    days: int
    hour_windows: list[int]            # active windows per local hour (routine backup windows left out)
    max_read_5min: list[int]           # most bytes read in 5 minutes ending in that hour (routine left out)
    max_read_5min_all: list[int]       # the same with the routine windows (a backup's own volume)
    comm_hour_days: dict[tuple[str, int], int]  # (process name, hour) → days it read ≥ 1 MiB then
    max_hour_read: int                 # most bytes read in one hour
    max_hour_files: int                # most files read in one hour
    p95_daily_read: int
    max_window_deletes: int

    def hour_share(self, hour: int) -> float:
        """Fraction of the user's windows within ±1 h of this hour."""
        n = sum(self.hour_windows[(hour + d) % 24] for d in (-1, 0, 1))
        return n / max(1, sum(self.hour_windows))

    def familiar(self, comm: str, hour: int) -> bool:
        """Has this process read here at this hour (±1) on at least 2 days (a nightly backup)?"""
        return any(self.comm_hour_days.get((comm, (hour + d) % 24), 0) >= 2 for d in (-1, 0, 1))


def _day(t_ns: int) -> datetime.date:
    return datetime.date.fromtimestamp(t_ns // 1_000_000_000)


def profile_of(windows: Sequence[Window]) -> Profile:
    ws = sorted(windows, key=lambda w: w.start_ns)
    hours = [int(hour_of_day(w.start_ns)) % 24 for w in ws]
    comm_days: dict[tuple[str, int], set[datetime.date]] = collections.defaultdict(set)
    daily: dict[datetime.date, int] = collections.defaultdict(int)
    days = set()
    max_del = 0
    for w, h in zip(ws, hours):
        d = _day(w.start_ns)
        days.add(d)
        daily[d] += w.features["bytes_read"]
        max_del = max(max_del, w.features["deletes_per_min"])
        for comm, n in w.comm_read.items():
            if n >= MB:
                comm_days[(comm, h)].add(d)
    familiar = {k for k, v in comm_days.items() if len(v) >= 2}
    # A window that only a familiar process (a nightly backup) read in does not make its hour a
    # usual hour for the person, nor its volume a usual volume for anything else at that hour.
    hour_windows = [0] * 24
    routine = []
    for w, h in zip(ws, hours):
        r = bool(w.comm_read) and not w.features["bytes_written"] and all(
            any((c, (h + dh) % 24) in familiar for dh in (-1, 0, 1)) for c in w.comm_read)
        routine.append(r)
        if not r:
            hour_windows[h] += 1
    max5, max5_all = [0] * 24, [0] * 24
    max_hour_read = max_hour_files = 0
    for span, kind in ((300 * 10**9, "5"), (300 * 10**9, "5all"), (3600 * 10**9, "h")):
        skip = routine if kind == "5" else [False] * len(ws)
        j = 0
        total = files = 0
        for i, w in enumerate(ws):
            if skip[i]:
                continue
            total += w.features["bytes_read"]
            files += w.files_read
            while j < i and (ws[j].start_ns <= w.start_ns - span or skip[j]):
                if not skip[j]:
                    total -= ws[j].features["bytes_read"]
                    files -= ws[j].files_read
                j += 1
            if kind == "5":
                max5[hours[i]] = max(max5[hours[i]], total)
            elif kind == "5all":
                max5_all[hours[i]] = max(max5_all[hours[i]], total)
            else:
                max_hour_read = max(max_hour_read, total)
                max_hour_files = max(max_hour_files, files)
    reads = sorted(daily.values())
    p95 = reads[min(len(reads) - 1, int(0.95 * len(reads)))] if reads else 0
    return Profile(len(ws), len(days), hour_windows, max5, max5_all, {k: len(v) for k, v in comm_days.items()},
                   max_hour_read, max_hour_files, p95, max_del)


class FastForest:
    """An IsolationForest's trees as flat arrays, walked for all trees and rows at once.

    Leaves point to themselves (threshold +inf), so every row takes exactly `depth` steps of
    three gathers and a compare, whatever the tree."""

    def __init__(self, forest) -> None:  # type: ignore[no-untyped-def]
        from sklearn.ensemble._iforest import _average_path_length

        trees = [e.tree_ for e in forest.estimators_]
        features, thresholds, lefts, rights, values, roots = [], [], [], [], [], []
        offset = 0
        depth_max = 0
        for est_features, t in zip(forest.estimators_features_, trees):
            k = t.node_count
            leaf = t.children_left[:k] == -1
            own = np.arange(k) + offset
            features.append(np.where(leaf, 0, np.asarray(est_features)[np.maximum(t.feature[:k], 0)]))
            thresholds.append(np.where(leaf, np.inf, t.threshold[:k]))
            lefts.append(np.where(leaf, own, t.children_left[:k] + offset))
            rights.append(np.where(leaf, own, t.children_right[:k] + offset))
            depth = np.asarray(t.compute_node_depths(), dtype=float)[:k]  # the root counts 1, as in sklearn
            values.append(np.where(leaf, depth + _average_path_length(t.n_node_samples[:k].astype(float)) - 1.0, 0.0))
            roots.append(offset)
            depth_max = max(depth_max, int(depth.max()))
            offset += k
        self.feature = np.concatenate(features).astype(np.intp)
        self.threshold = np.concatenate(thresholds)
        self.left = np.concatenate(lefts).astype(np.intp)
        self.right = np.concatenate(rights).astype(np.intp)
        self.value = np.concatenate(values)
        self.roots = np.array(roots, dtype=np.intp)[:, None]
        self.depth = depth_max  # steps from the root to the deepest leaf (+1: harmless on a leaf)
        self.denominator = len(trees) * float(_average_path_length(np.array([forest._max_samples], dtype=float))[0])

    def score(self, x: np.ndarray) -> np.ndarray:
        """Anomaly score s in (0, 1] per row (sklearn's -score_samples): ~0.5 normal, → 1 anomalous."""
        x = np.asarray(x, dtype=np.float32).astype(np.float64)  # trees compare float32 inputs
        rows, width = x.shape
        flat = x.ravel()
        node = np.repeat(self.roots, rows, axis=1)  # (trees, rows)
        base = (np.arange(rows) * width)[None, :]
        for _ in range(self.depth):
            go_left = flat[base + self.feature[node]] <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        return 2.0 ** (-self.value[node].sum(axis=0) / self.denominator)


# Narrowest range a feature is given when the baseline hardly varies in it (log units; hour: ±0.25 ≈ 1 h).
_MIN_WIDTH = 1.0
_MIN_WIDTH_HOUR = 0.25
_TWO_SIDED = np.array([n.startswith("hour_") for n in MODEL_FEATURES])


@dataclass
class UserModel:
    forest: FastForest | None
    ceiling: int            # milli: the highest forest score among the baseline's own windows
    trained_windows: int
    profile: Profile
    p99: list[float] = field(default_factory=list)   # per model feature: the baseline's 99th percentile
    lo: np.ndarray | None = None                     # per model feature: the baseline's range
    hi: np.ndarray | None = None
    width: np.ndarray | None = None

    def excess(self, x: np.ndarray) -> np.ndarray:
        """How far each row lies outside the baseline's range, per feature, in widths of that range.

        IsolationForest draws every split inside the range it was trained on, so a window beyond
        it (3 AM after months of 9-to-5) scores no higher than the baseline's own edge; this is the
        part of the score that sees beyond the range."""
        assert self.lo is not None and self.hi is not None and self.width is not None
        # Less than usual (fewer bytes, lower entropy) is no threat: only the hour counts both ways.
        below = np.where(_TWO_SIDED, self.lo - x, 0.0)
        return np.maximum(np.maximum(x - self.hi, below), 0.0) / self.width

    def scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(forest score, range score, excess per feature) for a batch of vectors."""
        assert self.forest is not None
        forest = self.forest.score(x)
        ex = self.excess(np.asarray(x, dtype=float))
        ranged = 1.0 - 0.5 * np.exp(-ex.max(axis=1))  # 0.5 inside the range, → 1 far outside
        return forest, ranged, ex

    def drivers(self, vector: Sequence[float], excess: Sequence[float], names: Sequence[str]) -> list[str]:
        """The features that made a window unusual: beyond the baseline's range (most first), else
        above its 99th percentile."""
        out = sorted(((e, n) for n, e in zip(names, excess) if e > 0.05), reverse=True)
        if not out:
            out = sorted(((v - p, n) for n, v, p in zip(names, vector, self.p99) if v > p + 1e-9), reverse=True)
        hour = any(n in ("hour_sin", "hour_cos") for _, n in out)
        named = [n for _, n in out if n not in ("hour_sin", "hour_cos")]
        return (["hour"] if hour else []) + named


def fit_user(windows: Sequence[Window], settings: Settings, seed: int = 0) -> UserModel | None:
    """A user's model, or None while the baseline is below the minimum (then only rules act)."""
    base = [w for w in windows if not w.flagged]
    profile = profile_of(base)
    if profile.windows < settings.min_windows or profile.days < settings.min_days:
        return UserModel(None, 1000, profile.windows, profile)
    from sklearn.ensemble import IsolationForest

    x = np.array([w.vector() for w in base], dtype=float)
    forest = IsolationForest(n_estimators=N_TREES, max_samples=min(MAX_SAMPLES, len(base)), random_state=seed)
    forest.fit(x)
    fast = FastForest(forest)
    scores = fast.score(x)
    ceiling = int(math.ceil(float(scores.max()) * 1000))
    p99 = np.percentile(x, 99, axis=0).tolist()
    lo, hi = x.min(axis=0), x.max(axis=0)
    floor = np.array([_MIN_WIDTH_HOUR if n.startswith("hour_") else _MIN_WIDTH for n in MODEL_FEATURES])
    return UserModel(fast, ceiling, len(base), profile, p99, lo, hi, np.maximum(hi - lo, floor))


def fit_all(history: dict[str, list[Window]], settings: Settings) -> dict[str, UserModel]:
    """Fit every user (in a worker thread: this holds the GIL in sklearn for ~0.1 s per 10k windows)."""
    out = {}
    for i, (user, windows) in enumerate(sorted(history.items())):
        model = fit_user(windows, settings, seed=i)
        if model is not None:
            out[user] = model
    return out
