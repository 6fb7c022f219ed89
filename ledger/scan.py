"""The hot part of ``audit verify``: check entry rows and rebuild the Merkle tree (sync, hashlib only).

Per entry: the row index is the next one expected, the entry bytes start with their own index, and
SHA-256(stored chain of the previous row ‖ entry) equals the stored chain value; the leaf hash is
collected for the tree.  Rows are read in large batches and checked by a tight loop; a row that
fails is handed to a slow path that says exactly what is wrong with it, then the loop resumes.

Each check needs only the *stored* chain value of the previous row, so index ranges can be checked
independently.  Ranges start at multiples of 2**top, so every tree node up to level ``top`` lies in
one range.  Large ledgers are split over worker processes running ``main`` below
(explicit ``python -I -c`` subprocesses: no fork of a process holding SQLite handles, no re-import
of the caller's ``__main__``); this module imports nothing heavy so that they start fast.

Protocol of a worker: argv = DB LO HI TOP; stdout = one JSON line (rows, tree_ok, problems,
dropped, level lengths) followed by the raw level bytes; exit status 0.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

log = logging.getLogger(__name__)

GENESIS = bytes(32)           # == ledger.chain.GENESIS (not imported: keep worker start-up light)
BATCH = 20000
MAX_PROBLEMS = 200
MAX_GAP_FILL = 1 << 22        # beyond this many missing indices the tree is not rebuilt
PARALLEL_FROM = 150_000       # fewer rows than this: starting workers costs more than it saves
MAX_WORKERS = 4
_BOUND = re.compile(rb'^\{"idx":(\d+),')

# Problem kinds, in the order they decide a report's first_bad / reason.
ENTRY, RANGE, OTHER = 0, 1, 2


@dataclass
class Findings:
    problems: list[tuple[int, int | None, str]] = field(default_factory=list)
    dropped: int = 0

    def add(self, kind: int, index: int | None, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append((kind, index, message))
        else:
            self.dropped += 1

    def merge(self, problems: list[tuple[int, int | None, str]], dropped: int) -> None:
        for kind, index, message in problems:
            self.add(kind, index, message)
        self.dropped += dropped


def connect_ro(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    conn.text_factory = bytes
    return conn


def stored_chain(conn: sqlite3.Connection, size: int) -> object:
    """Stored chain value of entry size-1 (GENESIS for 0, None if that row is missing)."""
    if size <= 0:
        return GENESIS
    row = conn.execute("SELECT chain FROM entries WHERE idx = ?", (size - 1,)).fetchone()
    return None if row is None else row[0]


class _Scan:
    """State of the scan over one index range: the chain, the leaf hashes, where we are."""

    def __init__(self, conn: sqlite3.Connection, found: Findings, lo: int) -> None:
        self.conn = conn
        self.found = found
        self.expected = lo        # next index we expect to see
        self.rows = 0
        prev = stored_chain(conn, lo)
        self.chain_known = isinstance(prev, bytes)   # False: the previous row is missing
        self.prev = prev if isinstance(prev, bytes) else GENESIS
        self.leaves = bytearray()
        self.tree_ok = True

    def fast(self, batch: list[tuple[object, object]]) -> int:
        """The hot loop of verify: check (data, chain) rows taken to be entries expected, expected+1, …
        while they are perfect; return how many passed.  Used only to prove a range clean: any
        deviation sends the whole range to ``fast_indexed``/``slow``."""
        if not self.chain_known:
            return 0
        sha = sha256
        leaf = sha(b"\x00")
        start = expected = self.expected
        prev, leaves = self.prev, self.leaves
        try:
            for data, chain in batch:
                if (not data.startswith(b'{"idx":%d,' % expected)  # type: ignore[union-attr]
                        or sha(prev + data).digest() != chain):  # type: ignore[operator]
                    break
                prev = chain  # type: ignore[assignment]
                h = leaf.copy()
                h.update(data)  # type: ignore[arg-type]
                leaves += h.digest()
                expected += 1
        except (TypeError, AttributeError):
            pass  # a garbled row
        self.expected, self.prev = expected, prev
        self.rows += expected - start
        return expected - start

    def fast_indexed(self, batch: list[tuple[object, object, object]]) -> int:
        """Like ``fast`` but over (idx, data, chain) rows, checking the idx column too."""
        if not self.chain_known:
            return 0
        sha = sha256
        start = expected = self.expected
        prev, leaves = self.prev, self.leaves
        try:
            for idx, data, chain in batch:
                if (idx != expected or not data.startswith(b'{"idx":%d,' % expected)  # type: ignore[union-attr]
                        or sha(prev + data).digest() != chain):  # type: ignore[operator]
                    break
                prev = chain  # type: ignore[assignment]
                leaves += sha(b"\x00" + data).digest()  # type: ignore[operator]
                expected += 1
        except (TypeError, AttributeError):
            pass  # a garbled row: the slow path names it
        self.expected, self.prev = expected, prev
        self.rows += expected - start
        return expected - start

    def gap(self, upto: int) -> None:
        """Indices expected..upto-1 have no row."""
        n = upto - self.expected
        if n <= 0:
            return
        what = f"entry {self.expected} is" if n == 1 else f"entries {self.expected}..{upto - 1} are"
        self.found.add(ENTRY, self.expected, f"{what} missing (deleted)")
        if n <= MAX_GAP_FILL and self.tree_ok:
            self.leaves += bytes(32) * n
        else:
            self.tree_ok = False
        self.expected = upto
        self.chain_known = False

    def slow(self, idx: object, data: object, chain: object) -> None:
        """One row that failed the fast path: record exactly what is wrong, then carry on."""
        found = self.found
        self.rows += 1
        if type(idx) is not int:
            found.add(OTHER, None, f"a ledger row has a non-integer index {idx!r}")
            return
        if idx < self.expected:
            found.add(ENTRY, max(idx, 0), f"unexpected ledger row with index {idx}")
            return
        self.gap(idx)
        if not isinstance(data, bytes):
            found.add(ENTRY, idx, f"entry {idx} is garbled (not text: {type(data).__name__})")
            data = b""
        if not data.startswith(b'{"idx":%d,' % idx):
            m = _BOUND.match(data)
            if m is None:
                found.add(ENTRY, idx, f"entry {idx} is garbled (it does not start with its index)")
            else:
                claimed = int(m.group(1))
                before = stored_chain(self.conn, idx - 1)  # chain value of entry idx-2
                if (claimed == idx - 1 and isinstance(chain, bytes) and isinstance(before, bytes)
                        and sha256(before + data).digest() == chain):
                    found.add(ENTRY, idx - 1, f"entry {idx - 1} was inserted: row {idx} holds the original entry {idx - 1}")
                else:
                    found.add(ENTRY, idx, f"entry {idx} carries index {claimed}: entries were moved, swapped, "
                                          "inserted or renumbered")
        if not isinstance(chain, bytes) or len(chain) != 32:
            found.add(ENTRY, idx, f"entry {idx} has a garbled chain value")
            chain = sha256(self.prev + data).digest()
        elif self.chain_known and sha256(self.prev + data).digest() != chain:
            found.add(ENTRY, idx, f"entry {idx} does not match its chain value: the entry was edited "
                                  "(or the stored chain value)")
        self.prev = chain
        self.chain_known = True
        if self.tree_ok:
            self.leaves += sha256(b"\x00" + data).digest()
        self.expected = idx + 1


def tree_levels(leaves: bytes, top: int | None = None) -> list[bytes]:
    """Perfect-subtree hashes level by level, each level one bytes object of 32-byte hashes, up to
    level ``top`` (default: as high as the leaves allow)."""
    levels = [leaves]
    one = sha256(b"\x01")
    while len(levels[-1]) >= 64 and (top is None or len(levels) <= top):
        below = memoryview(levels[-1])
        out = bytearray()
        for off in range(0, len(below) - 63, 64):
            h = one.copy()
            h.update(below[off:off + 64])
            out += h.digest()
        levels.append(bytes(out))
    return levels


def check_nodes(conn: sqlite3.Connection, levels: list[bytes], base: int, first_level: int, found: Findings) -> None:
    """Compare stored nodes with recomputed ones; ``levels[l]`` starts at leaf ``base`` (aligned)."""
    for level in range(max(first_level, 1), len(levels)):
        expect = levels[level]
        count = len(expect) // 32
        if not count:
            continue
        lo = base >> level
        query = "FROM nodes WHERE level = ? AND idx >= ? AND idx < ?"
        # Fast path: the whole level in one value, compared at once.  Anything unexpected (order,
        # types, lengths) just falls through to the exact per-node comparison.
        joined, rows, well_formed = conn.execute(
            "SELECT group_concat(hash, x''), count(*), total(typeof(hash) = 'blob' AND length(hash) = 32)"
            f" FROM (SELECT hash {query} ORDER BY idx)", (level, lo, lo + count)).fetchone()
        if joined == expect and rows == well_formed == count:
            continue
        stored = dict(conn.execute(f"SELECT idx, hash {query}", (level, lo, lo + count)).fetchall())
        for i in range(count):
            h = stored.get(lo + i)
            if h != expect[32 * i:32 * i + 32]:
                first, last = (lo + i) << level, ((lo + i + 1) << level) - 1
                state = "missing" if h is None else "wrong"
                found.add(RANGE, first, f"stored tree node (level {level}, index {lo + i}) over entries "
                                        f"{first}..{last} is {state}: proofs would not match the entries")


@dataclass
class RangeResult:
    rows: int
    tree_ok: bool
    levels: list[bytes]
    problems: list[tuple[int, int | None, str]]
    dropped: int


def scan_range(conn: sqlite3.Connection, lo: int, hi: int, top: int | None) -> RangeResult:
    """Check entries [lo, hi) and the stored nodes inside that range up to level ``top``."""
    found = Findings()
    # Fast path: read (data, chain) by position and prove the range clean: every row binds the
    # index of its position, chains from the one before, and there are exactly hi - lo rows.
    scan = _Scan(conn, found, lo)
    cur = conn.execute("SELECT data, chain FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (lo, hi))
    clean = True
    while clean and (batch := cur.fetchmany(BATCH)):
        clean = scan.fast(batch) == len(batch)
    if not (clean and scan.expected == hi):
        # Something is wrong in this range: start again with the idx column, examining each row
        # that does not pass (the slow path says what is wrong with it, then the loop resumes).
        scan = _Scan(conn, found, lo)
        cur = conn.execute("SELECT idx, data, chain FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (lo, hi))
        while batch := cur.fetchmany(BATCH):
            pos = 0
            while pos < len(batch):
                pos += scan.fast_indexed(batch[pos:] if pos else batch)
                if pos < len(batch):
                    scan.slow(*batch[pos])
                    pos += 1
    scan.gap(hi)
    levels = tree_levels(bytes(scan.leaves), top) if scan.tree_ok else []
    if levels:
        check_nodes(conn, levels, lo, 1, found)
    return RangeResult(scan.rows, scan.tree_ok, levels, found.problems, found.dropped)


def _plan(rows: int, n: int) -> tuple[int, int]:
    """(number of ranges, chunk level): range i is [i << level, (i+1) << level) ∩ [0, n)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranges = min(MAX_WORKERS, cpus)
    if ranges < 2 or rows < PARALLEL_FROM or n > 2 * rows:
        return 1, 0
    return ranges, max(-(-n // ranges) - 1, 1).bit_length()


_ROOT = str(Path(__file__).resolve().parent.parent)
# -I: no PYTHON* variables, no cwd on sys.path; then import *this* ledger package explicitly.
_WORKER = "import sys; sys.path.insert(0, sys.argv[1]); from ledger.scan import main; sys.exit(main(sys.argv[2:]))"


def _start_worker(path: Path, lo: int, hi: int, top: int) -> subprocess.Popen[bytes] | None:
    try:
        return subprocess.Popen([sys.executable, "-I", "-c", _WORKER, _ROOT, str(path), str(lo), str(hi), str(top)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        log.warning("cannot start a verify worker (%s); checking its range here", exc.strerror)
        return None


def _collect(proc: subprocess.Popen[bytes] | None) -> RangeResult | None:
    if proc is None:
        return None
    out, err = proc.communicate()
    if proc.returncode != 0:
        log.warning("a verify worker failed (status %s): %s; checking its range here",
                    proc.returncode, err.decode(errors="replace").strip()[-500:])
        return None
    head, _, body = out.partition(b"\n")
    try:
        meta = json.loads(head)
        levels, off = [], 0
        for length in meta["levels"]:
            levels.append(body[off:off + length])
            off += length
        if off != len(body):
            return None
        problems = [(int(k), None if i is None else int(i), str(m)) for k, i, m in meta["problems"]]
        return RangeResult(int(meta["rows"]), bool(meta["tree_ok"]), levels, problems, int(meta["dropped"]))
    except (ValueError, KeyError, TypeError):
        return None


def scan_all(conn: sqlite3.Connection, path: Path, found: Findings) -> tuple[int, int, list[bytes] | None]:
    """Check every entry and stored node (in parallel when it pays).

    Returns (rows seen, n = highest index + 1, every tree level — or None if it could not be built)."""
    rows_total, top_idx = conn.execute("SELECT count(*), max(idx) FROM entries").fetchone()
    n = 0 if top_idx is None else max(int(top_idx) + 1, 0)
    for (idx,) in conn.execute("SELECT idx FROM entries WHERE idx < 0 ORDER BY idx LIMIT 10"):
        found.add(ENTRY, 0, f"unexpected ledger row with negative index {idx}")
    parts, chunk_level = _plan(rows_total, n)
    if parts == 1:
        results = [scan_range(conn, 0, n, None)]
    else:
        chunk = 1 << chunk_level
        ranges = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
        procs: list[subprocess.Popen[bytes] | None] = []
        try:
            procs = [_start_worker(path, lo, hi, chunk_level) for lo, hi in ranges[1:]]
            results = [scan_range(conn, ranges[0][0], ranges[0][1], chunk_level)]  # this process takes one range
            for (lo, hi), proc in zip(ranges[1:], procs):
                # A worker that failed to start or answer: do its range here rather than not at all.
                results.append(_collect(proc) or scan_range(conn, lo, hi, chunk_level))
        finally:
            for proc in procs:
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
    rows, tree_ok = 0, True
    for result in results:
        rows += result.rows
        tree_ok = tree_ok and result.tree_ok
        found.merge(result.problems, result.dropped)
    if not tree_ok:
        found.add(OTHER, None, "the tree was not rebuilt (an index gap is too large)")
        return rows, n, None
    if parts == 1:
        levels = results[0].levels or [b""]
    else:
        depth = max(len(r.levels) for r in results)
        levels = [b"".join(r.levels[lv] for r in results if len(r.levels) > lv) for lv in range(depth)]
        upper = tree_levels(levels[-1])[1:]
        check_nodes(conn, levels + upper, 0, len(levels), found)
        levels += upper
    extra = conn.execute("SELECT count(*) FROM nodes WHERE level < 1 OR level >= 63 OR idx < 0 "
                         "OR idx >= (? >> level)", (n,)).fetchone()[0]
    if extra:
        found.add(OTHER, None, f"{extra} stored tree nodes lie outside the tree")
    return rows, n, levels


def main(argv: list[str]) -> int:
    """Worker entry point: scan one range and write the result to stdout."""
    path, lo, hi, top = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    conn = connect_ro(path)
    try:
        conn.execute("BEGIN")
        result = scan_range(conn, lo, hi, top)
    finally:
        conn.close()
    meta = {"rows": result.rows, "tree_ok": result.tree_ok, "problems": result.problems,
            "dropped": result.dropped, "levels": [len(level) for level in result.levels]}
    out = sys.stdout.buffer
    out.write(json.dumps(meta).encode() + b"\n")
    for level in result.levels:
        out.write(level)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
