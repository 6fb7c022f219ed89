"""Checkpoints (signed text form, JSON round trip, refusal of anything altered), the chain, entry bytes."""
from __future__ import annotations

import json
from hashlib import sha256

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from ledger.chain import GENESIS, chain_hash
from ledger.checkpoint import Checkpoint, key_id_of, sign_checkpoint, verify_checkpoint
from ledger.entry import EntryError, bind, prefix, unbind
from ledger.errors import CheckpointError
from ledger.events import Event, encode

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
ROOT8 = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")


def test_signed_text_and_signature_are_frozen() -> None:
    # Must not change: it would invalidate every checkpoint already signed (docs/ledger.md shows it).
    cp = sign_checkpoint(KEY, 8, ROOT8, bytes(range(32)), 1_700_000_000_123_456_789)
    assert cp.signed_bytes() == (
        b"umbrafs-checkpoint v1\n"
        b"size 8\n"
        b"root 5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328\n"
        b"chain 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
        b"time 1700000000123456789\n"
        b"key 56475aa75463474c\n"
    )
    assert cp.key_id == key_id_of(KEY.public_key()) == "56475aa75463474c"
    assert cp.signature.hex() == (
        "0738f1859390cae0bc3eea473d2a49620c2384530defa52ff171eb7b01933323"
        "ff486f7a99b171b24ec882acb02a11f27c6faaaa570d863c36bbfa927966ee00")
    assert verify_checkpoint(cp, KEY.public_key())


def test_key_id_is_sha256_of_raw_public_key() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    raw = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert key_id_of(KEY.public_key()) == sha256(raw).hexdigest()[:16]


@pytest.mark.parametrize("change", [
    {"size": 9}, {"root": bytes(32)}, {"chain_head": bytes(32)}, {"time_ns": 1}, {"key_id": "0" * 16},
    {"signature": bytes(64)},
])
def test_any_altered_field_fails(change: dict) -> None:
    cp = sign_checkpoint(KEY, 8, ROOT8, bytes(range(32)), 5)
    assert verify_checkpoint(cp, KEY.public_key())
    fields = {**cp.to_dict(), **{k: (v.hex() if isinstance(v, bytes) else v) for k, v in change.items()}}
    assert not verify_checkpoint(Checkpoint.from_dict(fields), KEY.public_key())


def test_other_key_fails() -> None:
    cp = sign_checkpoint(KEY, 8, ROOT8, GENESIS, 5)
    assert not verify_checkpoint(cp, OTHER.public_key())
    forged = sign_checkpoint(OTHER, 8, ROOT8, GENESIS, 5)
    assert not verify_checkpoint(forged, KEY.public_key())
    # even when it claims the right key id
    relabelled = Checkpoint(8, ROOT8, GENESIS, 5, cp.key_id, forged.signature)
    assert not verify_checkpoint(relabelled, KEY.public_key())


@given(st.integers(0, (1 << 63) - 1), st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
       st.integers(0, (1 << 63) - 1))
def test_json_round_trip(size: int, root: bytes, head: bytes, time_ns: int) -> None:
    cp = sign_checkpoint(KEY, size, root, head, time_ns)
    again = Checkpoint.from_json(cp.to_json())
    assert again == cp
    assert Checkpoint.from_dict(json.loads(cp.to_json())) == cp
    assert verify_checkpoint(again, KEY.public_key())


@pytest.mark.parametrize("text", [
    "", "null", "[]", "{}", '{"size":1}', "not json",
    '{"size":-1,"root":"' + "0" * 64 + '","chain_head":"' + "0" * 64 + '","time_ns":0,"key_id":"' + "0" * 16
    + '","signature":"' + "0" * 128 + '"}',
    '{"size":1,"root":"' + "0" * 63 + '","chain_head":"' + "0" * 64 + '","time_ns":0,"key_id":"' + "0" * 16
    + '","signature":"' + "0" * 128 + '"}',
    '{"size":1,"root":"' + "A" * 64 + '","chain_head":"' + "0" * 64 + '","time_ns":0,"key_id":"' + "0" * 16
    + '","signature":"' + "0" * 128 + '"}',
    '{"size":true,"root":"' + "0" * 64 + '","chain_head":"' + "0" * 64 + '","time_ns":0,"key_id":"' + "0" * 16
    + '","signature":"' + "0" * 128 + '"}',
    '{"size":1,"root":"' + "0" * 64 + '","chain_head":"' + "0" * 64 + '","time_ns":0,"key_id":"' + "0" * 16
    + '","signature":"' + "0" * 128 + '","extra":1}',
])
def test_malformed_checkpoint_json_is_one_clear_error(text: str) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.from_json(text)


def test_chain_hash_is_sha256_of_prev_and_entry() -> None:
    assert GENESIS == bytes(32)
    assert chain_hash(GENESIS, b"abc") == sha256(bytes(32) + b"abc").digest()
    assert chain_hash(GENESIS, b"abc").hex() == "365aa7d8f7f9402c4b9434502b4cc89ddb09fe50d7cd95b493b834c62d5a5370"
    assert chain_hash(chain_hash(GENESIS, b"a"), b"b") != chain_hash(chain_hash(GENESIS, b"b"), b"a")


_text = st.text(st.characters(codec="utf-8") | st.sampled_from(["\udcff", '"', "\\", "\x00", "/"]), max_size=30)


@given(st.integers(0, 1 << 40), st.integers(1, 1 << 40), _text, _text, st.sampled_from(["access", "rename", "unlock"]))
def test_entry_bytes_round_trip(idx: int, seq: int, path: str, path2: str, op: str) -> None:
    event = Event("0011223344556677", seq, 1_700_000_000_000_000_000, op, uid=1000, path=path, path2=path2,
                  detail={"k": "v"})
    data = bind(idx, event)
    assert data.startswith(prefix(idx))
    assert data == b'{"idx":%d,' % idx + encode(event)[1:]
    assert json.loads(data)["idx"] == idx
    assert unbind(data) == (idx, event)


@pytest.mark.parametrize("data", [
    b"", b"{}", b"[1]", b'{"idx":-1,"x":1}', b'{"idx":"3"}', b'{"x":1,"idx":3}', b'{"idx":3,"op":"nope"}', b"\xff",
])
def test_bad_entry_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(EntryError):
        unbind(data)
