"""The proxy service over real HTTP: authentication (401), roles (403), bodies (400/413),
grant lifecycle (404/409/410), listings, persistence of its hash-chained record."""
from __future__ import annotations

import json
import os
import secrets
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import umbral_pre

from proxy import api, auth
from proxy.client import ProxyClient, open_capsule
from proxy.envelope import Delegation
from proxy.errors import ProxyRequestError
from proxy.keyring import Identity, PublicIdentity
from proxy.service.store import verify_records
from tests.conftest import Env, new_env
from tests.proxy.conftest import Cluster

from cli import exitcodes


def new_grant_id() -> str:
    return "g" + secrets.token_hex(12)


def grant_body(owner: Identity, recipient: PublicIdentity, grant_id: str, kfrag: bytes | None = None,
               threshold: int = 1, shares: int = 1, delegation: Delegation | None = None,
               **override: Any) -> dict[str, Any]:
    """A grant's body as the client makes it: kfrags from the share's own delegation."""
    delegation = delegation or Delegation.new()
    if kfrag is None:
        kfrag = bytes(umbral_pre.generate_kfrags(delegation.secret_key, recipient.umbral_public_key(), owner.signer,
                                                 threshold, shares, True, True)[0])
    body = {
        "grant_id": grant_id, "owner": owner.fingerprint, "recipient": recipient.fingerprint,
        "delegating_pk": api.b64(delegation.public_bytes), "verifying_pk": api.b64(owner.public.verifying_pk),
        "receiving_pk": api.b64(recipient.umbral_pk), "threshold": threshold, "shares": shares,
        "kfrag": api.b64(kfrag),
    }
    body.update(override)
    return body


def raw(client: ProxyClient, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
        signed: bool = True) -> tuple[int, Any]:
    status, obj = client.send(method, path, body, headers=headers, signed=signed)
    if status >= 400:
        assert isinstance(obj, dict) and isinstance(obj.get("error"), str) and obj["error"], obj
    return status, obj


def expect_status(status: int, fn: Any, *args: Any) -> ProxyRequestError:
    with pytest.raises(ProxyRequestError) as info:
        fn(*args)
    assert info.value.status == status, info.value
    return info.value


# -- public endpoints -----------------------------------------------------------

def test_health_and_openapi(cluster: Cluster) -> None:
    with cluster.client(cluster.alice) as c:
        status, health = raw(c, "GET", "/health", signed=False)
        assert status == 200 and health["status"] == "ok"
        status, doc = raw(c, "GET", "/openapi.json", signed=False)
    assert status == 200 and doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path in ("/v1/users", "/v1/grants", "/v1/grants/{grant_id}", "/v1/grants/{grant_id}/reencrypt"):
        assert path in paths
        for op in paths[path].values():
            assert op["security"] == [{"umbrafsSignature": []}]
            assert "401" in op["responses"] and "403" in op["responses"]
    assert set(paths["/v1/grants/{grant_id}/reencrypt"]["post"]["responses"]) >= {"200", "404", "410"}


def test_database_is_private(cluster: Cluster) -> None:
    db = cluster.proxies[0].db
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_whoami_shows_the_registered_role(cluster: Cluster) -> None:
    for who, role in ((cluster.admin, "admin"), (cluster.alice, "owner"), (cluster.bob, "reader")):
        with cluster.client(who, 1) as c:
            me = c.whoami()
        assert me == {"fingerprint": who.fingerprint, "name": who.name, "role": role}


# -- 401: authentication ------------------------------------------------------------

def test_unsigned_request_is_refused(cluster: Cluster) -> None:
    with cluster.client(cluster.alice) as c:
        status, obj = raw(c, "GET", "/v1/whoami", signed=False)
    assert status == 401 and "not signed" in obj["error"]


def test_forged_signature_is_refused(cluster: Cluster) -> None:
    """Eve signs a request that claims to be alice's."""
    eve, alice = cluster.eve, cluster.alice
    now = int(time.time())
    nonce = secrets.token_urlsafe(18)
    message = auth.signing_message("GET", "/v1/grants", b"", now, nonce, alice.fingerprint)
    headers = {auth.H_KEY: alice.fingerprint, auth.H_TIME: str(now), auth.H_NONCE: nonce,
               auth.H_SIGNATURE: api.b64(eve.sign(message))}
    with cluster.client(alice) as c:
        status, obj = raw(c, "GET", "/v1/grants", headers=headers, signed=False)
    assert status == 401 and "signature does not verify" in obj["error"]


def test_unknown_key_is_refused_like_a_bad_signature(cluster: Cluster) -> None:
    with cluster.client(cluster.eve) as c:
        error = expect_status(401, c.whoami)
    assert "signature does not verify" in error.message


def test_signature_covers_body_path_and_method(cluster: Cluster) -> None:
    alice = cluster.alice
    with cluster.client(alice) as c:
        body = json.dumps(grant_body(alice, cluster.bob.public, new_grant_id()), separators=(",", ":")).encode()
        headers = auth.sign_request(alice, "POST", "/v1/grants", body, time.time())
        altered = body.replace(b'"threshold":1', b'"threshold": 1')
        assert altered != body
        assert raw(c, "POST", "/v1/grants", altered, headers=headers, signed=False)[0] == 401
        headers = auth.sign_request(alice, "GET", "/v1/grants?owner=" + alice.fingerprint, b"", time.time())
        assert raw(c, "GET", "/v1/grants", headers=headers, signed=False)[0] == 401
        headers = auth.sign_request(alice, "GET", "/v1/whoami", b"", time.time())
        assert raw(c, "DELETE", "/v1/whoami", headers=headers, signed=False)[0] == 401


@pytest.mark.parametrize("skew", [-120, 120])
def test_stale_or_future_time_is_refused(cluster: Cluster, skew: int) -> None:
    with ProxyClient(cluster.urls[0], cluster.alice, clock=lambda: time.time() + skew) as c:
        error = expect_status(401, c.whoami)
    assert "proxy's clock" in error.message


def test_small_clock_difference_is_accepted(cluster: Cluster) -> None:
    with ProxyClient(cluster.urls[0], cluster.alice, clock=lambda: time.time() - 30) as c:
        assert c.whoami()["role"] == "owner"


def test_replayed_nonce_is_refused(cluster: Cluster) -> None:
    with cluster.client(cluster.bob) as c:
        headers = auth.sign_request(cluster.bob, "GET", "/v1/whoami", b"", time.time())
        assert raw(c, "GET", "/v1/whoami", headers=headers, signed=False)[0] == 200
        status, obj = raw(c, "GET", "/v1/whoami", headers=headers, signed=False)
    assert status == 401 and "replayed" in obj["error"]


def test_malformed_signature_headers_are_refused(cluster: Cluster) -> None:
    with cluster.client(cluster.bob) as c:
        headers = auth.sign_request(cluster.bob, "GET", "/v1/whoami", b"", time.time())
        for name, value in ((auth.H_SIGNATURE, "not base64!"), (auth.H_NONCE, "short"),
                            (auth.H_TIME, "yesterday"), (auth.H_KEY, "ABC")):
            status, obj = raw(c, "GET", "/v1/whoami", headers={**headers, name: value}, signed=False)
            assert status == 401, (name, obj)


# -- 403: roles ------------------------------------------------------------------------

def test_only_admins_register_users(cluster: Cluster) -> None:
    for who in (cluster.alice, cluster.bob):
        with cluster.client(who) as c:
            error = expect_status(403, c.register, cluster.eve.public, "admin")
        assert "admin role" in error.message
    with cluster.client(cluster.bob) as c:
        expect_status(403, c.users)
    with cluster.client(cluster.eve) as c:
        expect_status(401, c.whoami)  # still not registered


def test_reader_cannot_store_grants(cluster: Cluster) -> None:
    bob = cluster.bob
    with cluster.client(bob) as c:
        error = expect_status(403, c.put_grant, grant_body(bob, cluster.carol.public, new_grant_id()))
    assert "owner role" in error.message


def test_owner_cannot_store_a_grant_in_anothers_name(cluster: Cluster) -> None:
    body = {**grant_body(cluster.alice, cluster.bob.public, new_grant_id()), "owner": cluster.carol.fingerprint}
    with cluster.client(cluster.alice) as c:
        expect_status(403, c.put_grant, body)


# -- 400 / 413: bodies ---------------------------------------------------------------------

def test_malformed_bodies_get_a_json_400(cluster: Cluster) -> None:
    alice, bob = cluster.alice, cluster.bob
    good = grant_body(alice, bob.public, new_grant_id())
    with cluster.client(alice) as c:
        assert raw(c, "POST", "/v1/grants", b"{not json")[0] == 400
        assert raw(c, "POST", "/v1/grants", b"[1, 2]")[0] == 400
        for bad in (
            {k: v for k, v in good.items() if k != "kfrag"},
            {**good, "threshold": "1"},
            {**good, "threshold": 2, "shares": 1},
            {**good, "grant_id": "../../etc"},
            {**good, "delegating_pk": api.b64(b"\x02" * 10)},
            {**good, "kfrag": "%%%"},
            {**good, "recipient": cluster.eve.fingerprint},           # not registered here
            {**good, "receiving_pk": api.b64(cluster.carol.public.umbral_pk)},  # not bob's key
        ):
            error = expect_status(400, c.put_grant, bad)
            assert "Traceback" not in error.message
    with cluster.client(cluster.admin) as c:
        expect_status(400, c.call, "POST", "/v1/users", {"identity": "hello", "role": "reader"})
        expect_status(400, c.call, "POST", "/v1/users", {"identity": bob.public.to_text(), "role": "root"})
        tampered = bob.public.to_text().replace(api.b64(bob.public.umbral_pk), api.b64(cluster.eve.public.umbral_pk))
        error = expect_status(400, c.call, "POST", "/v1/users", {"identity": tampered, "role": "reader"})
        assert "fingerprint" in error.message


def test_kfrag_that_fails_verification_is_not_stored(cluster: Cluster) -> None:
    alice, bob, carol, eve = cluster.alice, cluster.bob, cluster.carol, cluster.eve
    grant_id = new_grant_id()
    d = Delegation.new()
    # Signed by eve's signer while claiming alice's verifying key; made for carol while naming bob;
    # from another delegating key than the one named.
    by_eve = bytes(umbral_pre.generate_kfrags(d.secret_key, bob.public.umbral_public_key(), eve.signer, 1, 1, True, True)[0])
    for_carol = bytes(umbral_pre.generate_kfrags(d.secret_key, carol.public.umbral_public_key(), alice.signer, 1, 1, True, True)[0])
    other_key = bytes(umbral_pre.generate_kfrags(Delegation.new().secret_key, bob.public.umbral_public_key(),
                                                 alice.signer, 1, 1, True, True)[0])
    with cluster.client(alice) as c:
        for kfrag in (by_eve, for_carol, other_key, os.urandom(310)):
            error = expect_status(400, c.put_grant, grant_body(alice, bob.public, grant_id, kfrag=kfrag, delegation=d))
            assert "kfrag does not verify" in error.message
        assert all(g["grant_id"] != grant_id for g in c.list_grants())
    with cluster.client(bob) as c:
        expect_status(404, c.reencrypt, grant_id, d.seal(b"k" * 32).capsule)


def test_grants_must_delegate_from_a_key_of_their_own(cluster: Cluster) -> None:
    """A kfrag from the owner identity's Umbral key would re-encrypt every capsule ever sealed
    for the owner (any other share's capsule a recipient finds in the vault): refused.  So is a
    delegating key that another grant uses already."""
    alice, bob = cluster.alice, cluster.bob
    from_identity = bytes(umbral_pre.generate_kfrags(alice.umbral_sk, bob.public.umbral_public_key(), alice.signer,
                                                     1, 1, True, True)[0])
    body = grant_body(alice, bob.public, new_grant_id(), kfrag=from_identity,
                      delegating_pk=api.b64(alice.public.umbral_pk))
    with cluster.client(alice) as c:
        error = expect_status(400, c.put_grant, body)
        assert "not the owner's identity key" in error.message
        d = Delegation.new()
        c.put_grant(grant_body(alice, bob.public, new_grant_id(), delegation=d))
        error = expect_status(409, c.put_grant, grant_body(alice, cluster.carol.public, new_grant_id(), delegation=d))
        assert "already used by another grant" in error.message


def test_body_size_limit(cluster: Cluster) -> None:
    with cluster.client(cluster.alice) as c:
        status, obj = raw(c, "POST", "/v1/grants", b"x" * (api.MAX_BODY + 1))
    assert status == 413 and obj["error"]


def test_unknown_route_and_bad_grant_id(cluster: Cluster) -> None:
    with cluster.client(cluster.bob) as c:
        assert raw(c, "GET", "/v1/nothing-here")[0] == 404
        assert raw(c, "GET", "/v1/nothing-here", signed=False)[0] == 401  # no probing without a key
        assert raw(c, "POST", "/v1/grants/a.b.c.d.e.f/reencrypt", b"{}")[0] == 400


# -- the grant lifecycle ----------------------------------------------------------------------

def test_grant_reencrypt_revoke(cluster: Cluster) -> None:
    alice, bob, carol = cluster.alice, cluster.bob, cluster.carol
    grant_id = new_grant_id()
    key = os.urandom(32)
    d = Delegation.new()
    sealed = d.seal(key)
    body = grant_body(alice, bob.public, grant_id, delegation=d)
    url = cluster.urls[0]
    with cluster.client(alice) as c:
        status, _ = c.send("POST", "/v1/grants", json.dumps(body).encode())
        assert status == 201
        status, _ = c.send("POST", "/v1/grants", json.dumps(body).encode())
        assert status == 200  # a retry of the same grant
        other = grant_body(alice, bob.public, grant_id, delegation=d)  # same id, another kfrag
        expect_status(409, c.put_grant, other)
        expect_status(403, c.reencrypt, grant_id, sealed.capsule)  # the owner is not the recipient
    with cluster.client(carol) as c:
        expect_status(403, c.reencrypt, grant_id, sealed.capsule)
        expect_status(403, c.revoke, grant_id)
        expect_status(403, c.get_grant, grant_id)
    with cluster.client(bob) as c:
        expect_status(404, c.reencrypt, new_grant_id(), sealed.capsule)
        expect_status(400, c.reencrypt, grant_id, b"\x00" * 105)  # not a capsule
        cfrag = umbral_pre.CapsuleFrag.from_bytes(c.reencrypt(grant_id, sealed.capsule))
        expect_status(403, c.revoke, grant_id)  # a reader cannot revoke
        assert c.get_grant(grant_id)["recipient"] == bob.fingerprint
    capsule = umbral_pre.Capsule.from_bytes(sealed.capsule)
    verified = cfrag.verify(capsule, alice.public.verifying_key(), d.public_key, bob.public.umbral_public_key())
    assert umbral_pre.decrypt_reencrypted(bob.umbral_sk, d.public_key, capsule, [verified], sealed.ciphertext) == key
    assert open_capsule([url], bob, alice.public, sealed.capsule, sealed.ciphertext, 1, grant_id,
                        sealed.delegating_pk) == key
    with cluster.client(alice) as c:
        assert c.revoke(grant_id) == {"grant_id": grant_id, "revoked": True, "already": False}
        assert c.revoke(grant_id) == {"grant_id": grant_id, "revoked": True, "already": True}
        expect_status(409, c.put_grant, body)  # a revoked id is not reused
    with cluster.client(bob) as c:
        error = expect_status(410, c.reencrypt, grant_id, sealed.capsule)
    assert "revoked" in error.message
    with cluster.client(cluster.admin) as c:
        expect_status(404, c.revoke, new_grant_id())


def test_admin_revokes_any_grant(cluster: Cluster) -> None:
    grant_id = new_grant_id()
    with cluster.client(cluster.alice, 1) as c:
        c.put_grant(grant_body(cluster.alice, cluster.carol.public, grant_id))
    with cluster.client(cluster.admin, 1) as c:
        assert c.revoke(grant_id)["already"] is False
        assert c.get_grant(grant_id)["revoked_by"] == cluster.admin.fingerprint


def test_grant_listings_follow_roles(cluster: Cluster) -> None:
    alice, bob, carol = cluster.alice, cluster.bob, cluster.carol
    to_bob, to_carol = new_grant_id(), new_grant_id()
    with cluster.client(alice, 2) as c:
        c.put_grant(grant_body(alice, bob.public, to_bob))
        c.put_grant(grant_body(alice, carol.public, to_carol))
        c.revoke(to_carol)
        mine = {g["grant_id"] for g in c.list_grants()}
        assert {to_bob, to_carol} <= mine
        active = {g["grant_id"] for g in c.list_grants(active=True)}
        assert to_bob in active and to_carol not in active
    with cluster.client(bob, 2) as c:
        seen = c.list_grants()
        assert {g["grant_id"] for g in seen} >= {to_bob} and to_carol not in {g["grant_id"] for g in seen}
        assert all(g["recipient"] == bob.fingerprint for g in seen)
        assert "kfrag" not in seen[0]
    with cluster.client(carol, 2) as c:
        assert all(g["recipient"] == carol.fingerprint for g in c.list_grants())
    with cluster.client(cluster.admin, 2) as c:
        everything = {g["grant_id"] for g in c.list_grants()}
        assert {to_bob, to_carol} <= everything
        only_carol = c.list_grants(recipient=carol.fingerprint)
        assert {g["grant_id"] for g in only_carol} >= {to_carol} and to_bob not in {g["grant_id"] for g in only_carol}


# -- the proxy's record -----------------------------------------------------------------------

def _snapshot(db: Path, dest: Path) -> Path:
    """A consistent copy of a live WAL database (the sqlite backup API)."""
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    out = sqlite3.connect(dest)
    try:
        src.backup(out)
    finally:
        src.close()
        out.close()
    return dest


def test_record_chain_verifies_and_names_a_tampered_row(cluster: Cluster, tmp_path: Path) -> None:
    env: Env = new_env(tmp_path)
    db = _snapshot(cluster.proxies[0].db, tmp_path / "copy.db")
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT seq, op, detail FROM records ORDER BY seq").fetchall()
    ops = {op for _, op, _ in rows}
    assert {"register", "grant", "reencrypt", "revoke"} <= ops
    # Nothing secret in it: no kfrag or capsule, only names, roles, counts and hash prefixes.
    allowed = {"name", "role", "owner", "recipient", "threshold", "shares", "kfrag_sha256", "capsule_sha256"}
    for _, _, detail in rows:
        assert set(json.loads(detail)) <= allowed and len(detail) < 300
    # Revocation deletes the kfrag itself, not just a flag.
    revoked = conn.execute("SELECT count(*), count(kfrag) FROM grants WHERE revoked_ns IS NOT NULL").fetchone()
    assert revoked[0] > 0 and revoked[1] == 0
    result = env.run("proxy", "verify-log", "--db", db)
    assert result.returncode == 0, result.stderr
    assert f"{len(rows)} rows" in result.stdout
    # The table refuses updates; someone with the file drops the trigger and edits a row anyway.
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE records SET actor = 'x' WHERE seq = 2")
    victim = next(seq for seq, op, _ in rows if op == "grant")
    conn.execute("DROP TRIGGER records_no_update")
    conn.execute("UPDATE records SET detail = replace(detail, '\"threshold\":1', '\"threshold\":2') WHERE seq = ?", (victim,))
    conn.commit()
    conn.close()
    result = env.run("proxy", "verify-log", "--db", db)
    assert result.returncode == exitcodes.LEDGER_INVALID, result
    assert f"record {victim} (grant" in result.stderr and "altered" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_record_chain_names_a_deleted_row(cluster: Cluster, tmp_path: Path) -> None:
    db = _snapshot(cluster.proxies[1].db, tmp_path / "copy.db")
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER records_no_delete")
    conn.execute("DELETE FROM records WHERE seq = 3")
    conn.commit()
    conn.close()
    result = new_env(tmp_path).run("proxy", "verify-log", "--db", db)
    assert result.returncode == exitcodes.LEDGER_INVALID
    assert "record 4" in result.stderr and "expected record 3" in result.stderr


# -- the `umbrafs proxy` commands ------------------------------------------------------------

def test_proxy_cli_register_list_revoke(cluster: Cluster, tmp_path: Path) -> None:
    env = new_env(tmp_path)
    env.home = cluster.root / "home"  # where the cluster's identities live
    url = cluster.urls[1]
    result = env.run("proxy", "register", url, "eve", "--role", "reader", "--identity", "alice",
                     "--passphrase-file", env.passfile)
    assert result.returncode == exitcodes.PROXY_REFUSED and "403" in result.stderr
    result = env.run("proxy", "register", url, "eve", "--role", "reader", "--identity", "admin",
                     "--passphrase-file", env.passfile, check=True)
    assert result.stdout.startswith(f"eve ({cluster.eve.fingerprint[:16]}) is reader at {url}")
    with cluster.client(cluster.eve, 1) as c:
        assert c.whoami()["role"] == "reader"
    grant_id = new_grant_id()
    with cluster.client(cluster.alice, 1) as c:
        c.put_grant(grant_body(cluster.alice, cluster.eve.public, grant_id))
    listed = env.run("proxy", "grants", url, "--identity", "eve", "--passphrase-file", env.passfile, check=True)
    assert grant_id in listed.stdout and "1-of-1  active" in listed.stdout
    result = env.run("proxy", "revoke", grant_id, "--proxy", url, "--threshold", "1", "--identity", "alice",
                     "--passphrase-file", env.passfile, check=True)
    assert "deleted at 1 of 1 proxies" in result.stdout and "revocation holds" in result.stdout
    as_json = json.loads(env.run("proxy", "grants", url, "--identity", "eve", "--json",
                                 "--passphrase-file", env.passfile, check=True).stdout)
    assert [g["revoked"] is not None for g in as_json if g["grant_id"] == grant_id] == [True]
    # 1-of-2 with one proxy unreachable: one deletion is not N-M+1 = 2, so it does not hold (exit 31).
    result = env.run("proxy", "revoke", grant_id, "--proxy", url, "--proxy", "http://127.0.0.1:9",
                     "--threshold", "1", "--identity", "alice", "--passphrase-file", env.passfile)
    assert result.returncode == exitcodes.PROXY_UNREACHABLE, result
    assert "unreachable: http://127.0.0.1:9 (connection refused)" in result.stdout
    assert "does NOT hold yet (needs 2)" in result.stdout
    result = env.run("proxy", "grants", "http://127.0.0.1:9", "--identity", "eve", "--passphrase-file", env.passfile)
    assert result.returncode == exitcodes.PROXY_UNREACHABLE and "unreachable (connection refused)" in result.stderr


def test_serve_mistakes_are_one_line(cluster: Cluster, tmp_path: Path) -> None:
    env = new_env(tmp_path)
    busy = cluster.proxies[0]
    result = env.run("proxy", "serve", "--port", str(busy.port), "--db", tmp_path / "p.db",
                     "--admin", busy.admin_file, timeout=30)
    assert result.returncode == exitcodes.ERROR
    assert result.stderr.strip().splitlines()[-1].startswith(f"umbrafs: cannot listen on 127.0.0.1:{busy.port}")
    assert "Traceback" not in result.stderr
    bad = tmp_path / "bad.pub"
    bad.write_text("hello\n")
    result = env.run("proxy", "serve", "--port", "0", "--db", tmp_path / "p.db", "--admin", bad, timeout=30)
    assert result.returncode == exitcodes.IDENTITY and f"--admin {bad}" in result.stderr
    result = env.run("proxy", "serve", "--port", "0", "--db", busy.db, timeout=30)
    assert result.returncode == exitcodes.ERROR and "another proxy process uses this database" in result.stderr
    result = env.run("proxy", "serve", "--port", "0", "--db", "/proc/nope/p.db", timeout=30)
    assert result.returncode == exitcodes.ERROR and "cannot open the proxy database" in result.stderr
    notdb = tmp_path / "not.db"
    notdb.write_bytes(b"this is not sqlite" * 100)
    result = env.run("proxy", "serve", "--port", "0", "--db", notdb, timeout=30)
    assert result.returncode == exitcodes.ERROR and "not a usable proxy database" in result.stderr
    assert "Traceback" not in result.stderr


# -- batches and the group commit ---------------------------------------------------------------

def _granted(cluster: Cluster, recipient: Identity, index: int = 0) -> tuple[str, Delegation, bytes]:
    """A 1-of-1 grant alice → recipient at proxy *index*: (id, delegation, sealed key)."""
    d = Delegation.new()
    grant_id = new_grant_id()
    with cluster.client(cluster.alice, index) as c:
        c.put_grant(grant_body(cluster.alice, recipient.public, grant_id, delegation=d))
    return grant_id, d, os.urandom(32)


def _reencrypt_rows(db: Path, grant_id: str) -> list[int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [seq for (seq,) in conn.execute(
            "SELECT seq FROM records WHERE op = 'reencrypt' AND subject = ? ORDER BY seq", (grant_id,))]
    finally:
        conn.close()


def test_batch_reencrypt_answers_each_item(cluster: Cluster) -> None:
    alice, bob, carol = cluster.alice, cluster.bob, cluster.carol
    (g1, d1, k1), (g2, d2, k2), (gone, d3, _) = (_granted(cluster, bob) for _ in range(3))
    not_mine, d4, _ = _granted(cluster, carol)
    s1, s2, s3, s4 = d1.seal(k1), d2.seal(k2), d3.seal(b"x" * 32), d4.seal(b"y" * 32)
    with cluster.client(alice) as c:
        c.revoke(gone)
    db = cluster.proxies[0].db
    with cluster.client(bob) as c:
        results = c.reencrypt_many([(g1, s1.capsule), (g2, s2.capsule), (gone, s3.capsule), (not_mine, s4.capsule),
                                    (new_grant_id(), s1.capsule), (g1, b"\x00" * 105)])
        assert [r.status if isinstance(r, Exception) else 200 for r in results] == [200, 200, 410, 403, 404, 400]
        for (grant_id, d, key, sealed), cfrag in zip(((g1, d1, k1, s1), (g2, d2, k2, s2)), results):
            capsule = umbral_pre.Capsule.from_bytes(sealed.capsule)
            verified = umbral_pre.CapsuleFrag.from_bytes(cfrag).verify(  # type: ignore[arg-type]
                capsule, alice.public.verifying_key(), d.public_key, bob.public.umbral_public_key())
            assert umbral_pre.decrypt_reencrypted(bob.umbral_sk, d.public_key, capsule, [verified],
                                                  sealed.ciphertext) == key
            assert len(_reencrypt_rows(db, grant_id)) == 1  # one record row per cfrag handed out
        assert _reencrypt_rows(db, gone) == [] and _reencrypt_rows(db, not_mine) == []
        for bad in (b'{"items": []}', json.dumps({"items": [{"grant_id": g1, "capsule": api.b64(s1.capsule)}]
                                                            * (api.MAX_BATCH + 1)}).encode(), b'{"items": 3}'):
            assert raw(c, "POST", "/v1/reencrypt", bad)[0] == 400
        # One signature and one nonce for the whole batch: replaying it is refused like any request.
        body = json.dumps({"items": [{"grant_id": g1, "capsule": api.b64(s1.capsule)}]}).encode()
        headers = auth.sign_request(bob, "POST", "/v1/reencrypt", body, time.time())
        assert raw(c, "POST", "/v1/reencrypt", body, headers=headers, signed=False)[0] == 200
        status, obj = raw(c, "POST", "/v1/reencrypt", body, headers=headers, signed=False)
        assert status == 401 and "replayed" in obj["error"]
    with cluster.client(carol) as c:  # someone else's grants in a batch: 403 item by item
        assert [r.status for r in c.reencrypt_many([(g1, s1.capsule)])] == [403]  # type: ignore[union-attr]
    assert verify_records(db).rows > 0


def test_group_commit_records_every_cfrag_before_a_revocation_wins(cluster: Cluster) -> None:
    """Many concurrent re-encryptions while the grant is revoked: every cfrag that left the proxy
    has its record row, committed before the revocation's row; none is answered after it."""
    grant_id, d, key = _granted(cluster, cluster.bob, 1)
    capsule = d.seal(key).capsule
    answers: list[int] = []
    revoked = threading.Event()

    def hammer() -> None:
        with cluster.client(cluster.bob, 1) as c:
            for _ in range(40):
                sent_after_revoke = revoked.is_set()
                try:
                    c.reencrypt(grant_id, capsule)
                    answers.append(-1 if sent_after_revoke else 200)  # -1: served after the revocation
                except ProxyRequestError as exc:
                    answers.append(exc.status)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    with cluster.client(cluster.alice, 1) as c:
        assert c.revoke(grant_id)["already"] is False
    revoked.set()
    for t in threads:
        t.join()
    assert -1 not in answers and set(answers) <= {200, 410} and 410 in answers, answers
    db = cluster.proxies[1].db
    rows = _reencrypt_rows(db, grant_id)
    assert len(rows) == answers.count(200)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    (revoke_seq,) = conn.execute("SELECT seq FROM records WHERE op = 'revoke' AND subject = ?", (grant_id,)).fetchone()
    conn.close()
    assert all(seq < revoke_seq for seq in rows)
    assert verify_records(db).rows >= revoke_seq
