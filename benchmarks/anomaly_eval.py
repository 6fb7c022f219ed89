#!/usr/bin/env python3
"""Evaluate umbrafs's automatic defence on labelled workloads, through real mounts and daemons.

Weeks of simulated office days for a few users (uids 1001…, each with their own habits) and
benign look-alikes (a nightly backup, a big git clone, a photo import, a tar of a folder) run
through alice's real umbrafs mount (allow_other, as root) and bob's real share mount, with
real audit daemons detecting and three real proxies on 127.0.0.1.  A shared fake clock
(`umbrafs --clock-file`, wire/clock.py) jumps between activities, so a simulated day costs
seconds; inside an activity it runs at real speed, so rates are real.  The first weeks train
the daemons; alarms in the later weeks are false alarms.  Then each attack (night bulk
download at 100 MiB/s and at disk speed, slow exfiltration, ransomware at 40 and 400 files/s,
mass deletion, a share recipient pulling everything) runs on its own copy of the trained world; the report says per
attack whether it was detected, how fast the response came (real ms), what was read or
destroyed before it, and what `umbrafs restore` could not put back byte for byte.

    python benchmarks/anomaly_eval.py                 # 6 weeks (2 learned) x 4 users, all attacks (~26 min)
    python benchmarks/anomaly_eval.py --quick         # smoke test, < 3 min
    python benchmarks/anomaly_eval.py --scenarios ransomware-40,download-3am --weeks 2

Needs root (allow_other mounts, setuid workers), fusermount3, git, tar.  Everything it starts
is stopped by PID and every mount unmounted on exit, Ctrl-C and SIGTERM included.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.anomaly import evaluate, schedule  # noqa: E402
from benchmarks.anomaly.world import World, WorldError, build, signals_as_interrupt  # noqa: E402

log = logging.getLogger("anomaly_eval")
MB = 1_000_000
RESULTS = Path(__file__).resolve().parent / "results-anomaly.txt"
QUICK_SCENARIOS = ("download-3am", "download-3am-disk", "ransomware-40", "share-pull")

TARGETS = """targets (issue 5): every attack detected; <= 1 false alarm per 100 user-days and none that revokes/locks
on a benign look-alike; ransomware stopped within 10 files at 40 files/s and 0 files unrecoverable at any
speed; the 500 MB 3 AM download cut off before 50 MB; scoring < 50 us per event amortised."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke-test version (< 3 min)")
    # 4 users x 4 evaluated weeks + bob = 100 user-days: enough to tell "<= 1 per 100 user-days"
    p.add_argument("--weeks", type=int, default=6, help="simulated weeks of normal work (default 6)")
    p.add_argument("--train-weeks", type=int, default=2, help="of which the daemons learn from the first N (default 2)")
    p.add_argument("--users", type=int, help="office users (default 4; 2 with --quick)")
    p.add_argument("--scenarios", default="all", help="comma-separated attack names, 'all' or 'none'")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, help="scratch directory (default: a new one under /var/tmp)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--output", type=Path, help=f"also write the report here (default for full runs: {RESULTS.name})")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.users is None:
        args.users = 2 if args.quick else 4
    if not 0 < args.train_weeks < args.weeks:
        p.error("--train-weeks must be at least 1 and less than --weeks")
    return args


def config(args: argparse.Namespace) -> dict:
    if args.quick:  # Monday to Wednesday learned, Thursday evaluated; three attacks, no morning before them
        return {"train_days": 3, "eval_days": 1, "scale": 0.25, "archive_mib": 100, "git_files": 300,
                "team_scale": 0.6, "tuning": {"min_windows": 20, "min_days": 2}, "context": False}
    return {"train_days": args.train_weeks * 7, "eval_days": (args.weeks - args.train_weeks) * 7, "scale": 1.0,
            "archive_mib": 500, "git_files": 2000, "team_scale": 3.0, "tuning": {}, "context": True}


def select_scenarios(args: argparse.Namespace) -> list[schedule.Scenario]:
    every = schedule.scenarios(quick=args.quick)
    if args.scenarios == "all":
        return [s for s in every if s.name in QUICK_SCENARIOS] if args.quick else every
    if args.scenarios == "none":
        return []
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    known = {s.name: s for s in every}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]


def arm(w: World) -> list[str]:
    """Response policy and bob's guard credential (the daemons read both at start)."""
    notes = []
    w.start_proxies()
    try:
        proc = w.cli(w.bob_home, "daemon", "credential", "--passphrase-file", w.passfiles["bob"], check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            cred = proc.stdout.strip().splitlines()[-1].strip()
            w.cli(w.admin_home, "proxy", "register", cred, *w.proxy_args(), "--role", "guard", "--scope", w.bob_fp,
                  "--identity", "admin", "--passphrase-file", w.passfiles["admin"])
            notes.append("bob's daemon holds a guard credential (scope: bob) at the 3 proxies")
        else:
            notes.append(f"no guard credential: {_last_line(proc)}")
        proc = w.cli(w.alice_home, "policy", "set", w.vault, "--on-anomaly", "revoke",
                     "--passphrase-file", w.passfiles["alice"], check=False)
        notes.append("policy: revoke (owner-mount users: lock)" if proc.returncode == 0
                     else f"no policy: {_last_line(proc)}")
    finally:
        w.stop_proxies()
    return notes


def _last_line(proc) -> str:  # type: ignore[no-untyped-def]
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1][:200] if lines else f"exit {proc.returncode}"


def daemon_cpu_s(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if os.geteuid() != 0:
        raise SystemExit("anomaly_eval needs root: allow_other mounts and workers running as other uids")
    cfg = config(args)
    scenarios = select_scenarios(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="umbrafs-anomaly-", dir="/var/tmp"))
    w = World(workdir, args.users)
    t0 = time.monotonic()
    lines: list[str] = []
    try:
        with signals_as_interrupt():
            log.info("building the world in %s", workdir)
            build(w, seed=args.seed, scale=cfg["scale"], archive_mib=cfg["archive_mib"], tuning=cfg["tuning"],
                  git_files=cfg["git_files"], team_scale=cfg["team_scale"])
            notes = arm(w)
            for n in notes:
                log.info("%s", n)
            base = evaluate.baseline(w, train_days=cfg["train_days"], eval_days=cfg["eval_days"],
                                     n_users=args.users, seed=args.seed, cpu=daemon_cpu_s)
            w.stop_all()
            w.snapshot()
            results = []
            for sc in scenarios:
                log.info("attack %s", sc.name)
                t_sc = time.monotonic()
                r = evaluate.run_scenario(w, sc, baseline_days=cfg["train_days"] + cfg["eval_days"],
                                          n_users=args.users, seed=args.seed, context=cfg["context"])
                r.extra["real_s"] = round(time.monotonic() - t_sc, 1)
                log.info("attack %s: %s", sc.name, r)
                results.append((sc, r))
            lines = report(args, cfg, notes, base, results, time.monotonic() - t0)
    except KeyboardInterrupt:
        log.warning("interrupted: cleaning up")
        return 130
    except WorldError as exc:
        log.error("%s", exc)
        return 1
    finally:
        w.stop_all()
        if args.keep or args.workdir:
            log.info("kept %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    out = args.output or (None if args.quick or args.scenarios != "all" else RESULTS)
    if out:
        out.write_text(text)
    return 0


# ------------------------------------------------------------------ report


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _mb(n: int) -> str:
    return f"{n / MB:,.1f}"


def verdicts(sc: schedule.Scenario, r: evaluate.ScenarioResult) -> list[tuple[str, bool]]:
    out = [("detected", r.detected)]
    if sc.kind == "ransomware":
        if int(sc.param("rate", 0)) <= 40:
            out.append(("stopped within 10 files", r.detected and r.response_ms is not None and r.files_changed <= 10))
        out.append(("0 files unrecoverable", r.not_restorable == 0))
    if sc.kind == "mass_delete":
        out.append(("0 files unrecoverable", r.not_restorable == 0))
    if sc.kind == "bulk_download":
        out.append(("cut off before 50 MB", r.response_ms is not None and r.bytes_read < 50 * MB))
    return out


def report(args: argparse.Namespace, cfg: dict, notes: list[str], base: evaluate.BaselineResult,
           results: list[tuple[schedule.Scenario, evaluate.ScenarioResult]], real_s: float) -> list[str]:
    L: list[str] = []
    cmd = "python benchmarks/anomaly_eval.py " + " ".join(sys.argv[1:])
    L.append(f"umbrafs anomaly evaluation — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
             f"{os.cpu_count()} CPUs, {real_s / 60:.1f} min real")
    L.append(f"command: {cmd.strip()}")
    L.append(f"world: {args.users} office users (uids 1001-{1000 + args.users}) + nightly backup (root) + bob "
             f"(share recipient); {base.train_days} days learned, {base.eval_days} days evaluated; seed {args.seed}")
    L += [f"setup: {n}" for n in notes]
    L.append("")
    L.append("attack scenarios (each on its own copy of the trained world; times are real)")
    hdr = ("scenario", "detected", "rule", "action", "response ms", "action ms", "MB read", "files changed",
           "not restorable", "targets")
    rows = [hdr]
    for sc, r in results:
        v = verdicts(sc, r)
        resp = _ms(r.response_ms) if r.response_ms is not None else "ran to end"
        if sc.kind == "slow_exfil":
            h = r.extra.get("hours_until_response")
            resp = f"{h} h (sim)" if h is not None else "ran to end"
        rows.append((sc.name, "yes" if r.detected else "NO", r.rule or "-", r.action or "-", resp, _ms(r.action_ms),
                     _mb(r.bytes_read), f"{r.files_changed}/{r.files_total}" if r.files_total else str(r.files_changed),
                     "-" if r.not_restorable is None else str(r.not_restorable)
                     + (f" ({r.not_restorable_first} after run 1)" if r.not_restorable_first else ""),
                     ", ".join(f"{name}: {'PASS' if ok else 'MISS'}" for name, ok in v)))
    L += _table(rows)
    L.append("  response ms: the attacking process's start -> its first refused request (EACCES/ENOENT/...);")
    L.append("  action ms: the daemon's own figure, triggering event's arrival -> action in effect;")
    L.append("  MB read / files changed: what the attacker got done before the response.")
    for sc, r in results:
        extra = {k: v for k, v in r.extra.items()}
        bits = [f"{k}={v}" for k, v in sorted(extra.items())]
        if r.restore_summary:
            bits.append(f"restore: {r.restore_summary}")
        if r.pre_alarms:
            bits.append(f"alarms before the attack={r.pre_alarms}")
        if r.note:
            bits.append(f"note={r.note}")
        L.append(f"  {sc.name}: {'; '.join(bits)}")
    L.append("")
    L.append("normal weeks")
    fa = base.alarms_eval
    per100 = 100.0 * len(fa) / base.user_days if base.user_days else 0.0
    looks_acting = [(a, lbl) for a, lbl in fa if lbl.startswith("lookalike") and a.action not in ("alert", "")]
    acting = [a for a, _ in fa if a.action not in ("alert", "")]
    L.append(f"  user-days evaluated: {base.user_days} (office days with activity, incl. bob); activities: "
             f"{json.dumps(base.activities, sort_keys=True)}; events stored: {base.events:,}; "
             f"replay {base.real_s:.0f} s real")
    bound = 300.0 / base.user_days if base.user_days else 0.0
    L.append(f"  false alarms: {len(fa)} = {per100:.2f} per 100 user-days "
             f"(target <= 1: {'PASS' if per100 <= 1.0 else 'MISS'}), of which {len(acting)} locked/revoked; "
             f"locking/revoking on a look-alike: {len(looks_acting)} (target 0: {'PASS' if not looks_acting else 'MISS'})")
    if not fa:
        L.append(f"  (none seen in {base.user_days} user-days: the 95 % upper bound is {bound:.1f} per 100 user-days)")
    for a, lbl in fa:
        t = datetime.datetime.fromtimestamp(a.time_ns / 1e9, datetime.timezone.utc)
        L.append(f"    {t:%a %Y-%m-%d %H:%M} {a.user} rule={a.rule} action={a.action} score={a.detail.get('score')} on {lbl}")
    if base.alarms_train:
        L.append(f"  alarms while learning (not counted): {len(base.alarms_train)} "
                 f"({', '.join(sorted({a.rule for a in base.alarms_train}))})")
    if base.heals:
        kinds: dict[str, int] = {}
        for h in base.heals:
            key = h.split(" (")[0]
            kinds[key] = kinds.get(key, 0) + 1
        L.append("  taken back after false alarms: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())))
    if base.failures:
        L.append(f"  activities that failed: {base.failures}")
    c = base.cost
    if c.get("scoring_us") is not None:
        ok = c["scoring_us"] < 50
        fit = c["fit_ms"] * 1000 / c["events"]
        L.append(f"  scoring cost: {c['scoring_us']:.1f} us per event amortised (features + rules + batched model "
                 f"scoring, both daemons, {c['events']:,} events; target < 50: {'PASS' if ok else 'MISS'}); "
                 f"model fits apart: {c['fits']} fits, {c['fit_ms']:,} ms = {fit:.0f} us per event")
    else:
        L.append("  scoring cost: the daemons report no detector counters")
    if c.get("cpu_us") is not None:
        L.append(f"  daemons' whole CPU over the evaluated days: {c['cpu_us']:.0f} us per stored event "
                 f"({c['cpu_events']:,} events; ledger hashing + SQLite + detection: an upper bound)")
    L.append(f"  daemon train: {base.train_reply.replace(chr(10), ' | ')[:600]}")
    L.append("")
    L += TARGETS.splitlines()
    return L


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        out.append("  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)).rstrip())
        if n == 0:
            out.append("  ".join("-" * wd for wd in widths))
    return out


if __name__ == "__main__":
    sys.exit(main())
