"""Attacks by whoever can write the backing directory (a sync peer, the cloud, a share
recipient): each test plants what the security review describes (../shared/SECURITY-REVIEW.md,
finding number in the test's docstring), then lets the owner use the vault as usual through
the real CLI and a real mount, and shows the attack fails and loses nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from fs.format import layout as fmt
from tests.conftest import Env, Mount, force_unmount

LONG = "n" * 200  # encrypted, longer than LONGNAME_MAX: stored as ~<hash> plus a sidecar


def _offline(mounted: Mount, plant) -> None:  # type: ignore[no-untyped-def]
    """Unmount, let the attacker change the backing dir, mount again (the same Mount object,
    so the fixture still unmounts it)."""
    mounted.unmount()
    plant()
    again = mounted.env.mount(mounted.vault, mounted.path)
    mounted.pid = again.pid


def _timed(*cmd: str | Path, timeout: float = 10) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    result = subprocess.run([*map(str, cmd)], capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - start


def _sidecars(directory: Path, suffix: str) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(fmt.LONGNAME_PREFIX) and p.name.endswith(suffix)]


def test_passwd_does_not_follow_a_planted_temp_file_symlink(env: Env, vault: Path) -> None:
    """Finding 8: `vault.json.tmp` planted as a symlink made `passwd` overwrite its target."""
    precious = env.tmp / "precious.txt"
    precious.write_text("keep me\n")
    (vault / "vault.json.tmp").symlink_to(precious)
    (vault / ".vault.json.tmp").symlink_to(precious)
    new = env.tmp / "new-passphrase"
    new.write_text("a new passphrase\n")
    env.run("passwd", vault, "--passphrase-file", env.passfile, "--new-passphrase-file", new, check=True)
    assert precious.read_text() == "keep me\n"
    assert not (vault / fmt.VAULT_CONFIG_NAME).is_symlink()
    assert json.loads((vault / fmt.VAULT_CONFIG_NAME).read_text())["format"] == "umbrafs-vault"
    assert sorted(p.name for p in vault.iterdir() if p.name.startswith(".vault.json.")) == [".vault.json.tmp"]
    mountpoint = env.tmp / "mnt"
    mountpoint.mkdir()
    env.run("mount", vault, mountpoint, "--passphrase-file", new, check=True)
    env.run("unmount", mountpoint, check=True)


def test_a_fifo_for_vault_json_is_refused_at_once(env: Env, vault: Path) -> None:
    """Finding 9, for the config: opening a FIFO for reading waits for a writer forever."""
    (vault / fmt.VAULT_CONFIG_NAME).unlink()
    os.mkfifo(vault / fmt.VAULT_CONFIG_NAME)
    mountpoint = env.tmp / "mnt"
    mountpoint.mkdir()
    start = time.monotonic()
    result = env.run("mount", vault, mountpoint, "--passphrase-file", env.passfile, timeout=20)
    assert time.monotonic() - start < 10
    assert result.returncode != 0 and "not a regular file" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_swapped_owner_public_key_is_refused(env: Env, vault: Path) -> None:
    """Finding 12: the clear public key names the vault in every audit event, anchor and
    policy lookup; a storage attacker could swap it for another key's."""
    import umbral_pre

    config = json.loads((vault / fmt.VAULT_CONFIG_NAME).read_text())
    config["owner"]["public_key"] = umbral_pre.SecretKey.random().public_key().to_compressed_bytes().hex()
    (vault / fmt.VAULT_CONFIG_NAME).write_text(json.dumps(config))
    mountpoint = env.tmp / "mnt"
    mountpoint.mkdir()
    result = env.run("mount", vault, mountpoint, "--passphrase-file", env.passfile)
    if result.returncode == 0:
        force_unmount(mountpoint, int(env.mount_record(mountpoint)["pid"]))
    assert result.returncode == 16, (result.returncode, result.stderr)  # DAMAGE (docs/operations.md#exit-codes)
    assert "owner public key" in result.stderr and "altered" in result.stderr


def test_fifos_planted_for_sidecars_and_headers_do_not_hang_the_mount(mounted: Mount) -> None:
    """Finding 9: a FIFO where a long-name sidecar, a long-symlink sidecar or a directory
    header belongs hung `ls` (and, on the one trio loop, the whole mount) for 27 minutes."""
    m = mounted.path
    (m / "a").mkdir()
    (m / "a" / LONG).write_text("long name\n")
    (m / "a" / "short").write_text("short name\n")
    os.symlink("t" * 4000, m / "a" / "longlink")
    (m / "b").mkdir()
    (m / "b" / "inside").write_text("x\n")
    (m / "c").mkdir()
    (m / "c" / "fine").write_text("still fine\n")

    def plant() -> None:
        dirs = [p for p in mounted.vault.iterdir() if p.is_dir() and not p.name.startswith(".")]
        a = next(d for d in dirs if _sidecars(d, fmt.LONGNAME_SUFFIX))
        for sidecar in _sidecars(a, fmt.LONGNAME_SUFFIX) + _sidecars(a, fmt.LONGLINK_SUFFIX):
            sidecar.unlink()
            os.mkfifo(sidecar)
        b = next(d for d in dirs if d != a and len(list(d.iterdir())) == 2)  # header + one entry
        (b / fmt.DIR_HEADER_NAME).unlink()
        os.mkfifo(b / fmt.DIR_HEADER_NAME)

    _offline(mounted, plant)
    listing, took = _timed("ls", m / "a")
    assert took < 5, took
    assert listing.stdout.split() == ["longlink", "short"], listing  # the long name is dropped, and logged
    result, took = _timed("readlink", m / "a" / "longlink")
    assert took < 5 and result.returncode != 0
    broken = [d for d in ("b", "c") if _timed("ls", m / d)[0].returncode != 0]
    assert len(broken) == 1  # the one whose header is a FIFO: EIO, at once
    assert (m / "a" / "short").read_text() == "short name\n"
    assert sorted(os.listdir(m)) == ["a", "b", "c"]
    assert "not a regular file" in mounted.log()


def test_policy_set_does_not_follow_planted_temp_symlinks(env: Env, vault: Path) -> None:
    """Finding 8, the policy: its temp name was the pid's, so symlinks planted for the next
    few hundred pids made `policy set` overwrite the file they point to."""
    precious = env.tmp / "precious.txt"
    precious.write_text("keep me\n")
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    for pid in range(last + 1, last + 400):
        (vault / f".umbrafs.policy.json.{pid}.tmp").symlink_to(precious)
    env.run("policy", "set", vault, "--on-anomaly", "lock", "--passphrase-file", env.passfile, check=True)
    assert precious.read_text() == "keep me\n"
    shown = env.run("policy", "show", vault, check=True)
    assert "on anomaly lock" in shown.stdout


def test_a_fifo_for_the_policy_file_is_refused_at_once(env: Env, vault: Path) -> None:
    """Finding 9, the policy: the daemon and `policy show` read it; a FIFO waited for a writer."""
    os.mkfifo(vault / ".umbrafs.policy.json")
    start = time.monotonic()
    result = env.run("policy", "show", vault, timeout=20)
    assert time.monotonic() - start < 10
    assert result.returncode == 22 and "not a regular file" in result.stderr, result  # POLICY_INVALID
