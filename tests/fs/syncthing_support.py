"""Two real Syncthing instances on loopback, sharing one folder between them.

`syncthing_pair(dir_a, dir_b, home)` simulates two devices whose umbrafs
backing directories are kept in sync by Syncthing (tested with the Debian
package, 1.19.2). Each instance gets its own home (`home/a`, `home/b`: keys,
config, database, `syncthing.log`) and is stopped by PID on exit (SIGTERM,
then SIGKILL), whatever the body did.

Why each setting is there (`_configure`):

- GUI/REST on 127.0.0.1:<free port>, TLS off, a known API key: the helper
  talks to the REST API with `X-API-Key`; nothing listens beyond loopback.
- `listenAddress` tcp://127.0.0.1:<free port> only: no QUIC (hence no STUN),
  no wildcard socket. Device a knows b at its static
  `tcp://127.0.0.1:<port>` address, so no discovery is needed; b knows a as
  "dynamic", which with discovery off means b never dials and only accepts.
  When both dial, 1.19 regularly (3 starts in 12 here) deadlocks on the two
  simultaneous connections: both Hello exchanges time out after 20 s.
- `globalAnnounceEnabled`, `localAnnounceEnabled` (broadcast/multicast),
  `relaysEnabled`, `natEnabled` (UPnP/NAT-PMP), `announceLANAddresses`
  false: no traffic off the machine, no multicast on the test host.
- `urAccepted` -1 (usage reporting declined, so no prompt and no upload),
  `crashReportingEnabled` false, `autoUpgradeIntervalH` 0 plus
  `--no-upgrade`/STNOUPGRADE, `startBrowser` false plus `--no-browser`:
  no outbound calls, nothing opened.
- `--no-restart`: the monitor process that 1.19's `serve` still forks
  never respawns the inner one (after a crash, or when we signal it);
  `restartOnWakeup` false. Each instance runs in its own session, and stop
  signals that process group: SIGTERM, then SIGKILL to whatever is left.
- `reconnectionIntervalS` 5 (default 60): after `resume()` or a dropped
  connection a redials b within seconds.
- STNODEFAULTFOLDER / `--no-default-folder`: no `~/Sync` default folder.
- STHASHING=minio: skips the SHA-256 implementation benchmark at startup
  (minio/sha256-simd is what the benchmark picks here anyway).
- b is started first and a only once b's API answers, so a's first dial
  finds b listening (otherwise it waits `reconnectionIntervalS` to retry).
- Folder `FOLDER_ID`, type sendreceive on both sides, shared with the other
  device; `fsWatcherEnabled` with `fsWatcherDelayS` 1 so changes propagate
  without forced scans (Syncthing holds deletions back longer than other
  changes, to pair them with creations into renames), plus a rescan every
  `rescan_interval_s` as a backstop. `wait_synced` forces scans anyway.
- No ignore patterns (no `.stignore`, empty `<ignores>`): an umbrafs
  backing directory must sync whole. Syncthing itself always skips
  `.stfolder` (its marker, created here before start so the folder never
  starts in "folder marker missing"), `.stignore`, `.stversions` and its
  `.syncthing.*.tmp` temporaries.
- `caseSensitiveFS` true: the backing store is a case-sensitive Linux file
  system, and base64url names that differ only in case are distinct files;
  the default (false) would refuse such pairs as "case conflicts".
- No versioning: a replaced or deleted file is gone, as on a plain sync
  client without history; conflicts still produce `.sync-conflict-*` files.
- `ignorePerms` false: permission bits are synced (ownership never is).

What a remote change looks like on the receiving side (1.19.2, traced):
a new or changed file is written to `.syncthing.<name>.tmp` in the same
directory (O_EXCL, unchanged blocks copied from the old file), the old file
is unlinked, the temporary renamed into place (not an atomic replace: for a
moment the name is absent), then its mtime set (nanoseconds kept). A rename
is two renames, old -> `.syncthing.<new>.tmp` -> new (inode kept). Extended
attributes, ownership and directory mtimes are not synced; a change that
keeps size and mtime is invisible to the scanner. A change propagates in
about 0.7-1.1 s with the watcher alone.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FOLDER_ID = "umbrafs-backing"
API_KEY = "umbrafs-test-api-key"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an http_proxy


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together, so no duplicates)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


SYNCTHING_OWN = frozenset({".stfolder", ".stversions"})


def tree_contents(root: Path) -> dict[str, object]:
    """Every entry under `root` (but Syncthing's own top-level dirs): relative
    path -> bytes for a file, ("symlink", target) or "dir"."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in SYNCTHING_OWN]
        for name in dirnames + filenames:
            path = here / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("symlink", os.readlink(path))
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_bytes()
    return out


@dataclass
class Instance:
    """One Syncthing device: its home, folder, ports and (once started) process."""

    name: str
    home: Path
    folder: Path
    gui_port: int
    listen_port: int
    device_id: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.home / "syncthing.log"

    @property
    def listen_address(self) -> str:
        return f"tcp://127.0.0.1:{self.listen_port}"

    def api(self, method: str, path: str, timeout: float = 30, **params: str) -> Any:
        """Call the REST API; returns the decoded JSON (None for an empty body)."""
        url = f"http://127.0.0.1:{self.gui_port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(url, method=method, headers={"X-API-Key": API_KEY},
                                     data=b"" if method == "POST" else None)
        with _OPENER.open(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body.strip() else None

    def log_tail(self, lines: int = 40) -> str:
        return f"--- syncthing {self.name} ({self.log_path}) ---\n{_tail(self.log_path, lines)}"


@dataclass
class SyncthingPair:
    a: Instance
    b: Instance
    folder_id: str = FOLDER_ID
    last_state: dict[str, Any] = field(default_factory=dict)

    def sides(self) -> list[tuple[Instance, Instance]]:
        return [(self.a, self.b), (self.b, self.a)]

    def logs(self, lines: int = 40) -> str:
        return f"{self.a.log_tail(lines)}\n{self.b.log_tail(lines)}"

    def connected(self) -> bool:
        for me, other in self.sides():
            conns = me.api("GET", "/rest/system/connections", timeout=5)["connections"]
            if not conns.get(other.device_id, {}).get("connected"):
                return False
        return True

    def wait_connected(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self._try(self.connected):
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"syncthing devices did not connect within {timeout} s\n{self.logs()}")
            time.sleep(0.1)

    def scan(self, timeout: float = 60) -> None:
        """Force a scan on both sides (the call returns when the scan is done)."""
        for me, _ in self.sides():
            me.api("POST", "/rest/db/scan", timeout=timeout, folder=self.folder_id)

    def pause(self) -> None:
        """Disconnect the devices (each pauses the other): edits stay local."""
        for me, other in self.sides():
            me.api("POST", "/rest/system/pause", device=other.device_id)

    def resume(self, timeout: float = 60) -> None:
        for me, other in self.sides():
            me.api("POST", "/rest/system/resume", device=other.device_id)
        self.wait_connected(timeout)

    def _snapshot(self) -> tuple[bool, tuple[Any, ...]]:
        """(in sync?, the figures that must stay equal over two polls)."""
        ok = True
        key: list[Any] = []
        state: dict[str, Any] = {}
        for me, other in self.sides():
            st = me.api("GET", "/rest/db/status", timeout=10, folder=self.folder_id)
            comp = me.api("GET", "/rest/db/completion", timeout=10, folder=self.folder_id,
                          device=other.device_id)
            state[me.name] = {"status": st, "completion_of_other": comp}
            ok &= (st["state"] == "idle" and st["needTotalItems"] == 0 and st["needBytes"] == 0
                   and st.get("pullErrors", 0) == 0
                   and comp["completion"] == 100 and comp["needBytes"] == 0
                   and comp["needItems"] == 0 and comp["needDeletes"] == 0
                   and comp.get("remoteState", "valid") == "valid"
                   and all(st["local" + k] == st["global" + k]
                           for k in ("Files", "Directories", "Symlinks", "Bytes")))
            key.append(tuple(st[k] for k in ("globalFiles", "globalDirectories", "globalSymlinks",
                                              "globalBytes", "sequence", "localFiles", "localBytes")))
        ga, gb = key
        ok &= ga[:4] == gb[:4]
        # 1.19 reports 100 % completion for a device that is not connected.
        ok &= self.connected()
        self.last_state = state
        return ok, tuple(key)

    def wait_synced(self, timeout: float = 60) -> None:
        """Scan both sides, then wait until both are connected, idle, need
        nothing, see the other complete and agree on the global counts, over
        two consecutive polls. (That is Syncthing's view; compare contents too.)"""
        deadline = time.monotonic() + timeout
        error = ""
        try:
            self.scan(timeout=timeout)
        except (OSError, urllib.error.URLError) as exc:
            error = f"scan failed: {exc!r}"
        previous: tuple[Any, ...] | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                ok, key = self._snapshot()
            except (OSError, urllib.error.URLError, KeyError, ValueError) as exc:
                ok, key, error = False, (), repr(exc)
            if ok and key == previous:
                return
            previous = key if ok else None
            time.sleep(0.25)
        errors = {me.name: self._try(lambda me=me: me.api("GET", "/rest/folder/errors",
                                                          timeout=5, folder=self.folder_id))
                  for me, _ in self.sides()}
        state = "\n".join(f"{name}: {json.dumps(v, sort_keys=True)}" for name, v in self.last_state.items())
        raise AssertionError(
            f"syncthing folders not in sync within {timeout} s {error}\n"
            f"connected: {self._try(self.connected)}\n{state}\nfolder errors: {errors}\n{self.logs()}")

    def _check_alive(self) -> None:
        for inst in (self.a, self.b):
            if inst.proc is not None and inst.proc.poll() is not None:
                raise AssertionError(f"syncthing {inst.name} exited ({inst.proc.returncode})\n{self.logs()}")

    @staticmethod
    def _try(fn: Any) -> Any:
        try:
            return fn()
        except (OSError, urllib.error.URLError, KeyError, ValueError):
            return None


def _env(inst: Instance) -> dict[str, str]:
    """The caller's environment without proxies (Go dials through all_proxy)
    or Syncthing overrides (STGUIADDRESS, STHOMEDIR, ...), except STTRACE."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("all_proxy", "http_proxy", "https_proxy")
           and (not k.startswith("ST") or k == "STTRACE")}
    env.update(HOME=str(inst.home), STNODEFAULTFOLDER="1", STNOUPGRADE="1", STNORESTART="1",
               STHASHING="minio")
    return env


def _generate(inst: Instance, syncthing: str) -> None:
    inst.home.mkdir(parents=True, exist_ok=True)
    subprocess.run([syncthing, "generate", "--home", str(inst.home), "--no-default-folder",
                    "--skip-port-probing"], env=_env(inst), check=True, capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=60)
    root = ET.parse(inst.home / "config.xml").getroot()
    inst.device_id = root.find("device").get("id")  # type: ignore[union-attr]


def _set(parent: ET.Element, tag: str, value: str) -> None:
    for old in parent.findall(tag):
        parent.remove(old)
    ET.SubElement(parent, tag).text = value


def _configure(me: Instance, other: Instance, folder_id: str, rescan_interval_s: int,
               dial: bool) -> None:
    path = me.home / "config.xml"
    tree = ET.parse(path)
    root = tree.getroot()

    gui = root.find("gui")
    assert gui is not None
    gui.set("enabled", "true")
    gui.set("tls", "false")
    _set(gui, "address", f"127.0.0.1:{me.gui_port}")
    _set(gui, "apikey", API_KEY)

    opts = root.find("options")
    assert opts is not None
    for tag, value in {
        "listenAddress": me.listen_address,
        "globalAnnounceEnabled": "false",
        "localAnnounceEnabled": "false",
        "relaysEnabled": "false",
        "natEnabled": "false",
        "announceLANAddresses": "false",
        "urAccepted": "-1",
        "urSeen": "3",
        "crashReportingEnabled": "false",
        "autoUpgradeIntervalH": "0",
        "startBrowser": "false",
        "restartOnWakeup": "false",
        "reconnectionIntervalS": "5",
    }.items():
        _set(opts, tag, value)
    for old in opts.findall("unackedNotificationID"):
        opts.remove(old)

    own = root.find("device")
    assert own is not None
    own.set("name", me.name)
    peer = copy.deepcopy(own)
    peer.set("id", other.device_id)
    peer.set("name", other.name)
    _set(peer, "address", other.listen_address if dial else "dynamic")
    root.insert(list(root).index(own) + 1, peer)

    folder = copy.deepcopy(root.find("defaults/folder"))
    assert folder is not None
    folder.attrib.update({
        "id": folder_id, "label": folder_id, "path": str(me.folder.absolute()), "type": "sendreceive",
        "rescanIntervalS": str(rescan_interval_s), "fsWatcherEnabled": "true", "fsWatcherDelayS": "1",
        "ignorePerms": "false", "autoNormalize": "true",
    })
    for dev in folder.findall("device"):
        folder.remove(dev)
    for dev_id in (me.device_id, other.device_id):
        dev = ET.Element("device", {"id": dev_id, "introducedBy": ""})
        ET.SubElement(dev, "encryptionPassword").text = ""
        folder.insert(1, dev)
    _set(folder, "caseSensitiveFS", "true")
    _set(folder, "markerName", ".stfolder")
    root.insert(0, folder)
    tree.write(path, encoding="unicode")


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    pids = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat_path.read_text().rpartition(")")[2].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                pids.append(int(stat_path.parent.name))
    return pids


def _stop(instances: list[Instance], timeout: float = 15) -> None:
    """SIGTERM each instance's process group (`serve` runs a monitor process
    and the real one, even with --no-restart), all at once; then SIGKILL
    whatever is left after `timeout`."""
    procs = [inst.proc for inst in instances if inst.proc is not None]
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        while _group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None or _group(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kill_deadline = time.monotonic() + 10
            while _group(proc.pid) and time.monotonic() < kill_deadline:
                time.sleep(0.05)


def _start(inst: Instance, syncthing: str) -> None:
    with open(inst.log_path, "ab") as log:  # the child keeps its own descriptor
        inst.proc = subprocess.Popen(
            [syncthing, "serve", "--home", str(inst.home), "--no-browser", "--no-restart",
             "--no-upgrade", "--no-default-folder", "--logflags=3", "--logfile=-"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_env(inst),
            start_new_session=True,
        )


def _wait_api(inst: Instance, pair: SyncthingPair, deadline: float) -> None:
    while True:
        pair._check_alive()
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            if inst.api("GET", "/rest/system/ping", timeout=2) == {"ping": "pong"}:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"syncthing {inst.name} REST API did not answer\n{pair.logs()}")
        time.sleep(0.1)


@contextlib.contextmanager
def syncthing_pair(dir_a: Path, dir_b: Path, home: Path, *, folder_id: str = FOLDER_ID,
                   rescan_interval_s: int = 10, startup_timeout: float = 60) -> Iterator[SyncthingPair]:
    """Run two Syncthing devices syncing `dir_a` <-> `dir_b`; yields once they are connected.

    Both are stopped (and reaped) on exit, also when the body raises.
    """
    syncthing = shutil.which("syncthing")
    if syncthing is None:
        raise RuntimeError("syncthing is not installed (apt-get install syncthing)")
    ports = _free_ports(4)
    a = Instance("a", home / "a", dir_a, ports[0], ports[1])
    b = Instance("b", home / "b", dir_b, ports[2], ports[3])
    pair = SyncthingPair(a, b, folder_id)
    for inst in (a, b):
        inst.folder.mkdir(parents=True, exist_ok=True)
        (inst.folder / ".stfolder").mkdir(exist_ok=True)
        _generate(inst, syncthing)
    _configure(a, b, folder_id, rescan_interval_s, dial=True)
    _configure(b, a, folder_id, rescan_interval_s, dial=False)
    try:
        deadline = time.monotonic() + startup_timeout
        for inst in (b, a):  # b listens (its API answers after its listener is up), then a dials
            _start(inst, syncthing)
            _wait_api(inst, pair, deadline)
        pair.wait_connected(max(1.0, deadline - time.monotonic()))
        yield pair
    finally:
        _stop([a, b])
