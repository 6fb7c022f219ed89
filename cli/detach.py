"""Long-lived children (a mount, the daemon): start detached, wait until ready, wait for exit.

The child gets the passphrase through a pipe (never argv or its environment) and
reports on a second pipe: "ok" once it serves, or "err <exit code> <message>".
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click

from wire import clock
from wire.procfs import pid_alive

_SECRET_ENV = ("UMBRAFS_PASSPHRASE", "UMBRAFS_NEW_PASSPHRASE")


def spawn(args: list[str], secret: bytes | None, log_path: Path, what: str) -> None:
    """Run ``python -m cli ARGS --ready-fd N [--passphrase-fd M]`` detached; exit as it reports."""
    fds: list[int] = []
    cmd = [sys.executable, "-m", "cli", *args]
    if clock.clock_file() is not None:  # the child keeps the parent's simulated clock
        cmd[3:3] = ["--clock-file", clock.clock_file()]
    if secret is not None:
        pw_r, pw_w = os.pipe()
        os.write(pw_w, secret)
        os.close(pw_w)
        cmd += ["--passphrase-fd", str(pw_r)]
        fds.append(pw_r)
    ready_r, ready_w = os.pipe()
    cmd += ["--ready-fd", str(ready_w)]
    fds.append(ready_w)
    child_env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(
            cmd, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True, cwd="/", env=child_env,
        )
    for fd in fds:
        os.close(fd)
    with os.fdopen(ready_r, "rb") as ready:
        message = ready.read().decode("utf-8", "replace").strip()
    if message == "ok":
        return
    if message.startswith("err "):
        _, code, text = message.split(" ", 2)
        click.echo(f"umbrafs: {text}", err=True)
        sys.exit(int(code))
    child.wait(timeout=10)
    raise click.ClickException(f"the {what} process exited ({child.returncode}); see {log_path}")


def report(ready_fd: int | None, message: str) -> None:
    """The child's side: say "ok" or "err CODE TEXT" once, then close the pipe."""
    if ready_fd is not None:
        try:
            os.write(ready_fd, message.encode("utf-8", "replace") + b"\n")
            os.close(ready_fd)
        except OSError:
            pass


def exited(pid: int) -> bool:
    return not pid_alive(pid)


def wait_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exited(pid):
            return True
        time.sleep(0.02)
    return False
