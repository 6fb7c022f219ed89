"""How fast `revoke --rotate` re-encrypts: offline on the backing dir, and inside a live mount.

Builds a vault through a real mount (many 4 KiB files and some 64 MiB files, ~1 GiB by default),
then rotates the whole tree three times offline (fs.vault.rotate.engine.run_offline) and three times through
the mount's control socket (the path `revoke --rotate` takes while the vault is mounted), and
prints the median MB/s (plaintext bytes re-encrypted per second, wall time of the whole rotation:
walk, keys, names, redo records and fdatasyncs included) and, on a tree of small files only,
files/s.  The issue's target: >= 200 MB/s.

    python benchmarks/rotate_bench.py [--big 15] [--small 4096] [--runs 3] [--dir /tmp/x]

`measure(...)` returns the figures as a dict (benchmarks/share_bench.py imports it).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fs.vault import keywalk
from fs.vault.rotate import engine as rotate  # noqa: E402
from fs.vault import config as vault_mod  # noqa: E402

PASSPHRASE = "rotate bench"
FAST_KDF = ["--kdf-memory-kib", "1024", "--kdf-iterations", "1", "--kdf-lanes", "1"]
MIB = 1 << 20


def _cli(home: Path, *args: Any) -> str:
    result = subprocess.run([sys.executable, "-m", "cli", "--home", str(home), *map(str, args)],
                            capture_output=True, text=True, cwd=HERE.parent, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"umbrafs {args[0]}: {result.stderr.strip()}")
    return result.stdout


def _build(work: Path, big: int, big_mib: int, small: int, small_size: int) -> tuple[Path, Path, Path]:
    work.mkdir(parents=True)
    home, vault, mnt = work / "home", work / "vault", work / "mnt"
    passfile = work / "pass"
    passfile.write_text(PASSPHRASE + "\n")
    _cli(home, "init", vault, "--passphrase-file", passfile, *FAST_KDF)
    mnt.mkdir()
    _cli(home, "mount", vault, mnt, "--passphrase-file", passfile, "--audit", "off")
    try:
        top = mnt / "shared"
        chunk = os.urandom(MIB)
        bigdir = _mk(top / "big")
        for i in range(big):
            with open(bigdir / f"b{i:03d}.bin", "wb") as f:
                for _ in range(big_mib):
                    f.write(chunk)
        blob = os.urandom(small_size)
        for i in range(small):
            d = top / "small" / f"d{i // 256:03d}"
            if i % 256 == 0:
                d.mkdir(parents=True)
            (d / f"s{i:05d}").write_bytes(blob)
    finally:
        _cli(home, "unmount", mnt)
    return home, vault, passfile


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _target(vault: Path, plain: str) -> rotate.TargetSpec:
    t = keywalk.find(vault_mod.unlock(vault, PASSPHRASE.encode()), plain)
    return rotate.TargetSpec(t.kind, t.backing_rel, t.obj_id)


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # all threads (the AES worker too)
    return r.ru_utime + r.ru_stime


def _cpu_pid(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _offline(vault: Path, plain: str, durable: bool = False) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one offline rotation."""
    unlocked = vault_mod.unlock(vault, PASSPHRASE.encode())
    spec = _target(vault, plain)
    os.sync()  # start from a clean page cache state for writeback
    c0, t0 = _cpu_self(), time.perf_counter()
    rotate.run_offline(vault, unlocked.root_wrap_key, spec, durable=durable)
    return time.perf_counter() - t0, _cpu_self() - c0


def _mounted(home: Path, vault: Path, passfile: Path, plain: str, runs: int) -> list[tuple[float, float]]:
    from wire.mountsock import list_mounts, request

    mnt = vault.parent / "mnt"
    _cli(home, "mount", vault, mnt, "--passphrase-file", passfile, "--audit", "off")
    out = []
    try:
        info = next(m for m in list_mounts(home) if os.path.realpath(m.vault) == os.path.realpath(vault))
        for _ in range(runs):
            spec = _target(vault, plain)
            os.sync()
            c0, t0 = _cpu_pid(info.pid), time.perf_counter()
            request(info, {"type": "rotate", "target": {"kind": spec.kind, "backing_rel": spec.backing_rel,
                                                         "object_id": spec.obj_id.hex()}}, timeout=30)
            while True:
                status = request(info, {"type": "rotate-status"}, timeout=30)
                if not status["running"]:
                    break
                time.sleep(0.01)
            out.append((time.perf_counter() - t0, _cpu_pid(info.pid) - c0))
            if status.get("error"):
                raise RuntimeError(status["error"])
    finally:
        _cli(home, "unmount", mnt)
    return out


def _cpu_pressure() -> float:
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(line.split("avg60=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return -1.0


def measure(big: int = 15, big_mib: int = 64, small: int = 4096, small_size: int = 4096, runs: int = 3,
            workdir: Path | None = None, small_only_files: int = 4096) -> dict[str, Any]:
    """Median figures of `runs` rotations: offline and mounted MB/s on the mixed tree, files/s on small files."""
    base = Path(tempfile.mkdtemp(prefix="rotate-bench-", dir=workdir))
    try:
        home, vault, passfile = _build(base / "mixed", big, big_mib, small, small_size)
        total = big * big_mib * MIB + small * small_size
        offline = [_offline(vault, "/shared") for _ in range(runs)]
        durable = [_offline(vault, "/shared", durable=True) for _ in range(runs)]
        mounted = _mounted(home, vault, passfile, "/shared", runs)
        shutil.rmtree(base / "mixed", ignore_errors=True)
        home2, vault2, _ = _build(base / "small", 0, 0, small_only_files, 4096)
        small_runs = [_offline(vault2, "/shared") for _ in range(runs)]
        return {
            "bytes": total, "files": big + small, "runs": runs,
            "offline_mb_s": round(statistics.median(total / t / 1e6 for t, _ in offline), 1),
            "durable_mb_s": round(statistics.median(total / t / 1e6 for t, _ in durable), 1),
            "mounted_mb_s": round(statistics.median(total / t / 1e6 for t, _ in mounted), 1),
            # Bytes per CPU second: what one free core does, whatever else the machine runs.
            "offline_mb_per_cpu_s": round(statistics.median(total / c / 1e6 for _, c in offline), 1),
            "mounted_mb_per_cpu_s": round(statistics.median(total / c / 1e6 for _, c in mounted), 1),
            "offline_s": [round(t, 3) for t, _ in offline],
            "durable_s": [round(t, 3) for t, _ in durable],
            "mounted_s": [round(t, 3) for t, _ in mounted],
            "cpu_pressure": _cpu_pressure(),
            "small_files": small_only_files,
            "small_files_per_s": round(statistics.median(small_only_files / t for t, _ in small_runs)),
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", type=int, default=15, help="number of large files (default 15)")
    parser.add_argument("--big-mib", type=int, default=64, help="size of each large file in MiB (default 64)")
    parser.add_argument("--small", type=int, default=4096, help="number of 4 KiB files in the mixed tree (default 4096)")
    parser.add_argument("--small-only", type=int, default=4096, help="files in the small-files tree (default 4096)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the vaults (default: $TMPDIR)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.big, args.big_mib, args.small, 4096, args.runs, args.dir, args.small_only)
    if args.json:
        print(json.dumps(result))
        return
    mib = result["bytes"] / MIB
    print(f"rotate {mib:.0f} MiB in {result['files']} files (median of {result['runs']}):")
    print(f"  offline           {result['offline_mb_s']:8.1f} MB/s   runs {result['offline_s']} s"
          f"   ({result['offline_mb_per_cpu_s']:.0f} MB per CPU second)")
    print(f"  offline --durable {result['durable_mb_s']:8.1f} MB/s   runs {result['durable_s']} s")
    print(f"  through a mount   {result['mounted_mb_s']:8.1f} MB/s   runs {result['mounted_s']} s"
          f"   ({result['mounted_mb_per_cpu_s']:.0f} MB per CPU second of the mount)")
    print(f"  small files only  {result['small_files_per_s']:8d} files/s ({result['small_files']} x 4 KiB, offline)")
    print(f"  target (issue 3): >= 200 MB/s.  CPU pressure during the run (/proc/pressure/cpu some avg60): "
          f"{result['cpu_pressure']}%")


if __name__ == "__main__":
    main()
