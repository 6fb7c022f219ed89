"""The proxy's own append-only record of register, grant, re-encrypt and revoke (pure).

Each row's hash is SHA-256(previous hash || canonical encoding of the row); the first row
chains from 32 zero bytes.  Rewriting, deleting or reordering a row breaks every hash after
it and `verify` names the first row that does not match.  (Cutting rows off the end is not
detected by a bare chain; compare the head with a copy kept elsewhere — `head` — for that.)
Rows never hold secrets: kfrags, capsules and cfrags appear only as SHA-256 prefixes.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import RecordChainBroken

OPS = frozenset({"register", "grant", "reencrypt", "revoke"})
GENESIS = bytes(32)


@dataclass(frozen=True, slots=True)
class Record:
    seq: int          # 1, 2, 3 … without gaps
    time_ns: int      # wall clock of the proxy
    op: str           # one of OPS
    actor: str        # fingerprint of the caller ("bootstrap" for --admin at start)
    subject: str      # grant id, or the registered user's fingerprint
    detail: Mapping[str, Any] = field(default_factory=dict)  # flat str → str|int|bool


def encode(record: Record) -> bytes:
    """Canonical bytes of a row: JSON, sorted keys, no spaces, ASCII only."""
    obj = {"seq": record.seq, "time_ns": record.time_ns, "op": record.op, "actor": record.actor,
           "subject": record.subject, "detail": dict(record.detail)}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def chain_hash(prev: bytes, record: Record) -> bytes:
    return hashlib.sha256(prev + encode(record)).digest()


@dataclass(frozen=True, slots=True)
class StoredRecord:
    record: Record
    prev: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class ChainReport:
    rows: int
    head: bytes  # hash of the last row (GENESIS when empty)


def verify(rows: Iterable[StoredRecord]) -> ChainReport:
    """Check seq numbering, links and hashes in order; RecordChainBroken names the first bad row."""
    prev = GENESIS
    expected_seq = 1
    count = 0
    for row in rows:
        rec = row.record
        where = f"record {rec.seq} ({rec.op} {rec.subject[:16]})"
        if rec.seq != expected_seq:
            raise RecordChainBroken(f"{where}: expected record {expected_seq} here (a row was deleted or reordered)")
        if rec.op not in OPS:
            raise RecordChainBroken(f"{where}: unknown op")
        if row.prev != prev:
            raise RecordChainBroken(f"{where}: does not link to record {rec.seq - 1}")
        if row.hash != chain_hash(prev, rec):
            raise RecordChainBroken(f"{where}: hash does not match its contents (the row was altered)")
        prev = row.hash
        expected_seq += 1
        count += 1
    return ChainReport(count, prev)
