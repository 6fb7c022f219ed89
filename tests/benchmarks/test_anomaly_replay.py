"""benchmarks/anomaly_replay.py on a real daemon's ledger: offline, it finds what the daemon found."""
from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

from tests.conftest import Env
from tests.daemon import conftest as daemon_fixtures
from tests.daemon.conftest import Daemon, wait_for
from tests.daemon.test_detector import MiB, S, anomalies, local_ns, office_days, train, tuned  # noqa: F401

aenv = daemon_fixtures.aenv  # the environment `tuned` builds on; its daemon is stopped at the end
REPLAY = Path(__file__).resolve().parents[2] / "benchmarks" / "anomaly_replay.py"


def test_replay_lists_the_3am_read_the_daemon_flagged(tuned: Env) -> None:  # noqa: F811
    d = Daemon(tuned)
    d.start()
    f, first = office_days(tuned, 5, seed=5, ago=12)
    train(tuned)
    night = first + datetime.timedelta(days=6)
    t = local_ns(night, 3, 7)
    f.send([f.event(t + k * S, "access", f"/projects/p{k % 10}/doc{k}.odt", file_id=f"{k:016x}", comm="curl",
                    bytes_read=MiB, reads=8, detail={"mode": "r", "size": MiB}) for k in range(10)])
    f.send([f.event(local_ns(night, 9, 0), "access", "/projects/p0/doc1.odt", bytes_read=1000,
                    detail={"mode": "r", "size": 1000})])
    wait_for(lambda: anomalies(tuned), "the daemon's own alert")
    f.close()
    d.stop()

    out = subprocess.run([sys.executable, str(REPLAY), str(tuned.home), "--config", str(tuned.home / "anomaly.json"),
                          "--from", (first + datetime.timedelta(days=5)).isoformat()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    listed = [line for line in out.splitlines() if not line.startswith("#")]
    assert len(listed) == 1, out
    assert listed[0].startswith("eval ") and f"{night.isoformat()} 03:07" in listed[0] and " model " in listed[0]
    assert "evaluated: 1 in" in out and "decisions while learning: 0" in out
