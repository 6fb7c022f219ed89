"""Helpers for ledger tests: a signing key, events, and real ledger files written by ``Ledger``."""
from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.events import Event
from ledger.store import Ledger

SOURCE = "00112233aabbccdd"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


def make_events(n: int, start: int = 1, source: str = SOURCE, t0: int = 1_700_000_000_000_000_000) -> list[Event]:
    ops = ("access", "create", "rename", "unlink", "setattr")
    return [
        Event(source, seq, t0 + seq * 1_000_000, ops[seq % len(ops)], uid=1000 + seq % 3, pid=100 + seq, comm="cat",
              vault="ab" * 16, file_id=f"{seq:032x}", path=f"/docs/d{seq % 4}/file{seq:05d}.txt",
              path2=f"/docs/moved/file{seq:05d}.txt" if ops[seq % len(ops)] == "rename" else "",
              bytes_read=seq * 10, reads=seq % 7)
        for seq in range(start, start + n)
    ]


@dataclass
class Built:
    db: Path
    anchors: list[Path]

    def rw(self) -> sqlite3.Connection:
        """A read-write connection, as an attacker with file access would use."""
        return sqlite3.connect(self.db, isolation_level=None)


async def append_all(ledger: Ledger, events: Sequence[Event], batch: int) -> None:
    for i in range(0, len(events), batch):
        await ledger.append(events[i:i + batch])


def build(tmp: Path, n: int, every: int = 50, batch: int = 25, anchors: int = 2, name: str = "ledger.db",
          start: int = 1) -> Built:
    """A closed ledger of ``n`` entries with checkpoints every ``every`` and ``anchors`` anchor files."""
    built = Built(tmp / name, [tmp / f"anchor{i}.json" for i in range(anchors)])

    async def run() -> None:
        ledger = await Ledger.open(built.db, KEY, built.anchors, checkpoint_every=every, checkpoint_interval=3600)
        try:
            await append_all(ledger, make_events(n, start), batch)
        finally:
            await ledger.close()
    asyncio.run(run())
    return built


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return KEY
