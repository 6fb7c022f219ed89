#!/usr/bin/env python3
"""End-to-end event throughput: mount-side sink → unix socket → daemon → ledger.

Starts a real daemon (its own identity and state directory under a temporary
directory), pushes N events through the same AuditSink a mount uses, and
reports: the cost of emit() on the FUSE request path (µs per event), and the
sustained rate at which the daemon stores them (events/s, target ≥ 20,000).

    python benchmarks/daemon_bench.py [--events 200000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.paths import ledger_path, running_pid  # noqa: E402
from wire.sink import AuditSink  # noqa: E402
from proxy import keyring as identity  # noqa: E402

TARGET_RATE = 20_000
PASSPHRASE = "bench passphrase"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="umbrafs-daemon-bench-"))
    home = tmp / "home"
    pid = None
    try:
        identity.create(home, "bench", PASSPHRASE.encode(), identity.KdfParams(memory_kib=1024, iterations=1, lanes=1))
        env = {**os.environ, "UMBRAFS_PASSPHRASE": PASSPHRASE}
        subprocess.run([sys.executable, "-m", "cli", "--home", str(home), "daemon", "start"], check=True, env=env,
                       cwd=REPO, capture_output=True)
        pid = running_pid(home)
        sink = AuditSink(home, "0" * 16, required=True)
        t0 = time.perf_counter()
        for i in range(args.events):
            sink.emit("access", uid=1000, pid=os.getpid(), path=f"/projects/report-{i % 5000}.txt",
                      file_id="ab" * 16, bytes_read=4096, reads=1, opened_ns=time.time_ns())
        t_emit = time.perf_counter() - t0
        while sink.pending and time.perf_counter() - t0 < 600:
            time.sleep(0.01)
        t_all = time.perf_counter() - t0
        sink.close()
        conn = sqlite3.connect(f"file:{ledger_path(home)}?mode=ro", uri=True)
        stored = conn.execute("select count(*) from entries").fetchone()[0]
        conn.close()
        rate = args.events / t_all
        print(f"events pushed:            {args.events}  (stored in the ledger: {stored}, incl. daemon events)")
        print(f"emit() on the request path: {t_emit / args.events * 1e6:8.1f} µs/event")
        print(f"sustained, end to end:    {rate:10,.0f} events/s   target ≥ {TARGET_RATE:,}  "
              f"{'OK' if rate >= TARGET_RATE else 'BELOW TARGET'}")
        return 0
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while running_pid(home) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
