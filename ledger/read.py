"""Sync, read-only access to a ledger database: listing, proofs, export (for the CLI).

Connections are opened with ``mode=ro``; thanks to WAL they see a consistent snapshot while the
daemon keeps writing.  Readers trust nothing they read: entries are parsed as untrusted bytes, and
a row that does not parse raises ``LedgerTampered`` naming its index.
"""
from __future__ import annotations

import hmac
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger import merkle
from ledger.checkpoint import Checkpoint, verify_checkpoint
from ledger.entry import EntryError, prefix, unbind
from ledger.errors import CheckpointError, LedgerError, LedgerTampered
from ledger.events import Event
from ledger.schema import CHECKPOINT_COLUMNS, FORMAT

PROOF_VERSION = 1
_BATCH = 2000
_escape = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # the escaping of events.encode


def open_readonly(path: Path) -> sqlite3.Connection:
    """Open a ledger read-only (usable while the daemon writes).  TEXT comes back as bytes."""
    path = Path(path)
    if not path.is_file():
        raise LedgerError(f"no ledger database at {path}")
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open ledger {path}: {exc}") from None
    conn.text_factory = bytes
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise LedgerError(f"{path} is not a ledger database: {exc}") from None
    if row is None or row[0] != FORMAT.encode():
        conn.close()
        raise LedgerError(f"{path} is not a ledger of format {FORMAT!r}")
    return conn


def ledger_size(conn: sqlite3.Connection) -> int:
    """Number of entries, by the highest index (``audit verify`` checks there are no gaps)."""
    top = conn.execute("SELECT max(idx) FROM entries").fetchone()[0]
    return 0 if top is None else int(top) + 1


def checkpoint_row(row: tuple[Any, ...]) -> Checkpoint:
    """A checkpoints-table row as an (unverified) Checkpoint; CheckpointError if malformed."""
    size, root, chain_head, time_ns, key_id, signature = row
    if isinstance(key_id, bytes):
        key_id = key_id.decode("ascii", "replace")
    if (type(size) is not int or type(time_ns) is not int or not isinstance(key_id, str)
            or not all(isinstance(v, bytes) for v in (root, chain_head, signature))):
        raise CheckpointError(f"checkpoint row {size!r} is malformed")
    return Checkpoint(size, root, chain_head, time_ns, key_id, signature)


def latest_checkpoint(conn: sqlite3.Connection) -> Checkpoint | None:
    row = conn.execute(f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
    return None if row is None else checkpoint_row(row)


def checkpoint_at(conn: sqlite3.Connection, size: int) -> Checkpoint | None:
    row = conn.execute(f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE size = ?", (size,)).fetchone()
    return None if row is None else checkpoint_row(row)


def entry_bytes(conn: sqlite3.Connection, idx: int) -> bytes:
    row = conn.execute("SELECT data FROM entries WHERE idx = ?", (idx,)).fetchone()
    if row is None:
        raise LedgerTampered(f"ledger entry {idx} is missing")
    data = row[0]
    if not isinstance(data, bytes) or not data.startswith(prefix(idx)):
        raise LedgerTampered(f"ledger entry {idx} does not carry its own index")
    return data


def node_reader(conn: sqlite3.Connection) -> merkle.NodeHash:
    """Accessor over stored perfect-subtree hashes (level 0 is hashed from the entry bytes)."""
    def node(level: int, index: int) -> bytes:
        if level == 0:
            return merkle.leaf_hash(entry_bytes(conn, index))
        row = conn.execute("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)).fetchone()
        if row is None or not isinstance(row[0], bytes) or len(row[0]) != merkle.HASH_SIZE:
            raise LedgerTampered(f"ledger tree node ({level}, {index}) is missing or malformed")
        return row[0]
    return node


def root_at(conn: sqlite3.Connection, size: int) -> bytes:
    """Merkle root of the first ``size`` entries, from stored nodes (O(log size) lookups)."""
    return merkle.root_from_nodes(size, node_reader(conn))


def _path_matches(event: Event, prefix_: str) -> bool:
    base = prefix_.rstrip("/")
    return any(p == base or p.startswith(base + "/") for p in (event.path, event.path2) if p)


def entries(conn: sqlite3.Connection, since_ns: int | None = None, path_prefix: str | None = None,
            op: str | None = None, uid: int | None = None, limit: int | None = None) -> Iterator[tuple[int, Event]]:
    """(idx, event) in ledger order, filtered.  ``path_prefix`` matches whole components of path or path2.

    SQLite pre-filters on columns generated from the entry JSON; the decoded event has the last word."""
    where: list[str] = []  # pre-filters evaluated by SQLite
    params: list[Any] = []
    if since_ns is not None:
        where.append("time_ns >= ?")
        params.append(since_ns)
    if op is not None:
        where.append("op = ?")
        params.append(op)
    if uid is not None:
        where.append("uid = ?")
        params.append(uid)
    if path_prefix is not None and path_prefix.rstrip("/"):
        # Match the escaped path inside the hashed JSON text itself: exact for any name, even
        # non-UTF-8 ones, because entries are canonical JSON (ensure_ascii).
        quoted = _escape(path_prefix.rstrip("/"))[:-1]
        where.append("(" + " OR ".join(["instr(data, ?) > 0"] * 4) + ")")
        params += [f'"{key}":{quoted}{end}' for key in ("path", "path2") for end in ('"', "/")]
    sql = "SELECT idx, data FROM entries"
    if where:
        # Rows that are not JSON pass the pre-filter so that decoding reports them.
        sql += f" WHERE CASE WHEN json_valid(data) THEN ({' AND '.join(where)}) ELSE 1 END"
    sql += " ORDER BY idx"
    if limit is not None and limit <= 0:
        return
    found = 0
    try:
        cur = conn.execute(sql, params)
        while batch := cur.fetchmany(_BATCH):
            for idx, data in batch:
                try:
                    bound, event = unbind(data if isinstance(data, bytes) else b"")
                except EntryError as exc:
                    raise LedgerTampered(f"ledger entry {idx} is unreadable ({exc}); run `umbrafs audit verify`") from None
                if bound != idx:
                    raise LedgerTampered(f"ledger entry {idx} carries index {bound}; run `umbrafs audit verify`")
                if since_ns is not None and event.time_ns < since_ns:
                    continue
                if (op is not None and event.op != op) or (uid is not None and event.uid != uid):
                    continue
                if path_prefix is not None and path_prefix.rstrip("/") and not _path_matches(event, path_prefix):
                    continue
                yield idx, event
                found += 1
                if limit is not None and found >= limit:
                    return
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read the ledger: {exc}") from None


def inclusion_proof(conn: sqlite3.Connection, idx: int, size: int | None = None) -> dict[str, Any]:
    """JSON-able proof that entry ``idx`` is in the tree of ``size`` entries (default: latest checkpoint)."""
    try:
        cp: Checkpoint | None
        if size is None:
            cp = latest_checkpoint(conn)
            if cp is None:
                raise LedgerError("the ledger has no checkpoint yet")
            size = cp.size
        else:
            cp = checkpoint_at(conn, size)
        total = ledger_size(conn)
        if cp is not None and size == cp.size and size <= idx < total:
            raise LedgerError(f"entry {idx} is not covered by a signed checkpoint yet (the latest covers "
                              f"{size} entries); the daemon signs new entries within seconds")
        if not 0 <= idx < size <= total:
            raise LedgerError(f"no entry {idx} in a ledger tree of {size} entries")
        node = node_reader(conn)
        leaf = entry_bytes(conn, idx)
        proof = merkle.inclusion_proof(idx, size, node)
        root = merkle.root_from_nodes(size, node)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read the ledger: {exc}") from None
    if cp is not None and not hmac.compare_digest(cp.root, root):
        raise LedgerTampered(f"the stored tree of {size} entries does not match its signed checkpoint")
    return {
        "version": PROOF_VERSION,
        "idx": idx,
        "size": size,
        "leaf": leaf.decode("ascii", "backslashreplace"),
        "leaf_hash": merkle.leaf_hash(leaf).hex(),
        "root": root.hex(),
        "proof": [h.hex() for h in proof],
        "checkpoint": cp.to_dict() if cp is not None else None,
    }


def check_inclusion_proof(doc: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    """The procedure of docs/ledger.md: True only if every step holds.  Never raises on bad input."""
    try:
        idx, size, leaf = doc["idx"], doc["size"], doc["leaf"].encode("ascii")
        root = bytes.fromhex(doc["root"])
        proof = [bytes.fromhex(h) for h in doc["proof"]]
        if type(idx) is not int or type(size) is not int or doc.get("version") != PROOF_VERSION:
            return False
        if not leaf.startswith(prefix(idx)):                           # 1. the entry names its index
            return False
        leaf_h = merkle.leaf_hash(leaf)                                # 2. leaf hash
        if not hmac.compare_digest(leaf_h, bytes.fromhex(doc["leaf_hash"])):
            return False
        if not merkle.verify_inclusion(leaf_h, idx, size, proof, root):  # 3. audit path → root
            return False
        cp = Checkpoint.from_dict(doc["checkpoint"])                   # 4. root is signed
        return cp.size == size and hmac.compare_digest(cp.root, root) and verify_checkpoint(cp, public_key)
    except (KeyError, TypeError, ValueError, AttributeError, UnicodeError, CheckpointError):
        return False


def consistency_proof(conn: sqlite3.Connection, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, new_size) from stored nodes."""
    try:
        if not 0 <= old_size <= new_size <= ledger_size(conn):
            raise LedgerError(f"no consistency proof from {old_size} to {new_size} entries")
        return merkle.consistency_proof(old_size, new_size, node_reader(conn))
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read the ledger: {exc}") from None


def export(conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    """Everything as JSON-able dicts, in order: a header, then entries with each checkpoint after the
    entry that completes it.  Entries carry their exact hashed text so a SIEM can re-verify."""
    try:
        pub = conn.execute("SELECT value FROM meta WHERE key = 'public_key'").fetchone()
        yield {"type": "ledger", "format": FORMAT, "public_key": pub[0].decode() if pub else None}
        try:
            cps = [checkpoint_row(r) for r in conn.execute(
                f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY size")]
        except CheckpointError as exc:
            raise LedgerTampered(f"{exc}; run `umbrafs audit verify`") from None
        pending = iter(cps)
        nxt = next(pending, None)
        while nxt is not None and nxt.size == 0:
            yield {"type": "checkpoint", **nxt.to_dict()}
            nxt = next(pending, None)
        cur = conn.execute("SELECT idx, data, chain FROM entries ORDER BY idx")
        while batch := cur.fetchmany(_BATCH):
            for idx, data, chain in batch:
                try:
                    bound, event = unbind(data if isinstance(data, bytes) else b"")
                except EntryError as exc:
                    raise LedgerTampered(f"ledger entry {idx} is unreadable ({exc}); run `umbrafs audit verify`") from None
                if bound != idx:
                    raise LedgerTampered(f"ledger entry {idx} carries index {bound}; run `umbrafs audit verify`")
                yield {"type": "entry", "idx": idx, "event": event.to_dict(),
                       "entry": data.decode("ascii", "backslashreplace"),
                       "chain": chain.hex() if isinstance(chain, bytes) else None}
                while nxt is not None and nxt.size == idx + 1:
                    yield {"type": "checkpoint", **nxt.to_dict()}
                    nxt = next(pending, None)
        while nxt is not None:  # checkpoints beyond the entries: a cut ledger; export says so, verify fails
            yield {"type": "checkpoint", **nxt.to_dict()}
            nxt = next(pending, None)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read the ledger: {exc}") from None
