"""Shared fixtures: a fresh vault, a real FUSE mount through the real CLI.

Every mount is unmounted in teardown (fusermount3 -u, then -uz) and its
process stopped by PID, whatever the test did.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wire.procfs import mounted_paths, pid_alive

PASSPHRASE = "correct horse battery staple"
FAST_KDF = ["--kdf-memory-kib", "1024", "--kdf-iterations", "1", "--kdf-lanes", "1"]
UMBRAFS = [sys.executable, "-m", "cli"]


@dataclass
class Env:
    tmp: Path
    home: Path
    passfile: Path

    def run(self, *args: str | os.PathLike[str], check: bool = False, input: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("UMBRAFS_")}
        full_env.update(env or {})
        result = subprocess.run(
            [*UMBRAFS, "--home", str(self.home), *map(str, args)],
            capture_output=True, text=True, input=input, env=full_env, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"umbrafs {' '.join(map(str, args))} failed ({result.returncode}): {result.stderr}")
        return result

    def init(self, vault: Path) -> Path:
        self.run("init", vault, "--passphrase-file", self.passfile, *FAST_KDF, check=True)
        return vault

    def mount(self, vault: Path, mountpoint: Path, *extra: str) -> "Mount":
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.run("mount", vault, mountpoint, "--passphrase-file", self.passfile, *extra, check=True)
        record = self.mount_record(mountpoint)
        return Mount(self, vault, mountpoint, int(record["pid"]))

    def mount_record(self, mountpoint: Path) -> dict:
        for path in (self.home / "mounts").glob("*.json"):
            record = json.loads(path.read_text())
            if record["mountpoint"] == str(mountpoint.absolute()):
                return record
        raise AssertionError(f"no mount record for {mountpoint}")


@dataclass
class Mount:
    env: Env
    vault: Path
    path: Path
    pid: int

    def unmount(self) -> None:
        self.env.run("unmount", self.path, check=True)

    def remount(self, *extra: str) -> "Mount":
        self.unmount()
        new = self.env.mount(self.vault, self.path, *extra)
        self.pid = new.pid
        return self

    def log(self) -> str:
        logs = list((self.env.home / "logs").glob("mount-*.log"))
        return "\n".join(p.read_text(errors="replace") for p in logs)


def is_mounted(path: Path) -> bool:
    return str(path.absolute()) in mounted_paths()


def force_unmount(path: Path, pid: int | None) -> None:
    if is_mounted(path):
        if subprocess.run(["fusermount3", "-u", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)
    if pid:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process_gone(pid):
                return
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)


def process_gone(pid: int) -> bool:
    """Exited; a zombie counts (the detached mount's parent is init, which may
    reap it only seconds later in a container)."""
    return not pid_alive(pid)


def new_env(tmp: Path) -> Env:
    passfile = tmp / "passphrase"
    passfile.write_text(PASSPHRASE + "\n")
    return Env(tmp, tmp / "home", passfile)


@contextlib.contextmanager
def live_mount(env: Env, vault: Path, mountpoint: Path, *extra: str) -> Iterator[Mount]:
    """Mount through the CLI; always unmount, and fail on a traceback in the mount log."""
    mount = env.mount(vault, mountpoint, *extra)
    try:
        yield mount
    finally:
        force_unmount(mount.path, mount.pid)
        log = mount.log()
        assert "Traceback" not in log and "unexpected error" not in log, log


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return new_env(tmp_path)


@pytest.fixture
def vault(env: Env) -> Path:
    return env.init(env.tmp / "vault")


@pytest.fixture
def mounted(env: Env, vault: Path) -> Iterator[Mount]:
    """A vault mounted through `umbrafs mount`, always unmounted afterwards."""
    with live_mount(env, vault, env.tmp / "mnt") as mount:
        yield mount


@pytest.fixture
def mnt(mounted: Mount) -> Path:
    return mounted.path
