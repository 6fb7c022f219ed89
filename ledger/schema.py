"""The ledger's SQLite schema, shared by the asyncio writer (store.py) and the sync readers.

Only ``data`` (the hashed entry bytes), ``chain`` (stored chain values), ``nodes`` (perfect-subtree
hashes, levels >= 1) and ``checkpoints`` are stored.  The columns used for filtering and for the
exactly-once index are *generated* from ``data`` by SQLite, so there is no second copy of an
event's fields that could be edited apart from the hashed bytes.  ``data`` is TEXT (ASCII JSON)
because SQLite's JSON functions refuse BLOBs; readers set ``text_factory = bytes``.
"""
from __future__ import annotations

FORMAT = "umbrafs-ledger 1"

DDL = """
CREATE TABLE IF NOT EXISTS meta(
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries(
    idx INTEGER PRIMARY KEY,
    data TEXT NOT NULL,
    chain BLOB NOT NULL,
    source TEXT GENERATED ALWAYS AS (json_extract(data, '$.source')) VIRTUAL,
    seq INTEGER GENERATED ALWAYS AS (json_extract(data, '$.seq')) VIRTUAL,
    time_ns INTEGER GENERATED ALWAYS AS (json_extract(data, '$.time_ns')) VIRTUAL,
    op TEXT GENERATED ALWAYS AS (json_extract(data, '$.op')) VIRTUAL,
    uid INTEGER GENERATED ALWAYS AS (json_extract(data, '$.uid')) VIRTUAL,
    path TEXT GENERATED ALWAYS AS (json_extract(data, '$.path')) VIRTUAL,
    path2 TEXT GENERATED ALWAYS AS (json_extract(data, '$.path2')) VIRTUAL
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_source_seq ON entries(source, seq);
CREATE TABLE IF NOT EXISTS nodes(
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY(level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints(
    size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    chain_head BLOB NOT NULL,
    time_ns INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    signature BLOB NOT NULL
);
"""

CHECKPOINT_COLUMNS = "size, root, chain_head, time_ns, key_id, signature"
