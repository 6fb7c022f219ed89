"""A blocking client for the CLI: one request, one reply."""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from wire import daemonsock as protocol
from wire.errors import DaemonError, DaemonUnavailable


def request(home: Path, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    path = protocol.socket_path(home)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonUnavailable(f"the audit daemon is not running (no listener at {path}); start it with `umbrafs daemon start`") from None
        sock.sendall(protocol.encode(message))
        reply = protocol.receive(sock)
    except socket.timeout:
        raise DaemonUnavailable(f"the audit daemon did not answer within {timeout:.0f}s") from None
    except ConnectionResetError:
        raise DaemonUnavailable("the audit daemon closed the connection") from None
    finally:
        sock.close()
    if reply["type"] == "error":
        raise DaemonError(f"the audit daemon refused: {reply.get('message', '?')}")
    return reply
