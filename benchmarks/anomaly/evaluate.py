"""The phases of the evaluation: replay the baseline weeks, then each attack on its own copy.

Replay: activities run in simulated-time order; before each, the shared clock jumps to its
start (never backwards); inside it the clock runs at real speed, so a burst's rate is the
machine's real rate (activities with a human pause inside, like an edit, are scheduled as
separate steps).  A simulated office day (~100 steps and a nightly backup) takes ~5-15 s.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.anomaly import runner, schedule
from benchmarks.anomaly.schedule import DAY, EPOCH, HOUR, MINUTE, Activity, Scenario
from benchmarks.anomaly.world import World, WorldError

log = logging.getLogger("anomaly_eval")

@dataclasses.dataclass
class Executed:
    act: Activity
    pid: int
    t_start: int
    t_end: int
    result: dict[str, Any]
    error: str = ""


@dataclasses.dataclass
class Alarm:
    """One anomaly event from a daemon's ledger."""

    who: str          # "alice" (owner daemon) or "bob" (recipient's daemon)
    idx: int
    time_ns: int
    detail: dict[str, Any]

    @property
    def user(self) -> str:
        return str(self.detail.get("user", ""))

    @property
    def action(self) -> str:
        return str(self.detail.get("action", ""))

    @property
    def rule(self) -> str:
        return str(self.detail.get("rule", "")) or "model"

    def uid(self) -> int | None:
        user = self.user
        if user.startswith("uid:"):
            return int(user[4:])
        if user.startswith("recipient:"):
            return schedule.RECIPIENT_UID
        return None


class Replayer:
    def __init__(self, world: World, n_users: int) -> None:
        self.w = world
        self.n_users = n_users
        self.executed: list[Executed] = []
        self.failures: list[Executed] = []
        self.heals: list[str] = []
        self.healing = True  # off once an attack runs: its response must stand

    def target(self, act: Activity) -> tuple[Path, Path]:
        if act.user == "bob":
            return self.w.view, self.w.view
        if act.user == "backup":
            return self.w.drive, self.w.drive
        return self.w.drive, self.w.drive / "home" / act.user

    def run(self, act: Activity, **params: Any) -> Executed:
        clock = self.w.clock
        assert clock is not None
        clock.at_least(act.t_ns)
        root, home = self.target(act)
        t0 = clock.now()
        all_params = {"repo": str(self.w.cache / "repo"), **dict(act.params), **params}
        try:
            child = runner.start(act.kind, act.uid, root, home, act.seed, all_params)
            result = child.wait()
            ex = Executed(act, child.pid, t0, clock.now(), result)
        except runner.ActivityFailed as exc:
            ex = Executed(act, 0, t0, clock.now(), {}, str(exc))
            self.failures.append(ex)
            log.info("activity failed: %s", str(exc).splitlines()[-1][:200])
            if self.healing:
                self.heal()
        self.executed.append(ex)
        return ex

    def replay(self, acts: list[Activity], *, progress: str = "") -> None:
        last_day = None
        t_real = time.monotonic()
        for act in acts:
            if act.day != last_day:
                if last_day is not None:
                    if self.healing:
                        self.heal()
                    log.info("%s day %d done (%.1f s real)", progress, last_day, time.monotonic() - t_real)
                    t_real = time.monotonic()
                last_day = act.day
            self.run(act)
        if last_day is not None:
            if self.healing:
                self.heal()
            log.info("%s day %d done (%.1f s real)", progress, last_day, time.monotonic() - t_real)

    def heal(self) -> None:
        """After a (false) alarm took effect: unlock a locked mount, remount a missing one,
        re-share a revoked share — and note it; the office must go on."""
        w = self.w
        for home, mnt, who, remount in ((w.alice_home, w.drive, "alice", w.mount_drive),
                                        (w.bob_home, w.view, "bob", w.mount_view)):
            status = w.mount_status(home, mnt)
            if status is not None and status.get("locked"):
                if w.unlock(home, mnt, who):
                    self.heals.append(f"unlocked {who}'s mount ({status.get('lock_reason', '')})")
                    continue
                # bob's grant was revoked: his mount cannot fetch keys again; start over below
                self.heals.append(f"could not unlock {who}'s mount ({status.get('lock_reason', '')})")
                w.unmount(mnt, home)
                status = None
            if status is None and not _answers(mnt):
                self.heals.append(f"remounted {who}'s mount")
                w.unmount(mnt, home)
                try:
                    remount()
                except WorldError as exc:
                    if who == "bob":
                        self.heals.append(f"re-shared the team folder with bob ({str(exc)[-80:]})")
                        reshare(w)
                        remount()
                    else:
                        raise


def _answers(mnt: Path) -> bool:
    try:
        os.listdir(mnt)
        return mnt.is_mount()
    except OSError:
        return False


def reshare(w: World) -> None:
    out = w.cli(w.alice_home, "share", w.drive / "team", "--with", "bob", *w.proxy_args(), "--threshold", "2",
                "--passphrase-file", w.passfiles["alice"], "--vault-passphrase-file", w.passfiles["alice"],
                "--json").stdout
    w.share_id = json.loads(out)["id"]


def alarms(w: World, since: dict[str, int]) -> list[Alarm]:
    out = []
    for who, home in (("alice", w.alice_home), ("bob", w.bob_home)):
        for idx, e in w.ledger_events(home, "anomaly", since.get(who, 0)):
            out.append(Alarm(who, idx, e.time_ns, dict(e.detail)))
    return out


def ledger_marks(w: World) -> dict[str, int]:
    return {"alice": w.ledger_size(w.alice_home), "bob": w.ledger_size(w.bob_home)}


def trigger_event(w: World, alarm: Alarm) -> Any:
    src, seq = alarm.detail.get("trigger_source"), alarm.detail.get("trigger_seq")
    if not src:
        return None
    home = w.alice_home if alarm.who == "alice" else w.bob_home
    return w.ledger_event(home, str(src), int(seq))


def attribute(alarm: Alarm, executed: list[Executed], w: World) -> Executed | None:
    """The activity the alarm fired on: same uid, running at the trigger event's time."""
    uid = alarm.uid()
    trig = trigger_event(w, alarm)
    t = trig.time_ns if trig is not None else alarm.detail.get("window_end", alarm.time_ns)
    best = None
    for ex in executed:
        if uid is not None and ex.act.uid != uid:
            continue
        if ex.t_start - MINUTE <= t <= ex.t_end + MINUTE:
            best = ex
    return best


# ------------------------------------------------------------------ baseline


@dataclasses.dataclass
class BaselineResult:
    train_days: int
    eval_days: int
    user_days: int
    activities: dict[str, int]
    alarms_train: list[Alarm]
    alarms_eval: list[tuple[Alarm, str]]   # (alarm, label of the activity it fired on)
    heals: list[str]
    failures: int
    real_s: float
    events: int
    train_reply: str
    cost: dict[str, Any]


def baseline(w: World, *, train_days: int, eval_days: int, n_users: int, seed: int,
             cpu: Callable[[int | None], float]) -> BaselineResult:
    """Normal weeks: the first train_days teach the daemons the users' habits (then `daemon
    train`); alarms in the days after are false alarms (every activity there is benign)."""
    t_real = time.monotonic()
    days = train_days + eval_days
    acts = schedule.normal_days(0, days, n_users, seed)
    looks = schedule.lookalikes(train_days, eval_days, n_users, seed)
    train = [a for a in acts if a.day < train_days]
    test = sorted([a for a in acts if a.day >= train_days] + looks, key=lambda a: a.t_ns)
    rep = Replayer(w, n_users)
    w.start_all(clock_ns=EPOCH - HOUR)
    rep.replay(train, progress="training")
    assert w.clock is not None
    w.clock.at_least(EPOCH + train_days * DAY - 30 * MINUTE)
    time.sleep(1.0)  # let the daemons store the last events
    replies = []
    for who, home in (("alice", w.alice_home), ("bob", w.bob_home)):
        proc = w.cli(home, "daemon", "train", "--json", check=False, timeout=600)
        replies.append(f"{who}: {(proc.stdout or proc.stderr).strip()[:400]}")
    marks = ledger_marks(w)
    train_alarms = alarms(w, {})
    pids = [w.daemon_pid(w.alice_home), w.daemon_pid(w.bob_home)]
    cpu0 = sum(cpu(p) for p in pids)
    rep.replay(test, progress="evaluation")
    w.clock.advance(5 * 60)
    time.sleep(1.5)
    cpu1 = sum(cpu(p) for p in pids)
    eval_alarms = alarms(w, marks)
    labelled = []
    for a in eval_alarms:
        ex = attribute(a, rep.executed, w)
        labelled.append((a, f"{ex.act.label}:{ex.act.kind}" if ex else "unattributed"))
    sizes = ledger_marks(w)
    eval_events = sum(sizes.values()) - sum(marks.values())
    cost = scoring_cost(w, cpu1 - cpu0, eval_events)
    res = BaselineResult(train_days, eval_days, schedule.user_days(test),
                         schedule.label_counts(train + test), train_alarms, labelled, rep.heals,
                         len(rep.failures), time.monotonic() - t_real, sum(sizes.values()),
                         "\n".join(replies), cost)
    for f in rep.failures[:10]:
        log.warning("baseline activity failed: %s %s: %s", f.act.user, f.act.kind, f.error[-300:])
    return res


def scoring_cost(w: World, cpu_s: float, events: int) -> dict[str, Any]:
    """The daemons' own counters (`daemon status --json`: detector.us_per_event = features + rules
    + model scoring, per event observed since the daemon started; fits counted apart), and
    their whole CPU time per stored event over the evaluated days (ledger included: an upper bound)."""
    out: dict[str, Any] = {"events": 0, "scoring_us": None, "fit_ms": 0, "fits": 0, "cpu_us": None}
    total_ns = 0.0
    for home in (w.alice_home, w.bob_home):
        proc = w.cli(home, "daemon", "status", "--json", check=False)
        try:
            det = json.loads(proc.stdout).get("detector")
        except (ValueError, AttributeError):
            continue
        if isinstance(det, dict) and det.get("events"):
            out["events"] += det["events"]
            total_ns += float(det.get("us_per_event", 0)) * 1000 * det["events"]
            out["fit_ms"] += det.get("fit_ms", 0)
            out["fits"] += det.get("fits", 0)
    if out["events"]:
        out["scoring_us"] = total_ns / out["events"] / 1000
    if events:
        out["cpu_us"] = cpu_s * 1e6 / events
        out["cpu_events"] = events
    return out


# ------------------------------------------------------------------ attacks


@dataclasses.dataclass
class ScenarioResult:
    name: str
    detected: bool = False
    rule: str = ""
    action: str = ""
    action_ms: float | None = None       # daemon: trigger event's arrival -> action in effect (real)
    response_ms: float | None = None     # attacker: its start -> first refused request (real)
    detect_sim_s: float | None = None    # simulated seconds from attack start to the anomaly's window end
    bytes_read: int = 0
    files_changed: int = 0
    files_total: int = 0
    not_restorable: int | None = None
    not_restorable_first: int | None = None  # after the first restore run, when a second was needed
    restore_summary: str = ""
    pre_alarms: int = 0
    note: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _attack_day(baseline_days: int) -> int:
    day = baseline_days
    while not schedule.is_office_day(day):
        day += 1
    return day


def run_scenario(w: World, sc: Scenario, *, baseline_days: int, n_users: int, seed: int,
                 context: bool = True) -> ScenarioResult:
    res = ScenarioResult(sc.name)
    w.rollback()
    day = _attack_day(baseline_days)
    day_ns = EPOCH + day * DAY
    attack_t = day_ns + int(sc.hour * HOUR)
    w.start_all(clock_ns=day_ns)
    start_marks = ledger_marks(w)
    rep = Replayer(w, n_users)
    people = schedule.users(n_users)
    if sc.user_index is None:
        uid, user = schedule.RECIPIENT_UID, "bob"
    else:
        user, uid, _ = people[sc.user_index % len(people)]
    # The day so far, for context (the daemon sees an ordinary morning before the attack).
    if context and sc.kind != "slow_exfil":
        rep.replay([a for a in schedule.normal_days(day, 1, n_users, seed + day) if a.t_ns < attack_t - 2 * MINUTE],
                   progress=f"{sc.name}: before the attack,")
    marks = ledger_marks(w)
    res.pre_alarms = len(alarms(w, start_marks))  # false alarms in the ordinary hours before the attack
    destructive = sc.kind in ("ransomware", "mass_delete")
    before = _home_hashes(w, user) if destructive else {}
    res.files_total = len(before)
    assert w.clock is not None
    w.clock.at_least(attack_t)
    t_attack = w.clock.now()
    rep.healing = False
    params = dict(sc.params)
    attacker_pid = 0
    exfil_hit = None
    if sc.kind == "slow_exfil":
        attacker_pid, exfil_hit = _slow_exfil(w, rep, sc, res, day, user, uid, n_users, seed, marks)
    else:
        act = Activity(attack_t, user, uid, sc.kind, schedule.ATTACK, seed, tuple(params.items()))
        ex = rep.run(act)
        if ex.error:
            res.note = ex.error[-200:]
        attacker_pid = ex.pid
        r = ex.result
        res.bytes_read = int(r.get("bytes_read", 0))
        res.files_changed = int(r.get("files_changed", 0))
        res.response_ms = r.get("response_ms")
        res.extra = {k: r[k] for k in ("response_errno", "duration_ms", "files_touched") if k in r}
    # Wait for the daemons' verdict (a window may close only after the attack).
    if sc.kind == "slow_exfil":
        found = [exfil_hit] if exfil_hit is not None else []
    else:
        found = _wait_alarms(w, marks, uid, timeout=3.0)
        if not found:
            w.clock.advance(3 * 60)
            found = _wait_alarms(w, marks, uid, timeout=5.0)
    if found:
        first = min(found, key=lambda a: a.idx)
        res.detected = True
        res.rule, res.action = first.rule, first.action
        ms = first.detail.get("action_ms")
        res.action_ms = float(ms) if isinstance(ms, int) else None
        end = first.detail.get("window_end") or first.time_ns
        res.detect_sim_s = max(0.0, (int(end) - t_attack) / 1e9)
    if destructive:
        _restore_and_check(w, res, before, user, attacker_pid, t_attack)
    w.stop_all()
    return res


def _slow_exfil(w: World, rep: Replayer, sc: Scenario, res: ScenarioResult, day: int, user: str, uid: int,
                n_users: int, seed: int, marks: dict[str, int]) -> tuple[int, Alarm | None]:
    """A little extra every hour, for days, among the office's normal work."""
    hours = int(sc.param("hours", 72))
    start = EPOCH + day * DAY
    normal = schedule.normal_days(day, hours // 24 + 1, n_users, seed + day)
    slices = [Activity(start + h * HOUR + 17 * MINUTE, user, uid, "exfil_slice", schedule.ATTACK, seed + h,
                       tuple(dict(sc.params).items())) for h in range(hours)]
    offset = 0
    pid = 0
    attack: list[Executed] = []
    seen: set[tuple[str, int]] = set()
    false_alarms = 0
    hit = None
    for act in sorted(normal + slices, key=lambda a: a.t_ns):
        if act.kind != "exfil_slice":
            rep.run(act)
        else:
            ex = rep.run(act, offset=offset)
            attack.append(ex)
            pid = ex.pid or pid
            offset = int(ex.result.get("next_offset", offset))
            res.bytes_read += int(ex.result.get("bytes_read", 0))
            if ex.result.get("response_errno"):
                res.extra["response_errno"] = ex.result["response_errno"]
        hit = None
        for a in alarms(w, marks):
            if (a.who, a.idx) in seen:
                continue
            seen.add((a.who, a.idx))
            if _caused_by(w, a, attack):
                hit = a
                break
            false_alarms += 1  # an alarm on the office's normal work meanwhile: take it back, go on
            rep.heal()
        if hit is not None:
            res.extra["hours_until_response"] = round((act.t_ns - start) / HOUR, 1)
            break
        if res.extra.pop("response_errno", None):
            # refused, but no alarm of ours: a false alarm on someone else's work locked the
            # mount (its anomaly event may land a moment after the lock); take it back, go on
            time.sleep(1.0)
            for a in alarms(w, marks):
                if (a.who, a.idx) not in seen:
                    seen.add((a.who, a.idx))
                    if _caused_by(w, a, attack):
                        hit = a
                    else:
                        false_alarms += 1
            if hit is not None:
                res.extra["hours_until_response"] = round((act.t_ns - start) / HOUR, 1)
                break
            rep.heal()
            res.extra["refused_by_false_alarms"] = res.extra.get("refused_by_false_alarms", 0) + 1
    res.extra["hours_run"] = hours
    res.extra["false_alarms_meanwhile"] = false_alarms
    return pid, hit


def _caused_by(w: World, alarm: Alarm, attack: list[Executed]) -> bool:
    """Did this alarm fire on the attacker's own activity?  By the triggering event's pid, or (a
    model decision on a window) by the window overlapping an attack step of the same user."""
    pids = {e.pid for e in attack}
    trig = trigger_event(w, alarm)
    if trig is not None:
        return trig.pid in pids
    lo = int(alarm.detail.get("window_start", 0))
    hi = int(alarm.detail.get("window_end", 0))
    return any(alarm.uid() == e.act.uid and lo <= e.t_end and e.t_start <= hi for e in attack)


def _wait_alarms(w: World, marks: dict[str, int], uid: int, timeout: float) -> list[Alarm]:
    deadline = time.monotonic() + timeout
    while True:
        found = [a for a in alarms(w, marks) if a.uid() == uid]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)


def _home_hashes(w: World, user: str) -> dict[str, str]:
    """The attacked home, byte for byte, read through a second read-only mount that records nothing
    (the drive has flushed: every writer closed its files)."""
    w.mount(w.alice_home, "alice", w.check, "--read-only", "--audit", "off")
    try:
        return w.hash_tree(w.check / "home" / user)
    finally:
        w.unmount(w.check, w.alice_home)


def _restore_and_check(w: World, res: ScenarioResult, before: dict[str, str], user: str, pid: int, since: int) -> None:
    """`umbrafs restore` what the attacker's pid did since the attack began; if that run stops
    short (exit != 0), run it once more, as an administrator would; then compare every file of the
    attacked home with its state before the attack, byte for byte."""
    summaries = []
    for attempt in range(2):
        # Named by its vault: the live (locked) mount of it is found from the mount records.
        proc = w.cli(w.alice_home, "restore", w.vault, "--since", str(since - 1_000_000_000), "--pid", str(pid),
                     "--unlock", "--json", "--passphrase-file", w.passfiles["alice"], check=False, timeout=900)
        summary = ""
        for line in proc.stdout.splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "summary" in obj:
                summary = json.dumps(obj["summary"], sort_keys=True)
            elif isinstance(obj, dict) and obj.get("result") not in (None, "ok") and attempt == 0:
                problems = res.extra.setdefault("restore_problems", [])
                if len(problems) < 2:
                    problems.append(f"{obj.get('step')} {obj.get('path')}: {str(obj.get('result'))[:100]}")
        err = (proc.stderr or proc.stdout).strip().splitlines()
        summaries.append(f"exit {proc.returncode} {summary or (err[-1][:200] if err else '')}")
        if proc.returncode == 0:
            break
        if attempt == 0:
            res.not_restorable_first, _ = _count_unrestored(w, before, user)
    res.restore_summary = " | then ".join(summaries)
    res.extra["restore_runs"] = len(summaries)
    res.not_restorable, after = _count_unrestored(w, before, user)
    res.extra["left_over"] = len(set(after) - set(before))


def _count_unrestored(w: World, before: dict[str, str], user: str) -> tuple[int, dict[str, str]]:
    """Files of the attacked home that are missing or differ from before the attack (read through
    a separate read-only mount after alice's mount has flushed), and the hashes seen."""
    w.unmount(w.drive, w.alice_home)
    try:
        after = _home_hashes(w, user)
    finally:
        w.mount_drive()
    return sum(1 for path, digest in before.items() if after.get(path) != digest), after
