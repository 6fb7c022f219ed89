"""The asyncio writer on real SQLite files: group commit, exactly-once by (source, seq), checkpoints,
anchors, reopening, and the sync read side (listing, proofs, export) against it."""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import time
from hashlib import sha256
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import merkle
from ledger.anchor import read_anchor, write_anchor
from ledger.chain import GENESIS, chain_hash
from ledger.checkpoint import sign_checkpoint, verify_checkpoint
from ledger.errors import LedgerError, LedgerTampered
from ledger.read import latest_checkpoint, root_at
from ledger.store import (
    Ledger, check_inclusion_proof, consistency_proof, entries, export, inclusion_proof, open_readonly,
)
from ledger.verify import verify
from tests.ledger.conftest import KEY, SOURCE, append_all, build, make_events

OTHER_SOURCE = "ffeeddccbbaa9988"


def checkpoint_sizes(db: Path) -> list[int]:
    conn = open_readonly(db)
    try:
        return [s for (s,) in conn.execute("SELECT size FROM checkpoints ORDER BY size")]
    finally:
        conn.close()


def test_append_stores_in_order_and_reports_count(tmp_path: Path) -> None:
    async def run() -> None:
        ledger = await Ledger.open(tmp_path / "l.db", KEY)
        try:
            assert await ledger.size() == 0
            assert await ledger.append(make_events(5)) == 5
            assert await ledger.append([]) == 0
            assert await ledger.size() == 5
            assert await ledger.last_seq(SOURCE) == 5
            assert await ledger.last_seq(OTHER_SOURCE) == 0
            with pytest.raises(LedgerError):
                await ledger.append(["not an event"])  # type: ignore[list-item]
        finally:
            await ledger.close()
        await ledger.close()  # idempotent
        with pytest.raises(LedgerError):
            await ledger.append(make_events(1, 6))
    asyncio.run(run())
    conn = open_readonly(tmp_path / "l.db")
    got = list(entries(conn))
    assert [i for i, _ in got] == [0, 1, 2, 3, 4]
    assert [e for _, e in got] == make_events(5)
    head = GENESIS
    for idx, data, chain in conn.execute("SELECT idx, data, chain FROM entries ORDER BY idx"):
        assert data.startswith(b'{"idx":%d,' % idx)
        head = chain_hash(head, data)
        assert chain == head
    assert stat.S_IMODE(os.stat(tmp_path / "l.db").st_mode) == 0o600
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == b"wal"


def test_duplicates_by_source_and_seq_are_skipped(tmp_path: Path) -> None:
    async def run() -> None:
        async with await Ledger.open(tmp_path / "l.db", KEY) as ledger:
            assert await ledger.append(make_events(10)) == 10
            # a replay overlapping what is stored, with duplicates inside the batch too:
            # new are SOURCE 11, 12, 13 and OTHER 1, 2
            batch = make_events(5, 8) + make_events(3, 11) + make_events(2, 1, OTHER_SOURCE) * 2
            assert await ledger.append(batch) == 5
            assert await ledger.size() == 15
            # an old seq is recognised exactly, even below the high-water mark
            assert await ledger.append([make_events(1, 3)[0], make_events(1, 20)[0]]) == 1
            assert await ledger.last_seq(SOURCE) == 20
        async with await Ledger.open(tmp_path / "l.db", KEY) as ledger:  # nothing in memory now
            assert await ledger.last_seq(SOURCE) == 20
            assert await ledger.last_seq(OTHER_SOURCE) == 2
            assert await ledger.append(make_events(25)) == 6 + 5  # 14..19 and 21..25
            assert await ledger.append(make_events(25)) == 0
    asyncio.run(run())
    conn = open_readonly(tmp_path / "l.db")
    seqs = [e.seq for _, e in entries(conn) if e.source == SOURCE]
    assert sorted(seqs) == list(range(1, 26)) and len(seqs) == 25
    assert len(list(entries(conn))) == 27
    assert verify(tmp_path / "l.db", KEY.public_key()).ok


def test_reopen_continues_chain_and_tree(tmp_path: Path) -> None:
    db = tmp_path / "l.db"

    async def run() -> None:
        for start, count in ((1, 13), (14, 13), (27, 1), (28, 4)):
            async with await Ledger.open(db, KEY, [tmp_path / "a"], checkpoint_every=7,
                                         checkpoint_interval=3600) as ledger:
                assert await ledger.size() == start - 1
                await append_all(ledger, make_events(count, start), 3)
    asyncio.run(run())
    report = verify(db, KEY.public_key(), [tmp_path / "a"])
    assert report.ok and report.entries == 31 and report.signed == 31 and report.anchors == 1, report
    # every checkpoint is consistent with every later one
    conn = open_readonly(db)
    sizes = checkpoint_sizes(db)
    assert len(sizes) >= 5
    roots = {s: bytes(r) for s, r in conn.execute("SELECT size, root FROM checkpoints")}
    leaves = [merkle.leaf_hash(d) for (d,) in conn.execute("SELECT data FROM entries ORDER BY idx")]
    for s in sizes:
        assert roots[s] == merkle.root_of(leaves[:s])
    for a in sizes:
        for b in sizes:
            if a <= b:
                assert merkle.verify_consistency(a, b, roots[a], roots[b], consistency_proof(conn, a, b))


def test_checkpoint_every_n_entries_and_on_close(tmp_path: Path) -> None:
    async def run() -> None:
        async with await Ledger.open(tmp_path / "l.db", KEY, [tmp_path / "a1", tmp_path / "a2"],
                                     checkpoint_every=10, checkpoint_interval=3600) as ledger:
            await append_all(ledger, make_events(23), 4)   # sizes 4, 8, 12 (signed), 16, 20, 23 (signed)
            assert ledger.latest_checkpoint is not None and ledger.latest_checkpoint.size == 23
            await ledger.append(make_events(2, 24))
            forced = await ledger.checkpoint()
            assert forced.size == 25
            assert await ledger.checkpoint() is forced     # nothing new: the same one
            await ledger.append(make_events(1, 26))
        # close signed the last entry
    asyncio.run(run())
    assert checkpoint_sizes(tmp_path / "l.db") == [12, 23, 25, 26]
    for anchor in (tmp_path / "a1", tmp_path / "a2"):
        cp = read_anchor(anchor)
        assert cp is not None and cp.size == 26 and verify_checkpoint(cp, KEY.public_key())
        assert stat.S_IMODE(os.stat(anchor).st_mode) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoint_after_interval_without_more_appends(tmp_path: Path) -> None:
    async def run() -> None:
        async with await Ledger.open(tmp_path / "l.db", KEY, [tmp_path / "a"], checkpoint_every=1000,
                                     checkpoint_interval=0.2) as ledger:
            await ledger.append(make_events(3))
            await ledger.append(make_events(2, 4))  # 5 unsigned entries: the ticker signs them after 0.2 s
            deadline = time.monotonic() + 5
            while (ledger.latest_checkpoint is None or ledger.latest_checkpoint.size < 5) \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert ledger.latest_checkpoint is not None and ledger.latest_checkpoint.size == 5
            cp = read_anchor(tmp_path / "a")
            assert cp is not None and cp.size == 5
            n = len(checkpoint_sizes(tmp_path / "l.db"))
            await asyncio.sleep(0.5)  # idle: no new checkpoints without new entries
            assert len(checkpoint_sizes(tmp_path / "l.db")) == n
    asyncio.run(run())


def test_concurrent_appends_and_cancellation_keep_state_consistent(tmp_path: Path) -> None:
    async def run() -> None:
        async with await Ledger.open(tmp_path / "l.db", KEY, checkpoint_every=40) as ledger:
            sources = [f"{i:016x}" for i in range(6)]
            await asyncio.gather(*(append_all(ledger, make_events(60, 1, s), 7) for s in sources))
            assert await ledger.size() == 360
            for delay in (0, 0.001, 0.005, 0.02):
                task = asyncio.create_task(ledger.append(make_events(500, 1, "a" * 16)))
                await asyncio.sleep(delay)   # let it start, then cancel it part-way
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                assert await ledger.size() in (360, 860)     # all or nothing
            await ledger.append(make_events(500, 1, "a" * 16))
            assert await ledger.size() == 860
    asyncio.run(run())
    assert verify(tmp_path / "l.db", KEY.public_key()).ok


def test_reader_sees_commits_while_the_writer_runs(tmp_path: Path) -> None:
    async def run() -> None:
        async with await Ledger.open(tmp_path / "l.db", KEY) as ledger:
            await ledger.append(make_events(3))
            conn = open_readonly(tmp_path / "l.db")
            assert len(list(entries(conn))) == 3
            await ledger.append(make_events(4, 4))
            assert len(list(entries(conn))) == 7
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                conn.execute("DELETE FROM entries")  # read-only really is
            conn.close()
    asyncio.run(run())


def test_open_refuses_a_ledger_behind_its_anchor(tmp_path: Path) -> None:
    built = build(tmp_path, 40, every=10)
    older = tmp_path / "older.db"
    conn = built.rw()
    conn.execute("VACUUM INTO ?", (str(older),))
    conn.close()

    async def more() -> None:
        async with await Ledger.open(built.db, KEY, built.anchors, checkpoint_every=10) as ledger:
            await ledger.append(make_events(10, 41))
    asyncio.run(more())
    older.replace(built.db)

    async def reopen() -> None:
        with pytest.raises(LedgerTampered, match="older copy|cut"):
            await Ledger.open(built.db, KEY, built.anchors)
    asyncio.run(reopen())
    # … and left the evidence alone
    anchor = read_anchor(built.anchors[0])
    assert anchor is not None and anchor.size == 50


def test_open_refuses_foreign_or_contradicting_anchor(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    built = build(tmp_path, 20, every=10, anchors=1)
    other = Ed25519PrivateKey.generate()
    write_anchor(built.anchors[0], sign_checkpoint(other, 10, bytes(32), bytes(32), 1))

    async def reopen() -> None:
        with pytest.raises(LedgerTampered, match="another key"):
            await Ledger.open(built.db, KEY, built.anchors)
        write_anchor(built.anchors[0], sign_checkpoint(KEY, 10, bytes(32), bytes(32), 1))
        with pytest.raises(LedgerTampered, match="do not match"):
            await Ledger.open(built.db, KEY, built.anchors)
        built.anchors[0].write_text("garbage")
        with pytest.raises(LedgerTampered):
            await Ledger.open(built.db, KEY, built.anchors)
    asyncio.run(reopen())


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    async def run() -> None:
        async with await Ledger.open(tmp_path / "l.db", KEY) as ledger:
            await ledger.append(make_events(2))
            with pytest.raises(LedgerError, match="another process"):
                await Ledger.open(tmp_path / "l.db", KEY)
        async with await Ledger.open(tmp_path / "l.db", KEY) as again:  # released on close
            assert await again.size() == 2
    asyncio.run(run())


def test_open_refuses_files_that_are_not_ledgers(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)

    async def run() -> None:
        with pytest.raises(LedgerError):
            await Ledger.open(bad, KEY)
        with pytest.raises(LedgerError):
            await Ledger.open(tmp_path / "no" / "such" / "dir.db", KEY)
    asyncio.run(run())
    with pytest.raises(LedgerError):
        open_readonly(bad)
    with pytest.raises(LedgerError):
        open_readonly(tmp_path / "missing.db")


# ---------------------------------------------------------------- read side


def test_entries_filters(tmp_path: Path) -> None:
    built = build(tmp_path, 40, every=10)
    conn = open_readonly(built.db)
    everything = list(entries(conn))
    assert [i for i, _ in entries(conn, since_ns=everything[29][1].time_ns)] == list(range(29, 40))
    assert all(e.op == "rename" for _, e in entries(conn, op="rename"))
    assert len(list(entries(conn, op="rename"))) == 8
    assert {e.uid for _, e in entries(conn, uid=1001)} == {1001}
    under = [e for _, e in entries(conn, path_prefix="/docs/d1")]
    assert under and all(e.path.startswith("/docs/d1/") for e in under)
    assert not list(entries(conn, path_prefix="/docs/d"))       # components, not string prefixes
    moved = list(entries(conn, path_prefix="/docs/moved/"))      # matches path2 (rename destinations)
    assert len(moved) == 8
    assert [i for i, _ in entries(conn, path_prefix="/docs/d1/file00005.txt")] == [4]
    assert len(list(entries(conn, limit=3))) == 3
    assert len(list(entries(conn, op="rename", uid=1001, limit=1))) == 1


def test_entries_with_undecodable_path_names(tmp_path: Path) -> None:
    from ledger.events import Event

    async def run() -> None:
        async with await Ledger.open(tmp_path / "l.db", KEY) as ledger:
            await ledger.append([Event(SOURCE, 1, 1, "create", path="/caf\u00e9/\udcff.bin"),
                                 Event(SOURCE, 2, 2, "create", path="/other")])
    asyncio.run(run())
    conn = open_readonly(tmp_path / "l.db")
    assert [i for i, _ in entries(conn, path_prefix="/caf\u00e9")] == [0]
    assert [e.path for _, e in entries(conn, path_prefix="/caf\u00e9/\udcff.bin")] == ["/caf\u00e9/\udcff.bin"]


def test_inclusion_proofs_for_every_entry_and_checkpoint(tmp_path: Path) -> None:
    built = build(tmp_path, 37, every=9, batch=3)
    conn = open_readonly(built.db)
    sizes = checkpoint_sizes(built.db)
    assert sizes == [9, 18, 27, 36, 37]
    latest = latest_checkpoint(conn)
    assert latest is not None and latest.size == 37
    for size in sizes:
        for idx in range(size):
            doc = inclusion_proof(conn, idx, size)
            assert doc["checkpoint"]["size"] == size
            assert json.loads(json.dumps(doc)) == doc
            assert check_inclusion_proof(doc, KEY.public_key()), (idx, size)
    doc = inclusion_proof(conn, 5)           # default: the latest checkpoint
    assert doc["size"] == 37 and check_inclusion_proof(doc, KEY.public_key())
    unsigned = inclusion_proof(conn, 5, 20)  # a size that was never signed: provable, not vouched for
    assert unsigned["checkpoint"] is None and not check_inclusion_proof(unsigned, KEY.public_key())
    assert merkle.verify_inclusion(bytes.fromhex(unsigned["leaf_hash"]), 5, 20,
                                   [bytes.fromhex(h) for h in unsigned["proof"]], root_at(conn, 20))
    for bad in (-1, 37, 100):
        with pytest.raises(LedgerError):
            inclusion_proof(conn, bad)
    with pytest.raises(LedgerError):
        inclusion_proof(conn, 3, 38)


def _altered(doc: dict, **change: object) -> dict:
    new = json.loads(json.dumps(doc))
    new.update(change)
    return new


def test_altered_inclusion_proofs_are_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    built = build(tmp_path, 30, every=10, batch=5)
    conn = open_readonly(built.db)
    doc = inclusion_proof(conn, 13, 20)
    other = inclusion_proof(conn, 13, 30)
    leaf = doc["leaf"]
    flipped = [doc["proof"][0][:-1] + ("0" if doc["proof"][0][-1] != "0" else "1")] + doc["proof"][1:]
    bad_cp = dict(doc["checkpoint"], signature="00" * 64)
    assert check_inclusion_proof(doc, KEY.public_key())
    for bad in (
        _altered(doc, leaf=leaf.replace("/docs", "/DOCS")),
        _altered(doc, leaf=leaf.replace('{"idx":13,', '{"idx":14,'), idx=14),
        _altered(doc, idx=12), _altered(doc, size=21), _altered(doc, proof=flipped),
        _altered(doc, proof=doc["proof"][:-1]), _altered(doc, root=other["root"]),
        _altered(doc, checkpoint=other["checkpoint"]), _altered(doc, checkpoint=bad_cp),
        _altered(doc, checkpoint=None), _altered(doc, leaf_hash="00" * 32), _altered(doc, version=2),
        None, {}, [], "text", _altered(doc, proof="zz"), _altered(doc, idx="13"),
    ):
        assert not check_inclusion_proof(bad, KEY.public_key())  # type: ignore[arg-type]
    assert not check_inclusion_proof(doc, Ed25519PrivateKey.generate().public_key())


def test_export_interleaves_checkpoints_after_their_last_entry(tmp_path: Path) -> None:
    built = build(tmp_path, 25, every=10, batch=5)
    conn = open_readonly(built.db)
    lines = list(export(conn))
    assert lines[0]["type"] == "ledger" and lines[0]["format"] == "umbrafs-ledger 1"
    seen, head = 0, GENESIS
    for line in lines[1:]:
        json.dumps(line)  # JSON-able
        if line["type"] == "entry":
            assert line["idx"] == seen
            data = line["entry"].encode("ascii")
            head = sha256(head + data).digest()
            assert line["chain"] == head.hex()
            assert line["event"]["seq"] == seen + 1
            seen += 1
        else:
            assert line["type"] == "checkpoint" and line["size"] == seen and line["chain_head"] == head.hex()
    assert [x["size"] for x in lines if x["type"] == "checkpoint"] == [10, 20, 25]


def test_verify_while_the_writer_appends(tmp_path: Path) -> None:
    anchors = [tmp_path / "a"]

    async def run() -> list:
        reports = []
        async with await Ledger.open(tmp_path / "l.db", KEY, anchors, checkpoint_every=20,
                                     checkpoint_interval=3600) as ledger:
            for start in range(1, 400, 40):
                writer = asyncio.create_task(append_all(ledger, make_events(40, start), 5))
                reports.append(await asyncio.to_thread(verify, tmp_path / "l.db", KEY.public_key(), anchors))
                await writer
        reports.append(verify(tmp_path / "l.db", KEY.public_key(), anchors))
        return reports
    reports = asyncio.run(run())
    assert all(r.ok for r in reports), [r.problems for r in reports if not r.ok]
    assert reports[-1].entries == 400 and reports[-1].signed == 400


_batches = st.lists(st.lists(st.tuples(st.sampled_from([SOURCE, OTHER_SOURCE]), st.integers(1, 30)),
                             max_size=12), min_size=1, max_size=6)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=_batches, reopen_after=st.integers(0, 5))
def test_append_matches_a_model(tmp_path_factory: pytest.TempPathFactory, batches: list, reopen_after: int) -> None:
    """Whatever order and repetition events arrive in, each (source, seq) is stored once, first come first."""
    db = tmp_path_factory.mktemp("model") / "l.db"
    model: list[tuple[str, int]] = []

    async def run() -> None:
        ledger = await Ledger.open(db, KEY, checkpoint_every=7)
        try:
            for i, batch in enumerate(batches):
                if i == reopen_after:
                    await ledger.close()
                    ledger = await Ledger.open(db, KEY, checkpoint_every=7)
                events = [make_events(1, seq, source)[0] for source, seq in batch]
                fresh = [k for k in dict.fromkeys(batch) if k not in model]
                assert await ledger.append(events) == len(fresh)
                model.extend(fresh)
        finally:
            await ledger.close()
    asyncio.run(run())
    conn = open_readonly(db)
    assert [(e.source, e.seq) for _, e in entries(conn)] == model
    conn.close()
    assert verify(db, KEY.public_key()).ok


def test_proof_of_an_entry_not_yet_signed_says_so(tmp_path: Path) -> None:
    async def run() -> None:
        async with await Ledger.open(tmp_path / "l.db", KEY, checkpoint_every=1000, checkpoint_interval=3600) as ledger:
            await ledger.append(make_events(3))
            await ledger.checkpoint()
            await ledger.append(make_events(2, 4))
            conn = open_readonly(tmp_path / "l.db")
            assert check_inclusion_proof(inclusion_proof(conn, 2), KEY.public_key())
            with pytest.raises(LedgerError, match="not covered by a signed checkpoint yet"):
                inclusion_proof(conn, 4)
            conn.close()
    asyncio.run(run())
