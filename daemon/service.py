"""The audit daemon: one asyncio process per person that owns the ledger.

It listens on ``<home>/daemon.sock`` for mounts (and the CLI), stores their
events in the ledger in arrival order, and drains spools: a source's spool when
it says hello, and every few seconds the spools whose producer has died
(their lock is free), which are then removed.  Sources are numbered gap-free,
so a gap between what the ledger has and what arrives means events are still
in the spool: they are read first, and a gap nothing fills is itself recorded
(``spool-gap``) rather than hidden.

Every client runs as the same user, and malware runs as the user too, so a client is not
trusted to say whose events it sends (security review, finding 4): a source belongs to the
process that first said hello with it, or to the pid of the live mount record that names it,
and only that process may send its events; a jump in seq is taken only within what a lost
spool could explain; the daemon's own operations are never accepted from a client.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.events import Event, EventError, from_dict
from ledger.checkpoint import key_id_of
from ledger.errors import LedgerError
from ledger.store import Ledger

from wire import daemonsock as protocol, spool
from wire.clock import now_ns
from daemon.paths import (
    anchor_path,
    ledger_path,
    running_pid,
    save_vault_anchors,
    saved_vault_anchors,
    vault_anchor_path,
)
from wire.errors import DaemonError
from wire.mountsock import find_by_source
from wire.procfs import peer_credentials, pid_alive

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 2.0
NICENESS = 10
DAEMON_OPS = frozenset({"anomaly", "daemon-start", "daemon-stop", "spool-gap"})  # only the daemon writes these
MAX_GAP = 1 << 20  # events a mount could have lost from its spool; a larger jump would silence a source


class Daemon:
    def __init__(self, home: Path, ledger: Ledger, key_id: str, guard: Any | None = None) -> None:
        self.home = home
        self.ledger = ledger
        self.key_id = key_id
        self.spool_dir = home / "spool"
        self.source = secrets.token_hex(8)
        self._seq = 0
        self._append_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._connected: dict[str, tuple[int, object]] = {}  # source → (peer pid, connection) sending its events
        self.started = time.time()
        from daemon.anomaly.detector import Detector  # numpy and the model load with the daemon, not with its clients

        self.detector = Detector(home, self.source, self._record, guard)

    # -- storing --------------------------------------------------------------

    def own_event(self, op: str, **fields: Any) -> Event:
        self._seq += 1
        return Event(self.source, self._seq, now_ns(), op, pid=os.getpid(), comm="umbrafs-daemon", **fields)

    async def _record(self, vault: str, detail: dict[str, Any]) -> None:
        """Store one of the detector's decisions (an `anomaly` event)."""
        async with self._append_lock:
            await self._append([self.own_event("anomaly", vault=vault, detail=detail)])

    async def store(self, source: str, events: Sequence[Event], arrived_ns: int | None = None) -> int:
        """Append events of one source in seq order, filling gaps from its spool first."""
        async with self._append_lock:
            last = await self.ledger.last_seq(source)
            fresh = [e for e in events if e.seq > last]
            if fresh and fresh[0].seq != last + 1:
                await self._ingest_locked(source, last)
                last = await self.ledger.last_seq(source)
                fresh = [e for e in fresh if e.seq > last]
            if fresh and fresh[0].seq - last > MAX_GAP:
                raise protocol.ProtocolError(f"events of {source} jump from seq {last} to {fresh[0].seq}: refused")
            if fresh and fresh[0].seq != last + 1:
                gap = self.own_event("spool-gap", detail={"source": source, "expected": last + 1, "got": fresh[0].seq})
                log.warning("events %d..%d of source %s are lost", last + 1, fresh[0].seq - 1, source)
                await self.ledger.append([gap])
            if fresh:
                await self._append(fresh, arrived_ns)
            return await self.ledger.last_seq(source)

    async def _append(self, events: Sequence[Event], arrived_ns: int | None = None) -> None:
        await self.ledger.append(events)
        self.detector.observe(events, arrived_ns)  # cheap: scoring is batched, actions run as tasks
        for event in events:
            if event.op == "mount" and event.result == "ok" and event.path2:
                await self._anchor_vault(Path(event.path2))

    async def _anchor_vault(self, vault: Path) -> None:
        """Keep a copy of the checkpoints in each vault this ledger records (see paths.vault_anchor_path)."""
        if not (vault / "vault.json").is_file():
            return
        anchor = vault_anchor_path(vault, self.home, self.key_id)
        known = saved_vault_anchors(self.home)
        if anchor in known:
            return
        try:
            await self.ledger.add_anchor(anchor)
        except LedgerError as exc:
            log.error("not anchoring in %s: %s", vault, exc)
            return
        save_vault_anchors(self.home, [*known, anchor])

    async def ingest(self, source: str) -> int:
        async with self._append_lock:
            return await self._ingest_locked(source, await self.ledger.last_seq(source))

    async def _ingest_locked(self, source: str, last: int) -> int:
        read = await asyncio.to_thread(spool.read_source, self.spool_dir, source, last)
        if read.bad_lines:
            log.warning("spool of %s: %d unreadable line(s) skipped", source, read.bad_lines)
        for start in range(0, len(read.events), protocol.MAX_BATCH):
            await self._append(read.events[start : start + protocol.MAX_BATCH])
        return len(read.events)

    async def sweep(self) -> None:
        """Store and remove the spools of producers that are gone."""
        for source in spool.sources(self.spool_dir):
            if source in self._connected or spool.writer_alive(self.spool_dir, source):
                continue
            stored = await self.ingest(source)
            if stored:
                log.info("drained %d spooled event(s) of %s", stored, source)
            spool.remove_source(self.spool_dir, source)

    # -- serving --------------------------------------------------------------

    async def serve(self, ready: Callable[[], None] = lambda: None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._stop.set)
        await self.ledger.append([self.own_event("daemon-start")])
        for path, why in self.ledger.bad_anchors:  # replaced by someone who can write the vault
            await self.ledger.append([self.own_event("integrity", path=str(path), detail={"anchor": why})])
        await self.detector.start(await self.ledger.size())  # baselines from the history, in the background
        await self.sweep()
        await self.ledger.checkpoint()  # the anchor exists from the first start on
        path = protocol.socket_path(self.home)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._client, path=str(path), limit=protocol.MAX_LINE)
        finally:
            os.umask(old_umask)
        sweeper = asyncio.create_task(self._sweep_forever())
        log.info("daemon listening on %s", path)
        ready()
        try:
            await self._stop.wait()
        finally:
            sweeper.cancel()
            server.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            await server.wait_closed()
            await self.sweep()
            await self.detector.close()
            await self.ledger.append([self.own_event("daemon-stop")])

    def stop(self) -> None:
        self._stop.set()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep()
            except Exception:
                log.exception("spool sweep failed")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source: str | None = None
        peer_pid = 0
        try:
            peer_pid, peer_uid = _peer(writer)
            if peer_uid not in (os.getuid(), 0):
                log.warning("refused a connection from uid %d", peer_uid)
                return
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    await _send(writer, {"type": "error", "message": "message too long"})
                    return
                if not line:
                    return
                try:
                    message = protocol.decode(line)
                    reply, source = await self._handle(message, source, peer_pid, writer)
                except (protocol.ProtocolError, EventError, DaemonError) as exc:
                    reply = {"type": "error", "message": str(exc)}
                await _send(writer, reply)
                if reply["type"] == "stopping":
                    self._stop.set()
        except (ConnectionError, OSError) as exc:
            log.info("client went away: %s", exc)
        finally:
            if source is not None and self._connected.get(source) == (peer_pid, writer):
                self._connected.pop(source, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, message: dict[str, Any], source: str | None, peer_pid: int,
                      conn: object = None) -> tuple[dict[str, Any], str | None]:
        kind = message["type"]
        if kind == "hello":
            new = message.get("source")
            if not isinstance(new, str) or not spool.is_source(new):
                raise protocol.ProtocolError("hello needs a source of 16 hex digits")
            self._bind(new, peer_pid, conn)
            await self.ingest(new)
            return {"type": "welcome", "last_seq": await self.ledger.last_seq(new)}, new
        if kind == "events":
            arrived = time.monotonic_ns()  # response times are measured from here
            if source is None:
                raise protocol.ProtocolError("say hello first")
            if self._connected.get(source, (0, None))[0] != peer_pid:
                raise protocol.ProtocolError(f"source {source} is now another process's")
            raw = message.get("events")
            if not isinstance(raw, list) or len(raw) > protocol.MAX_BATCH:
                raise protocol.ProtocolError(f"events must be a list of at most {protocol.MAX_BATCH}")
            events = [from_dict(item) for item in raw]
            if any(e.source != source for e in events):
                raise protocol.ProtocolError("events of another source")
            if any(e.op in DAEMON_OPS for e in events):
                raise protocol.ProtocolError("events only the daemon records")
            events.sort(key=lambda e: e.seq)
            return {"type": "ack", "last_seq": await self.store(source, events, arrived)}, source
        if kind == "status":
            return {
                "type": "status", "pid": os.getpid(), "started": self.started, "entries": await self.ledger.size(),
                "sources": sorted(self._connected), "spooled_sources": spool.sources(self.spool_dir),
                "ledger": str(ledger_path(self.home)), "detector": self.detector.status(),
            }, source
        if kind == "train":
            return {"type": "trained", **await self.detector.train()}, source
        if kind == "checkpoint":
            cp = await self.ledger.checkpoint()
            return {"type": "checkpoint", "size": cp.size, "root": cp.root.hex()}, source
        if kind == "stop":
            return {"type": "stopping"}, source
        raise protocol.ProtocolError(f"unknown message type {kind!r}")


    def _bind(self, source: str, peer_pid: int, conn: object) -> None:
        """*source* is *peer_pid*'s: no other live process holds it, and no live mount record
        names it for another pid.  Else refused: a same-uid process saying hello as a mount's
        source could otherwise inject events in its name and, jumping its seq, silence it."""
        holder = self._connected.get(source, (None, None))[0]
        if holder not in (None, peer_pid) and pid_alive(holder):
            log.warning("refused pid %d saying hello as source %s of pid %d", peer_pid, source, holder)
            raise protocol.ProtocolError(f"source {source} is in use by pid {holder}")
        record = find_by_source(self.home, source)
        if record is not None and record.pid != peer_pid:
            log.warning("refused pid %d saying hello as source %s of mount pid %d", peer_pid, source, record.pid)
            raise protocol.ProtocolError(f"source {source} belongs to the mount of pid {record.pid}")
        self._connected[source] = (peer_pid, conn)


def _peer(writer: asyncio.StreamWriter) -> tuple[int, int]:
    return peer_credentials(writer.get_extra_info("socket"))


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(protocol.encode(message))
    await writer.drain()


async def run(home: Path, signer: Ed25519PrivateKey, ready: Callable[[], None] = lambda: None,
              guard: Any | None = None) -> None:
    """Open the ledger, serve until stopped, close (with a final checkpoint)."""
    pidfile = protocol.pidfile_path(home)
    # Storing an event costs the daemon more CPU than emitting it costs the mount; on a
    # busy machine the work people are doing comes first and the daemon catches up
    # when it is idle (nothing is lost meanwhile: events wait in the socket and spool).
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    if running_pid(home) not in (None, os.getpid()):
        raise DaemonError(f"a daemon is already running (pid {running_pid(home)})")
    pidfile.write_text(f"{os.getpid()}\n")
    try:
        ledger = await Ledger.open(ledger_path(home), signer, anchors=[anchor_path(home)],
                                   loose_anchors=saved_vault_anchors(home))
        try:
            await Daemon(home, ledger, key_id_of(signer.public_key()), guard).serve(ready)
        finally:
            await ledger.close()
    finally:
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
