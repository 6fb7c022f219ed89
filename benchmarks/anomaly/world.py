"""The evaluation's world: identities, three proxies, alice's vault and daemon, bob's share mount
and daemon, a shared fake clock — all real processes, all stopped by PID and every mount
unmounted on the way out (exception, Ctrl-C or SIGTERM included).

Layout under the work directory::

    state/   alice/ bob/ admin/ (state dirs)  vault/  proxy0..2/   <- copied to snap/ after the baseline
    mnt/     drive (alice's mount, allow_other)  view (bob's share mount)  check (read-only, audit off)
    cache/   the git repository the "big git clone" look-alike clones
    clock.json   the shared fake clock (`umbrafs --clock-file` of every process)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.fs_bench import _proc_starttime as _starttime

log = logging.getLogger("anomaly_eval.world")

REPO_ROOT = Path(__file__).resolve().parents[2]
UMBRAFS = [sys.executable, "-m", "cli"]
FAST_KDF = ["--kdf-memory-kib", "1024", "--kdf-iterations", "1", "--kdf-lanes", "1"]
ALICE_PASS = "eval alice passphrase (not a secret)"
BOB_PASS = "eval bob passphrase (not a secret)"
ADMIN_PASS = "eval admin passphrase (not a secret)"
SETTLE_S = 0.025  # > the clock file's 10 ms re-read interval, so every process has seen a jump


class WorldError(Exception):
    """A part of the world would not start or answered wrongly."""


# ------------------------------------------------------------------ processes and mounts


def alive(pid: int) -> bool:
    return _starttime(pid) is not None


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL, one process we started (known by PID and start time)."""
    start = _starttime(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if start is None or _starttime(pid) != start:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _starttime(pid) == start:
            time.sleep(0.05)
        if sig is signal.SIGTERM and _starttime(pid) == start:
            log.warning("pid %d ignored SIGTERM for %.0f s: SIGKILL", pid, timeout)


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
        return any(line.split(" ")[4] == target for line in fh)


def fuse_unmount(path: Path) -> None:
    for attempt in range(10):
        if not is_mounted(path):
            return
        subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, check=False)
        time.sleep(0.1 * (attempt + 1))
    if is_mounted(path):
        log.warning("%s busy: lazy unmount", path)
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimClock:
    """Writes the shared clock file; simulated time runs at real speed between jumps."""

    def __init__(self, path: Path) -> None:
        from wire.clock import write_clock_file  # M's helper: same format the readers parse
        self._write = write_clock_file
        self.path = path
        self._base = 0
        self._real = 0

    def now(self) -> int:
        return self._base + (time.time_ns() - self._real)

    def set(self, t_ns: int) -> None:
        self._write(self.path, t_ns, 1.0)
        self._base, self._real = t_ns, time.time_ns()
        time.sleep(SETTLE_S)

    def at_least(self, t_ns: int) -> None:
        """Jump forward to t_ns (never backwards: event times stay ordered)."""
        if t_ns > self.now():
            self.set(t_ns)

    def advance(self, seconds: float) -> None:
        self.set(self.now() + int(seconds * 1e9))


# ------------------------------------------------------------------ the world


class World:
    def __init__(self, workdir: Path, n_users: int) -> None:
        self.dir = workdir
        self.state = workdir / "state"
        self.snap = workdir / "snap"
        self.mnt = workdir / "mnt"
        self.cache = workdir / "cache"
        self.clock_file = workdir / "clock.json"
        self.alice_home = self.state / "alice"
        self.bob_home = self.state / "bob"
        self.admin_home = self.state / "admin"
        self.vault = self.state / "vault"
        self.drive = self.mnt / "drive"
        self.view = self.mnt / "view"
        self.check = self.mnt / "check"
        self.n_users = n_users
        self.passfiles = {"alice": workdir / "pass-alice", "bob": workdir / "pass-bob", "admin": workdir / "pass-admin"}
        self.ports = [free_port() for _ in range(3)]
        self.share_id = ""
        self.bob_fp = ""
        self.clock: SimClock | None = None
        self._proxies: list[subprocess.Popen[bytes]] = []
        self._mount_pids: dict[Path, int] = {}
        self._daemon_pids: dict[Path, int] = {}

    # -------------------------------------------------------------- plumbing

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("UMBRAFS_")}
        env.update({"TZ": "UTC", "PYTHONPATH": str(REPO_ROOT)})
        return env

    def cli(self, home: Path, *args: object, check: bool = True, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [*UMBRAFS, "--clock-file", str(self.clock_file), "--home", str(home), *map(str, args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env(), timeout=timeout, cwd=REPO_ROOT,
                              input=input, stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise WorldError(f"umbrafs {' '.join(map(str, args[:3]))} … exited {proc.returncode}: "
                             f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        return proc

    def proxy_args(self) -> list[str]:
        return [a for u in self.urls for a in ("--proxy", u)]

    # -------------------------------------------------------------- processes

    def start_proxies(self) -> None:
        """All three at once (each takes seconds to import), then wait for each to listen."""
        admin_pub = self.dir / "admin.pub"
        started = []
        for i, port in enumerate(self.ports):
            root = self.state / f"proxy{i}"
            root.mkdir(parents=True, exist_ok=True)
            with open(root / "proxy.log", "ab") as logf:
                proc = subprocess.Popen(
                    [*UMBRAFS, "--clock-file", str(self.clock_file), "--home", str(root / "home"), "proxy", "serve",
                     "--port", str(port),
                     "--db", str(root / "proxy.db"), "--admin", str(admin_pub), "--window", "3600"],
                    stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.DEVNULL, env=self.env(), cwd=REPO_ROOT)
            self._proxies.append(proc)
            started.append((proc, root, port))
        for proc, root, port in started:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            line = proc.stdout.readline().decode() if ready else ""
            if "listening on" not in line:
                raise WorldError(f"proxy on port {port} did not start: {(root / 'proxy.log').read_text()[-400:]}")

    def stop_proxies(self) -> None:
        for proc in self._proxies:
            stop_pid(proc.pid)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
            if proc.stdout:
                proc.stdout.close()
        self._proxies = []

    def start_daemon(self, home: Path, who: str) -> int:
        from daemon.paths import running_pid
        self.cli(home, "daemon", "start", "--passphrase-file", self.passfiles[who])
        pid = running_pid(home)
        if pid is None:
            raise WorldError(f"{who}'s daemon did not start")
        self._daemon_pids[home] = pid
        return pid

    def stop_daemon(self, home: Path) -> None:
        pid = self._daemon_pids.pop(home, None)
        if pid is None or not alive(pid):
            return
        proc = self.cli(home, "daemon", "stop", check=False, timeout=90)
        if proc.returncode != 0:
            log.warning("daemon stop (%s): %s", home.name, proc.stderr.strip())
        stop_pid(pid)

    def daemon_pid(self, home: Path) -> int | None:
        return self._daemon_pids.get(home)

    def mount(self, home: Path, who: str, mountpoint: Path, *extra: str) -> int:
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.cli(home, "mount", self.vault, mountpoint, "--passphrase-file", self.passfiles[who], *extra)
        pid = 0
        for rec in (home / "mounts").glob("*.json"):
            with contextlib.suppress(ValueError, OSError):
                data = json.loads(rec.read_text())
                if data.get("mountpoint") == str(mountpoint):
                    pid = int(data["pid"])
        if not pid:
            raise WorldError(f"no mount record for {mountpoint}")
        self._mount_pids[mountpoint] = pid
        return pid

    def mount_pid(self, mountpoint: Path) -> int | None:
        return self._mount_pids.get(mountpoint)

    def unmount(self, mountpoint: Path, home: Path | None = None) -> None:
        pid = self._mount_pids.pop(mountpoint, None)
        if home is not None and is_mounted(mountpoint):
            self.cli(home, "unmount", mountpoint, check=False, timeout=60)
        fuse_unmount(mountpoint)
        if pid:
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            stop_pid(pid)

    def mount_drive(self) -> int:
        return self.mount(self.alice_home, "alice", self.drive, "--allow-other")

    def mount_view(self) -> int:
        return self.mount(self.bob_home, "bob", self.view, "--share", self.share_id, "--identity", "bob", "--allow-other")

    def start_all(self, *, clock_ns: int) -> None:
        """Proxies, both daemons, both mounts — the running office.  Independent starts run in
        parallel (each is a Python process that needs seconds to import on a busy machine)."""
        from concurrent.futures import ThreadPoolExecutor
        assert self.clock is not None
        self.clock.at_least(clock_ns)
        with ThreadPoolExecutor(2) as pool:
            proxies = pool.submit(self.start_proxies)
            daemons = [pool.submit(self.start_daemon, self.alice_home, "alice"),
                       pool.submit(self.start_daemon, self.bob_home, "bob")]
            for f in (proxies, *daemons):
                f.result()
            mounts = [pool.submit(self.mount_drive), pool.submit(self.mount_view)]
            for f in mounts:
                f.result()
        for home in (self.alice_home, self.bob_home):
            self.wait_detector(home)

    def wait_detector(self, home: Path, timeout: float = 300.0) -> None:
        """The daemon loads its baselines from the ledger in the background after a start: an
        attack replayed before that would meet a detector that knows nobody."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.cli(home, "daemon", "status", "--json", check=False)
            try:
                det = json.loads(proc.stdout).get("detector")
            except (ValueError, AttributeError):
                det = None
            if not isinstance(det, dict) or det.get("loaded", True):
                return
            time.sleep(0.3)
        raise WorldError(f"the daemon in {home} did not load its baselines within {timeout:.0f} s")

    def stop_all(self) -> None:
        """Everything we started, mounts first (they flush to the daemons), in reverse order."""
        errors = []
        for mnt, home in ((self.view, self.bob_home), (self.drive, self.alice_home), (self.check, self.alice_home)):
            try:
                self.unmount(mnt, home)
            except Exception as exc:  # keep going: the rest must still be stopped
                errors.append(exc)
        for mnt in list(self._mount_pids):
            with contextlib.suppress(Exception):
                self.unmount(mnt)
        for home in list(self._daemon_pids):
            try:
                self.stop_daemon(home)
            except Exception as exc:
                errors.append(exc)
        self.stop_proxies()
        if errors:
            log.warning("while stopping: %s", "; ".join(map(str, errors)))

    # -------------------------------------------------------------- state copies

    def snapshot(self) -> None:
        """Copy the stopped world's state (vault, state dirs, proxy databases) to snap/."""
        if self._mount_pids or self._daemon_pids or self._proxies:
            raise WorldError("snapshot of a running world")
        if self.snap.exists():
            shutil.rmtree(self.snap)
        subprocess.run(["cp", "-a", "--reflink=auto", str(self.state), str(self.snap)], check=True)

    def rollback(self) -> None:
        """Put the snapshot back, at the same paths (the ledger anchors name them)."""
        if self._mount_pids or self._daemon_pids or self._proxies:
            raise WorldError("rollback of a running world")
        shutil.rmtree(self.state)
        subprocess.run(["cp", "-a", "--reflink=auto", str(self.snap), str(self.state)], check=True)

    # -------------------------------------------------------------- reading results

    def hash_tree(self, top: Path) -> dict[str, str]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames]
            for name in filenames:
                path = Path(dirpath) / name
                h = hashlib.sha256()
                with open(path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
                out[str(path.relative_to(top))] = h.hexdigest()
        return out

    def manifest(self) -> dict[str, str]:
        """Every file of the (stopped) vault, by a read-only mount that records nothing."""
        self.mount(self.alice_home, "alice", self.check, "--read-only", "--audit", "off")
        try:
            return self.hash_tree(self.check)
        finally:
            self.unmount(self.check, self.alice_home)

    def ledger_events(self, home: Path, op: str | None = None, since_idx: int = 0) -> list[tuple[int, Any]]:
        """(idx, event) with idx >= since_idx (SQLite pre-filters on op)."""
        from daemon.paths import ledger_path
        from ledger import read
        path = ledger_path(home)
        if not path.exists():
            return []
        from ledger.entry import unbind
        conn = read.open_readonly(path)
        try:
            if op is None:
                return [(i, e) for i, e in read.entries(conn) if i >= since_idx]
            # by the primary key first: a scan of a million entries' JSON per call would dominate
            rows = conn.execute("SELECT idx, data FROM entries WHERE idx >= ? AND op = ? ORDER BY idx",
                                (since_idx, op)).fetchall()
            return [(int(i), unbind(data)[1]) for i, data in rows]
        finally:
            conn.close()

    def ledger_size(self, home: Path) -> int:
        from daemon.paths import ledger_path
        from ledger import read
        path = ledger_path(home)
        if not path.exists():
            return 0
        conn = read.open_readonly(path)
        try:
            return read.ledger_size(conn)
        finally:
            conn.close()

    def ledger_event(self, home: Path, source: str, seq: int) -> Any:
        """One event by (source, seq), or None."""
        from daemon.paths import ledger_path
        from ledger import read
        from ledger.entry import unbind
        conn = read.open_readonly(ledger_path(home))
        try:
            row = conn.execute("SELECT data FROM entries WHERE source = ? AND seq = ?", (source, seq)).fetchone()
            return unbind(row[0])[1] if row else None
        finally:
            conn.close()

    def mount_status(self, home: Path, mountpoint: Path) -> dict[str, Any] | None:
        """The mount's control status, or None if it is gone / has no control socket."""
        try:
            from wire import mountsock as mounts
        except ImportError:
            return None
        for info in mounts.list_mounts(home):
            if info.mountpoint == str(mountpoint):
                try:
                    return mounts.request(info, {"type": "status"}, timeout=5.0)
                except Exception as exc:  # a mount without control (older code) or one going away
                    log.debug("status of %s: %s", mountpoint, exc)
                    return None
        return None

    def unlock(self, home: Path, mountpoint: Path, who: str) -> bool:
        from wire import mountsock as mounts
        passphrase = self.passfiles[who].read_text().rstrip("\n")
        for info in mounts.list_mounts(home):
            if info.mountpoint == str(mountpoint):
                reply = mounts.request(info, {"type": "unlock", "passphrase": passphrase}, timeout=60.0)
                if reply.get("type") != "unlocked":
                    log.warning("unlock %s: %s", mountpoint, reply)
                return reply.get("type") == "unlocked"
        return False


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the cleanup in `finally` runs."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ------------------------------------------------------------------ building it


def make_git_repo(path: Path, files: int, owner_uid: int) -> None:
    """A repository of many small files for the "big git clone" look-alike (outside the vault)."""
    if (path / ".git").exists():
        return
    import random
    rng = random.Random(7)
    path.mkdir(parents=True)
    for i in range(files):
        d = path / f"pkg{i % 40:02d}" / f"sub{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        lines = [f"export function fn{i}_{j}(a, b) {{ return a * {rng.randint(1, 99)} + b; }}" for j in range(rng.randint(3, 40))]
        (d / f"mod{i:05d}.js").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "eval", "GIT_AUTHOR_EMAIL": "eval@example.org",
           "GIT_COMMITTER_NAME": "eval", "GIT_COMMITTER_EMAIL": "eval@example.org", "HOME": str(path)}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "import"]):
        subprocess.run(cmd, cwd=path, env=env, check=True, capture_output=True)
    subprocess.run(["chown", "-R", f"{owner_uid}:{owner_uid}", str(path)], check=True)


def build(world: World, *, seed: int, scale: float, archive_mib: int, tuning: dict[str, Any],
          git_files: int, team_scale: float) -> None:
    """Identities, proxies, the vault with every user's files (written before auditing starts,
    so the ledger holds only the simulated weeks), the team share for bob, bob's guard credential."""
    from benchmarks.anomaly import runner, schedule
    w = world
    w.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(w.dir, 0o755)
    for parent in w.dir.parents:  # the office workers (other uids) must reach the mountpoints
        if not os.stat(parent).st_mode & 0o001:
            raise WorldError(f"{parent} is not searchable by other users (mode {os.stat(parent).st_mode & 0o777:o}): "
                             "choose a --workdir whose parents are (e.g. under /var/tmp)")
    for who, secret in (("alice", ALICE_PASS), ("bob", BOB_PASS), ("admin", ADMIN_PASS)):
        w.passfiles[who].write_text(secret + "\n")
        os.chmod(w.passfiles[who], 0o600)
    w.clock = SimClock(w.clock_file)
    w.clock.set(schedule.EPOCH - 2 * schedule.DAY)
    homes = {"alice": w.alice_home, "bob": w.bob_home, "admin": w.admin_home}

    def identity(who: str) -> str:
        out = w.cli(homes[who], "identity", "create", who, "--passphrase-file", w.passfiles[who], *FAST_KDF).stdout
        (w.dir / f"{who}.pub").write_text(w.cli(homes[who], "identity", "export", who).stdout)
        return out.split("fingerprint ")[-1].strip(" )\n")

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(4) as pool:  # independent CLI processes: seconds of imports each
        init = pool.submit(w.cli, w.alice_home, "init", w.vault, "--passphrase-file", w.passfiles["alice"], *FAST_KDF)
        fps = dict(zip(homes, pool.map(identity, homes)))
        w.bob_fp = fps["bob"]
        proxies = pool.submit(w.start_proxies)  # they need admin.pub
        imports = [pool.submit(w.cli, w.alice_home, "identity", "import", w.dir / "bob.pub"),
                   pool.submit(w.cli, w.bob_home, "identity", "import", w.dir / "alice.pub")]
        proxies.result()
        regs = [pool.submit(w.cli, w.admin_home, "proxy", "register", w.dir / f"{who}.pub", *w.proxy_args(),
                            "--role", role, "--identity", "admin", "--passphrase-file", w.passfiles["admin"])
                for who, role in (("alice", "owner"), ("bob", "reader"))]
        for f in (init, *imports, *regs):
            f.result()
    people = schedule.users(w.n_users)
    make_git_repo(w.cache / "repo", git_files, people[1 % len(people)][1])
    # No daemon has ever run in alice's home: `--audit auto` records nothing while we populate.
    w.mount_drive()
    try:
        (w.drive / "home").mkdir()
        (w.drive / "team").mkdir()
        os.chown(w.drive / "team", people[0][1], people[0][1])
        for i, (name, uid, _prof) in enumerate(people):
            home = w.drive / "home" / name
            home.mkdir()
            os.chown(home, uid, uid)
            runner.run("populate", uid, w.drive, home, seed, {
                "index": i, "seed": seed * 1000 + i, "scale": scale, "team": i == 0, "team_scale": team_scale,
                "archive_mib": archive_mib if i == 0 else 0})
        share = w.cli(w.alice_home, "share", w.drive / "team", "--with", "bob", *w.proxy_args(), "--threshold", "2",
                      "--passphrase-file", w.passfiles["alice"], "--vault-passphrase-file", w.passfiles["alice"],
                      "--json").stdout
        w.share_id = json.loads(share)["id"]
    finally:
        w.unmount(w.drive, w.alice_home)
        w.stop_proxies()
    for home in (w.alice_home, w.bob_home):
        (home / "anomaly.json").write_text(json.dumps(tuning) + "\n")
    (w.dir / "world.json").write_text(json.dumps({"share_id": w.share_id, "ports": w.ports, "bob_fp": w.bob_fp}))
