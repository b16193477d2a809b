"""The gateway's envelope (iotdtls_gateway.envelope): CBOR, JSON, SenML JSON and SenML CBOR bodies -> JSON, the
message id and the envelope.

1. RFC 8949 Appendix A byte for byte: every example that maps to JSON, and the refused ones with their reasons;
   not-well-formed inputs in the spirit of RFC 8949 Appendix F.
2. The mapping rule by rule (tags, keys, integers, floats), and that none of cbor2's automatic conversions leak.
3. JSON (RFC 8259) and SenML (RFC 8428, its examples in JSON and CBOR, the RFC's CBOR dump byte for byte).
4. Properties (hypothesis): JSON values encoded by cbor2 or json map back to themselves; random and mutated
   bodies raise nothing but PayloadError and stay within the bounds; SenML CBOR == SenML JSON.
5. Bounds: size, depth, items, time and memory; a 1 GB declared length is refused at once.
6. The idempotency key, the message id and the envelope.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import fractions
import functools
import hashlib
import ipaddress
import json
import math
import re
import time
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any, cast

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iotdtls_gateway.envelope import (
    ENVELOPE_FIELDS,
    MAX_INT_BITS,
    SENML_CBOR_LABELS,
    ContentFormat,
    JSONValue,
    PayloadError,
    check_key,
    decode_payload,
    encode_envelope,
    format_timestamp,
    key_from_query,
    make_envelope,
    message_id,
)

CBOR, JSON, SENML_JSON, SENML_CBOR = 60, 50, 110, 112


def cbor(hexstr: str) -> JSONValue:
    return decode_payload(CBOR, bytes.fromhex(hexstr))


def refused(content_format: int | None, payload: bytes, **limits: int) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        decode_payload(content_format, payload, **limits)
    return info.value


def same(a: object, b: object) -> bool:
    """Equal as JSON text: 1 and 1.0, 0.0 and -0.0 differ, and so does key order."""
    return json.dumps(a, ensure_ascii=False) == json.dumps(b, ensure_ascii=False)


def shape(value: JSONValue) -> tuple[int, int]:
    """(depth, items) of a JSON value as decode_payload counts them."""
    depth = items = 0
    stack: list[tuple[JSONValue, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            depth = max(depth, d + 1)
            items += len(v)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return depth, items


def only_json_types(value: object) -> bool:
    """Only None, bool, int, float, str, list and dict with str keys: no subclass, nothing of cbor2's."""
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is list:
            stack.extend(v)
        elif type(v) is dict:
            if not all(type(k) is str for k in v):
                return False
            stack.extend(v.values())
        elif v is not None and type(v) not in (bool, int, float, str):
            return False
    return True


# -- 1. RFC 8949 Appendix A -----------------------------------------------------------------------------------

APPENDIX_A: list[tuple[str, Any]] = [
    ("00", 0), ("01", 1), ("0a", 10), ("17", 23), ("1818", 24), ("1819", 25), ("1864", 100), ("1903e8", 1000),
    ("1a000f4240", 1000000), ("1b000000e8d4a51000", 1000000000000),
    ("1bffffffffffffffff", 18446744073709551615), ("c249010000000000000000", 18446744073709551616),
    ("3bffffffffffffffff", -18446744073709551616), ("c349010000000000000000", -18446744073709551617),
    ("20", -1), ("29", -10), ("3863", -100), ("3903e7", -1000),
    ("f90000", 0.0), ("f98000", -0.0), ("f93c00", 1.0), ("fb3ff199999999999a", 1.1), ("f93e00", 1.5),
    ("f97bff", 65504.0), ("fa47c35000", 100000.0), ("fa7f7fffff", 3.4028234663852886e38),
    ("fb7e37e43c8800759c", 1.0e300), ("f90001", 5.960464477539063e-8), ("f90400", 0.00006103515625),
    ("f9c400", -4.0), ("fbc010666666666666", -4.1),
    ("f4", False), ("f5", True), ("f6", None),
    ("c074323031332d30332d32315432303a30343a30305a", "2013-03-21T20:04:00Z"),
    ("c11a514b67b0", 1363896240), ("c1fb41d452d9ec200000", 1363896240.5),
    ("d818456449455446", "IETF"),
    ("d82076687474703a2f2f7777772e6578616d706c652e636f6d", "http://www.example.com"),
    ("40", ""), ("4401020304", "AQIDBA=="),
    ("60", ""), ("6161", "a"), ("6449455446", "IETF"), ("62225c", "\"\\"), ("62c3bc", "\u00fc"),
    ("63e6b0b4", "\u6c34"), ("64f0908591", "\U00010151"),
    ("80", []), ("83010203", [1, 2, 3]), ("8301820203820405", [1, [2, 3], [4, 5]]),
    ("98190102030405060708090a0b0c0d0e0f101112131415161718181819", list(range(1, 26))),
    ("a0", {}), ("a201020304", {"1": 2, "3": 4}), ("a26161016162820203", {"a": 1, "b": [2, 3]}),
    ("826161a161626163", ["a", {"b": "c"}]),
    ("a56161614161626142616361436164614461656145", {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}),
    ("5f42010243030405ff", "AQIDBAU="), ("7f657374726561646d696e67ff", "streaming"),
    ("9fff", []), ("9f018202039f0405ffff", [1, [2, 3], [4, 5]]), ("9f01820203820405ff", [1, [2, 3], [4, 5]]),
    ("83018202039f0405ff", [1, [2, 3], [4, 5]]), ("83019f0203ff820405", [1, [2, 3], [4, 5]]),
    ("9f0102030405060708090a0b0c0d0e0f101112131415161718181819ff", list(range(1, 26))),
    ("bf61610161629f0203ffff", {"a": 1, "b": [2, 3]}), ("826161bf61626163ff", ["a", {"b": "c"}]),
    ("bf6346756ef563416d7421ff", {"Fun": True, "Amt": -2}),
]

APPENDIX_A_REFUSED = [
    ("f97c00", "CBOR: Infinity is not representable in JSON"),
    ("f97e00", "CBOR: NaN is not representable in JSON"),
    ("f9fc00", "CBOR: -Infinity is not representable in JSON"),
    ("fa7f800000", "CBOR: Infinity is not representable in JSON"),
    ("fa7fc00000", "CBOR: NaN is not representable in JSON"),
    ("faff800000", "CBOR: -Infinity is not representable in JSON"),
    ("fb7ff0000000000000", "CBOR: Infinity is not representable in JSON"),
    ("fb7ff8000000000000", "CBOR: NaN is not representable in JSON"),
    ("fbfff0000000000000", "CBOR: -Infinity is not representable in JSON"),
    ("f7", "CBOR undefined is not supported"),
    ("f0", "CBOR simple value 16 is not supported"),
    ("f8ff", "CBOR simple value 255 is not supported"),
    ("d74401020304", "CBOR tag 23 (expected base16 encoding) is not supported"),
]


@pytest.mark.parametrize(("hexstr", "expected"), APPENDIX_A, ids=[h for h, _ in APPENDIX_A])
def test_rfc8949_appendix_a(hexstr: str, expected: Any) -> None:
    assert same(cbor(hexstr), expected)


@pytest.mark.parametrize(("hexstr", "reason"), APPENDIX_A_REFUSED, ids=[h for h, _ in APPENDIX_A_REFUSED])
def test_rfc8949_appendix_a_refused(hexstr: str, reason: str) -> None:
    e = refused(CBOR, bytes.fromhex(hexstr))
    assert (e.code, e.diagnostic) == ("4.00", reason)


def test_simple_24_removed_by_rfc8949_is_not_well_formed() -> None:
    # RFC 7049 listed 0xf818 as simple(24); RFC 8949 section 3.3 makes a two-byte simple value below 32 invalid
    assert refused(CBOR, bytes.fromhex("f818")).diagnostic == "CBOR: not well-formed (simple value 24 in two bytes)"


# Not well-formed or truncated items: a head or content cut short, reserved additional information, breaks out
# of place, indefinite lengths where none is allowed, bad chunks of indefinite-length strings.
NOT_WELL_FORMED = [
    "18", "19", "1a", "1b", "1901", "1a0102", "1b01020304050607", "38", "58", "78", "98", "9a01ff00", "b8",
    "d8", "f8", "f900", "fa0000", "fb000000",
    "41", "61", "5affffffff00", "5bffffffffffffffff010203", "7affffffff00", "7b7fffffffffffff010203",
    "81", "818181818181818181", "8200", "a1", "a20102", "a100", "a2000000", "c0", "5f4100", "7f6100", "9f",
    "9f0102", "bf", "bf01020102", "819f", "9f8000", "9f9f9f9f9fffffffff", "9f819f819f9fffffff",
    "1c", "1d", "1e", "3c", "3d", "3e", "5c", "5d", "5e", "7c", "7d", "7e", "9c", "9d", "9e", "bc", "bd", "be",
    "dc", "dd", "de", "fc", "fd", "fe", "f800", "f801", "f818", "f81f",
    "5f00ff", "5f21ff", "5f6100ff", "5f80ff", "5fa0ff", "5fc000ff", "5fe0ff", "7f4100ff", "5f5f4100ffff",
    "7f7f6100ffff", "ff", "81ff", "8200ff", "a1ff", "a1ff00", "a100ff", "a20000ff", "9f81ff", "9f829f819f9fffffffff",
    "bf00ff", "bf000000ff", "1f", "3f", "df", "0000", "8001", "d9d9f7ff", "9fd9d9f7ffff",
]


@pytest.mark.parametrize("hexstr", NOT_WELL_FORMED)
def test_not_well_formed_cbor_is_refused(hexstr: str) -> None:
    e = refused(CBOR, bytes.fromhex(hexstr))
    assert e.code == "4.00" and e.diagnostic.startswith("CBOR")


def test_not_well_formed_reasons() -> None:
    assert refused(CBOR, bytes.fromhex("1a0102")).diagnostic == "CBOR: truncated"
    assert refused(CBOR, bytes.fromhex("1c")).diagnostic == "CBOR: not well-formed (reserved additional information 28)"
    assert refused(CBOR, bytes.fromhex("1f")).diagnostic == \
        "CBOR: not well-formed (indefinite length with major type 0)"
    assert refused(CBOR, bytes.fromhex("81ff")).diagnostic == "CBOR: not well-formed (unexpected break)"
    assert refused(CBOR, bytes.fromhex("0000")).diagnostic == "CBOR: 1 bytes after the data item"
    assert "chunk" in refused(CBOR, bytes.fromhex("5f6100ff")).diagnostic
    assert refused(CBOR, bytes.fromhex("62c328")).diagnostic == "CBOR: invalid UTF-8 in a text string"
    # a UTF-8 sequence split across the chunks of an indefinite-length text string (RFC 8949 section 3.2.3)
    assert refused(CBOR, bytes.fromhex("7f61c361bcff")).diagnostic == "CBOR: invalid UTF-8 in a text string"
    assert cbor("7f62c3bcff") == "\u00fc"
    # encoded surrogates are not UTF-8
    assert refused(CBOR, bytes.fromhex("63eda080")).diagnostic == "CBOR: invalid UTF-8 in a text string"


# -- 2. the mapping, rule by rule ---------------------------------------------------------------------------------

def tagged(number: int, content: Any) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(number, content))


def test_kept_tags() -> None:
    assert decode_payload(CBOR, tagged(0, "2026-12-07T10:56:01.5+01:00")) == "2026-12-07T10:56:01.5+01:00"
    assert decode_payload(CBOR, tagged(1, -5)) == -5
    assert same(decode_payload(CBOR, tagged(1, 1.5)), 1.5)
    assert decode_payload(CBOR, tagged(2, b"")) == 0
    assert decode_payload(CBOR, tagged(2, b"\x00\x00\x01")) == 1  # leading zeroes are allowed
    assert decode_payload(CBOR, tagged(3, b"")) == -1
    assert decode_payload(CBOR, bytes.fromhex("c25f4101420203ff")) == 0x010203  # indefinite-length bignum
    assert decode_payload(CBOR, tagged(32, "coaps://gw/telemetry?k=1")) == "coaps://gw/telemetry?k=1"
    u = uuid.UUID("3fa29c01-6f1e-4e1c-9c58-0a1b2c3d4e5f")
    assert decode_payload(CBOR, tagged(37, u.bytes)) == "3fa29c01-6f1e-4e1c-9c58-0a1b2c3d4e5f"
    assert decode_payload(CBOR, tagged(55799, [1, cbor2.CBORTag(55799, 2)])) == [1, 2]
    assert decode_payload(CBOR, bytes.fromhex("d9d9f7d9d9f7820102")) == [1, 2]
    assert decode_payload(CBOR, bytes.fromhex("82d9d9f701d9d9f7a0")) == [1, {}]
    inner = cbor2.dumps({"temp": 21.5, "raw": b"\x01"})
    assert decode_payload(CBOR, tagged(24, inner)) == {"temp": 21.5, "raw": "AQ=="}
    assert decode_payload(CBOR, tagged(24, tagged(24, cbor2.dumps([1])))) == [1]
    assert decode_payload(CBOR, bytes.fromhex("d8185f4182420180ff")) == [1, []]  # indefinite content


@pytest.mark.parametrize(("payload", "reason"), [
    (tagged(0, 1), "CBOR tag 0 (date/time string) must enclose a text string"),
    (tagged(0, "2013-03-21 20:04:00Z"), "CBOR tag 0 (date/time string) must enclose an RFC 3339 date-time"),
    (tagged(0, "2013-03-21t20:04:00z"), "CBOR tag 0 (date/time string) must enclose an RFC 3339 date-time"),
    (tagged(0, "2013-13-21T20:04:00Z"), "CBOR tag 0 (date/time string) must enclose an RFC 3339 date-time"),
    (tagged(1, "1363896240"), "CBOR tag 1 (epoch date/time) must enclose an integer or a float"),
    (tagged(1, math.nan), "CBOR: NaN is not representable in JSON"),
    (tagged(2, "01"), "CBOR tag 2 (unsigned bignum) must enclose a byte string"),
    (tagged(3, 1), "CBOR tag 3 (negative bignum) must enclose a byte string"),
    (tagged(32, b"http://x"), "CBOR tag 32 (URI) must enclose a text string"),
    (tagged(37, b"\x01" * 15), "CBOR tag 37 (UUID) must enclose a byte string of 16 bytes"),
    (tagged(37, "3fa29c01-6f1e-4e1c-9c58-0a1b2c3d4e5f"), "CBOR tag 37 (UUID) must enclose a byte string of 16 bytes"),
    (tagged(24, "x"), "CBOR tag 24 (encoded CBOR data item) must enclose a byte string"),
    (tagged(24, b"\x01\x02"), "CBOR tag 24 (encoded CBOR data item): 1 bytes after the data item"),
    (tagged(24, b""), "CBOR: truncated"),
    (tagged(24, b"\x82\x01"), "CBOR: truncated"),
    (bytes.fromhex("9fd81841ffff"), "CBOR: not well-formed (unexpected break)"),  # a break inside tag 24
    (tagged(24, b"\xf7"), "CBOR undefined is not supported"),
    (tagged(4, [-2, 27315]), "CBOR tag 4 (decimal fraction) is not supported"),
    (tagged(5, [-1, 3]), "CBOR tag 5 (bigfloat) is not supported"),
    (tagged(30, [1, 3]), "CBOR tag 30 (rational number) is not supported"),
    (tagged(28, [1]), "CBOR tag 28 (shareable value) is not supported"),
    (tagged(29, 0), "CBOR tag 29 (shared reference) is not supported"),
    (tagged(256, ["aaaa", cbor2.CBORTag(25, 0)]), "CBOR tag 256 (string reference namespace) is not supported"),
    (tagged(25, 0), "CBOR tag 25 (string reference) is not supported"),
    (tagged(52, b"\x01\x02\x03\x04"), "CBOR tag 52 (IPv4 address) is not supported"),
    (tagged(54, b"\x00" * 16), "CBOR tag 54 (IPv6 address) is not supported"),
    (tagged(258, [1, 2]), "CBOR tag 258 (set) is not supported"),
    (tagged(1004, "2020-01-01"), "CBOR tag 1004 (full-date string) is not supported"),
    (tagged(100, 1), "CBOR tag 100 (days since the epoch) is not supported"),
    (tagged(18, [b"", {}, b"", b""]), "CBOR tag 18 (COSE_Sign1) is not supported"),
    (tagged(21, b""), "CBOR tag 21 (expected base64url encoding) is not supported"),
    (tagged(35, "a+"), "CBOR tag 35 (regular expression) is not supported"),
    (tagged(64, b"\x01"), "CBOR tag 64 (typed array) is not supported"),
    (tagged(12345, 0), "CBOR tag 12345 is not supported"),
    (tagged(2**64 - 1, 0), "CBOR tag 18446744073709551615 is not supported"),
])
def test_tags_refused_with_their_reason(payload: bytes, reason: str) -> None:
    e = refused(CBOR, payload)
    assert (e.code, e.diagnostic) == ("4.00", reason)


@pytest.mark.parametrize("value", [
    datetime.datetime(2020, 1, 1, 12, 30, tzinfo=datetime.UTC), datetime.date(2020, 1, 1),
    decimal.Decimal("1.5"), fractions.Fraction(1, 3), ipaddress.IPv4Address("192.0.2.1"),
    ipaddress.IPv6Network("2001:db8::/32"), uuid.UUID(int=7), {1, 2}, frozenset({3}), re.compile("a+"),
    cbor2.undefined, cbor2.CBORSimpleValue(99), [b"x", {"k": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)}],
])
def test_nothing_of_cbor2s_conversions_leaks(value: Any) -> None:
    """What cbor2 would turn into datetime, Decimal, Fraction, IP objects and so on arrives as JSON or is
    refused; and the value_sharing form (tags 28/29) is refused, as it would expand beyond the input size."""
    for payload in (cbor2.dumps(value), cbor2.dumps(value, value_sharing=True, datetime_as_timestamp=True)):
        try:
            out = decode_payload(CBOR, payload)
        except PayloadError as e:
            assert e.code == "4.00" and e.diagnostic.startswith("CBOR")
        else:
            assert only_json_types(out)
            json.dumps(out, allow_nan=False)


def test_shared_references_are_refused_rather_than_expanded() -> None:
    shared: list[Any] = [1, 2, 3]
    payload = cbor2.dumps([shared, shared, shared], value_sharing=True)
    assert refused(CBOR, payload).diagnostic == "CBOR tag 28 (shareable value) is not supported"


def test_map_keys() -> None:
    assert decode_payload(CBOR, cbor2.dumps({1: "a", -2: "b", 2**64 - 1: "c", "t": 1})) == \
        {"1": "a", "-2": "b", "18446744073709551615": "c", "t": 1}
    assert refused(CBOR, cbor2.dumps({1: "a", "1": "b"})).diagnostic == "CBOR: map keys 1 and '1' are the same in JSON"
    assert refused(CBOR, cbor2.dumps({"-3": "a", -3: "b"})).diagnostic == \
        "CBOR: map keys '-3' and -3 are the same in JSON"
    assert refused(CBOR, bytes.fromhex("a2616101616102")).diagnostic == "CBOR: duplicate map key 'a'"
    assert refused(CBOR, bytes.fromhex("bf0101 0102ff".replace(" ", ""))).diagnostic == "CBOR: duplicate map key 1"
    # non-preferred encodings of the same key are the same key
    assert refused(CBOR, bytes.fromhex("a201011801 02")).diagnostic == "CBOR: duplicate map key 1"
    for key, kind in [(b"k", "a byte string"), (1.0, "a float"), (True, "a boolean"), (None, "null"),
                      ((1,), "an array")]:
        assert refused(CBOR, cbor2.dumps({key: 1})).diagnostic == \
            f"CBOR: a map key must be a text string or an integer, not {kind}"
    assert refused(CBOR, bytes.fromhex("a1a00000")).diagnostic == \
        "CBOR: a map key must be a text string or an integer, not a map"
    assert refused(CBOR, bytes.fromhex("a1c2410100")).diagnostic == \
        "CBOR: a map key must be a text string or an integer, not a tagged item"
    # a key is quoted in a diagnostic, shortened and escaped
    long_key = "\u00e9\n'" + "x" * 100
    diag = refused(CBOR, bytes.fromhex("a2") + cbor2.dumps(long_key) + b"\x00" + cbor2.dumps(long_key) + b"\x00")
    assert diag.diagnostic == "CBOR: duplicate map key '\\xe9\\x0a\\x27xxxxxxxxxxxxx...'"
    assert diag.diagnostic.isascii() and diag.diagnostic.isprintable()


def test_integers_up_to_4096_bits() -> None:
    top = 2**MAX_INT_BITS - 1
    assert decode_payload(CBOR, cbor2.dumps(top)) == top
    assert decode_payload(CBOR, cbor2.dumps(-top)) == -top
    assert refused(CBOR, cbor2.dumps(top + 1)).diagnostic == "CBOR: integer too large (over 4096 bits)"
    assert refused(CBOR, cbor2.dumps(-top - 1)).diagnostic == "CBOR: integer too large (over 4096 bits)"
    assert decode_payload(JSON, str(top).encode()) == top
    assert decode_payload(JSON, str(-top).encode()) == -top
    assert refused(JSON, str(top + 1).encode()).diagnostic == "JSON: integer too large (over 4096 bits)"
    assert refused(JSON, b"9" * 5000).diagnostic == "JSON: integer too large (over 4096 bits)"
    # beyond JavaScript's 2**53, exactly
    assert encode_envelope(make_envelope("d", "i", 0, CBOR, decode_payload(CBOR, cbor2.dumps(2**53 + 1)))) \
        .endswith(b'"data":9007199254740993}')


def test_floats_are_exact() -> None:
    for value in (0.1, -0.0, 5e-324, 1.7976931348623157e308, 1 / 3, 1e16):
        assert same(decode_payload(CBOR, cbor2.dumps(value)), value)
        assert same(decode_payload(CBOR, cbor2.dumps(value, canonical=True)), value)
    assert same(cbor("fa3dcccccd"), 0.10000000149011612)  # the single-precision 0.1, as a double, exactly
    assert same(cbor("f93c00"), 1.0) and not same(cbor("f93c00"), 1)


def test_bytes_are_standard_base64_with_padding() -> None:
    for data in (b"", b"\xfb", b"\xfb\xff", b"\xfb\xff\xbf", bytes(range(256))):
        out = decode_payload(CBOR, cbor2.dumps(data))
        assert out == base64.b64encode(data).decode() and base64.b64decode(out, validate=True) == data
    assert cbor("43fbffbf") == "+/+/"


def test_top_level_scalars_and_empty() -> None:
    assert cbor("f6") is None and decode_payload(JSON, b"null") is None
    assert decode_payload(JSON, b' "x" ') == "x"
    for fmt in (CBOR, JSON, SENML_JSON, SENML_CBOR):
        assert (refused(fmt, b"").code, refused(fmt, b"").diagnostic) == ("4.00", "empty payload")


# -- 3. JSON and SenML -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "reason"), [
    (b'{"temp": 1, "temp": 2}', "JSON: duplicate key 'temp'"),
    (b'[{"a": {"b": 1, "b": 1}}]', "JSON: duplicate key 'b'"),
    (b"NaN", "JSON: NaN is not allowed"),
    (b"[Infinity]", "JSON: Infinity is not allowed"),
    (b'{"x": -Infinity}', "JSON: -Infinity is not allowed"),
    (b"\xef\xbb\xbf{}", "JSON: a byte order mark is not allowed"),
    (b'"\xff"', "JSON: invalid UTF-8 at byte 1"),
    (b'"\xed\xa0\x80"', "JSON: invalid UTF-8 at byte 1"),
    (b'"\\ud800"', "JSON: a string holds an unpaired surrogate escape"),
    (b'{"\\udc00": 1}', "JSON: a key holds an unpaired surrogate escape"),
    (b"1e400", "JSON: number out of range"),
    (b"-1.5E+309", "JSON: number out of range"),
    (b"[1e-400]", "JSON: number underflows to zero"),
    (b"[1,]", "JSON: Expecting value (line 1, column 4)"),
    (b'{"a" 1}', "JSON: Expecting ':' delimiter (line 1, column 6)"),
    (b"{'a': 1}", "JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
    (b'"abc', "JSON: Unterminated string (line 1, column 1)"),
    (b'"a\x01"', "JSON: Invalid control character (line 1, column 3)"),
    (b"{} x", "JSON: Extra data (line 1, column 4)"),
    (b"[1] // c", "JSON: Extra data (line 1, column 5)"),
    (b"01", "JSON: Extra data (line 1, column 2)"),
    (b"\x00", "JSON: Expecting value (line 1, column 1)"),
])
def test_json_refused(text: bytes, reason: str) -> None:
    e = refused(JSON, text)
    assert (e.code, e.diagnostic) == ("4.00", reason)


def test_json_accepted() -> None:
    assert same(decode_payload(JSON, b' {"a": [1, 1.0, -0, -0.0, 1E2, "\\ud83d\\ude00", true, null]}\r\n\t'),
                {"a": [1, 1.0, 0, -0.0, 100.0, "\U0001f600", True, None]})
    assert decode_payload(JSON, '{"t\u00e9mp": "\u6c34"}'.encode()) == {"t\u00e9mp": "\u6c34"}
    assert decode_payload(JSON, b"5e-324") == 5e-324
    assert decode_payload(JSON, b"0.0e999999999") == 0.0  # a zero is not an underflow
    assert decode_payload(JSON, b"0." + b"1" * 16000) == 0.1111111111111111


RFC8428_JSON_EXAMPLES = {
    "1": '[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]',
    "5.1.1": '[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]',
    "5.1.2a": '[{"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},'
              '{"n":"current","u":"A","v":1.2}]',
    "5.1.2b": '[{"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,"bu":"A","bver":5,'
              '"n":"voltage","u":"V","v":120.1},{"n":"current","t":-5,"v":1.2},{"n":"current","t":-4,"v":1.3},'
              '{"n":"current","t":-3,"v":1.4},{"n":"current","t":-2,"v":1.5},{"n":"current","t":-1,"v":1.6},'
              '{"n":"current","v":1.7}]',
    "5.1.2c": '[{"bn":"urn:dev:ow:10e2073a01080063","bt":1.320067464e+09,"bu":"%RH","v":21.2},'
              '{"t":10,"v":21.3},{"t":20,"v":21.4},{"t":30,"v":21.4},{"t":40,"v":21.5},{"t":50,"v":21.5},'
              '{"t":60,"v":21.5},{"t":70,"v":21.6},{"t":80,"v":21.7}]',
    "5.1.3": '[{"bn":"urn:dev:ow:10e2073a01080063","bt":1.320067464e+09,"bu":"%RH","v":20},'
             '{"u":"lon","v":24.30621},{"u":"lat","v":60.07965},{"t":60,"v":20.3},{"u":"lon","t":60,"v":24.30622},'
             '{"u":"lat","t":60,"v":60.07965},{"t":120,"v":20.7},{"u":"lon","t":120,"v":24.30623},'
             '{"u":"lat","t":120,"v":60.07966},{"u":"%EL","t":150,"v":98},{"t":180,"v":21.2},'
             '{"u":"lon","t":180,"v":24.30628},{"u":"lat","t":180,"v":60.07967}]',
    "5.1.4": '[{"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067464e+09,"v":20},'
             '{"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067464e+09,"v":24.30621},'
             '{"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067464e+09,"v":60.07965},'
             '{"n":"urn:dev:ow:10e2073a01080063","u":"%EL","t":1.320067614e+09,"v":98}]',
    "5.1.5": '[{"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":23.1},'
             '{"n":"label","vs":"Machine Room"},{"n":"open","vb":false},{"n":"nfv-reader","vd":"aGkgCg"}]',
    "5.1.6": '[{"bn":"2001:db8::2/","bt":1.320078429e+09,"n":"temperature","u":"Cel","v":25.2},'
             '{"n":"humidity","u":"%RH","v":30},{"bn":"2001:db8::1/","n":"temperature","u":"Cel","v":12.3},'
             '{"n":"humidity","u":"%RH","v":67}]',
    "5.1.7a": '[{"bn":"urn:dev:ow:10e2073a01080063:"},{"n":"temp","u":"Cel","v":23.1},'
              '{"n":"heat","u":"/","v":1},{"n":"fan","u":"/","v":0}]',
    "5.1.7b": '[{"bt":1.320078429e+09,"bu":"/","n":"2001:db8::3","v":1},{"n":"2001:db8::4","v":1}]',
    "5.1.7c": '[{"bt":1.320078429e+09,"bu":"/","n":"2001:db8::3","v":0.5},{"n":"2001:db8::4","v":0.5},'
              '{"n":"2001:db8::3","t":0.1,"v":0},{"n":"2001:db8::4","t":0.1,"v":0}]',
}
LABELS = {name: label for label, name in SENML_CBOR_LABELS.items()}


def senml_cbor(records: list[dict[str, Any]], **kw: Any) -> bytes:
    """SenML JSON records in their SenML CBOR form: integer labels, vd as a byte string."""
    def value(name: str, v: Any) -> Any:
        return base64.urlsafe_b64decode(v + "=" * (-len(v) % 4)) if name == "vd" else v
    return cbor2.dumps([{LABELS.get(k, k): value(k, v) for k, v in r.items()} for r in records], **kw)


@pytest.mark.parametrize("name", sorted(RFC8428_JSON_EXAMPLES))
def test_rfc8428_examples_in_json_and_cbor(name: str) -> None:
    text = RFC8428_JSON_EXAMPLES[name]
    records = json.loads(text)
    data = decode_payload(SENML_JSON, text.encode())
    assert same(data, records)  # SenML JSON passes through as written
    assert same(decode_payload(SENML_CBOR, senml_cbor(records)), data)
    canonical = decode_payload(SENML_CBOR, senml_cbor(records, canonical=True))  # keys sorted, floats shortest
    assert json.dumps(canonical, sort_keys=True) == json.dumps(data, sort_keys=True)


RFC8428_CBOR_DUMP = """
 87 a7 21 78 1b 75 72 6e 3a 64 65 76 3a 6f 77 3a 31 30 65 32 30 37 33 61 30 31 30 38 30 30 36 3a
 22 fb 41 d3 03 a1 5b 00 10 62 23 61 41 20 05 00 67 76 6f 6c 74 61 67 65 01 61 56 02 fb 40 5e 06
 66 66 66 66 66 a3 00 67 63 75 72 72 65 6e 74 06 24 02 fb 3f f3 33 33 33 33 33 33 a3 00 67 63 75
 72 72 65 6e 74 06 23 02 fb 3f f4 cc cc cc cc cc cd a3 00 67 63 75 72 72 65 6e 74 06 22 02 fb 3f
 f6 66 66 66 66 66 66 a3 00 67 63 75 72 72 65 6e 74 06 21 02 f9 3e 00 a3 00 67 63 75 72 72 65 6e
 74 06 20 02 fb 3f f9 99 99 99 99 99 9a a3 00 67 63 75 72 72 65 6e 74 06 00 02 fb 3f fb 33 33 33
 33 33 33
"""


def test_rfc8428_section6_cbor_dump_byte_for_byte() -> None:
    payload = bytes.fromhex(RFC8428_CBOR_DUMP)
    assert len(payload) == 0xC3
    # the diagnostic notation the RFC gives for it (its last record has "t": 0, unlike the JSON example)
    expected = [{"bn": "urn:dev:ow:10e2073a0108006:", "bt": 1276020076.001, "bu": "A", "bver": 5, "n": "voltage",
                 "u": "V", "v": 120.1}] + [{"n": "current", "t": t, "v": v} for t, v in
                                           [(-5, 1.2), (-4, 1.3), (-3, 1.4), (-2, 1.5), (-1, 1.6), (0, 1.7)]]
    assert same(decode_payload(SENML_CBOR, payload), expected)
    as_json = json.loads(RFC8428_JSON_EXAMPLES["5.1.2b"])
    as_json[-1] = {"n": "current", "t": 0, "v": 1.7}
    assert same(decode_payload(SENML_JSON, json.dumps(as_json).encode()), expected)


@pytest.mark.parametrize(("records", "reason"), [
    ({"n": "a", "v": 1}, "SenML: a pack must be an array of one or more records"),
    ([], "SenML: a pack must be an array of one or more records"),
    ([{"v": 1}, 2], "SenML: record 2 must be an object"),
    ([{"n": "a", "v": "1"}], "SenML: record 1: 'v' must be a number"),
    ([{"n": "a"}, {"n": "b"}, {"n": "c", "v": True}], "SenML: record 3: 'v' must be a number"),
    ([{"n": 1, "v": 1}], "SenML: record 1: 'n' must be a string"),
    ([{"bn": None}], "SenML: record 1: 'bn' must be a string"),
    ([{"n": "a", "vs": 1}], "SenML: record 1: 'vs' must be a string"),
    ([{"n": "a", "vb": 1}], "SenML: record 1: 'vb' must be a boolean"),
    ([{"n": "a", "v": 1, "t": "now"}], "SenML: record 1: 't' must be a number"),
    ([{"n": "a", "v": 1, "ut": [1]}], "SenML: record 1: 'ut' must be a number"),
    ([{"bt": {}}], "SenML: record 1: 'bt' must be a number"),
    ([{"n": "a", "vd": 1}], "SenML: record 1: 'vd' must be a base64url string"),
    ([{"n": "a", "vd": "aGkgCg+/"}], "SenML: record 1: 'vd' must be base64url"),
    ([{"n": "a", "vd": "aGkgCh"}], "SenML: record 1: 'vd' must be base64url"),  # bits set beyond the data
    ([{"n": "a", "vd": "aGkgC"}], "SenML: record 1: 'vd' must be base64url"),
    ([{"n": "a", "vd": "aGkgCg="}], "SenML: record 1: 'vd' must be base64url"),
    ([{"n": "a", "vd": "aGk gCg"}], "SenML: record 1: 'vd' must be base64url"),
    ([{"n": "a", "v": 1, "vs": "x"}], "SenML: record 1: more than one value field ('v' and 'vs')"),
    ([{"n": "a", "vb": True, "vd": ""}], "SenML: record 1: more than one value field ('vb' and 'vd')"),
    ([{"bver": 0}], "SenML: record 1: 'bver' must be a positive integer"),
    ([{"bver": 5.0}], "SenML: record 1: 'bver' must be a positive integer"),
    ([{"bver": "10"}], "SenML: record 1: 'bver' must be a positive integer"),
    ([{"bver": 11}], "SenML: record 1: version 11 is not supported (up to 10 is)"),
    ([{"bver": 2**64}], "SenML: record 1: version over 999 is not supported (up to 10 is)"),
    ([{"bver": 5}, {"bver": 6}], "SenML: record 2: 'bver' differs from the earlier records"),
    ([{"n": "a"}, {"bver": 5}], "SenML: record 2: 'bver' differs from the earlier records"),
    ([{"n": "a", "v": 1, "lat_": 1}], "SenML: record 1: label 'lat_' must be understood and is not"),
])
def test_senml_refused_in_json_and_cbor(records: Any, reason: str) -> None:
    e = refused(SENML_JSON, json.dumps(records).encode())
    assert (e.code, e.diagnostic) == ("4.00", reason)
    if isinstance(records, list) and all(isinstance(r, dict) for r in records) and "vd" not in str(records):
        e = refused(SENML_CBOR, senml_cbor(records))
        assert (e.code, e.diagnostic) == ("4.00", reason)


def test_senml_details() -> None:
    # unknown labels pass through, as they are (JSON) or mapped like any CBOR value (CBOR)
    records = [{"n": "a", "v": 1, "foo": {"x": [1, None]}, "bar": "b"}]
    assert decode_payload(SENML_JSON, json.dumps(records).encode()) == records
    assert decode_payload(SENML_CBOR, senml_cbor(records)) == records
    assert decode_payload(SENML_CBOR, cbor2.dumps([{0: "a", "raw": b"\xfb"}])) == [{"n": "a", "raw": "+w=="}]
    # vd: base64url without padding in the output; padding is accepted on input
    assert decode_payload(SENML_JSON, b'[{"n":"a","vd":"-_8"}]') == [{"n": "a", "vd": "-_8"}]
    assert decode_payload(SENML_JSON, b'[{"n":"a","vd":"-_8="}]') == [{"n": "a", "vd": "-_8"}]
    assert decode_payload(SENML_CBOR, cbor2.dumps([{0: "a", 8: b"\xfb\xff"}])) == [{"n": "a", "vd": "-_8"}]
    assert refused(SENML_CBOR, cbor2.dumps([{0: "a", 8: "-_8"}])).diagnostic == \
        "SenML: record 1: 'vd' must be a byte string"
    # a byte string is not a string in SenML CBOR
    assert refused(SENML_CBOR, cbor2.dumps([{0: b"a", 2: 1}])).diagnostic == "SenML: record 1: 'n' must be a string"
    # SenML CBOR: integer labels only from RFC 8428 Table 4; the text names are the same labels
    assert refused(SENML_CBOR, cbor2.dumps([{0: "a", 9: 1}])).diagnostic == "SenML: record 1: unknown CBOR label 9"
    assert decode_payload(SENML_CBOR, cbor2.dumps([{"n": "a", 2: 1}])) == [{"n": "a", "v": 1}]
    assert refused(SENML_CBOR, cbor2.dumps([{0: "a", "n": "b"}])).diagnostic == \
        "SenML: record 1: label 'n' appears twice"
    assert refused(SENML_CBOR, cbor2.dumps([[0, "a"]])).diagnostic == "SenML: record 1 must be a map"
    # decimal fractions (RFC 8428 section 6) are numbers in SenML CBOR, read as the nearest double
    assert same(decode_payload(SENML_CBOR, cbor2.dumps([{0: "a", 2: decimal.Decimal("273.15")}])),
                [{"n": "a", "v": 273.15}])
    assert same(decode_payload(SENML_CBOR, cbor2.dumps([{0: "a", 6: cbor2.CBORTag(4, [3, 2**70])}])),
                [{"n": "a", "t": float(2**70 * 1000)}])
    assert decode_payload(SENML_CBOR, cbor2.dumps([{0: "a", 2: cbor2.CBORTag(4, [0, 0])}])) == [{"n": "a", "v": 0.0}]
    for exponent, reason in [(400, "number out of range"), (10**6, "number out of range"),
                             (-400, "number underflows to zero"), (-(2**63), "number underflows to zero"),
                             (2**64, "exponent out of range")]:
        payload = cbor2.dumps([{0: "a", 2: cbor2.CBORTag(4, [exponent, 1])}])
        assert refused(SENML_CBOR, payload).diagnostic == f"CBOR tag 4 (decimal fraction): {reason}"
    assert refused(SENML_CBOR, cbor2.dumps([{0: cbor2.CBORTag(4, [0, 1])}])).diagnostic == \
        "SenML: record 1: 'n' must be a string"
    assert refused(SENML_CBOR, cbor2.dumps([{0: "a", "x": [cbor2.CBORTag(4, [0, 1])]}])).diagnostic == \
        "CBOR tag 4 (decimal fraction) is not supported outside SenML numbers"
    assert refused(SENML_CBOR, cbor2.dumps([{0: "a", 2: cbor2.CBORTag(4, [0, 1, 2])}])).diagnostic == \
        "CBOR tag 4 (decimal fraction) must enclose an array of two integers"
    assert refused(SENML_CBOR, cbor2.dumps([{0: "a", 2: cbor2.CBORTag(4, [0.5, 1])}])).diagnostic == \
        "CBOR tag 4 (decimal fraction) must enclose integers"
    # a version up to 10, the same in every record; other tags keep their meaning
    assert decode_payload(SENML_JSON, b'[{"bver":10,"n":"a","v":1},{"bver":10,"n":"b","v":2}]')
    assert decode_payload(SENML_CBOR, cbor2.dumps([{0: "a", 6: cbor2.CBORTag(1, 1.5e9), 2: 1}])) == \
        [{"n": "a", "t": 1.5e9, "v": 1}]
    # indefinite-length packs and records are accepted (same data)
    assert decode_payload(SENML_CBOR, bytes.fromhex("9fbf0061610201ffff")) == [{"n": "a", "v": 1}]


# -- 4. properties ----------------------------------------------------------------------------------------------

ints = st.one_of(st.integers(), st.integers(min_value=-(2**MAX_INT_BITS) + 1, max_value=2**MAX_INT_BITS - 1))
floats = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, st.text())


def json_values(leaves: st.SearchStrategy[Any] = scalars) -> st.SearchStrategy[Any]:
    return st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=8),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=8)),
                        max_leaves=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values())
def test_json_values_encoded_by_cbor2_map_back_to_themselves(value: Any) -> None:
    assert same(decode_payload(CBOR, cbor2.dumps(value), max_size=1 << 20), value)
    # canonical CBOR sorts the map keys and uses the shortest float that keeps the value
    out = decode_payload(CBOR, cbor2.dumps(value, canonical=True), max_size=1 << 20)
    assert json.dumps(out, sort_keys=True) == json.dumps(value, sort_keys=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values(), st.booleans(), st.sampled_from([None, 0, 2]))
def test_json_text_round_trips(value: Any, ascii_only: bool, indent: int | None) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode()
    out = decode_payload(JSON, text, max_size=1 << 20)
    assert same(out, value)
    assert json.loads(encode_envelope(make_envelope("d", "i", 0, JSON, out)))["data"] == value


@settings(max_examples=200, deadline=None)
@given(json_values(st.one_of(scalars, st.binary(max_size=20))))
def test_byte_strings_anywhere_become_base64(value: Any) -> None:
    def expected(v: Any) -> Any:
        if isinstance(v, bytes):
            return base64.b64encode(v).decode()
        if isinstance(v, list):
            return [expected(x) for x in v]
        if isinstance(v, dict):
            return {k: expected(x) for k, x in v.items()}
        return v
    assert same(decode_payload(CBOR, cbor2.dumps(value), max_size=1 << 20), expected(value))


def check_any_body(content_format: int, payload: bytes, max_depth: int = 16, max_items: int = 1024) -> None:
    """Nothing but PayloadError; a result within the bounds that encodes as an envelope."""
    try:
        out = decode_payload(content_format, payload, max_depth=max_depth, max_items=max_items)
    except PayloadError as e:
        assert e.code in ("4.00", "4.13") and e.diagnostic.isascii() and e.diagnostic.isprintable()
        assert 0 < len(e.diagnostic) <= 120
        return
    depth, items = shape(out)
    assert depth <= max_depth and items <= max_items and only_json_types(out)
    encode_envelope(make_envelope("d", "i", 0, content_format, out))


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from([CBOR, JSON, SENML_JSON, SENML_CBOR]), st.binary(max_size=64),
       st.integers(1, 4), st.integers(0, 8))
def test_random_bodies_raise_only_payload_error(content_format: int, payload: bytes, max_depth: int,
                                                max_items: int) -> None:
    check_any_body(content_format, payload)
    check_any_body(content_format, payload, max_depth, max_items)


def mutations(base: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(base))
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
            i = draw(st.integers(0, max(len(data) - 1, 0)))
            if op == "flip" and data:
                data[i] ^= 1 << draw(st.integers(0, 7))
            elif op == "set" and data:
                data[i] = draw(st.sampled_from([0x00, 0x18, 0x1b, 0x5f, 0x7f, 0x9f, 0xbf, 0xc4, 0xd8, 0xd9, 0xf7,
                                                0xf9, 0xff, draw(st.integers(0, 255))]))
            elif op == "insert":
                data[i:i] = draw(st.binary(min_size=1, max_size=9))
            elif op == "delete" and data:
                del data[i]
            elif op == "truncate":
                del data[i:]
        return bytes(data)
    return mutate()


valid_cbor = json_values(st.one_of(scalars, st.binary(max_size=8))).map(cbor2.dumps)
valid_senml = st.lists(st.fixed_dictionaries({0: st.text(max_size=4)}, optional={
    2: floats, 3: st.text(max_size=4), 4: st.booleans(), 8: st.binary(max_size=4), 6: ints, -1: st.just(10),
    "x": scalars}), min_size=1, max_size=4).map(cbor2.dumps)


@settings(max_examples=1500, deadline=None)
@given(mutations(st.one_of(valid_cbor, valid_senml)))
def test_mutated_cbor_raises_only_payload_error(payload: bytes) -> None:
    check_any_body(CBOR, payload)
    check_any_body(SENML_CBOR, payload)
    check_any_body(CBOR, payload, 3, 5)


@settings(max_examples=800, deadline=None)
@given(mutations(json_values().map(lambda v: json.dumps(v).encode())))
def test_mutated_json_raises_only_payload_error(payload: bytes) -> None:
    check_any_body(JSON, payload)
    check_any_body(SENML_JSON, payload)


VALUE_FIELDS: list[dict[str, Any]] = [{}, {"v": 1.5}, {"vs": "x"}, {"vb": False}, {"vd": b"\x00\xfe"}, {"v": 7}]
senml_records = st.lists(st.fixed_dictionaries({}, optional={
    "bn": st.text(max_size=6), "bt": floats, "bu": st.text(max_size=3), "bv": st.one_of(ints, floats),
    "bs": floats, "bver": st.integers(1, 10), "n": st.text(max_size=6), "u": st.text(max_size=3),
    "s": st.one_of(ints, floats), "t": st.one_of(st.integers(-(2**40), 2**40), floats), "ut": floats,
    "other": json_values(), "b_x": st.text(max_size=3),
}).flatmap(lambda r: st.sampled_from(VALUE_FIELDS).map(lambda value: {**r, **value})), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(senml_records)
def test_senml_cbor_equals_senml_json(records: list[dict[str, Any]]) -> None:
    version = next((r["bver"] for r in records if "bver" in r), 10)
    for r in records:
        r.pop("bver", None)
    records[0]["bver"] = version
    as_json = [{k: (base64.urlsafe_b64encode(v).rstrip(b"=").decode() if k == "vd" else v) for k, v in r.items()}
               for r in records]
    as_cbor = [{LABELS.get(k, k): v for k, v in r.items()} for r in records]
    from_json = decode_payload(SENML_JSON, json.dumps(as_json).encode(), max_size=1 << 20)
    from_cbor = decode_payload(SENML_CBOR, cbor2.dumps(as_cbor), max_size=1 << 20)
    assert same(from_json, from_cbor) and same(from_json, as_json)


# -- 5. bounds --------------------------------------------------------------------------------------------------

def fastest(fn: Callable[[], object], runs: int = 5) -> float:
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        with contextlib.suppress(PayloadError):
            fn()
        best = min(best, time.perf_counter() - start)
    return best


def sixteen_kb_bodies() -> list[tuple[int, bytes]]:
    n = 16384
    records = [{"n": f"s{i}", "u": "Cel", "v": 21.5 + i, "t": -i} for i in range(400)]
    return [
        (CBOR, cbor2.dumps(["x" * 10] * 1000)[:n]),  # truncated, 1000 items
        (CBOR, cbor2.dumps([{"k": "v" * 12}] * 511)),  # 1022 items
        (CBOR, b"\x7f" + b"\x60" * (n - 2) + b"\xff"),  # 16382 empty chunks
        (CBOR, b"\x5f" + b"\x41\x00" * ((n - 2) // 2) + b"\xff"),
        (CBOR, b"\xd9\xd9\xf7" * ((n - 1) // 3) + b"\x00"),  # tag 55799 5461 times
        (CBOR, b"\x9f" * 15 + b"\x9f\x00" * ((n - 16) // 2)),
        (CBOR, (b"\x9f" * 16 + b"\xff" * 16) * (n // 32)),
        (CBOR, b"\xd8\x18\x59" + (n - 5).to_bytes(2, "big") + b"\x00" * (n - 5)),  # tag 24, trailing bytes
        (JSON, json.dumps([{"k": "v" * 12}] * 500).encode()[:n]),
        (JSON, b"[" + b'"\\"",' * ((n - 2) // 5) + b"1]"),
        (JSON, b"[" * 16 + b"1," * ((n - 33) // 2) + b"1" + b"]" * 16),
        (JSON, b'"' + b"\\u0000" * ((n - 2) // 6) + b'"'),
        (SENML_JSON, json.dumps(records).encode()[:n]),
        (SENML_JSON, json.dumps(records[:200]).encode()),
        (SENML_CBOR, senml_cbor(records[:200])),
        (SENML_CBOR, senml_cbor(records)[:n]),
    ]


def test_16_kb_bodies_decode_well_under_50_ms() -> None:
    for content_format, payload in sixteen_kb_bodies():
        assert len(payload) <= 16384
        elapsed = fastest(functools.partial(decode_payload, content_format, payload))
        assert elapsed < 0.025, (content_format, payload[:20], elapsed)


def test_16_kb_bodies_use_bounded_memory() -> None:
    for content_format, payload in sixteen_kb_bodies():
        tracemalloc.start()
        with contextlib.suppress(PayloadError):
            decode_payload(content_format, payload)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 2_000_000, (content_format, payload[:20], peak)


@pytest.mark.parametrize("head", ["5a40000000", "7a40000000", "9a40000000", "ba40000000", "5bffffffffffffffff",
                                  "9bffffffffffffffff", "bb7fffffffffffffff", "d8185a40000000", "c25a40000000",
                                  "d8255a40000000", "5f5a40000000", "7f7a40000000", "829a40000000"])
def test_a_1_gb_declared_length_is_refused_at_once(head: str) -> None:
    payload = bytes.fromhex(head) + b"\x00" * 100
    tracemalloc.start()
    e = refused(CBOR, payload)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (e.code, e.diagnostic) == ("4.00", "CBOR: truncated")
    assert peak < 100_000 and fastest(functools.partial(decode_payload, CBOR, payload)) < 0.005


def test_size_limit() -> None:
    assert decode_payload(JSON, b"1" * 10, max_size=10) == 1111111111
    e = refused(JSON, b"1" * 11, max_size=10)
    assert (e.code, e.diagnostic) == ("4.13", "payload of 11 bytes is over the limit of 10")
    assert refused(CBOR, b"\xff" * 16385).code == "4.13"  # the size is checked before the content
    assert decode_payload(CBOR, cbor2.dumps("x" * 16000)) == "x" * 16000


def test_content_format() -> None:
    for fmt in (None, 0, 40, 41, 42, 47, 61, 111, 113, 11050, 65535):
        e = refused(fmt, b"{}")
        assert e.code == "4.15"
    assert refused(None, b"{}").diagnostic == \
        "a Content-Format is required: 50 (JSON), 60 (CBOR), 110 (SenML JSON), 112 (SenML CBOR)"
    assert refused(42, b"{}").diagnostic == "Content-Format 42 is not supported (50, 60, 110 and 112 are)"
    assert refused(42, b"x" * 20000).code == "4.15"  # the format first, then the size
    assert refused(2**70, b"{}").diagnostic == "Content-Format ? is not supported (50, 60, 110 and 112 are)"
    assert [int(f) for f in ContentFormat] == [50, 60, 110, 112]
    assert decode_payload(ContentFormat.CBOR, b"\x01") == 1


@pytest.mark.parametrize("content_format", [CBOR, JSON, SENML_JSON, SENML_CBOR])
def test_depth_limit(content_format: int) -> None:
    def nested(depth: int) -> bytes:  # SenML: a pack of one record with an unknown label holding arrays
        senml = content_format in (SENML_JSON, SENML_CBOR)
        value: Any = 1
        for _ in range(depth - 2 if senml else depth):
            value = [value]
        if senml:
            value = [{"n": "a", "x": value}]
        return json.dumps(value).encode() if content_format in (JSON, SENML_JSON) else cbor2.dumps(value)
    assert shape(decode_payload(content_format, nested(16)))[0] == 16
    e = refused(content_format, nested(17))
    assert (e.code, e.diagnostic) == ("4.00", "nesting deeper than 16")
    assert shape(decode_payload(content_format, nested(3), max_depth=3))[0] == 3
    assert refused(content_format, nested(4), max_depth=3).diagnostic == "nesting deeper than 3"


def test_deep_nesting_never_recurses() -> None:
    for payload in (b"\x81" * 16000 + b"\x00", b"\x9f" * 16000, b"\xa1\x00" * 8000, b"\xd8\x18\x41" * 5000,
                    b"\xd9\xd9\xf7" * 5000 + b"\x81" * 1000 + b"\x00"):
        assert refused(CBOR, payload).diagnostic.startswith(("nesting deeper than 16", "CBOR"))
    for text in (b"[" * 16000, b'{"a":' * 3000, b"[" * 16000 + b"]" * 16000):
        assert refused(JSON, text, max_size=1 << 20).diagnostic == "nesting deeper than 16"
    assert refused(JSON, b"[" * 300 + b"]" * 300, max_depth=256).diagnostic == "nesting deeper than 256"
    assert shape(decode_payload(CBOR, b"\x81" * 256 + b"\x00", max_depth=256))[0] == 256
    # tag 24 counts as a level: its item is a nested document
    assert refused(CBOR, tagged(24, cbor2.dumps([1])), max_depth=1).diagnostic == "nesting deeper than 1"
    for bad in (0, 257, -1):
        with pytest.raises(ValueError):
            decode_payload(CBOR, b"\x00", max_depth=bad)


@pytest.mark.parametrize("content_format", [CBOR, JSON, SENML_JSON, SENML_CBOR])
def test_items_limit(content_format: int) -> None:
    def body(records: int) -> bytes:  # records * 3 items
        value = [{"n": "a", "v": i} for i in range(records)]
        return json.dumps(value).encode() if content_format in (JSON, SENML_JSON) else senml_cbor(value)
    assert shape(decode_payload(content_format, body(341), max_size=1 << 20))[1] == 1023
    e = refused(content_format, body(342), max_size=1 << 20)
    assert (e.code, e.diagnostic) == ("4.00", "more than 1024 items")
    assert refused(content_format, body(2), max_items=5).diagnostic == "more than 5 items"
    assert decode_payload(content_format, body(2), max_items=6)


def test_items_counted_across_indefinite_and_embedded_items() -> None:
    assert refused(CBOR, b"\x9f" + b"\x00" * 1025 + b"\xff").diagnostic == "more than 1024 items"
    entries = b"".join(cbor2.dumps(i) + b"\xf6" for i in range(1025))
    assert refused(CBOR, b"\xbf" + entries + b"\xff").diagnostic == "more than 1024 items"
    assert shape(decode_payload(CBOR, b"\xbf" + entries[:-4] + b"\xff")) == (1, 1024)
    embedded = cbor2.CBORTag(24, cbor2.dumps(list(range(600))))
    assert shape(decode_payload(CBOR, cbor2.dumps([embedded]))) == (2, 601)
    assert refused(CBOR, cbor2.dumps([embedded, embedded])).diagnostic == "more than 1024 items"
    # a definite length is refused before its items are read
    assert refused(CBOR, b"\x99\x04\x01" + b"\x00" * 1025).diagnostic == "more than 1024 items"


# -- 6. key, id, envelope ------------------------------------------------------------------------------------------

def test_check_key() -> None:
    for good in ("3fa29c01.17", "a", "A-Z_a.z-0", "x" * 64, "0", "..", "-"):
        assert check_key(good)
    for bad in ("", "x" * 65, "a b", "k=1", "a/b", "\u00e9", "a\n", "a:b", "a%20", 17, None, b"a"):
        assert not check_key(cast(str, bad))


def test_key_from_query() -> None:
    assert key_from_query(["k=3fa29c01.17"]) == "3fa29c01.17"
    assert key_from_query(["x=1", "k=a", "kk=2"]) == "a"
    assert key_from_query([]) is None and key_from_query(["key=1", "K=2"]) is None
    for bad in (["k="], ["k"], ["k=a b"], ["k=" + "x" * 65]):
        with pytest.raises(PayloadError) as info:
            key_from_query(bad)
        assert (info.value.code, info.value.diagnostic) == \
            ("4.00", "Uri-Query 'k' must be 1 to 64 characters of A-Z a-z 0-9 . _ -")
    with pytest.raises(PayloadError) as info:
        key_from_query(["k=1", "k=2"])
    assert (info.value.code, info.value.diagnostic) == ("4.00", "Uri-Query 'k' appears more than once")


def test_message_id() -> None:
    mid = message_id("sensor-1", "3fa29c01.17")
    assert re.fullmatch(r"[0-9a-f]{32}", mid) and mid == message_id("sensor-1", "3fa29c01.17")
    # the documented construction, independently
    d, k = b"sensor-1", b"3fa29c01.17"
    data = b"iotdtls-gateway/message-id/v1\x00" + len(d).to_bytes(4, "big") + d + len(k).to_bytes(4, "big") + k
    assert mid == hashlib.sha256(data).hexdigest()[:32]
    assert mid != message_id("sensor-2", "3fa29c01.17") != message_id("sensor-1", "3fa29c01.18")
    assert message_id("a", "bc") != message_id("ab", "c")  # the lengths separate device and key
    assert message_id("capteur-\u00e9", "1") != message_id("capteur-e", "1")
    for device, key in (("", "1"), ("d", ""), ("d", "a b"), ("d", "x" * 65)):
        with pytest.raises(ValueError):
            message_id(device, key)
    ids = {message_id(f"d{i % 10}", f"boot.{i}") for i in range(1000)}
    assert len(ids) == 1000


def test_timestamps() -> None:
    assert format_timestamp(1796640961.123) == "2026-12-07T10:56:01.123Z"
    assert format_timestamp(1796640961) == "2026-12-07T10:56:01.000Z"
    assert format_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert format_timestamp(1796640961.9996) == "2026-12-07T10:56:02.000Z"  # to the nearest millisecond
    assert format_timestamp(1796640961.0004) == "2026-12-07T10:56:01.000Z"
    assert format_timestamp(253402300799.999) == "9999-12-31T23:59:59.999Z"
    assert format_timestamp(951782400.5) == "2000-02-29T00:00:00.500Z"
    for bad in (-1, math.nan, math.inf, 253402300800, True, "0"):
        with pytest.raises(ValueError):
            format_timestamp(cast(float, bad))


def test_envelope() -> None:
    data = decode_payload(CBOR, cbor2.dumps({"temp": 21.5, "seq": 17, "raw": b"\x01\x02", "\u00e9t\u00e9": True}))
    env = make_envelope("sensor-1", message_id("sensor-1", "3fa29c01.17"), 1796640961.123, ContentFormat.CBOR, data)
    assert list(env) == list(ENVELOPE_FIELDS) and type(env["content_format"]) is int
    body = encode_envelope(env)
    assert body == ('{"device":"sensor-1","id":"' + message_id("sensor-1", "3fa29c01.17") + '",'
                    '"received_at":"2026-12-07T10:56:01.123Z","content_format":60,'
                    '"data":{"temp":21.5,"seq":17,"raw":"AQI=","\u00e9t\u00e9":true}}').encode()
    # the fields in a fixed order, whatever the order of the mapping
    assert encode_envelope(dict(reversed(env.items()))) == body
    assert json.loads(body) == env
    with pytest.raises(ValueError):
        encode_envelope({k: v for k, v in env.items() if k != "id"})
    with pytest.raises(ValueError):
        encode_envelope({**env, "extra": 1})
    with pytest.raises(ValueError):
        encode_envelope({**env, "data": math.nan})
    for fmt in (0, 42, 61):
        with pytest.raises(ValueError):
            make_envelope("d", "i", 0, fmt, None)
    for device, msg_id in (("", "i"), ("d", "")):
        with pytest.raises(ValueError):
            make_envelope(device, msg_id, 0, CBOR, None)


def test_payload_error() -> None:
    e = PayloadError("4.00", "CBOR: truncated")
    assert (e.code, e.diagnostic, str(e)) == ("4.00", "CBOR: truncated", "4.00 CBOR: truncated")
    assert isinstance(e, Exception)
