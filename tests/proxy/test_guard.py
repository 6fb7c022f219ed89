"""The guard role over real proxy processes: an admin registers a key as a guard of some
recipients; it may revoke their grants and nothing else (403), with any request signer."""
from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from proxy import api
from proxy.service import store as store_mod
from proxy.auth import KeySigner
from proxy.client import grant, new_grant_id, open_capsule, revoke, revoke_recipient
from proxy.envelope import Sealed, seal
from proxy.errors import AccessRevoked
from proxy.keyring import Identity
from tests.conftest import new_env
from tests.proxy.conftest import Cluster, make_identity
from tests.proxy.test_server import expect_status, grant_body, raw

from cli import exitcodes


@pytest.fixture(scope="module")
def guard(cluster: Cluster) -> Identity:
    """A guard of bob's grants at every proxy."""
    g = make_identity(cluster.root / "home", "guard")
    for i in range(len(cluster.proxies)):
        with cluster.client(cluster.admin, i) as admin:
            user = admin.register(g.public, "guard", [cluster.bob.fingerprint])
        assert user == {"fingerprint": g.fingerprint, "name": "guard", "role": "guard",
                        "scope": [cluster.bob.fingerprint]}
    return g


def _share(c: Cluster, recipient: Identity) -> tuple[str, Sealed]:
    sealed, delegation = seal(b"k" * 32)
    grant_id = new_grant_id()
    grant(c.urls, c.alice, recipient.public, 2, grant_id, delegation)
    return grant_id, sealed


def _open(c: Cluster, who: Identity, grant_id: str, sealed: Sealed) -> bytes:
    return open_capsule(c.urls, who, c.alice.public, sealed.capsule, sealed.ciphertext, 2, grant_id,
                        sealed.delegating_pk)


def test_guard_revokes_grants_in_its_scope_only(cluster: Cluster, guard: Identity) -> None:
    bobs, bob_sealed = _share(cluster, cluster.bob)
    carols, carol_sealed = _share(cluster, cluster.carol)
    signer = KeySigner(guard.fingerprint, guard.ed25519_sk)  # no Umbral keys needed to revoke
    report = revoke(cluster.urls, signer, carols, 2)
    assert not report.holds and report.deleted == [] and set(report.refused) == set(cluster.urls)
    assert all(r.startswith("403 ") for r in report.refused.values())
    assert _open(cluster, cluster.carol, carols, carol_sealed) == b"k" * 32
    report = revoke(cluster.urls, signer, bobs, 2)
    assert report.holds and report.deleted == cluster.urls
    with pytest.raises(AccessRevoked):
        _open(cluster, cluster.bob, bobs, bob_sealed)
    # The proxy's record names the guard as the revoker, and says it acted as a guard.
    rows = sqlite3.connect(cluster.proxies[0].db).execute(
        "SELECT actor, detail FROM records WHERE op = 'revoke' AND subject = ?", (bobs,)).fetchall()
    assert rows == [(guard.fingerprint, json.dumps({"role": "guard"}, separators=(",", ":")))]


def test_guard_may_do_nothing_else(cluster: Cluster, guard: Identity) -> None:
    bobs, sealed = _share(cluster, cluster.bob)
    carols, _ = _share(cluster, cluster.carol)
    capsule = sealed.capsule
    with cluster.client(guard) as g:
        assert g.whoami() == {"fingerprint": guard.fingerprint, "name": "guard", "role": "guard",
                              "scope": [cluster.bob.fingerprint]}
        listed = {x["grant_id"] for x in g.list_grants()}
        assert bobs in listed and carols not in listed
        assert {x["recipient"] for x in g.list_grants()} == {cluster.bob.fingerprint}
        assert g.get_grant(bobs)["recipient"] == cluster.bob.fingerprint
        expect_status(403, g.get_grant, carols)
        expect_status(403, g.reencrypt, bobs, capsule)          # in scope, still not the recipient
        expect_status(403, g.put_grant, grant_body(guard, cluster.bob.public, new_grant_id()))
        expect_status(403, g.register, cluster.eve.public, "reader")
        expect_status(403, g.register, guard.public, "guard", ["*"])  # cannot widen its own scope
        expect_status(403, g.users)
    # bob's own grants still work after all that: the guard changed nothing.
    with cluster.client(cluster.bob) as b:
        assert b.reencrypt(bobs, capsule)


def test_guard_of_everyone_and_revoke_recipient(cluster: Cluster) -> None:
    wide = make_identity(cluster.root / "home", "guard-all")
    for i in range(len(cluster.proxies)):
        with cluster.client(cluster.admin, i) as admin:
            assert admin.register(wide.public, "guard", ["*"])["scope"] == ["*"]
    first, _ = _share(cluster, cluster.carol)
    second, second_sealed = _share(cluster, cluster.carol)
    reports = revoke_recipient(cluster.urls, KeySigner(wide.fingerprint, wide.ed25519_sk), cluster.carol.fingerprint)
    assert {r.grant_id for r in reports} >= {first, second}
    assert all(r.holds and set(r.deleted) == set(cluster.urls) for r in reports)
    with pytest.raises(AccessRevoked):
        _open(cluster, cluster.carol, second, second_sealed)
    assert revoke_recipient(cluster.urls, wide, cluster.carol.fingerprint) == []  # nothing active is left


def test_registration_checks_the_scope(cluster: Cluster, guard: Identity) -> None:
    someone = make_identity(cluster.root / "home", "someone")
    with cluster.client(cluster.admin) as admin:
        for role, scope in (("guard", None), ("guard", []), ("guard", ["bob"]), ("guard", ["*", "0" * 64]),
                            ("reader", [cluster.bob.fingerprint])):
            body = {"identity": someone.public.to_text(), "role": role}
            if scope is not None:
                body["scope"] = scope
            status, obj = raw(admin, "POST", "/v1/users", json.dumps(body).encode())
            assert status == 400 and "scope" in obj["error"], (role, scope, obj)
        doc = raw(admin, "GET", "/openapi.json", signed=False)[1]
    register = doc["components"]["schemas"]["RegisterRequest"]["properties"]
    assert "guard" in register["role"]["enum"] and register["scope"]["type"] == "array"
    assert "guard" in doc["paths"]["/v1/grants/{grant_id}"]["delete"]["summary"]
    # The record keeps the scope of every guard registration.
    details = [json.loads(d) for (d,) in sqlite3.connect(cluster.proxies[0].db).execute(
        "SELECT detail FROM records WHERE op = 'register'")]
    assert {"name": "guard", "role": "guard", "scope": cluster.bob.fingerprint} in details


def test_cli_registers_a_guard_at_several_proxies(cluster: Cluster, tmp_path: Path) -> None:
    env = new_env(tmp_path)
    env.home = cluster.root / "home"
    cli_guard = make_identity(tmp_path / "daemon-home", "daemon-guard")
    keyfile = tmp_path / "guard.pub"
    keyfile.write_text(cli_guard.public.to_text())
    args = ["proxy", "register", keyfile, "--role", "guard", "--scope", "bob", "--scope", cluster.carol.fingerprint,
            "--proxy", cluster.urls[1], "--proxy", cluster.urls[2], "--identity", "admin", "--passphrase-file", env.passfile]
    result = env.run(*args, check=True)
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"daemon-guard ({cli_guard.fingerprint[:16]}) is guard for ")
                                   for line in lines), lines
    for i in (1, 2):
        with cluster.client(cli_guard, i) as g:
            assert g.whoami()["scope"] == sorted([cluster.bob.fingerprint, cluster.carol.fingerprint])
    with cluster.client(cli_guard, 0) as g:
        expect_status(401, g.whoami)  # not registered at proxy 0 yet
    result = env.run("proxy", "register", cluster.urls[0], keyfile.absolute(), "--role", "guard", "--scope", "*",
                     "--identity", "admin", "--passphrase-file", env.passfile, check=True)  # URL positional
    assert result.stdout.strip() == f"daemon-guard ({cli_guard.fingerprint[:16]}) is guard for * at {cluster.urls[0]}"
    with cluster.client(cli_guard, 0) as g:
        assert g.whoami()["scope"] == ["*"]
    for bad in (["--role", "guard"], ["--role", "reader", "--scope", "bob"], ["--role", "guard", "--scope", "*",
                                                                              "--scope", "bob"]):
        result = env.run("proxy", "register", cluster.urls[1], keyfile, *bad, "--identity", "admin",
                         "--passphrase-file", env.passfile)
        assert result.returncode == 2 and "--scope" in result.stderr, result
    result = env.run("proxy", "register", cluster.urls[1], keyfile, "--role", "guard", "--scope", "nobody",
                     "--identity", "admin", "--passphrase-file", env.passfile)
    assert result.returncode == exitcodes.IDENTITY and "nobody" in result.stderr


def test_schema_1_database_gains_the_guard_role(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(store_mod._SCHEMA.replace("'admin', 'guard'", "'admin'")
                       .replace(",\n    scope TEXT NOT NULL DEFAULT ''", "")
                       .replace("-- a guard's recipients: comma-separated fingerprints, or '*'", ""))
    conn.execute("INSERT INTO meta VALUES ('schema', '1')")
    conn.execute("INSERT INTO users (fingerprint, name, role, umbral_pk, verifying_pk, ed25519_pk, created_ns, "
                 "updated_ns) VALUES (?, 'old', 'owner', x'01', x'02', x'03', 1, 1)", ("a" * 64,))
    conn.commit()
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE users SET role = 'guard'")
    conn.close()

    async def migrate() -> tuple[store_mod.User | None, str]:
        s = await store_mod.Store.open(db)
        try:
            old = s.user("a" * 64)
            await s.put_user(store_mod.User("b" * 64, "g", "guard", b"1", b"2", b"3", ("a" * 64,)), "test")
        finally:
            await s.close()
        s = await store_mod.Store.open(db)
        try:
            g = s.user("b" * 64)
            assert g is not None and g.scope == ("a" * 64,) and g.guards("a" * 64) and not g.guards("c" * 64)
            assert not g.has_role("reader")
        finally:
            await s.close()
        return old, sqlite3.connect(db).execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]

    old, version = asyncio.run(migrate())
    assert old == store_mod.User("a" * 64, "old", "owner", b"\x01", b"\x02", b"\x03")
    assert version == str(store_mod.SCHEMA_VERSION) == "2"
    assert api.field_scope({"scope": ["*"]}) == ("*",)
