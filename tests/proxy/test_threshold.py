"""M-of-N across three real proxy processes: open with one down, fail clearly with two down,
revocation (and when it holds), all-or-nothing grants, restarts keep grants and nonces."""
from __future__ import annotations

import json
import os
import time

import pytest
import umbral_pre

from proxy import api, auth
from proxy.client import ProxyClient, grant, new_grant_id, open_capsule, revoke
from proxy.envelope import Delegation, Sealed, seal
from proxy.errors import AccessRevoked, CapsuleError, GrantError, ProxyUnreachable
from tests.proxy.conftest import Cluster


def share(c: Cluster, threshold: int = 2) -> tuple[str, bytes, Sealed]:
    """Alice seals a random 32-byte key under a fresh delegating key and grants bob M-of-3."""
    key = os.urandom(32)
    sealed, delegation = seal(key)
    assert delegation.open(sealed) == key
    grant_id = new_grant_id()
    report = grant(c.urls, c.alice, c.bob.public, threshold, grant_id, delegation)
    assert report.created == c.urls and report.existing == []
    return grant_id, key, sealed


def bob_opens(c: Cluster, grant_id: str, sealed: Sealed, threshold: int = 2) -> bytes:
    return open_capsule(c.urls, c.bob, c.alice.public, sealed.capsule, sealed.ciphertext, threshold, grant_id,
                        sealed.delegating_pk)


def test_two_of_three_opens_with_one_proxy_down(live: Cluster) -> None:
    grant_id, key, sealed = share(live)
    assert bob_opens(live, grant_id, sealed) == key
    live.proxies[0].kill()
    assert bob_opens(live, grant_id, sealed) == key


def test_two_of_three_fails_clearly_with_two_down(live: Cluster) -> None:
    grant_id, key, sealed = share(live)
    live.proxies[0].kill()
    live.proxies[2].kill()
    with pytest.raises(ProxyUnreachable) as info:
        bob_opens(live, grant_id, sealed)
    message = str(info.value)
    assert message.startswith("only 1 of 2 proxies reachable: ")
    assert live.urls[0] in message and live.urls[2] in message and live.urls[1] not in message
    assert "connection refused" in message


def test_one_cfrag_is_not_enough(live: Cluster) -> None:
    grant_id, _, sealed = share(live)
    capsule = umbral_pre.Capsule.from_bytes(sealed.capsule)
    alice_pk, bob = live.alice.public, live.bob
    delegating = umbral_pre.PublicKey.from_compressed_bytes(sealed.delegating_pk)
    with live.client(bob, 1) as c:
        cfrag = umbral_pre.CapsuleFrag.from_bytes(c.reencrypt(grant_id, sealed.capsule)).verify(
            capsule, alice_pk.verifying_key(), delegating, bob.public.umbral_public_key())
    with pytest.raises(ValueError):
        umbral_pre.decrypt_reencrypted(bob.umbral_sk, delegating, capsule, [cfrag], sealed.ciphertext)


def test_revoke_then_open_says_access_revoked(live: Cluster) -> None:
    grant_id, key, sealed = share(live)
    assert bob_opens(live, grant_id, sealed) == key
    report = revoke(live.urls, live.alice, grant_id, 2)
    assert report.deleted == live.urls and report.holds and report.complete
    assert "revocation holds" in report.summary()
    with pytest.raises(AccessRevoked, match="^access revoked"):
        bob_opens(live, grant_id, sealed)
    again = revoke(live.urls, live.alice, grant_id, 2)
    assert again.already == live.urls and again.deleted == [] and again.holds


def test_revocation_holds_with_one_proxy_unreachable(live: Cluster) -> None:
    grant_id, key, sealed = share(live)
    live.proxies[1].kill()
    report = revoke(live.urls, live.alice, grant_id, 2)
    assert report.deleted == [live.urls[0], live.urls[2]]
    assert report.unreachable == {live.urls[1]: "connection refused"}
    assert report.holds and not report.complete
    assert live.urls[1] in report.summary()
    live.proxies[1].start()  # it still holds its kfrag, but one is not enough
    with pytest.raises(AccessRevoked):
        bob_opens(live, grant_id, sealed)


def test_revocation_does_not_hold_with_two_unreachable(live: Cluster) -> None:
    grant_id, key, sealed = share(live)
    live.proxies[0].kill()
    live.proxies[1].kill()
    report = revoke(live.urls, live.alice, grant_id, 2)
    assert report.deleted == [live.urls[2]] and not report.holds
    assert "does NOT hold" in report.summary()
    live.restore()
    assert bob_opens(live, grant_id, sealed) == key  # the two that kept their kfrags still open it
    assert revoke(live.urls, live.alice, grant_id, 2).holds


def test_only_owner_or_admin_revokes(live: Cluster) -> None:
    grant_id, key, sealed = share(live)
    by_bob = revoke(live.urls, live.bob, grant_id, 2)
    assert not by_bob.holds and set(by_bob.refused) == set(live.urls)
    assert all(r.startswith("403") for r in by_bob.refused.values())
    assert bob_opens(live, grant_id, sealed) == key
    assert revoke(live.urls, live.admin, grant_id, 2).holds


@pytest.mark.parametrize("threshold,proxies", [(0, 3), (4, 3), (-1, 3), (1, 0)])
def test_threshold_is_validated_first(live: Cluster, threshold: int, proxies: int) -> None:
    grant_id = new_grant_id()
    with pytest.raises(GrantError, match="threshold|no proxies"):
        grant(live.urls[:proxies], live.alice, live.bob.public, threshold, grant_id, Delegation.new())
    with live.client(live.admin) as c:
        assert grant_id not in {g["grant_id"] for g in c.list_grants()}


def test_duplicate_proxies_and_bad_grant_ids_are_refused(live: Cluster) -> None:
    with pytest.raises(GrantError, match="twice"):
        grant([live.urls[0], live.urls[0] + "/"], live.alice, live.bob.public, 1, new_grant_id(), Delegation.new())
    with pytest.raises(GrantError, match="grant id"):
        grant(live.urls, live.alice, live.bob.public, 2, "../x", Delegation.new())
    with pytest.raises(GrantError, match="not a proxy URL"):
        grant(["ftp://x"], live.alice, live.bob.public, 1, new_grant_id(), Delegation.new())


def test_grant_is_all_or_nothing(live: Cluster) -> None:
    live.proxies[2].kill()
    grant_id = new_grant_id()
    with pytest.raises(GrantError) as info:
        grant(live.urls, live.alice, live.bob.public, 2, grant_id, Delegation.new())
    assert live.urls[2] in str(info.value) and "withdrawn" in str(info.value)
    for i in (0, 1):
        with live.client(live.alice, i) as c:
            assert c.get_grant(grant_id)["revoked"] is not None
    # A reader is refused by every proxy: nothing is left anywhere.
    with pytest.raises(GrantError, match="owner role"):
        grant(live.urls[:2], live.bob, live.carol.public, 1, new_grant_id(), Delegation.new())


def test_cfrags_are_verified_by_the_recipient(live: Cluster) -> None:
    """Cfrags checked against the wrong owner keys (as if a proxy answered for another grant)
    are rejected one by one, and the error says so."""
    grant_id, key, sealed = share(live)
    with pytest.raises(ProxyUnreachable, match="does not verify"):
        open_capsule(live.urls, live.bob, live.carol.public, sealed.capsule, sealed.ciphertext, 2, grant_id,
                     sealed.delegating_pk)


def test_capsule_and_ciphertext_of_different_shares_fail_clearly(live: Cluster) -> None:
    grant_id, key, sealed = share(live)
    other, _ = seal(os.urandom(32))
    with pytest.raises((CapsuleError, ProxyUnreachable)):
        open_capsule(live.urls, live.bob, live.alice.public, other.capsule, sealed.ciphertext, 2, grant_id,
                     sealed.delegating_pk)
    with pytest.raises(CapsuleError):
        open_capsule(live.urls, live.bob, live.alice.public, b"\x01" * 20, sealed.ciphertext, 2, grant_id,
                     sealed.delegating_pk)


def test_restart_keeps_grants_and_refuses_old_nonces(live: Cluster) -> None:
    grant_id, key, sealed = share(live)
    proxy = live.proxies[0]
    body = json.dumps({"capsule": api.b64(sealed.capsule)}).encode()
    path = f"/v1/grants/{grant_id}/reencrypt"
    headers = auth.sign_request(live.bob, "POST", path, body, time.time())
    with ProxyClient(proxy.url, live.bob) as c:
        assert c.send("POST", path, body, headers=headers, signed=False)[0] == 200
    old_pid = proxy.pid
    assert proxy.stop() == 0  # SIGTERM: clean exit
    assert not proxy.pidfile.exists()
    proxy.start()
    assert proxy.pid != old_pid
    with ProxyClient(proxy.url, live.bob) as c:
        status, obj = c.send("POST", path, body, headers=headers, signed=False)
        assert status == 401 and "replayed" in obj["error"]
        assert c.get_grant(grant_id)["revoked"] is None
    live.proxies[1].kill()
    assert bob_opens(live, grant_id, sealed) == key  # proxy 0 (restarted) and 2 suffice


def test_kept_alive_connection_survives_a_restart(live: Cluster) -> None:
    proxy = live.proxies[2]
    with ProxyClient(proxy.url, live.carol) as c:
        assert c.whoami()["name"] == "carol"
        proxy.stop()
        proxy.start()
        assert c.whoami()["name"] == "carol"  # reconnects once, with a fresh signature
