"""The shared event schema: canonical bytes, the fast encoder the mount uses, and validation."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.events import OPS, Event, EventError, decode, encode, encode_fields, from_dict

_text = st.text(st.characters(codec="utf-8") | st.sampled_from(["\udcff", "\udc80", "\n", '"', "\\", "\x00"]), max_size=40)
_int = st.integers(0, (1 << 63) - 1)
_detail = st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), st.integers(0, 1 << 40), st.booleans()), max_size=3)


@st.composite
def events(draw: st.DrawFn) -> Event:
    return Event(
        source=draw(st.text("0123456789abcdef", min_size=16, max_size=16)), seq=draw(st.integers(1, 1 << 62)),
        time_ns=draw(_int), op=draw(st.sampled_from(sorted(OPS))), uid=draw(_int), pid=draw(_int), comm=draw(_text),
        vault=draw(_text), file_id=draw(_text), path=draw(_text), path2=draw(_text), result=draw(_text),
        bytes_read=draw(_int), bytes_written=draw(_int), reads=draw(_int), writes=draw(_int), opened_ns=draw(_int),
        detail=draw(_detail),
    )


@given(events())
def test_fast_encoder_is_byte_identical_and_round_trips(event: Event) -> None:
    fields = {k: v for k, v in event.to_dict().items() if k not in ("source", "seq", "time_ns", "op", "v")}
    fast = encode_fields(event.source, event.seq, event.time_ns, event.op, **fields)
    assert fast == encode(event) == json.dumps(event.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    assert decode(fast) == event


def test_canonical_form_is_frozen() -> None:
    event = Event("00112233445566ff", 7, 1_700_000_000_000_000_000, "rename", uid=1000, pid=42, comm="mv",
                  vault="aa" * 8, path="/a/caf\u00e9", path2="/b/\udcff", detail={"z": 1, "a": "x"})
    assert encode(event) == (
        b'{"bytes_read":0,"bytes_written":0,"comm":"mv","detail":{"a":"x","z":1},"file_id":"","op":"rename",'
        b'"opened_ns":0,"path":"/a/caf\\u00e9","path2":"/b/\\udcff","pid":42,"reads":0,"result":"ok","seq":7,'
        b'"source":"00112233445566ff","time_ns":1700000000000000000,"uid":1000,"v":1,"vault":"aaaaaaaaaaaaaaaa","writes":0}'
    )


@pytest.mark.parametrize("bad", [
    b"not json", b"[]", b'{"source":"00112233445566ff","seq":1,"time_ns":1,"op":"rm -rf"}',
    b'{"source":"../..","seq":1,"time_ns":1,"op":"create"}',
    b'{"source":"00112233445566ff","seq":0,"time_ns":1,"op":"create"}',
    b'{"source":"00112233445566ff","seq":-1,"time_ns":1,"op":"create"}',
    b'{"source":"00112233445566ff","seq":true,"time_ns":1,"op":"create"}',
    b'{"source":"00112233445566ff","seq":1,"time_ns":1.5,"op":"create"}',
    b'{"source":"00112233445566ff","seq":1,"time_ns":1,"op":"create","path":7}',
    b'{"source":"00112233445566ff","seq":1,"time_ns":1,"op":"create","extra":1}',
    b'{"source":"00112233445566ff","seq":1,"time_ns":1,"op":"create","detail":{"a":[1]}}',
    b'{"source":"00112233445566ff","seq":1,"time_ns":1,"op":"create","v":2}',
    b'{"source":"00112233445566ff","seq":1,"time_ns":1,"op":"create","path":"' + b"x" * 20000 + b'"}',
])
def test_untrusted_records_are_refused(bad: bytes) -> None:
    with pytest.raises(EventError):
        decode(bad)


def test_from_dict_fills_defaults() -> None:
    event = from_dict(json.loads('{"source":"00112233445566ff","seq":3,"time_ns":9,"op":"mkdir","path":"/d"}'))
    assert (event.seq, event.path, event.result, event.detail) == (3, "/d", "ok", {})
