"""The ledger writer (asyncio + aiosqlite) and, re-exported from ledger/read.py, the sync read side.

One ``Ledger`` per database, owned by the daemon.  ``append`` stores a batch in one transaction
(group commit): entries get consecutive ``idx`` values, each entry's chain value and the new
perfect-subtree hashes are written with it, and a signed checkpoint is added every
``checkpoint_every`` entries or ``checkpoint_interval`` seconds.  Checkpoint transactions are
committed with ``synchronous=FULL`` (making every earlier WAL commit durable too) *before* the
checkpoint is copied to the anchor files, so an anchor never names entries the database could
lose in a crash.

``open`` refuses a database that contradicts its anchors (rolled back, cut, or rewritten): carrying
on would overwrite the anchor, the only evidence.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Sequence

import aiosqlite
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger import merkle
from ledger.anchor import read_anchor, write_anchor
from ledger.chain import GENESIS, chain_hash
from ledger.checkpoint import Checkpoint, key_id_of, sign_checkpoint, verify_checkpoint
from ledger.entry import bind, prefix
from ledger.errors import CheckpointError, LedgerError, LedgerTampered
from ledger.events import Event
from ledger.read import (  # the sync read side lives in read.py; re-exported here (__all__)
    check_inclusion_proof, checkpoint_row, consistency_proof, entries, export, inclusion_proof, open_readonly,
)
from ledger.schema import CHECKPOINT_COLUMNS, DDL, FORMAT

__all__ = [
    "Ledger", "open_readonly", "entries", "inclusion_proof", "check_inclusion_proof", "consistency_proof", "export",
]

log = logging.getLogger(__name__)

_DEDUP_CHUNK = 5000  # (source, seq) pairs per exact-duplicate lookup


class Ledger:
    """Append-only, hash-chained, Merkle-tree ledger with signed checkpoints.  Use ``await Ledger.open``."""

    def __init__(self) -> None:  # use Ledger.open
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._signer: Ed25519PrivateKey
        self._anchors: tuple[Path, ...] = ()
        self._loose: frozenset[Path] = frozenset()
        self.bad_anchors: list[tuple[Path, str]] = []  # loose anchors found unusable at open
        self._every = 1000
        self._interval = 10.0
        self._size = 0
        self._head = GENESIS
        self._frontier: list[tuple[int, bytes]] = []   # compact range: (level, hash), largest first
        self._last_cp: Checkpoint | None = None
        self._last_cp_mono = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None
        self._max_seq: dict[str, int] = {}   # highest stored seq per source seen by this process
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: Path, signer: Ed25519PrivateKey, anchors: Sequence[Path] = (),
                   checkpoint_every: int = 1000, checkpoint_interval: float = 10.0,
                   loose_anchors: Sequence[Path] = ()) -> "Ledger":
        """*anchors* must agree with the database; so must *loose_anchors* (the copies in
        vaults, which others can write) when they carry this ledger's signature, but one that
        is unreadable or signed by another key is no evidence of anything (nobody can forge
        our signature): it is reported in ``bad_anchors`` and overwritten at the next
        checkpoint instead of keeping the ledger, and with it the detector, from starting."""
        if checkpoint_every < 1 or checkpoint_interval <= 0:
            raise LedgerError("checkpoint_every must be >= 1 and checkpoint_interval > 0")
        self = cls()
        self._signer = signer
        self._anchors = tuple(Path(a) for a in (*anchors, *loose_anchors))
        self._loose = frozenset(Path(a) for a in loose_anchors)
        self._every = checkpoint_every
        self._interval = checkpoint_interval
        path = Path(path)
        self._lock_fd = _lock_writer(path)
        try:
            # The ledger holds plaintext paths: create it private (SQLite gives -wal/-shm the same mode).
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            self._conn = await aiosqlite.connect(str(path), isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            self._unlock()
            raise LedgerError(f"cannot open ledger {path}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            await self._setup()
            await self._load()
            await self._check_anchors()
        except BaseException as exc:
            await self._conn.close()
            self._conn = None
            self._unlock()
            if isinstance(exc, sqlite3.DatabaseError):
                raise LedgerError(f"ledger {path} is not a usable database: {exc}") from None
            raise
        self._ticker = asyncio.create_task(self._tick(), name="ledger-checkpoint-ticker")
        return self

    async def close(self) -> None:
        """Checkpoint anything unsigned, then close.  Idempotent."""
        if self._conn is None:
            return
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
            self._ticker = None
        try:
            async with self._lock:
                if self._last_cp is None or self._last_cp.size != self._size:
                    await self._checkpoint_locked()
        finally:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            finally:
                self._unlock()

    async def __aenter__(self) -> "Ledger":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ writing

    async def append(self, events: Sequence[Event]) -> int:
        """Store the events not stored yet (by (source, seq)) in one transaction; return how many."""
        conn = self._live()
        async with self._lock:
            fresh = await self._unseen(conn, events)
            if not fresh:
                return 0
            size, head, frontier = self._size, self._head, list(self._frontier)
            entry_rows: list[tuple[int, str, bytes]] = []
            node_rows: list[tuple[int, int, bytes]] = []
            for event in fresh:
                data = bind(size, event)
                head = chain_hash(head, data)
                entry_rows.append((size, data.decode("ascii"), head))
                size += 1
                level, h = 0, merkle.leaf_hash(data)
                while frontier and frontier[-1][0] == level:
                    h = merkle.node_hash(frontier.pop()[1], h)
                    level += 1
                    node_rows.append((level, (size >> level) - 1, h))
                frontier.append((level, h))
            cp = None
            if size - self._signed_size() >= self._every or time.monotonic() - self._last_cp_mono >= self._interval:
                cp = sign_checkpoint(self._signer, size, merkle.fold([h for _, h in frontier]), head, time.time_ns())
            await self._write(conn, entry_rows, node_rows, cp, (size, head, frontier), fresh)
            return len(fresh)

    async def checkpoint(self) -> Checkpoint:
        """Sign the current tree now (if it has grown) and write it to every anchor; return it."""
        self._live()
        async with self._lock:
            if self._last_cp is not None and self._last_cp.size == self._size:
                return self._last_cp
            return await self._checkpoint_locked()

    # ------------------------------------------------------------------ queries

    async def last_seq(self, source: str) -> int:
        """Highest seq stored for ``source``, 0 if none (from memory after the first lookup)."""
        conn = self._live()
        if source not in self._max_seq:
            rows = await conn.execute_fetchall("SELECT max(seq) FROM entries WHERE source = ?", (source,))
            value = list(rows)[0][0]
            self._max_seq[source] = int(value) if value is not None else 0
        return self._max_seq[source]

    async def size(self) -> int:
        self._live()
        return self._size

    async def add_anchor(self, path: Path) -> None:
        """Keep a copy of every checkpoint at *path* too (e.g. in a vault the ledger records).

        An existing anchor there must match this ledger (LedgerTampered otherwise, and the
        file is left alone as evidence); the latest checkpoint is written to it at once.
        """
        path = Path(path)
        if path in self._anchors:
            return
        async with self._lock:
            cp = read_anchor(path)
            if cp is not None and cp.key_id == key_id_of(self._signer.public_key()):
                await self._check_against_db(cp, f"the checkpoint anchored in {path}")
            self._anchors += (path,)
            if self._last_cp is not None:
                try:
                    await asyncio.to_thread(write_anchor, path, self._last_cp)
                except OSError as exc:
                    log.error("cannot write ledger anchor %s: %s", path, exc.strerror)

    @property
    def latest_checkpoint(self) -> Checkpoint | None:
        return self._last_cp

    # ------------------------------------------------------------------ internals

    def _live(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise LedgerError("ledger is closed")
        return self._conn

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _signed_size(self) -> int:
        return self._last_cp.size if self._last_cp is not None else 0

    async def _setup(self) -> None:
        conn = self._live()
        mode = list(await conn.execute_fetchall("PRAGMA journal_mode=WAL"))[0][0]
        if str(mode).lower() != "wal":
            raise LedgerError(f"ledger cannot use WAL mode (got {mode})")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA busy_timeout=5000")
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in DDL.split(";"):
                if statement.strip():
                    await conn.execute(statement)
            rows = dict(await conn.execute_fetchall("SELECT key, value FROM meta"))
            if not rows:
                pub = self._signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                await conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
                    ("format", FORMAT), ("public_key", pub.hex()), ("created_ns", str(time.time_ns())),
                ])
            elif rows.get("format") != FORMAT:
                raise LedgerError(f"unsupported ledger format {rows.get('format')!r}")
            await conn.execute("COMMIT")
        except BaseException:
            try:
                await conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    async def _load(self) -> None:
        """Restore size, chain head, Merkle frontier and last checkpoint; refuse inconsistent state."""
        conn = self._live()
        count, top = list(await conn.execute_fetchall("SELECT count(*), max(idx) FROM entries"))[0]
        size = 0 if top is None else top + 1
        if count != size:
            raise LedgerTampered(f"ledger has {count} entries but its last index is {top}: entries are missing")
        self._size = size
        if size:
            (data, chain), = await conn.execute_fetchall("SELECT data, chain FROM entries WHERE idx = ?", (size - 1,))
            if not isinstance(chain, bytes) or len(chain) != 32 or not _as_bytes(data).startswith(prefix(size - 1)):
                raise LedgerTampered(f"ledger entry {size - 1} is malformed")
            self._head = chain
        frontier = []
        for level, index in merkle.compact_range(size):
            frontier.append((level, await self._node(level, index)))
        self._frontier = frontier
        rows = list(await conn.execute_fetchall(
            f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY size DESC LIMIT 1"))
        if rows:
            cp = checkpoint_row(tuple(rows[0]))
            await self._check_against_db(cp, "the latest stored checkpoint")
            self._last_cp = cp
        self._last_cp_mono = time.monotonic()

    async def _node(self, level: int, index: int) -> bytes:
        conn = self._live()
        if level == 0:
            rows = list(await conn.execute_fetchall("SELECT data FROM entries WHERE idx = ?", (index,)))
            if not rows:
                raise LedgerTampered(f"ledger entry {index} is missing")
            return merkle.leaf_hash(_as_bytes(rows[0][0]))
        rows = list(await conn.execute_fetchall("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)))
        if not rows or not isinstance(rows[0][0], bytes) or len(rows[0][0]) != 32:
            raise LedgerTampered(f"ledger tree node ({level}, {index}) is missing or malformed")
        return rows[0][0]

    async def _check_against_db(self, cp: Checkpoint, what: str) -> None:
        """``cp`` must be ours, cover no more than the database, and match its root and chain."""
        if not verify_checkpoint(cp, self._signer.public_key()):
            raise LedgerTampered(f"{what} (size {cp.size}) does not carry a valid signature of this key")
        if cp.size > self._size:
            raise LedgerTampered(
                f"{what} covers {cp.size} entries but the ledger holds {self._size}: "
                "the ledger was cut or replaced by an older copy")
        nodes = [await self._node(level, index) for level, index in merkle.compact_range(cp.size)]
        chain = GENESIS
        if cp.size:
            rows = list(await self._live().execute_fetchall("SELECT chain FROM entries WHERE idx = ?", (cp.size - 1,)))
            chain = rows[0][0] if rows else b""
        if merkle.fold(nodes) != cp.root or chain != cp.chain_head:
            raise LedgerTampered(f"the ledger's first {cp.size} entries do not match {what}")

    async def _check_anchors(self) -> None:
        for path in self._anchors:
            try:
                cp = read_anchor(path)
            except CheckpointError as exc:
                if path in self._loose:
                    self._bad_anchor(path, str(exc))
                    continue
                raise LedgerTampered(str(exc)) from None
            if cp is None:
                log.info("ledger anchor %s does not exist yet; it will be written at the next checkpoint", path)
                continue
            if cp.key_id != key_id_of(self._signer.public_key()):
                if path in self._loose:
                    self._bad_anchor(path, f"signed by another key ({cp.key_id})")
                    continue
                raise LedgerTampered(f"anchor {path} was signed by another key ({cp.key_id})")
            await self._check_against_db(cp, f"the checkpoint anchored in {path}")

    def _bad_anchor(self, path: Path, why: str) -> None:
        log.error("ledger anchor %s is not this ledger's (%s): replaced at the next checkpoint", path, why)
        self.bad_anchors.append((path, why))

    async def _unseen(self, conn: aiosqlite.Connection, events: Sequence[Event]) -> list[Event]:
        """Events whose (source, seq) is neither stored nor earlier in this batch, in order.

        A source numbers its events 1, 2, 3 …, so anything above the highest stored seq of its
        source is new without a lookup (the steady state); only replays (a spool drained after a
        crash) need the exact (source, seq) check."""
        wanted: dict[tuple[str, int], Event] = {}
        for event in events:
            if not isinstance(event, Event):
                raise LedgerError(f"append takes Event objects, not {type(event).__name__}")
            wanted.setdefault((event.source, event.seq), event)
        unknown = sorted({source for source, _ in wanted if source not in self._max_seq})
        if unknown:
            for source, top in await conn.execute_fetchall(
                    "SELECT j.value, (SELECT max(seq) FROM entries WHERE source = j.value) FROM json_each(?) AS j",
                    (json.dumps(unknown),)):
                self._max_seq[source] = top or 0
        doubtful = [key for key in wanted if key[1] <= self._max_seq[key[0]]]
        for start in range(0, len(doubtful), _DEDUP_CHUNK):
            chunk = doubtful[start:start + _DEDUP_CHUNK]
            for source, seq in await conn.execute_fetchall(
                    "SELECT e.source, e.seq FROM json_each(?) AS j JOIN entries AS e"
                    " ON e.source = j.value ->> 0 AND e.seq = j.value ->> 1", (json.dumps(chunk),)):
                wanted.pop((source, seq), None)
        return list(wanted.values())

    async def _commit(self, conn: aiosqlite.Connection, entry_rows: list[tuple[int, str, bytes]],
                      node_rows: list[tuple[int, int, bytes]], cp: Checkpoint | None) -> None:
        durable = cp is not None
        if durable:
            await conn.execute("PRAGMA synchronous=FULL")
        try:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                if entry_rows:
                    await conn.executemany("INSERT INTO entries(idx, data, chain) VALUES (?, ?, ?)", entry_rows)
                if node_rows:
                    await conn.executemany("INSERT INTO nodes(level, idx, hash) VALUES (?, ?, ?)", node_rows)
                if cp is not None:
                    await conn.execute(
                        f"INSERT INTO checkpoints({CHECKPOINT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                        (cp.size, cp.root, cp.chain_head, cp.time_ns, cp.key_id, cp.signature))
                await conn.execute("COMMIT")
            except BaseException:
                try:
                    await conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite already rolled back
                raise
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger write failed: {exc}") from None
        finally:
            if durable:
                await conn.execute("PRAGMA synchronous=NORMAL")

    async def _checkpoint_locked(self) -> Checkpoint:
        cp = sign_checkpoint(self._signer, self._size, merkle.fold([h for _, h in self._frontier]),
                             self._head, time.time_ns())
        await self._write(self._live(), [], [], cp, None, ())
        return cp

    async def _write(self, conn: aiosqlite.Connection, entry_rows: list[tuple[int, str, bytes]],
                     node_rows: list[tuple[int, int, bytes]], cp: Checkpoint | None,
                     state: tuple[int, bytes, list[tuple[int, bytes]]] | None, stored: Sequence[Event]) -> None:
        """Commit, then update the in-memory tree state and the anchors.

        Shielded: a caller cancelled mid-commit must not leave memory behind the database (the next
        append would reuse indices); the caller waits for the write to finish before re-raising."""
        async def commit_and_update() -> None:
            try:
                await self._commit(conn, entry_rows, node_rows, cp)
            except LedgerError:
                self._max_seq.clear()  # e.g. a duplicate slipped past a stale cache: look up again next time
                raise
            if state is not None:
                self._size, self._head, self._frontier = state
            for event in stored:
                if event.seq > self._max_seq.get(event.source, 0):
                    self._max_seq[event.source] = event.seq
            if cp is not None:
                await self._published(cp)

        task = asyncio.ensure_future(commit_and_update())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task])
            raise

    async def _published(self, cp: Checkpoint) -> None:
        """Record ``cp`` as the latest and copy it to the anchors (after it is durable in the DB)."""
        for path in self._anchors:
            try:
                await asyncio.to_thread(write_anchor, path, cp)
            except OSError as exc:
                # The checkpoint is safe in the database; a missing anchor weakens rollback detection,
                # it does not lose events, so log loudly and carry on.
                log.error("cannot write ledger anchor %s: %s", path, exc.strerror)
        self._last_cp = cp
        self._last_cp_mono = time.monotonic()

    async def _tick(self) -> None:
        """Checkpoint unsigned entries once they are ``checkpoint_interval`` seconds old."""
        while True:
            delay = self._last_cp_mono + self._interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            if self._size == self._signed_size():
                # Idle: the next append sees the interval has passed and checkpoints itself.
                await asyncio.sleep(self._interval)
                continue
            try:
                async with self._lock:
                    if self._conn is not None and self._size != self._signed_size():
                        await self._checkpoint_locked()
            except LedgerError as exc:
                log.error("periodic ledger checkpoint failed: %s", exc)
                await asyncio.sleep(self._interval)


def _lock_writer(path: Path) -> int:
    """One writer per ledger: hold an exclusive flock on ``<db>.lock`` for the Ledger's lifetime
    (two writers would fork the chain; readers need no lock thanks to WAL)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LedgerError(f"cannot open ledger lock {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise LedgerError(f"ledger {path} is already open for writing by another process") from None
    return fd


def _as_bytes(value: object) -> bytes:
    """Entry data as stored: TEXT normally; anything else (a tampered row) hashes to a mismatch."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return repr(value).encode()
