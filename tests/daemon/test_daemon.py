"""The audit daemon end to end: real mounts report to a real daemon that writes a real ledger."""
from __future__ import annotations

import collections
import json
import shutil
import os
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

from wire import daemonsock as protocol
from daemon.paths import ledger_path
from ledger.events import Event
from ledger.anchor import read_anchor
from proxy import keyring as identity_mod
from tests.conftest import PASSPHRASE, Env, force_unmount, live_mount, new_env, process_gone
from tests.fs.posix_support import drop_cache

from tests.daemon.conftest import FAST_IDENTITY_KDF, Daemon, wait_for


def _mine(events: list[tuple[int, Event]], source: str | None = None, op: str | None = None) -> list[Event]:
    return [e for _, e in events if (source is None or e.source == source) and (op is None or e.op == op)]


def _mount_source(events: list[tuple[int, Event]], mountpoint: Path) -> str:
    (source,) = {e.source for e in _mine(events, op="mount") if e.path == str(mountpoint)}
    return source


def test_every_kind_of_access_is_on_the_record(aenv: Env, daemon: Daemon) -> None:
    vault = aenv.init(aenv.tmp / "vault")
    mnt = aenv.tmp / "mnt"
    with live_mount(aenv, vault, mnt):
        (mnt / "docs").mkdir()
        (mnt / "docs" / "report.txt").write_bytes(b"x" * 100_000)
        drop_cache(mnt / "docs" / "report.txt")  # the kernel serves cached reads without asking us
        assert (mnt / "docs" / "report.txt").read_bytes() == b"x" * 100_000
        os.rename(mnt / "docs" / "report.txt", mnt / "docs" / "final.txt")
        os.link(mnt / "docs" / "final.txt", mnt / "hard")
        os.symlink("docs/final.txt", mnt / "soft")
        os.chmod(mnt / "hard", 0o600)
        os.unlink(mnt / "hard")
        (mnt / "empty").mkdir()
        os.rmdir(mnt / "empty")
    events = daemon.events()
    source = _mount_source(events, mnt)
    mine = _mine(events, source)
    assert [e.seq for e in mine] == list(range(1, len(mine) + 1))  # gap-free, no duplicates, in order
    ops = collections.Counter(e.op for e in mine)
    assert ops["mount"] == ops["unmount"] == 1
    assert ops["mkdir"] == 2 and ops["rmdir"] == 1 and ops["create"] == 1 and ops["rename"] == 1
    assert ops["link"] == 1 and ops["symlink"] == 1 and ops["unlink"] == 1 and ops["setattr"] >= 1
    (rename,) = _mine(events, source, "rename")
    assert (rename.path, rename.path2) == ("/docs/report.txt", "/docs/final.txt")
    (unlink,) = _mine(events, source, "unlink")
    assert unlink.path == "/hard" and unlink.result == "ok"
    sessions = _mine(events, source, "access")
    written = [s for s in sessions if s.bytes_written]
    read = [s for s in sessions if s.bytes_read]
    assert [(s.path, s.bytes_written) for s in written] == [("/docs/report.txt", 100_000)]
    assert [(s.path, s.bytes_read, s.detail["mode"]) for s in read] == [("/docs/report.txt", 100_000, "r")]
    assert all(s.detail["size"] == 100_000 for s in sessions if s.path == "/docs/report.txt")
    assert written[0].comm and written[0].pid > 0 and written[0].uid == os.getuid()
    assert written[0].opened_ns <= written[0].time_ns and written[0].vault and len(written[0].file_id) == 32
    # The record holds up, and any entry can be proved.
    result = aenv.run("audit", "verify", check=True)
    assert "ledger ok" in result.stdout
    idx = next(i for i, e in events if e.source == source and e.seq == written[0].seq)
    daemon_checkpoint = aenv.run("daemon", "status", "--json", check=True)
    assert json.loads(daemon_checkpoint.stdout)["entries"] >= len(mine)
    proof_file = aenv.tmp / "proof.json"
    proof_file.write_text(aenv.run("audit", "prove", str(idx), check=True).stdout)
    assert "proof holds" in aenv.run("audit", "check-proof", proof_file, check=True).stdout
    doc = json.loads(proof_file.read_text())
    doc["leaf"] = doc["leaf"].replace("100000", "100001")
    proof_file.write_text(json.dumps(doc))
    bad = aenv.run("audit", "check-proof", proof_file)
    assert bad.returncode == 21 and "does NOT hold" in bad.stderr


def test_refused_requests_are_recorded(aenv: Env, daemon: Daemon) -> None:
    vault = aenv.init(aenv.tmp / "vault")
    mnt = aenv.tmp / "mnt"
    with live_mount(aenv, vault, mnt):
        (mnt / "f").write_bytes(b"data")
    with live_mount(aenv, vault, mnt, "--read-only"):
        for call in (lambda: (mnt / "g").write_bytes(b"no"), lambda: os.unlink(mnt / "f"), lambda: os.mkdir(mnt / "d")):
            try:
                call()
            except OSError as exc:
                assert exc.errno == 30  # EROFS
            else:
                raise AssertionError("a read-only mount accepted a change")
    events = daemon.events()
    refused = [(e.op, e.path, e.result) for e in _mine(events) if e.result != "ok"]
    # The kernel refuses some EROFS itself (ro mount); whatever reached us is on the record.
    assert all(result == "EROFS" for _, _, result in refused)


def test_audit_log_filters_and_formats(aenv: Env, daemon: Daemon) -> None:
    vault = aenv.init(aenv.tmp / "vault")
    mnt = aenv.tmp / "mnt"
    with live_mount(aenv, vault, mnt):
        (mnt / "projects").mkdir()
        (mnt / "projects" / "a.txt").write_text("a")
        (mnt / "other.txt").write_text("b")
    lines = aenv.run("audit", "log", "--json", "--path", "/projects", check=True).stdout.splitlines()
    paths = {json.loads(line)["path"] for line in lines}
    assert paths == {"/projects", "/projects/a.txt"}
    creates = aenv.run("audit", "log", "--op", "create", check=True).stdout.splitlines()
    assert len(creates) == 2 and all(" create " in line for line in creates)
    assert any("/other.txt" in line for line in creates)
    assert aenv.run("audit", "log", "--since", "1h", "--op", "create", check=True).stdout.splitlines() == creates
    assert aenv.run("audit", "log", "--since", "2999-01-01", check=True).stdout == ""
    assert aenv.run("audit", "log", "--user", str(os.getuid() + 12345), check=True).stdout == ""
    assert len(aenv.run("audit", "log", "--user", str(os.getuid()), "--op", "create", check=True).stdout.splitlines()) == 2
    bad = aenv.run("audit", "log", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "30m" in bad.stderr
    exported = [json.loads(line) for line in aenv.run("audit", "export", check=True).stdout.splitlines()]
    assert {r["type"] for r in exported} >= {"entry", "checkpoint"}


def test_mount_spools_while_the_daemon_is_down_and_it_drains_later(aenv: Env) -> None:
    vault = aenv.init(aenv.tmp / "vault")
    mnt = aenv.tmp / "mnt"
    with live_mount(aenv, vault, mnt, "--audit", "best-effort"):
        for i in range(20):
            (mnt / f"f{i}").write_bytes(b"z" * i)
    spooled = list((aenv.home / "spool").rglob("*.jsonl"))
    assert spooled, "nothing spooled while the daemon was down"
    d = Daemon(aenv)
    d.start()
    events = d.events()
    source = _mount_source(events, mnt)
    mine = _mine(events, source)
    assert [e.seq for e in mine] == list(range(1, len(mine) + 1))
    assert len(_mine(events, source, "create")) == 20 and mine[-1].op == "unmount"
    assert not (aenv.home / "spool" / source).exists()  # drained and removed


def test_required_audit_refuses_to_mount_without_a_daemon(aenv: Env) -> None:
    vault = aenv.init(aenv.tmp / "vault")
    mnt = aenv.tmp / "mnt"
    mnt.mkdir()
    result = aenv.run("mount", vault, mnt, "--passphrase-file", aenv.passfile, "--audit", "required")
    assert result.returncode == 20
    assert result.stderr.count("\n") == 1 and "audit daemon not reachable" in result.stderr
    d = Daemon(aenv)
    d.start()
    with live_mount(aenv, vault, mnt, "--audit", "required"):
        (mnt / "x").write_text("ok")
    assert _mine(d.events(), op="create")


def test_audit_off_writes_nothing_and_auto_waits_for_a_first_daemon(aenv: Env) -> None:
    vault = aenv.init(aenv.tmp / "vault")
    with live_mount(aenv, vault, aenv.tmp / "mnt") as m:  # auto, and no daemon has ever run here
        (m.path / "x").write_text("quiet")
    assert not list((aenv.home / "spool").rglob("*.jsonl"))
    d = Daemon(aenv)
    d.start()
    d.stop()
    with live_mount(aenv, vault, aenv.tmp / "mnt", "--audit", "off") as m:
        (m.path / "y").write_text("quiet")
    assert not list((aenv.home / "spool").rglob("*.jsonl"))
    with live_mount(aenv, vault, aenv.tmp / "mnt") as m:  # auto: a ledger exists now, so events spool
        (m.path / "z").write_text("recorded")
    d.start()
    assert [e.path for e in _mine(d.events(), op="create")] == ["/z"]


def test_daemon_commands(aenv: Env) -> None:
    down = aenv.run("daemon", "status")
    assert down.returncode == 20 and "not running" in down.stderr
    assert aenv.run("daemon", "stop").returncode == 20
    d = Daemon(aenv)
    pid = d.start()
    assert "already running" in aenv.run("daemon", "start", "--passphrase-file", aenv.passfile, check=True).stdout
    status = aenv.run("daemon", "status", check=True).stdout
    assert f"pid {pid}" in status and "entries" in status
    mode = (aenv.home / protocol.SOCKET_NAME).stat().st_mode & 0o777
    assert mode == 0o600
    d.stop()
    assert process_gone(pid) and not (aenv.home / protocol.SOCKET_NAME).exists()
    assert "ledger ok" in aenv.run("audit", "verify", check=True).stdout
    wrong = aenv.tmp / "wrong"
    wrong.write_text("not the passphrase\n")
    bad = aenv.run("daemon", "start", "--passphrase-file", wrong)
    assert bad.returncode == 10 and bad.stderr.count("\n") == 1


def test_garbage_on_the_socket_is_refused_and_the_daemon_carries_on(aenv: Env, daemon: Daemon) -> None:
    def ask(*lines: bytes) -> list[dict]:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(aenv.home / protocol.SOCKET_NAME))
            replies = []
            f = s.makefile("rb")
            for line in lines:
                s.sendall(line)
                replies.append(json.loads(f.readline()))
            return replies

    replies = ask(
        b"not json\n",
        b'{"type":"events","events":[]}\n',  # before hello
        b'{"type":"hello","source":"../../etc"}\n',
        b'{"type":"hello","source":"00000000000000ab"}\n',
        b'{"type":"events","events":[{"source":"00000000000000cd","seq":1,"time_ns":1,"op":"create"}]}\n',
        b'{"type":"events","events":[{"source":"00000000000000ab","seq":1,"time_ns":1,"op":"format-disk"}]}\n',
        b'{"type":"events","events":[{"source":"00000000000000ab","seq":1,"time_ns":1,"op":"create","path":"/ok"}]}\n',
        b'{"type":"events","events":[{"source":"00000000000000ab","seq":1,"time_ns":1,"op":"create","path":"/ok"}]}\n',
        b'{"type":"launch"}\n',
    )
    kinds = [r["type"] for r in replies]
    assert kinds == ["error", "error", "error", "welcome", "error", "error", "ack", "ack", "error"]
    assert replies[6]["last_seq"] == replies[7]["last_seq"] == 1  # the copy was dropped
    assert [e.path for e in _mine(daemon.events(), "00000000000000ab")] == ["/ok"]
    assert aenv.run("daemon", "status", check=True).returncode == 0


def test_kill9_daemon_and_mount_mid_workload_loses_nothing(aenv: Env, daemon: Daemon) -> None:
    """kill -9 the daemon during a busy workload, then the mount; restart both: every event exactly once."""
    vault = aenv.init(aenv.tmp / "vault")
    mnt = aenv.tmp / "mnt"
    files, renamed, removed = 300, 100, 50
    m = aenv.mount(vault, mnt)
    try:
        progress = threading.Event()
        errors: list[BaseException] = []

        def workload() -> None:
            try:
                (mnt / "w").mkdir()
                for i in range(files):
                    (mnt / "w" / f"f{i:03d}").write_bytes(os.urandom(3000))
                    if i == files // 3:
                        progress.set()
                for i in range(renamed):
                    os.rename(mnt / "w" / f"f{i:03d}", mnt / "w" / f"r{i:03d}")
                for i in range(removed):
                    os.unlink(mnt / "w" / f"r{i:03d}")
            except BaseException as exc:  # reported below
                errors.append(exc)
                progress.set()

        worker = threading.Thread(target=workload)
        worker.start()
        assert progress.wait(60)
        daemon.kill9()
        worker.join(120)
        assert not errors, errors
        # close() returns before the kernel's RELEASE reaches the mount: wait until
        # the mount has spooled the last session, then kill it too.
        def sessions_seen() -> int:  # by the dead daemon's ledger or still in the spool
            seqs = {e.seq for e in _mine(daemon.events(), op="access")}
            for path in (aenv.home / "spool").rglob("*.jsonl"):
                lines = path.read_bytes().splitlines()
                seqs |= {json.loads(line)["seq"] for line in lines if b'"op":"access"' in line}
            return len(seqs)

        wait_for(lambda: sessions_seen() >= files, "the mount to spool every session")
        os.kill(m.pid, signal.SIGKILL)
        wait_for(lambda: process_gone(m.pid), "the mount to die")
    finally:
        force_unmount(mnt, m.pid)
    daemon.start()
    m = aenv.mount(vault, mnt)  # the mount comes back too, and keeps working
    try:
        assert len(list((mnt / "w").iterdir())) == files - removed
    finally:
        m.unmount()
    events = daemon.events()
    mount_sources = [e.source for e in _mine(events, op="mount")]
    assert len(mount_sources) == 2, collections.Counter((e.source, e.op) for _, e in events)
    first = _mine(events, mount_sources[0])
    assert [e.seq for e in first] == list(range(1, len(first) + 1))  # none lost, none twice
    ops = collections.Counter(e.op for e in first)
    assert ops["create"] == files and ops["rename"] == renamed and ops["unlink"] == removed and ops["mkdir"] == 1
    assert sum(1 for e in first if e.op == "access" and e.bytes_written == 3000) == files
    assert "unmount" not in ops  # it was killed
    assert not [e for e in _mine(events, op="spool-gap")]
    pairs = [(e.source, e.seq) for _, e in events]
    assert len(pairs) == len(set(pairs))
    assert "ledger ok" in aenv.run("audit", "verify", check=True).stdout


def test_verify_names_an_edited_entry(aenv: Env, daemon: Daemon) -> None:
    vault = aenv.init(aenv.tmp / "vault")
    with live_mount(aenv, vault, aenv.tmp / "mnt") as m:
        for i in range(5):
            (m.path / f"secret-{i}").write_text("s")
    daemon.stop()
    events = daemon.events()
    idx, victim = next((i, e) for i, e in events if e.op == "create" and e.path == "/secret-2")
    conn = sqlite3.connect(ledger_path(aenv.home))
    tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
    table, column = next(
        (t, c) for t in tables for c in [r[1] for r in conn.execute(f"pragma table_info({t})")]
        if conn.execute(f"select count(*) from {t} where typeof({c}) in ('blob','text') and cast({c} as text) like '%secret-2%'").fetchone()[0]
    )
    conn.execute(f"update {table} set {column} = cast(replace(cast({column} as text), 'secret-2', 'public-2') as blob) where cast({column} as text) like '%secret-2%'")
    conn.commit()
    conn.close()
    result = aenv.run("audit", "verify")
    assert result.returncode == 21, result.stdout + result.stderr
    assert f"first bad entry {idx}" in result.stderr


def test_unlocks_are_recorded_failed_ones_too(aenv: Env, daemon: Daemon) -> None:
    vault = aenv.init(aenv.tmp / "vault")
    mnt = aenv.tmp / "mnt"
    mnt.mkdir()
    wrong = aenv.tmp / "wrong"
    wrong.write_text("guess\n")
    assert aenv.run("mount", vault, mnt, "--passphrase-file", wrong).returncode == 10
    with live_mount(aenv, vault, mnt):
        pass
    wait_for(lambda: len(_mine(daemon.events(), op="unlock")) == 2, "both unlock events")
    results = [(e.path, e.result) for e in _mine(daemon.events(), op="unlock")]
    assert results == [(str(vault), "EACCES"), (str(vault), "ok")]


def test_rolling_back_the_whole_state_directory_is_caught_by_the_vault_anchor(aenv: Env, daemon: Daemon) -> None:
    vault = aenv.init(aenv.tmp / "vault")
    with live_mount(aenv, vault, aenv.tmp / "mnt") as m:
        (m.path / "before-backup").write_text("1")
    daemon.stop()
    anchors = list(vault.glob(".umbrafs.ledger-*.json"))
    assert len(anchors) == 1 and anchors[0].stat().st_mode & 0o777 == 0o600
    backup = aenv.tmp / "home-backup"
    shutil.copytree(aenv.home, backup, ignore=shutil.ignore_patterns("*.sock", "*.pid", "spool", "*.lock"))
    daemon.start()
    with live_mount(aenv, vault, aenv.tmp / "mnt") as m:
        (m.path / "after-backup").write_text("2")  # e.g. the evidence someone wants gone
    daemon.stop()
    assert "ledger ok" in aenv.run("audit", "verify", check=True).stdout
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm", "ledger-checkpoint.json", "vault-anchors.json"):
        (aenv.home / name).unlink(missing_ok=True)
        if (backup / name).exists():
            shutil.copy2(backup / name, aenv.home / name)
    result = aenv.run("audit", "verify")
    assert result.returncode == 21 and str(vault) in result.stdout + result.stderr
    refused = aenv.run("daemon", "start", "--passphrase-file", aenv.passfile)
    assert refused.returncode == 21 and refused.stderr.count("\n") == 1, refused.stderr


def test_a_vault_anchor_replaced_by_a_storage_attacker_does_not_keep_the_daemon_down(aenv: Env, daemon: Daemon) -> None:
    """Security review, finding 15: any recipient or sync peer could switch the audit and the
    detector off by writing garbage, or another ledger's signed checkpoint, into the vault's
    anchor. Neither is evidence against this ledger (nobody can forge its signature): the
    daemon starts, records an integrity event, and writes its own checkpoint there again."""
    vault = aenv.init(aenv.tmp / "vault")
    with live_mount(aenv, vault, aenv.tmp / "mnt") as m:
        (m.path / "a").write_text("1")
    daemon.stop()
    (anchor,) = vault.glob(".umbrafs.ledger-*.json")
    ours = read_anchor(aenv.home / "ledger-checkpoint.json").key_id
    (aenv.tmp / "foreign").mkdir()
    foreign = new_env(aenv.tmp / "foreign")
    identity_mod.create(foreign.home, "mallory", PASSPHRASE.encode(), FAST_IDENTITY_KDF)
    foreign.run("daemon", "start", "--passphrase-file", foreign.passfile, check=True)
    foreign.run("daemon", "stop", check=True)
    for planted in (b"not a checkpoint\n", (foreign.home / "ledger-checkpoint.json").read_bytes()):
        anchor.write_bytes(planted)
        daemon.start()
        with live_mount(aenv, vault, aenv.tmp / "mnt") as m:
            (m.path / "after").write_text("2")
        daemon.stop()
        assert any(e.op == "integrity" and e.path == str(anchor) for e in _mine(daemon.events()))
        assert read_anchor(anchor).key_id == ours  # this ledger's checkpoint again
    assert "ledger ok" in aenv.run("audit", "verify", check=True).stdout

def test_consistency_with_a_saved_checkpoint(aenv: Env, daemon: Daemon) -> None:
    vault = aenv.init(aenv.tmp / "vault")
    with live_mount(aenv, vault, aenv.tmp / "mnt") as m:
        (m.path / "one").write_text("1")
        aenv.run("audit", "verify", check=True)  # makes the daemon sign what it has
        saved = aenv.tmp / "saved-checkpoint.json"
        shutil.copy(aenv.home / "ledger-checkpoint.json", saved)
        for i in range(30):
            (m.path / f"more-{i}").write_text("2")
    result = aenv.run("audit", "consistency", saved, "--json", check=True)
    doc = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert doc["holds"] and doc["new"]["size"] > doc["old"]["size"] and doc["proof"]
    assert "consistent: the ledger grew" in result.stdout
    forged = json.loads(saved.read_text())
    forged["root"] = "00" * 32
    saved.write_text(json.dumps(forged))
    bad = aenv.run("audit", "consistency", saved)
    assert bad.returncode == 21 and "not signed by this identity" in bad.stderr


def test_a_ledger_started_afresh_is_not_consistent_with_a_saved_checkpoint(aenv: Env, daemon: Daemon) -> None:
    """Even someone with the identity's passphrase cannot replace the history unnoticed by an auditor."""
    vault = aenv.init(aenv.tmp / "vault")
    with live_mount(aenv, vault, aenv.tmp / "mnt") as m:
        for i in range(20):
            (m.path / f"evidence-{i}").write_text("x")
    daemon.stop()
    saved = aenv.tmp / "saved-checkpoint.json"
    shutil.copy(aenv.home / "ledger-checkpoint.json", saved)
    for path in [*aenv.home.glob("ledger*"), aenv.home / "vault-anchors.json", *vault.glob(".umbrafs.ledger-*")]:
        path.unlink()
    daemon.start()
    with live_mount(aenv, vault, aenv.tmp / "mnt") as m:
        for i in range(40):
            (m.path / f"innocent-{i}").write_text("y")
    assert "ledger ok" in aenv.run("audit", "verify", check=True).stdout  # self-consistent on its own
    bad = aenv.run("audit", "consistency", saved)
    assert bad.returncode == 21 and "rewritten" in bad.stderr, bad.stderr


def test_an_event_that_moved_a_mebibyte_is_delivered_without_the_linger(aenv: Env, daemon: Daemon, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Small events gather for a linger; a large read cuts it short (the bulk-read rule is waiting)."""
    from wire import sink as audit

    monkeypatch.setattr(audit, "_LINGER", 30.0)  # long enough that only the cut can explain a delivery
    sink = audit.AuditSink(aenv.home, "00" * 16, required=True)
    try:
        def delivered(op: str) -> bool:
            return bool(_mine(daemon.events(), sink.source, op))

        sink.emit("mkdir", pid=os.getpid(), path="/small")
        time.sleep(1.0)
        assert not delivered("mkdir"), "a small event did not wait for the linger"
        sink.emit("access", pid=os.getpid(), path="/big", bytes_read=4 << 20)
        wait_for(lambda: delivered("access"), "the large read's event", timeout=10.0)
        assert delivered("mkdir")  # it went in the same batch
    finally:
        sink.close()
