"""Deterministic endpoints for the fuzz targets and the seed generator, built with tests/helpers.Pair.

Everything is seeded, so the pair built for an input is the same every time: a datagram recorded from one run
(a seed) authenticates in every later run, and a crashing input replays exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from _harness import FuzzBug
from helpers import CLIENT_ADDR, Pair, drain, drain_server, established_pair, half_steps, raw_records, split_messages

from iotdtls import ConnectionReplaced, ConnectionTerminated, DTLSConnection, DTLSServer, HandshakeTimeout
from iotdtls.connection import IdleTimeout
from iotdtls.errors import AlertError, InternalError
from iotdtls.events import Event
from iotdtls.record import SEQ_MASK, split_records

#: Upper bounds every connection must respect, whatever it was fed.
MAX_PARTIAL_HELLOS = 64
MAX_EARLY_DATA = 8


def check_events(events: Iterable[Event]) -> None:
    """A connection may end with a protocol alert, a timeout, close_notify or a replacement, never with
    internal_error (an exception inside the core) or anything else."""
    for event in events:
        if not isinstance(event, ConnectionTerminated) or event.error is None:
            continue
        err = event.error
        if isinstance(err, InternalError):
            raise FuzzBug(f"internal_error: {err}")
        if not isinstance(err, AlertError | HandshakeTimeout | ConnectionReplaced | IdleTimeout):
            raise FuzzBug(f"unexpected termination {err!r}")


def check_connection(conn: DTLSConnection) -> None:
    if conn.is_closed and conn.is_handshaking:
        raise FuzzBug("closed and handshaking")
    if len(conn._future) > conn._config.max_buffered_records:
        raise FuzzBug(f"{len(conn._future)} buffered epoch-1 records")
    if len(conn._early_data) > MAX_EARLY_DATA:
        raise FuzzBug("early data not bounded")
    if (conn.is_established or conn.is_closed) and conn._reasm._parts:
        raise FuzzBug(f"reassembler keeps {sorted(conn._reasm._parts)} after the handshake")
    if len(conn._reasm._parts) > 4:
        raise FuzzBug("reassembler holds more than 4 messages")


def check_server(server: DTLSServer) -> None:
    if len(server._partial_hellos) > MAX_PARTIAL_HELLOS:
        raise FuzzBug("partial ClientHello table not bounded")
    if server.handshakes_in_progress > server.max_handshakes:
        raise FuzzBug("more handshakes than max_handshakes")
    for conn in server.connections.values():
        if conn.is_closed:
            raise FuzzBug("a closed connection stays in the server's table")
        check_connection(conn)


def seal_for(conn: DTLSConnection | None, datagram: bytes) -> bytes:
    """The datagram with every epoch-1 record's fragment protected as plaintext with the keys ``conn`` reads
    (its own pending or current read keys): the input of a peer that holds the PSK. Lets the fuzzer reach what
    only an authenticated, misbehaving peer can: handshake messages, alerts and data in epoch 1."""
    cipher = None if conn is None else conn._read_cipher or conn._next_read_cipher
    if cipher is None:
        return datagram
    out = []
    for rec in split_records(datagram):
        if rec.epoch == 1:
            out.append(cipher.protect(rec.content_type, rec.epoch_seq, rec.fragment))
        else:
            out.append(rec.content_type.to_bytes(1, "big") + rec.version.to_bytes(2, "big") +
                       rec.epoch_seq.to_bytes(8, "big") + len(rec.fragment).to_bytes(2, "big") + rec.fragment)
    return b"".join(out)


def probe_seq(conn: DTLSConnection, written: int) -> int | None:
    """A sequence number for an authentic probe record that ``conn``'s replay window accepts, or None."""
    seq = max(written + (1 << 24), conn._windows[1].top + 1)
    return seq if seq < SEQ_MASK - 1 else None


# -- server: an established session plus fresh addresses ---------------------------------------------------

#: Server variants (configuration, DTLSServer limits), picked by an input's first byte.
SERVER_VARIANTS: list[tuple[dict[str, object], dict[str, int]]] = [
    ({}, {}),  # cookies on (the default): fresh addresses only get HelloVerifyRequests
    ({"cookies": False, "idle_timeout": 60.0}, {}),  # a fresh address can run a whole handshake
    ({"cookies": False, "psk_identity_hint": b"hint", "coalesce_records": True, "mtu": 64}, {}),
    ({"cookies": False}, {"max_handshakes": 1, "max_sessions": 3}),  # the limits of the front
]
#: Fresh source addresses an input can use besides the established client's.
FRESH_ADDRS = [(f"198.51.100.{i}", 4000 + i) for i in range(1, 8)]


def server_pair(variant: int) -> Pair:
    """A server with one established session at CLIENT_ADDR (events and output drained)."""
    kw, limits = SERVER_VARIANTS[variant % len(SERVER_VARIANTS)]
    client_kw = {k: v for k, v in kw.items() if k in ("coalesce_records", "mtu")}
    return established_pair(client_kw, dict(kw), **limits)


def addr_of(tag: int) -> object:
    """Frame tag (low 4 bits) -> source address: 0..3 the established client, then fresh addresses."""
    i = (tag & 0x0F) % 12
    return CLIENT_ADDR if i < 4 else FRESH_ADDRS[(i - 4) % len(FRESH_ADDRS)]


# -- client: one connection per handshake state --------------------------------------------------------------


def _client_start() -> Pair:
    return Pair()


def _wait_hello() -> Pair:
    pair = Pair()
    pair.client.connect(pair.now)
    pair.c2s()
    return pair


def _wait_hello_after_hvr() -> Pair:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 2)
    pair.c2s()
    return pair


def _server_flight(hint: bytes | None, messages: int) -> Pair:
    pair = Pair(server_kw={"psk_identity_hint": hint})
    pair.client.connect(pair.now)
    half_steps(pair, 3)
    pieces = [p for d in pair.s2c() for p in split_messages(d, 10)]
    for p in pieces[:messages]:
        pair.client.receive_datagram(p, pair.now)
    pair.c2s()
    return pair


def _wait_finished(ccs: bool) -> Pair:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    (final,) = pair.c2s()
    pair.server.receive_datagram(final, CLIENT_ADDR, pair.now)
    drain_server(pair.server)
    (flight,) = pair.s2c()
    if ccs:
        pair.client.receive_datagram(raw_records(flight)[0], pair.now)
    return pair


#: (name, builder, the server is configured with an identity hint). Every builder is deterministic: the
#: datagrams of a complete reference exchange with the same configuration (``reference_wire``) are valid
#: continuations for it.
CLIENT_STATES: list[tuple[str, Callable[[], Pair], bool]] = [
    ("start", _client_start, False),
    ("wait_hello", _wait_hello, False),
    ("wait_hello_after_hvr", _wait_hello_after_hvr, False),
    ("wait_ske_or_done", lambda: _server_flight(None, 1), False),
    ("wait_done", lambda: _server_flight(b"hint", 2), True),
    ("wait_finished", lambda: _wait_finished(False), False),
    ("wait_finished_ccs", lambda: _wait_finished(True), False),
    ("established", established_pair, False),
    ("established_hint", lambda: established_pair(server_kw={"psk_identity_hint": b"hint"}), True),
]


def client_pair(index: int) -> Pair:
    pair = CLIENT_STATES[index % len(CLIENT_STATES)][1]()
    drain(pair.client)
    drain_server(pair.server)
    pair.c2s()
    pair.s2c()
    pair.wire.clear()
    return pair


def reference_wire(hint: bool = False, **kw: object) -> list[tuple[str, bytes]]:
    """Every datagram of a complete exchange: handshake, data both ways, close_notify and its answer."""
    client_kw = {k: v for k, v in kw.items() if k in ("coalesce_records", "mtu")}
    server_kw: dict[str, object] = dict(kw)
    if hint:
        server_kw["psk_identity_hint"] = b"hint"
    pair = Pair(client_kw, server_kw)
    pair.handshake()
    pair.client.send(b"up")
    pair.pump()
    pair.server.send(CLIENT_ADDR, b"down")
    pair.pump()
    pair.client.close()
    pair.pump()
    return list(pair.wire)
