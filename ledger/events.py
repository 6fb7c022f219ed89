"""The one event schema every umbrafs process writes and reads (pure: no I/O).

An event is produced by a *source* (one mount session, the CLI, the proxy) and
numbered by that source with a gap-free ``seq`` starting at 1: the pair
(source, seq) is what makes delivery exactly-once, because a receiver that has
stored (s, n) drops any later copy of it.  ``encode`` gives the canonical
bytes that the ledger hashes: JSON with sorted keys, no spaces, ASCII only
(non-UTF-8 path bytes survive as ``\\udcXX`` escapes of ``os.fsdecode``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

SCHEMA = 1

# One access session: open … release of one file handle, with byte and call counts.
ACCESS_OPS = frozenset({"access", "open", "progress"})  # a session; a refused open; a long session so far
# Namespace changes, one event per successful or refused request.
NAMESPACE_OPS = frozenset({"create", "mknod", "mkdir", "unlink", "rmdir", "rename", "setattr", "symlink", "link"})
# Key and lifecycle events.
KEY_OPS = frozenset({
    "unlock", "mount", "unmount", "share", "reencrypt", "revoke", "integrity",
    "anomaly", "lock", "unlock-mount", "daemon-start", "daemon-stop", "spool-gap",
    "ack", "policy",  # an anomaly reviewed; a response policy the daemon took up
})
OPS = ACCESS_OPS | NAMESPACE_OPS | KEY_OPS

_SOURCE = re.compile(r"^[0-9a-f]{16}$")
_MAX_TEXT = 16384  # a path is at most PATH_MAX; anything longer is not one of ours


class EventError(ValueError):
    """A record that is not a valid event (wrong type, unknown op, out-of-range field)."""


# Not frozen: a frozen dataclass spends ~6 µs of its __init__ on object.__setattr__, and
# the daemon builds one per stored event.  Treat events as immutable all the same.
@dataclass(slots=True)
class Event:
    source: str          # 16 hex digits, random per producing session
    seq: int             # 1, 2, 3 … per source, no gaps
    time_ns: int         # wall clock, ns since the epoch
    op: str              # one of OPS
    uid: int = 0
    pid: int = 0
    comm: str = ""       # process name (/proc/<pid>/comm) of the caller
    vault: str = ""      # vault id (hex) the event belongs to
    file_id: str = ""    # hex id of the file or directory (header id), "" if none
    path: str = ""       # plaintext path inside the vault (owner's machine only)
    path2: str = ""      # rename/link destination
    result: str = "ok"   # "ok" or an errno name such as "EACCES"
    bytes_read: int = 0
    bytes_written: int = 0
    reads: int = 0       # read requests in an access session
    writes: int = 0      # write requests in an access session
    opened_ns: int = 0   # access sessions: when the handle was opened
    detail: Mapping[str, Any] = field(default_factory=dict)  # op-specific, flat str → str|int|bool

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in _FIELD_ORDER}
        d["detail"] = dict(self.detail)
        d["v"] = SCHEMA
        return d


# One encoder for all calls: json.dumps with options builds a new one each time.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
_FIELD_ORDER = tuple(f.name for f in fields(Event))
_escape = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # what ensure_ascii=True uses
_INT_FIELDS = ("seq", "time_ns", "uid", "pid", "bytes_read", "bytes_written", "reads", "writes", "opened_ns")
_STR_FIELDS = ("source", "op", "comm", "vault", "file_id", "path", "path2", "result")
_NAMES = {f.name for f in fields(Event)} | {"v"}


def encode(event: Event) -> bytes:
    """Canonical bytes of an event: what the chain and the Merkle tree hash.

    JSON with sorted keys, no spaces, ASCII only — exactly
    ``json.dumps(event.to_dict(), sort_keys=True, separators=(",", ":"))`` (tested).
    """
    e = event
    return encode_fields(
        e.source, e.seq, e.time_ns, e.op, uid=e.uid, pid=e.pid, comm=e.comm, vault=e.vault, file_id=e.file_id,
        path=e.path, path2=e.path2, result=e.result, bytes_read=e.bytes_read, bytes_written=e.bytes_written,
        reads=e.reads, writes=e.writes, opened_ns=e.opened_ns, detail=e.detail,
    )


def encode_fields(
    source: str, seq: int, time_ns: int, op: str, *, uid: int = 0, pid: int = 0, comm: str = "", vault: str = "",
    file_id: str = "", path: str = "", path2: str = "", result: str = "ok", bytes_read: int = 0,
    bytes_written: int = 0, reads: int = 0, writes: int = 0, opened_ns: int = 0, detail: Mapping[str, Any] | None = None,
) -> bytes:
    """``encode(Event(source, seq, time_ns, op, ...))`` without building the Event.

    The mount calls this on every FUSE request that changes something, so it
    formats the canonical JSON by hand (keys in sorted order, 3x faster than
    json.dumps); a hypothesis test holds it equal to the json.dumps form.
    """
    s = _escape
    return (
        f'{{"bytes_read":{int(bytes_read)},"bytes_written":{int(bytes_written)},"comm":{s(comm)},'
        f'"detail":{_CANONICAL.encode(dict(detail)) if detail else "{}"},"file_id":{s(file_id)},"op":{s(op)},'
        f'"opened_ns":{int(opened_ns)},"path":{s(path)},"path2":{s(path2)},"pid":{int(pid)},"reads":{int(reads)},'
        f'"result":{s(result)},"seq":{int(seq)},"source":{s(source)},"time_ns":{int(time_ns)},"uid":{int(uid)},'
        f'"v":{SCHEMA},"vault":{s(vault)},"writes":{int(writes)}}}'
    ).encode("ascii")


def from_dict(d: Mapping[str, Any]) -> Event:
    """Validate an untrusted mapping (spool line, socket message) into an Event."""
    if not isinstance(d, dict):
        raise EventError("event is not an object")
    unknown = set(d) - _NAMES
    if unknown:
        raise EventError(f"unknown event fields: {sorted(unknown)}")
    if d.get("v", SCHEMA) != SCHEMA:
        raise EventError(f"unsupported event schema {d.get('v')!r}")
    for name in _INT_FIELDS:
        value = d.get(name, 0)
        if type(value) is not int or not 0 <= value < 1 << 63:
            raise EventError(f"event field {name} must be a non-negative integer")
    for name in _STR_FIELDS:
        value = d.get(name, "")
        if type(value) is not str or len(value) > _MAX_TEXT:
            raise EventError(f"event field {name} must be a string")
    if not _SOURCE.match(d.get("source", "")):
        raise EventError("event source must be 16 hex digits")
    if d.get("seq", 0) < 1:
        raise EventError("event seq starts at 1")
    if d.get("op") not in OPS:
        raise EventError(f"unknown event op {d.get('op')!r}")
    detail = d.get("detail", {})
    if not isinstance(detail, dict) or not all(
        isinstance(k, str) and type(v) in (str, int, bool) for k, v in detail.items()
    ):
        raise EventError("event detail must be a flat object of strings, integers and booleans")
    return Event(**{k: v for k, v in d.items() if k != "v"} | {"detail": dict(detail)})


def decode(data: bytes) -> Event:
    """Parse one encoded event (canonical or not) from untrusted bytes."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventError(f"event is not JSON: {exc}") from None
    return from_dict(obj)
