"""The CoAPs server's bounds (issue 13, part 4): what one authenticated session can make the server hold.

1. Unit tests of the pure pieces (``iotdtls/coap/{wire,precheck,bounded,dedup,blockwise,observe}.py``) with a
   fake clock.
2. ``server_context()`` in a thread of this process, driven by a raw CoAPs client
   (``benchmarks/hostile_coap.py``: a sans-IO DTLS session over UDP sending CoAP bytes built by hand) or by
   aiocoap's client: replies on the wire, ``transport.stats``, and that aiocoap's own caches stay empty.
3. The real ``iotdtls-coap-server`` attacked for ~2 s per pattern from one session, watching its VmRSS.

The process tests also run against older servers: copy this file and ``benchmarks/hostile_coap.py`` into a
checkout of the old code and run it there (the unit tests then fail on the missing modules, the others on what
the old server does).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.resource as resource
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from peers import free_udp_port, run_peer

from benchmarks import hostile_coap as hc
from benchmarks.hostile_coap import ACK, CON, GET, NON, POST, RawCoapsClient, Reply, block, coap, path
from iotdtls import DTLSConfiguration
from iotdtls.coap import client_context, server_context

try:  # the pieces under test (missing in a checkout of the old code, where only the process tests can run)
    from iotdtls.coap import ServerLimits, wire
    from iotdtls.coap.blockwise import (
        Block1Assembler,
        Block2Cache,
        CachedResponse,
        Complete,
        Continue,
        Refused,
        slice_block,
    )
    from iotdtls.coap.bounded import BoundedStore
    from iotdtls.coap.dedup import ENTRY_COST, EXCHANGE_LIFETIME, DedupCache
    from iotdtls.coap.observe import ObserverRegistry
    from iotdtls.coap.precheck import precheck
except ImportError:
    pass

KIB, MIB = 1024, 1 << 20
CONTINUE, CHANGED, CONTENT = 0x5F, 0x44, 0x45
BAD_REQUEST, BAD_OPTION, INCOMPLETE, TOO_LARGE = 0x80, 0x82, 0x88, 0x8D
PSK_ENTRY = {"dtls": {"psk": {"ascii": hc.PSK.decode()}, "client-identity": {"ascii": "dev1"}}}
SERVER_CREDS = {":dev1": PSK_ENTRY, ":dev2": {"dtls": {**PSK_ENTRY["dtls"], "client-identity": {"ascii": "dev2"}}}}


# ================================================================================================================
# 1. the pure pieces
# ================================================================================================================


def test_scan_header_and_options() -> None:
    msg = hc.coap(CON, GET, 0x1234, b"tok", [*path("a", "b"), (hc.OBSERVE, b""), (2000, b"x" * 300)], b"hi")
    header = wire.scan_header(msg)
    assert header == wire.Header(CON, GET, 0x1234, b"tok") and header.is_request
    assert wire.count_options(msg, 10) == 4
    assert wire.count_options(msg, 2) == 3  # stops counting at limit + 1
    for bad in (b"", b"\x40\x01\x00", b"\x80\x01\x00\x01", b"\x49\x01\x00\x01" + b"t" * 9,  # short, v2, tkl 9
                b"\x41\x00\x00\x01t", b"\x40\x00\x00\x01\xff"):  # an empty message with a token / a payload
        assert wire.scan_header(bad) is None
    for bad_options in (b"\x40\x01\x00\x01\xff",  # marker without payload
                        b"\x40\x01\x00\x01\xf1x",  # delta nibble 15
                        b"\x40\x01\x00\x01\x13ab",  # value runs past the end
                        b"\x40\x01\x00\x01\xd0",  # extended delta missing
                        b"\x40\x01\x00\x01\xe0\x01"):  # 2-byte extended delta cut short
        assert wire.scan_header(bad_options) is not None
        assert wire.count_options(bad_options, 10) is None


def test_encode_is_what_aiocoap_decodes() -> None:
    options = [(wire.SIZE1, wire.uint(70000)), (wire.BLOCK1, wire.block_value(3, True, 6)), (11, b"x" * 300),
               (11, b"y"), (2000, b"")]
    data = wire.encode(wire.ACK, wire.CONTINUE, 7, b"tt", options, b"pay")
    msg = aiocoap.Message.decode(data)
    assert (msg.mtype, msg.code, msg.mid, msg.token, msg.payload) == (aiocoap.ACK, aiocoap.CONTINUE, 7, b"tt", b"pay")
    assert tuple(msg.opt.block1) == (3, True, 6) and msg.opt.size1 == 70000
    assert msg.opt.uri_path == ("x" * 300, "y")
    assert wire.uint(0) == b"" and wire.uint(255) == b"\xff" and wire.uint(256) == b"\x01\x00"


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 0x3F), st.booleans())
def test_precheck_never_raises_and_agrees_with_aiocoap(data: bytes, first: int, version1: bool) -> None:
    if version1 and data:  # version 1 with a small token length: most of these get as far as the options
        data = bytes([0x40 | (first & 0x37)]) + data[1:]
    verdict = precheck(data, max_message_size=60, max_options=4, max_entity=1000)
    if verdict.accept:
        try:
            msg = aiocoap.Message.decode(data)
        except (aiocoap.error.UnparsableMessage, UnicodeDecodeError):
            return
        assert len(list(msg.opt.option_list())) == wire.count_options(data, 4)
    elif verdict.reply is not None:
        assert wire.scan_header(verdict.reply) is not None


def test_precheck_answers_only_confirmable_requests() -> None:
    limits = {"max_message_size": 100, "max_options": 3, "max_entity": 65536}
    big = hc.coap(CON, POST, 77, b"tk", path("echo"), b"x" * 200)
    verdict = precheck(big, **limits)
    assert (verdict.accept, verdict.reason) == (False, "refused_too_big") and verdict.reply is not None
    reply = aiocoap.Message.decode(verdict.reply)
    assert (reply.mtype, reply.code, reply.mid, reply.token) == (aiocoap.ACK, aiocoap.REQUEST_ENTITY_TOO_LARGE, 77,
                                                                 b"tk")
    assert reply.opt.size1 == 65536
    many = hc.coap(CON, GET, 78, b"tk", [(hc.IF_MATCH, b"")] * 4)
    verdict = precheck(many, **limits)
    assert verdict.reason == "refused_too_many_options" and verdict.reply is not None
    reply = aiocoap.Message.decode(verdict.reply)
    assert (reply.mtype, reply.code, reply.mid, reply.token) == (aiocoap.ACK, aiocoap.BAD_OPTION, 78, b"tk")
    assert precheck(hc.coap(NON, POST, 1, b"", (), b"x" * 200), **limits).reason == "dropped_too_big"
    assert precheck(hc.coap(CON, 0x45, 1, b"", (), b"x" * 200), **limits).reason == "dropped_too_big"  # a response
    assert precheck(hc.coap(NON, GET, 1, b"", [(1, b"")] * 4), **limits).reason == "dropped_too_many_options"
    assert precheck(hc.coap(CON, GET, 1, b"", [(1, b"")] * 3, b"x" * 80), **limits).accept  # exactly at both
    assert precheck(b"\x40\x01\x00\x01\xff", **limits).reason == "dropped_unparsable"


def test_bounded_store_evicts_oldest_per_session_and_in_total() -> None:
    store: BoundedStore[str, int, str] = BoundedStore(lifetime=10.0, max_total_bytes=1000, max_session_bytes=500,
                                                      max_session_entries=3)
    for i in range(4):
        assert store.put("a", i, f"v{i}", 100, now=0.0)
    assert [store.get("a", i, 0.0) for i in range(4)] == [None, "v1", "v2", "v3"]  # count: the oldest went
    assert store.put("a", 9, "big", 300, now=0.0)  # 100 + 100 + 100 + 300 > 500: v1 goes
    assert (store.session_entries("a"), store.session_bytes("a"), store.evicted) == (3, 500, 2)
    assert not store.put("a", 10, "huge", 501, now=0.0) and store.get("a", 10, 0.0) is None  # alone too big
    store.put("b", 0, "b0", 250, now=1.0)
    store.put("b", 1, "b1", 250, now=1.0)  # 500 + 500: the total is full
    assert store.total_bytes == 1000 and store.evicted == 2
    store.put("c", 0, "c0", 100, now=2.0)  # beyond the total: the oldest entry of any session goes (a's v2)
    assert store.get("a", 2, 2.0) is None and store.get("a", 3, 2.0) == "v3"
    assert store.total_bytes == 1000 and store.evicted == 3
    assert store.drop_session("b") == 2 and store.total_bytes == 500 and len(store) == 3


def test_bounded_store_expires_lazily_and_refreshes() -> None:
    store: BoundedStore[str, int, str] = BoundedStore(lifetime=10.0, max_total_bytes=10_000)
    store.put("s", 1, "one", 10, now=0.0)
    store.put("s", 2, "two", 10, now=5.0)
    store.put("s", 1, "ONE", 20, now=6.0, refresh=False)  # replaced in place: still expires at 10
    assert store.get("s", 1, 9.9) == "ONE"
    assert store.get("s", 1, 10.0) is None and store.expired == 1 and store.total_bytes == 10
    store.put("s", 2, "TWO", 10, now=14.0)  # refreshed: now lives until 24
    assert store.get("s", 2, 23.0) == "TWO" and store.get("s", 2, 24.0) is None and len(store) == 0


def test_dedup_cache_keeps_reply_bytes_for_exchange_lifetime() -> None:
    cache = DedupCache(max_session_bytes=10 * ENTRY_COST, max_total_bytes=MIB)
    assert cache.seen("s", 5, 0.0) is None  # new
    assert cache.seen("s", 5, 1.0) == b""  # a duplicate, no reply yet
    cache.answered("s", 5, b"reply", 1.0)
    assert cache.seen("s", 5, 2.0) == b"reply"
    cache.answered("s", 6, b"never seen", 2.0)  # not a remembered message ID: not kept
    assert cache.seen("s", 6, 2.0) is None
    assert cache.seen("s", 5, EXCHANGE_LIFETIME - 0.1) == b"reply"
    assert cache.seen("s", 5, EXCHANGE_LIFETIME) is None  # expired: new again
    for mid in range(100):
        cache.seen("t", mid, 300.0)
    assert cache.session_bytes("t") <= 10 * ENTRY_COST and cache.seen("t", 99, 300.0) == b""
    assert cache.seen("t", 0, 300.0) is None  # the oldest were evicted
    assert cache.drop_session("t") > 0 and cache.session_bytes("t") == 0


def _assembler(**kw: Any) -> Block1Assembler:
    return Block1Assembler(**({"max_per_session": 2, "max_bytes": 4 * KIB, "max_total_bytes": 64 * KIB,
                               "lifetime": 10.0} | kw))


def test_block1_assembles_in_order_and_answers_repeats() -> None:
    up = _assembler()
    blocks = [os.urandom(1024) for _ in range(3)]
    assert up.feed("s", "k", 100, 0, True, 6, blocks[0], 3000, 0.0) == Continue(0, 6)
    assert up.feed("s", "k", 100, 1, True, 6, blocks[1], None, 1.0) == Continue(1, 6)
    assert up.feed("s", "k", 100, 1, True, 6, blocks[1], None, 1.0) == Continue(1, 6)  # same block, new MID
    assert up.total_bytes > 2048
    done = up.feed("s", "k", 100, 2, False, 6, blocks[2][:952], None, 2.0)
    assert done == Complete(b"".join(blocks)[:3000], 2, 6) and len(up) == 0 and up.total_bytes == 0
    assert up.feed("s", "k", 100, 0, False, 4, b"one block", None, 3.0) == Complete(b"one block", 0, 4)
    assert len(up) == 0


def test_block1_refusals() -> None:
    up = _assembler()
    assert up.feed("s", "k", 0, 1, True, 6, bytes(1024), None, 0.0) == Refused(INCOMPLETE, "uploads_incomplete")
    up.feed("s", "k", 0, 0, True, 6, bytes(1024), None, 0.0)
    assert up.feed("s", "k", 0, 2, True, 6, bytes(1024), None, 0.0).code == INCOMPLETE  # a gap: forgotten
    assert len(up) == 0
    assert up.feed("s", "k", 0, 0, True, 6, bytes(1000), None, 0.0).code == BAD_REQUEST  # short block with more
    assert up.feed("s", "k", 0, 0, True, 7, bytes(1024), None, 0.0).code == BAD_REQUEST  # BERT is not for UDP
    assert up.feed("s", "k", 0, 0, True, 6, bytes(1024), 5000, 0.0) == Refused(TOO_LARGE, "uploads_too_large", 4096)
    for num in range(4):
        assert up.feed("s", "k", 0, num, True, 6, bytes(1024), None, 0.0) == Continue(num, 6)
    assert up.feed("s", "k", 0, 4, True, 6, bytes(1024), None, 0.0) == Refused(TOO_LARGE, "uploads_too_large", 4096)
    assert len(up) == 0 and up.total_bytes == 0


def test_block1_bounded_per_session_in_total_and_in_time() -> None:
    up = _assembler(max_total_bytes=6 * KIB)
    for key in ("a", "b", "c"):  # 2 per session: "a" is evicted by "c"
        up.feed("s", key, 0, 0, True, 6, bytes(1024), None, 0.0)
    assert up.evicted == 1 and up.feed("s", "a", 0, 1, True, 6, bytes(1024), None, 0.0).code == INCOMPLETE
    outcomes = [up.feed("t", "x", 0, num, True, 6, bytes(1024), None, 0.0) for num in range(4)]
    # each 1 KiB block costs a little more than 1 KiB: the total (6 KiB, ~3 KiB of it for "s") is full before the
    # 4 KiB an upload may have, and the block that would go beyond it is refused
    assert outcomes[0] == Continue(0, 6) and Refused(TOO_LARGE, "uploads_refused_full", 4096) in outcomes
    assert up.total_bytes <= 6 * KIB
    assert up.feed("s", "b", 0, 1, True, 6, bytes(1024), None, 9.9) == Continue(1, 6)  # refreshed at 9.9
    assert up.feed("s", "c", 0, 1, True, 6, bytes(1024), None, 10.5).code == INCOMPLETE  # idle 10 s: expired
    assert up.expired >= 1 and up.feed("s", "b", 0, 2, True, 6, bytes(1024), None, 19.8) == Continue(2, 6)
    assert up.drop_session("s") == 1 and len(up) == 0


def test_block2_slices_and_cache_bounds() -> None:
    assert slice_block(b"0123456789", 0, 0) == (b"0123456789", False)
    body = bytes(range(40))
    assert slice_block(body, 1, 0) == (body[16:32], True) and slice_block(body, 2, 0) == (body[32:], False)
    assert slice_block(body, 3, 0) is None and slice_block(b"", 0, 0) == (b"", False)
    cache = Block2Cache(max_per_session=2, max_total_bytes=10 * KIB, lifetime=5.0)
    entry = CachedResponse(0x45, ((12, b"\x00"),), bytes(2000))
    for key in ("a", "b", "c"):
        assert cache.put("s", key, entry, 100, now=0.0)
    assert cache.get("s", "a", 0.0) is None and cache.get("s", "c", 0.0) == entry
    for session in "tuvw":
        cache.put(session, "x", entry, 100, now=1.0)
    assert cache.total_bytes <= 10 * KIB and cache.evicted >= 2
    assert cache.get("w", "x", 5.9) == entry and cache.get("w", "x", 6.0) is None
    assert not cache.put("s", "huge", CachedResponse(0x45, (), bytes(20 * KIB)), 100, now=7.0)


def test_observer_registry_cap_confirmables_and_holding() -> None:
    reg: ObserverRegistry[str] = ObserverRegistry(max_per_session=2, con_every=3, con_interval=100.0)
    live: set[bytes] = {b"a", b"b"}
    assert reg.reserve("s", b"a", False, 0.0, live.__contains__)
    assert reg.reserve("s", b"b", True, 0.0, live.__contains__)
    assert not reg.reserve("s", b"c", False, 0.0, live.__contains__)  # full
    assert reg.reserve("s", b"a", False, 0.0, live.__contains__)  # a re-registration takes no new place
    live.discard(b"b")  # that observation ended without our noticing
    assert reg.reserve("s", b"c", False, 0.0, live.__contains__) and reg.get("s", b"b") is None
    obs = reg.get("s", b"a")
    assert obs is not None
    kinds = []
    for i in range(7):
        confirmable = reg.confirmable_due(obs, float(i))
        reg.sent(obs, confirmable, float(i))
        kinds.append(confirmable)
    assert kinds == [False, False, True, False, False, True, False]  # every 3rd
    assert reg.confirmable_due(obs, 5.0 + 100.0)  # and at least every con_interval
    obs.in_flight = 42
    assert not reg.hold(obs, "n1") and reg.hold(obs, "n2") and obs.pending == "n2"
    assert reg.acknowledged("s", 41) is None
    assert reg.acknowledged("s", 42) is obs and obs.in_flight is None
    assert len(reg) == 2 and reg.drop_session("s") == 2 and len(reg) == 0


def test_limits_validate_and_server_context_defaults_match() -> None:
    with pytest.raises(ValueError, match="max_options"):
        ServerLimits(max_options=0).validate()
    assert ServerLimits().datagram_limit(512) == 1500 and ServerLimits().datagram_limit(2000) == 2000
    assert ServerLimits(max_datagram=600).datagram_limit(2000) == 600
    defaults = {name: p.default for name, p in inspect.signature(server_context).parameters.items()}
    for name, value in ServerLimits().__dict__.items():
        assert defaults[name] == value, name


# ================================================================================================================
# 2. server_context() in a thread, a raw client in the test
# ================================================================================================================


class Counting(resource.Resource):  # type: ignore[misc]
    """GET: ``size`` bytes (default 20); POST: the payload back. Counts renders, remembers what it saw."""

    def __init__(self, size: int = 20) -> None:
        super().__init__()
        self.size = size
        self.renders = 0
        self.seen: list[aiocoap.Message] = []

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        self.renders += 1
        return aiocoap.Message(payload=bytes(i % 251 for i in range(self.size)), content_format=42)

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.renders += 1
        self.seen.append(request)
        return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload)


class Notifier(resource.ObservableResource):  # type: ignore[misc]
    """Observable; ``bump()`` changes the state and notifies. The state is ``size`` bytes of its counter."""

    def __init__(self, size: int = 4) -> None:
        super().__init__()
        self.value = 0
        self.size = size

    def bump(self) -> None:
        self.value += 1
        self.updated_state()

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=str(self.value).encode().rjust(self.size, b"."))


class ThreadedServer:
    """``server_context(site, ...)`` on its own event loop thread."""

    def __init__(self, **kw: Any) -> None:
        self.port = free_udp_port()
        self.small, self.big = Counting(), Counting(size=1500)
        self.notifier = Notifier()
        self.site = resource.Site()
        for name, res in (("small", self.small), ("big", self.big), ("note", self.notifier)):
            self.site.add_resource([name], res)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.ctx = self.call(server_context(self.site, ("127.0.0.1", self.port), SERVER_CREDS, **kw))
        self.transport = self.ctx.request_interfaces[0].token_interface.message_interface

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def run(self, fn: Callable[[], Any]) -> Any:
        async def wrapped() -> Any:
            return fn()
        return self.call(wrapped())

    @property
    def stats(self) -> dict[str, int]:
        result: dict[str, int] = self.run(lambda: self.transport.stats)
        return result

    def client(self, **kw: Any) -> RawCoapsClient:
        client = RawCoapsClient(self.port, **kw)
        client.handshake()
        return client

    def close(self) -> None:
        self.call(self.ctx.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def make_server() -> Iterator[Callable[..., ThreadedServer]]:
    servers: list[ThreadedServer] = []

    def make(**kw: Any) -> ThreadedServer:
        servers.append(ThreadedServer(**kw))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def test_retransmitted_request_gets_the_same_bytes_rendered_once(make_server: Callable[..., ThreadedServer]) -> None:
    server = make_server()
    client = server.client()
    request = coap(CON, POST, 4242, b"t1", path("small"), b"once")
    first = client.request(request)
    again = client.request(request)
    assert first == again and first.code == CHANGED and server.small.renders == 1
    assert server.stats["duplicates"] == 1 and server.stats["dedup_entries"] >= 1
    client.request(coap(CON, POST, 4243, b"t1", path("small"), b"twice"))
    assert server.small.renders == 2
    client.close()


def test_dedup_bytes_bounded_per_session_oldest_first(make_server: Callable[..., ThreadedServer]) -> None:
    server = make_server(dedup_bytes_per_session=4 * KIB)
    client = server.client()
    mids = [client.next_mid() for _ in range(60)]
    for mid in mids:
        client.request(coap(CON, GET, mid, b"", path("small")))
    assert server.stats["dedup_bytes"] <= 4 * KIB and server.stats["dedup_evicted"] > 40
    client.request(coap(CON, GET, mids[-1], b"", path("small")))  # still remembered
    renders = server.small.renders
    client.request(coap(CON, GET, mids[0], b"", path("small")))  # evicted: served again
    assert server.small.renders == renders + 1 and server.stats["duplicates"] == 1
    client.close()


def test_precheck_replies_and_oversized_datagrams(make_server: Callable[..., ThreadedServer]) -> None:
    server = make_server(max_message_size=600, max_options=8, max_upload_bytes=32 * KIB)
    client = server.client(mtu=17000)
    reply = client.request(coap(CON, POST, 1, b"tk", path("small"), b"x" * 700))
    assert (reply.mtype, reply.code, reply.mid, reply.token) == (ACK, TOO_LARGE, 1, b"tk")
    assert reply.uint_option(hc.SIZE1) == 32 * KIB
    reply = client.request(coap(CON, GET, 2, b"tk", [(hc.IF_MATCH, b"")] * 9 + path("small")))
    assert (reply.mtype, reply.code, reply.mid, reply.token) == (ACK, BAD_OPTION, 2, b"tk")
    client.send(coap(NON, POST, 3, b"", path("small"), b"x" * 700))
    client.send(b"\x40\x01\x00\x04\xff")  # not CoAP
    client.send(b"\x40\x01\x00\x05\xb3\xff\xfe\xfd")  # a Uri-Path that is not UTF-8 (aiocoap raises on it)
    client.send(coap(CON, POST, 6, b"", path("small"), b"x" * 1600))  # a datagram over max_datagram (1500)
    assert client.receive(0.5) == []
    stats = server.stats
    assert (stats["refused_too_big"], stats["refused_too_many_options"], stats["dropped_too_big"]) == (1, 1, 1)
    assert stats["dropped_unparsable"] == 2 and stats["dropped_oversize"] == 1
    assert server.small.renders == 0
    assert client.request(coap(CON, GET, 7, b"", path("small"))).code == CONTENT  # the session is fine
    client.close()


def upload(client: RawCoapsClient, body: bytes, *, szx: int = 6, query: bytes | None = None,
           blocks: int | None = None) -> list[Reply]:
    """POST ``body`` to /small in Block1 blocks (only the first ``blocks`` if given); the replies."""
    size = 16 << szx
    chunks = [body[i:i + size] for i in range(0, len(body), size)][:blocks]
    replies = []
    for num, chunk in enumerate(chunks):
        more = (num + 1) * size < len(body)
        options = [*path("small"), (hc.BLOCK1, block(num, more, szx))]
        if query is not None:
            options.append((hc.URI_QUERY, query))
        replies.append(client.request(coap(CON, POST, client.next_mid(), client.next_token(), options, chunk)))
        if replies[-1].code != CONTINUE:
            break
    return replies


def test_block1_assembled_before_aiocoap(make_server: Callable[..., ThreadedServer]) -> None:
    server = make_server()
    client = server.client()
    body = os.urandom(3000)
    replies = upload(client, body)
    assert [r.code for r in replies] == [CONTINUE, CONTINUE, CHANGED]
    assert replies[0].option(hc.BLOCK1) == block(0, True, 6)
    assert replies[-1].option(hc.BLOCK1) == block(2, False, 6)  # the last block's Block1 on the response
    assert replies[-1].option(hc.BLOCK2) == block(0, True, 4) and replies[-1].uint_option(28) == 3000  # Size2
    seen = server.small.seen[-1]
    assert seen.payload == body and seen.opt.block1 is None and seen.opt.block2 is None
    assert server.run(lambda: len(server.small._block1._assemblies._items)) == 0  # aiocoap's spool never saw a block
    assert server.stats["uploads_completed"] == 1 and server.stats["uploads"] == 0
    client.close()


def test_block1_bounds_on_the_wire(make_server: Callable[..., ThreadedServer]) -> None:
    server = make_server(max_upload_bytes=8 * KIB, max_uploads_per_session=2)
    client = server.client()
    replies = upload(client, os.urandom(10 * KIB))
    assert [r.code for r in replies] == [CONTINUE] * 8 + [TOO_LARGE]
    assert replies[-1].uint_option(hc.SIZE1) == 8 * KIB
    announced = coap(CON, POST, client.next_mid(), b"", [*path("small"), (hc.BLOCK1, block(0, True, 6)),
                                                         (hc.SIZE1, hc.uint(9 * KIB))], bytes(1024))
    assert client.request(announced).code == TOO_LARGE  # refused at once: Size1 says it will not fit
    for query in (b"a", b"b", b"c"):  # the third evicts the first
        upload(client, bytes(4096), query=query, blocks=1)
    assert server.stats["uploads"] == 2 and server.stats["uploads_evicted"] == 1
    options = [*path("small"), (hc.URI_QUERY, b"a"), (hc.BLOCK1, block(1, True, 6))]
    assert client.request(coap(CON, POST, client.next_mid(), b"", options, bytes(1024))).code == INCOMPLETE
    client.close()
    wait_for(lambda: server.stats["uploads"] == 0)  # the session ended: its uploads went


def test_block2_from_a_bounded_cache(make_server: Callable[..., ThreadedServer]) -> None:
    server = make_server()
    client = server.client()
    first = client.request(coap(CON, GET, client.next_mid(), b"a", path("big")))
    assert first.option(hc.BLOCK2) == block(0, True, 4) and first.uint_option(28) == 1500
    assert first.uint_option(12) == 42 and len(first.payload) == 256
    body = first.payload
    for num in range(1, 6):
        reply = client.request(coap(CON, GET, client.next_mid(), b"b", [*path("big"), (hc.BLOCK2, block(num, False,
                                                                                                          4))]))
        assert reply.option(hc.BLOCK2) == block(num, num < 5, 4) and reply.uint_option(12) == 42
        body += reply.payload
    assert body == bytes(i % 251 for i in range(1500)) and server.big.renders == 1
    assert server.stats["block2_served"] == 5 and server.stats["block2_entries"] == 0  # gone after the last
    assert server.run(lambda: len(server.big._block2._completes._items)) == 0  # aiocoap's own cache stays empty
    # a miss: GET is rendered again (in smaller blocks if asked), POST gets 4.08
    reply = client.request(coap(CON, GET, client.next_mid(), b"c", [*path("big"), (hc.BLOCK2, block(5, False, 3))]))
    assert reply.option(hc.BLOCK2) == block(5, True, 3) and server.big.renders == 2
    assert server.stats["block2_rerendered"] == 1
    reply = client.request(coap(CON, POST, client.next_mid(), b"d", [*path("big"), (hc.BLOCK2, block(2, False, 4))]))
    assert reply.code == INCOMPLETE
    reply = client.request(coap(CON, GET, client.next_mid(), b"e", [*path("big"), (hc.BLOCK2, block(9, False, 6))]))
    assert reply.code == BAD_REQUEST  # past the end
    client.close()


def observe(client: RawCoapsClient, token: bytes, *, mtype: int = CON, resource_path: str = "note") -> Reply:
    return client.request(coap(mtype, GET, client.next_mid(), token, [(hc.OBSERVE, b""), *path(resource_path)]))


def notifications(client: RawCoapsClient, seconds: float, *, acknowledge: bool = False) -> list[Reply]:
    out: list[Reply] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for reply in client.receive(0.02):
            out.append(reply)
            if acknowledge and reply.mtype == CON:
                client.ack(reply)
    return out


def test_observers_capped_per_session(make_server: Callable[..., ThreadedServer]) -> None:
    server = make_server(max_observers_per_session=3)
    client = server.client()
    registrations = [observe(client, b"o%d" % i) for i in range(4)]
    assert [r.option(hc.OBSERVE) is not None for r in registrations] == [True, True, True, False]
    assert server.stats["observers"] == 3 and server.stats["observers_refused"] == 1
    assert server.run(lambda: len(server.notifier._observations)) == 3
    client.request(coap(CON, GET, client.next_mid(), b"o0", [(hc.OBSERVE, b"\x01"), *path("note")]))  # deregister
    assert observe(client, b"o9").option(hc.OBSERVE) is not None  # room again
    other = server.client(identity=b"dev2")  # the cap is per session
    assert observe(other, b"x").option(hc.OBSERVE) is not None
    client.close()
    wait_for(lambda: server.run(lambda: len(server.notifier._observations)) == 1)  # dropped with the session
    assert server.stats["observers"] == 1
    other.close()
    wait_for(lambda: server.stats["observers"] == 0 and server.stats["sessions"] == 0)


def test_session_end_drops_observers_and_all_state(make_server: Callable[..., ThreadedServer]) -> None:
    server = make_server(config=DTLSConfiguration(is_client=False, idle_timeout=1.0))
    client = server.client()
    observe(client, b"o1", mtype=NON)
    upload(client, bytes(4096), blocks=2)
    client.request(coap(CON, GET, client.next_mid(), b"g", path("big")))
    stats = server.stats
    assert (stats["observers"], stats["uploads"], stats["block2_entries"]) == (1, 1, 1) and stats["dedup_entries"]
    assert server.run(lambda: len(server.notifier._observations)) == 1
    time.sleep(1.5)  # the idle timeout ends the session (no close_notify from the client): dispatch_error
    stats = server.stats
    assert stats["sessions"] == 0
    assert (stats["observers"], stats["uploads"], stats["block2_entries"], stats["dedup_entries"]) == (0, 0, 0, 0)
    assert server.run(lambda: len(server.notifier._observations)) == 0
    client.sock.close()


def test_non_notifications_confirmable_every_n_and_held_while_in_flight(
        make_server: Callable[..., ThreadedServer]) -> None:
    server = make_server(con_notification_every=3)
    client = server.client()
    assert observe(client, b"o", mtype=NON).option(hc.OBSERVE) is not None
    seen: list[Reply] = []
    for _ in range(3):
        server.run(server.notifier.bump)
        seen += notifications(client, 0.15)
    assert [r.mtype for r in seen] == [NON, NON, CON]  # every 3rd is confirmable
    con = seen[-1]
    for _ in range(5):  # while that CON is unacknowledged: held, each replacing the one before
        server.run(server.notifier.bump)
        time.sleep(0.02)
    held = notifications(client, 0.3)
    assert all(r.mid == con.mid for r in held)  # at most a retransmission of the CON
    assert server.stats["notifications_held"] == 5 and server.stats["notifications_replaced"] == 4
    client.ack(con)
    latest = notifications(client, 0.3)
    assert [r.payload for r in latest] == [b"...8"]  # only the newest state, once
    client.close()


def test_unacknowledged_con_notification_ends_the_observation(make_server: Callable[..., ThreadedServer],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from aiocoap.numbers.constants import TransportTuning

    monkeypatch.setattr(TransportTuning, "ACK_TIMEOUT", 0.05)
    monkeypatch.setattr(TransportTuning, "MAX_RETRANSMIT", 2)
    server = make_server()
    client = server.client()
    observe(client, b"o")
    observe(client, b"p")
    server.run(server.notifier.bump)
    wait_for(lambda: server.stats["observers_dropped"] == 2, timeout=3)  # 0.05 + 0.1 + 0.2 s, x 1.5 at most
    assert server.stats["observers"] == 0
    assert server.run(lambda: len(server.notifier._observations)) == 0
    assert server.stats["sessions"] == 1  # the DTLS session itself goes on
    client.close()


def test_backlog_bounded(make_server: Callable[..., ThreadedServer]) -> None:
    server = make_server(max_backlog_per_session=2, con_notification_every=1)
    client = server.client()
    for i in range(6):
        observe(client, b"o%d" % i, mtype=NON)
    server.run(server.notifier.bump)  # 6 CON notifications: 1 on the wire, 2 waiting, 3 dropped (and ended)
    time.sleep(0.3)
    stats = server.stats
    assert stats["backlog"] == 2 and stats["backlog_dropped"] == 3
    wait_for(lambda: server.run(lambda: len(server.notifier._observations)) == 3)
    client.close()


def test_aiocoap_client_blockwise_and_large_notifications() -> None:
    """aiocoap's own client: Block1 up, Block2 down, and notifications larger than a block (RFC 7959 section
    2.6: the rest of each is fetched with GET Block2), at mtu 256 (128-byte blocks)."""
    notifier = Notifier(size=1000)
    echo = Counting()
    site = resource.Site()
    site.add_resource(["note"], notifier)
    site.add_resource(["echo"], echo)

    async def main() -> None:
        port = free_udp_port()
        server = await server_context(site, ("127.0.0.1", port), SERVER_CREDS,
                                      config=DTLSConfiguration(is_client=False, mtu=256))
        client = await client_context({"coaps://127.0.0.1*": PSK_ENTRY}, config=DTLSConfiguration(mtu=256))
        try:
            body = os.urandom(3000)
            msg = aiocoap.Message(code=aiocoap.POST, uri=f"coaps://127.0.0.1:{port}/echo", payload=body)
            reply = await asyncio.wait_for(client.request(msg).response, 10)
            assert reply.payload == body and echo.seen[-1].payload == body
            request = client.request(aiocoap.Message(code=aiocoap.GET, observe=0,
                                                     uri=f"coaps://127.0.0.1:{port}/note"))
            first = await asyncio.wait_for(request.response, 10)
            assert first.payload == b"0".rjust(1000, b".")
            values = []
            notes = request.observation.__aiter__()
            for _ in range(3):
                notifier.bump()
                note = await asyncio.wait_for(notes.__anext__(), 10)
                assert len(note.payload) == 1000
                values.append(note.payload.lstrip(b"."))
            assert values == [b"1", b"2", b"3"]
            request.observation.cancel()
            stats = server.request_interfaces[0].token_interface.message_interface.stats
            assert stats["block2_served"] >= 3 * 7 and stats["uploads_completed"] == 1
            assert len(echo._block1._assemblies._items) == len(notifier._block2._completes._items) == 0
        finally:
            await client.shutdown()
            await server.shutdown()

    asyncio.run(asyncio.wait_for(main(), 30))


# ================================================================================================================
# 3. iotdtls-coap-server under attack, its RSS watched
# ================================================================================================================

#: A few seconds of attack per test; the 60-second figures are benchmarks/bench_coap_hostile.py's.
ATTACK_SECONDS = 2.0
#: RSS the server may gain in that time: a few MB of allocator noise. The old server gained 17-125 MB.
RSS_SLACK = 4 * MIB


class ServerUnderAttack:
    def __init__(self, peer: Any, port: int) -> None:
        self.peer = peer
        self.port = port

    @property
    def rss(self) -> int:
        return hc.rss(self.peer.pid)

    def client(self, **kw: Any) -> RawCoapsClient:
        client = RawCoapsClient(self.port, **kw)
        client.handshake()
        return client


@contextlib.contextmanager
def coap_server(tmp_path: Path, *args: str) -> Iterator[ServerUnderAttack]:
    creds = tmp_path / "server.json"
    creds.write_text(json.dumps(SERVER_CREDS))
    port = free_udp_port()
    argv = [sys.executable, "-m", "iotdtls.cli.coap_server", "--bind", f"127.0.0.1:{port}", "--credentials",
            str(creds), *args]
    with run_peer("iotdtls-coap-server", argv, listen_port=port) as peer:
        peer.wait_output("serving coaps://", timeout=20)
        yield ServerUnderAttack(peer, port)
        assert peer.alive(), peer.transcript()


def attack(server: ServerUnderAttack, run: Callable[[RawCoapsClient, float], hc.AttackResult], *,
           mtu: int = 1500, seconds: float = ATTACK_SECONDS) -> tuple[hc.AttackResult, int]:
    """Warm up (0.3 s of the same attack), then attack for ``seconds``; the result and the RSS growth."""
    client = server.client(mtu=mtu)
    run(client, 0.3)
    client.bytes_sent = client.datagrams_sent = 0
    time.sleep(0.2)
    before = server.rss
    result = run(client, seconds)
    time.sleep(0.3)
    growth = server.rss - before
    print(f"{result.name}: {result.requests} requests, {result.bytes_sent / 1e6:.2f} MB sent, replies "
          f"{result.codes}, {result.notes}; server RSS +{growth / 1e6:.2f} MB")
    probe = server.client(identity=b"dev2")  # the server still serves others
    assert probe.request(coap(CON, GET, probe.next_mid(), b"", path("whoami"))).payload == b"dev2 (:dev2)"
    probe.close()
    client.close()
    return result, growth


def assert_bounded(result: hc.AttackResult, growth: int) -> None:
    assert growth <= RSS_SLACK, f"RSS grew {growth / 1e6:.1f} MB"
    assert growth <= 3 * result.bytes_sent + MIB, f"RSS grew {growth / 1e6:.1f} MB for {result.bytes_sent} B sent"


def test_process_option_bomb(tmp_path: Path) -> None:
    with coap_server(tmp_path) as server:
        result, growth = attack(server, hc.option_bomb)
    assert result.codes.get("4.02", 0) >= result.replies - 1 > 100  # refused before aiocoap decodes
    assert_bounded(result, growth)


def test_process_option_limit_from_the_command_line(tmp_path: Path) -> None:
    with coap_server(tmp_path, "--max-options", "5", "--max-message-size", "200") as server:
        client = server.client()
        assert client.request(coap(CON, GET, 1, b"", [(hc.IF_MATCH, b"")] * 5 + path("whoami"))).code == BAD_OPTION
        assert client.request(coap(CON, GET, 2, b"", [(hc.IF_MATCH, b"")] * 4 + path("whoami"))).code == CONTENT
        reply = client.request(coap(CON, POST, 3, b"", path("echo"), bytes(300)))
        assert reply.code == TOO_LARGE and reply.uint_option(hc.SIZE1) == 64 * KIB
        client.close()
    argv = [sys.executable, "-m", "iotdtls.cli.coap_server", "--credentials", str(tmp_path / "server.json"),
            "--bind", "127.0.0.1:0", "--max-observers", "0"]
    bad = subprocess.run(argv, capture_output=True, timeout=30)
    assert bad.returncode == 2
    assert bad.stderr.decode().strip() == "iotdtls-coap-server: max_observers_per_session must be positive"


def test_process_dedup_flood(tmp_path: Path) -> None:
    with coap_server(tmp_path) as server:
        result, growth = attack(server, hc.dedup_flood)
    assert result.codes.get("2.05", 0) > 1000
    assert_bounded(result, growth)


def test_process_oversized_records(tmp_path: Path) -> None:
    with coap_server(tmp_path) as server:
        result, growth = attack(server, hc.oversized_records, mtu=17000)
    assert result.replies == 0  # dropped before decryption: not even an error comes back
    assert_bounded(result, growth)


def test_process_endless_uploads(tmp_path: Path) -> None:
    with coap_server(tmp_path) as server:
        result, growth = attack(server, hc.endless_uploads)
    assert result.codes.get("2.31", 0) > 1000
    assert_bounded(result, growth)


def test_process_endless_blocks(tmp_path: Path) -> None:
    with coap_server(tmp_path) as server:
        client = server.client()
        replies = []
        for num in range(65):  # the 65th KiB is beyond the 64 KiB an upload may have
            options = [*path("echo"), (hc.BLOCK1, block(num, True, 6))]
            replies.append(client.request(coap(CON, POST, client.next_mid(), b"", options, bytes(1024))))
        assert [r.code for r in replies] == [CONTINUE] * 64 + [TOO_LARGE], [hc.code_text(r.code) for r in replies]
        assert replies[-1].uint_option(hc.SIZE1) == 64 * KIB
        client.close()
        result, growth = attack(server, hc.endless_blocks)
    assert_bounded(result, growth)


@pytest.mark.parametrize("confirmable", [True, False], ids=["CON", "NON"])
def test_process_deaf_observers(tmp_path: Path, confirmable: bool) -> None:
    with coap_server(tmp_path, "--observe-interval", "0.005") as server:
        result, growth = attack(server, lambda c, s: hc.deaf_observers(c, s, confirmable=confirmable),
                                seconds=3.0)
    # 8 observers per session at most; an unacknowledged CON notification holds back the rest: after 100
    # notifications (0.5 s at 200/s) at most retransmissions still go out
    assert result.notes["last_second_notifications"] <= 20, result.notes
    assert_bounded(result, growth)
