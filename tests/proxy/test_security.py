"""Security properties of the proxy protocol, against real proxy processes (issue 3, item 6):
tampered capsules and cfrags are rejected and open nothing; a recipient's grant opens no
other share's capsule; every /v1 endpoint refuses unsigned, forged, expired and replayed
requests; a reader can neither revoke nor re-share through the API.

The end-to-end counterparts over real mounts and the CLI are in tests/cli/test_share_security.py.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
import umbral_pre

from proxy import api, auth
from proxy.client import grant, new_grant_id, open_capsule
from proxy.envelope import Sealed, seal
from proxy.errors import CapsuleError, ProxyUnreachable
from proxy.keyring import Identity
from tests.proxy.conftest import Cluster, TamperingProxy
from tests.proxy.test_server import expect_status, grant_body, raw


def _share(urls: list[str], c: Cluster, recipient: Identity, threshold: int = 2) -> tuple[str, bytes, Sealed]:
    key = os.urandom(32)
    sealed, delegation = seal(key)
    grant_id = new_grant_id()
    grant(urls, c.alice, recipient.public, threshold, grant_id, delegation)
    return grant_id, key, sealed


def _open(urls: list[str], c: Cluster, who: Identity, grant_id: str, sealed: Sealed, threshold: int = 2) -> bytes:
    return open_capsule(urls, who, c.alice.public, sealed.capsule, sealed.ciphertext, threshold, grant_id,
                        sealed.delegating_pk)


@pytest.fixture
def evil(live: Cluster) -> Iterator[TamperingProxy]:
    proxy = TamperingProxy(live.urls[0])
    yield proxy
    proxy.close()


# -- (e) tampered cfrags and capsules -----------------------------------------------------------

def test_a_tampered_cfrag_is_rejected_and_never_used(live: Cluster, evil: TamperingProxy) -> None:
    urls = [evil.url, live.urls[1], live.urls[2]]
    grant_id, key, sealed = _share(urls, live, live.bob)  # the kfrag reaches proxy 0 through it, intact
    # 2 of 3: the bad cfrag is refused, a third proxy is asked, the key opens.
    assert _open(urls, live, live.bob, grant_id, sealed) == key
    assert evil.tampered == 1
    # 2 of 2 with the tampering one: nothing is decrypted, and the error names it.
    grant_id, key, sealed = _share(urls[:2], live, live.bob)
    with pytest.raises(ProxyUnreachable) as info:
        _open(urls[:2], live, live.bob, grant_id, sealed)
    assert f"{evil.url} (returned a cfrag that does not verify)" in str(info.value)
    assert evil.tampered == 2
    # The bytes themselves: the honest cfrag verifies, the same with one bit flipped does not.
    capsule = umbral_pre.Capsule.from_bytes(sealed.capsule)
    delegating = umbral_pre.PublicKey.from_compressed_bytes(sealed.delegating_pk)
    with live.client(live.bob, 1) as c:
        good = c.reencrypt(grant_id, sealed.capsule)
    args = (capsule, live.alice.public.verifying_key(), delegating, live.bob.public.umbral_public_key())
    umbral_pre.CapsuleFrag.from_bytes(good).verify(*args)
    for position in range(0, len(good), 7):
        bad = bytearray(good)
        bad[position] ^= 0x80
        with pytest.raises((ValueError, umbral_pre.VerificationError)):
            umbral_pre.CapsuleFrag.from_bytes(bytes(bad)).verify(*args)


def test_a_tampered_capsule_opens_nothing(live: Cluster) -> None:
    grant_id, key, sealed = _share(live.urls, live, live.bob)
    with live.client(live.bob, 1) as c:
        for position in range(len(sealed.capsule)):
            bad = bytearray(sealed.capsule)
            bad[position] ^= 0x04
            tampered = Sealed(bytes(bad), sealed.ciphertext, sealed.delegating_pk)
            with pytest.raises((CapsuleError, ProxyUnreachable)):  # refused before any proxy is asked
                _open(live.urls, live, live.bob, grant_id, tampered)
            # Sent anyway, the proxy refuses it too: a capsule whose proof fails does not parse.
            expect_status(400, c.reencrypt, grant_id, bytes(bad))
    # A tampered ciphertext (the sealed key itself) does not open either.
    bad_ct = bytearray(sealed.ciphertext)
    bad_ct[-1] ^= 0x01
    with pytest.raises(CapsuleError):
        _open(live.urls, live, live.bob, grant_id, Sealed(sealed.capsule, bytes(bad_ct), sealed.delegating_pk))
    assert _open(live.urls, live, live.bob, grant_id, sealed) == key


# -- a grant opens its own share only -----------------------------------------------------------

def test_a_recipient_cannot_open_another_shares_capsule(live: Cluster) -> None:
    """Share records are in the vault, readable by every recipient.  bob brings the capsule of
    alice's share with carol to the proxies under *his* grant: the proxies re-encrypt it (they
    cannot tell), but the cfrags come from bob's share's own delegating key and open nothing."""
    bobs, _, bob_sealed = _share(live.urls, live, live.bob)
    carols, carol_key, carol_sealed = _share(live.urls, live, live.carol)
    for delegating_pk in (bob_sealed.delegating_pk, carol_sealed.delegating_pk):
        swapped = Sealed(carol_sealed.capsule, carol_sealed.ciphertext, delegating_pk)
        with pytest.raises((CapsuleError, ProxyUnreachable)):
            _open(live.urls, live, live.bob, bobs, swapped)
    # By hand, with every cfrag the proxies give bob for carol's capsule: no combination opens it.
    capsule = umbral_pre.Capsule.from_bytes(carol_sealed.capsule)
    cfrags = []
    for i in range(3):
        with live.client(live.bob, i) as c:
            cfrags.append(umbral_pre.CapsuleFrag.from_bytes(c.reencrypt(bobs, carol_sealed.capsule)).skip_verification())
    for delegating_pk in (bob_sealed.delegating_pk, carol_sealed.delegating_pk, live.alice.public.umbral_pk):
        with pytest.raises(ValueError):
            umbral_pre.decrypt_reencrypted(live.bob.umbral_sk, umbral_pre.PublicKey.from_compressed_bytes(delegating_pk),
                                           capsule, cfrags[:2], carol_sealed.ciphertext)
    with live.client(live.bob) as c:  # carol's grant itself is carol's
        expect_status(403, c.reencrypt, carols, carol_sealed.capsule)
    assert _open(live.urls, live, live.carol, carols, carol_sealed) == carol_key


# -- (c) every endpoint authenticates -----------------------------------------------------------

def _endpoints(grant_id: str, capsule: bytes) -> list[tuple[str, str, bytes]]:
    body = json.dumps({"capsule": api.b64(capsule)}).encode()
    return [
        ("GET", "/v1/whoami", b""),
        ("GET", "/v1/users", b""),
        ("POST", "/v1/users", b'{"identity": "x", "role": "reader"}'),
        ("GET", "/v1/grants", b""),
        ("POST", "/v1/grants", b"{}"),
        ("GET", f"/v1/grants/{grant_id}", b""),
        ("DELETE", f"/v1/grants/{grant_id}", b""),
        ("POST", f"/v1/grants/{grant_id}/reencrypt", body),
        ("POST", "/v1/reencrypt", json.dumps({"items": [{"grant_id": grant_id, "capsule": api.b64(capsule)}]}).encode()),
    ]


def test_every_endpoint_refuses_unsigned_forged_expired_and_replayed_requests(live: Cluster) -> None:
    grant_id, key, sealed = _share(live.urls, live, live.bob)
    bob, eve = live.bob, live.eve
    with live.client(bob, 2) as c:
        for method, path, body in _endpoints(grant_id, sealed.capsule):
            assert raw(c, method, path, body, signed=False)[0] == 401, path
            # eve signs, claiming to be bob (his key id, her key)
            forged = auth.sign_request(eve, method, path, body, time.time())
            forged[auth.H_KEY] = bob.fingerprint
            assert raw(c, method, path, body, headers=forged, signed=False)[0] == 401, path
            # bob's own signature, but over another body or path
            other = auth.sign_request(bob, method, path + "x", body, time.time())
            assert raw(c, method, path, body, headers=other, signed=False)[0] == 401, path
            for skew in (-61, 61):  # outside the default 60 s window
                stale = auth.sign_request(bob, method, path, body, time.time() + skew)
                status, obj = raw(c, method, path, body, headers=stale, signed=False)
                assert status == 401 and "away from the proxy's clock" in obj["error"], path
        # Replays: the read-only ones first, then the re-encryptions (the revoke would end the grant).
        for method, path, body in _endpoints(grant_id, sealed.capsule)[-2:] + _endpoints(grant_id, sealed.capsule)[:1]:
            headers = auth.sign_request(bob, method, path, body, time.time())
            first = raw(c, method, path, body, headers=headers, signed=False)[0]
            assert first == 200, path
            status, obj = raw(c, method, path, body, headers=headers, signed=False)
            assert status == 401 and "replayed" in obj["error"], path
    assert _open(live.urls, live, bob, grant_id, sealed) == key  # none of that changed the grant


# -- (d) a reader cannot revoke or re-share ------------------------------------------------------

def test_a_reader_cannot_revoke_or_reshare_through_the_api(live: Cluster) -> None:
    grant_id, key, sealed = _share(live.urls, live, live.bob)
    key_seen_by_bob = _open(live.urls, live, live.bob, grant_id, sealed)
    assert key_seen_by_bob == key
    for i in range(3):
        with live.client(live.bob, i) as c:
            error = expect_status(403, c.revoke, grant_id)
            assert "owner" in error.message
            # Re-sharing: seal the key he opened under a new delegation and grant carol: needs the owner role.
            resealed, delegation = seal(key_seen_by_bob)
            body = grant_body(live.bob, live.carol.public, new_grant_id(), delegation=delegation)
            error = expect_status(403, c.put_grant, body)
            assert "owner role" in error.message
            expect_status(403, c.register, live.carol.public, "owner")  # nor make himself (or anyone) an owner
            listed = c.list_grants(owner=live.alice.fingerprint)
            assert grant_id in {g["grant_id"] for g in listed} and all("kfrag" not in g for g in listed)
    assert _open(live.urls, live, live.bob, grant_id, sealed) == key  # the grant is intact everywhere


def test_plain_http_to_another_host_is_warned_about(caplog) -> None:  # type: ignore[no-untyped-def]
    """Security review, finding 7: kfrags travel in request bodies; on plain http beyond this
    machine they can be kept by an eavesdropper, which undoes revocation."""
    from proxy.client import normalize_url

    with caplog.at_level("WARNING", logger="proxy.client"):
        assert normalize_url("http://127.0.0.1:8700/") == "http://127.0.0.1:8700"
        normalize_url("https://proxy.example.org")
        assert not caplog.records
        normalize_url("http://proxy.example.org:8700")
    assert "plain http" in caplog.text and "use https" in caplog.text
