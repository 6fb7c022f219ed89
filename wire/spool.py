"""The spool: where a mount writes every event before it reaches the daemon.

Layout under the state directory: ``spool/<source>/<first seq, 16 digits>.jsonl``
segments of canonical event lines, plus ``lock``, which the producing process
holds (flock) for as long as it lives.  The mount appends each event with one
``write(2)`` before answering the request, so a ``kill -9`` of the mount loses
nothing it has acknowledged; the daemon reads the segments when a source says
hello (and, for sources whose lock is free, at start-up), and the producer
deletes segments once the daemon has stored everything in them.

Reads tolerate a torn last line (the producer may be writing it) and skip, with
a count, lines that do not parse: a damaged spool must not stop the ledger.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ledger.events import Event, EventError, decode

log = logging.getLogger(__name__)

SEGMENT_BYTES = 4 << 20
_SEGMENT = re.compile(r"^(\d{16})\.jsonl$")
_SOURCE = re.compile(r"^[0-9a-f]{16}$")


def _segments(source_dir: Path) -> list[tuple[int, Path]]:
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(source_dir):
            m = _SEGMENT.match(entry.name)
            if m:
                found.append((int(m.group(1)), Path(entry.path)))
    return sorted(found)


class SpoolWriter:
    """Append-only event spool of one source (a mount); not thread-safe by itself."""

    def __init__(self, spool_dir: Path, source: str) -> None:
        if not _SOURCE.match(source):
            raise ValueError("source must be 16 hex digits")
        self.dir = spool_dir / source
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Held until the process dies: tells the daemon this spool still has a writer.
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._fd = -1
        self._segment_bytes = 0
        self._segment_first = 0
        self._last_written = 0

    def append(self, seq: int, line: bytes) -> None:
        """Write one encoded event (without newline) whose seq is ``seq``."""
        if self._fd < 0 or self._segment_bytes >= SEGMENT_BYTES:
            self._rotate(seq)
        data = line + b"\n"
        os.write(self._fd, data)
        self._segment_bytes += len(data)
        self._last_written = seq

    def _rotate(self, first_seq: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        path = self.dir / f"{first_seq:016d}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._segment_bytes = os.fstat(self._fd).st_size
        self._segment_first = first_seq

    def discard_through(self, seq: int) -> None:
        """Delete the segments whose events are all stored (seq ≤ ``seq``)."""
        segments = _segments(self.dir)
        for (first, path), (nxt, _) in zip(segments, segments[1:]):
            if nxt - 1 <= seq:
                path.unlink()
        if self._fd >= 0 and self._last_written <= seq:
            os.close(self._fd)
            self._fd = -1
            (self.dir / f"{self._segment_first:016d}.jsonl").unlink(missing_ok=True)

    def close(self, remove: bool = False) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if remove and not _segments(self.dir):
            with contextlib.suppress(OSError):
                (self.dir / "lock").unlink()
                self.dir.rmdir()
        os.close(self._lock_fd)


@dataclass
class SpoolRead:
    events: list[Event] = field(default_factory=list)
    bad_lines: int = 0


def read_source(spool_dir: Path, source: str, after_seq: int = 0) -> SpoolRead:
    """Every spooled event of ``source`` with seq > after_seq, in seq order."""
    result = SpoolRead()
    for _, path in _segments(spool_dir / source):
        with open(path, "rb") as f:
            data = f.read()
        end = data.rfind(b"\n")
        for line in data[: end + 1].split(b"\n")[:-1]:
            try:
                event = decode(line)
            except EventError:
                result.bad_lines += 1
                continue
            if event.source != source:
                result.bad_lines += 1
            elif event.seq > after_seq:
                result.events.append(event)
    result.events.sort(key=lambda e: e.seq)
    return result


def is_source(name: str) -> bool:
    return bool(_SOURCE.match(name))


def sources(spool_dir: Path) -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return sorted(e.name for e in os.scandir(spool_dir) if _SOURCE.match(e.name) and e.is_dir())
    return []


def writer_alive(spool_dir: Path, source: str) -> bool:
    """Whether the producing process still holds the source's lock."""
    try:
        fd = os.open(spool_dir / source / "lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def remove_source(spool_dir: Path, source: str) -> None:
    """Drop a dead source's spool once everything in it is stored."""
    shutil.rmtree(spool_dir / source, ignore_errors=True)
