"""The proxy's state in SQLite (aiosqlite, WAL): users and roles, grants with their kfrags,
seen nonces, and the hash-chained record.

One connection in autocommit mode; every write runs under one asyncio lock inside an explicit
transaction, so concurrent requests never share (or roll back) each other's transaction — a
nonce, once accepted, is durable before the request is served.

The hot path — a re-encryption's record row and nonce, and the nonces of reads — goes through
a *group commit*: requests queue their rows and wait; one flush writes everything queued so
far in a single transaction (one trip to the database thread), then answers them all.  Nothing
is answered before its rows are committed, rows keep their order, and a revocation that
committed before the flush still wins (the flush re-checks each grant and drops those rows).
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from proxy.service import record as rec
from proxy.errors import ProxyError

SCHEMA_VERSION = 2
ROLES = ("reader", "owner", "admin")  # each role may do what the ones before it may
GUARD = "guard"  # outside that order: may only revoke grants whose recipient is in its scope
ALL_ROLES = (*ROLES, GUARD)
ANY_RECIPIENT = "*"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    fingerprint TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('reader', 'owner', 'admin', 'guard')),
    umbral_pk BLOB NOT NULL,
    verifying_pk BLOB NOT NULL,
    ed25519_pk BLOB NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    scope TEXT NOT NULL DEFAULT ''   -- a guard's recipients: comma-separated fingerprints, or '*'
);
CREATE TABLE IF NOT EXISTS grants (
    grant_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    recipient TEXT NOT NULL,
    delegating_pk BLOB NOT NULL,
    verifying_pk BLOB NOT NULL,
    receiving_pk BLOB NOT NULL,
    threshold INTEGER NOT NULL,
    shares INTEGER NOT NULL,
    kfrag BLOB,                      -- NULL once revoked: the kfrag is deleted, the row stays
    kfrag_sha256 TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    revoked_ns INTEGER,
    revoked_by TEXT
);
CREATE INDEX IF NOT EXISTS grants_owner ON grants (owner);
CREATE INDEX IF NOT EXISTS grants_recipient ON grants (recipient);
CREATE INDEX IF NOT EXISTS grants_delegating ON grants (delegating_pk);
CREATE TABLE IF NOT EXISTS nonces (
    key_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (key_id, nonce)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonces_expires ON nonces (expires);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    op TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
    BEGIN SELECT RAISE(ABORT, 'the record is append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
    BEGIN SELECT RAISE(ABORT, 'the record is append-only'); END;
"""


class GrantConflict(ProxyError):
    """A grant with this id exists with different contents (HTTP 409)."""


@dataclass(frozen=True, slots=True)
class User:
    fingerprint: str
    name: str
    role: str
    umbral_pk: bytes
    verifying_pk: bytes
    ed25519_pk: bytes
    scope: tuple[str, ...] = ()  # a guard's recipients (fingerprints, or "*"); empty for other roles

    def has_role(self, role: str) -> bool:
        """reader < owner < admin; a guard has none of them."""
        if self.role == GUARD or role == GUARD:
            return self.role == role
        return ROLES.index(self.role) >= ROLES.index(role)

    def guards(self, recipient: str) -> bool:
        """A guard whose scope covers grants addressed to *recipient*."""
        return self.role == GUARD and (ANY_RECIPIENT in self.scope or recipient in self.scope)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fingerprint": self.fingerprint, "name": self.name, "role": self.role}
        if self.role == GUARD:
            out["scope"] = list(self.scope)
        return out


@dataclass(frozen=True, slots=True)
class Grant:
    grant_id: str
    owner: str
    recipient: str
    delegating_pk: bytes
    verifying_pk: bytes
    receiving_pk: bytes
    threshold: int
    shares: int
    kfrag: bytes | None
    kfrag_sha256: str
    created_ns: int
    revoked_ns: int | None = None
    revoked_by: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_ns is not None

    def same_request(self, other: "Grant") -> bool:
        """The same grant sent again (a retry): everything but the timestamps equal."""
        return (self.owner, self.recipient, self.delegating_pk, self.verifying_pk, self.receiving_pk,
                self.threshold, self.shares, self.kfrag_sha256) == (
                other.owner, other.recipient, other.delegating_pk, other.verifying_pk, other.receiving_pk,
                other.threshold, other.shares, other.kfrag_sha256)

    def to_json(self) -> dict[str, Any]:
        """Metadata for listings: the kfrag itself never leaves the proxy."""
        return {
            "grant_id": self.grant_id, "owner": self.owner, "recipient": self.recipient,
            "threshold": self.threshold, "shares": self.shares,
            "created": self.created_ns / 1e9,
            "revoked": self.revoked_ns / 1e9 if self.revoked_ns is not None else None,
            "revoked_by": self.revoked_by,
        }


_GRANT_COLUMNS = ("grant_id, owner, recipient, delegating_pk, verifying_pk, receiving_pk, threshold, shares, "
                  "kfrag, kfrag_sha256, created_ns, revoked_ns, revoked_by")
_USER_COLUMNS = "fingerprint, name, role, umbral_pk, verifying_pk, ed25519_pk, scope"

# Schema 1 -> 2: the users table gains the guard role (its CHECK) and the scope column.
# SQLite cannot change a CHECK in place, so the table is rebuilt in one transaction.
_MIGRATE_1_TO_2 = """
CREATE TABLE users_v2 (
    fingerprint TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('reader', 'owner', 'admin', 'guard')),
    umbral_pk BLOB NOT NULL,
    verifying_pk BLOB NOT NULL,
    ed25519_pk BLOB NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    scope TEXT NOT NULL DEFAULT ''
);
INSERT INTO users_v2 (fingerprint, name, role, umbral_pk, verifying_pk, ed25519_pk, created_ns, updated_ns)
    SELECT fingerprint, name, role, umbral_pk, verifying_pk, ed25519_pk, created_ns, updated_ns FROM users;
DROP TABLE users;
ALTER TABLE users_v2 RENAME TO users;
UPDATE meta SET value = '2' WHERE key = 'schema';
"""


@dataclass(slots=True)
class _Queued:
    """Rows one request waits for: its nonce and/or one re-encryption record (of *grant_id*)."""

    nonce: "NonceClaim | None"
    grant_id: str | None
    actor: str = ""
    detail: dict[str, Any] | None = None
    future: "asyncio.Future[bool] | None" = None


@dataclass(slots=True)
class NonceClaim:
    """A nonce accepted in memory; written to the database inside the request's transaction."""

    key_id: str
    nonce: str
    expires: int
    persisted: bool = False


_GRANT_CACHE_MAX = 10000


class Store:
    """The only writer of its database (an exclusive lock file keeps a second proxy out), so
    users, recent nonces and recently used grants are kept in memory as well; the database
    stays the durable copy and is written before any answer is sent."""

    def __init__(self, db: aiosqlite.Connection, path: Path, lock_fd: int) -> None:
        self._db = db
        self.path = path
        self._lock_fd = lock_fd
        self._lock = asyncio.Lock()
        self._head_seq = 0
        self._head_hash = rec.GENESIS
        self._users: dict[str, User] = {}
        self._nonces: dict[tuple[str, str], int] = {}
        self._grants: dict[str, Grant] = {}
        self._queue: list[_Queued] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path) -> "Store":
        lock_fd = _lock_database(path)
        try:
            # Created 0600 before SQLite opens it: its -wal and -shm files take the same mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            db = await aiosqlite.connect(path, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            os.close(lock_fd)
            raise ProxyError(f"cannot open the proxy database {path}: {exc}") from None
        store = cls(db, path, lock_fd)
        try:
            await store._init()
        except BaseException:
            await store.close()
            raise
        return store

    async def _init(self) -> None:
        try:
            if self.path.stat().st_mode & 0o077:
                self.path.chmod(0o600)  # kfrags and the user list are nobody else's business
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA synchronous=NORMAL")
            await self._db.executescript(_SCHEMA)
            async with self._db.execute("SELECT value FROM meta WHERE key = 'schema'") as cur:
                row = await cur.fetchone()
            if row is None:
                await self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise ProxyError(f"{self.path}: proxy database schema {row[0]} is newer than this umbrafs supports")
            elif int(row[0]) == 1:
                await self._db.executescript("BEGIN IMMEDIATE;" + _MIGRATE_1_TO_2 + "COMMIT;")
            async with self._db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1") as cur:
                head = await cur.fetchone()
            if head is not None:
                self._head_seq, self._head_hash = int(head[0]), bytes(head[1])
            async with self._db.execute(f"SELECT {_USER_COLUMNS} FROM users") as cur:
                for row in await cur.fetchall():
                    user = _user(row)
                    self._users[user.fingerprint] = user
            # Nonces seen before a restart stay refused for the rest of their window.
            async with self._db.execute("SELECT key_id, nonce, expires FROM nonces WHERE expires >= ?",
                                        (int(time.time()),)) as cur:
                for key_id, nonce, expires in await cur.fetchall():
                    self._nonces[(key_id, nonce)] = int(expires)
        except sqlite3.DatabaseError as exc:
            raise ProxyError(f"{self.path}: not a usable proxy database ({exc})") from None

    async def close(self) -> None:
        try:
            if self._flusher is not None:
                await asyncio.gather(self._flusher, return_exceptions=True)
            await self._db.close()
        finally:
            os.close(self._lock_fd)

    @asynccontextmanager
    async def _transaction(self, nonce: NonceClaim | None = None) -> AsyncIterator[list[tuple[int, bytes]]]:
        """BEGIN IMMEDIATE … COMMIT under the write lock, with the request's nonce in it.

        Yields a list the body appends new record heads to, so the in-memory head moves only
        once the commit succeeded.  One connection serves every request: the lock keeps two
        requests from ever sharing (or rolling back) one transaction.
        """
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            heads: list[tuple[int, bytes]] = []
            try:
                if nonce is not None and not nonce.persisted:
                    await self._db.execute("INSERT OR IGNORE INTO nonces (key_id, nonce, expires) VALUES (?, ?, ?)",
                                           (nonce.key_id, nonce.nonce, nonce.expires))
                yield heads
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite ends it by itself on some errors (SQLITE_FULL)
                    await self._db.execute("ROLLBACK")
                raise
            if nonce is not None:
                nonce.persisted = True
            if heads:
                self._head_seq, self._head_hash = heads[-1]

    async def _append(self, heads: list[tuple[int, bytes]], op: str, actor: str, subject: str,
                      detail: dict[str, Any]) -> None:
        seq, prev = heads[-1] if heads else (self._head_seq, self._head_hash)
        row = rec.Record(seq + 1, time.time_ns(), op, actor, subject, detail)
        digest = rec.chain_hash(prev, row)
        await self._db.execute(
            "INSERT INTO records (seq, time_ns, op, actor, subject, detail, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.seq, row.time_ns, row.op, row.actor, row.subject,
             json.dumps(dict(detail), sort_keys=True, separators=(",", ":")), prev, digest),
        )
        heads.append((row.seq, digest))

    # -- nonces ---------------------------------------------------------------

    def claim_nonce(self, key_id: str, nonce: str, expires: int) -> NonceClaim | None:
        """Accept a nonce once (None for a replay).  Synchronous, so no other request can
        claim the same nonce in between; persist it with `persist_nonce` or a write."""
        if (key_id, nonce) in self._nonces:
            return None
        self._nonces[(key_id, nonce)] = expires
        return NonceClaim(key_id, nonce, expires)

    async def persist_nonce(self, nonce: NonceClaim) -> None:
        if nonce.persisted:
            return
        await self._commit_queued([_Queued(nonce, None)])

    # -- group commit -------------------------------------------------------------------

    async def _commit_queued(self, entries: list[_Queued]) -> list[bool]:
        """Queue *entries* and wait until a flush has committed them; for each record entry,
        False if its grant was revoked before the flush (nothing recorded for it then)."""
        loop = asyncio.get_running_loop()
        for entry in entries:
            entry.future = loop.create_future()
        self._queue.extend(entries)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_queue())
        return list(await asyncio.gather(*(e.future for e in entries)))  # type: ignore[arg-type]

    async def _flush_queue(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                results = await self._flush(batch)
            except BaseException as exc:
                error = exc if isinstance(exc, Exception) else ProxyError("the proxy is shutting down")
                for entry in batch:
                    if entry.future is not None and not entry.future.done():
                        entry.future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise
                continue
            for entry, ok in zip(batch, results):
                if entry.future is not None and not entry.future.done():
                    entry.future.set_result(ok)

    async def _flush(self, batch: list[_Queued]) -> list[bool]:
        async with self._lock:
            nonces: list[tuple[str, str, int]] = []
            rows: list[tuple[Any, ...]] = []
            results: list[bool] = []
            seq, prev = self._head_seq, self._head_hash
            for entry in batch:
                if entry.nonce is not None and not entry.nonce.persisted:
                    nonces.append((entry.nonce.key_id, entry.nonce.nonce, entry.nonce.expires))
                if entry.grant_id is None:
                    results.append(True)
                    continue
                # Under the lock, as in revoke_grant: a revocation that committed first wins.
                grant = await self.get_grant(entry.grant_id)
                if grant is None or grant.revoked:
                    results.append(False)
                    continue
                seq += 1
                row = rec.Record(seq, time.time_ns(), "reencrypt", entry.actor, entry.grant_id, entry.detail or {})
                link, prev = prev, rec.chain_hash(prev, row)
                rows.append((row.seq, row.time_ns, row.op, row.actor, row.subject,
                             json.dumps(dict(row.detail), sort_keys=True, separators=(",", ":")), link, prev))
                results.append(True)
            # One trip to the database thread for the whole batch (each aiosqlite call is one).
            await self._db._execute(_write_batch, self._db._conn, nonces, rows)
            for entry in batch:
                if entry.nonce is not None:
                    entry.nonce.persisted = True
            if rows:
                self._head_seq, self._head_hash = seq, prev
        return results

    async def prune_nonces(self, now: float) -> int:
        cutoff = int(now)
        for key in [k for k, expires in self._nonces.items() if expires < cutoff]:
            del self._nonces[key]
        async with self._transaction():
            cur = await self._db.execute("DELETE FROM nonces WHERE expires < ?", (cutoff,))
            return cur.rowcount

    # -- users ------------------------------------------------------------------

    def user(self, fingerprint: str) -> User | None:
        return self._users.get(fingerprint)

    async def put_user(self, user: User, actor: str, nonce: NonceClaim | None = None) -> bool:
        """Register *user* or change its role; True if new.  Recorded when anything changed."""
        existing = self._users.get(user.fingerprint)
        if existing == user:
            return False
        now = time.time_ns()
        async with self._transaction(nonce) as heads:
            await self._db.execute(
                "INSERT INTO users (fingerprint, name, role, umbral_pk, verifying_pk, ed25519_pk, created_ns, updated_ns, scope) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO UPDATE SET "
                "name = excluded.name, role = excluded.role, updated_ns = excluded.updated_ns, scope = excluded.scope",
                (user.fingerprint, user.name, user.role, user.umbral_pk, user.verifying_pk, user.ed25519_pk, now, now,
                 ",".join(user.scope)),
            )
            detail = {"name": user.name, "role": user.role}
            if user.role == GUARD:
                detail["scope"] = ",".join(user.scope)
            await self._append(heads, "register", actor, user.fingerprint, detail)
        self._users[user.fingerprint] = user
        return existing is None

    def users(self) -> list[User]:
        return sorted(self._users.values(), key=lambda u: (u.name, u.fingerprint))

    # -- grants -----------------------------------------------------------------

    def _cache(self, grant: Grant) -> None:
        if len(self._grants) >= _GRANT_CACHE_MAX:
            self._grants.clear()  # simple and rare; the database has them all
        self._grants[grant.grant_id] = grant

    async def get_grant(self, grant_id: str) -> Grant | None:
        cached = self._grants.get(grant_id)
        if cached is not None:
            return cached
        async with self._db.execute(f"SELECT {_GRANT_COLUMNS} FROM grants WHERE grant_id = ?", (grant_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        grant = _grant(row)
        self._cache(grant)
        return grant

    async def add_grant(self, grant: Grant, actor: str, nonce: NonceClaim | None = None) -> bool:
        """Store a verified grant; True if new, False for a retry of the same one, GrantConflict otherwise."""
        async with self._transaction(nonce) as heads:
            existing = await self.get_grant(grant.grant_id)
            if existing is not None:
                if existing.revoked:
                    raise GrantConflict(f"grant {grant.grant_id} was revoked; a new grant needs a new id")
                if existing.same_request(grant):
                    return False
                raise GrantConflict(f"grant {grant.grant_id} exists with different contents")
            # One delegating key per share: reused, a grant's kfrag would re-encrypt the other
            # grant's capsule as well.
            async with self._db.execute("SELECT 1 FROM grants WHERE delegating_pk = ? LIMIT 1",
                                        (grant.delegating_pk,)) as cur:
                if await cur.fetchone() is not None:
                    raise GrantConflict("delegating_pk is already used by another grant (one key per share)")
            await self._db.execute(
                f"INSERT INTO grants ({_GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (grant.grant_id, grant.owner, grant.recipient, grant.delegating_pk, grant.verifying_pk,
                 grant.receiving_pk, grant.threshold, grant.shares, grant.kfrag, grant.kfrag_sha256,
                 grant.created_ns, None, None),
            )
            await self._append(heads, "grant", actor, grant.grant_id, {
                "owner": grant.owner, "recipient": grant.recipient, "threshold": grant.threshold,
                "shares": grant.shares, "kfrag_sha256": grant.kfrag_sha256[:16],
            })
        self._cache(grant)
        return True

    async def revoke_grant(self, grant_id: str, actor: str, nonce: NonceClaim | None = None,
                           detail: dict[str, Any] | None = None) -> bool:
        """Delete the kfrag and mark the grant revoked; False if it was already revoked.
        *detail* goes into the record row (the role the caller revoked as)."""
        now = time.time_ns()
        async with self._transaction(nonce) as heads:
            cur = await self._db.execute(
                "UPDATE grants SET kfrag = NULL, revoked_ns = ?, revoked_by = ? WHERE grant_id = ? AND revoked_ns IS NULL",
                (now, actor, grant_id),
            )
            if cur.rowcount == 0:
                return False
            await self._append(heads, "revoke", actor, grant_id, detail or {})
            # Still under the lock: a re-encryption that takes the lock next sees the revocation.
            self._grants.pop(grant_id, None)
        return True

    async def record_reencrypt(self, grant_id: str, actor: str, capsule_sha256: str,
                               nonce: NonceClaim | None = None) -> bool:
        """Record a re-encryption (group commit, with the request's nonce); False (nothing
        recorded) if the grant was revoked before the flush: a revoke that committed first wins."""
        return (await self.record_reencrypts([(grant_id, capsule_sha256)], actor, nonce))[0]

    async def record_reencrypts(self, items: list[tuple[str, str]], actor: str,
                                nonce: NonceClaim | None = None) -> list[bool]:
        """Record several re-encryptions (grant id, capsule SHA-256) of one request, in order."""
        entries = [_Queued(nonce if i == 0 else None, grant_id, actor, {"capsule_sha256": digest[:16]})
                   for i, (grant_id, digest) in enumerate(items)]
        return await self._commit_queued(entries)

    async def list_grants(self, involving: str | None = None, owner: str | None = None,
                          recipient: str | None = None, active_only: bool = False,
                          recipients: tuple[str, ...] | None = None) -> list[Grant]:
        """Grants filtered by owner/recipient; *involving* = owned by or addressed to that fingerprint,
        or (with *recipients*, a guard's scope) addressed to one of *recipients*."""
        where: list[str] = []
        args: list[Any] = []
        if involving is not None:
            if recipients is not None:
                where.append(f"recipient IN ({', '.join('?' * len(recipients))})" if recipients else "0")
                args += list(recipients)
            else:
                where.append("(owner = ? OR recipient = ?)")
                args += [involving, involving]
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if recipient is not None:
            where.append("recipient = ?")
            args.append(recipient)
        if active_only:
            where.append("revoked_ns IS NULL")
        sql = f"SELECT {_GRANT_COLUMNS} FROM grants"
        if where:
            sql += " WHERE " + " AND ".join(where)
        async with self._db.execute(sql + " ORDER BY created_ns, grant_id", args) as cur:
            return [_grant(row) for row in await cur.fetchall()]

    # -- the record ---------------------------------------------------------------

    @property
    def head(self) -> tuple[int, bytes]:
        return self._head_seq, self._head_hash


def _write_batch(conn: sqlite3.Connection, nonces: list[tuple[str, str, int]], rows: list[tuple[Any, ...]]) -> None:
    """One group-commit transaction (runs in the database thread)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if nonces:
            conn.executemany("INSERT OR IGNORE INTO nonces (key_id, nonce, expires) VALUES (?, ?, ?)", nonces)
        if rows:
            conn.executemany("INSERT INTO records (seq, time_ns, op, actor, subject, detail, prev, hash) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite ends it by itself on some errors (SQLITE_FULL)
            conn.execute("ROLLBACK")
        raise


def _lock_database(path: Path) -> int:
    """An exclusive lock beside the database: one proxy process per database."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ProxyError(f"cannot open the proxy database {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ProxyError(f"{path}: another proxy process uses this database") from None
    return fd


def _user(row: Any) -> User:
    return User(row[0], row[1], row[2], bytes(row[3]), bytes(row[4]), bytes(row[5]),
                tuple(s for s in str(row[6]).split(",") if s))


def _grant(row: Any) -> Grant:
    return Grant(row[0], row[1], row[2], bytes(row[3]), bytes(row[4]), bytes(row[5]), int(row[6]), int(row[7]),
                 bytes(row[8]) if row[8] is not None else None, row[9], int(row[10]),
                 int(row[11]) if row[11] is not None else None, row[12])


def read_records(path: Path) -> list[rec.StoredRecord]:
    """All rows of the record, read-only and synchronously (for `proxy verify-log`, offline)."""
    if not path.exists():
        raise ProxyError(f"{path}: no such proxy database")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT seq, time_ns, op, actor, subject, detail, prev, hash FROM records ORDER BY seq").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise ProxyError(f"{path}: not a usable proxy database ({exc})") from None
    out = []
    for seq, time_ns, op, actor, subject, detail, prev, digest in rows:
        try:
            detail_obj = json.loads(detail)
        except ValueError:
            detail_obj = {"unparseable": str(detail)[:64]}  # hashes will not match: verify names the row
        out.append(rec.StoredRecord(rec.Record(int(seq), int(time_ns), str(op), str(actor), str(subject), detail_obj),
                                    bytes(prev), bytes(digest)))
    return out


def verify_records(path: Path) -> rec.ChainReport:
    """Verify the proxy's record chain in the database at *path*; RecordChainBroken names the first bad row."""
    return rec.verify(read_records(path))
