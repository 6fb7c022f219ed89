"""Pure parts: request signatures and the proxy's hash chain."""
from __future__ import annotations

import dataclasses

import pytest

from proxy import auth
from proxy.service import record as rec
from proxy.errors import RecordChainBroken
from proxy.keyring import generate


ALICE = generate("alice")
EVE = generate("eve")


def _check(headers: dict[str, str], method: str = "POST", path: str = "/v1/grants", body: bytes = b"{}",
           key: bytes = ALICE.public.ed25519_pk, now: float = 1_700_000_000) -> None:
    signed = auth.parse_headers(headers)
    auth.check_time(signed, now)
    auth.check_signature(key, method, path, body, signed)


def test_signature_round_trip_and_every_covered_part() -> None:
    headers = auth.sign_request(ALICE, "POST", "/v1/grants", b"{}", 1_700_000_000)
    _check(headers)
    for kwargs in ({"method": "PUT"}, {"path": "/v1/grants?x=1"}, {"body": b"{ }"}, {"key": EVE.public.ed25519_pk},
                   {"key": None}):
        with pytest.raises(auth.AuthError, match="signature does not verify"):
            _check(headers, **kwargs)  # type: ignore[arg-type]
    for name, value in ((auth.H_TIME, "1700000001"), (auth.H_NONCE, "A" * 24)):
        with pytest.raises(auth.AuthError, match="signature does not verify"):
            _check({**headers, name: value})


def test_time_window_edges() -> None:
    headers = auth.sign_request(ALICE, "GET", "/v1/whoami", b"", 1_700_000_000)
    signed = auth.parse_headers(headers)
    auth.check_time(signed, 1_700_000_060)
    auth.check_time(signed, 1_699_999_940)
    for now in (1_700_000_061, 1_699_999_939):
        with pytest.raises(auth.AuthError, match="clock"):
            auth.check_time(signed, now)
    assert auth.nonce_expiry(signed) == 1_700_000_061  # kept until its time is stale anyway


def test_missing_headers() -> None:
    headers = auth.sign_request(ALICE, "GET", "/v1/whoami", b"", 1_700_000_000)
    for name in list(headers):
        with pytest.raises(auth.AuthError, match="not signed"):
            auth.parse_headers({k: v for k, v in headers.items() if k != name})


def _chain(n: int) -> list[rec.StoredRecord]:
    rows, prev = [], rec.GENESIS
    for i in range(1, n + 1):
        r = rec.Record(i, 1000 + i, ["register", "grant", "reencrypt", "revoke"][i % 4], "a" * 64, f"g{i}", {"n": i})
        h = rec.chain_hash(prev, r)
        rows.append(rec.StoredRecord(r, prev, h))
        prev = h
    return rows


def test_chain_verifies() -> None:
    rows = _chain(10)
    report = rec.verify(rows)
    assert report.rows == 10 and report.head == rows[-1].hash
    assert rec.verify([]).head == rec.GENESIS
    # Canonical encoding: key order and spacing do not matter, content does.
    r = rows[0].record
    assert rec.encode(r) == rec.encode(dataclasses.replace(r, detail=dict(reversed(list(r.detail.items())))))


def test_chain_names_the_first_bad_row() -> None:
    rows = _chain(10)
    altered = list(rows)
    altered[4] = dataclasses.replace(rows[4], record=dataclasses.replace(rows[4].record, detail={"n": 99}))
    with pytest.raises(RecordChainBroken, match=r"^record 5 \(.*altered"):
        rec.verify(altered)
    with pytest.raises(RecordChainBroken, match=r"^record 7 .*expected record 6"):
        rec.verify(rows[:5] + rows[6:])
    with pytest.raises(RecordChainBroken, match=r"^record 4 .*expected record 3"):
        rec.verify(rows[:2] + [rows[3], rows[2]] + rows[4:])
    # A rewritten row with a recomputed hash no longer links the next one.
    fixed = dataclasses.replace(altered[4], hash=rec.chain_hash(altered[4].prev, altered[4].record))
    with pytest.raises(RecordChainBroken, match=r"^record 6 .*does not link"):
        rec.verify(rows[:4] + [fixed] + rows[5:])
