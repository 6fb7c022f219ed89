"""The daemon's anomaly detector: events in, decisions out (docs/anomaly.md).

`observe` is called right after each batch of events is stored in the ledger.  It costs a few
microseconds per event: each event becomes an observation (features.Normalizer), goes through the
user's rules (rules.py, which act at once, mid-window) and into the user's tumbling window
(features.WindowBuilder).  Windows that close are scored together in one vectorised call per
user, on the next turn of the event loop.  Fitting happens in a worker thread (at start from the
ledger's history, then every `retrain_every` new windows or on `umbrafs daemon train`), and
responses run as tasks, so neither blocks the loop that stores events.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import numpy as np

from ledger.events import Event

from wire import clock
from daemon.anomaly.features import FRESH_S, MODEL_FEATURES, Normalizer, Window, WindowBuilder
from daemon.anomaly.model import Settings, UserModel, fit_all
from daemon.paths import ledger_path
from daemon.policy import PolicyStore
from daemon.respond import READ_DRIVERS, Decision, Responder, SourceInfo
from daemon.anomaly.rules import Hit, Limits, UserRules

log = logging.getLogger(__name__)

CONFIG_NAME = "anomaly.json"
TICK_S = 1.0
GRACE_NS = 2_000_000_000  # a window closes by the clock this long after its end (late deliveries)
MB = 1 << 20
DESTRUCTIVE = frozenset({"overwrites_per_min", "renames_per_min", "deletes_per_min"})


def load_config(home: Path) -> tuple[Settings, Limits]:
    try:
        raw = json.loads((Path(home) / CONFIG_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raw = {}
    except (OSError, ValueError) as exc:
        log.error("%s ignored: %s", Path(home) / CONFIG_NAME, exc)
        raw = {}
    if not isinstance(raw, dict):
        raw = {}
    return Settings.from_dict(raw), Limits.from_dict(raw)


def _share_info(vault: str, share_id: str) -> SourceInfo:
    info = SourceInfo(vault_path=vault, share_id=share_id)
    try:
        from proxy import shares

        record = shares.read(Path(vault), share_id).record
        info.recipient, info.recipient_name, info.owner = record.recipient, record.recipient_name, record.owner.fingerprint
    except Exception as exc:  # a missing or damaged record: still a share, named by its id
        log.info("share %s: record not readable (%s)", share_id, exc)
    return info


class _Users:
    """event → (user, is a share recipient), from what the sources told about themselves."""

    def __init__(self, sources: dict[str, SourceInfo]) -> None:
        self.sources = sources

    def learn(self, e: Event) -> None:
        share = e.detail.get("share")
        vault = e.path2 if e.op == "mount" else e.path
        if isinstance(share, str) and share:
            known = self.sources.get(e.source)
            if known is None or known.share_id != share:
                self.sources[e.source] = _share_info(vault, share)
        elif e.op == "mount" and vault:
            self.sources.setdefault(e.source, SourceInfo(vault_path=vault))

    def __call__(self, e: Event) -> tuple[str, bool]:
        info = self.sources.get(e.source)
        if info is not None and info.share_id:
            return "recipient:" + (info.recipient[:16] or info.share_id), True
        return f"uid:{e.uid}", False


def replay(home: Path, upto: int, window_ns: int,
           fresh_s: int = FRESH_S) -> tuple[dict[str, list[Window]], dict[str, SourceInfo], WindowBuilder]:
    """Windows of the ledger's first `upto` entries (runs in a worker thread)."""
    from ledger import read

    sources: dict[str, SourceInfo] = {}
    users = _Users(sources)
    norm = Normalizer(users, fresh_s)
    builder = WindowBuilder(window_ns)
    history: dict[str, list[Window]] = collections.defaultdict(list)
    path = ledger_path(home)
    if not path.exists() or upto <= 0:
        return {}, sources, builder
    conn = read.open_readonly(path)
    anomalies: list[tuple[str, int, int]] = []
    try:
        for idx, e in read.entries(conn):
            if idx >= upto:
                break
            if e.op in ("mount", "unlock"):
                users.learn(e)
            elif e.op == "anomaly":
                d = e.detail
                if isinstance(d.get("user"), str) and type(d.get("window_start")) is int:
                    anomalies.append((d["user"], d["window_start"], int(d.get("window_end", 0))))
                continue
            o = norm.obs(e)
            if o is None:
                continue
            w = builder.add(o)
            if w is not None:
                history[w.user].append(w)
    finally:
        conn.close()
    # What was flagged before is not baseline.
    by_user = collections.defaultdict(list)
    for user, start, end in anomalies:
        by_user[user].append((start, end))
    for user, spans in by_user.items():
        for w in history.get(user, []):
            if any(w.start_ns < end and w.end_ns > start for start, end in spans):
                w.flagged = True
    return dict(history), sources, builder


class Detector:
    def __init__(self, home: Path, own_source: str, record: Callable[[str, dict[str, Any]], Awaitable[None]],
                 guard: Any | None = None, settings: Settings | None = None, limits: Limits | None = None) -> None:
        self.home = Path(home)
        self.own_source = own_source
        cfg_settings, cfg_limits = load_config(self.home)
        self.settings = settings or cfg_settings
        self.limits = limits or cfg_limits
        self.window_ns = self.settings.window_s * 1_000_000_000
        self.sources: dict[str, SourceInfo] = {}
        self.users = _Users(self.sources)
        self.norm = Normalizer(self.users, self.limits.fresh_s)
        self.windows = WindowBuilder(self.window_ns)
        self.rules: dict[str, UserRules] = {}
        self.models: dict[str, UserModel] = {}
        self.history: dict[str, collections.deque[Window]] = {}
        self.new_windows: dict[str, int] = collections.defaultdict(int)
        self.pending: list[Window] = []
        # An unusual read-out window waits for the user's next minute: a `tar czf` reads one
        # minute and writes its archive (one session, reported at release) in the next.
        self.held: dict[str, tuple[Window, list[str], int, Any]] = {}
        self.policies = PolicyStore(self.home)
        self.responder = Responder(self.home, self.policies, self.sources, record, guard)
        self.decisions: list[dict[str, Any]] = []  # the latest few, for status
        self._tasks: set[asyncio.Task[Any]] = set()
        self._score_scheduled = False
        self._training: asyncio.Task[Any] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()
        self.stats = {"events": 0, "observe_ns": 0, "windows": 0, "score_ns": 0, "score_calls": 0,
                      "fits": 0, "fit_ms": 0, "decisions": 0, "model_quiet": 0}

    # -- lifecycle -------------------------------------------------------------

    async def start(self, ledger_size: int) -> None:
        """Replay the ledger's history into baselines and fit, in the background."""
        self._ticker = asyncio.create_task(self._tick_forever())
        self._spawn(self._load(ledger_size))

    async def _load(self, upto: int) -> None:
        try:
            t0 = time.monotonic()
            history, sources, builder = await asyncio.to_thread(replay, self.home, upto, self.window_ns,
                                                                self.limits.fresh_s)
            for source, info in sources.items():
                self.sources.setdefault(source, info)
            for user, acc in builder.open.items():  # the last minute before the start goes on
                self.windows.open.setdefault(user, acc)
            for user in builder._trail:
                if user not in self.windows._trail:
                    self.windows._trail[user] = builder._trail[user]
                    self.windows._trail_sum[user] = builder._trail_sum[user]
            for user, ws in history.items():
                live = self.history.get(user, ())
                self.history[user] = collections.deque([*ws, *live], maxlen=self.settings.max_history)
                self._seed_rules(user, ws)
            log.info("detector: %d user(s), %d windows from the ledger in %.2fs", len(history),
                     sum(map(len, history.values())), time.monotonic() - t0)
        except Exception:
            log.exception("detector: could not read the ledger's history; starting without baselines")
        finally:
            self.loaded.set()
        await self.train()

    def _seed_rules(self, user: str, windows: Sequence[Window]) -> None:
        """Carry the last 24 h of reads into the live rules (slow exfiltration spans restarts)."""
        if not windows:
            return
        r = self._rules(user)
        last = windows[-1].end_ns
        for w in windows:
            if w.end_ns > last - 86400 * 10**9 and w.features["bytes_read"]:
                r.read24h.add(w.start_ns, w.features["bytes_read"])

    async def close(self, timeout: float = 5.0) -> None:
        """Stop ticking; let decisions in flight finish (open windows are rebuilt from the ledger at start)."""
        if self._ticker:
            self._ticker.cancel()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for t in pending:
            t.cancel()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("detector task failed", exc_info=task.exception())

    # -- events ----------------------------------------------------------------

    def _rules(self, user: str) -> UserRules:
        r = self.rules.get(user)
        if r is None:
            r = self.rules[user] = UserRules(user, self.limits)
        return r

    def _profile(self, user: str):  # type: ignore[no-untyped-def]
        m = self.models.get(user)
        return m.profile if m is not None and m.forest is not None else None

    def observe(self, events: Sequence[Event], arrived_mono_ns: int | None = None) -> None:
        """Take a batch of stored events (synchronous and cheap; actions are scheduled)."""
        try:
            self._observe(events, arrived_mono_ns or time.monotonic_ns())
        except Exception:  # the ledger has the events: a detector bug must not refuse them
            log.exception("detector failed on a batch of %d event(s)", len(events))

    def _observe(self, events: Sequence[Event], arrived: int) -> None:
        t0 = time.perf_counter_ns()
        n = 0
        for e in events:
            if e.source == self.own_source:
                continue
            n += 1
            op = e.op
            if op == "mount" or op == "unlock":
                self.users.learn(e)
                continue
            o = self.norm.obs(e)
            if o is None:
                continue
            user = o.user
            r = self.rules.get(user) or self._rules(user)
            hit = r.check(o, self._profile(user))
            w = self.windows.add(o)
            if w is not None:
                self.pending.append(w)
            if hit is not None:
                self.windows.flag_open(user)
                self._rule_decision(hit, e, arrived)
        if self.pending and not self._score_scheduled:
            self._score_scheduled = True
            asyncio.get_running_loop().call_soon(self._score_pending)
        self.stats["events"] += n
        self.stats["observe_ns"] += time.perf_counter_ns() - t0

    def _rule_decision(self, hit: Hit, e: Event, arrived: int) -> None:
        o = hit.obs
        d = Decision(hit.user, hit.rule, 1000, dict(hit.facts), o.t - hit.span_ns, o.t, o.source, o.seq,
                     e.vault, arrived)
        self._decide(d)

    def _decide(self, d: Decision, policy=None) -> None:  # type: ignore[no-untyped-def]
        self.stats["decisions"] += 1
        self._spawn(self._respond(d, policy))

    async def _respond(self, d: Decision, policy=None) -> None:  # type: ignore[no-untyped-def]
        detail = await self.responder.respond(d, policy)
        self.decisions = [*self.decisions[-19:], detail]

    # -- windows and the model -------------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._close_windows(clock.now_ns() - GRACE_NS)
            except Exception:
                log.exception("detector tick failed")

    def _close_windows(self, before_ns: int | None) -> None:
        before = before_ns if before_ns is not None else 1 << 62
        closed = self.windows.close_before(before)
        if closed:
            self.pending.extend(closed)
            self._score_pending()
        for user in [u for u, h in self.held.items() if h[0].end_ns + self.window_ns <= before]:
            self._judge_held(user, None)  # the next minute passed without a window: nothing written

    def _score_pending(self) -> None:
        """Score every window that closed since the last call: one call per user with a model."""
        self._score_scheduled = False
        batch, self.pending = self.pending, []
        if not batch:
            return
        t0 = time.perf_counter_ns()
        by_user: dict[str, list[Window]] = collections.defaultdict(list)
        for w in batch:
            by_user[w.user].append(w)
        retrain = False
        for user, ws in by_user.items():
            model = self.models.get(user)
            if model is None or model.forest is None:
                if user in self.held:
                    self._judge_held(user, ws[0])
            else:
                vectors = [w.vector() for w in ws]
                forest, ranged, excess = model.scores(np.array(vectors))
                self.stats["score_calls"] += 1
                for w, v, sf, sr, ex in zip(ws, vectors, forest, ranged, excess):
                    if user in self.held:
                        self._judge_held(user, w)
                    f_milli, r_milli = int(round(float(sf) * 1000)), int(round(float(sr) * 1000))
                    w.score = max(f_milli, r_milli)
                    # The forest speaks only above the worst of its own baseline; the range score always.
                    unusual = f_milli >= model.ceiling + self.settings.margin or r_milli >= 500 + self.settings.margin
                    if unusual and not w.flagged:
                        self._model_candidate(w, v, list(ex), w.score, model)
            hist = self.history.get(user)
            if hist is None:
                hist = self.history[user] = collections.deque(maxlen=self.settings.max_history)
            hist.extend(ws)
            self.new_windows[user] += len(ws)
            trained = model is not None and model.forest is not None
            if self.new_windows[user] >= self.settings.retrain_every or (
                    not trained and len(hist) >= self.settings.min_windows and self.new_windows[user] >= 30):
                retrain = True
        self.stats["windows"] += len(batch)
        self.stats["score_ns"] += time.perf_counter_ns() - t0
        if retrain:
            self._retrain()

    def _retrain(self) -> None:
        if self.loaded.is_set() and (self._training is None or self._training.done()):
            self._training = self._spawn(self.train())

    def _model_candidate(self, w: Window, vector: list[float], excess: list[float], milli: int,
                         model: UserModel) -> None:
        vault = self.sources.get(w.source).vault_path if w.source in self.sources else ""
        policy = self.policies.get(vault) if vault else self.policies.get("")
        if milli < policy.threshold:
            return
        f = w.features
        drivers = model.drivers(vector, excess, MODEL_FEATURES)
        # Reported: reads that left the vault, or destruction. Unusual creating and writing (a git
        # clone, a photo import, a build), copying within the vault (tar of a folder) or an unusual
        # hour alone are how people work: they stay in the baseline and are not reported.
        # Someone tidying up 1-3 old copies in a minute is rare in a baseline, hence isolated, and
        # harmless: destruction is reported from min_destroy_pm on (the evaluation's false alerts).
        destroying = f["overwrites_per_min"] + f["renames_per_min"] + f["deletes_per_min"] >= self.settings.min_destroy_pm
        if destroying and DESTRUCTIVE.intersection(drivers):
            self._report(w, drivers, milli, policy, f["bytes_written"] * 2 < f["bytes_read"])
        elif f["bytes_read"] and READ_DRIVERS.intersection(drivers):
            self.held[w.user] = (w, drivers, milli, policy)
        else:
            self.stats["model_quiet"] += 1

    def _judge_held(self, user: str, after: Window | None) -> None:
        """Report a held read-out window unless the reads went back into the vault by the next minute."""
        w, drivers, milli, policy = self.held.pop(user)
        read, written = w.features["bytes_read"], w.features["bytes_written"]
        if after is not None and after.start_ns == w.end_ns:
            read += after.features["bytes_read"]
            written += after.features["bytes_written"]
        # What exfiltration takes is bytes: in the user's usual hours an odd shape of small reads
        # (a grep through thousands of files) is no loss, and the slow-exfil rule sees volume that
        # builds up over hours. At an hour the user is never active, any read-out is reported.
        if written * 2 < read and (read >= self.settings.min_read_mb * MB or "hour" in drivers):
            self._report(w, drivers, milli, policy, True)
        else:
            self.stats["model_quiet"] += 1

    def _report(self, w: Window, drivers: list[str], milli: int, policy: Any, read_out: bool) -> None:
        w.flagged = True
        d = Decision(w.user, "", milli, dict(w.features), w.start_ns, w.end_ns, w.source, 0, w.vault_id,
                     time.monotonic_ns(), drivers, read_out)
        self._decide(d, policy)

    async def train(self) -> dict[str, Any]:
        """Refit every user's baseline from the windows in memory (in a worker thread)."""
        await self.loaded.wait()
        snapshot = {u: list(ws) for u, ws in self.history.items()}
        for u in snapshot:
            self.new_windows[u] = 0
        t0 = time.monotonic()
        models = await asyncio.to_thread(fit_all, snapshot, self.settings)
        self.models.update(models)
        ms = int((time.monotonic() - t0) * 1000)
        self.stats["fits"] += 1
        self.stats["fit_ms"] += ms
        summary = {u: {"windows": m.trained_windows, "days": m.profile.days, "trained": m.forest is not None,
                       "ceiling": m.ceiling} for u, m in models.items()}
        log.info("detector: fitted %d user(s) in %d ms", len(models), ms)
        return {"users": summary, "fit_ms": ms}

    def status(self) -> dict[str, Any]:
        ev = max(1, self.stats["events"])
        return {
            "loaded": self.loaded.is_set(),
            "users": {u: {"windows": len(self.history.get(u, ())),
                          "trained": u in self.models and self.models[u].forest is not None}
                      for u in sorted(set(self.history) | set(self.rules))},
            "events": self.stats["events"], "windows": self.stats["windows"], "decisions": self.stats["decisions"],
            "model_quiet": self.stats["model_quiet"],
            "us_per_event": round((self.stats["observe_ns"] + self.stats["score_ns"]) / ev / 1000, 2),
            "fits": self.stats["fits"], "fit_ms": self.stats["fit_ms"],
            "settings": self.settings.__dict__, "guard": self.responder.guard is not None,
        }
