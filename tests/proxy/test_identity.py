"""The keyring: create/unlock round trips, wrapping, public export/import and its checks."""
from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
import umbral_pre

from proxy import keyring as identity_mod
from proxy.errors import IdentityError, WrongIdentityPassphrase
from tests.proxy.conftest import FAST_KDF, SECRET


def test_create_and_unlock_round_trip(tmp_path: Path) -> None:
    created = identity_mod.create(tmp_path, "alice", SECRET, FAST_KDF)
    unlocked = identity_mod.unlock(tmp_path, "alice", SECRET)
    assert unlocked.public == created.public
    assert unlocked.umbral_sk.to_be_bytes() == created.umbral_sk.to_be_bytes()
    # The keys work together: a capsule for the public key opens with the secret key.
    capsule, ciphertext = umbral_pre.encrypt(unlocked.public.umbral_public_key(), b"k" * 32)
    assert umbral_pre.decrypt_original(created.umbral_sk, capsule, ciphertext) == b"k" * 32
    unlocked.public.ed25519_public_key().verify(unlocked.sign(b"m"), b"m")


def test_keyring_file_is_private_and_holds_no_secret_in_the_clear(tmp_path: Path) -> None:
    created = identity_mod.create(tmp_path, "alice", SECRET, FAST_KDF)
    path = tmp_path / "identities" / "alice.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    raw = path.read_bytes()
    for secret in (created.umbral_sk.to_be_bytes(), created.ed25519_sk.private_bytes_raw()):
        assert secret not in raw and secret.hex().encode() not in raw
        assert base64.b64encode(secret) not in raw
    record = json.loads(raw)
    assert record["kdf"] == {**record["kdf"], "algorithm": "argon2id", "memory_kib": 1024, "iterations": 1, "lanes": 1}
    assert "SecretKey" not in repr(created) and "private" not in repr(created).lower()


def test_wrong_passphrase_is_one_clear_error(tmp_path: Path) -> None:
    identity_mod.create(tmp_path, "alice", SECRET, FAST_KDF)
    with pytest.raises(WrongIdentityPassphrase) as info:
        identity_mod.unlock(tmp_path, "alice", b"not it")
    assert str(info.value) == "wrong passphrase for identity 'alice'"


def test_names_and_existence(tmp_path: Path) -> None:
    identity_mod.create(tmp_path, "alice", SECRET, FAST_KDF)
    with pytest.raises(IdentityError, match="already exists"):
        identity_mod.create(tmp_path, "alice", SECRET, FAST_KDF)
    with pytest.raises(IdentityError, match="no identity named 'bob'"):
        identity_mod.unlock(tmp_path, "bob", SECRET)
    for bad in ("", "../x", ".hidden", "a/b", "x" * 65):
        with pytest.raises(IdentityError, match="invalid identity name"):
            identity_mod.create(tmp_path, bad, SECRET, FAST_KDF)


def test_change_passphrase_keeps_the_keys(tmp_path: Path) -> None:
    created = identity_mod.create(tmp_path, "alice", SECRET, FAST_KDF)
    before = json.loads((tmp_path / "identities" / "alice.json").read_text())
    with pytest.raises(WrongIdentityPassphrase):
        identity_mod.change_passphrase(tmp_path, "alice", b"wrong", b"new one")
    identity_mod.change_passphrase(tmp_path, "alice", SECRET, b"new one")
    after = json.loads((tmp_path / "identities" / "alice.json").read_text())
    assert after["kdf"]["salt"] != before["kdf"]["salt"] and after["public"] == before["public"]
    with pytest.raises(WrongIdentityPassphrase):
        identity_mod.unlock(tmp_path, "alice", SECRET)
    assert identity_mod.unlock(tmp_path, "alice", b"new one").public == created.public


def test_tampered_keyring_is_refused(tmp_path: Path) -> None:
    identity_mod.create(tmp_path, "alice", SECRET, FAST_KDF)
    other = identity_mod.generate("mallory")
    path = tmp_path / "identities" / "alice.json"
    record = json.loads(path.read_text())
    # Swapping in someone else's public keys (all consistent) breaks the binding of the wrapped secrets.
    pub = other.public
    record["public"] = {"fingerprint": pub.fingerprint, "umbral_pk": base64.b64encode(pub.umbral_pk).decode(),
                        "verifying_pk": base64.b64encode(pub.verifying_pk).decode(),
                        "ed25519_pk": base64.b64encode(pub.ed25519_pk).decode(),
                        "self_signature": base64.b64encode(pub.self_signature).decode()}
    path.write_text(json.dumps(record))
    with pytest.raises(IdentityError):
        identity_mod.unlock(tmp_path, "alice", SECRET)
    path.write_text("{not json")
    with pytest.raises(IdentityError, match="damaged"):
        identity_mod.unlock(tmp_path, "alice", SECRET)
    path.write_text(json.dumps({**record, "version": 99}))
    with pytest.raises(IdentityError, match="newer"):
        identity_mod.load_public(tmp_path, "alice")


def test_public_export_import_round_trip(tmp_path: Path) -> None:
    alice_home, bob_home = tmp_path / "a", tmp_path / "b"
    alice = identity_mod.create(alice_home, "alice", SECRET, FAST_KDF)
    text = identity_mod.export_public(alice_home, "alice")
    assert len(text) < 600 and alice.fingerprint in text
    imported = identity_mod.import_public(bob_home, text)
    assert imported == alice.public
    assert identity_mod.load_public(bob_home, "alice") == alice.public
    assert identity_mod.import_public(bob_home, text) == alice.public  # again: no-op
    assert [p.name for p in identity_mod.list_contacts(bob_home)] == ["alice"]
    assert identity_mod.list_identities(bob_home) == []
    renamed = identity_mod.import_public(bob_home, text, name="alice-work")
    assert renamed.fingerprint == alice.fingerprint and renamed.name == "alice-work"
    assert stat.S_IMODE((bob_home / "contacts" / "alice.pub").stat().st_mode) == 0o600


def test_import_refuses_name_clashes(tmp_path: Path) -> None:
    identity_mod.create(tmp_path, "bob", SECRET, FAST_KDF)
    alice1, alice2 = identity_mod.generate("alice"), identity_mod.generate("alice")
    identity_mod.import_public(tmp_path, alice1.public.to_text())
    with pytest.raises(IdentityError, match="different contact named 'alice'"):
        identity_mod.import_public(tmp_path, alice2.public.to_text())
    assert identity_mod.import_public(tmp_path, alice2.public.to_text(), replace=True) == alice2.public
    assert identity_mod.load_public(tmp_path, "alice") == alice2.public
    with pytest.raises(IdentityError, match="your own identities"):
        identity_mod.import_public(tmp_path, identity_mod.generate("bob").public.to_text())


@pytest.mark.parametrize("damage,expected", [
    ("fingerprint", "fingerprint does not match"), ("key", "self-signature does not verify"),
    ("signature", "self-signature does not verify"), ("header", "first line"), ("truncated", "missing"),
    ("huge", "too long"),
])
def test_damaged_public_text_is_refused(damage: str, expected: str) -> None:
    alice, eve = identity_mod.generate("alice"), identity_mod.generate("eve")
    text = alice.public.to_text()
    lines = text.splitlines()
    if damage == "fingerprint":
        text = text.replace(alice.fingerprint, eve.fingerprint)
    elif damage == "key":  # eve's umbral key with alice's other keys and a recomputed fingerprint
        fp = identity_mod.fingerprint_of(eve.public.umbral_pk, alice.public.verifying_pk, alice.public.ed25519_pk)
        text = text.replace(base64.b64encode(alice.public.umbral_pk).decode(),
                            base64.b64encode(eve.public.umbral_pk).decode()).replace(alice.fingerprint, fp)
    elif damage == "signature":
        sig_line = next(line for line in lines if line.startswith("signature: "))
        text = text.replace(sig_line, next(line for line in eve.public.to_text().splitlines() if line.startswith("signature: ")))
    elif damage == "header":
        text = text.replace("umbrafs-public-identity v1", "something else")
    elif damage == "truncated":
        text = "\n".join(lines[:4])
    else:
        text = text + "#" * 10000
    with pytest.raises(IdentityError, match=expected):
        identity_mod.parse_public(text)
