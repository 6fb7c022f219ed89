#!/usr/bin/env python3
"""Replay a ledger's history through the detector, offline: what would it have flagged?

The evaluation (anomaly_eval.py) costs 20+ minutes of real mounts; tuning the detector on it
is slow.  This reads a daemon's ledger (kept with `anomaly_eval.py --keep`, or any real one),
feeds its events in order to the same `Detector` the daemon runs, with windows closed by event
time and models fitted synchronously when the daemon would fit them, and prints every decision
it would have taken.  Nothing is locked or revoked: decisions are only listed.

    python benchmarks/anomaly_replay.py HOME [HOME ...] [--from DATE] [--config anomaly.json]

HOME is a daemon home (<home>/ledger.db).  Decisions before --from (the learning weeks) are
counted apart.  With several homes (alice's and bob's daemons) the counts add up.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.anomaly.detector import GRACE_NS, Detector  # noqa: E402
from daemon.anomaly.model import Settings, fit_all  # noqa: E402
from daemon.paths import ledger_path  # noqa: E402
from daemon.respond import Decision  # noqa: E402
from daemon.anomaly.rules import Limits  # noqa: E402
from ledger import read  # noqa: E402

BATCH = 64  # events per observe() call, as the daemon stores them in small batches


class ReplayDetector(Detector):
    """The daemon's detector with decisions listed instead of carried out, and fits in line."""

    def __init__(self, home: Path, settings: Settings, limits: Limits) -> None:
        async def no_record(op: str, detail: dict[str, Any]) -> None:
            return None

        super().__init__(home, own_source="", record=no_record, settings=settings, limits=limits)
        self.loaded.set()
        self.listed: list[Decision] = []

    def _decide(self, d: Decision, policy=None) -> None:  # type: ignore[no-untyped-def]
        self.stats["decisions"] += 1
        self.listed.append(d)

    def _retrain(self) -> None:
        snapshot = {u: list(ws) for u, ws in self.history.items()}
        for u in snapshot:
            self.new_windows[u] = 0
        t0 = time.monotonic()
        self.models.update(fit_all(snapshot, self.settings))
        self.stats["fits"] += 1
        self.stats["fit_ms"] += int((time.monotonic() - t0) * 1000)


async def replay_home(home: Path, settings: Settings, limits: Limits,
                      train_at_ns: int = 0) -> tuple[ReplayDetector, int]:
    """Every event of the ledger at home through a ReplayDetector; a fit at train_at_ns as
    `umbrafs daemon train` would (the evaluation trains at the end of its learning weeks)."""
    det = ReplayDetector(home, settings, limits)
    conn = read.open_readonly(ledger_path(home))
    n = 0
    try:
        batch = []
        next_close = 0
        own: set[str] = set()  # the daemon's own sources: their events carry the daemon's time, not the mounts'
        for _, e in read.entries(conn):
            if e.op == "daemon-start":
                own.add(e.source)
            if e.source in own or e.detail.get("restore") is True:
                continue
            n += 1
            if train_at_ns and e.time_ns >= train_at_ns:
                det.observe(batch)
                batch = []
                det._close_windows(train_at_ns - GRACE_NS)
                det._retrain()
                train_at_ns = 0
            if e.time_ns >= next_close:
                if batch:
                    det.observe(batch)
                    batch = []
                det._close_windows(e.time_ns - GRACE_NS)
                next_close = e.time_ns - e.time_ns % det.window_ns + det.window_ns + GRACE_NS
            batch.append(e)
            if len(batch) >= BATCH:
                det.observe(batch)
                batch = []
        if batch:
            det.observe(batch)
        det._close_windows(None)
        det._score_pending()
    finally:
        conn.close()
    return det, n


def describe(d: Decision) -> str:
    t = datetime.datetime.fromtimestamp(d.window_start / 1e9).strftime("%a %Y-%m-%d %H:%M")
    rule = d.rule or "model"
    why = ",".join(d.drivers) if d.drivers else ",".join(f"{k}={v}" for k, v in sorted(d.features.items())[:4])
    return f"{t}  {d.user:<28} {rule:<12} score={d.score:<5} {why}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("homes", nargs="+", type=Path, help="daemon home directories")
    p.add_argument("--from", dest="since", help="first evaluated day, YYYY-MM-DD (earlier decisions: learning; "
                                                "the models are fitted anew at its start, as the evaluation does)")
    p.add_argument("--config", type=Path, help="settings and limits as in <home>/anomaly.json")
    args = p.parse_args(argv)
    raw = json.loads(args.config.read_text()) if args.config else {}
    settings, limits = Settings.from_dict(raw), Limits.from_dict(raw)
    since_ns = 0
    if args.since:
        since_ns = int(datetime.datetime.strptime(args.since, "%Y-%m-%d").timestamp() * 1e9) - 30 * 60 * 10**9
    total_events = 0
    counted: collections.Counter[str] = collections.Counter()
    user_days: set[tuple[str, datetime.date]] = set()
    t0 = time.perf_counter()
    for home in args.homes:
        det, n = asyncio.run(replay_home(home, settings, limits, since_ns))
        total_events += n
        for user, ws in det.history.items():
            for w in ws:
                if w.start_ns >= since_ns:
                    user_days.add((user, datetime.date.fromtimestamp(w.start_ns // 10**9)))
        print(f"# {home}: {n:,} events, {det.stats['windows']:,} windows, {det.stats['fits']} fits")
        for d in det.listed:
            phase = "eval " if d.window_start >= since_ns else "learn"
            counted[phase] += 1
            print(f"{phase} {describe(d)}")
    days = len(user_days)
    evals = counted["eval "]
    print(f"# {total_events:,} events in {time.perf_counter() - t0:.1f} s; decisions while learning: "
          f"{counted['learn']}; evaluated: {evals} in {days} active user-days"
          + (f" = {100 * evals / days:.2f} per 100 user-days" if days else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
