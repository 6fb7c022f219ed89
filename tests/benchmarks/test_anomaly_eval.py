"""The anomaly evaluation: its schedule generator (pure, fast) and one smoke run of
`benchmarks/anomaly_eval.py --quick` through real mounts, daemons and proxies (slow)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from benchmarks.anomaly import schedule
from benchmarks.anomaly.schedule import DAY, EPOCH, HOUR, LOOKALIKE, NORMAL

REPO = Path(__file__).resolve().parents[2]


def test_schedule_is_deterministic_sorted_and_labelled() -> None:
    a = schedule.normal_days(0, 14, 3, seed=5)
    assert a == schedule.normal_days(0, 14, 3, seed=5)
    assert a != schedule.normal_days(0, 14, 3, seed=6)
    assert [x.t_ns for x in a] == sorted(x.t_ns for x in a)
    assert {x.label for x in a} == {NORMAL, LOOKALIKE}           # office work + the nightly backup
    assert {x.kind for x in a if x.label == LOOKALIKE} == {"backup"}
    assert {x.uid for x in a if x.user != "backup" and x.user != "bob"} == {1001, 1002, 1003}
    assert all(x.uid == schedule.BACKUP_UID for x in a if x.kind == "backup")
    assert all(x.uid == schedule.RECIPIENT_UID and x.kind == "share_read" for x in a if x.user == "bob")


def test_weekends_are_quiet_and_the_backup_runs_every_night_at_two() -> None:
    acts = schedule.normal_days(0, 14, 3, seed=1)
    backups = [a for a in acts if a.kind == "backup"]
    assert sorted(a.day for a in backups) == list(range(14))
    assert all(2.0 <= schedule.hour_of(a.t_ns) < 2.05 for a in backups)
    weekend = [a for a in acts if not schedule.is_office_day(a.day)]
    assert weekend and all(a.kind == "backup" for a in weekend)
    assert schedule.is_office_day(0) and not schedule.is_office_day(5) and not schedule.is_office_day(6)


def test_office_hours_follow_each_profile() -> None:
    acts = [a for a in schedule.normal_days(0, 28, 3, seed=2) if a.label == NORMAL and a.user != "bob"]
    by_user: dict[str, list[float]] = {}
    for a in acts:
        by_user.setdefault(a.user, []).append(schedule.hour_of(a.t_ns))
    for name, _uid, prof in schedule.users(3):
        hours = by_user[name]
        # arrival/departure jitter and the minutes an edit stays open, nothing at night
        assert min(hours) > prof.arrive_h - 2.0 and max(hours) < prof.leave_h + 2.0, name
        assert len(hours) > 15 * 20 * 0.5  # ~20 office days, many activities a day
    assert schedule.hour_of(min(a.t_ns for a in acts if a.user == "cho")) < schedule.hour_of(
        min(a.t_ns for a in acts if a.user == "ben"))  # the designer starts before the developer


def test_an_edit_is_an_open_then_saves_of_the_same_document_minutes_later() -> None:
    acts = schedule.normal_days(0, 7, 3, seed=3)
    opens = [a for a in acts if a.kind == "open_doc"]
    assert opens
    for o in opens:
        saves = [a for a in acts if a.kind == "save_doc" and a.seed == o.seed and a.user == o.user]
        assert 1 <= len(saves) <= 2
        assert all(o.t_ns + 60 * 10**9 <= s.t_ns <= o.t_ns + 2100 * 10**9 for s in saves)


def test_lookalikes_fall_in_the_evaluated_office_days() -> None:
    looks = schedule.lookalikes(14, 14, 3, seed=1)
    assert sorted(a.kind for a in looks) == ["git_clone", "photo_import", "tar_folder"]
    four_weeks = schedule.lookalikes(14, 28, 3, seed=1)  # once per two weeks, in each half
    assert sorted(a.kind for a in four_weeks) == sorted(["git_clone", "photo_import", "tar_folder"] * 2)
    assert {a.day < 28 for a in four_weeks} == {True, False}
    for a in looks:
        assert a.label == LOOKALIKE and 14 <= a.day < 28 and schedule.is_office_day(a.day)
        assert 9 <= schedule.hour_of(a.t_ns) <= 17
    assert {a.user for a in looks} == {"ana", "ben", "cho"}


def test_user_days_and_label_counts() -> None:
    acts = schedule.normal_days(7, 7, 2, seed=4)
    days = {(a.user, a.day) for a in acts if a.label == NORMAL}
    assert schedule.user_days(acts) == len(days) <= 5 * 3  # 2 users + bob, 5 office days
    counts = schedule.label_counts(acts)
    assert counts[LOOKALIKE] == 7 and counts[NORMAL] == len(acts) - 7
    assert all(EPOCH + 7 * DAY <= a.t_ns < EPOCH + 14 * DAY + HOUR for a in acts)


def test_every_attack_of_the_issue_is_a_scenario() -> None:
    names = [s.name for s in schedule.scenarios()]
    assert names == ["download-3am", "download-3am-disk", "slow-exfil", "ransomware-40", "ransomware-400",
                     "mass-delete", "share-pull"]
    by = {s.name: s for s in schedule.scenarios()}
    assert by["download-3am"].hour == 3.0 and by["download-3am"].param("mib") == 500
    assert by["download-3am"].param("rate_mib_s") == 100 and by["download-3am-disk"].param("rate_mib_s") == 0
    assert by["ransomware-40"].param("rate") == 40 and by["ransomware-400"].param("rate") == 400
    assert by["share-pull"].user_index is None
    assert schedule.scenarios(quick=True)[0].param("mib") < 500


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (allow_other, setuid workers)")
def test_quick_evaluation_runs_end_to_end_and_cleans_up() -> None:
    # not tmp_path: pytest makes it 0700, and the office workers run as other uids
    work = Path(tempfile.mkdtemp(prefix="umbrafs-anomaly-test-", dir="/var/tmp")) / "eval"
    work.parent.chmod(0o755)
    try:
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "anomaly_eval.py"), "--quick",
                               "--workdir", str(work)], capture_output=True, text=True, timeout=600, cwd=REPO)
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for name in ("download-3am", "download-3am-disk", "ransomware-40", "share-pull"):  # what --quick runs
        assert re.search(rf"^{name}\s+(yes|NO)\s", out, re.M), out
    # ransomware at 40 files/s is the one attack a rule must always catch, and restore must undo it
    row = re.search(r"^ransomware-40\s+yes\s.*$", out, re.M)
    assert row and "0 files unrecoverable: PASS" in row.group(0), out
    assert "false alarms:" in out and "scoring cost:" in out
    with open("/proc/self/mountinfo") as f:
        assert str(work) not in f.read()  # every mount gone
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(work) not in ps  # no daemon, mount or proxy of ours left running
