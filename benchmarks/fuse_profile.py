#!/usr/bin/env python3
"""Count the FUSE requests a workload sends to umbrafs and time the handlers.

Where ``fs_bench.py`` says *how fast*, this says *why*: for each workload it
prints the wall time, the number of requests per handler, the time spent
inside each handler, and what is left over (kernel, libfuse, pyfuse3, trio).

The mount runs in a child process (``fs.mount.serve`` with a subclass of
``fs.mount.operations.Operations`` that wraps every handler), remounted between
workloads like fs_bench.py does; each child writes its counters to a JSON
file when it unmounts.  Usage::

    sudo /tmp/venv/bin/python benchmarks/fuse_profile.py                 # tree workloads
    sudo /tmp/venv/bin/python benchmarks/fuse_profile.py --workloads tar,rm --tar-entries 2000
    sudo /tmp/venv/bin/python benchmarks/fuse_profile.py --mount-option xattr=false

``--plain`` mounts without the wrappers (no counts; the timing overhead of the
wrappers, ~1 us per request, is then absent).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(BENCH_DIR))

import fs_bench  # noqa: E402  (benchmarks/ is not a package)

log = logging.getLogger("fuse_profile")

PASSPHRASE = b"fuse-profile-not-a-secret"
WORKLOADS = ("tar", "ls", "grep", "rm", "create", "stat", "unlink", "roundtrip")
HANDLERS = (
    "lookup", "forget", "getattr", "setattr", "readlink", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename",
    "link", "open", "read", "write", "flush", "release", "fsync", "opendir", "readdir", "releasedir", "fsyncdir",
    "statfs", "setxattr", "getxattr", "listxattr", "removexattr", "access", "create",
)


# ---------------------------------------------------------------- the child


def _counting_operations(base: type, stats: dict[str, list[float]]) -> type:
    """A subclass of *base* whose handlers count calls and sum their time."""

    def wrap(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        entry = stats.setdefault(name, [0, 0.0, 0])  # calls, seconds, errors

        @functools.wraps(func)
        async def timed(self: Any, *args: Any) -> Any:
            start = time.perf_counter()
            try:
                return await func(self, *args)
            except BaseException:
                entry[2] += 1
                raise
            finally:
                entry[0] += 1
                entry[1] += time.perf_counter() - start

        return timed

    namespace = {name: wrap(name, getattr(base, name)) for name in HANDLERS if hasattr(base, name)}
    return type("Counting" + base.__name__, (base,), namespace)


def _option_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("", "true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text


def child_main(vault: Path, mnt: Path, out: Path, plain: bool, options: list[str]) -> None:
    import fs.mount.serve as mount_mod
    from fs.vault import config as vault_mod

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    stats: dict[str, list[float]] = {}
    if not plain:
        mount_mod.Operations = _counting_operations(mount_mod.Operations, stats)  # type: ignore[misc]
    unlocked = vault_mod.unlock(vault, PASSPHRASE)
    kwargs: dict[str, Any] = {}
    for option in options:
        key, _, value = option.partition("=")
        kwargs[key] = _option_value(value)
    ready_r = int(os.environ["FUSE_PROFILE_READY_FD"])

    def ready() -> None:
        os.write(ready_r, b"ok\n")
        os.close(ready_r)

    profile_path = os.environ.get("FUSE_PROFILE_CPROFILE")
    profiler = None
    if profile_path:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        mount_mod.serve(unlocked, mnt, ready=ready, **kwargs)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
        out.write_text(json.dumps(stats))


# ---------------------------------------------------------------- the parent


class Mount:
    def __init__(self, vault: Path, mnt: Path, workdir: Path, args: argparse.Namespace) -> None:
        self.vault, self.mnt, self.workdir, self.args = vault, mnt, workdir, args
        self.proc: subprocess.Popen[bytes] | None = None
        self.out = workdir / "stats.json"
        self.count = 0

    def start(self) -> None:
        ready_r, ready_w = os.pipe()
        cmd = [sys.executable, __file__, "--child", str(self.vault), str(self.mnt), str(self.out)]
        if self.args.plain:
            cmd.append("--plain")
        for option in self.args.mount_option:
            cmd += ["--mount-option", option]
        env = {**os.environ, "FUSE_PROFILE_READY_FD": str(ready_w)}
        if self.args.cprofile:
            self.count += 1
            env["FUSE_PROFILE_CPROFILE"] = f"{self.args.cprofile}.{self.count}"
        self.proc = subprocess.Popen(cmd, pass_fds=(ready_w,), env=env, start_new_session=True)
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as ready:
            if ready.read().strip() != b"ok":
                self.proc.wait(timeout=30)
                raise SystemExit(f"mount failed ({self.proc.returncode})")

    def stop(self) -> dict[str, list[float]]:
        fs_bench.fuse_unmount(self.mnt)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                fs_bench.stop_process(self.proc)
            self.proc = None
        try:
            return json.loads(self.out.read_text())
        except (OSError, ValueError):
            return {}


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process *pid* so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """CPU seconds all CPUs spent busy since boot (so others' load shows), and
    the time the hypervisor stole from this VM."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:7]) - fields[3] - fields[4]) / hz, fields[7] / hz


def report(name: str, wall: float, stats: dict[str, list[float]], cpu: dict[str, float]) -> dict[str, Any]:
    total_calls = sum(int(v[0]) for v in stats.values())
    total_time = sum(v[1] for v in stats.values())
    others = cpu["machine"] - cpu["daemon"] - cpu["client"]
    steal = f", stolen by the host {cpu['steal']:.2f}" if cpu["steal"] > 0.05 else ""
    print(f"\n== {name}: {wall:.3f} s wall, {total_calls} requests, {total_time:.3f} s in handlers, "
          f"{(wall - total_time) / max(total_calls, 1) * 1e6:.1f} us/request outside handlers; CPU s: daemon "
          f"{cpu['daemon']:.2f}, client {cpu['client']:.2f}, rest of machine {others:.2f}{steal}")
    for handler, (calls, secs, errors) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
        if calls:
            print(f"   {handler:<12} {int(calls):>7} calls {int(errors):>6} err {secs:8.3f} s "
                  f"{secs / calls * 1e6:8.1f} us/call")
    return {"wall": wall, "requests": total_calls, "handler_s": total_time, "per_handler": stats, "cpu": cpu}


def run(args: argparse.Namespace) -> int:
    from fs.vault import config as vault_mod
    from fs.vault.config import KdfParams

    workdir = Path(tempfile.mkdtemp(prefix="fuse_profile.", dir=args.workdir))
    vault, mnt = workdir / "vault", workdir / "mnt"
    mnt.mkdir()
    vault_mod.create(vault, PASSPHRASE, KdfParams(memory_kib=8, iterations=1, lanes=1))
    tarball = args.tarball or fs_bench.fetch_sdist(fs_bench.DEFAULT_SDIST)
    tar_path = workdir / "source.tar"
    fs_bench.prepare_tarball(tarball, tar_path, args.tar_entries)
    results: dict[str, Any] = {}
    mount = Mount(vault, mnt, workdir, args)
    names = [f"f{i:06d}" for i in range(args.files)]

    def step(name: str, fn: Callable[[], None]) -> None:
        if name in ("tar", "create"):
            fs_bench.settle_deletions(reread=[tar_path])  # see there: freed inodes slow ext4 creates
        mount.start()
        assert mount.proc is not None
        try:
            daemon0, (machine0, steal0) = proc_cpu(mount.proc.pid), machine_busy()
            self0, child0 = os.times()[:2], os.times()[2:4]
            start = time.perf_counter()
            fn()
            wall = time.perf_counter() - start
            t = os.times()
            machine1, steal1 = machine_busy()
            cpu = {
                "daemon": proc_cpu(mount.proc.pid) - daemon0, "machine": machine1 - machine0, "steal": steal1 - steal0,
                "client": sum(t[2:4]) - sum(child0) + sum(t[:2]) - sum(self0),
            }
        finally:
            stats = mount.stop()
        if name in ("rm", "unlink"):
            fs_bench.note_deletions()
        results[name] = report(name, wall, stats, cpu)

    def sh(*cmd: str, ok: Sequence[int] = (0,)) -> Callable[[], None]:
        def go() -> None:
            rc = subprocess.run(cmd, env=fs_bench.TOOL_ENV, stdout=subprocess.DEVNULL, check=False).returncode
            if rc not in ok:
                raise SystemExit(f"{cmd[0]} failed: {rc}")
        return go

    try:
        tree = mnt / "tree"
        many = mnt / "many"
        for _ in range(args.repeat):
            for workload in args.workloads:
                if workload == "tar":
                    step("tar", lambda: (tree.mkdir(), sh("tar", "--no-same-owner", "-xf", str(tar_path), "-C", str(tree))()))
                elif workload == "ls":
                    step("ls", sh("ls", "-lR", str(tree)))
                elif workload == "grep":
                    step("grep", sh("grep", "-r", "-F", fs_bench.GREP_NEEDLE, str(tree), ok=(0, 1)))
                elif workload == "rm":
                    step("rm", sh("rm", "-rf", str(tree)))
                elif workload == "create":
                    def create() -> None:
                        many.mkdir(exist_ok=True)
                        for n in names:
                            os.close(os.open(many / n, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
                    step("create", create)
                elif workload == "stat":
                    step("stat", lambda: [os.stat(many / n) for n in names] and None)
                elif workload == "roundtrip":
                    # One cheap request per call (an unsupported xattr namespace):
                    # the cost of a FUSE round trip through pyfuse3 and trio.
                    def roundtrip() -> None:
                        probe = mnt / "probe"
                        probe.touch()
                        for _ in range(args.files * 4):
                            try:
                                os.getxattr(probe, "trusted.probe")
                            except OSError:
                                pass
                    step("roundtrip", roundtrip)
                elif workload == "unlink":
                    step("unlink", lambda: [os.unlink(many / n) for n in names] and None)
    finally:
        if mount.proc is not None:
            mount.stop()
        fs_bench.sweep(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        fs_bench.note_deletions()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print("\nsummary: " + ", ".join(f"{k} {v['wall']:.3f} s (daemon CPU {v['cpu']['daemon']:.2f} s)"
                                    for k, v in results.items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=3, metavar=("VAULT", "MNT", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--plain", action="store_true", help="no counting wrappers")
    parser.add_argument("--workloads", default="tar,ls,grep,rm", help=f"comma-separated from {','.join(WORKLOADS)}")
    parser.add_argument("--tar-entries", type=int, default=None, help="first N entries of the tarball only")
    parser.add_argument("--tarball", type=Path, default=None)
    parser.add_argument("--files", type=int, default=5000, help="files for create/stat/unlink")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--mount-option", action="append", default=[],
                        help="keyword argument for fs.mount.serve, KEY[=VALUE] (repeatable)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--cprofile", default=None, metavar="PREFIX",
                        help="run each mount under cProfile, stats to PREFIX.1, PREFIX.2, ... (slows it down)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.child:
        vault, mnt, out = (Path(p) for p in args.child)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent unmounts
        child_main(vault, mnt, out, args.plain, args.mount_option)
        return 0
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if any(w not in WORKLOADS for w in args.workloads):
        parser.error(f"workloads: choose from {','.join(WORKLOADS)}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
