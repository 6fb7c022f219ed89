"""Ledger benchmark: append rate, verify rate, inclusion-proof production and check times.

    python benchmarks/ledger_bench.py [--entries 1000000] [--batch 500] [--dir /tmp]

Builds a real ledger (aiosqlite, WAL, signed checkpoints every 1000 entries, one anchor file) in a
temporary directory, prints each figure beside the target of issue 4, and deletes the ledger.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.events import Event
from ledger.read import check_inclusion_proof, inclusion_proof, open_readonly
from ledger.store import Ledger
from ledger.verify import verify

OPS = ("access", "access", "access", "access", "create", "unlink", "rename", "setattr", "mkdir")


def make_events(source: str, first_seq: int, n: int, rng: random.Random) -> list[Event]:
    now = time.time_ns()
    out = []
    for seq in range(first_seq, first_seq + n):
        op = rng.choice(OPS)
        out.append(Event(
            source=source, seq=seq, time_ns=now + seq, op=op, uid=1000, pid=4000 + seq % 50, comm="bash",
            vault="7a" * 16, file_id=f"{rng.getrandbits(128):032x}",
            path=f"/projects/p{seq % 97}/src/module_{seq % 1013}.py",
            path2="/projects/archive/x.py" if op == "rename" else "",
            bytes_read=rng.randrange(1 << 20) if op == "access" else 0,
            reads=rng.randrange(1, 64) if op == "access" else 0,
            opened_ns=now if op == "access" else 0,
        ))
    return out


async def build(path: Path, anchor: Path, key: Ed25519PrivateKey, entries: int, batch: int) -> float:
    """Append ``entries`` events in batches; return events/s over the append calls only."""
    rng = random.Random(1)
    source = "0123456789abcdef"
    spent = 0.0
    ledger = await Ledger.open(path, key, anchors=[anchor], checkpoint_every=1000, checkpoint_interval=10.0)
    try:
        seq = 1
        while seq <= entries:
            events = make_events(source, seq, min(batch, entries - seq + 1), rng)
            t0 = time.perf_counter()
            await ledger.append(events)
            spent += time.perf_counter() - t0
            seq += len(events)
    finally:
        t0 = time.perf_counter()
        await ledger.close()
        spent += time.perf_counter() - t0
    return entries / spent


def line(name: str, value: str, target: str, ok: bool) -> None:
    print(f"{name:<38} {value:>16}   target {target:<14} {'ok' if ok else 'MISSED'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--proofs", type=int, default=200, help="inclusion proofs to time")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="umbrafs-ledger-bench-", dir=args.dir))
    try:
        key = Ed25519PrivateKey.generate()
        db, anchor = work / "ledger.db", work / "anchor.json"
        print(f"ledger benchmark: {args.entries:,} entries, batches of {args.batch}, in {work}")
        rate = asyncio.run(build(db, anchor, key, args.entries, args.batch))
        line("append, events/s (sustained)", f"{rate:,.0f}", "≥ 20,000", rate >= 20_000)
        size = sum(f.stat().st_size for f in work.iterdir())
        print(f"{'  database size':<38} {size / 1e6:>14,.0f} MB   ({size / args.entries:,.0f} B/entry)")

        t0 = time.perf_counter()
        report = verify(db, key.public_key(), [anchor])
        spent = time.perf_counter() - t0
        if not report.ok:
            print(f"verify FAILED: {report.reason}", file=sys.stderr)
            return 1
        vrate = report.entries / spent
        line("verify, entries/s", f"{vrate:,.0f}", "≥ 200,000", vrate >= 200_000)
        print(f"{'  verify total':<38} {spent:>14.2f} s")

        rng = random.Random(2)
        conn = open_readonly(db)
        make_t, check_t = [], []
        for _ in range(args.proofs):
            idx = rng.randrange(report.signed)
            t0 = time.perf_counter()
            doc = inclusion_proof(conn, idx)
            t1 = time.perf_counter()
            ok = check_inclusion_proof(doc, key.public_key())
            t2 = time.perf_counter()
            if not ok:
                print(f"proof of entry {idx} does not check", file=sys.stderr)
                return 1
            make_t.append(t1 - t0)
            check_t.append(t2 - t1)
        conn.close()
        for name, ts, target in (("inclusion proof, produce", make_t, 10e-3), ("inclusion proof, check", check_t, 1e-3)):
            med, p99 = statistics.median(ts), sorted(ts)[int(len(ts) * 0.99) - 1]
            line(f"{name} (median)", f"{med * 1e3:.3f} ms", f"< {target * 1e3:g} ms", med < target)
            print(f"{'  p99':<38} {p99 * 1e3:>13.3f} ms")
        print(f"{'  proof length at this size':<38} {len(doc['proof']):>16} hashes")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
