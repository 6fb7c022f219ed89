"""Window features from a known event sequence (pure: no daemon, no clock)."""
from __future__ import annotations

import math
import time

import numpy as np

from daemon.anomaly.detector import _Users
from daemon.anomaly.features import WINDOW_NS, Normalizer, WindowBuilder, hour_of_day, model_vector, windows_of
from daemon.anomaly.model import FastForest, Settings, fit_user
from ledger.events import Event

SRC = "0123456789abcdef"
SHARE_SRC = "fedcba9876543210"
T0 = 1_790_000_040 * 10**9  # a multiple of 60 s
S = 10**9
MiB = 1 << 20


def ev(seq: int, t: float, op: str, path: str = "", source: str = SRC, **kw) -> Event:  # type: ignore[no-untyped-def]
    return Event(source, seq, T0 + int(t * S), op, uid=kw.pop("uid", 1000), pid=kw.pop("pid", 42),
                 comm=kw.pop("comm", "cat"), path=path, **kw)


def known_day() -> list[Event]:
    return [
        ev(1, 1, "access", "/a/x.txt", file_id="01", bytes_read=1000, reads=1, detail={"mode": "r", "size": 1000}),
        ev(2, 2, "access", "/a/y.bin", file_id="02", bytes_written=5000, writes=2,
           detail={"mode": "rw", "size": 5000, "entropy": 7900, "overwrite": True, "size_before": 5000}),
        ev(3, 3, "access", "/b/z.txt", file_id="03", bytes_written=100, writes=1,
           detail={"mode": "w", "size": 100, "entropy": 4000}),
        ev(4, 4, "rename", "/a/y.bin", path2="/a/y.bin.locked", file_id="02"),
        ev(5, 5, "unlink", "/b/old", file_id="04"),
        ev(6, 6, "unlink", "/b/missing", result="EACCES"),               # refused: not counted
        ev(7, 7, "setattr", "/c/t.log", file_id="05", detail={"changed": "mtime,size", "count": 2}),
        ev(8, 8, "setattr", "/c/t.log", file_id="05", detail={"changed": "mode", "count": 1}),  # no size change
        ev(9, 10, "progress", "/d/big.iso", file_id="06", bytes_read=4 * MiB, reads=32, detail={"fh": 7}),
        ev(10, 70, "access", "/d/big.iso", file_id="06", bytes_read=6 * MiB, reads=48,
           detail={"mode": "r", "size": 6 * MiB, "fh": 7}),
    ]


def test_window_features_of_a_known_sequence() -> None:
    users = _Users({})
    w1, w2 = windows_of(known_day(), users)
    assert (w1.user, w1.start_ns, w1.end_ns) == ("uid:1000", T0, T0 + WINDOW_NS)
    f = w1.features
    assert f["bytes_read"] == 1000 + 4 * MiB          # the progress counts mid-session
    assert f["bytes_written"] == 5100
    assert f["files_opened"] == 3 and f["opens_per_min"] == 3
    assert f["distinct_dirs"] == 4                     # /a, /b, /c, /d
    assert f["overwrites_per_min"] == 2                # the in-place overwrite and the truncating setattr
    assert f["renames_per_min"] == 1 and f["deletes_per_min"] == 1
    assert f["entropy_mean"] == (7900 + 4000) // 2 and f["entropy_max"] == 7900
    assert f["share_reader"] == 0
    assert f["read_24h"] == 1000 + 4 * MiB
    hour = hour_of_day(T0 + WINDOW_NS // 2)
    assert f["hour_sin"] == round(1000 * math.sin(2 * math.pi * hour / 24))
    assert f["hour_cos"] == round(1000 * math.cos(2 * math.pi * hour / 24))
    assert w1.comm_read == {"cat": 1000 + 4 * MiB}
    # The session's end counts only what the progress event had not: 6 MiB in total, never 10.
    assert w2.start_ns == T0 + WINDOW_NS
    assert w2.features["bytes_read"] == 2 * MiB
    assert w2.features["read_24h"] == 1000 + 6 * MiB
    assert w2.features["entropy_mean"] == -1 and w2.features["files_opened"] == 1
    assert len(model_vector(f)) == 13


def test_trailing_24h_forgets_old_reads() -> None:
    events = [ev(1, 0, "access", "/x", bytes_read=100, file_id="1"),
              ev(2, 3600, "access", "/x", bytes_read=10, file_id="1"),
              ev(3, 86400 + 30, "access", "/x", bytes_read=1, file_id="1")]
    ws = windows_of(events, _Users({}))
    assert [w.features["read_24h"] for w in ws] == [100, 110, 11]


def test_share_mount_reader_is_the_recipient(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sources: dict = {}
    users = _Users(sources)
    mount = Event(SHARE_SRC, 1, T0, "mount", path="/mnt/x", path2=str(tmp_path), detail={"share": "abcdefgh1234"})
    users.learn(mount)
    norm = Normalizer(users)
    o = norm.obs(ev(2, 1, "access", "/doc", source=SHARE_SRC, bytes_read=5, file_id="9"))
    assert o is not None and o.share and o.user == "recipient:abcdefgh1234"  # no record: named by the share id
    assert norm.obs(ev(3, 1, "access", "/doc", bytes_read=5)).user == "uid:1000"


def test_windows_close_by_clock_and_late_events_fold_in() -> None:
    users = _Users({})
    norm = Normalizer(users)
    b = WindowBuilder()
    assert b.add(norm.obs(ev(1, 5, "access", "/a", bytes_read=1))) is None
    assert b.close_before(T0 + WINDOW_NS - 1) == []
    [w] = b.close_before(T0 + WINDOW_NS)
    assert w.features["bytes_read"] == 1
    b.add(norm.obs(ev(2, 65, "access", "/a", bytes_read=2)))
    b.add(norm.obs(ev(3, 30, "access", "/a", bytes_read=4)))  # late: counted in the open window
    [w] = b.close_before(T0 + 10 * WINDOW_NS)
    assert (w.start_ns, w.features["bytes_read"]) == (T0 + WINDOW_NS, 6)


def test_fast_forest_equals_sklearn_and_model_needs_a_baseline() -> None:
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 13))
    forest = IsolationForest(n_estimators=30, random_state=3).fit(x)
    y = rng.normal(size=(300, 13)) * 3
    assert np.allclose(FastForest(forest).score(y), -forest.score_samples(y), rtol=0, atol=1e-12)

    users = _Users({})
    few = windows_of([ev(i + 1, i * 61, "access", "/a", bytes_read=10, file_id="1") for i in range(20)], users)
    model = fit_user(few, Settings(min_windows=50, min_days=1))
    assert model is not None and model.forest is None       # below the minimum: rules only
    many = windows_of([ev(i + 1, i * 61 * 7, "access", "/a", bytes_read=10 + i % 7, file_id="1")
                       for i in range(600)], users)
    model = fit_user(many, Settings(min_windows=50, min_days=2))
    assert model.forest is not None and 400 < model.ceiling <= 1000


def test_feature_extraction_is_cheap() -> None:
    users = _Users({})
    events = [ev(i + 1, i * 0.01, "access", f"/d{i % 50}/f{i}", file_id=f"{i:x}", bytes_read=4096,
                 detail={"mode": "r", "size": 4096}) for i in range(20000)]
    t = time.perf_counter()
    windows_of(events, users)
    per_event = (time.perf_counter() - t) / len(events)
    assert per_event < 50e-6, per_event


def test_work_in_progress_is_not_destruction_but_rename_over_is() -> None:
    """git's lock files (created, renamed into place, deleted, known only by path) count as
    nothing; a pre-existing file deleted, or replaced by a rename, counts as destroyed."""
    git = [ev(1, 1, "create", "/r/.git/config.lock", file_id="c1"),
           ev(2, 2, "rename", "/r/.git/config.lock", path2="/r/.git/config"),     # no file id: by path
           ev(3, 3, "create", "/r/.git/config.lock", file_id="c2"),
           ev(4, 4, "rename", "/r/.git/config.lock", path2="/r/.git/config", detail={"replaced": "c1"}),
           ev(5, 5, "unlink", "/r/.git/config"),                                   # renamed into place: still fresh
           ev(6, 6, "create", "/r/.git/tmp_obj", file_id="c3"),
           ev(7, 7, "unlink", "/r/.git/tmp_obj")]
    destroy = [ev(8, 8, "unlink", "/docs/old.txt", file_id="o1"),
               ev(9, 9, "create", "/docs/.enc.tmp", file_id="n1"),
               ev(10, 10, "rename", "/docs/.enc.tmp", path2="/docs/report.odt", detail={"replaced": "o2"}),
               ev(11, 11, "rename", "/docs/a.txt", path2="/docs/a.txt.locked", file_id="o3")]
    [w] = windows_of(git, _Users({}))
    assert (w.features["renames_per_min"], w.features["deletes_per_min"]) == (0, 0)
    [w] = windows_of(destroy, _Users({}))
    assert (w.features["renames_per_min"], w.features["deletes_per_min"]) == (2, 1)
    norm = Normalizer(_Users({}), fresh_s=5)
    obs = [norm.obs(e) for e in git[:2]]
    assert obs[1].fresh and not obs[1].replaced
    late = norm.obs(ev(12, 60, "unlink", "/r/.git/config"))   # after fresh_s: an old file now
    assert not late.fresh
    over = norm.obs(destroy[2])
    assert over.replaced == "o2"
