"""``audit verify``: check every entry, chain value, tree node, checkpoint and anchor of a ledger (sync).

The database is read in one snapshot (one read transaction), anchors are read *before* it starts
(the daemon writes an anchor only after its checkpoint is committed, so an anchor never runs ahead
of a later snapshot).  Entries and tree nodes are checked by ledger/scan.py (batched, hashlib
only, no JSON parsing, split over processes for large ledgers); this module adds the signed
checkpoints and the anchors, and turns what was found into a ``Report``.

What each check catches:
- idx gaps                       → deleted entries (named by index)
- bound idx ≠ row idx            → moved, swapped, inserted or renumbered entries
- chain value ≠ H(prev ‖ entry)  → an edited entry (or chain column)
- stored nodes ≠ recomputed tree → a tampered tree (proofs would lie)
- checkpoint signature           → a forged checkpoint
- checkpoint root/chain ≠ entries → entries rewritten *with* chain and tree recomputed: the first
                                    failing checkpoint bounds the range since the last good one
- anchors (outside the DB)       → a cut tail or a database replaced by an older copy
"""
from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger import merkle
from ledger.anchor import read_anchor
from ledger.checkpoint import Checkpoint, verify_checkpoint
from ledger.errors import CheckpointError, LedgerError
from ledger.read import checkpoint_row, open_readonly
from ledger.scan import ENTRY, OTHER, RANGE, Findings, scan_all, stored_chain
from ledger.schema import CHECKPOINT_COLUMNS

ANCHOR_GRACE_S = 60  # a checkpoint this old must have reached every anchor


@dataclass
class Report:
    """``first_bad``/``reason``: the first precise entry problem (lowest index), else the first
    checkpoint range, else the first other problem; ``problems`` lists everything found."""
    ok: bool
    entries: int
    checkpoints: int
    first_bad: int | None
    reason: str
    problems: list[str]
    bad_checkpoint: int | None = None          # size of the first checkpoint that fails
    bad_range: tuple[int, int] | None = None   # entries [a, b) that failing checkpoint vouches for
    signed: int = 0                            # entries covered by the last good checkpoint
    anchors: int = 0                           # anchors that hold


def _report(found: Findings, entries: int, checkpoints: int, signed: int, anchors: int,
            bad_checkpoint: int | None, bad_range: tuple[int, int] | None) -> Report:
    messages = [m for _, _, m in found.problems]
    if found.dropped:
        messages.append(f"… and {found.dropped} more problems")
    first_bad, reason = None, "ok"
    if found.problems:
        # Precise entry problems first, then ranges, then the rest; lowest index first.
        _, first_bad, reason = min(found.problems, key=lambda p: (p[0], p[1] if p[1] is not None else 1 << 63))
    return Report(not found.problems, entries, checkpoints, first_bad, reason, messages,
                  bad_checkpoint, bad_range, signed, anchors)


def verify(path: Path, public_key: Ed25519PublicKey, anchors: Sequence[Path] = ()) -> Report:
    """Check the whole ledger at ``path`` against ``public_key`` and the anchor files."""
    found = Findings()
    anchored: list[tuple[Path, Checkpoint | None]] = []
    for anchor_path in anchors:
        try:
            anchored.append((Path(anchor_path), read_anchor(Path(anchor_path))))
        except CheckpointError as exc:
            found.add(OTHER, None, str(exc))
    try:
        conn = open_readonly(Path(path))
    except LedgerError as exc:
        found.add(OTHER, None, str(exc))
        return _report(found, 0, 0, 0, 0, None, None)
    with closing(conn):
        try:
            conn.execute("BEGIN")  # one snapshot for every read below
            return _Verifier(conn, public_key, found).run(Path(path), anchored)
        except sqlite3.DatabaseError as exc:
            found.add(OTHER, None, f"the database is unreadable: {exc}")
            return _report(found, 0, 0, 0, 0, None, None)


class _Verifier:
    def __init__(self, conn: sqlite3.Connection, public_key: Ed25519PublicKey, found: Findings) -> None:
        self.conn, self.public_key, self.found = conn, public_key, found
        self.levels: list[bytes] | None = None
        self.bad_checkpoint: int | None = None
        self.bad_range: tuple[int, int] | None = None

    def matches(self, cp: Checkpoint) -> bool:
        """Do the entries reproduce the checkpoint's root and chain head?"""
        levels = self.levels
        if levels is None:
            return False
        root = merkle.root_from_nodes(cp.size, lambda level, i: levels[level][32 * i:32 * i + 32])
        return root == cp.root and stored_chain(self.conn, cp.size) == cp.chain_head

    def run(self, path: Path, anchored: list[tuple[Path, Checkpoint | None]]) -> Report:
        found = self.found
        checkpoints: list[Checkpoint] = []
        for row in self.conn.execute(f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY size"):
            try:
                checkpoints.append(checkpoint_row(row))
            except CheckpointError as exc:
                found.add(OTHER, None, f"garbled checkpoint row: {exc}")
        rows, n, self.levels = scan_all(self.conn, path, found)
        good = self.check_checkpoints(checkpoints, n)
        held = self.check_anchors(anchored, checkpoints, n, good)
        return _report(found, rows, len(checkpoints), good, held, self.bad_checkpoint, self.bad_range)

    def check_checkpoints(self, checkpoints: list[Checkpoint], n: int) -> int:
        """Return the size of the last checkpoint before the first failure (0 if none)."""
        found = self.found
        good, failing = 0, 0
        for cp in checkpoints:
            if not verify_checkpoint(cp, self.public_key):
                found.add(OTHER, None, f"checkpoint at size {cp.size} has an invalid signature (forged, or another key)")
                if self.bad_checkpoint is None:
                    self.bad_checkpoint = cp.size
            elif cp.size > n:
                found.add(ENTRY, n, f"the ledger ends at {n} entries but holds a signed checkpoint of {cp.size}: "
                                    "the tail was cut")
                if self.bad_checkpoint is None:
                    self.bad_checkpoint = cp.size
            elif self.matches(cp):
                if not failing:
                    good = cp.size
            else:
                failing += 1
                if failing == 1:
                    if self.bad_checkpoint is None:
                        self.bad_checkpoint = cp.size
                    self.bad_range = (good, cp.size)
                    found.add(RANGE, good, f"signed checkpoint at size {cp.size} does not match entries "
                                           f"{good}..{cp.size - 1}: an entry in that range was changed "
                                           "(with the chain and tree recomputed)")
        if failing > 1:
            found.add(OTHER, None, f"{failing - 1} later checkpoints fail as well")
        return good

    def check_anchors(self, anchored: list[tuple[Path, Checkpoint | None]], checkpoints: list[Checkpoint],
                      n: int, good: int) -> int:
        """Return how many anchors hold."""
        found = self.found
        held = 0
        by_size = {cp.size: cp for cp in checkpoints}
        for path, cp in anchored:
            if cp is None:
                # The daemon writes anchors just after committing a checkpoint, and a new anchor path
                # (a new vault) gets one at the next checkpoint: only a checkpoint older than the
                # grace period proves that the anchor should exist.
                latest = checkpoints[-1] if checkpoints else None
                if (latest is not None and time.time_ns() - latest.time_ns > ANCHOR_GRACE_S * 1e9
                        and not path.exists()):
                    found.add(OTHER, None, f"anchor {path} is missing (deleted?): a cut tail could go unnoticed")
            elif not verify_checkpoint(cp, self.public_key):
                found.add(OTHER, None, f"anchor {path} has an invalid signature (forged, or another key)")
            elif cp.size > n:
                found.add(ENTRY, n, f"the ledger ends at {n} entries but anchor {path} holds a signed checkpoint "
                                    f"of {cp.size}: the tail was cut or the database replaced by an older copy")
            elif not self.matches(cp):
                start = min(good, cp.size)
                found.add(RANGE, start, f"anchor {path} (size {cp.size}) does not match entries "
                                        f"{start}..{cp.size - 1}: an entry in that range was changed "
                                        "(with the chain and tree recomputed)")
                if self.bad_range is None:
                    self.bad_range = (start, cp.size)
            elif (stored := by_size.get(cp.size)) is None or stored.signature != cp.signature:
                found.add(OTHER, None, f"the checkpoint of size {cp.size} anchored in {path} is missing from "
                                       "the database (checkpoints deleted)")
            else:
                held += 1
        return held
