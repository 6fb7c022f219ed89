"""wire/clock.py: real time by default; a clock file sets a simulated time and speed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from wire.clock import write_clock_file

PROBE = """
import json, sys, time
from wire import clock
from wire.clock import now_ns  # bound before the clock is chosen, as the mount's modules do
if len(sys.argv) > 2:
    clock.use_clock_file(sys.argv[2])
out = [now_ns()]
time.sleep(0.2)
out.append(now_ns())
open(sys.argv[1] + ".go", "w").close()
while not __import__("os").path.exists(sys.argv[1] + ".moved"):
    time.sleep(0.01)
time.sleep(0.03)
out.append(now_ns())
print(json.dumps(out))
"""


def _probe(clock: Path | None, then=None, env: dict[str, str] | None = None) -> list[int]:  # type: ignore[no-untyped-def]
    marker = str(clock or Path(os.environ.get("TMPDIR", "/tmp")) / f"clockprobe{os.getpid()}")
    args = [marker] if clock is None else [marker, str(clock)]
    proc = subprocess.Popen([sys.executable, "-c", PROBE, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 30
    while not os.path.exists(marker + ".go"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    if then is not None:
        then()
    Path(marker + ".moved").touch()
    out, _ = proc.communicate(timeout=30)
    for suffix in (".go", ".moved"):
        os.unlink(marker + suffix)
    return json.loads(out)


def test_real_time_without_a_clock_file(tmp_path: Path) -> None:
    """No environment variable moves the clock (the old $UMBRAFS_CLOCK_FILE is not read)."""
    planted = tmp_path / "clock.json"
    write_clock_file(planted, 10**18)
    before = time.time_ns()
    first, second, third = _probe(None, env={"UMBRAFS_CLOCK_FILE": str(planted)})
    assert before <= first <= second <= third <= time.time_ns()
    assert second - first >= 150_000_000


def test_simulated_time_speed_and_a_moved_clock(tmp_path: Path) -> None:
    clock = tmp_path / "clock.json"
    base = 2_000_000_000 * 10**9
    write_clock_file(clock, base, speed=3600.0)  # an hour per second

    def move() -> None:
        write_clock_file(clock, base + 10**18)

    first, second, third = _probe(clock, move)
    assert base <= first < base + 3600 * 10 * 10**9
    assert 0.15 * 3600e9 <= second - first <= 5 * 3600e9  # 0.2 s real ≈ 12 min simulated
    assert base + 10**18 <= third < base + 10**18 + 3600 * 10 * 10**9  # the running process followed the file
    assert json.loads(clock.read_text())["speed"] == 1.0  # write_clock_file replaced the whole setting


def test_a_damaged_clock_file_keeps_the_last_good_setting(tmp_path: Path) -> None:
    from wire.clock import FileClock

    clock = tmp_path / "clock.json"
    write_clock_file(clock, 10**18)
    reader = FileClock(str(clock))
    assert 10**18 <= reader.now_ns() < 10**18 + 60 * 10**9
    clock.write_text("{not json")
    time.sleep(0.02)
    assert 10**18 <= reader.now_ns() < 10**18 + 60 * 10**9
    clock.unlink()
    time.sleep(0.02)
    assert 10**18 <= reader.now_ns() < 10**18 + 60 * 10**9
    assert abs(FileClock(str(tmp_path / "missing.json")).now_ns() - time.time_ns()) < 60 * 10**9
