"""Deterministic endpoints for the fuzz targets and the seed generator, built with tests/helpers.Pair.

Everything is seeded, so the pair built for an input is the same every time: a datagram recorded from one run
(a seed) authenticates in every later run, and a crashing input replays exactly. That holds for the
ECDHE-ECDSA pairs too: their keys are derived from labels (tests/helpers.p256_key, fuzz/fixed_pki.py for
X.509), ECDSA signatures are deterministic (RFC 6979) and the ephemeral keys come from the seeded randomness.

Kinds of pair: ``psk`` (tests/helpers.Pair), ``rpk`` (PkPair: raw public keys, the server asks for the
client's key), ``x509`` (certificates of fuzz/fixed_pki.py, both sides), ``ticket`` (PSK with 4-byte connection
IDs both ways, a record_size_limit, RFC 5077 tickets from seeded TicketKeys and a fixed wall clock, so that the
tickets too are the same in every run) and ``resume`` (a second ``ticket`` client resuming the first one's
session with the same server front: the abbreviated handshake).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from _harness import FuzzBug
from fixed_pki import WALL_TIME, x509_kw
from helpers import (
    CLIENT_ADDR,
    IDENTITY,
    KEY,
    Pair,
    PkPair,
    client_config,
    drain,
    drain_server,
    half_steps,
    pk_client_config,
    raw_records,
    seeded,
    split_messages,
)

from iotdtls import (
    ConnectionTerminated,
    DTLSConfiguration,
    DTLSConnection,
    DTLSServer,
    HandshakeTimeout,
    Session,
    SessionEvicted,
    TicketKeys,
)
from iotdtls.connection import IdleTimeout
from iotdtls.errors import AlertError, InternalError
from iotdtls.events import Event
from iotdtls.handshake import State
from iotdtls.record import SEQ_MASK, split_records

#: Upper bounds every connection must respect, whatever it was fed.
MAX_PARTIAL_HELLOS = 64
MAX_EARLY_DATA = 8


def check_events(events: Iterable[Event]) -> None:
    """A connection may end with a protocol alert, a timeout, close_notify, a replacement or an eviction, never with
    internal_error (an exception inside the core) or anything else."""
    for event in events:
        if not isinstance(event, ConnectionTerminated) or event.error is None:
            continue
        err = event.error
        if isinstance(err, InternalError):
            raise FuzzBug(f"internal_error: {err}")
        if not isinstance(err, AlertError | HandshakeTimeout | SessionEvicted | IdleTimeout):
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
    live = [*server.connections.values(), *server._successors.values()]
    routes = server._cids
    for cid, conn in routes._by_cid.items():
        if conn.connection_id != cid or not any(conn is c for c in live):
            raise FuzzBug("a connection ID routes to a connection the front no longer holds")
    if any(not any(conn is c for c in live) for conn in routes._checks):
        raise FuzzBug("a path challenge outlives its connection")
    cache = server.session_cache
    if cache is not None and len(cache) > cache.max_entries:
        raise FuzzBug("session cache above its bound")


def seal_for(conn: DTLSConnection | None, datagram: bytes) -> bytes:
    """The datagram with every epoch-1 record's fragment protected as plaintext with the keys ``conn`` reads
    (its own pending or current read keys): the input of a peer that holds the PSK. Lets the fuzzer reach what
    only an authenticated, misbehaving peer can: handshake messages, alerts and data in epoch 1."""
    cipher = None if conn is None else conn._read_cipher or conn._next_read_cipher
    if conn is None or cipher is None:
        return datagram
    out = []
    for rec in split_records(datagram):
        if rec.epoch == 1 and conn._cid:  # a connection that asked for a CID reads tls12_cid records only
            out.append(cipher.protect_cid(rec.content_type, rec.epoch_seq, rec.fragment, conn._cid))
        elif rec.epoch == 1:
            out.append(cipher.protect(rec.content_type, rec.epoch_seq, rec.fragment))
        else:
            out.append(rec.content_type.to_bytes(1, "big") + rec.version.to_bytes(2, "big") +
                       rec.epoch_seq.to_bytes(8, "big") + len(rec.fragment).to_bytes(2, "big") + rec.fragment)
    return b"".join(out)


def probe_seq(conn: DTLSConnection, written: int) -> int | None:
    """A sequence number for an authentic probe record that ``conn``'s replay window accepts, or None."""
    seq = max(written + (1 << 24), conn._windows[1].top + 1)
    return seq if seq < SEQ_MASK - 1 else None


# -- pairs of every kind -------------------------------------------------------------------------------------

#: Configuration keywords the client of a pair shares with its server.
SHARED = ("coalesce_records", "mtu", "return_routability_check")
#: The ``ticket`` kind: connection IDs both ways, a record_size_limit and tickets, with a fixed wall clock (the
#: ticket's times, the session's expiry), on both sides.
TICKET_CID: dict[str, object] = {"cid_length": 4, "record_size_limit": 512, "session_tickets": True,
                                 "wall_time": lambda: WALL_TIME}


def ticket_keys() -> TicketKeys:
    """The ticket keys of a ``ticket`` server front: seeded, and made at the fixed wall clock (same tickets)."""
    return TicketKeys(seeded(9))


class ResumingPair(Pair):
    """A ``ticket`` pair whose client resumes (``handshake()``, or ``client.connect(now, session=pair.session)``)
    the session of a first, complete handshake with the same server front; the front closed the first one."""

    def __init__(self, **limits: int) -> None:
        first = established(make_pair("ticket", **limits))
        session = first.client.session
        if session is None:
            raise RuntimeError("the first handshake left no session to resume")
        self.session: Session = session
        first.server.close(CLIENT_ADDR)
        first.server.datagrams_to_send(first.now)
        drain_server(first.server)
        super().__init__(TICKET_CID, TICKET_CID)
        self.server = first.server

    def handshake(self) -> None:
        self.client.connect(self.now, session=self.session)
        self.pump()


def make_pair(kind: str, client_kw: dict[str, object] | None = None, server_kw: dict[str, object] | None = None,
              **limits: int) -> Pair:
    """A pair of the kind ``psk``, ``rpk``, ``x509``, ``ticket`` or ``resume``; the keywords go to the
    configurations."""
    ckw, skw = dict(client_kw or {}), dict(server_kw or {})
    if kind == "psk":
        return Pair(ckw, skw, **limits)
    if kind == "rpk":
        return PkPair(ckw, skw, **limits)
    if kind == "ticket":
        return Pair({**TICKET_CID, **ckw}, {**TICKET_CID, **skw}, ticket_keys=ticket_keys(),  # type: ignore[arg-type]
                    **limits)
    if kind == "resume":
        return ResumingPair(**limits)
    return Pair(x509_kw("client", **ckw), x509_kw("server", **skw), **limits)


def client_config_of(kind: str, seed: int, **kw: object) -> DTLSConfiguration:
    """A client configuration of the kind (as in ``make_pair``) with its own seeded randomness."""
    if kind == "psk":
        return client_config(seed, **kw)
    if kind == "rpk":
        return pk_client_config(seed, **kw)  # type: ignore[arg-type]
    if kind in ("ticket", "resume"):
        return client_config(seed, **{**TICKET_CID, **kw})
    return client_config(seed, **x509_kw("client", **kw))


def established(pair: Pair) -> Pair:
    """``pair`` after a complete handshake, events and output drained."""
    pair.handshake()
    if not (pair.client.is_established and pair.server_conn.is_established):
        raise RuntimeError("the reference handshake failed")
    drain(pair.client)
    drain_server(pair.server)
    return pair


# -- server: an established session plus fresh addresses ---------------------------------------------------

#: Server variants (kind of pair, server configuration, DTLSServer limits), picked by an input's first byte.
SERVER_VARIANTS: list[tuple[str, dict[str, object], dict[str, int]]] = [
    ("psk", {}, {}),  # cookies on (the default): fresh addresses only get HelloVerifyRequests
    ("psk", {"cookies": False, "idle_timeout": 60.0}, {}),  # a fresh address can run a whole handshake
    ("psk", {"cookies": False, "psk_identity_hint": b"hint", "coalesce_records": True, "mtu": 64}, {}),
    ("psk", {"cookies": False}, {"max_handshakes": 1, "max_sessions": 3}),  # the limits of the front
    ("rpk", {}, {}),  # raw public keys, the client's key requested; cookies on
    ("rpk", {"cookies": False, "psk_store": {IDENTITY: KEY}}, {}),  # PSK and raw-key clients at once
    ("x509", {"cookies": False, "require_client_auth": True, "mtu": 256}, {}),  # certificates, fragmented
    # CID both ways, record_size_limit, tickets (and the session-ID cache): fresh addresses can run full and
    # abbreviated handshakes, and the session's tls12_cid records move it to the address they come from
    ("ticket", {"cookies": False}, {}),
    # the same with RFC 9853: a session's records from a new address bring a path challenge there first
    ("ticket", {"cookies": False, "return_routability_check": True}, {}),
]
#: Fresh source addresses an input can use besides the established client's.
FRESH_ADDRS = [(f"198.51.100.{i}", 4000 + i) for i in range(1, 8)]


def server_pair(variant: int) -> Pair:
    """A server with one established session at CLIENT_ADDR (events and output drained)."""
    kind, kw, limits = SERVER_VARIANTS[variant % len(SERVER_VARIANTS)]
    client_kw = {k: v for k, v in kw.items() if k in SHARED}
    return established(make_pair(kind, client_kw, kw, **limits))


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


def _pk_server_flight(wire: str, until: State) -> Pair:
    """A public-key client fed the fragments of the server's flight (ServerHello, Certificate,
    ServerKeyExchange, CertificateRequest, ServerHelloDone), one per datagram, until it reaches ``until``."""
    pair = wire_pair(wire)
    pair.client.connect(pair.now)
    half_steps(pair, 3)
    for p in split_messages(b"".join(pair.s2c()), 10):
        if pair.client.state is until:
            break
        pair.client.receive_datagram(p, pair.now)
    if pair.client.state is not until:
        raise RuntimeError(f"{wire}: the server flight does not lead to {until.name}")
    return pair


def _pk_wait_finished(wire: str) -> Pair:
    pair = wire_pair(wire)
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    return pair


#: Configurations of the reference exchanges (``reference_wire``): kind of pair, client and server keywords.
WIRES: dict[str, tuple[str, dict[str, object], dict[str, object]]] = {
    "psk": ("psk", {}, {}),
    "hint": ("psk", {}, {"psk_identity_hint": b"hint"}),
    "rpk": ("rpk", {}, {}),
    "rpk-anonymous": ("rpk", {"key": None}, {}),
    "x509": ("x509", {}, {"require_client_auth": True}),
    "ticket-cid": ("ticket", {}, {}),
    "resume": ("resume", {}, {}),
}


def _wait_ticket(ccs: bool) -> Pair:
    """A ``ticket`` client after its final flight (CLIENT_WAIT_TICKET); with ``ccs``, the server's
    ChangeCipherSpec arrived before its NewSessionTicket."""
    pair = wire_pair("ticket-cid")
    pair.client.connect(pair.now)
    half_steps(pair, 5)
    if ccs:
        (flight,) = pair.s2c()
        pair.client.receive_datagram(raw_records(flight)[1], pair.now)
    return pair


def _resume(server_records: int) -> Pair:
    """A client resuming a ticket session: after its ClientHello (0), or the first records of the server's
    abbreviated flight (1: ServerHello, 2: and ChangeCipherSpec)."""
    pair = wire_pair("resume")
    assert isinstance(pair, ResumingPair)
    pair.client.connect(pair.now, session=pair.session)
    if server_records:
        half_steps(pair, 3)
        (flight,) = pair.s2c()
        for record in raw_records(flight)[:server_records]:
            pair.client.receive_datagram(record, pair.now)
    return pair


def wire_pair(wire: str) -> Pair:
    kind, client_kw, server_kw = WIRES[wire]
    return make_pair(kind, client_kw, server_kw)


#: (name, builder, the reference exchange it belongs to). Every builder is deterministic: the datagrams of a
#: complete reference exchange with the same configuration (``reference_wire``) are valid continuations for it.
#: New states go at the end: an input's first byte picks the state modulo the length of this list.
CLIENT_STATES: list[tuple[str, Callable[[], Pair], str]] = [
    ("start", _client_start, "psk"),
    ("wait_hello", _wait_hello, "psk"),
    ("wait_hello_after_hvr", _wait_hello_after_hvr, "psk"),
    ("wait_ske_or_done", lambda: _server_flight(None, 1), "psk"),
    ("wait_done", lambda: _server_flight(b"hint", 2), "hint"),
    ("wait_finished", lambda: _wait_finished(False), "psk"),
    ("wait_finished_ccs", lambda: _wait_finished(True), "psk"),
    ("established", lambda: established(wire_pair("psk")), "psk"),
    ("established_hint", lambda: established(wire_pair("hint")), "hint"),
    ("rpk_wait_certificate", lambda: _pk_server_flight("rpk", State.CLIENT_WAIT_CERTIFICATE), "rpk"),
    ("rpk_wait_ecdhe_ske", lambda: _pk_server_flight("rpk", State.CLIENT_WAIT_ECDHE_SKE), "rpk"),
    ("rpk_wait_cr_or_done", lambda: _pk_server_flight("rpk", State.CLIENT_WAIT_CR_OR_DONE), "rpk"),
    ("rpk_wait_done", lambda: _pk_server_flight("rpk", State.CLIENT_WAIT_DONE), "rpk"),
    ("rpk_wait_finished", lambda: _pk_wait_finished("rpk"), "rpk"),
    ("rpk_established", lambda: established(wire_pair("rpk")), "rpk"),
    ("rpk_anonymous_wait_done", lambda: _pk_server_flight("rpk-anonymous", State.CLIENT_WAIT_DONE),
     "rpk-anonymous"),
    ("x509_wait_certificate", lambda: _pk_server_flight("x509", State.CLIENT_WAIT_CERTIFICATE), "x509"),
    ("x509_wait_done", lambda: _pk_server_flight("x509", State.CLIENT_WAIT_DONE), "x509"),
    ("x509_established", lambda: established(wire_pair("x509")), "x509"),
    ("ticket_wait_ticket", lambda: _wait_ticket(False), "ticket-cid"),
    ("ticket_wait_ticket_ccs", lambda: _wait_ticket(True), "ticket-cid"),
    ("ticket_established", lambda: established(wire_pair("ticket-cid")), "ticket-cid"),
    ("resume_wait_hello", lambda: _resume(0), "resume"),
    ("resume_wait_finished", lambda: _resume(1), "resume"),
    ("resume_wait_finished_ccs", lambda: _resume(2), "resume"),
    ("resume_established", lambda: established(wire_pair("resume")), "resume"),
]


def client_pair(index: int) -> Pair:
    pair = CLIENT_STATES[index % len(CLIENT_STATES)][1]()
    drain(pair.client)
    drain_server(pair.server)
    pair.c2s()
    pair.s2c()
    pair.wire.clear()
    return pair


def reference_wire(hint: bool = False, kind: str = "psk", **kw: object) -> list[tuple[str, bytes]]:
    """Every datagram of a complete exchange: handshake, data both ways, close_notify and its answer."""
    client_kw = {k: v for k, v in kw.items() if k in SHARED}
    server_kw: dict[str, object] = dict(kw)
    if hint:
        server_kw["psk_identity_hint"] = b"hint"
    return exchange(make_pair(kind, client_kw, server_kw))


def wire_of(name: str) -> list[tuple[str, bytes]]:
    """The reference exchange of ``WIRES[name]``."""
    return exchange(wire_pair(name))


def exchange(pair: Pair) -> list[tuple[str, bytes]]:
    """Every datagram of a complete exchange of a new pair: handshake, data both ways, close_notify and its
    answer."""
    pair.handshake()
    pair.client.send(b"up")
    pair.pump()
    pair.server.send(CLIENT_ADDR, b"down")
    pair.pump()
    pair.client.close()
    pair.pump()
    return list(pair.wire)
