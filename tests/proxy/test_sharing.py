"""proxy.sharing without the CLI: create, open and revoke a share against real proxies on 127.0.0.1.

The vault side is stood in for by a plain directory (share records are all the use cases write
into a vault) and a target object with keywalk.Target's fields.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy import keyring, shares, sharing
from proxy.errors import AccessRevoked, GrantError, NoSuchShare, ShareError
from tests.proxy.conftest import SECRET, Cluster


@dataclass
class FakeTarget:
    kind: str
    backing_rel: str
    obj_id: bytes
    key: bytes
    name: bytes


def _target(kind: str = "dir") -> FakeTarget:
    return FakeTarget(kind, "AAAA/BBBB", os.urandom(16), os.urandom(shares.KEY_LEN), b"projects")


def test_threshold_defaults_to_a_majority_and_is_checked() -> None:
    assert sharing.threshold_for(["a"], None) == 1
    assert sharing.threshold_for(["a", "b", "c"], None) == 2
    assert sharing.threshold_for(["a", "b", "c", "d"], None) == 3
    with pytest.raises(GrantError, match="at least one --proxy"):
        sharing.threshold_for([], None)
    with pytest.raises(GrantError, match="between 1 and the number of proxies"):
        sharing.threshold_for(["a", "b"], 3)


def test_a_file_is_shared_read_only(live: Cluster, tmp_path: Path) -> None:
    bob = keyring.load_public(live.root / "home", "bob")
    with pytest.raises(ShareError, match="a shared file is read-only"):
        sharing.create_share(tmp_path, "/f.txt", _target("file"), live.alice, bob, live.urls, None, read_only=False)
    assert shares.list_ids(tmp_path) == []


def test_create_open_revoke(live: Cluster, tmp_path: Path) -> None:
    home = live.root / "home"
    bob = keyring.load_public(home, "bob")
    target = _target()
    events: list[tuple[str, str, dict[str, object]]] = []
    record = sharing.create_share(tmp_path, "/projects", target, live.alice, bob, live.urls, None, True,
                                  on_event=lambda *e: events.append(e))
    assert record.threshold == 2 and list(record.proxies) == live.urls
    assert shares.read(tmp_path, record.grant_id).verify(live.alice.public) == record
    assert events == [("share", "/projects", {"grant": record.grant_id, "recipient": bob.fingerprint, "kind": "dir",
                                              "threshold": 2, "proxies": 3, "read_only": True})]

    asked = []
    got, built = sharing.open_share(home, tmp_path, record.grant_id, "bob", lambda: asked.append(1) or SECRET,
                                    lambda r, key, name: (r.object_id, key, name))
    assert got == record and built == (target.obj_id, target.key, target.name) and asked == [1]

    done = sharing.revoke_shares(tmp_path, "/projects", target.obj_id, live.alice, bob,
                                 on_event=lambda *e: events.append(e))
    assert done.holds and [r.grant_id for r in done.revoked] == [record.grant_id]
    assert shares.read(tmp_path, record.grant_id).record.revoked is not None  # marked, since it holds
    assert events[-1][:2] == ("revoke", "/projects") and events[-1][2]["holds"] is True

    with pytest.raises(AccessRevoked):  # the record says so: no passphrase asked, no proxy asked
        sharing.open_share(home, tmp_path, record.grant_id, "bob", lambda: pytest.fail("asked"), lambda *a: None)
    with pytest.raises(NoSuchShare, match="no active share of /projects with bob"):
        sharing.revoke_shares(tmp_path, "/projects", target.obj_id, live.alice, bob)
    again = sharing.revoke_shares(tmp_path, "/projects", target.obj_id, live.alice, bob, include_revoked=True)
    assert again.revoked == [] and [r.grant_id for r in again.revoked_before] == [record.grant_id]


def test_a_revocation_that_does_not_hold_leaves_the_record_active(live: Cluster, tmp_path: Path) -> None:
    bob = keyring.load_public(live.root / "home", "bob")
    target = _target()
    record = sharing.create_share(tmp_path, "/q", target, live.alice, bob, live.urls, 1, True)
    live.proxies[0].stop()  # a 1-of-3 grant holds only once all 3 proxies deleted their kfrag
    done = sharing.revoke_shares(tmp_path, "/q", target.obj_id, live.alice, bob)
    assert not done.holds and [r.grant_id for r in done.revoked] == [record.grant_id]
    assert shares.read(tmp_path, record.grant_id).record.revoked is None  # the next `revoke` finds it again
    live.restore()
    done = sharing.revoke_shares(tmp_path, "/q", target.obj_id, live.alice, bob)
    assert done.holds and shares.read(tmp_path, record.grant_id).record.revoked is not None


def test_the_guard_path_selects_by_share_or_recipient(live: Cluster, tmp_path: Path) -> None:
    home = live.root / "home"
    bob, carol = keyring.load_public(home, "bob"), keyring.load_public(home, "carol")
    to_bob = [sharing.create_share(tmp_path, "/a", _target(), live.alice, bob, live.urls, None, True) for _ in range(2)]
    to_carol = sharing.create_share(tmp_path, "/b", _target(), live.alice, carol, live.urls, None, True)
    ids = {r.grant_id for r in sharing.recipient_shares(tmp_path, to_bob[0].grant_id, bob.fingerprint)}
    assert ids == {r.grant_id for r in to_bob}
    assert [r.grant_id for r in sharing.recipient_shares(tmp_path, to_carol.grant_id)] == [to_carol.grant_id]
    report = sharing.revoke_share(tmp_path, to_carol, live.alice)  # not as the owner: the record stays unmarked
    assert report.holds and shares.read(tmp_path, to_carol.grant_id).record.revoked is None
    below = sharing.shares_below(tmp_path, {to_bob[1].object_id}, live.alice.fingerprint, skip=set())
    assert [r.grant_id for r in below] == [to_bob[1].grant_id]
    assert sharing.shares_below(tmp_path, {to_bob[1].object_id}, live.alice.fingerprint, {to_bob[1].grant_id}) == []
