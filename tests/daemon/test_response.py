"""Responses through real parts: a daemon, a FUSE mount reporting to it, the vault's signed policy,
the mount's control socket; `anomalies` and `anomalies ack` through the CLI."""
from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from wire import mountsock as mounts
from daemon import policy as policy_mod
from tests.conftest import Env, is_mounted, live_mount
from tests.daemon.conftest import Daemon, wait_for
from tests.daemon.test_detector import anomalies


def _setup(env: Env, **limits: int) -> Path:
    env.home.mkdir(parents=True, exist_ok=True)
    # Files the test itself just created count as the user's older work (fresh_s 0).
    (env.home / "anomaly.json").write_text(json.dumps({"fresh_s": 0, **limits}))
    Daemon(env).start()
    return env.init(env.tmp / "vault")


def _set_policy(env: Env, where: Path, action: str) -> None:
    out = env.run("policy", "set", where, "--on-anomaly", action, "--passphrase-file", env.passfile, check=True)
    assert action in out.stdout
    shown = json.loads(env.run("policy", "show", where, "--json", check=True).stdout)
    assert shown["on_anomaly"] == action and shown["valid"] and shown["source"] == "file"


def test_lock_policy_stops_ransomware_in_a_real_mount_and_cli_lists_and_acks(aenv: Env) -> None:
    vault = _setup(aenv)
    _set_policy(aenv, vault, "lock")
    with live_mount(aenv, vault, aenv.tmp / "mnt") as m:
        docs = m.path / "docs"
        docs.mkdir()
        for i in range(40):
            (docs / f"f{i}.txt").write_text(f"quarterly report {i}\n" * 400)
        [info] = mounts.list_mounts(aenv.home)
        assert info.source and not mounts.request(info, {"type": "status"})["locked"]
        done = 0
        refused = None
        for i in range(40):  # ~40 files/s: read, overwrite with random bytes in place, rename
            path = docs / f"f{i}.txt"
            try:
                data = path.read_bytes()
                with open(path, "r+b") as f:
                    f.write(os.urandom(len(data)))
                path.rename(docs / f"f{i}.txt.locked")
            except OSError as exc:  # EACCES; EIO when the kernel's write-back of cached pages hit the lock
                refused = exc
                break
            done += 1
            time.sleep(0.025)
        assert refused is not None and refused.errno in (errno.EACCES, errno.EIO), f"never stopped ({done} files encrypted)"
        print(f"ransomware stopped after {done} files")
        assert done <= 12, done
        assert mounts.request(info, {"type": "status"})["locked"]
        wait_for(lambda: anomalies(aenv), "the anomaly event")
        [a] = [a for a in anomalies(aenv) if a["rule"] == "ransomware"]
        assert a["action"] == "lock" and a["action_result"] == "ok" and a["policy"] == "file"
        assert 0 <= a["action_ms"] < 2000

    listed = aenv.run("anomalies", "--json", check=True).stdout.splitlines()
    row = json.loads(listed[-1])
    assert row["id"] == a["id"] and row["rule"] == "ransomware" and row["acked"] is False
    assert row["features"]["victims"] >= 5
    text = aenv.run("anomalies", check=True).stdout
    assert a["id"] in text and "ransomware" in text and "lock" in text
    out = aenv.run("anomalies", "ack", a["id"], check=True)
    assert "acknowledged" in out.stdout
    wait_for(lambda: json.loads(aenv.run("anomalies", "--json", check=True).stdout.splitlines()[-1])["acked"],
             "the ack to reach the ledger")
    assert aenv.run("anomalies", "--unacked", check=True).stdout.strip() == "no anomalies"
    bad = aenv.run("anomalies", "ack", "nosuchid")
    assert bad.returncode != 0 and "no anomaly" in bad.stderr and "Traceback" not in bad.stderr


def test_unmount_policy_on_mass_deletion(aenv: Env) -> None:
    vault = _setup(aenv, mass_delete_files=25)
    with live_mount(aenv, vault, aenv.tmp / "mnt") as m:
        _set_policy(aenv, m.path, "unmount")  # by mountpoint this time
        for i in range(60):
            (m.path / f"old{i}").write_text("x")
        for i in range(60):
            try:
                (m.path / f"old{i}").unlink()
            except OSError:
                break
        wait_for(lambda: not is_mounted(m.path), "the mount to go away")
        [a] = anomalies(aenv)
        assert a["rule"] == "mass-delete" and a["action"] == "unmount" and a["action_result"] == "ok"
        assert a["f_deleted_files"] == 25


def test_policy_is_signed_by_the_vault_and_pinned_against_rollback(aenv: Env) -> None:
    aenv.home.mkdir(parents=True, exist_ok=True)
    vault = aenv.init(aenv.tmp / "vault")
    store = policy_mod.PolicyStore(aenv.home)
    assert store.get(vault).on_anomaly == "alert" and store.get(vault).source == "default"
    _set_policy(aenv, vault, "lock")
    old = policy_mod.policy_path(vault).read_bytes()
    assert store.get(vault).on_anomaly == "lock"
    _set_policy(aenv, vault, "revoke")
    assert store.get(vault).on_anomaly == "revoke"
    # Someone with write access to the vault puts the older (weaker) signed file back, then forges one.
    policy_mod.write(vault, old)
    assert store.get(vault).on_anomaly == "revoke"
    forged = json.loads(old)
    forged["on_anomaly"] = "alert"
    policy_mod.write(vault, json.dumps(forged).encode())
    assert store.get(vault).on_anomaly == "revoke"
    shown = aenv.run("policy", "show", vault)
    assert shown.returncode == 22 and "not signed by this vault's owner key" in shown.stderr
    policy_mod.policy_path(vault).unlink()   # deleted: the pinned one stays in force
    assert policy_mod.PolicyStore(aenv.home).get(vault).on_anomaly == "revoke"
    wrong = aenv.run("policy", "set", vault, "--on-anomaly", "lock", "--passphrase-file", aenv.tmp / "nope",
                     input="")
    assert wrong.returncode != 0
    bad = aenv.run("policy", "set", vault, "--on-anomaly", "lock", "--threshold", "7", "--passphrase-file", aenv.passfile)
    assert bad.returncode == 2 and "--threshold" in bad.stderr and "Traceback" not in bad.stderr  # usage


@pytest.mark.slow
def test_revoke_policy_cuts_off_a_share_recipient_pulling_everything(tmp_path: Path) -> None:
    """bob's daemon watches his share mount; past the share-bulk limit it locks the mount and deletes
    bob's grant at the proxies with its guard key (registered by the admin, scoped to bob)."""
    from proxy.client import ProxyClient
    from proxy.keyring import parse_public
    from tests.cli.test_sharing import _identity
    from tests.conftest import new_env
    from tests.daemon.conftest import stop_daemon
    from tests.proxy.conftest import ProxyProc, make_identity

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    alice, bob = new_env(tmp_path / "a"), new_env(tmp_path / "b")
    bob.passfile.write_text("bob's own passphrase\n")
    alice_pub, bob_pub = _identity(alice, "alice"), _identity(bob, "bob")
    alice.run("identity", "import", "-", input=bob_pub, check=True)
    bob.run("identity", "import", "-", input=alice_pub, check=True)
    admin = make_identity(tmp_path / "admin-home", "admin")
    (tmp_path / "admin.pub").write_text(admin.public.to_text())
    proxy = ProxyProc(tmp_path / "proxy", tmp_path / "admin.pub").start()
    try:
        guard_pub = Path(bob.run("daemon", "credential", "--passphrase-file", bob.passfile, "--kdf-memory-kib", "1024",
                                 "--kdf-iterations", "1", "--kdf-lanes", "1", check=True).stdout.strip())
        with ProxyClient(proxy.url, admin) as client:
            client.register(parse_public(alice_pub), "owner")
            client.register(parse_public(bob_pub), "reader")
            client.register(parse_public(guard_pub.read_text()), "guard", scope=[parse_public(bob_pub).fingerprint])
        vault = alice.init(tmp_path / "vault")
        with live_mount(alice, vault, tmp_path / "drive") as drive:
            team = drive.path / "team"
            team.mkdir()
            for i in range(30):
                (team / f"doc{i}.txt").write_bytes(os.urandom(64 << 10))
            share_id = alice.run("share", team, "--with", "bob", "--proxy", proxy.url, "--passphrase-file",
                                 alice.passfile, "--vault-passphrase-file", alice.passfile, check=True).stdout.strip()
            _set_policy(alice, vault, "revoke")
            bob.home.mkdir(parents=True, exist_ok=True)
            (bob.home / "anomaly.json").write_text(json.dumps({"share_floor_files": 8}))
            Daemon(bob).start()
            try:
                with live_mount(bob, vault, tmp_path / "view", "--share", share_id, "--identity", "bob") as view:
                    got = 0
                    for i in range(30):
                        try:
                            (view.path / f"doc{i}.txt").read_bytes()
                        except PermissionError:
                            break
                        got += 1
                        time.sleep(0.05)
                    assert 8 <= got <= 12, got
                    wait_for(lambda: anomalies(bob), "bob's daemon to decide")
                    [a] = anomalies(bob)
                    assert a["rule"] == "share-bulk" and a["user"].startswith("recipient:")
                    assert a["action"] == "revoke" and a["action_result"] == "ok", a
                    assert a["grants"] == share_id and a["lock_ms"] <= a["revoke_ms"]
                with ProxyClient(proxy.url, admin) as client:
                    [g] = client.list_grants()
                    assert g["grant_id"] == share_id and g["revoked"] is not None, g
                again = bob.run("mount", vault, tmp_path / "view", "--share", share_id, "--identity", "bob",
                                "--passphrase-file", bob.passfile)
                assert again.returncode == 32 and "revoked" in again.stderr  # ACCESS_REVOKED
            finally:
                stop_daemon(bob)
    finally:
        proxy.stop()


@pytest.mark.slow
def test_a_long_read_through_a_real_mount_is_counted_once_while_it_runs(aenv: Env) -> None:
    """The mount's `progress` events (every 4 MiB) and the final `access` add up to the bytes read, once."""
    from daemon.anomaly.detector import replay
    from daemon.paths import ledger_path
    from ledger import read

    vault = _setup(aenv)
    size = 13 * (1 << 20) + 5
    with live_mount(aenv, vault, aenv.tmp / "mnt") as m:
        (m.path / "big.bin").write_bytes(os.urandom(size))
    with live_mount(aenv, vault, aenv.tmp / "mnt") as m:  # a fresh mount: nothing in the page cache
        with open(m.path / "big.bin", "rb") as f:
            while f.read(1 << 20):
                pass
    conn = read.open_readonly(ledger_path(aenv.home))
    try:
        wait_for(lambda: any(e.op == "unmount" for _, e in read.entries(conn, op="unmount")) and
                 sum(1 for _ in read.entries(conn, op="unmount")) == 2, "both mounts' events")
        progress = [e for _, e in read.entries(conn, op="progress") if e.bytes_read]
        n = read.ledger_size(conn)
    finally:
        conn.close()
    assert len(progress) >= 3 and all("fh" in e.detail for e in progress)
    history, _, builder = replay(aenv.home, n, 60 * 10**9)
    windows = [w for ws in history.values() for w in ws] + [
        w for w in builder.close_before(1 << 62)]
    assert sum(w.features["bytes_read"] for w in windows) == size


def test_restore_after_a_lock_is_not_taken_for_another_attack(aenv: Env) -> None:
    """Ransomware (its own process) is locked out; `restore --unlock` puts every byte back, and its
    own writes — which look just like the attack undone — are tagged and leave the detector quiet."""
    import subprocess
    import sys

    from tests.cli.test_restore import RANSOMWARE, populate, snapshot

    vault = _setup(aenv)
    _set_policy(aenv, vault, "lock")
    with live_mount(aenv, vault, aenv.tmp / "mnt") as m:
        populate(m.path)
        before = snapshot(m.path)
        script = aenv.tmp / "ransom.py"
        script.write_text(RANSOMWARE)
        since = time.time_ns()
        proc = subprocess.run([sys.executable, str(script), str(m.path)], capture_output=True, text=True, timeout=120)
        # EACCES; a request racing with the lock itself may see EIO.  Stopped either way.
        stopped = "Permission denied" in proc.stderr or "Input/output error" in proc.stderr
        assert proc.returncode != 0 and stopped, m.log()[-3000:] + proc.stderr
        wait_for(lambda: anomalies(aenv), "the anomaly event")
        [info] = mounts.list_mounts(aenv.home)
        assert mounts.request(info, {"type": "status"})["locked"]
        # The attacker's pid is on its events: the ransomware rule's trigger names it.
        [a] = anomalies(aenv)
        attacker = next(e.pid for _, e in Daemon(aenv).events() if e.source == a["trigger_source"] and e.seq == a["trigger_seq"])
        result = aenv.run("restore", m.path, "--since", since, "--pid", attacker, "--unlock",
                          "--passphrase-file", aenv.passfile)
        assert result.returncode == 0, result.stdout + result.stderr
        assert snapshot(m.path) == before
        assert not mounts.request(info, {"type": "status"})["locked"]
        # Anything else running as the user cannot claim to be a restore.
        forged = mounts.request(info, {"type": "restore-begin", "proof": "00" * 32})
        assert forged["type"] == "error" and forged["code"] == "refused"

    wait_for(lambda: any(e.op == "unmount" for _, e in Daemon(aenv).events()), "the unmount event")
    tagged = [e for _, e in Daemon(aenv).events() if e.detail.get("restore") is True]
    assert tagged and {e.pid for e in tagged} != {attacker}
    assert any(e.op == "access" and e.bytes_written for e in tagged)
    assert [x["rule"] for x in anomalies(aenv)] == ["ransomware"]  # the restore fired nothing
