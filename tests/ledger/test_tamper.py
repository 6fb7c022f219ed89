"""``verify`` against real ledger files tampered with by an attacker who can write them: each attack
must be detected and the first bad entry (or the checkpoint) named."""
from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import merkle, scan
from ledger import verify as verify_mod
from ledger.chain import GENESIS, chain_hash
from ledger.checkpoint import sign_checkpoint
from ledger.entry import bind
from ledger.errors import LedgerTampered
from ledger.events import Event
from ledger.read import entries, export, inclusion_proof, open_readonly
from ledger.store import Ledger
from ledger.verify import Report, verify
from tests.ledger.conftest import KEY, Built, build, make_events

N = 300          # entries; checkpoints every 50 (at 50, 100, …, 300), two anchors


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return build(tmp_path, N, every=50, batch=25)


def check(b: Built, anchors: bool = True) -> Report:
    return verify(b.db, KEY.public_key(), b.anchors if anchors else [])


def rewrite(conn: sqlite3.Connection, idx: int, **change: object) -> bytes:
    """Change fields of entry idx, keeping it valid JSON that binds its index (what a careful attacker does)."""
    (data,) = conn.execute("SELECT data FROM entries WHERE idx = ?", (idx,)).fetchone()
    obj = json.loads(data)
    obj.update(change)
    new = ('{"idx":%d,' % idx + json.dumps({k: v for k, v in obj.items() if k != "idx"},
                                           sort_keys=True, separators=(",", ":"))[1:])
    conn.execute("UPDATE entries SET data = ? WHERE idx = ?", (new, idx))
    return new.encode()


def recompute_everything(conn: sqlite3.Connection) -> None:
    """The attacker with our source code: rebuild every chain value and tree node from the entries."""
    head = GENESIS
    leaves = []
    rows = conn.execute("SELECT idx, data FROM entries ORDER BY idx").fetchall()
    conn.execute("BEGIN")
    for idx, data in rows:
        data = data.encode() if isinstance(data, str) else data
        head = chain_hash(head, data)
        conn.execute("UPDATE entries SET chain = ? WHERE idx = ?", (head, idx))
        leaves.append(merkle.leaf_hash(data))
    conn.execute("DELETE FROM nodes")
    levels = merkle.levels_of(leaves)
    conn.executemany("INSERT INTO nodes(level, idx, hash) VALUES (?, ?, ?)",
                     [(lv, i, h) for lv in range(1, len(levels)) for i, h in enumerate(levels[lv])])
    conn.execute("COMMIT")


def test_untouched_ledger_verifies(built: Built) -> None:
    report = check(built)
    assert report.ok, report.problems
    assert (report.entries, report.checkpoints, report.signed, report.anchors) == (N, 6, N, 2)
    assert report.first_bad is None and report.reason == "ok"


def test_edited_entry(built: Built) -> None:
    rewrite(built.rw(), 123, path="/docs/innocent.txt")
    report = check(built)
    assert not report.ok
    assert report.first_bad == 123
    assert "entry 123" in report.reason and "edited" in report.reason
    assert report.bad_checkpoint == 150  # and the signed checkpoints disagree too


def test_entry_edited_as_bytes_on_disk(built: Built) -> None:
    raw = bytearray(built.db.read_bytes())
    needle = b"/docs/d2/file00042.txt"   # entry 41 (seq 42)
    at = raw.find(needle)
    assert at > 0 and raw.find(needle, at + 1) < 0
    raw[at + 6] = ord("X")
    built.db.write_bytes(bytes(raw))
    report = check(built)
    assert not report.ok and report.first_bad == 41 and "edited" in report.reason


def test_deleted_entry(built: Built) -> None:
    built.rw().execute("DELETE FROM entries WHERE idx = 77")
    report = check(built)
    assert not report.ok and report.first_bad == 77
    assert "entry 77 is missing" in report.reason


def test_deleted_entry_with_later_ones_renumbered(built: Built) -> None:
    conn = built.rw()
    conn.execute("DELETE FROM entries WHERE idx = 77")
    for idx in range(78, N):
        conn.execute("UPDATE entries SET idx = ? WHERE idx = ?", (idx - 1, idx))
    report = check(built)
    assert not report.ok and report.first_bad == 77
    assert "entry 77 carries index 78" in report.reason


@pytest.mark.parametrize("columns", ["data, chain", "data"])
def test_reordered_pair(built: Built, columns: str) -> None:
    conn = built.rw()
    a = conn.execute(f"SELECT {columns} FROM entries WHERE idx = 200").fetchone()
    b = conn.execute(f"SELECT {columns} FROM entries WHERE idx = 201").fetchone()
    conn.execute("DROP INDEX entries_source_seq")  # the swap passes through a duplicate (source, seq)
    sets = ", ".join(f"{c.strip()} = ?" for c in columns.split(","))
    conn.execute(f"UPDATE entries SET {sets} WHERE idx = 200", b)
    conn.execute(f"UPDATE entries SET {sets} WHERE idx = 201", a)
    report = check(built)
    assert not report.ok and report.first_bad == 200
    assert "entry 200 carries index 201" in report.reason


def test_inserted_entry(built: Built) -> None:
    conn = built.rw()
    for idx in range(N - 1, 149, -1):          # make room at 150 …
        conn.execute("UPDATE entries SET idx = ? WHERE idx = ?", (idx + 1, idx))
    (prev,) = conn.execute("SELECT chain FROM entries WHERE idx = 149").fetchone()
    fake = bind(150, Event("0badc0de0badc0de", 1, 1_700_000_000_000_000_000, "access", path="/alibi"))
    conn.execute("INSERT INTO entries(idx, data, chain) VALUES (?, ?, ?)",
                 (150, fake.decode(), chain_hash(prev, fake)))     # … with a perfectly chained fake
    report = check(built)
    assert not report.ok and report.first_bad == 150
    assert "entry 150 was inserted" in report.reason


def test_cut_tail_is_caught_by_the_anchors(built: Built) -> None:
    conn = built.rw()
    conn.execute("DELETE FROM entries WHERE idx >= 270")
    conn.execute("DELETE FROM checkpoints WHERE size > 270")
    conn.execute("DELETE FROM nodes WHERE (idx + 1) << level > 270")
    assert check(built, anchors=False).ok  # the database alone is self-consistent: why anchors exist
    report = check(built)
    assert not report.ok and report.first_bad == 270
    assert "anchor" in report.reason and "300" in report.reason and "cut" in report.reason


def test_database_replaced_by_an_older_copy(tmp_path: Path) -> None:
    b = build(tmp_path, 200, every=50, batch=25)
    old = tmp_path / "copy.db"
    shutil.copy(b.db, old)

    async def more() -> None:
        async with await Ledger.open(b.db, KEY, b.anchors, checkpoint_every=50) as ledger:
            await ledger.append(make_events(100, 201))
    asyncio.run(more())
    assert check(b).ok
    shutil.copy(old, b.db)
    assert check(b, anchors=False).ok
    report = check(b)
    assert not report.ok and report.first_bad == 200
    assert "older copy" in report.reason


def test_forged_checkpoint_bad_signature(built: Built) -> None:
    conn = built.rw()
    conn.execute("UPDATE checkpoints SET root = ? WHERE size = 150", (bytes(32),))
    report = check(built)
    assert not report.ok and report.bad_checkpoint == 150
    assert "checkpoint at size 150" in report.reason and "signature" in report.reason


def test_forged_checkpoint_other_key(built: Built) -> None:
    conn = built.rw()
    (chain,) = conn.execute("SELECT chain FROM entries WHERE idx = 99").fetchone()
    other = Ed25519PrivateKey.generate()
    (root,) = conn.execute("SELECT root FROM checkpoints WHERE size = 100").fetchone()
    cp = sign_checkpoint(other, 100, root, chain, 1)
    conn.execute("UPDATE checkpoints SET time_ns = ?, key_id = ?, signature = ? WHERE size = 100",
                 (cp.time_ns, cp.key_id, cp.signature))
    report = check(built)
    assert not report.ok and report.bad_checkpoint == 100 and "signature" in report.reason


def test_signed_checkpoint_whose_root_does_not_match(built: Built) -> None:
    # Signed by the right key (a key holder, or a bug) but over a root the entries do not give.
    conn = built.rw()
    (chain,) = conn.execute("SELECT chain FROM entries WHERE idx = 149").fetchone()
    cp = sign_checkpoint(KEY, 150, bytes(range(32)), chain, 1)
    conn.execute("UPDATE checkpoints SET root = ?, time_ns = ?, signature = ? WHERE size = 150",
                 (cp.root, cp.time_ns, cp.signature))
    report = check(built)
    assert not report.ok and report.bad_checkpoint == 150 and report.bad_range == (100, 150)
    assert "checkpoint at size 150" in report.reason


def test_edit_with_chain_and_tree_recomputed_is_caught_by_signed_checkpoints(built: Built) -> None:
    conn = built.rw()
    rewrite(conn, 123, path="/docs/innocent.txt", bytes_read=0)
    recompute_everything(conn)
    report = check(built)
    assert not report.ok
    assert report.bad_checkpoint == 150 and report.bad_range == (100, 150)
    assert report.first_bad == 100
    assert "checkpoint at size 150" in report.reason and "100..149" in report.reason
    assert any("3 later checkpoints" in p for p in report.problems)  # 200, 250, 300
    # and no proof for the rewritten tree can be produced against the signed checkpoints
    ro = open_readonly(built.db)
    with pytest.raises(LedgerTampered):
        inclusion_proof(ro, 123)
    with pytest.raises(LedgerTampered):
        inclusion_proof(ro, 10, 300)
    assert inclusion_proof(ro, 10, 100)["checkpoint"]["size"] == 100  # the untouched prefix still proves


def test_edit_with_everything_recomputed_and_checkpoints_deleted_is_caught_by_anchor(built: Built) -> None:
    conn = built.rw()
    rewrite(conn, 260, path="/nothing/to/see")
    recompute_everything(conn)
    conn.execute("DELETE FROM checkpoints WHERE size > 250")
    assert check(built, anchors=False).ok
    report = check(built)
    assert not report.ok and report.first_bad == 250 and report.bad_range == (250, 300)
    assert "anchor" in report.reason and "250..299" in report.reason


def test_tampered_tree_node(built: Built) -> None:
    built.rw().execute("UPDATE nodes SET hash = ? WHERE level = 2 AND idx = 10", (bytes(32),))
    report = check(built)
    assert not report.ok
    assert any("level 2, index 10" in p and "40..43" in p for p in report.problems)


def test_tree_nodes_resized_to_the_same_bytes(built: Built) -> None:
    conn = built.rw()
    a, b = [h for (h,) in conn.execute("SELECT hash FROM nodes WHERE level = 1 AND idx IN (3, 4) ORDER BY idx")]
    conn.execute("UPDATE nodes SET hash = ? WHERE level = 1 AND idx = 3", (a + b[:1],))
    conn.execute("UPDATE nodes SET hash = ? WHERE level = 1 AND idx = 4", (b[1:],))
    report = check(built)
    assert not report.ok and any("level 1, index 3" in p for p in report.problems)


def test_deleted_checkpoint_rows_and_anchor(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    built.rw().execute("DELETE FROM checkpoints WHERE size = 300")
    report = check(built)
    assert not report.ok and "missing from the database" in report.reason
    built.anchors[0].unlink()
    assert not any("anchor0.json is missing" in p for p in check(built).problems)  # could be in flight
    monkeypatch.setattr(verify_mod, "ANCHOR_GRACE_S", 0)
    assert any("anchor0.json is missing" in p for p in check(built).problems)


def test_index_column_must_be_gap_free_and_match(built: Built) -> None:
    conn = built.rw()
    conn.execute("UPDATE entries SET idx = 5000 WHERE idx = 299")  # moved far away
    conn.execute("UPDATE entries SET idx = -3 WHERE idx = 0")
    report = check(built)
    assert not report.ok and report.first_bad == 0
    text = "\n".join(report.problems)
    assert "negative index -3" in text and "entries 299..4999 are missing" in text
    assert "entry 5000 carries index 299" in text


def test_garbled_rows_are_reported_not_crashed(built: Built) -> None:
    raw = bytearray(built.db.read_bytes())   # SQLite refuses malformed JSON here: write the file
    at = raw.find(b'{"idx":30,')
    raw[at:at + 10] = b"\xff" * 10          # not even UTF-8
    at = raw.find(b'{"idx":40,')
    raw[at:at + 10] = b"not json!!"
    built.db.write_bytes(bytes(raw))
    conn = built.rw()
    conn.execute("UPDATE entries SET data = 42 WHERE idx = 10")
    conn.execute("UPDATE entries SET chain = 'not a hash' WHERE idx = 20")
    conn.execute("UPDATE checkpoints SET root = 'abc' WHERE size = 50")
    conn.execute("UPDATE checkpoints SET time_ns = 'yesterday' WHERE size = 100")
    conn.execute("INSERT INTO nodes(level, idx, hash) VALUES (40, 0, x'00')")
    report = check(built)
    assert not report.ok and report.first_bad == 10
    text = "\n".join(report.problems)
    for idx in (10, 20, 30, 40):
        assert f"entry {idx}" in text
    assert "garbled checkpoint row" in text and "checkpoint at size 50" in text and "outside the tree" in text
    ro = open_readonly(built.db)
    with pytest.raises(LedgerTampered, match="entry 10"):
        list(entries(ro))
    with pytest.raises(LedgerTampered, match="checkpoint row 100"):
        list(export(ro))
    with pytest.raises(LedgerTampered):
        list(entries(ro, op="access"))  # the SQL pre-filter lets unreadable rows through to be reported


def test_not_a_ledger(tmp_path: Path) -> None:
    bad = tmp_path / "x.db"
    bad.write_bytes(b"\x00" * 5000)
    for path in (bad, tmp_path / "missing.db"):
        report = verify(path, KEY.public_key())
        assert not report.ok and report.reason
    conn = sqlite3.connect(tmp_path / "other.db")
    conn.execute("CREATE TABLE t(x)")
    conn.close()
    assert "not a ledger" in verify(tmp_path / "other.db", KEY.public_key()).reason


def test_wrong_public_key(built: Built) -> None:
    report = verify(built.db, Ed25519PrivateKey.generate().public_key(), built.anchors)
    assert not report.ok and report.bad_checkpoint == 50 and "signature" in report.reason


def test_parallel_scan_finds_the_same_problems(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large ledgers are checked by worker processes over aligned index ranges; force that path here."""
    conn = built.rw()
    rewrite(conn, 233, path="/x")          # in the last range
    conn.execute("DELETE FROM entries WHERE idx = 64")  # on a range boundary when split in 2 or 4
    conn.execute("UPDATE nodes SET hash = ? WHERE level = 8 AND idx = 0", (bytes(32),))  # above the split
    monkeypatch.setattr(scan, "PARALLEL_FROM", 0)
    monkeypatch.setattr(scan.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    parts, level = scan._plan(N - 1, N)
    assert parts == 4 and 1 << level == 128
    answers = []
    collect = scan._collect
    monkeypatch.setattr(scan, "_collect", lambda proc: answers.append(collect(proc)) or answers[-1])
    report = check(built)
    assert len(answers) == 2 and all(a is not None for a in answers)  # ranges 128.. and 256.. by workers
    assert not report.ok and report.first_bad == 64
    text = "\n".join(report.problems)
    assert "entry 64 is missing" in text and "entry 233" in text and "level 8, index 0" in text
    # and on the untouched ledger the parallel path agrees with the single-process one
    fresh = build(built.db.parent, N, every=50, batch=25, name="fresh.db", anchors=0)
    assert verify(fresh.db, KEY.public_key()).ok
