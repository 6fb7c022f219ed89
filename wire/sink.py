"""Where the mount's access and namespace events leave the process.

``emit`` is called inline by FUSE handlers and must cost microseconds: it numbers
the event, appends its canonical line to the spool with one ``write(2)`` (so an
event the mount has answered for survives a ``kill -9`` of the mount) and queues
it for a delivery thread.  That thread — not trio, so nothing here can stall a
request — talks to the daemon over its unix socket: hello (the daemon stores
what is spooled and says how far it has us), then batches of events, each
acknowledged; acknowledged spool segments are deleted.  When the daemon is down
the thread retries every second and the spool grows; the daemon drains it when
it is back.  Exactly-once comes from (source, seq): the daemon drops copies.
"""
from __future__ import annotations

import collections
import errno as errno_mod
import itertools
import logging
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Protocol

from wire import daemonsock as protocol
from wire.clock import now_ns
from wire.spool import SpoolWriter
from ledger.events import encode_fields

from wire.errors import AuditUnavailable
from wire.procfs import ProcessNames

log = logging.getLogger(__name__)

MODES = ("best-effort", "required", "off")
_QUEUE_MAX = 100_000  # beyond this, events wait in the spool only
_RETRY = 1.0
# Waking the delivery thread for every event cost a GIL hand-over per FUSE request
# (tar x ran 2.4x slower): it wakes for the first event after a quiet spell, then
# lets a batch gather for _LINGER seconds, unless _BATCH events are already waiting.
_LINGER = 0.05
_BATCH = 1000
# ...except after an event that moved this much data: the daemon's bulk-read rule acts at
# 16 MiB, and at local-disk speed (~700 MB/s) a 50 ms linger alone lets 35 MB more through.
# Such events come at most one per MiB moved, so waking for them costs nothing measurable.
_URGENT_BYTES = 1 << 20


class EventSink(Protocol):
    def emit(
        self, op: str, *, uid: int = 0, pid: int = 0, path: str = "", path2: str = "", file_id: str = "",
        result: int = 0, detail: Mapping[str, Any] | None = None, **counts: int,
    ) -> None:
        """Take one event; must return at once and never raise."""


def _errno_name(code: int) -> str:
    return "ok" if code == 0 else errno_mod.errorcode.get(code, str(code))


class AuditSink:
    """Numbers, spools and delivers one mount's events (see the module doc)."""

    def __init__(self, home: Path, vault_id: str, *, required: bool = False, connect_timeout: float = 2.0) -> None:
        self.source = secrets.token_hex(8)
        self.vault_id = vault_id
        self.socket_path = protocol.socket_path(home)
        self._spool = SpoolWriter(home / "spool", self.source)
        self._seq = 0
        self._acked = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._overflowed = False
        self._urgent = False
        self._stopping = False
        self._process_name = ProcessNames()
        self.connected = threading.Event()
        self._sock: socket.socket | None = None
        if required:
            try:
                self._sock = self._connect(connect_timeout)
            except (OSError, protocol.ProtocolError) as exc:
                self._spool.close(remove=True)
                raise AuditUnavailable(
                    f"audit daemon not reachable at {self.socket_path} ({exc}); start it with `umbrafs daemon start` "
                    "or mount with --audit best-effort"
                ) from None
        self._thread = threading.Thread(target=self._run, name="audit-delivery", daemon=True)
        self._thread.start()

    # -- producer side (FUSE handlers, trio thread) ---------------------------

    def emit(
        self, op: str, *, uid: int = 0, pid: int = 0, path: str = "", path2: str = "", file_id: str = "",
        result: int = 0, detail: Mapping[str, Any] | None = None, **counts: int,
    ) -> None:
        now = now_ns()  # the event clock (simulated in evaluations, see wire/clock.py)
        with self._lock:
            self._seq += 1
            seq = self._seq
            line = encode_fields(
                self.source, seq, now, op, uid=uid, pid=pid, comm=self._process_name(pid), vault=self.vault_id,
                file_id=file_id, path=path, path2=path2, result=_errno_name(result), detail=detail or {}, **counts,
            )
            self._spool.append(seq, line)
            self._queue.append((seq, line))
            waiting = len(self._queue)
            if waiting > _QUEUE_MAX:
                self._queue.popleft()
                self._overflowed = True
            if counts.get("bytes_read", 0) + counts.get("bytes_written", 0) >= _URGENT_BYTES:
                self._urgent = True
                self._wake.notify()
            elif waiting == 1 or waiting == _BATCH:
                self._wake.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop; the rest stays spooled."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._acked < self._seq and self.connected.is_set() and time.monotonic() < deadline:
                self._wake.wait(0.05)
            self._stopping = True
            self._wake.notify_all()
        self._thread.join(timeout=max(0.1, deadline - time.monotonic()))
        with self._lock:
            left = self._seq - self._acked
            self._spool.close(remove=left == 0)
        if left:
            log.warning("audit: %d event(s) left in the spool for the daemon", left)

    @property
    def pending(self) -> int:
        with self._lock:
            return self._seq - self._acked

    # -- delivery thread ------------------------------------------------------

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            sock.settimeout(30.0)  # the daemon may be ingesting a large spool
            welcome = self._request(sock, {"type": "hello", "source": self.source})
            if welcome.get("type") != "welcome" or type(welcome.get("last_seq")) is not int:
                raise protocol.ProtocolError(f"unexpected reply {welcome.get('type')!r}")
        except BaseException:
            sock.close()
            raise
        self._on_ack(welcome["last_seq"])
        self.connected.set()
        return sock

    @staticmethod
    def _request(sock: socket.socket, message: dict) -> dict:  # type: ignore[type-arg]
        sock.sendall(protocol.encode(message))
        return protocol.receive(sock)

    def _on_ack(self, last_seq: int) -> None:
        with self._lock:
            if last_seq <= self._acked:
                return
            if last_seq > self._seq:
                # The daemon holds events of this source that it never sent: someone else
                # spoke for it.  Its events stay in the spool, where they are not lost.
                raise protocol.ProtocolError(f"the daemon acknowledged seq {last_seq}, beyond the {self._seq} "
                                             "this source sent; keeping the spool")
            self._acked = last_seq
            while self._queue and self._queue[0][0] <= self._acked:
                self._queue.popleft()
            self._spool.discard_through(self._acked)
            self._wake.notify_all()

    def _run(self) -> None:
        sock, self._sock = self._sock, None
        while True:
            with self._lock:
                if self._stopping:
                    break
            try:
                if sock is None:
                    sock = self._connect(_RETRY)
                    log.info("audit: connected to the daemon (source %s)", self.source)
                self._deliver(sock)
            except (OSError, protocol.ProtocolError) as exc:
                if self.connected.is_set():
                    log.warning("audit: daemon connection lost (%s); spooling", exc)
                self.connected.clear()
                if sock is not None:
                    sock.close()
                    sock = None
                with self._lock:
                    if not self._stopping:
                        self._wake.wait(_RETRY)
        if sock is not None:
            sock.close()
        self.connected.clear()

    def _deliver(self, sock: socket.socket) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping and not self._overflowed:
                    self._wake.wait(1.0)
                if len(self._queue) < _BATCH and not self._stopping and not self._urgent:
                    self._wake.wait(_LINGER)
                self._urgent = False
                if self._overflowed:
                    # Some events are only in the spool now: a new hello makes the daemon read it.
                    self._overflowed = False
                    raise ConnectionResetError("queue overflowed")
                if not self._queue:
                    return  # stopping, nothing left
                batch = [line for _, line in itertools.islice(self._queue, protocol.MAX_BATCH)]
            payload = b'{"type":"events","events":[' + b",".join(batch) + b"]}\n"
            sock.sendall(payload)
            reply = protocol.receive(sock)
            if reply.get("type") != "ack" or type(reply.get("last_seq")) is not int:
                raise protocol.ProtocolError(f"daemon refused events: {reply.get('message', reply.get('type'))}")
            self._on_ack(reply["last_seq"])
