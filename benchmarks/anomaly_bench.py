#!/usr/bin/env python3
"""What anomaly detection costs per event: features + rules + batched model scoring, amortised.

Feeds synthetic office weeks (several users, event times chosen, no mount needed) through the
daemon's own `Detector` in batches the way `_append` hands them over, trains, then measures a
further week: µs per event in `observe` (features and rules), in window scoring, and in total
(target < 50 µs).  Also times one window scored by sklearn's `score_samples` against the
vectorised forest the detector uses.

    python benchmarks/anomaly_bench.py [--users 3] [--train-days 15] [--days 5]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from daemon.anomaly.detector import Detector  # noqa: E402
from daemon.anomaly.model import Settings  # noqa: E402
from ledger.events import Event  # noqa: E402

S = 10**9
TARGET_US = 50.0


def office_week(users: int, first: datetime.date, days: int, rng: random.Random) -> list[Event]:
    """Per user: 8:30-17:30, a burst of file sessions every minute or two, saves, renames, deletes."""
    out: list[Event] = []
    seq = 0
    source = "00000000000000aa"
    for d in range(days):
        day = first + datetime.timedelta(days=d)
        for minute in range(8 * 60 + 30, 17 * 60 + 30):
            for u in range(users):
                if rng.random() < 0.4:
                    continue
                t0 = int(datetime.datetime.combine(day, datetime.time(minute // 60, minute % 60)).timestamp() * S)
                for k in range(rng.randint(3, 40)):  # ls, grep, editors: many small sessions
                    seq += 1
                    t = t0 + rng.randint(0, 59 * S)
                    if rng.random() < 0.8:
                        n = rng.randint(200, 300_000)
                        out.append(Event(source, seq, t, "access", uid=1001 + u, pid=100 + u, comm="bash",
                                         path=f"/home/u{u}/p{rng.randint(0, 30)}/f{rng.randint(0, 500)}",
                                         file_id=f"{rng.getrandbits(64):016x}", bytes_read=n, reads=1,
                                         detail={"mode": "r", "size": n, "fh": seq}))
                    elif rng.random() < 0.8:
                        n = rng.randint(200, 100_000)
                        out.append(Event(source, seq, t, "access", uid=1001 + u, pid=100 + u, comm="vim",
                                         path=f"/home/u{u}/p{rng.randint(0, 30)}/f{rng.randint(0, 500)}",
                                         file_id=f"{rng.getrandbits(64):016x}", bytes_written=n, writes=2,
                                         detail={"mode": "rw", "size": n, "entropy": rng.randint(3500, 5500),
                                                 "fh": seq}))
                    else:
                        out.append(Event(source, seq, t, rng.choice(("create", "rename", "unlink")), uid=1001 + u,
                                         pid=100 + u, comm="vim", path=f"/home/u{u}/tmp{rng.randint(0, 99)}",
                                         file_id=f"{rng.getrandbits(64):016x}"))
    out.sort(key=lambda e: e.time_ns)
    for i, e in enumerate(out):
        e.seq = i + 1
    return out


async def run(args: argparse.Namespace) -> None:
    rng = random.Random(1)
    first = datetime.date.today() - datetime.timedelta(days=args.train_days + args.days + 1)
    train = office_week(args.users, first, args.train_days, rng)
    test = office_week(args.users, first + datetime.timedelta(days=args.train_days), args.days, rng)
    decisions: list[dict] = []

    async def record(vault: str, detail: dict) -> None:
        decisions.append(detail)

    with tempfile.TemporaryDirectory() as home:
        det = Detector(Path(home), "ffffffffffffffff", record,
                       settings=Settings(min_windows=100, min_days=3, retrain_every=10**9))
        await det.start(0)
        await det.loaded.wait()
        for start in range(0, len(train), args.batch):
            det.observe(train[start:start + args.batch])
        det._close_windows(None)
        t = time.perf_counter()
        summary = await det.train()
        fit_s = time.perf_counter() - t
        for key in ("events", "observe_ns", "score_ns", "windows"):
            det.stats[key] = 0
        for start in range(0, len(test), args.batch):
            det.observe(test[start:start + args.batch])
            await asyncio.sleep(0)  # let the batched scoring run, as the daemon's loop does
        det._close_windows(None)
        st = det.stats
        n = max(1, st["events"])
        obs_us, score_us = st["observe_ns"] / n / 1000, st["score_ns"] / n / 1000
        print(f"training: {len(train)} events, {sum(u['windows'] for u in summary['users'].values())} windows, "
              f"{len(summary['users'])} users, fit {fit_s * 1000:.0f} ms")
        print(f"measured: {st['events']} events in batches of {args.batch}, {st['windows']} windows closed")
        print(f"observe (features + rules): {obs_us:.2f} µs/event")
        print(f"window scoring (batched):    {score_us:.2f} µs/event")
        total = obs_us + score_us
        print(f"total:                       {total:.2f} µs/event  (target < {TARGET_US:.0f}: "
              f"{'met' if total < TARGET_US else 'NOT met'})")
        print(f"decisions on normal weeks:   {len(decisions)}  {[d.get('rule') or 'model' for d in decisions]}")
        user, model = next(iter(det.models.items()))
        x = np.array([w.vector() for w in list(det.history[user])[-1:]])
        from sklearn.ensemble import IsolationForest
        base = np.array([w.vector() for w in det.history[user]])
        forest = IsolationForest(n_estimators=100, random_state=0).fit(base)
        for name, fn in (("sklearn score_samples", lambda: forest.score_samples(x)),
                         ("vectorised forest", lambda: model.scores(x))):
            t = time.perf_counter()
            for _ in range(20):
                fn()
            print(f"one window, {name}: {(time.perf_counter() - t) / 20 * 1e6:.0f} µs")
        await det.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--train-days", type=int, default=15)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
