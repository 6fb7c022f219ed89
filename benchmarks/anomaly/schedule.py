"""Labelled workload schedules for the anomaly evaluation (pure: no I/O, deterministic per seed).

A schedule is a list of :class:`Activity` in simulated time.  Every activity carries a label:
``normal`` (office work), ``lookalike`` (benign but unusual: the nightly backup, a big git
clone, a photo import, a tar of a folder) or ``attack``.  The harness replays them in order,
jumping the shared fake clock to each activity's start, so a simulated day costs seconds of
real time while the rate *inside* an activity is the machine's real rate (clock speed 1).

Simulated time is UTC; a simulated week starts on a Monday.  Office days are Monday to
Friday; weekends are quiet (only the nightly backup runs).
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import random
from collections.abc import Sequence

NS = 1_000_000_000
MINUTE = 60 * NS
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# A Monday, 00:00 UTC: simulated time starts here (weeks before the real "now" so nothing
# the daemon computes from real time lines up with it by accident).
EPOCH = int(datetime.datetime(2026, 9, 7, tzinfo=datetime.timezone.utc).timestamp()) * NS

NORMAL, LOOKALIKE, ATTACK = "normal", "lookalike", "attack"
BACKUP_UID = 0          # the nightly backup runs as root, as restic/borg jobs usually do
RECIPIENT_UID = 2001    # bob, on his share mount (his own machine in real life)

# Office work.  Each kind is implemented by benchmarks/anomaly/actions.py.
NORMAL_KINDS = ("edit_doc", "view", "compile", "grep", "copy", "new_doc", "cleanup", "team_read")
# Activities with a human pause inside are split into steps at their own simulated times (one
# person's pause must not hold up the others): an edit is open_doc, then save_doc (same seed,
# so the same document) minutes later, sometimes saved twice; a viewing session may open a
# second file.


def _steps(t: int, user: str, uid: int, kind: str, seed: int, rng: random.Random) -> list["Activity"]:
    if kind == "edit_doc":
        out = [Activity(t, user, uid, "open_doc", NORMAL, seed)]
        t += int(rng.uniform(60, 1500) * NS)
        out.append(Activity(t, user, uid, "save_doc", NORMAL, seed))
        if rng.random() < 0.4:
            out.append(Activity(t + int(rng.uniform(60, 600) * NS), user, uid, "save_doc", NORMAL, seed))
        return out
    if kind in ("view", "share_read", "team_read"):
        out = [Activity(t, user, uid, kind, NORMAL, seed)]
        while rng.random() < 0.35:
            t += int(rng.uniform(30, 400) * NS)
            out.append(Activity(t, user, uid, kind, NORMAL, rng.getrandbits(32)))
        return out
    return [Activity(t, user, uid, kind, NORMAL, seed)]


@dataclasses.dataclass(frozen=True)
class Profile:
    """One person's habits: when they work and what they mostly do."""

    name: str
    arrive_h: float          # typical arrival, hours after midnight
    leave_h: float           # typical departure
    per_day: float           # mean activities per office day
    mix: dict[str, float]    # kind -> weight


PROFILES: tuple[Profile, ...] = (
    # A writer: documents all day, PDFs, a copy now and then.
    Profile("ana", 8.0, 17.0, 26, {"edit_doc": 8, "view": 5, "new_doc": 2, "copy": 1.5, "team_read": 2, "cleanup": 0.5}),
    # A developer: builds, greps, edits sources, late hours.
    Profile("ben", 9.5, 18.5, 22, {"compile": 4, "grep": 4, "edit_doc": 5, "view": 1, "copy": 0.5, "cleanup": 1, "team_read": 1}),
    # A designer: images, copies, fewer but bigger files, early.
    Profile("cho", 7.5, 16.0, 16, {"view": 7, "copy": 3, "edit_doc": 3, "new_doc": 1, "team_read": 1.5, "cleanup": 0.5}),
)


@dataclasses.dataclass(frozen=True)
class Activity:
    t_ns: int                # simulated start
    user: str                # profile name, "backup" or "bob"
    uid: int
    kind: str                # what to run (actions.py)
    label: str               # NORMAL, LOOKALIKE or ATTACK
    seed: int                # for the action's own random choices
    params: tuple[tuple[str, object], ...] = ()

    @property
    def day(self) -> int:
        return (self.t_ns - EPOCH) // DAY

    def param(self, name: str, default: object = None) -> object:
        return dict(self.params).get(name, default)


def uid_of(index: int) -> int:
    return 1001 + index


def users(n: int) -> list[tuple[str, int, Profile]]:
    """n office users: the three profiles, then variants of them with shifted hours."""
    out = []
    for i in range(n):
        base = PROFILES[i % len(PROFILES)]
        shift = (i // len(PROFILES)) * 0.75
        prof = dataclasses.replace(base, name=f"{base.name}{i // len(PROFILES) or ''}",
                                   arrive_h=base.arrive_h + shift, leave_h=base.leave_h + shift)
        out.append((prof.name, uid_of(i), prof))
    return out


def is_office_day(day: int) -> bool:
    return day % 7 < 5


def _office_time(rng: random.Random, prof: Profile) -> float:
    """An hour of the day with a morning and an afternoon peak and a quiet lunch."""
    span = prof.leave_h - prof.arrive_h
    while True:
        peak = prof.arrive_h + span * (0.25 if rng.random() < 0.55 else 0.72)
        h = rng.gauss(peak, span * 0.12)
        lunch = prof.arrive_h + span * 0.5
        if prof.arrive_h - 0.3 <= h <= prof.leave_h + 0.5 and not (abs(h - lunch) < 0.4 and rng.random() < 0.7):
            return h


def _weighted(rng: random.Random, mix: dict[str, float]) -> str:
    kinds = sorted(mix)
    return rng.choices(kinds, weights=[mix[k] for k in kinds])[0]


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth; mean is small
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def normal_days(first_day: int, days: int, n_users: int, seed: int, *, recipient: bool = True,
                backup: bool = True) -> list[Activity]:
    """Office days for n users (and bob's reads of the team share), plus the nightly backup."""
    rng = random.Random(seed)
    acts: list[Activity] = []
    people = users(n_users)
    for day in range(first_day, first_day + days):
        base = EPOCH + day * DAY
        if backup:
            jitter = rng.randint(0, 90) * NS  # cron fires at 02:00, a few seconds late
            acts.append(Activity(base + 2 * HOUR + jitter, "backup", BACKUP_UID, "backup", LOOKALIKE, rng.getrandbits(32)))
        if not is_office_day(day):
            continue
        for name, uid, prof in people:
            if rng.random() < 0.04:  # a day off now and then
                continue
            day_shift = rng.gauss(0, 0.3)
            for _ in range(max(3, _poisson(rng, prof.per_day))):
                h = _office_time(rng, prof) + day_shift
                acts += _steps(base + int(h * HOUR), name, uid, _weighted(rng, prof.mix), rng.getrandbits(32), rng)
        if recipient:
            for _ in range(_poisson(rng, 3)):
                h = rng.uniform(9.0, 17.0)
                acts += _steps(base + int(h * HOUR), "bob", RECIPIENT_UID, "share_read", rng.getrandbits(32), rng)
    acts.sort(key=lambda a: a.t_ns)
    return acts


def lookalikes(first_day: int, days: int, n_users: int, seed: int) -> list[Activity]:
    """Each benign look-alike once per two weeks (at least once), on office days within
    [first_day, first_day + days), in the afternoon or morning of the person who would do it."""
    rng = random.Random(seed ^ 0x5EED)
    office = [d for d in range(first_day, first_day + days) if is_office_day(d)] or [first_day]
    people = users(n_users)
    dev = people[1 % len(people)]
    designer = people[2 % len(people)]
    writer = people[0]
    picks = [
        ("git_clone", dev, 14.3, {"files": 2000}),
        ("photo_import", designer, 10.6, {"files": 300}),
        ("tar_folder", writer, 16.2, {}),
    ]
    rounds = max(1, days // 14)
    acts = []
    for r in range(rounds):
        chunk = office[r * len(office) // rounds:(r + 1) * len(office) // rounds] or office
        for i, (kind, (name, uid, _prof), hour, params) in enumerate(picks):
            day = chunk[(i * 3 + 1) % len(chunk)]
            t = EPOCH + day * DAY + int((hour + rng.uniform(-0.5, 0.5)) * HOUR)
            acts.append(Activity(t, name, uid, kind, LOOKALIKE, rng.getrandbits(32), tuple(sorted(params.items()))))
    return sorted(acts, key=lambda a: a.t_ns)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One attack, run on its own copy of the world after the baseline is learned."""

    name: str
    kind: str
    user_index: int | None   # which office user attacks (None: bob on his share mount)
    hour: float              # simulated start, hours after midnight of the first day after the baseline
    params: tuple[tuple[str, object], ...] = ()

    def param(self, name: str, default: object = None) -> object:
        return dict(self.params).get(name, default)


def scenarios(quick: bool = False) -> list[Scenario]:
    big = 100 if quick else 500
    return [
        Scenario("download-3am", "bulk_download", 0, 3.0, (("mib", big), ("rate_mib_s", 100))),
        Scenario("download-3am-disk", "bulk_download", 0, 3.0, (("mib", big), ("rate_mib_s", 0))),
        Scenario("slow-exfil", "slow_exfil", 1, 0.0, (("hours", 24 if quick else 72), ("mib_per_hour", 4))),
        Scenario("ransomware-40", "ransomware", 0, 11.0, (("rate", 40), ("mode", "locked"))),
        Scenario("ransomware-400", "ransomware", 2, 15.0, (("rate", 400), ("mode", "inplace"))),
        Scenario("mass-delete", "mass_delete", 1, 16.5, ()),
        Scenario("share-pull", "share_pull", None, 11.5, ()),
    ]


def label_counts(acts: Sequence[Activity]) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in acts:
        out[a.label] = out.get(a.label, 0) + 1
    return out


def user_days(acts: Sequence[Activity]) -> int:
    """Office user-days covered: (user, day) pairs with at least one normal activity."""
    return len({(a.user, a.day) for a in acts if a.label == NORMAL})


def hour_of(t_ns: int) -> float:
    return ((t_ns - EPOCH) % DAY) / HOUR
