"""CPython tests of the MicroPython device CBOR and CoAP layers (micropython/iotdtls_mp/cbor.py, coap.py)."""

import contextlib
import itertools
import math
import random
import sys
import warnings
from pathlib import Path

import aiocoap
import cbor2
import pytest
from aiocoap.optiontypes import OpaqueOption

_MP = Path(__file__).resolve().parent.parent / "micropython"
if str(_MP) not in sys.path:
    sys.path.insert(0, str(_MP))

from iotdtls_mp import cbor, coap  # noqa: E402

# --------------------------------------------------------------------------------------------------
# CBOR
# --------------------------------------------------------------------------------------------------

EDGE_INTS = [
    0,
    1,
    23,
    24,
    255,
    256,
    65535,
    65536,
    2**32 - 1,
    2**32,
    2**63 - 1,
    2**64 - 1,
    -1,
    -24,
    -25,
    -256,
    -257,
    -65536,
    -65537,
    -(2**32),
    -(2**63),
    -(2**64),
]
EDGE_FLOATS = [0.0, -0.0, 0.5, 1.1, -4.1, 1e300, -1e-300, 3.4028234663852886e38, 5e-324, 65504.0, math.inf, -math.inf]
TELEMETRY = {
    "uptime": 123456,
    "count": 42,
    "temp": 21.5,
    "rh": 0.4375,
    "ok": True,
    "err": None,
    "id": b"\x01\x02\xff",
    "tags": ["a", "ü", ""],
    "nested": {"x": [1, [2, [3, {}]]], "y": []},
    -5: False,
}


@pytest.mark.parametrize(
    "value",
    [
        *EDGE_INTS,
        *EDGE_FLOATS,
        TELEMETRY,
        {},
        [],
        "",
        b"",
        "日本語",
        True,
        False,
        None,
        [[[[]]]],
        {"a": {"b": {"c": {}}}},
        list(range(30)),
        "x" * 300,
        b"\0" * 70000,
    ],
)
def test_cbor_roundtrip_against_cbor2(value):
    enc = cbor.dumps(value)
    assert cbor2.loads(enc) == value
    assert cbor.loads(enc) == value
    assert cbor.loads(cbor2.dumps(value)) == value


def test_cbor_int_encoding_is_canonical():
    for v in EDGE_INTS:
        assert cbor.dumps(v) == cbor2.dumps(v), v


def test_cbor_float_widths():
    assert cbor.dumps(0.5) == bytes.fromhex("fa3f000000")
    assert cbor.dumps(1.1) == bytes.fromhex("fb3ff199999999999a")
    assert cbor.dumps(1e300) == bytes.fromhex("fb7e37e43c8800759c")
    nan = cbor.loads(cbor.dumps(math.nan))
    assert math.isnan(nan)
    assert math.isnan(cbor2.loads(cbor.dumps(math.nan)))


def test_cbor_tuple_encodes_as_array():
    assert cbor.dumps((1, 2)) == cbor2.dumps([1, 2])


# RFC 8949 Appendix A (the subset this codec supports).
RFC8949_A = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (0.0, "f90000"),
    (-0.0, "f98000"),
    (1.0, "f93c00"),
    (1.1, "fb3ff199999999999a"),
    (1.5, "f93e00"),
    (65504.0, "f97bff"),
    (100000.0, "fa47c35000"),
    (3.4028234663852886e38, "fa7f7fffff"),
    (1.0e300, "fb7e37e43c8800759c"),
    (5.960464477539063e-8, "f90001"),
    (0.00006103515625, "f90400"),
    (-4.0, "f9c400"),
    (-4.1, "fbc010666666666666"),
    (math.inf, "f97c00"),
    (-math.inf, "f9fc00"),
    (math.inf, "fa7f800000"),
    (-math.inf, "faff800000"),
    (math.inf, "fb7ff0000000000000"),
    (-math.inf, "fbfff0000000000000"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ('"\\', "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ("\U00010151", "64f0908591"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "9819" + "".join(f"{i:02x}" for i in range(1, 24)) + "18181819"),
    ({}, "a0"),
    ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}, "a56161614161626142616361436164614461656145"),
]


@pytest.mark.parametrize(("value", "hexenc"), RFC8949_A)
def test_cbor_rfc8949_appendix_a_decode(value, hexenc):
    got = cbor.loads(bytes.fromhex(hexenc))
    assert got == value
    assert type(got) is type(value)
    if isinstance(value, float):
        assert math.copysign(1, got) == math.copysign(1, value)


@pytest.mark.parametrize(("value", "hexenc"), RFC8949_A)
def test_cbor_rfc8949_appendix_a_encode_decodable(value, hexenc):
    # Our encoder picks float32/float64 (not half), so check semantic equality plus exact bytes for non-floats.
    enc = cbor.dumps(value)
    assert cbor2.loads(enc) == value
    if not isinstance(value, float):
        assert enc == bytes.fromhex(hexenc)


def test_cbor_half_nan():
    assert math.isnan(cbor.loads(bytes.fromhex("f97e00")))


@pytest.mark.parametrize(
    "hexenc",
    [
        "",
        "18",
        "19ff",
        "1a0000",
        "1b00000000000000",
        "1c",
        "1d",
        "1e",
        "1f",  # truncated / reserved ai
        "41",
        "6261",
        "830102",
        "a201020304"[:-2],
        "a1",
        "fa0000",
        "fb00",
        "f9",  # truncated items
        "0000",
        "a0ff",
        "f6f6",  # trailing bytes
        "5f",
        "7f",
        "9f",
        "bf",
        "5fff",
        "9fff",  # indefinite lengths
        "c074323031332d30332d32315432303a30343a30305a",
        "c11a514b67b0",  # tags
        "e0",
        "f0",
        "f7",
        "f820",
        "ff",  # unsupported simple values / break
        "62c328",
        "61ff",  # invalid utf-8
        "a18001",
        "a1a00102",  # unhashable map keys
        "9bffffffffffffffff",
        "bbffffffffffffffff",
        "5bffffffffffffffff",
        "7b7fffffffffffffff",  # huge lengths
        "81" * 17 + "00",
        "a1" + "6161a1" * 16 + "616100",  # nesting too deep
    ],
)
def test_cbor_malformed_raises_valueerror(hexenc):
    with pytest.raises(ValueError):
        cbor.loads(bytes.fromhex(hexenc))


def test_cbor_depth_limit_boundary():
    ok = [[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]  # 16 nested arrays around an int: depth 16
    assert cbor.loads(cbor.dumps(ok)) == ok
    with pytest.raises(ValueError):
        cbor.dumps([ok])


@pytest.mark.parametrize("value", [2**64, -(2**64) - 1, {1, 2}, object(), 1j, {"a": set()}, [bytearray, 1]])
def test_cbor_unsupported_encode_raises_valueerror(value):
    with pytest.raises(ValueError):
        cbor.dumps(value)


def test_cbor_fuzz_only_valueerror():
    rng = random.Random(1234)
    seeds = [cbor.dumps(TELEMETRY), cbor.dumps(EDGE_INTS), cbor.dumps(EDGE_FLOATS)]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            if op == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op == 1 and data:
                del data[rng.randrange(len(data)) :]
            elif op == 2:
                data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        with contextlib.suppress(ValueError):
            cbor.loads(bytes(data))
    for _ in range(2000):
        blob = bytes(rng.randrange(256) for _ in range(rng.randint(0, 12)))
        with contextlib.suppress(ValueError):
            cbor.loads(blob)


# --------------------------------------------------------------------------------------------------
# CoAP message codec
# --------------------------------------------------------------------------------------------------


def test_coap_code_str():
    assert coap.code_str(coap.CHANGED) == "2.04"
    assert coap.code_str(coap.CONTENT) == "2.05"
    assert coap.code_str(coap.GET) == "0.01"
    assert coap.code_str(132) == "4.04"
    assert coap.code_str(160) == "5.00"


def test_coap_rfc7252_con_get_vector():
    # RFC 7252 Fig. 16/17 style: CON GET, MID 0x7d34, token 0x20, Uri-Path "temperature".
    enc = coap.encode(coap.CON, coap.GET, 0x7D34, b"\x20", coap.uri_path("temperature"))
    assert enc == bytes.fromhex("41017d3420bb74656d7065726174757265")
    m = coap.decode(enc)
    assert (m.type, m.code, m.mid, m.token, m.path(), m.payload) == (coap.CON, 1, 0x7D34, b"\x20", "temperature", b"")
    # Piggybacked 2.05 response with payload "22.3 C".
    ack = coap.encode(coap.ACK, coap.CONTENT, 0x7D34, b"\x20", (), b"22.3 C")
    assert ack == bytes.fromhex("61457d3420ff32322e332043")
    # Empty ACK.
    assert coap.encode(coap.ACK, coap.EMPTY, 0x7D34) == bytes.fromhex("60007d34")


def test_coap_option_extended_forms():
    opts = [
        (3, b"h" * 12),  # Uri-Host
        (coap.URI_PATH, b"p" * 13),
        (coap.URI_PATH, b"q" * 268),
        (coap.URI_PATH, b"r" * 269),
        (2000, b""),
        (65000, b"z"),
    ]
    enc = coap.encode(coap.NON, coap.POST, 1, b"", opts, b"pl")
    m = coap.decode(enc)
    assert m.options == opts
    assert m.payload == b"pl"
    # Delta 13 and length 13 (one extra byte each), delta 14/length 14 (two extra bytes).
    assert coap.encode(0, 1, 0, b"", [(13, b"a" * 13)])[4:7] == bytes([0xDD, 0, 0])
    assert coap.encode(0, 1, 0, b"", [(269, b"a" * 269)])[4:9] == bytes([0xEE, 0, 0, 0, 0])


def test_coap_option_helpers():
    # Uri-Host (3) and Observe (6): options the device never sends, built by hand
    opts = [(3, b"gw.local"), *coap.uri_path("/a/b/"), *coap.content_format(coap.CF_CBOR), (6, b"")]
    m = coap.decode(coap.encode(coap.CON, coap.POST, 9, b"tk", opts, b"\xa0"))
    assert m.path() == "a/b"
    assert m.opt(3) == [b"gw.local"]
    assert [coap.opt_uint(v) for v in m.opt(coap.CONTENT_FORMAT)] == [60]
    assert m.opt(6) == [b""]
    assert coap.opt_uint(coap.uint_opt(0x123456)) == 0x123456
    assert coap.uint_opt(0) == b""


def _aio_message(mtype, code, mid, token, options, payload):
    m = aiocoap.Message(code=aiocoap.numbers.codes.Code(code), payload=payload)
    m.mtype = aiocoap.numbers.types.Type(mtype)
    m.mid = mid
    m.token = token
    for num, val in options:
        m.opt.add_option(OpaqueOption(num, val))
    return m


def test_coap_against_aiocoap_random():
    rng = random.Random(7252)
    for _ in range(300):
        mtype = rng.randrange(4)
        code = rng.choice([1, 2, 3, 4, 65, 68, 69, 132, 160])
        mid = rng.randrange(65536)
        token = bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
        opts = []
        for _ in range(rng.randint(0, 6)):
            num = rng.choice([rng.randint(2100, 2400), rng.randint(3000, 65000), 11])
            ln = rng.choice([0, 1, 12, 13, 14, 268, 269, 270, rng.randint(0, 600)])
            opts.append((num, bytes(rng.randrange(97, 123) for _ in range(ln))))
        opts.sort(key=lambda o: o[0])
        payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 50])))
        mine = coap.encode(mtype, code, mid, token, opts, payload)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = _aio_message(mtype, code, mid, token, opts, payload).encode()
        assert mine == theirs
        m = coap.decode(theirs)
        assert (m.type, m.code, m.mid, m.token, m.options, m.payload) == (mtype, code, mid, token, opts, payload)
        a = aiocoap.Message.decode(mine)
        assert (int(a.mtype), int(a.code), a.mid, a.token, a.payload) == (mtype, code, mid, token, payload)
        assert [(int(o.number), o.encode()) for o in a.opt.option_list()] == opts


@pytest.mark.parametrize(
    ("path", "query"),
    [("telemetry", "k=0123abcd.1"), ("telemetry", "k=89abcdef.123456789"), ("a/b/c", "k=00000000.4294967295"),
     ("sensors/t1", "x=1&k=ffffffff.12&y="), ("t", "q=" + "v" * 300)],
)
def test_coap_uri_query_against_aiocoap(path, query):
    """Uri-Query (15): repeatable, after Uri-Path (11) and Content-Format (12), in the given order; byte-identical with
    aiocoap, given in order or not (repeated options keep their order either way)."""
    payload = cbor.dumps({"uptime": 3, "seq": 1})
    qs = tuple(q for q in query.split("&") if q)
    want = aiocoap.Message(code=aiocoap.POST, uri_path=tuple(path.split("/")), content_format=60, uri_query=qs,
                           payload=payload)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want.mtype, want.mid, want.token = aiocoap.CON, 0x1234, b"tok4"
        want = want.encode()
    opts = coap.uri_path(path) + coap.content_format(coap.CF_CBOR) + coap.uri_query(query)
    assert coap.uri_query(query) == [(coap.URI_QUERY, q.encode()) for q in qs]
    assert coap.encode(coap.CON, coap.POST, 0x1234, b"tok4", opts, payload) == want
    shuffled = coap.uri_query(query) + coap.content_format(coap.CF_CBOR) + coap.uri_path(path)
    assert coap.encode(coap.CON, coap.POST, 0x1234, b"tok4", shuffled, payload) == want
    a = aiocoap.Message.decode(want)
    assert a.opt.uri_query == qs and a.opt.uri_path == tuple(path.split("/"))
    assert [v for n, v in coap.decode(want).options if n == coap.URI_QUERY] == [q.encode() for q in qs]


def test_coap_encode_sort_is_stable():
    # options out of order are sorted by number; equal numbers keep their order (MicroPython's sort is not stable)
    opts = [(15, b"q1"), (11, b"a"), (12, b""), (11, b"b"), (15, b"q2"), (11, b"c"), (3, b"h")]
    m = coap.decode(coap.encode(coap.CON, coap.GET, 1, b"", opts))
    assert m.options == [(3, b"h"), (11, b"a"), (11, b"b"), (11, b"c"), (12, b""), (15, b"q1"), (15, b"q2")]
    in_order = [(11, b"a"), (11, b"b")]
    assert coap._ordered(in_order) is in_order  # already in order: no copy


@pytest.mark.parametrize(
    "hexenc",
    [
        "",
        "40",
        "400100",
        "00010000",
        "80010000",
        "c0010000",  # short / bad version
        "49010000" + "00" * 9,
        "4f010000",  # token length 9..15
        "42010000aa",  # truncated token
        "40010000ff",  # payload marker without payload
        "40010000f0",
        "400100000f",
        "40010000d0",
        "40010000e000",
        "400100000d",
        "400100000e00",  # reserved / truncated
        "4001000003ab",  # option value truncated
        "40000000ff41",
        "41000000aa",  # empty message with content
    ],
)
def test_coap_malformed_raises_valueerror(hexenc):
    with pytest.raises(ValueError):
        coap.decode(bytes.fromhex(hexenc))


def test_coap_decode_fuzz_only_valueerror():
    rng = random.Random(99)
    base = coap.encode(
        coap.CON, coap.POST, 77, b"abcd", coap.uri_path("telemetry/x") + coap.content_format(60), b"\xa1aa\x01"
    )
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            if not data:
                break
            if rng.random() < 0.5:
                data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                del data[rng.randrange(len(data)) :]
        with contextlib.suppress(ValueError):
            coap.decode(bytes(data))


def test_coap_encode_rejects_long_token():
    with pytest.raises(ValueError):
        coap.encode(coap.CON, coap.GET, 1, b"123456789")


# --------------------------------------------------------------------------------------------------
# Exchange (sans-IO confirmable request)
# --------------------------------------------------------------------------------------------------


def _rand(seed):
    rng = random.Random(seed)
    return lambda n: bytes(rng.randrange(256) for _ in range(n))


def _exchange(seed=1, **kw):
    kw.setdefault("options", coap.uri_path("telemetry") + coap.content_format(coap.CF_CBOR))
    kw.setdefault("payload", cbor.dumps({"n": 1}))
    return coap.Exchange(_rand(seed), coap.POST, **kw)


def test_exchange_ids_from_rand_and_request_bytes():
    ex = _exchange(seed=5)
    r = random.Random(5)
    mid = int.from_bytes(bytes(r.randrange(256) for _ in range(2)), "big")
    tok = bytes(r.randrange(256) for _ in range(4))
    assert (ex.mid, ex.token) == (mid, tok)
    m = coap.decode(ex.start(100.0))
    assert (m.type, m.code, m.mid, m.token, m.path()) == (coap.CON, coap.POST, mid, tok, "telemetry")
    assert cbor.loads(m.payload) == {"n": 1}
    ex2 = coap.Exchange(_rand(1), coap.GET, mid=0x1234, token=b"")
    assert (ex2.mid, ex2.token) == (0x1234, b"")


@pytest.mark.parametrize("seed", range(40))
def test_exchange_retransmission_schedule_and_give_up(seed):
    ex = _exchange(seed=seed)
    t0 = 1000.0
    req = ex.start(t0)
    first = ex.timeout_at() - t0
    assert coap.ACK_TIMEOUT <= first <= coap.ACK_TIMEOUT * coap.ACK_RANDOM_FACTOR
    assert ex.on_timer(ex.timeout_at() - 0.001) is None
    sends = [t0]
    while True:
        at = ex.timeout_at()
        if at is None:
            break
        out = ex.on_timer(at)
        if out is None:
            break
        assert out == req
        sends.append(at)
    assert len(sends) == 1 + coap.MAX_RETRANSMIT
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    for i, g in enumerate(gaps):
        assert g == pytest.approx(first * 2**i)
    assert ex.state == "failed" and ex.error == "timeout"
    total = ex.deadline - t0
    assert total <= 2 * 31 * 1.5 + 1e-9  # MAX_TRANSMIT_WAIT = 93 s
    assert total >= 2 * 31 - 1e-9
    assert ex.timeout_at() is None
    assert ex.on_timer(t0 + 1000) is None


def test_exchange_piggybacked_response():
    ex = _exchange()
    ex.start(0)
    # Wrong MID, wrong token, wrong type, garbage: ignored.
    assert ex.on_datagram(coap.encode(coap.ACK, coap.CHANGED, ex.mid ^ 1, ex.token), 1) is None
    assert ex.on_datagram(coap.encode(coap.ACK, coap.CHANGED, ex.mid, b"zz"), 1) is None
    assert ex.on_datagram(b"\x00garbage", 1) is None
    assert ex.on_datagram(coap.encode(coap.RST, 0, ex.mid ^ 1), 1) is None
    assert ex.state == "wait"
    assert ex.on_datagram(coap.encode(coap.ACK, coap.CHANGED, ex.mid, ex.token, (), b"ok"), 1.5) is None
    assert ex.state == "done"
    assert coap.code_str(ex.response.code) == "2.04" and ex.response.payload == b"ok"
    assert ex.timeout_at() is None and ex.on_timer(1e9) is None


def test_exchange_separate_con_response_is_acked():
    ex = _exchange(separate_timeout=30)
    ex.start(0)
    assert ex.on_datagram(coap.encode(coap.ACK, coap.EMPTY, ex.mid), 1) is None
    assert ex.state == "sep"
    assert ex.timeout_at() == 31
    assert ex.on_timer(10) is None  # no retransmission after the empty ACK
    # Separate response with a different token is ignored; a late RST/ACK for our MID too.
    assert ex.on_datagram(coap.encode(coap.CON, coap.CHANGED, 500, b"nope"), 2) is None
    assert ex.on_datagram(coap.encode(coap.RST, 0, ex.mid), 2) is None
    assert ex.state == "sep"
    resp = coap.encode(coap.CON, 65, 500, ex.token, (), b"r")  # 2.01 Created
    ack = ex.on_datagram(resp, 3)
    assert ack == coap.encode(coap.ACK, coap.EMPTY, 500)
    assert ex.state == "done" and ex.response.code == 65
    # A retransmitted copy of the separate response is ACKed again; unrelated ones are not.
    assert ex.on_datagram(resp, 4) == ack
    assert ex.on_datagram(coap.encode(coap.CON, 65, 501, ex.token), 4) is None


def test_exchange_separate_non_response_and_timeout():
    ex = _exchange(separate_timeout=30)
    ex.start(0)
    ex.on_datagram(coap.encode(coap.ACK, coap.EMPTY, ex.mid), 1)
    assert ex.on_datagram(coap.encode(coap.NON, coap.CONTENT, 9, ex.token, (), b"x"), 2) is None
    assert ex.state == "done" and ex.response.payload == b"x"

    ex = _exchange(separate_timeout=30)
    ex.start(0)
    ex.on_datagram(coap.encode(coap.ACK, coap.EMPTY, ex.mid), 1)
    assert ex.on_timer(31) is None
    assert ex.state == "failed" and ex.error == "timeout"


def test_exchange_separate_response_before_ack():
    ex = _exchange()
    ex.start(0)
    ack = ex.on_datagram(coap.encode(coap.CON, coap.CHANGED, 42, ex.token), 0.5)
    assert ack == coap.encode(coap.ACK, coap.EMPTY, 42)
    assert ex.state == "done"


def test_exchange_requests_with_our_token_ignored():
    ex = _exchange()
    ex.start(0)
    assert ex.on_datagram(coap.encode(coap.CON, coap.GET, 42, ex.token), 0.5) is None
    assert ex.state == "wait"


def test_exchange_reset():
    ex = _exchange()
    ex.start(0)
    assert ex.on_datagram(coap.encode(coap.RST, coap.EMPTY, ex.mid), 0.5) is None
    assert ex.state == "failed" and ex.error == "reset"
    assert ex.timeout_at() is None


def test_exchange_non_request():
    ex = _exchange(confirmable=False, non_timeout=10)
    m = coap.decode(ex.start(0))
    assert m.type == coap.NON
    assert ex.on_timer(9.9) is None and ex.state == "wait"
    assert ex.on_datagram(coap.encode(coap.NON, coap.CONTENT, 3, ex.token), 1) is None
    assert ex.state == "done"
    ex = _exchange(confirmable=False, non_timeout=10)
    ex.start(0)
    assert ex.on_timer(10) is None
    assert ex.error == "timeout"
