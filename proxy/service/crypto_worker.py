"""Re-encryption in helper processes, so that one proxy can use more than one core.

`umbral_pre.reencrypt` holds the GIL (~0.3-0.5 ms per capsule), so threads do not help; the
event loop's process keeps HTTP, signatures, roles and the database, and hands the pure
function (capsule bytes, verified kfrag bytes) -> cfrag bytes to worker processes over pipes.
No state is shared: a worker knows nothing of grants, users or revocations, and every check
(signature, nonce, role, revocation, the record) stays in the main process, before and after.

Wire format, both directions, little-endian: a job is
``id:u32  len(capsule):u16  capsule  len(kfrag):u16  kfrag``; an answer is
``id:u32  status:u8 (0 ok, 1 bad capsule, 2 error)  len:u16  cfrag``.  Jobs queued during one
turn of the event loop go out in one write, answers come back in one write per batch read.

Run as ``python -m proxy.service.crypto_worker`` (stdin: jobs, stdout: answers).
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
import subprocess
import sys
from collections import OrderedDict

import umbral_pre

log = logging.getLogger(__name__)

_JOB = struct.Struct("<IH")
_ANSWER = struct.Struct("<IBH")
OK, BAD_CAPSULE, ERROR = 0, 1, 2
_CACHE_MAX = 4096


class WorkerDied(Exception):
    """A worker process exited; the job is retried in the main process."""


class BadCapsule(ValueError):
    """The capsule does not parse (its proof fails)."""


# -- the worker process ----------------------------------------------------------------------

def _lru_get(cache: "OrderedDict[bytes, object]", key: bytes) -> object | None:
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _lru_put(cache: "OrderedDict[bytes, object]", key: bytes, value: object) -> None:
    cache[key] = value
    if len(cache) > _CACHE_MAX:
        cache.popitem(last=False)


def _serve(rfd: int, wfd: int) -> None:
    capsules: OrderedDict[bytes, object] = OrderedDict()
    kfrags: OrderedDict[bytes, object] = OrderedDict()
    buf = b""
    while True:
        data = os.read(rfd, 1 << 16)
        if not data:
            return
        buf += data
        out = []
        while True:
            if len(buf) < _JOB.size:
                break
            job_id, clen = _JOB.unpack_from(buf)
            end_c = _JOB.size + clen
            if len(buf) < end_c + 2:
                break
            (klen,) = struct.unpack_from("<H", buf, end_c)
            end = end_c + 2 + klen
            if len(buf) < end:
                break
            capsule_bytes, kfrag_bytes = buf[_JOB.size:end_c], buf[end_c + 2:end]
            buf = buf[end:]
            try:
                capsule = _lru_get(capsules, capsule_bytes)
                if capsule is None:
                    try:
                        capsule = umbral_pre.Capsule.from_bytes(capsule_bytes)
                    except ValueError:
                        out.append(_ANSWER.pack(job_id, BAD_CAPSULE, 0))
                        continue
                    _lru_put(capsules, capsule_bytes, capsule)
                kfrag = _lru_get(kfrags, kfrag_bytes)
                if kfrag is None:
                    # Verified by the main process before it was stored (proxy.service.server.put_grant).
                    kfrag = umbral_pre.KeyFrag.from_bytes(kfrag_bytes).skip_verification()
                    _lru_put(kfrags, kfrag_bytes, kfrag)
                cfrag = bytes(umbral_pre.reencrypt(capsule, kfrag))  # type: ignore[arg-type]
                out.append(_ANSWER.pack(job_id, OK, len(cfrag)) + cfrag)
            except Exception:  # never let one job end the worker
                out.append(_ANSWER.pack(job_id, ERROR, 0))
        if out:
            payload = b"".join(out)
            view = memoryview(payload)
            while view:
                view = view[os.write(wfd, view):]


# -- the main process's side ------------------------------------------------------------------------

class _Worker:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy.service.crypto_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=None, bufsize=0, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wfd, self.rfd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self.rfd, False)
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.outbox: list[bytes] = []
        self.inbuf = b""
        self.alive = True


class ReencryptPool:
    """N worker processes; `reencrypt` awaits a cfrag, batching the jobs of one loop turn."""

    def __init__(self, workers: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._workers = [_Worker() for _ in range(workers)]
        self._next_id = 0
        self._turn = 0
        self._flush_scheduled = False
        for w in self._workers:
            self._loop.add_reader(w.rfd, self._on_readable, w)

    @property
    def size(self) -> int:
        return sum(1 for w in self._workers if w.alive)

    async def reencrypt(self, capsule: bytes, kfrag: bytes) -> bytes:
        live = [w for w in self._workers if w.alive]
        if not live:
            raise WorkerDied("no worker process left")
        worker = live[self._turn % len(live)]
        self._turn += 1
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        job_id = self._next_id
        future: asyncio.Future[bytes] = self._loop.create_future()
        worker.pending[job_id] = future
        worker.outbox.append(_JOB.pack(job_id, len(capsule)) + capsule + struct.pack("<H", len(kfrag)) + kfrag)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        for w in self._workers:
            if not w.outbox or not w.alive:
                continue
            payload, w.outbox = b"".join(w.outbox), []
            try:
                # Small (< 1 KiB per job) and the worker drains its pipe all the time: a blocking
                # write of a batch far below the pipe's 64 KiB buffer does not stall the loop.
                view = memoryview(payload)
                while view:
                    view = view[os.write(w.wfd, view):]
            except OSError:
                self._lost(w)

    def _on_readable(self, w: _Worker) -> None:
        try:
            data = os.read(w.rfd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost(w)
            return
        buf = w.inbuf + data
        while len(buf) >= _ANSWER.size:
            job_id, status, length = _ANSWER.unpack_from(buf)
            end = _ANSWER.size + length
            if len(buf) < end:
                break
            future = w.pending.pop(job_id, None)
            if future is not None and not future.done():
                if status == OK:
                    future.set_result(buf[_ANSWER.size:end])
                elif status == BAD_CAPSULE:
                    future.set_exception(BadCapsule("capsule is malformed"))
                else:
                    future.set_exception(WorkerDied("the worker could not re-encrypt"))
            buf = buf[end:]
        w.inbuf = buf

    def _lost(self, w: _Worker) -> None:
        if not w.alive:
            return
        w.alive = False
        log.error("re-encryption worker %d exited; %d left", w.proc.pid, self.size)
        self._loop.remove_reader(w.rfd)
        for future in w.pending.values():
            if not future.done():
                future.set_exception(WorkerDied("the worker process exited"))
        w.pending.clear()

    async def close(self) -> None:
        for w in self._workers:
            if w.alive:
                self._loop.remove_reader(w.rfd)
                w.alive = False
            try:
                assert w.proc.stdin is not None
                w.proc.stdin.close()  # EOF: the worker returns
            except OSError:
                pass
        for w in self._workers:
            try:
                await asyncio.wait_for(asyncio.to_thread(w.proc.wait), 5)
            except asyncio.TimeoutError:
                w.proc.kill()
                await asyncio.to_thread(w.proc.wait)
            if w.proc.stdout is not None:
                w.proc.stdout.close()


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process ends it (EOF on stdin)
    _serve(sys.stdin.fileno(), sys.stdout.fileno())
