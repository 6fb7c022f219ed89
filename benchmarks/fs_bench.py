#!/usr/bin/env python3
"""Compare umbrafs with its peers on the same disk, in the same run.

Targets: ``native`` (a plain directory), ``passthrough`` (benchmarks/
passthroughfs.py, pyfuse3 without crypto), ``gocryptfs``, ``cryfs`` and
``umbrafs``.  Every target lives in one scratch directory (default: a new
temporary directory under /var/tmp), so all of them use the same disk.

Workloads, per target (see README.md for the exact method):

* sequential write of SIZE MiB in 1 MiB chunks + fsync, MB/s;
* sequential read of that file, cold (page cache dropped) and warm (backing
  files in the page cache, FUSE side freshly mounted), MB/s;
* ``tar xf`` of a ~10,000-entry source tarball, ``ls -lR``, ``grep -r``,
  ``rm -rf``, seconds, with the filesystem remounted before each step;
* fio 4 KiB random read and random write, IOPS;
* create / stat / unlink of N empty files in one directory, ops/s;
* peak RSS of the FUSE daemon (VmRSS sampled every 0.2 s), MiB.

The results go to stdout as two plain-text tables (figures, then ratios to
gocryptfs, >1 = faster than gocryptfs); progress and diagnostics go to stderr
through ``logging``.  Needs root for dropping the page cache (it still runs
without, with a warning), fusermount3, and the tools of each target.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import logging
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar
from collections.abc import Callable, Sequence

log = logging.getLogger("fs_bench")

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
PASSTHROUGH_SCRIPT = BENCH_DIR / "passthroughfs.py"

ALL_TARGETS = ("native", "passthrough", "gocryptfs", "cryfs", "umbrafs")
GROUPS = ("sequential", "tree", "fio", "metadata")
BASELINE = "gocryptfs"
DEFAULT_SDIST = "Django==4.2.16"  # 9,917 tar entries (6,725 files, 3,192 dirs), 43 MB
PASSWORD = "fs-bench-not-a-secret"
GREP_NEEDLE = "fs_bench_needle_that_occurs_nowhere"
MIB = 1 << 20
CHUNK = MIB
PATTERN_BYTES = 16 * MIB  # random data cycled through by the sequential write
RSS_INTERVAL = 0.2
MOUNT_TIMEOUT = 180.0
EXIT_TIMEOUT = 120.0
STEP_TIMEOUT = 3600.0
# Plain C locale for the shell tools: same sorting and matching for everyone.
TOOL_ENV = {**os.environ, "LC_ALL": "C"}


class BenchError(Exception):
    """A workload or a mount failed."""


class TargetUnavailable(Exception):
    """The target cannot be run here; it is skipped with a note."""


# ---------------------------------------------------------------- helpers


def run_logged(cmd: Sequence[str], logfile: Path, *, timeout: float, cwd: Path | None = None,
               env: dict[str, str] | None = None, stdin_data: bytes | None = None) -> int:
    """Run *cmd*, appending its output to *logfile* (a file, not a pipe: a
    daemonizing child may keep its stdout open forever)."""
    log.debug("run: %s", shlex.join(cmd))
    with open(logfile, "ab") as out:
        out.write(f"\n$ {shlex.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(
            list(cmd), stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            input=stdin_data, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
            timeout=timeout, check=False,
        )
    return proc.returncode


def last_error(path: Path) -> str:
    """The last line of output in a log written by run_logged."""
    for line in reversed(tail(path, 50).splitlines()):
        if line.strip() and not line.startswith("$ "):
            return line.strip()
    return "no output"


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_table() -> list[tuple[str, str, str, str]]:
    """(mount point, fs type, source, major:minor) for every mount."""
    rows: list[tuple[str, str, str, str]] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(fields) >= 5 and len(rest) >= 2:
                rows.append((_unescape_mountinfo(fields[4]), rest[0], _unescape_mountinfo(rest[1]), fields[2]))
    return rows


def is_mounted(path: Path) -> bool:
    """True if something is mounted on *path*, even a dead FUSE mount
    (os.path.ismount cannot tell: stat fails with ENOTCONN)."""
    target = str(path)
    return any(mp == target for mp, _, _, _ in mount_table())


def fuse_unmount(mnt: Path, attempts: int = 10) -> None:
    """``fusermount3 -u`` with retries while busy, then ``-uz``."""
    if not is_mounted(mnt):
        return
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    for attempt in range(attempts):
        cmd = [tool, "-u", str(mnt)] if tool else ["umount", str(mnt)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if not is_mounted(mnt):
            return
        log.debug("unmount %s failed (%s), retrying", mnt, proc.stderr.strip())
        time.sleep(0.2 * (attempt + 1))
    log.warning("%s still busy: lazy unmount", mnt)
    cmd = [tool, "-uz", str(mnt)] if tool else ["umount", "-l", str(mnt)]
    subprocess.run(cmd, capture_output=True, check=False)


def wait_for_mount(mnt: Path, alive: Callable[[], bool], timeout: float, what: str,
                   logfile: Path | None = None) -> None:
    """Poll until *mnt* is a mount point that answers; fail fast if the
    filesystem process died."""
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mnt):
        if not alive():
            detail = ""
            if logfile:
                log.warning("%s: log tail:\n%s", what, tail(logfile))
                detail = f": {last_error(logfile)}"
            raise BenchError(f"{what}: the filesystem process exited before {mnt} was mounted{detail}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: {mnt} not mounted after {timeout:.0f} s")
        time.sleep(0.05)


def _proc_starttime(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else int(fields[19])


def pid_alive(pid: int) -> bool:
    return _proc_starttime(pid) is not None


def stop_pid(pid: int, starttime: int | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, a process we know by PID (and start time, so a
    recycled PID is left alone)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        current = _proc_starttime(pid)
        if current is None or (starttime is not None and current != starttime):
            return
        log.warning("sending %s to pid %d", sig.name, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    for action in (proc.terminate, proc.kill):
        log.warning("stopping pid %d", proc.pid)
        action()
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


# ext4 without a journal (this VM's root fs) does not reuse an inode freed less
# than 60 s ago (360 s while its inode-table block is dirty) and scans past every
# such inode on each create (fs/ext4/ialloc.c, recently_deleted()), as long as
# that block is in the buffer cache.  After an rm -rf of 10,000 files (ours, or
# another process's), a native `tar x` of the same tree took 3.7-6.8 s instead
# of 0.25-0.48 s, and waiting 65 s was not always enough.  So before a timed
# step that creates many inodes: sync, then drop the clean caches (the scan
# stops at a block that is not cached) and read the step's input back in.
# Without root, wait out the window of the harness's own deletions instead.
RECENTLY_DELETED_S = 62.0
# Shared by fs_bench.py and fuse_profile.py runs, so back-to-back runs wait too.
DELETE_STAMP = Path("/var/tmp/.fs_bench-last-delete")


def note_deletions() -> None:
    """Call after deleting many files."""
    try:
        DELETE_STAMP.write_text(f"{time.time():.3f}\n")
    except OSError as exc:
        log.debug("cannot write %s: %s", DELETE_STAMP, exc)


def settle_deletions(reread: Sequence[Path] = ()) -> None:
    """Before a timed step that creates many inodes (see above)."""
    os.sync()
    if os.geteuid() == 0:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        for path in reread:  # the step's input back into the page cache
            with open(path, "rb") as fh:
                while fh.read(CHUNK):
                    pass
        return
    try:
        last = float(DELETE_STAMP.read_text())
    except (OSError, ValueError):
        return
    wait = min(last + RECENTLY_DELETED_S - time.time(), RECENTLY_DELETED_S)
    if wait > 0:
        log.info("waiting %.0f s for freed inodes to age (ext4 recently_deleted)", wait)
        time.sleep(wait)


def drop_caches(enabled: bool) -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``."""
    os.sync()
    if enabled:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_tree(root: Path) -> int:
    """Read every regular file under *root* (to put it in the page cache)."""
    buf = bytearray(CHUNK)
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb", buffering=0) as fh:
                    while n := fh.readinto(buf):
                        total += n
            except OSError as exc:
                log.debug("warm: skip %s: %s", path, exc)
    return total


def count_tree(root: Path) -> int:
    """Number of entries under *root* (not counting *root*)."""
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))


def tool_version(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=False,
                              env={**os.environ, "CRYFS_NO_UPDATE_CHECK": "1"})
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    out = (proc.stdout or proc.stderr).strip().splitlines()
    return out[0].strip() if out else "?"


# ---------------------------------------------------------------- memory


class RssSampler:
    """Samples VmRSS of the current FUSE daemon every 0.2 s in a thread."""

    def __init__(self, interval: float = RSS_INTERVAL) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._pid: int | None = None
        self.peak_kib = 0
        self.hwm_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> None:
        with self._lock:
            self.peak_kib = self.hwm_kib = 0

    def attach(self, pid: int | None) -> None:
        with self._lock:
            self._pid = pid
        self.sample()

    def detach(self) -> None:
        self.sample()
        with self._lock:
            self._pid = None

    def sample(self) -> None:
        with self._lock:
            pid = self._pid
            if pid is None:
                return
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                key, _, value = line.partition(":")
                if key == "VmRSS":
                    self.peak_kib = max(self.peak_kib, int(value.split()[0]))
                elif key == "VmHWM":
                    self.hwm_kib = max(self.hwm_kib, int(value.split()[0]))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()


# ---------------------------------------------------------------- targets


class Target:
    """A filesystem under test, living in its own directory *root*."""

    name: ClassVar[str]
    fuse: ClassVar[bool] = True

    def __init__(self, root: Path, sampler: RssSampler) -> None:
        self.root = root
        self.mnt = root / "mnt"
        self.sampler = sampler
        self.logfile = root / f"{self.name}.log"

    @property
    def data_dir(self) -> Path:
        """Where the workloads run."""
        return self.mnt

    @property
    def backing_dir(self) -> Path:
        raise NotImplementedError

    def unavailable_reason(self) -> str | None:
        return None

    def setup(self) -> None:
        """Create the (empty) filesystem; raise TargetUnavailable on failure."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.mnt.mkdir(exist_ok=True)
        self.backing_dir.mkdir(parents=True, exist_ok=True)
        self._init()
        try:  # a trial mount, so a broken target is skipped up front
            self.mount()
        except BenchError as exc:
            self.cleanup()
            raise TargetUnavailable(f"mount failed: {exc}") from exc
        self.unmount()

    def _init(self) -> None:
        pass

    def mount(self) -> None:
        raise NotImplementedError

    def unmount(self) -> None:
        raise NotImplementedError

    def remount(self) -> None:
        """Fresh mount: the FUSE side forgets its caches."""
        self.unmount()
        self.mount()

    def alive(self) -> bool:
        return True

    def ensure_mounted(self) -> None:
        """Mount if not mounted (or if the mount died)."""
        if os.path.ismount(self.mnt) and self.alive():
            return
        log.warning("%s: not mounted (or its process died), mounting again", self.name)
        self.cleanup()
        self.mount()

    def cleanup(self) -> None:
        """Best effort: no mount and no process left.  Idempotent."""
        raise NotImplementedError


class NativeTarget(Target):
    name = "native"
    fuse = False

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def backing_dir(self) -> Path:
        return self.data_dir

    def setup(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def mount(self) -> None:
        pass

    def unmount(self) -> None:
        pass

    def remount(self) -> None:
        pass

    def ensure_mounted(self) -> None:
        pass

    def cleanup(self) -> None:
        pass


class DaemonTarget(Target):
    """A FUSE filesystem whose process we start in the foreground ourselves."""

    password_on_stdin: ClassVar[bool] = False

    def __init__(self, root: Path, sampler: RssSampler) -> None:
        super().__init__(root, sampler)
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def mount(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            raise BenchError(f"{self.name}: already running (pid {self._proc.pid})")
        cmd = self.command()
        log.debug("%s: mount: %s", self.name, shlex.join(cmd))
        with open(self.logfile, "ab") as out:
            out.write(f"\n$ {shlex.join(cmd)}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE if self.password_on_stdin else subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True,
            )
        if self.password_on_stdin:
            assert self._proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.write(PASSWORD.encode() + b"\n")
                self._proc.stdin.close()
        try:
            wait_for_mount(self.mnt, self.alive, MOUNT_TIMEOUT, self.name, self.logfile)
        except BaseException:
            self.cleanup()
            raise
        self.sampler.attach(self._proc.pid)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def unmount(self) -> None:
        self.sampler.detach()
        fuse_unmount(self.mnt)
        proc = self._proc
        if proc is None:
            return
        try:
            rc = proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("%s: pid %d still running %0.f s after unmount", self.name, proc.pid, EXIT_TIMEOUT)
            stop_process(proc)
            rc = proc.returncode
        if rc:
            log.warning("%s: exited with status %s; log tail:\n%s", self.name, rc, tail(self.logfile))
        self._proc = None

    def cleanup(self) -> None:
        self.sampler.detach()
        fuse_unmount(self.mnt)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_process(self._proc)
            self._proc = None


class PassthroughTarget(DaemonTarget):
    name = "passthrough"

    @property
    def backing_dir(self) -> Path:
        return self.root / "backing"

    def unavailable_reason(self) -> str | None:
        if not PASSTHROUGH_SCRIPT.exists():
            return f"{PASSTHROUGH_SCRIPT} missing"
        proc = subprocess.run([sys.executable, "-c", "import pyfuse3, trio"], capture_output=True, check=False)
        if proc.returncode:
            return f"pyfuse3/trio not importable by {sys.executable}"
        return None

    def command(self) -> list[str]:
        return [sys.executable, str(PASSTHROUGH_SCRIPT), str(self.backing_dir), str(self.mnt)]


class GocryptfsTarget(DaemonTarget):
    name = "gocryptfs"

    @property
    def backing_dir(self) -> Path:
        return self.root / "cipher"

    def unavailable_reason(self) -> str | None:
        return None if shutil.which("gocryptfs") else "gocryptfs not installed"

    def _init(self) -> None:
        cmd = ["gocryptfs", "-init", "-q", "-extpass", f"echo {PASSWORD}", "-scryptn", "10", str(self.backing_dir)]
        rc = run_logged(cmd, self.logfile, timeout=120)
        if rc:
            log.warning("gocryptfs -init failed:\n%s", tail(self.logfile))
            raise TargetUnavailable(f"gocryptfs -init exited with {rc}: {last_error(self.logfile)}")

    def command(self) -> list[str]:
        # -fg: no fork, so we hold the server's PID (for RSS and cleanup).
        return ["gocryptfs", "-fg", "-q", "-extpass", f"echo {PASSWORD}", str(self.backing_dir), str(self.mnt)]


class CryfsTarget(DaemonTarget):
    name = "cryfs"
    password_on_stdin = True

    @property
    def backing_dir(self) -> Path:
        return self.root / "base"

    def unavailable_reason(self) -> str | None:
        return None if shutil.which("cryfs") else "cryfs not installed"

    def env(self) -> dict[str, str]:
        home = self.root / "home"  # cryfs keeps local state under $HOME; not the user's
        home.mkdir(exist_ok=True)
        return {
            **os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_CONFIG_HOME": str(home / ".config"), "CRYFS_FRONTEND": "noninteractive",
            "CRYFS_NO_UPDATE_CHECK": "1",
        }

    def command(self) -> list[str]:
        # -f: foreground; the first mount creates the filesystem (default
        # cipher xchacha20-poly1305, 16 KiB blocks).
        return ["cryfs", "-f", str(self.backing_dir), str(self.mnt)]


class UmbrafsTarget(Target):
    """The project's own CLI, which daemonizes on mount."""

    name = "umbrafs"

    def __init__(self, root: Path, sampler: RssSampler) -> None:
        super().__init__(root, sampler)
        self.state = root / "state"
        self.passfile = root / "passphrase"
        self._pid: int | None = None
        self._pid_start: int | None = None

    @property
    def backing_dir(self) -> Path:
        return self.root / "vault"

    tree: Path = REPO_ROOT

    def cli_env(self) -> dict[str, str] | None:
        return None

    @staticmethod
    def cli() -> list[str]:
        exe = Path(sys.executable).parent / "umbrafs"
        if exe.exists() and os.access(exe, os.X_OK):
            return [str(exe)]
        return [sys.executable, "-m", "cli"]

    def unavailable_reason(self) -> str | None:
        if self.cli()[0] == sys.executable and not (REPO_ROOT / "cli" / "__main__.py").exists():
            return "no umbrafs executable next to the interpreter and no cli package"
        return None

    def _run_cli(self, *args: str, timeout: float) -> int:
        cmd = [*self.cli(), "--home", str(self.state), *args]
        try:
            return run_logged(cmd, self.logfile, timeout=timeout, cwd=self.tree, env=self.cli_env())
        except subprocess.TimeoutExpired:
            log.warning("umbrafs: %s timed out after %.0f s", args[0], timeout)
            return -1

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.mnt.mkdir(exist_ok=True)
        self.passfile.write_text(PASSWORD + "\n")
        self.passfile.chmod(0o600)
        # VAULT must be empty or absent: leave it absent.
        rc = self._run_cli("init", str(self.backing_dir), "--passphrase-file", str(self.passfile), timeout=600)
        if rc:
            log.warning("umbrafs init failed:\n%s", tail(self.logfile))
            raise TargetUnavailable(f"umbrafs init exited with {rc}: {last_error(self.logfile)}")
        try:
            self.mount()
        except BenchError as exc:
            self.cleanup()
            raise TargetUnavailable(f"umbrafs mount failed: {exc}") from exc
        self.unmount()

    extra_mount_args: ClassVar[list[str]] = []  # --umbrafs-mount-args

    def mount(self) -> None:
        rc = self._run_cli("mount", str(self.backing_dir), str(self.mnt), "--passphrase-file", str(self.passfile),
                           *self.extra_mount_args, timeout=MOUNT_TIMEOUT)
        if rc:
            log.warning("umbrafs mount failed:\n%s", tail(self.logfile))
            self.cleanup()
            raise BenchError(f"umbrafs mount exited with {rc}: {last_error(self.logfile)}")
        wait_for_mount(self.mnt, lambda: True, 30, self.name, self.logfile)
        self._pid = self.find_pid()
        self._pid_start = _proc_starttime(self._pid) if self._pid else None
        if self._pid is None:
            log.warning("umbrafs: could not find the mount process: no RSS figure")
        else:
            log.debug("umbrafs: mount process is pid %d", self._pid)
        self.sampler.attach(self._pid)

    def find_pid(self) -> int | None:
        """The mount daemon: from STATE/mounts/*.json, else by scanning /proc."""
        for record in sorted((self.state / "mounts").glob("*.json")):
            try:
                data = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            pid, where = data.get("pid"), data.get("mountpoint")
            if isinstance(pid, int) and pid_alive(pid) and (where is None or Path(where) == self.mnt):
                return pid
        return scan_proc_for_daemon(self.mnt)

    def alive(self) -> bool:
        return self._pid is None or pid_alive(self._pid)

    def _wait_gone(self, timeout: float) -> None:
        if self._pid is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(self._pid):
            time.sleep(0.05)
        stop_pid(self._pid, self._pid_start)
        self._pid = self._pid_start = None

    def unmount(self) -> None:
        self.sampler.detach()
        if self._run_cli("unmount", str(self.mnt), timeout=EXIT_TIMEOUT) or is_mounted(self.mnt):
            log.warning("umbrafs unmount failed; falling back to fusermount3:\n%s", tail(self.logfile, 5))
            fuse_unmount(self.mnt)
        self._wait_gone(EXIT_TIMEOUT)

    def cleanup(self) -> None:
        self.sampler.detach()
        if is_mounted(self.mnt):
            self._run_cli("unmount", str(self.mnt), timeout=60)
            fuse_unmount(self.mnt)
        if self._pid is None:
            self._pid = scan_proc_for_daemon(self.mnt)
            self._pid_start = _proc_starttime(self._pid) if self._pid else None
        self._wait_gone(10)


def scan_proc_for_daemon(mnt: Path) -> int | None:
    """A process whose command line names *mnt*, preferring one holding
    /dev/fuse open (the FUSE server)."""
    best: tuple[int, int] | None = None
    mine = {os.getpid(), os.getppid()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(str(mnt)) not in args:
            continue
        holds_fuse = 0
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == "/dev/fuse":
                        holds_fuse = 1
                        break
        candidate = (holds_fuse, int(entry.name))
        if best is None or candidate > best:
            best = candidate
    return best[1] if best else None


class UmbrafsBaseTarget(UmbrafsTarget):
    """umbrafs from another source tree (--base-tree), e.g. `git archive HEAD`,
    to compare two versions in one run: `python -m cli` with PYTHONPATH=tree."""

    name = "umbrafs-base"
    base_tree: ClassVar[Path | None] = None
    extra_mount_args: ClassVar[list[str]] = []  # an older tree may not know newer options

    @property
    def tree(self) -> Path:  # type: ignore[override]
        assert self.base_tree is not None
        return self.base_tree

    def cli(self) -> list[str]:  # type: ignore[override]
        return [sys.executable, "-m", "cli"]

    def cli_env(self) -> dict[str, str]:
        assert self.base_tree is not None
        return {**os.environ, "PYTHONPATH": str(self.base_tree)}

    def unavailable_reason(self) -> str | None:
        if self.base_tree is None:
            return "no --base-tree given"
        if not (self.base_tree / "cli" / "__main__.py").exists():
            return f"{self.base_tree} has no cli package"
        return None


class UmbrafsAuditTarget(UmbrafsTarget):
    """umbrafs with the audit daemon running and every event delivered to it
    (the plain umbrafs target has never started a daemon: --audit auto is off)."""

    name = "umbrafs-audit"

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.passfile.write_text(PASSWORD + "\n")
        self.passfile.chmod(0o600)
        for args in (("identity", "create", "bench"), ("daemon", "start")):
            rc = self._run_cli(*args, "--passphrase-file", str(self.passfile), timeout=600)
            if rc:
                raise TargetUnavailable(f"umbrafs {' '.join(args)} exited with {rc}: {last_error(self.logfile)}")
        super().setup()

    def mount(self) -> None:
        self.extra_mount_args = [*type(self).extra_mount_args, "--audit", "required"]
        super().mount()

    def cleanup(self) -> None:
        super().cleanup()
        self._run_cli("daemon", "stop", timeout=120)


TARGET_CLASSES: dict[str, type[Target]] = {
    cls.name: cls
    for cls in (NativeTarget, PassthroughTarget, GocryptfsTarget, CryfsTarget, UmbrafsTarget, UmbrafsAuditTarget,
                UmbrafsBaseTarget)
}


# ---------------------------------------------------------------- workloads


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    in_ratios: bool = True


@dataclasses.dataclass(frozen=True)
class Params:
    size_mib: int
    files: int
    fio_runtime: int
    fio_size_mib: int
    fio_direct: bool
    tar_path: Path
    tar_entries: int
    tar_paths: int
    tar_name: str
    drop_caches: bool
    have_fio: bool
    groups: tuple[str, ...] = GROUPS


def metrics_for(p: Params) -> list[Metric]:
    return [
        Metric("seq_write", f"seq write {p.size_mib} MiB +fsync", "MB/s", True),
        Metric("seq_read_cold", "seq read, cold", "MB/s", True),
        Metric("seq_read_warm", "seq read, warm backing", "MB/s", True),
        Metric("tar_x", f"tar xf ({p.tar_entries} entries)", "s", False),
        Metric("ls_lr", "ls -lR", "s", False),
        Metric("grep_r", "grep -r", "s", False),
        Metric("rm_rf", "rm -rf", "s", False),
        Metric("fio_randread", "fio randread 4k", "IOPS", True),
        Metric("fio_randwrite", "fio randwrite 4k", "IOPS", True),
        Metric("create", f"create {p.files} files", "ops/s", True),
        Metric("stat", f"stat {p.files} files", "ops/s", True),
        Metric("unlink", f"unlink {p.files} files", "ops/s", True),
        Metric("peak_rss", "peak RSS of FUSE daemon", "MiB", False, in_ratios=False),
    ]


def timed_command(cmd: Sequence[str], ok: Sequence[int] = (0,)) -> float:
    """Seconds taken by *cmd*, output to /dev/null."""
    log.debug("timing: %s", shlex.join(cmd))
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=TOOL_ENV, timeout=STEP_TIMEOUT, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode not in ok:
        err = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise BenchError(f"{cmd[0]} exited with {proc.returncode}: " + " | ".join(err))
    return elapsed


class Rep:
    """One repetition of all workloads against one target."""

    def __init__(self, target: Target, params: Params, pattern: bytes, record: Callable[[str, float], None],
                 fail: Callable[[str, str], None]) -> None:
        self.t = target
        self.p = params
        self.pattern = pattern
        self._record = record
        self._fail = fail
        self._done: set[str] = set()

    def record(self, key: str, value: float) -> None:
        log.info("%-12s %-14s %12.3f", self.t.name, key, value)
        self._done.add(key)
        self._record(key, value)

    def group(self, keys: Sequence[str], fn: Callable[[], None]) -> None:
        """Run one workload group; on failure mark its missing figures."""
        try:
            self.t.ensure_mounted()
            fn()
        except Exception as exc:  # noqa: BLE001 - one failed workload must not stop the run
            log.error("%s: %s failed: %s", self.t.name, "/".join(keys), exc)
            log.debug("traceback", exc_info=True)
            for key in keys:
                if key not in self._done:
                    self._fail(key, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def run(self) -> None:
        if "sequential" in self.p.groups:
            self.group(["seq_write", "seq_read_cold", "seq_read_warm"], self.sequential)
        if "tree" in self.p.groups:
            self.group(["tar_x", "ls_lr", "grep_r", "rm_rf"], self.tree)
        if self.p.have_fio and "fio" in self.p.groups:
            self.group(["fio_randread", "fio_randwrite"], self.fio)
        if "metadata" in self.p.groups:
            self.group(["create", "stat", "unlink"], self.metadata)

    # -- sequential ------------------------------------------------------

    def _write(self, path: Path, size: int) -> float:
        view = memoryview(self.pattern)
        plen = len(self.pattern)
        start = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            offset = 0
            while offset < size:
                pos = offset % plen
                chunk = view[pos:pos + min(CHUNK, size - offset)]
                while chunk:
                    n = os.write(fd, chunk)
                    chunk = chunk[n:]
                    offset += n
            os.fsync(fd)
        finally:
            os.close(fd)
        return time.perf_counter() - start

    def _read(self, path: Path, size: int) -> float:
        buf = bytearray(CHUNK)
        plen = len(self.pattern)
        start = time.perf_counter()
        offset = 0
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                # spot-check the first and the last chunk against what was written
                if (offset == 0 or offset + n >= size) and offset % CHUNK == 0 and n <= CHUNK:
                    pos = offset % plen
                    if buf[:n] != self.pattern[pos:pos + n]:
                        raise BenchError(f"data read back at offset {offset} differs from what was written")
                offset += n
        elapsed = time.perf_counter() - start
        if offset != size:
            raise BenchError(f"read {offset} bytes, expected {size}")
        return elapsed

    def sequential(self) -> None:
        size = self.p.size_mib * MIB
        path = self.t.data_dir / "seq.bin"
        try:
            drop_caches(self.p.drop_caches)
            self.record("seq_write", size / 1e6 / self._write(path, size))

            self.t.remount()
            drop_caches(self.p.drop_caches)
            self.record("seq_read_cold", size / 1e6 / self._read(path, size))

            if self.t.fuse:
                # Backing files into the page cache, FUSE side freshly mounted.
                self.t.unmount()
                read_tree(self.t.backing_dir)
                self.t.mount()
            # native: the cold read above left the file in the page cache
            self.record("seq_read_warm", size / 1e6 / self._read(path, size))
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    # -- source tree -----------------------------------------------------

    def tree(self) -> None:
        tree = self.t.data_dir / "tree"
        try:
            tree.mkdir()
            self.t.remount()
            settle_deletions(reread=[self.p.tar_path])
            self.record("tar_x", timed_command(["tar", "--no-same-owner", "-xf", str(self.p.tar_path), "-C", str(tree)]))
            found = count_tree(tree)
            if found != self.p.tar_paths:
                raise BenchError(f"extracted {found} entries, expected {self.p.tar_paths}")

            self.t.remount()
            self.record("ls_lr", timed_command(["ls", "-lR", str(tree)]))

            self.t.remount()
            self.record("grep_r", timed_command(["grep", "-r", "-F", GREP_NEEDLE, str(tree)], ok=(0, 1)))

            self.t.remount()
            self.record("rm_rf", timed_command(["rm", "-rf", str(tree)]))
            note_deletions()
            if tree.exists():
                raise BenchError("tree still there after rm -rf")
        finally:
            if tree.exists():
                shutil.rmtree(tree, ignore_errors=True)
                note_deletions()

    # -- fio -------------------------------------------------------------

    def _fio(self, rw: str, path: Path, extra: Sequence[str] = ()) -> float:
        cmd = [
            "fio", f"--name={rw}", f"--filename={path}", f"--rw={rw}", "--bs=4k", f"--size={self.p.fio_size_mib}M",
            f"--runtime={self.p.fio_runtime}", "--time_based", "--ioengine=psync",
            f"--direct={int(self.p.fio_direct)}", "--output-format=json", *extra,
        ]
        log.debug("fio: %s", shlex.join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.p.fio_runtime + STEP_TIMEOUT,
                              check=False, env=TOOL_ENV)
        if proc.returncode:
            raise BenchError(f"fio {rw} exited with {proc.returncode}: {proc.stderr.strip()[-300:]}")
        if "--create_only=1" in extra:
            return 0.0
        try:
            job = json.loads(proc.stdout[proc.stdout.index("{"):])["jobs"][0]
        except (ValueError, KeyError, IndexError) as exc:
            raise BenchError(f"cannot parse fio output: {exc}") from exc
        if job.get("error"):
            raise BenchError(f"fio {rw}: error {job['error']}")
        return float(job["read" if "read" in rw else "write"]["iops"])

    def fio(self) -> None:
        path = self.t.data_dir / "fio.bin"
        try:
            self._fio("randread", path, ["--create_only=1"])  # lay the file out, untimed
            self.t.remount()
            self.record("fio_randread", self._fio("randread", path))
            self.t.remount()
            self.record("fio_randwrite", self._fio("randwrite", path))
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    # -- many files ------------------------------------------------------

    def metadata(self) -> None:
        folder = self.t.data_dir / "many"
        names = [os.path.join(folder, f"file{i:06d}") for i in range(self.p.files)]
        flags = os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC
        try:
            folder.mkdir()
            self.t.remount()
            settle_deletions()
            start = time.perf_counter()
            for name in names:
                os.close(os.open(name, flags, 0o644))
            self.record("create", len(names) / (time.perf_counter() - start))

            self.t.remount()
            start = time.perf_counter()
            for name in names:
                os.stat(name)
            self.record("stat", len(names) / (time.perf_counter() - start))

            self.t.remount()
            start = time.perf_counter()
            for name in names:
                os.unlink(name)
            self.record("unlink", len(names) / (time.perf_counter() - start))
            note_deletions()
            folder.rmdir()
        finally:
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                note_deletions()


# ---------------------------------------------------------------- tarball


def find_cached_sdist(spec: str) -> Path | None:
    name, _, version = spec.partition("==")
    wanted = {f"{n}-{version}.tar.gz" for n in (name.lower(), name.lower().replace("-", "_"))}
    if CACHE_DIR.is_dir():
        for path in CACHE_DIR.iterdir():
            if path.name.lower() in wanted:
                return path
    return None


def fetch_sdist(spec: str) -> Path:
    """The sdist *spec* (NAME==VERSION) from benchmarks/.cache, downloaded
    once with ``pip download`` (the only network access of this script)."""
    if "==" not in spec:
        raise SystemExit(f"--sdist wants NAME==VERSION, got {spec!r}")
    cached = find_cached_sdist(spec)
    if cached:
        return cached
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", spec, "-d", str(CACHE_DIR)]
    log.info("fetching the tarball: %s", shlex.join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    cached = find_cached_sdist(spec)
    if proc.returncode or cached is None:
        raise SystemExit(f"pip download failed ({proc.returncode}):\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}")
    return cached


def prepare_tarball(source: Path, dest: Path, limit: int | None) -> tuple[int, int]:
    """Write an uncompressed copy of *source* (its first *limit* entries, if
    given) to *dest*, so that extraction times do not include gunzip.

    Returns (tar entries, paths an extraction creates, implied parent
    directories included)."""
    entries = 0
    paths: set[str] = set()
    with tarfile.open(source, "r:*") as src, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            if limit is not None and entries >= limit:
                break
            if not (member.isfile() or member.isdir() or member.issym()):
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
            entries += 1
            parts = [part for part in member.name.split("/") if part not in ("", ".")]
            paths.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return entries, len(paths)


# ---------------------------------------------------------------- report


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> str:
    """Plain-text table; the first *left* columns are left-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


@dataclasses.dataclass
class Results:
    values: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)
    errors: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    extra: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def add(self, target: str, key: str, value: float) -> None:
        self.values.setdefault(target, {}).setdefault(key, []).append(value)

    def fail(self, target: str, key: str, reason: str) -> None:
        self.errors.setdefault(target, {})[key] = reason

    def summary(self, target: str, metric: Metric) -> float | None:
        vals = self.values.get(target, {}).get(metric.key)
        if not vals:
            return None
        return max(vals) if metric.key == "peak_rss" else statistics.median(vals)

    def cell(self, target: str, metric: Metric) -> str:
        value = self.summary(target, metric)
        if value is not None:
            return fmt(value)
        return "ERR" if metric.key in self.errors.get(target, {}) else "-"

    def ratio_cell(self, target: str, metric: Metric) -> str:
        value = self.ratio(target, metric)
        if value is not None:
            return f"{value:.2f}"
        return "ERR" if self.cell(target, metric) == "ERR" else "-"

    def ratio(self, target: str, metric: Metric) -> float | None:
        mine, base = self.summary(target, metric), self.summary(BASELINE, metric)
        if mine is None or base is None or mine <= 0 or base <= 0:
            return None
        return mine / base if metric.higher_is_better else base / mine


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma-separated (default: all of them)")
    parser.add_argument("--size-mib", type=int, default=None, help="sequential file size (default 512, --quick 32)")
    parser.add_argument("--files", type=int, default=None, help="files for create/stat/unlink (default 5000, --quick 1000)")
    parser.add_argument("--fio-runtime", type=int, default=None, help="seconds per fio job (default 10, --quick 2)")
    parser.add_argument("--fio-size-mib", type=int, default=None, help="fio file size (default 64, --quick 16)")
    parser.add_argument("--fio-buffered", action="store_true", help="fio without O_DIRECT (measures the page cache)")
    parser.add_argument("--tar-entries", type=int, default=None,
                        help="extract the first N tar entries only (default all, --quick 1000)")
    parser.add_argument("--workloads", default=",".join(GROUPS),
                        help=f"comma-separated groups (default: all of them: {','.join(GROUPS)})")
    parser.add_argument("--base-tree", type=Path, default=None, metavar="DIR",
                        help="source tree for the umbrafs-base target (e.g. from `git archive HEAD`)")
    parser.add_argument("--umbrafs-mount-args", default="", metavar="ARGS",
                        help="extra arguments for `umbrafs mount`, e.g. \"--no-xattr\"")
    parser.add_argument("--sdist", default=DEFAULT_SDIST, help=f"sdist to extract, NAME==VERSION (default {DEFAULT_SDIST})")
    parser.add_argument("--tarball", type=Path, default=None, help="use this tarball instead of --sdist")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the scratch directory (default /var/tmp)")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions, figures are medians (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write all figures to this JSON file")
    parser.add_argument("--keep-workdir", action="store_true", help="do not delete the scratch directory (debugging)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    quick = args.quick
    args.size_mib = args.size_mib or (32 if quick else 512)
    args.files = args.files or (1000 if quick else 5000)
    args.fio_runtime = args.fio_runtime or (2 if quick else 10)
    args.fio_size_mib = args.fio_size_mib or (16 if quick else 64)
    args.tar_entries = args.tar_entries or (1000 if quick else None)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGET_CLASSES]
    if unknown or not names:
        parser.error(f"unknown target(s) {unknown}; choose from {','.join(TARGET_CLASSES)}")
    args.target_names = list(dict.fromkeys(names))
    groups = [g.strip() for g in args.workloads.split(",") if g.strip()]
    if not groups or any(g not in GROUPS for g in groups):
        parser.error(f"unknown workload group(s) in {args.workloads!r}; choose from {','.join(GROUPS)}")
    args.groups = tuple(dict.fromkeys(groups))
    if args.repeat < 1 or args.size_mib < 1 or args.files < 1:
        parser.error("--repeat, --size-mib and --files must be positive")
    return args


def _raise_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def disk_of(path: Path) -> str:
    dev = os.stat(path).st_dev
    key = f"{os.major(dev)}:{os.minor(dev)}"
    for mp, fstype, source, majmin in mount_table():
        if majmin == key:
            return f"{source} ({fstype}, mounted on {mp})"
    return key


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def sweep(workdir: Path) -> None:
    """Unmount anything still mounted under *workdir*."""
    prefix = str(workdir) + os.sep
    for mp, _, _, _ in reversed(mount_table()):
        if mp.startswith(prefix):
            log.warning("left-over mount %s: unmounting", mp)
            fuse_unmount(Path(mp))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    UmbrafsTarget.extra_mount_args = shlex.split(args.umbrafs_mount_args)
    UmbrafsBaseTarget.base_tree = args.base_tree.resolve() if args.base_tree else None
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # Always stop cleanly (finally blocks unmount), even if started with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    signal.signal(signal.SIGHUP, _raise_on_sigterm)
    command_line = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["fs_bench.py", *argv])

    is_root = os.geteuid() == 0
    if not is_root:
        log.warning("not root: cannot drop the page cache, 'cold' reads will be warm")
    notes: list[str] = []
    have_fio = shutil.which("fio") is not None
    if not have_fio:
        notes.append("fio not installed: fio rows skipped")
    if not shutil.which("fusermount3"):
        log.warning("fusermount3 not found; unmounting with umount")

    tarball = args.tarball.resolve() if args.tarball else fetch_sdist(args.sdist)
    parent = (args.workdir or Path("/var/tmp")).resolve()
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fs_bench.", dir=parent)).resolve()
    log.info("scratch directory %s", workdir)

    results = Results()
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    meta: dict[str, object] = {}
    params: Params | None = None
    try:
        with RssSampler() as sampler:
            tar_path = workdir / "source.tar"
            entries, paths = prepare_tarball(tarball, tar_path, args.tar_entries)
            params = Params(
                size_mib=args.size_mib, files=args.files, fio_runtime=args.fio_runtime,
                fio_size_mib=args.fio_size_mib, fio_direct=not args.fio_buffered, tar_path=tar_path,
                tar_entries=entries, tar_paths=paths, tar_name=tarball.name, drop_caches=is_root, have_fio=have_fio,
                groups=args.groups,
            )
            meta = {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
                "workdir": str(workdir), "disk": disk_of(workdir), "root": is_root,
                "loadavg_start": loadavg(),
                "tarball": f"{tarball.name} ({entries} entries)",
                "versions": {
                    "gocryptfs": tool_version(["gocryptfs", "--version"]) if shutil.which("gocryptfs") else None,
                    "cryfs": tool_version(["cryfs", "--version"]) if shutil.which("cryfs") else None,
                    "fio": tool_version(["fio", "--version"]) if have_fio else None,
                },
            }

            for name in args.target_names:
                target = TARGET_CLASSES[name](workdir / name, sampler)
                reason = target.unavailable_reason()
                if reason is None:
                    log.info("%s: setting up", name)
                    try:
                        target.setup()
                    except TargetUnavailable as exc:
                        reason = str(exc)
                    except (OSError, subprocess.SubprocessError, BenchError) as exc:
                        reason = f"setup failed: {exc}"
                if reason is not None:
                    log.warning("%s skipped: %s", name, reason)
                    skipped[name] = reason.splitlines()[0]
                    target.cleanup()
                    continue
                targets.append(target)

            pattern = os.urandom(min(PATTERN_BYTES, args.size_mib * MIB))
            for rep in range(args.repeat):
                for target in targets:  # round robin, so drift hits every target alike
                    log.info("=== %s, repetition %d/%d", target.name, rep + 1, args.repeat)
                    sampler.reset()
                    try:
                        target.mount()
                        Rep(target, params, pattern, record=functools.partial(results.add, target.name),
                            fail=functools.partial(results.fail, target.name)).run()
                    except BenchError as exc:
                        log.error("%s: %s", target.name, exc)
                        for metric in metrics_for(params):
                            if metric.key not in results.values.get(target.name, {}) and metric.in_ratios:
                                results.fail(target.name, metric.key, str(exc).splitlines()[0])
                    finally:
                        try:
                            target.unmount()
                        except Exception as exc:  # noqa: BLE001
                            log.error("%s: unmount failed: %s", target.name, exc)
                            target.cleanup()
                    if target.fuse and sampler.peak_kib:
                        results.add(target.name, "peak_rss", sampler.peak_kib / 1024)
                        results.extra.setdefault(target.name, {})["vmhwm_mib"] = max(
                            results.extra.get(target.name, {}).get("vmhwm_mib", 0.0), sampler.hwm_kib / 1024)
    finally:
        for target in targets:
            try:
                target.cleanup()
            except Exception as exc:  # noqa: BLE001
                log.error("%s: cleanup failed: %s", target.name, exc)
        sweep(workdir)
        if args.keep_workdir:
            log.info("kept %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            note_deletions()
            if workdir.exists():
                log.warning("could not remove %s entirely", workdir)

    assert params is not None
    meta["loadavg_end"] = loadavg()
    report(command_line, args, params, meta, targets, skipped, notes, results)
    return 0


def report(command_line: str, args: argparse.Namespace, params: Params, meta: dict[str, object],
           targets: Sequence[Target], skipped: dict[str, str], notes: list[str], results: Results) -> None:
    metrics = metrics_for(params)
    names = [t.name for t in targets]
    lines = [
        f"$ {command_line}",
        f"date {meta['date']}, kernel {meta['kernel']}, {meta['cpus']} CPUs, Python {meta['python']}",
        f"disk: {meta['disk']}; scratch dir {meta['workdir']}",
        f"load average (1/5/15 min) at start {meta['loadavg_start']}, at end {meta['loadavg_end']}",
        f"tarball: {meta['tarball']}; repetitions: {args.repeat} (figures are medians; RSS is the maximum)",
        f"fio: {'O_DIRECT' if params.fio_direct else 'buffered'}, psync, 4 KiB, {params.fio_size_mib} MiB file, "
        f"{params.fio_runtime} s per job",
        "versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),  # type: ignore[attr-defined]
    ]
    if args.umbrafs_mount_args:
        lines.append(f"umbrafs mount options: {args.umbrafs_mount_args}")
    if not params.drop_caches:
        notes.append("not root: the page cache was not dropped, 'cold' reads are not cold")
    for name, reason in skipped.items():
        notes.append(f"{name} skipped: {reason}")
    for name in names:
        for key, why in results.errors.get(name, {}).items():
            notes.append(f"{name} {key}: ERR: {why}")
    print("\n".join(lines))
    print()
    if names:
        rows = [[m.label, m.unit, *[results.cell(n, m) for n in names]] for m in metrics]
        print(table(["workload", "unit", *names], rows))
        print()
        if BASELINE in names:
            print(f"ratio to {BASELINE} (>1 = faster than {BASELINE}: its time / target's time, "
                  f"or target's rate / its rate)")
            ratio_rows = [[m.label, *[results.ratio_cell(n, m) for n in names]] for m in metrics if m.in_ratios]
            print(table(["workload", *names], ratio_rows, left=1))
        else:
            print(f"no {BASELINE} figures: no ratio table")
    else:
        print("no target could be run")
    if notes:
        print()
        print("notes:")
        for note in notes:
            print(f"- {note}")

    if args.json:
        doc = {
            "command": command_line, "meta": meta,
            "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(params).items()},
            "targets": names, "skipped": skipped, "notes": notes,
            "metrics": [dataclasses.asdict(m) for m in metrics],
            "results": {
                n: {m.key: {"values": results.values.get(n, {}).get(m.key, []), "summary": results.summary(n, m),
                            "error": results.errors.get(n, {}).get(m.key),
                            "ratio_to_gocryptfs": results.ratio(n, m) if m.in_ratios else None}
                    for m in metrics}
                for n in names
            },
            "extra": results.extra,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log.info("wrote %s", args.json)


if __name__ == "__main__":
    sys.exit(main())
