"""Real proxy processes on 127.0.0.1 (started through the CLI, stopped by PID) and identities
with cheap KDF parameters in temporary state directories."""
from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from proxy import keyring as identity_mod
from proxy.client import ProxyClient
from proxy.keyring import Identity
from tests.conftest import PASSPHRASE, UMBRAFS, process_gone

FAST_KDF = identity_mod.KdfParams(memory_kib=1024, iterations=1, lanes=1)
SECRET = PASSPHRASE.encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ProxyProc:
    """One `umbrafs proxy serve` process; the port stays the same across restarts."""

    root: Path
    admin_file: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    capture: bool = False  # record every request and answer (`umbrafs proxy serve --capture`)
    workers: int = 0       # `proxy serve --workers`

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.root / "proxy.db"

    @property
    def log(self) -> Path:
        return self.root / "proxy.log"

    @property
    def capture_file(self) -> Path:
        return self.root / "capture.jsonl"

    @property
    def pidfile(self) -> Path:
        return self.root / "proxy.pid"

    def start(self) -> "ProxyProc":
        self.root.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            if self._start_once():
                return self
            self.port = free_port()  # lost a race for the port: take another
        raise AssertionError(f"proxy did not start:\n{self.log.read_text()}")

    def _start_once(self) -> bool:
        env = {k: v for k, v in os.environ.items() if not k.startswith("UMBRAFS_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*UMBRAFS, "--home", str(self.root / "home"), "proxy", "serve", "--port", str(self.port),
                 "--db", str(self.db), "--admin", str(self.admin_file), "--pidfile", str(self.pidfile),
                 *(["--workers", str(self.workers)] if self.workers else []),
                 *(["--capture", str(self.capture_file)] if self.capture else [])],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env,
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline().decode() if ready else ""
        if line.strip() == f"listening on {self.url}":
            assert int(self.pidfile.read_text()) == self.proc.pid
            return True
        self.kill()
        if "Address already in use" in self.log.read_text():
            return False
        raise AssertionError(f"proxy did not start ({line!r}):\n{self.log.read_text()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM by PID; returns the exit status."""
        assert self.proc is not None
        os.kill(self.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        finally:
            self._close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def ensure_running(self) -> None:
        if not self.running:
            self.start()


@dataclass
class Cluster:
    root: Path
    proxies: list[ProxyProc]
    admin: Identity
    alice: Identity   # owner
    bob: Identity     # reader
    carol: Identity   # reader
    eve: Identity     # never registered anywhere

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.proxies]

    def client(self, who: Identity, index: int = 0, **kwargs: object) -> ProxyClient:
        return ProxyClient(self.proxies[index].url, who, **kwargs)  # type: ignore[arg-type]

    def restore(self) -> None:
        for p in self.proxies:
            p.ensure_running()


def make_identity(home: Path, name: str) -> Identity:
    return identity_mod.create(home, name, SECRET, FAST_KDF)


_LOG_LINE = re.compile(
    r"^\S+ \S+ ERROR proxy\.service\.crypto_worker: re-encryption worker \d+ exited; \d+ left$|"
    r"^\S+ \S+ (INFO|WARNING) proxy\.service\.server: ("
    r"proxy listening on http://127\.0\.0\.1:\d+ \(database \S+\)"
    r"|proxy on http://127\.0\.0\.1:\d+ shutting down"
    r"|capturing every request and answer into \S+ \(--capture\)"
    r"|(GET|POST|DELETE) /\S* -> \d{3} \(([0-9a-f]{16}|-)\))$"
)


def check_log(log: str) -> None:
    """A proxy logs its URL and refused requests as one short line each: never a body, a key or a kfrag."""
    assert "Traceback" not in log and PASSPHRASE not in log, log
    for line in log.splitlines():
        assert _LOG_LINE.match(line), line


def stop_all(proxies: list[ProxyProc]) -> None:
    """Stop every proxy by PID first (a failed check must not leave the others running),
    then check that each exited cleanly on SIGTERM and logged nothing it should not."""
    statuses = []
    for p in proxies:
        if p.running:
            statuses.append((p, p.stop()))
        else:
            p.kill()
    for p, status in statuses:
        assert status == 0, f"proxy exited with {status} on SIGTERM:\n{p.log.read_text()}"
    for p in proxies:
        if p.proc is not None:
            assert process_gone(p.pid)
        check_log(p.log.read_text())


@contextlib.contextmanager
def running_cluster(root: Path, n: int = 3) -> Iterator[Cluster]:
    home = root / "home"
    ids = {name: make_identity(home, name) for name in ("admin", "alice", "bob", "carol", "eve")}
    admin_file = root / "admin.pub"
    admin_file.write_text(ids["admin"].public.to_text())
    proxies = [ProxyProc(root / f"proxy{i}", admin_file) for i in range(n)]
    try:
        for p in proxies:
            p.start()
        cluster = Cluster(root, proxies, **ids)
        for i in range(n):
            with cluster.client(cluster.admin, i) as admin:
                admin.register(cluster.alice.public, "owner")
                admin.register(cluster.bob.public, "reader")
                admin.register(cluster.carol.public, "reader")
        yield cluster
    finally:
        stop_all(proxies)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("proxies")) as c:
        yield c


@pytest.fixture
def live(cluster: Cluster) -> Iterator[Cluster]:
    """The module's cluster, with every proxy running again after the test."""
    cluster.restore()
    yield cluster
    cluster.restore()


class TamperingProxy:
    """A real HTTP server in front of a real proxy that forwards every request verbatim (the
    signature covers method, path and body, not the host) and flips one bit in each cfrag it
    passes back: a compromised proxy, as far as a recipient can tell."""

    def __init__(self, upstream: str) -> None:
        import http.server
        import threading
        import urllib.parse

        up = urllib.parse.urlsplit(upstream)
        tamper = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                import base64
                import http.client
                import json

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                answer = conn.getresponse()
                data, status = answer.read(), answer.status
                conn.close()
                if status == 200 and self.path.endswith("/reencrypt"):
                    obj = json.loads(data)
                    cfrag = bytearray(base64.b64decode(obj["cfrag"]))
                    cfrag[len(cfrag) // 2] ^= 0x01
                    obj["cfrag"] = base64.b64encode(bytes(cfrag)).decode()
                    data = json.dumps(obj).encode()
                    tamper.tampered += 1
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.tampered = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
