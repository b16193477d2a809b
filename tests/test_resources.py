"""Floods and resource bounds of the server front (issue 3): spoofed ClientHellos cost no per-peer state,
handshake slots are bounded and released at the handshake timeout, reassembly and early-record buffers are
bounded, and an established session costs a few kilobytes.

Memory is measured with tracemalloc (Python allocations only; native OpenSSL / Rust memory is not traced,
``benchmarks/memory.py`` reports RSS as well). Deterministic: seeded randomness, virtual time. The figures these
tests bound are reported in ``docs/resources.md``; ``python -m benchmarks.memory`` prints them at full scale.
"""

from __future__ import annotations

import gc
import hashlib
import io
import tracemalloc
import types
from collections.abc import Iterator
from types import TracebackType

import pytest
from helpers import KEY, client_config, raw_records, seeded, server_config, shuttle

from iotdtls import ConnectionTerminated, DataReceived, DTLSConnection, DTLSServer, HandshakeCompleted, HandshakeTimeout
from iotdtls.buffer import Buffer
from iotdtls.constants import AlertDescription, AlertLevel, ContentType, HandshakeType
from iotdtls.errors import IllegalParameter
from iotdtls.events import Event
from iotdtls.handshake import State
from iotdtls.messages import pull_hello_verify_request
from iotdtls.reassembly import message_header, parse_fragments
from iotdtls.record import encode_plain, split_records
from iotdtls.server import MAX_PARTIAL_HELLOS

Addr = tuple[str, int]
MB16 = (1 << 24) - 1  # the largest length a 24-bit handshake length field can claim
RFC_MAX_CIPHERTEXT = (1 << 14) + 2048  # RFC 5246 6.2.3 / RFC 6347 4.1: TLSCiphertext.length limit
HVR_LEN = 13 + 12 + 3 + 16  # record header, handshake header, version + cookie length, 16-byte cookie


class Traced:
    """tracemalloc around a block: ``grown()`` is the traced memory added since entry (after a collection),
    ``peak()`` the highest traced memory above the entry level."""

    def __enter__(self) -> Traced:
        gc.collect()
        self._owner = not tracemalloc.is_tracing()
        if self._owner:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self.base = tracemalloc.get_traced_memory()[0]
        return self

    def grown(self) -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - self.base

    def peak(self) -> int:
        return tracemalloc.get_traced_memory()[1] - self.base

    def reset(self) -> None:
        """Take the current level as the new base."""
        gc.collect()
        tracemalloc.reset_peak()
        self.base = tracemalloc.get_traced_memory()[0]

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._owner:
            tracemalloc.stop()


def random_addresses(n: int, seed: int) -> list[Addr]:
    rand = seeded(seed)
    addrs = []
    for _ in range(n):
        ip, port = rand(4), rand(2)
        addrs.append((".".join(str(b) for b in ip), int.from_bytes(port, "big") | 1024))
    assert len(set(addrs)) == n
    return addrs


def fleet(identity: bytes) -> bytes | None:
    """A PSK store for a fleet of devices ``dev<n>`` sharing the test key."""
    return KEY if identity.startswith(b"dev") else None


def hello_template() -> bytes:
    """A real ClientHello datagram (one record, one unfragmented message, no cookie)."""
    client = DTLSConnection(client_config(seed=5))
    client.connect(0.0)
    (dgram,) = client.datagrams_to_send(0.0)
    return dgram


def spoofed_hellos(n: int, seed: int) -> Iterator[tuple[bytes, int]]:
    """``(datagram, record_seq)``: ClientHellos with a fresh random and a random record sequence number."""
    tmpl = hello_template()
    rand = seeded(seed)
    for _ in range(n):
        seq = int.from_bytes(rand(2), "big")
        yield tmpl[:5] + seq.to_bytes(6, "big") + tmpl[11:27] + rand(32) + tmpl[59:], seq


def assert_no_peer_state(server: DTLSServer) -> None:
    assert server.connections == {}
    assert not server._partial_hellos and not server._armed and not server._heap and not len(server._slots)
    assert not server._successors and not len(server._sessions)
    assert not server._events and not server._out
    assert len(server._cookies._cache) <= 5
    assert server.get_timer() is None and server.next_event() is None


def hvr_of(datagram: bytes) -> tuple[int, int, bytes]:
    """``(record_seq, message_seq, cookie)`` of a datagram that must be exactly one HelloVerifyRequest."""
    (rec,) = list(split_records(datagram))
    assert rec.content_type == ContentType.HANDSHAKE and rec.epoch == 0
    (frag,) = parse_fragments(rec.fragment)
    assert frag.msg_type == HandshakeType.HELLO_VERIFY_REQUEST and frag.offset == 0
    return rec.seq, frag.message_seq, pull_hello_verify_request(Buffer(frag.body)).cookie


# ---------------------------------------------------------------------------------------------------------
# Spoofed ClientHellos: one HelloVerifyRequest each, no state


def test_spoofed_client_hello_flood_costs_no_per_peer_memory() -> None:
    server = DTLSServer(server_config())
    n, warmup, batch = 20_000, 1_000, 1_000
    addrs = random_addresses(n + warmup, seed=11)
    hellos = list(spoofed_hellos(n + warmup, seed=12))
    with Traced() as mem:
        for i in range(0, n + warmup, batch):
            if i == warmup:
                mem.reset()  # cookie secrets cached, containers and counters at their working size
            now = i * 0.05  # 1,050 virtual seconds: eight cookie-secret periods
            for addr, (dgram, _) in zip(addrs[i : i + batch], hellos[i : i + batch], strict=True):
                server.receive_datagram(dgram, addr, now)
            out = server.datagrams_to_send(now)
            assert [a for _, a in out] == addrs[i : i + batch]  # exactly one reply each, to the sender
            for (reply, _), (hello, _) in zip(out, hellos[i : i + batch], strict=True):
                # one HelloVerifyRequest record echoing the hello's record and message sequence numbers
                assert len(reply) == HVR_LEN and reply[13] == HandshakeType.HELLO_VERIFY_REQUEST
                assert reply[3:11] == hello[3:11] and reply[17:19] == hello[17:19]
            assert hvr_of(out[0][0]) == (hellos[i][1], 0, out[0][0][-16:])  # and one parsed in full
            del out
            assert_no_peer_state(server)
        grown = mem.grown()
    assert server.stats["hello_verify_sent"] == n + warmup
    assert not [k for k, v in server.stats.items() if v and k != "hello_verify_sent"]
    assert grown < 16 * 1024, f"{grown} bytes after {n} spoofed ClientHellos"  # a constant, not ~n


def _hello_fragment(length: int, offset: int, body: bytes, message_seq: int = 0, record_seq: int = 0) -> bytes:
    header = message_header(HandshakeType.CLIENT_HELLO, length, message_seq, offset, len(body))
    return encode_plain(ContentType.HANDSHAKE, record_seq, header + body)


def test_fragmented_client_hellos_fill_at_most_the_partial_table() -> None:
    server = DTLSServer(server_config())
    limit = server._config.max_handshake_message
    addrs = random_addresses(5_000, seed=21)
    first = _hello_fragment(limit, 0, hello_template()[25:125])  # claims the largest allowed length
    with Traced() as mem:
        for i, addr in enumerate(addrs):
            server.receive_datagram(first, addr, i * 0.01)
            assert len(server._partial_hellos) <= MAX_PARTIAL_HELLOS
        grown = mem.grown()
    assert len(server._partial_hellos) == MAX_PARTIAL_HELLOS
    assert {a for a, _ in server._partial_hellos} == set(addrs[-MAX_PARTIAL_HELLOS:])  # oldest evicted
    assert server.connections == {} and server.datagrams_to_send(0.0) == [] and server.get_timer() is None
    assert grown <= MAX_PARTIAL_HELLOS * (limit + 1024), grown


def test_client_hello_fragment_claiming_16_mb_not_collected() -> None:
    server = DTLSServer(server_config())
    with Traced() as mem:
        server.receive_datagram(_hello_fragment(MB16, 0, bytes(100)), ("198.51.100.1", 1), 0.0)
        peak = mem.peak()
    assert peak < 64 * 1024, peak
    assert not server._partial_hellos and server.datagrams_to_send(0.0) == []
    assert server.stats["dropped_invalid"] == 1


def test_unfragmented_client_completes_during_a_fragment_flood() -> None:
    server = DTLSServer(server_config())
    first = _hello_fragment(4096, 0, bytes(100))
    flood = random_addresses(500, seed=22)
    client = DTLSConnection(client_config(seed=9))
    client.connect(0.0)
    me = ("192.0.2.200", 4000)
    for k in range(6):
        for addr in flood[k * 80 : (k + 1) * 80]:
            server.receive_datagram(first, addr, 0.0)
        for d in client.datagrams_to_send(0.0):
            server.receive_datagram(d, me, 0.0)
        for d, a in server.datagrams_to_send(0.0):
            assert a == me
            client.receive_datagram(d, 0.0)
    assert client.is_established and set(server.connections) == {me}
    assert len(server._partial_hellos) == MAX_PARTIAL_HELLOS


def test_partial_client_hello_table_bounded_by_message_bytes() -> None:
    server = DTLSServer(server_config(max_handshake_message=256))
    payload = b"".join(message_header(HandshakeType.CLIENT_HELLO, 256, 0, off, 1) + b"x" for off in range(0, 256, 2))
    dgram = encode_plain(ContentType.HANDSHAKE, 0, payload)
    with Traced() as mem:
        for addr in random_addresses(MAX_PARTIAL_HELLOS, seed=23):
            server.receive_datagram(dgram, addr, 0.0)
        grown = mem.grown()
    assert len(server._partial_hellos) == MAX_PARTIAL_HELLOS
    assert grown <= MAX_PARTIAL_HELLOS * (256 + 1024), grown


# ---------------------------------------------------------------------------------------------------------
# Handshake slots


class Clients:
    """Clients at their own addresses around one server, all in virtual time; server output is delivered or
    dropped per address."""

    def __init__(self, server: DTLSServer) -> None:
        self.server = server
        self.now = 0.0
        self.clients: dict[Addr, DTLSConnection] = {}
        self.events: list[tuple[object, Event]] = []

    def connect(self, addr: Addr, seed: int) -> DTLSConnection:
        """A device of its own identity (``dev<seed>``; the server front keeps one session per identity)."""
        client = self.clients[addr] = DTLSConnection(client_config(seed=seed, psk_identity=b"dev%d" % seed))
        client.connect(self.now)
        return client

    def up(self, addr: Addr) -> None:
        for d in self.clients[addr].datagrams_to_send(self.now):
            self.server.receive_datagram(d, addr, self.now)

    def down(self) -> dict[object, list[bytes]]:
        """Deliver every pending server datagram; returns them per address."""
        got: dict[object, list[bytes]] = {}
        for d, a in self.server.datagrams_to_send(self.now):
            got.setdefault(a, []).append(d)
            if a in self.clients:
                self.clients[a].receive_datagram(d, self.now)
        while (e := self.server.next_event()) is not None:
            self.events.append(e)
        return got

    def stall(self, addr: Addr, seed: int, at: str) -> list[bytes]:
        """A client that gets the server's flight and then sends nothing (``cke``) or only its
        ClientKeyExchange and ChangeCipherSpec, not its Finished (``finished``). Returns what it held back."""
        self.connect(addr, seed)
        self.up(addr)
        self.down()
        self.up(addr)
        self.down()
        assert self.clients[addr].state is State.CLIENT_WAIT_FINISHED
        final = self.clients[addr].datagrams_to_send(self.now)
        if at == "finished":
            (dgram,) = final
            records = raw_records(dgram)
            for rec in records[:2]:  # ClientKeyExchange, ChangeCipherSpec
                self.server.receive_datagram(rec, addr, self.now)
            assert self.server.connections[addr].state is State.SERVER_WAIT_FINISHED
            return records[2:]
        assert self.server.connections[addr].state is State.SERVER_WAIT_CKE
        return final

    def complete(self, addr: Addr, rounds: int = 6) -> None:
        for _ in range(rounds):
            self.up(addr)
            self.down()

    def run_server_timers(self, until: float) -> list[float]:
        """Fire the server's timer at each ``get_timer()`` up to ``until``; its output is lost."""
        fired = []
        while (t := self.server.get_timer()) is not None and t <= until:
            self.now = t
            self.server.handle_timer(t)
            fired.append(t)
            self.server.datagrams_to_send(t)
            while (e := self.server.next_event()) is not None:
                self.events.append(e)
        return fired


@pytest.mark.parametrize("at", ["cke", "finished"])
def test_handshake_slots_bounded_and_released_at_the_handshake_timeout(at: str) -> None:
    slots, timeout = 4, 10.0
    net = Clients(DTLSServer(server_config(psk_store=fleet, handshake_timeout=timeout), max_handshakes=slots))
    stalled = random_addresses(slots, seed=31)
    for i, addr in enumerate(stalled):
        net.stall(addr, seed=100 + i, at=at)
    assert net.server.handshakes_in_progress == slots
    # Later clients still get their HelloVerifyRequest (stateless), but their ClientHello with the cookie is
    # dropped: no connection, no answer, nothing stored.
    extra = random_addresses(40, seed=32)
    for i, addr in enumerate(extra):
        net.connect(addr, seed=200 + i)
        net.up(addr)
        assert [hvr_of(d)[1] for d in net.down()[addr]] == [0]
        net.up(addr)
        assert addr not in net.down()
    assert set(net.server.connections) == set(stalled) and net.server.handshakes_in_progress == slots
    assert net.server.stats["dropped_full"] == len(extra)
    assert not net.server._partial_hellos and {a for a, _ in net.server._armed} == set(stalled)
    # The server retransmits its flight to the stalled clients (lost), then gives up at exactly the timeout.
    fired = net.run_server_timers(until=100.0)
    assert fired[-1] == timeout and all(t < timeout for t in fired[:-1])
    errors = [e.error for a, e in net.events if isinstance(e, ConnectionTerminated)]
    assert len(errors) == slots and all(isinstance(err, HandshakeTimeout) for err in errors)
    assert net.server.connections == {} and net.server.handshakes_in_progress == 0
    assert net.server.get_timer() is None and not net.server._armed
    # A waiting client retransmits its ClientHello (cookie still valid) and now completes.
    late = extra[0]
    net.clients[late].handle_timer(net.now)
    net.complete(late)
    assert net.clients[late].is_established and net.server.connections[late].is_established
    assert net.server.handshakes_in_progress == 0


def test_stalled_client_retransmitting_its_hello_keeps_its_deadline() -> None:
    net = Clients(DTLSServer(server_config(psk_store=fleet, handshake_timeout=10.0), max_handshakes=1))
    addr = ("203.0.113.9", 7000)
    client = net.connect(addr, seed=41)
    net.up(addr)
    net.down()
    (hello,) = client.datagrams_to_send(0.0)  # the ClientHello with the cookie
    net.server.receive_datagram(hello, addr, 0.0)
    net.server.datagrams_to_send(0.0)
    (rec,) = list(split_records(hello))
    for k, t in enumerate((1.0, 3.0, 5.0, 7.0, 9.0, 9.99)):  # the same hello again, as a retransmission
        net.now = t
        net.server.receive_datagram(encode_plain(rec.content_type, rec.seq + 1 + k, rec.fragment), addr, t)
        net.server.datagrams_to_send(t)
        assert list(net.server.connections) == [addr] and net.server.handshakes_in_progress == 1
    assert net.server.connections[addr].state is State.SERVER_WAIT_CKE
    net.run_server_timers(until=10.0)
    assert net.server.connections == {} and net.server.handshakes_in_progress == 0
    assert net.now == 10.0


def test_established_sessions_do_not_hold_handshake_slots() -> None:
    net = Clients(DTLSServer(server_config(psk_store=fleet), max_handshakes=2))
    addrs = random_addresses(10, seed=51)
    for i, addr in enumerate(addrs):
        net.connect(addr, seed=300 + i)
        net.complete(addr)
        assert net.clients[addr].is_established
    assert len(net.server.connections) == 10 and net.server.handshakes_in_progress == 0
    assert not len(net.server._slots)
    # one timer entry per session, armed no later than its deadline (the 24 h idle timeout): an entry armed for
    # the handshake stays and re-arms for the real deadline when it fires
    conns = net.server.connections
    assert {a for a, _ in net.server._armed} == set(conns)
    assert all(when <= conns[a].get_timer() for (a, _), when in net.server._armed.items())  # type: ignore[operator]


# ---------------------------------------------------------------------------------------------------------
# Reassembly memory


def handshaking_server(max_handshake_message: int = 4096, max_buffered_records: int = 16,
                       ) -> tuple[Clients, Addr, DTLSConnection]:
    """A server connection waiting for the ClientKeyExchange."""
    cfg = server_config(max_handshake_message=max_handshake_message, max_buffered_records=max_buffered_records)
    net = Clients(DTLSServer(cfg))
    addr = ("198.51.100.50", 6000)
    net.stall(addr, seed=61, at="cke")
    return net, addr, net.server.connections[addr]


def _fragment_record(msg_type: int, length: int, message_seq: int, offset: int, body: bytes,
                     record_seq: int) -> bytes:
    header = message_header(msg_type, length, message_seq, offset, len(body))
    return encode_plain(ContentType.HANDSHAKE, record_seq, header + body)


def _plain_alerts(datagrams: list[bytes]) -> list[tuple[int, int]]:
    return [(r.fragment[0], r.fragment[1]) for d in datagrams for r in split_records(d)
            if r.content_type == ContentType.ALERT and r.epoch == 0]


def test_fragment_claiming_16_mb_refused_by_the_server() -> None:
    net, addr, conn = handshaking_server()
    rec = _fragment_record(HandshakeType.CLIENT_KEY_EXCHANGE, MB16, conn._reasm.next_seq, 0, bytes(200), 50)
    with Traced() as mem:
        net.server.receive_datagram(rec, addr, net.now)
        peak = mem.peak()
    assert peak < 256 * 1024, peak  # nothing near 16 MB was allocated
    replies = net.down()[addr]
    assert _plain_alerts(replies) == [(AlertLevel.FATAL, AlertDescription.illegal_parameter)]
    (err,) = [e.error for _, e in net.events if isinstance(e, ConnectionTerminated)]
    assert isinstance(err, IllegalParameter)
    assert net.server.connections == {} and net.server.handshakes_in_progress == 0


def test_fragment_claiming_16_mb_refused_by_the_client() -> None:
    client = DTLSConnection(client_config())
    client.connect(0.0)
    client.datagrams_to_send(0.0)
    rec = _fragment_record(HandshakeType.SERVER_HELLO, MB16, 0, 0, bytes(200), 0)
    with Traced() as mem:
        client.receive_datagram(rec, 0.0)
        peak = mem.peak()
    assert peak < 256 * 1024, peak
    assert _plain_alerts(client.datagrams_to_send(0.0)) == [(AlertLevel.FATAL, AlertDescription.illegal_parameter)]
    assert client.is_closed and isinstance(client.error, IllegalParameter)


def test_fragments_far_ahead_in_message_seq_ignored() -> None:
    net, addr, conn = handshaking_server()
    reasm = conn._reasm
    base, ahead = reasm.next_seq, reasm._max_ahead
    for i, seq in enumerate(range(base + ahead, base + ahead + 300)):
        rec = _fragment_record(HandshakeType.CLIENT_KEY_EXCHANGE, 4096, seq, 0, bytes(100), 100 + i)
        net.server.receive_datagram(rec, addr, net.now)
    assert reasm._parts == {} and conn.state is State.SERVER_WAIT_CKE
    assert net.down() == {} and net.events == []
    net.server.receive_datagram(_fragment_record(HandshakeType.FINISHED, 4096, base + ahead - 1, 0, bytes(100), 500),
                                addr, net.now)
    assert list(reasm._parts) == [base + ahead - 1]  # the last one within reach is kept


def test_reassembly_memory_per_connection_bounded() -> None:
    net, addr, conn = handshaking_server()
    reasm = conn._reasm
    limit, ahead = net.server._config.max_handshake_message, reasm._max_ahead
    with Traced() as mem:
        rec_seq = 100
        for seq in range(reasm.next_seq, reasm.next_seq + ahead + 50):
            for off in range(0, limit // 2, 500):  # first halves of maximal messages, in pieces
                body = bytes(min(500, limit // 2 - off))
                net.server.receive_datagram(
                    _fragment_record(HandshakeType.CLIENT_KEY_EXCHANGE, limit, seq, off, body, rec_seq), addr, net.now)
                rec_seq += 1
        grown = mem.grown()
    assert len(reasm._parts) == ahead and conn.state is State.SERVER_WAIT_CKE
    assert grown <= ahead * limit + 4096, grown


def test_reassembly_bookkeeping_bounded_by_message_bytes() -> None:
    net, addr, conn = handshaking_server(max_handshake_message=1024)
    reasm = conn._reasm
    datagrams = [encode_plain(ContentType.HANDSHAKE, 100 + k, b"".join(
        message_header(HandshakeType.CLIENT_KEY_EXCHANGE, 1024, seq, off, 1) + b"x" for off in range(0, 1024, 2)))
        for k, seq in enumerate(range(reasm.next_seq, reasm.next_seq + reasm._max_ahead))]
    with Traced() as mem:  # the datagrams are built outside: only what the connection keeps is measured
        for datagram in datagrams:
            net.server.receive_datagram(datagram, addr, net.now)
        grown = mem.grown()
    assert len(reasm._parts) == reasm._max_ahead and conn.state is State.SERVER_WAIT_CKE
    assert grown <= reasm._max_ahead * 1024 + 4096, grown


def _epoch1_record(seq: int, size: int) -> bytes:
    return encode_plain(ContentType.APPLICATION_DATA, (1 << 48) | seq, bytes(size))


@pytest.mark.parametrize("limit", [4, 16])
def test_early_epoch_records_buffered_up_to_max_buffered_records(limit: int) -> None:
    net, addr, conn = handshaking_server(max_buffered_records=limit)
    with Traced() as mem:
        for seq in range(200):
            net.server.receive_datagram(_epoch1_record(seq, 100), addr, net.now)
        grown = mem.grown()
    assert len(conn._future) == limit and conn.state is State.SERVER_WAIT_CKE
    assert grown <= limit * (100 + 288), grown  # a Record: its fragment, header fields and (RFC 9146) CID


def test_early_epoch_record_longer_than_the_protocol_limit_not_buffered() -> None:
    net, addr, conn = handshaking_server()
    for seq in range(conn._config.max_buffered_records):
        net.server.receive_datagram(_epoch1_record(seq, 60_000), addr, net.now)
    buffered = sum(len(r.fragment) for r in conn._future)
    assert buffered <= conn._config.max_buffered_records * RFC_MAX_CIPHERTEXT, buffered
    assert all(len(r.fragment) <= RFC_MAX_CIPHERTEXT for r in conn._future)


def test_early_application_data_bounded() -> None:
    from iotdtls.connection import MAX_EARLY_DATA

    net = Clients(DTLSServer(server_config(psk_store=fleet)))
    addr = ("198.51.100.60", 6001)
    held = net.stall(addr, seed=62, at="finished")  # the server has ClientKeyExchange + CCS, waits for Finished
    client, conn = net.clients[addr], net.server.connections[addr]
    for i in range(3 * MAX_EARLY_DATA):  # authentic application records overtaking the client's Finished
        record = client._write_record(1, ContentType.APPLICATION_DATA, b"early %d" % i)
        net.server.receive_datagram(record, addr, net.now)
    assert len(conn._early_data) == MAX_EARLY_DATA and conn.state is State.SERVER_WAIT_FINISHED
    for rec in held:  # the Finished arrives last
        net.server.receive_datagram(rec, addr, net.now)
    net.down()
    events = [e for a, e in net.events if a == addr]
    assert isinstance(events[0], HandshakeCompleted)
    assert events[1:] == [DataReceived(b"early %d" % i) for i in range(MAX_EARLY_DATA)]
    assert conn._early_data == [] and conn.is_established


# ---------------------------------------------------------------------------------------------------------
# Per-session memory


def establish_sessions(n: int) -> tuple[DTLSServer, float]:
    """``n`` sessions on one server, clients discarded after their handshake; returns the server and the traced
    bytes it holds per session (addresses are created before measuring: the transport owns them)."""
    server = DTLSServer(server_config(psk_store=fleet), max_sessions=n)
    addrs = [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 5684) for i in range(n)]
    cfgs = [client_config(seed=3, psk_identity=b"dev%d" % i) for i in range(n)]  # a fleet: one identity each
    with Traced() as mem:
        for addr, cfg in zip(addrs, cfgs, strict=True):
            client = DTLSConnection(cfg, peer="server", validate=False)
            client.connect(1.0)
            shuttle(client, server, addr, 1.0, rounds=3)
            assert client.is_established
            while server.next_event() is not None:
                pass
        per_session = mem.grown() / n
    return server, per_session


@pytest.fixture(scope="module")
def sessions() -> tuple[DTLSServer, float]:
    return establish_sessions(2_000)


def test_memory_per_established_session(sessions: tuple[DTLSServer, float]) -> None:
    server, per_session = sessions
    assert len(server.connections) == 2_000
    assert all(c.is_established for c in server.connections.values())
    assert not len(server._slots) and not server._partial_hellos and not server._out
    assert len(server._armed) == 2_000  # one idle timer each
    assert len(server._heap) <= 64 + 4 * len(server._armed)  # stale timer entries are compacted
    for conn in server.connections.values():  # no handshake leftovers that grow with the session count
        assert not conn._reasm._parts and not conn._future and not conn._early_data and not conn._out
        assert conn._premaster == b"" and conn._next_read_cipher is None and conn._peer_key is None
    assert per_session < 8 * 1024, f"{per_session:.0f} bytes per established session"


@pytest.mark.xfail(strict=True, reason=(
    "~2.35 KB traced per session; ~1.2 KB of it is avoidable: CipherState keeps two bound AESCCM methods "
    "(4 x 72 B) and the IV twice (bytes and int), the server's final flight stays until the client's first "
    "application record (~245 B, forever for a client that only listens), four empty lists (_out, _events, "
    "_future, _early_data: 224 B), the Reassembler and its dict stay (~168 B) where next_seq would do, the "
    "epoch-0 ReplayWindow stays for the session's life (~100 B), _server_random and _max_payload. "
    "See docs/resources.md; target < 1.5 KB"))
def test_memory_per_established_session_after_reductions(sessions: tuple[DTLSServer, float]) -> None:
    _, per_session = sessions
    assert per_session < 1.5 * 1024, f"{per_session:.0f} bytes per established session"


_SKIP = (type, types.ModuleType, types.FunctionType, io.IOBase)


def _reachable(roots: list[object]) -> list[object]:
    """Objects reachable from ``roots`` (through attributes, slots and containers) without entering modules,
    classes, functions or files."""
    seen: dict[int, object] = {}
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SKIP) or (isinstance(obj, dict) and "__builtins__" in obj):
            continue
        seen[id(obj)] = obj
        stack.extend(gc.get_referents(obj))
    return list(seen.values())


def test_no_master_secret_or_hash_state_kept_after_the_handshake() -> None:
    log = io.StringIO()
    server = DTLSServer(server_config(psk_store=fleet, keylog_file=log))
    net = Clients(server)
    addr = ("198.51.100.70", 6002)
    other = ("198.51.100.71", 6003)
    for i, a in enumerate((addr, other)):
        net.connect(a, seed=71 + i)
        net.complete(a)
    conn = server.connections[addr]
    assert conn.is_established and server.connections[other].is_established
    master = bytes.fromhex(log.getvalue().split()[2])
    shared = {id(o) for o in _reachable([server.connections[other]])}  # config, module-level sentinels
    objs = [o for o in _reachable([conn]) if id(o) not in shared]
    assert not [o for o in objs if isinstance(o, bytes) and o == master]
    assert not [o for o in objs if isinstance(o, type(hashlib.sha256()))]
