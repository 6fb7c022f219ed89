"""The daemon's wire protocol: one JSON object per line over a unix socket.

Requests and their replies::

    {"type": "hello", "source": S}            → {"type": "welcome", "last_seq": N}
        the daemon first stores whatever S has spooled, then says how far it has S
    {"type": "events", "events": [event…]}    → {"type": "ack", "last_seq": N}
    {"type": "status"}                        → {"type": "status", …}
    {"type": "checkpoint"}                    → {"type": "checkpoint", "size": N, "root": hex}
    {"type": "train"}                         → {"type": "trained", "users": {user: {…}}, "fit_ms": N}
        refit every user's anomaly baseline now (docs/anomaly.md)
    {"type": "stop"}                          → {"type": "stopping"}
    anything else                             → {"type": "error", "message": …}

The socket lives in the per-person state directory (mode 0700) and the daemon
also checks the peer's uid, so only its owner can talk to it.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

MAX_LINE = 8 << 20  # a batch of events; anything bigger is refused
MAX_BATCH = 5000
SOCKET_NAME = "daemon.sock"
PIDFILE_NAME = "daemon.pid"


class ProtocolError(ValueError):
    """A message that is not valid JSON, not an object, or of an unknown type."""


def socket_path(home: Path) -> Path:
    return home / SOCKET_NAME


def pidfile_path(home: Path) -> Path:
    return home / PIDFILE_NAME


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


def receive(sock: socket.socket) -> dict[str, Any]:
    """Read one reply line from a blocking socket (a reply never shares a read with another)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the daemon closed the connection")
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ProtocolError("reply too long")
    return decode(buf)


def decode(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_LINE:
        raise ProtocolError("message too long")
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("message is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("message is not an object with a type")
    return message
