"""proxy.shares: a share record round-trips, and any change to it, another signer, a
newer format or a record stored under another id is refused before use."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import exitcodes
from proxy import shares
from proxy.envelope import Delegation
from proxy.errors import IdentityError, NoSuchShare, ShareRecordInvalid
from proxy.keyring import Identity, generate

ALICE: Identity = generate("alice")
BOB: Identity = generate("bob")
MALLORY: Identity = generate("mallory")
GRANT = "abcdefgh12345678"
DELEGATION = Delegation.new()


def _record(owner: Identity = ALICE) -> shares.ShareRecord:
    sealed = DELEGATION.seal(bytes(range(32)) + b"x")
    return shares.ShareRecord(
        GRANT, "dir", "AAAA/BBBB", bytes(range(16)), owner.public, "bob", BOB.fingerprint,
        ("http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"), 2, True, shares.now_iso(),
        sealed.capsule, sealed.ciphertext, delegating_pk=sealed.delegating_pk,
    )


def test_round_trip_and_verify(tmp_path: Path) -> None:
    record = _record()
    shares.write(tmp_path, GRANT, record.signed_by(ALICE))
    assert shares.list_ids(tmp_path) == [GRANT]
    signed = shares.read(tmp_path, GRANT)
    assert signed.self_signed()
    got = signed.verify(ALICE.public)
    assert got == record
    assert got.delegating_key == DELEGATION.public_bytes
    from proxy.envelope import Sealed

    assert DELEGATION.open(Sealed(got.capsule, got.ciphertext, got.delegating_pk)) == bytes(range(32)) + b"x"
    revoked = got.revoked_now()
    shares.write(tmp_path, GRANT, revoked.signed_by(ALICE))
    assert shares.read(tmp_path, GRANT).verify(ALICE.public).revoked == revoked.revoked is not None


@pytest.mark.parametrize("change", [
    lambda r: r.update(read_only=False),
    lambda r: r.update(threshold=1),
    lambda r: r.update(proxies=r["proxies"][:2]),
    lambda r: r["target"].update(backing_path="."),
    lambda r: r["target"].update(object_id="ff" * 16),
    lambda r: r["recipient"].update(fingerprint=MALLORY.fingerprint),
    lambda r: r.update(revoked=None, created="2000-01-01T00:00:00Z"),
    lambda r: r["sealed"].update(capsule=r["sealed"]["ciphertext"]),
    lambda r: r["sealed"].update(delegating_pk=r["owner"].split("umbral-pk: ")[1].split("\n")[0]),
    lambda r: r.update(extra="field"),
])
def test_any_change_breaks_the_signature(change) -> None:  # type: ignore[no-untyped-def]
    obj = json.loads(_record().signed_by(ALICE))
    change(obj)
    with pytest.raises(ShareRecordInvalid) as info:
        shares.parse(json.dumps(obj).encode(), GRANT).verify(ALICE.public)
    assert exitcodes.for_error(info.value) == exitcodes.DAMAGE


def test_another_signer_is_refused() -> None:
    # mallory signs a record naming mallory as owner: bob, who trusts alice, refuses it
    forged = shares.parse(_record(MALLORY).signed_by(MALLORY), GRANT)
    assert forged.self_signed()
    with pytest.raises(ShareRecordInvalid, match="not made by the identity you trust"):
        forged.verify(ALICE.public)
    # ... and mallory cannot sign in alice's name
    with pytest.raises(IdentityError):
        _record(ALICE).signed_by(MALLORY)
    # alice's public text with mallory's signature over the body
    obj = json.loads(_record(ALICE).signed_by(ALICE))
    body = {k: v for k, v in obj.items() if k != "signature"}
    obj["signature"] = shares._b64(MALLORY.sign(shares._message(body)))
    with pytest.raises(ShareRecordInvalid, match="signature does not verify"):
        shares.parse(json.dumps(obj).encode(), GRANT).verify(ALICE.public)


def test_damaged_newer_and_misplaced_records(tmp_path: Path) -> None:
    with pytest.raises(ShareRecordInvalid, match="not JSON"):
        shares.parse(b"\xff{", GRANT)
    obj = json.loads(_record().signed_by(ALICE))
    with pytest.raises(ShareRecordInvalid, match="newer"):
        shares.parse(json.dumps(obj | {"version": 2}).encode(), GRANT)
    with pytest.raises(ShareRecordInvalid, match="wrong type"):
        shares.parse(json.dumps(obj | {"threshold": "2"}).encode(), GRANT)
    with pytest.raises(ShareRecordInvalid, match="missing or malformed"):
        shares.parse(json.dumps({k: v for k, v in obj.items() if k != "sealed"}).encode(), GRANT)
    with pytest.raises(ShareRecordInvalid, match="id does not match"):
        shares.parse(json.dumps(obj).encode(), "otherid12345")
    with pytest.raises(ShareRecordInvalid, match="owner"):
        shares.parse(json.dumps(obj | {"owner": obj["owner"].replace(f"fingerprint: {ALICE.fingerprint}", f"fingerprint: {MALLORY.fingerprint}")}).encode(), GRANT)
    with pytest.raises(NoSuchShare) as info:
        shares.read(tmp_path, "nosuchshare1")
    assert exitcodes.for_error(info.value) == exitcodes.NOT_A_VAULT
    with pytest.raises(NoSuchShare, match="a share id is"):
        shares.read(tmp_path, "../../etc/passwd")
