"""Sharing end to end through the real command line: alice and bob (two state directories
over one vault), three real proxy processes, real mounts.

alice shares /projects/x with bob (2 of 3 proxies); bob mounts the share and sees x and
nothing above it; read-only and read-write grants; a proxy down, two down; revoke; a
tampered record; a shared single file; `shares`; one-line errors.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli import exitcodes
from ledger.events import Event, decode
from proxy.client import ProxyClient
from proxy.keyring import Identity, parse_public
from tests.cli.test_identity import one_line_error
from tests.conftest import FAST_KDF, Env, Mount, live_mount, new_env
from tests.proxy.conftest import ProxyProc, make_identity, stop_all


@dataclass
class World:
    alice: Env
    bob: Env
    vault: Path
    drive: Path           # alice's mount of the whole vault
    proxies: list[ProxyProc]
    tmp: Path
    admin: Identity

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.proxies]

    def proxy_args(self) -> list[str]:
        return [arg for url in self.urls for arg in ("--proxy", url)]

    def share(self, path: str, *extra: str) -> str:
        result = self.alice.run("share", self.drive / path.lstrip("/"), "--with", "bob", *self.proxy_args(),
                                "--passphrase-file", self.alice.passfile,
                                "--vault-passphrase-file", self.alice.passfile, *extra, check=True)
        return result.stdout.strip()

    def bob_mount(self, share_id: str, name: str = "view") -> Mount:
        return self.bob.mount(self.vault, self.tmp / name, "--share", share_id, "--identity", "bob")

    def bob_mount_fails(self, share_id: str, name: str = "failing") -> subprocess.CompletedProcess[str]:
        mnt = self.tmp / name
        mnt.mkdir(exist_ok=True)
        return self.bob.run("mount", self.vault, mnt, "--share", share_id, "--identity", "bob",
                            "--passphrase-file", self.bob.passfile)

    def restore(self) -> None:
        for p in self.proxies:
            p.ensure_running()


def _identity(env: Env, name: str) -> str:
    env.run("identity", "create", name, "--passphrase-file", env.passfile, *FAST_KDF, check=True)
    return env.run("identity", "export", name, check=True).stdout


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("sharing")
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    alice, bob = new_env(tmp / "a"), new_env(tmp / "b")
    bob.passfile.write_text("bob's own passphrase, not the vault's\n")
    alice_pub, bob_pub = _identity(alice, "alice"), _identity(bob, "bob")
    alice.run("identity", "import", "-", input=bob_pub, check=True)
    bob.run("identity", "import", "-", input=alice_pub, check=True)
    admin: Identity = make_identity(tmp / "admin-home", "admin")
    admin_file = tmp / "admin.pub"
    admin_file.write_text(admin.public.to_text())
    proxies = [ProxyProc(tmp / f"proxy{i}", admin_file) for i in range(3)]
    try:
        for p in proxies:
            p.start()
            with ProxyClient(p.url, admin) as client:
                client.register(parse_public(alice_pub), "owner")
                client.register(parse_public(bob_pub), "reader")
        vault = alice.init(tmp / "vault")
        with live_mount(alice, vault, tmp / "drive") as drive:
            m = drive.path
            (m / "projects" / "x" / "sub").mkdir(parents=True)
            (m / "projects" / "x" / "a.txt").write_text("alpha\n")
            (m / "projects" / "x" / "sub" / "b.txt").write_text("beta\n")
            (m / "projects" / "secret.txt").write_text("parent's file\n")
            (m / "top.txt").write_text("root file\n")
            yield World(alice, bob, vault, m, proxies, tmp, admin)
    finally:
        stop_all(proxies)


@pytest.fixture
def w(world: World) -> Iterator[World]:
    world.restore()
    yield world
    world.restore()


def _eventually(check, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, FileNotFoundError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_read_only_share_shows_the_subtree_only(w: World) -> None:
    share_id = w.share("/projects/x", "--threshold", "2")
    assert 8 <= len(share_id) <= 128 and "\n" not in share_id
    record = json.loads((w.vault / ".umbrafs.shares" / f"{share_id}.json").read_text())
    assert record["threshold"] == 2 and record["proxies"] == w.urls and record["read_only"] is True
    assert "alpha" not in json.dumps(record) and "projects" not in json.dumps(record)  # nothing in the clear
    assert ".umbrafs.shares" not in os.listdir(w.drive)
    with live_mount(w.bob, w.vault, w.tmp / "view", "--share", share_id, "--identity", "bob") as view:
        assert sorted(os.listdir(view.path)) == ["a.txt", "sub"]
        assert (view.path / "a.txt").read_text() == "alpha\n"
        assert (view.path / "sub" / "b.txt").read_text() == "beta\n"
        assert not (view.path / "secret.txt").exists() and not (view.path / "top.txt").exists()
        with pytest.raises(OSError) as info:
            (view.path / "a.txt").write_text("changed")
        assert info.value.errno == errno.EROFS
        with pytest.raises(OSError) as info:
            (view.path / "new.txt").write_text("x")
        assert info.value.errno == errno.EROFS
    assert (w.drive / "projects" / "x" / "a.txt").read_text() == "alpha\n"


def test_read_write_share_alice_sees_bobs_changes(w: World) -> None:
    share_id = w.share("/projects/x", "--read-write", "--json")
    share_id = json.loads(share_id)["id"]
    with live_mount(w.bob, w.vault, w.tmp / "rwview", "--share", share_id, "--identity", "bob") as view:
        (view.path / "from-bob.txt").write_text("hello alice\n")
        (view.path / "sub" / "deeper").mkdir()
        (view.path / "sub" / "deeper" / "n.txt").write_text("nested\n")
        with open(view.path / "a.txt", "a") as f:
            f.write("bob was here\n")
    x = w.drive / "projects" / "x"
    _eventually(lambda: (x / "from-bob.txt").read_text() == "hello alice\n" or _fail())
    _eventually(lambda: (x / "sub" / "deeper" / "n.txt").read_text() == "nested\n" or _fail())
    # alice's drive has a.txt's old pages cached (writeback cache, keep_cache): a fresh mount
    # of hers shows bob's edit; docs/sharing.md says so.
    with live_mount(w.alice, w.vault, w.tmp / "alice-fresh", "--read-only") as fresh:
        assert (fresh.path / "projects" / "x" / "a.txt").read_text() == "alpha\nbob was here\n"
    (x / "from-bob.txt").unlink()
    shutil.rmtree(x / "sub" / "deeper")
    (x / "a.txt").write_text("alpha\n")
    fsck = w.alice.run("fsck", w.vault, "--passphrase-file", w.alice.passfile)
    assert fsck.returncode == 0, fsck.stdout


def _spooled(home: Path, op: str) -> list[Event]:
    """Key events waiting in the spool (no daemon runs in these tests; it would replay them)."""
    events = [decode(line) for seg in sorted((home / "spool").glob("*/*.jsonl"))
              for line in seg.read_bytes().splitlines() if line.strip()]
    return [e for e in events if e.op == op]


def _fail() -> bool:
    raise AssertionError("not yet")


def test_threshold_one_proxy_down_mounts_two_down_fails(w: World) -> None:
    share_id = w.share("/projects/x")  # default threshold: a majority, 2 of 3
    w.proxies[0].stop()
    with live_mount(w.bob, w.vault, w.tmp / "degraded", "--share", share_id, "--identity", "bob") as view:
        assert (view.path / "a.txt").read_text() == "alpha\n"
    w.proxies[1].stop()
    result = w.bob_mount_fails(share_id)
    one_line_error(result, exitcodes.PROXY_UNREACHABLE, "only 1 of 2 proxies reachable")
    assert not os.listdir(w.tmp / "failing")


def test_revoke_then_access_revoked(w: World) -> None:
    share_id = w.share("/projects/x")
    before = (w.vault / ".umbrafs.shares" / f"{share_id}.json").read_bytes()
    w.bob_mount(share_id, "before-revoke").unmount()
    result = w.alice.run("revoke", w.drive / "projects" / "x", "--from", "bob", "--json",
                         "--passphrase-file", w.alice.passfile, "--vault-passphrase-file", w.alice.passfile)
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert [r["id"] for r in reports if r["id"] == share_id] == [share_id]
    mine = next(r for r in reports if r["id"] == share_id)
    assert mine["holds"] and sorted(mine["deleted"]) == sorted(w.urls)
    record = json.loads((w.vault / ".umbrafs.shares" / f"{share_id}.json").read_text())
    assert record["revoked"] is not None
    revoked = [e for e in _spooled(w.alice.home, "revoke") if e.detail["grant"] == share_id]
    assert len(revoked) == 1 and revoked[0].detail["holds"] is True and revoked[0].path == "/projects/x"
    one_line_error(w.bob_mount_fails(share_id), exitcodes.ACCESS_REVOKED, "access revoked")
    # Restoring the old, validly signed record does not bring access back: the proxies refuse.
    (w.vault / ".umbrafs.shares" / f"{share_id}.json").write_bytes(before)
    one_line_error(w.bob_mount_fails(share_id), exitcodes.ACCESS_REVOKED, "access revoked", "revoked at 3 of 3 proxies")
    # The restored record says "active": revoking again finds it, the proxies answer "already".
    again = w.alice.run("revoke", w.drive / "projects" / "x", "--from", "bob",
                        "--passphrase-file", w.alice.passfile, "--vault-passphrase-file", w.alice.passfile)
    assert again.returncode == 0, again.stderr
    assert f"grant {share_id}: deleted at 3 of 3 proxies; revocation holds" in again.stdout.splitlines()
    one_line_error(w.alice.run("revoke", w.drive / "projects" / "x", "--from", "bob",
                               "--passphrase-file", w.alice.passfile, "--vault-passphrase-file", w.alice.passfile),
                   exitcodes.NOT_A_VAULT, "no active share of /projects/x with bob")


def test_revoke_with_a_proxy_down_still_holds(w: World) -> None:
    share_id = w.share("/projects/x")
    w.proxies[2].stop()
    result = w.alice.run("revoke", w.drive / "projects" / "x", "--from", "bob",
                         "--passphrase-file", w.alice.passfile, "--vault-passphrase-file", w.alice.passfile)
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if share_id in l)
    assert "deleted at 2 of 3 proxies" in line and "unreachable: " + w.urls[2] in line and "revocation holds" in line
    w.restore()
    one_line_error(w.bob_mount_fails(share_id), exitcodes.ACCESS_REVOKED, "access revoked")


def test_tampered_record_is_refused(w: World) -> None:
    share_id = w.share("/projects/x")
    path = w.vault / ".umbrafs.shares" / f"{share_id}.json"
    original = path.read_text()
    record = json.loads(original)
    record["read_only"] = False  # bob would like to write
    path.write_text(json.dumps(record))
    one_line_error(w.bob_mount_fails(share_id), exitcodes.DAMAGE, "signature does not verify")
    record = json.loads(original)
    record["target"]["backing_path"] = "."  # point the share at the vault's root
    path.write_text(json.dumps(record))
    one_line_error(w.bob_mount_fails(share_id), exitcodes.DAMAGE, "signature does not verify")
    path.write_text("{not json")
    one_line_error(w.bob_mount_fails(share_id), exitcodes.DAMAGE, "damaged record")
    path.write_text(original)
    w.bob_mount(share_id, "untampered").unmount()


def test_shared_single_file(w: World) -> None:
    share_id = w.share("/projects/x/a.txt")
    with live_mount(w.bob, w.vault, w.tmp / "fileview", "--share", share_id, "--identity", "bob") as view:
        assert os.listdir(view.path) == ["a.txt"]
        assert (view.path / "a.txt").read_text() == "alpha\n"
        assert (view.path / "a.txt").stat().st_size == 6
        with pytest.raises(OSError) as info:
            (view.path / "a.txt").write_text("no")
        assert info.value.errno == errno.EROFS
    result = w.alice.run("share", w.drive / "projects" / "x" / "a.txt", "--with", "bob", *w.proxy_args(),
                         "--read-write", "--passphrase-file", w.alice.passfile,
                         "--vault-passphrase-file", w.alice.passfile)
    one_line_error(result, exitcodes.ERROR, "a shared file is read-only")


def test_shares_lists_records(w: World) -> None:
    share_id = w.share("/projects/x/sub")
    listing = json.loads(w.alice.run("shares", w.drive, "--json", "--passphrase-file", w.alice.passfile, check=True).stdout)
    row = next(r for r in listing if r["id"] == share_id)
    assert row["path"] == "/projects/x/sub" and row["kind"] == "dir" and row["recipient"] == "bob"
    assert row["proxies"] == w.urls and row["threshold"] == 2 and row["read_only"] is True
    assert row["revoked"] is None and row["signature_ok"] is True and row["created"].endswith("Z")
    # Without the vault passphrase (bob, on the vault directory): backing paths only.
    plain = json.loads(w.bob.run("shares", w.vault, "--json", check=True).stdout)
    row = next(r for r in plain if r["id"] == share_id)
    assert row["path"] == row["backing_path"] and "sub" not in row["path"]
    text = w.alice.run("shares", w.drive, "--passphrase-file", w.alice.passfile, check=True).stdout
    assert any(share_id in line and "/projects/x/sub" in line and "2-of-3" in line and "active" in line
               for line in text.splitlines())
    event = next(e for e in _spooled(w.alice.home, "share") if e.detail["grant"] == share_id)
    assert event.path == "/projects/x/sub" and event.detail["recipient"] == bob_fingerprint(w)
    assert event.detail["threshold"] == 2 and event.detail["read_only"] is True


def test_shares_check_tells_a_revocation_by_a_guard(w: World) -> None:
    """A daemon's guard deletes bob's grant at the proxies; the owner's vault record still says
    "active" (only the owner signs it), and `shares --check` tells what the proxies say."""
    from proxy.client import revoke

    share_id = w.share("/projects/x/sub")
    guard = make_identity(w.tmp / "guard-home", "guard")
    for url in w.urls:
        with ProxyClient(url, w.admin) as client:
            client.register(guard.public, "guard", scope=[bob_fingerprint(w)])

    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        return w.alice.run("shares", w.drive, "--check", "--identity-passphrase-file", w.alice.passfile, *extra)

    def row() -> dict:
        result = check("--json")
        assert result.returncode == 0, result.stderr
        return next(r for r in json.loads(result.stdout) if r["id"] == share_id)

    assert row()["at_proxies"]["works"] is True and sorted(row()["at_proxies"]["active"]) == sorted(w.urls)
    w.proxies[2].stop()
    line = next(l for l in check().stdout.splitlines() if share_id in l)
    assert "active (works at the proxies (2 of 3 hold it); 1 unreachable)" in line, line
    w.restore()
    assert revoke(w.urls[:2], guard, share_id, 2).holds
    at = row()["at_proxies"]
    assert at["works"] is False and at["active"] == [w.urls[2]]
    assert {v["by"] for v in at["revoked"].values()} == {guard.fingerprint}
    line = next(l for l in check().stdout.splitlines() if share_id in l)
    assert "NO LONGER WORKS: 1 of 3 proxies hold it, 2 needed" in line
    assert f"revoked at 2 by {guard.fingerprint[:16]}" in line and "`umbrafs revoke PATH --from bob` marks it" in line
    one_line_error(w.bob_mount_fails(share_id), exitcodes.ACCESS_REVOKED, "access revoked")
    # The owner marks it: the proxies answer "already" for two, delete the third.
    done = w.alice.run("revoke", w.drive / "projects" / "x" / "sub", "--from", "bob",
                       "--passphrase-file", w.alice.passfile, "--vault-passphrase-file", w.alice.passfile)
    assert done.returncode == 0, done.stderr
    assert row()["revoked"] is not None and "at_proxies" not in row()  # nothing left to ask


def bob_fingerprint(w: World) -> str:
    return json.loads(w.bob.run("identity", "list", "--json", check=True).stdout)["identities"][0]["fingerprint"]


def test_one_line_errors(w: World) -> None:
    base = ["--passphrase-file", w.alice.passfile, "--vault-passphrase-file", w.alice.passfile]
    x = w.drive / "projects" / "x"
    one_line_error(w.alice.run("share", x, "--with", "bob", *base), exitcodes.GRANT_INVALID, "give at least one --proxy URL")
    one_line_error(w.alice.run("share", x, "--with", "carol", *w.proxy_args(), *base), exitcodes.IDENTITY, "carol")
    one_line_error(w.alice.run("share", w.tmp, "--with", "bob", *w.proxy_args(), *base), exitcodes.MOUNTPOINT,
                   "not inside a mounted umbrafs drive")
    one_line_error(w.alice.run("share", x / "nope", "--with", "bob", *w.proxy_args(), *base), exitcodes.NOT_A_VAULT,
                   "/projects/x/nope: no such file or directory")
    one_line_error(w.alice.run("share", x, "--with", "bob", *w.proxy_args(), "--threshold", "4", *base),
                   exitcodes.GRANT_INVALID, "threshold")
    one_line_error(w.bob_mount_fails("NoSuchShareId"), exitcodes.NOT_A_VAULT, "no share NoSuchShareId")
    one_line_error(w.bob_mount_fails("bad/id"), exitcodes.NOT_A_VAULT, "a share id is")
    # A recipient who has not imported the owner's public identity cannot check the record.
    share_id = w.share("/projects/x")
    (w.tmp / "stranger").mkdir()
    stranger = new_env(w.tmp / "stranger")
    _identity(stranger, "bob")
    mnt = w.tmp / "stranger-mnt"
    mnt.mkdir()
    result = stranger.run("mount", w.vault, mnt, "--share", share_id, "--identity", "bob",
                          "--passphrase-file", stranger.passfile)
    one_line_error(result, exitcodes.IDENTITY, "not among your contacts")
    one_line_error(w.alice.run("revoke", x, "--from", "bob", "--identity", "alice", "--passphrase-file", w.bob.tmp / "none"),
                   exitcodes.USAGE, "cannot read passphrase file")
