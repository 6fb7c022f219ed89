"""Fixtures for the audit daemon: an identity, a running daemon, a mount that reports to it."""
from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.paths import ledger_path, running_pid
from ledger import store
from ledger.events import Event
from proxy import keyring as identity_mod
from tests.conftest import PASSPHRASE, Env, new_env, process_gone

FAST_IDENTITY_KDF = identity_mod.KdfParams(memory_kib=1024, iterations=1, lanes=1)


@dataclass
class Daemon:
    env: Env

    def start(self) -> int:
        self.env.run("daemon", "start", "--passphrase-file", self.env.passfile, check=True)
        pid = running_pid(self.env.home)
        assert pid is not None
        return pid

    @property
    def pid(self) -> int | None:
        return running_pid(self.env.home)

    def stop(self) -> None:
        self.env.run("daemon", "stop", check=True)

    def kill9(self) -> None:
        pid = self.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: process_gone(pid), "daemon to die")

    def events(self) -> list[tuple[int, Event]]:
        conn = store.open_readonly(ledger_path(self.env.home))
        try:
            return list(store.entries(conn))
        finally:
            conn.close()


def wait_for(condition, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stop_daemon(env: Env) -> None:
    pid = running_pid(env.home)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while not process_gone(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)


@pytest.fixture
def aenv(tmp_path: Path) -> Iterator[Env]:
    """An environment with one identity (alice) whose daemon is stopped at the end."""
    env = new_env(tmp_path)
    identity_mod.create(env.home, "alice", PASSPHRASE.encode(), FAST_IDENTITY_KDF)
    try:
        yield env
    finally:
        stop_daemon(env)


@pytest.fixture
def daemon(aenv: Env) -> Daemon:
    d = Daemon(aenv)
    d.start()
    return d
