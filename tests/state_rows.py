"""The rows of the state-table tests (tests/test_state_table.py): handshake states in both roles, each reached by
driving a real client/server pair (PSK, ECDHE-ECDSA with raw public keys and mutual authentication, and PSK with
session tickets, abbreviated handshakes and Connection IDs), and the outcomes a record can have there. One state,
the client's RESUME_WAIT_TICKET, needs a server that renews a ticket when it resumes, which DTLSServer never does:
its row is driven against tests/ticket_renewal's scripted server."""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from helpers import (
    CLIENT_ADDR,
    Pair,
    PkPair,
    drain,
    drain_server,
    established_pair,
    half_steps,
    raw_records,
    seeded,
    split_messages,
    to_client,
    to_server,
)
from hypothesis import HealthCheck, settings
from state_cid import raw_records as cid_records
from ticket_renewal import RenewingServer

from iotdtls import DTLSConnection, TicketKeys
from iotdtls.constants import (
    AlertDescription,
    AlertLevel,
    ContentType,
    HandshakeType,
)
from iotdtls.handshake import (
    State,
)
from iotdtls.reassembly import parse_fragments
from iotdtls.record import split_records

#: Examples per cell; IOTDTLS_STATE_EXAMPLES=50 IOTDTLS_FUZZ_RANDOM=1 for a longer, randomized run.
CELL = settings(max_examples=int(os.environ.get("IOTDTLS_STATE_EXAMPLES", "4")), deadline=None,
                derandomize=not os.environ.get("IOTDTLS_FUZZ_RANDOM"), database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PATTERNS = settings(CELL, max_examples=int(os.environ.get("IOTDTLS_STATE_EXAMPLES", "4")) * 25)

#: Server front: a ClientHello above this message_seq is dropped (iotdtls.server.MAX_HELLO_SEQ).
MAX_HELLO_SEQ = 16
#: Time between the setup and the injected record: at least the initial retransmission timeout, the shortest
#: interval at which a server in a handshake answers a repeated flight of its peer (the limit is a quarter of it
#: for clients); the connections' timers are not fired, so nothing but the input makes a side send.
DELAY = 2.0
RENEGOTIATION = frozenset({HandshakeType.HELLO_REQUEST, HandshakeType.CLIENT_HELLO})
UNKNOWN_TYPES = [t for t in range(256) if t not in set(HandshakeType)]


class Outcome(enum.Enum):
    """What a connection (or the server front) does with one record. The value is the matrix abbreviation."""

    HANDLER = "run"  # the table's handler runs (HANDSHAKE_TABLE or CCS_TABLE)
    UNEXPECTED = "UM"  # fatal unexpected_message alert, connection closed
    DECODE = "dec"  # fatal decode_error (malformed ChangeCipherSpec or alert)
    BAD_MAC = "BRM"  # fatal bad_record_mac: the peer's Finished does not authenticate
    RETRANSMIT = "rtx"  # old message_seq: a retransmission; silent, our last flight is resent if we keep one
    BUFFER_SEQ = "buf"  # future message_seq: held by the reassembler
    BUFFER_EPOCH = "ep+"  # next epoch before the ChangeCipherSpec: held until the switch
    DROP = "drop"  # silently dropped
    DATA = "data"  # DataReceived
    EARLY_DATA = "early"  # application data that overtook the Finished: delivered after it
    WARNING = "warn"  # AlertReceived, the connection goes on
    CLOSE = "close"  # close_notify: closed without error (answered with close_notify when established)
    FATAL = "fatal"  # the peer's fatal alert: closed, never answered
    NO_RENEGOTIATION = "reneg"  # no_renegotiation warning, the session goes on
    HELLO_VERIFY = "hvr"  # the stateless server front answers a ClientHello with a HelloVerifyRequest


LEGEND = {
    Outcome.HANDLER: "the table's handler runs (`HANDSHAKE_TABLE` / `CCS_TABLE`)",
    Outcome.UNEXPECTED: "fatal `unexpected_message`, connection closed",
    Outcome.DECODE: "fatal `decode_error` (only for malformed payloads; not shown in the matrix)",
    Outcome.BAD_MAC: "fatal `bad_record_mac` (a handshake record failing authentication while waiting for Finished)",
    Outcome.RETRANSMIT: "old `message_seq`: dropped as a retransmission; our last flight is resent if we keep one",
    Outcome.BUFFER_SEQ: "future `message_seq`: held in the reassembler (up to 3 messages ahead)",
    Outcome.BUFFER_EPOCH: "epoch 1 before the ChangeCipherSpec: held until the switch",
    Outcome.DROP: "silently dropped",
    Outcome.DATA: "`DataReceived`",
    Outcome.EARLY_DATA: "held and delivered right after the Finished",
    Outcome.WARNING: "`AlertReceived`, the connection goes on",
    Outcome.CLOSE: "closed without error; answered with close_notify when established",
    Outcome.FATAL: "closed with `RemoteAlert`, no answer",
    Outcome.NO_RENEGOTIATION: "`no_renegotiation` warning alert, the session goes on",
    Outcome.HELLO_VERIFY: "stateless front: HelloVerifyRequest, nothing stored",
}


# -- rows: states reached with a real pair --------------------------------------------------------------


@dataclass
class Setup:
    """A pair driven to one state; ``conn`` is the connection the inputs are aimed at (``None``: the server
    front has no connection for the client's address)."""

    pair: Pair
    conn: DTLSConnection | None
    #: The peer's genuine handshake messages of this handshake by type (public-key rows): valid bodies to send.
    genuine: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    name: str
    role: str  # "client" or "server"
    state: State | None  # None: no connection yet (server front)
    build: Callable[[], Setup] = field(compare=False, repr=False)
    read_epoch: int = 0
    next_seq: int = 0  # the message_seq the state expects next
    keys: bool = False  # epoch-1 keys exist: authentic epoch-1 records can be made
    keeps_flight: bool = False  # our last flight is kept for retransmission
    front_only: bool = False  # the server front has no connection for the address (none yet, or removed)
    pk: bool = False  # reached with an ECDHE-ECDSA handshake (raw public keys, mutual authentication)
    ext: bool = False  # a state of session tickets, resumption or Connection ID (its own tables in the docs)
    cid: bool = False  # the connection reads tls12_cid records (RFC 9146): epoch-1 inputs carry its CID
    scripted: bool = False  # the peer is tests/ticket_renewal.RenewingServer, not an iotdtls server front

    @property
    def id(self) -> str:
        return f"{self.role}:{self.name}"


def _client_start() -> Setup:
    pair = Pair()
    return Setup(pair, pair.client)


def _client_wait_hello() -> Setup:
    pair = Pair()
    pair.client.connect(pair.now)
    pair.c2s()
    return Setup(pair, pair.client)


def _client_wait_hello_after_hvr() -> Setup:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 2)
    pair.c2s()
    return Setup(pair, pair.client)


def _client_server_flight(hint: bytes | None, messages: int) -> Setup:
    pair = Pair(server_kw={"psk_identity_hint": hint})
    pair.client.connect(pair.now)
    half_steps(pair, 3)
    pieces = [p for d in pair.s2c() for p in split_messages(d, 10)]
    to_client(pair, pieces[:messages])
    return Setup(pair, pair.client)


def _client_wait_finished(ccs: bool) -> Setup:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    (final,) = pair.c2s()
    if ccs:
        to_server(pair, [final])
        drain_server(pair.server)
        (flight,) = pair.s2c()
        to_client(pair, raw_records(flight)[:1])  # the server's ChangeCipherSpec, not its Finished
    return Setup(pair, pair.client)


def _client_established() -> Setup:
    pair = established_pair()
    return Setup(pair, pair.client)


def _client_closed(fatal: bool) -> Setup:
    pair = established_pair()
    if fatal:
        pair.server_conn._send_alert(AlertLevel.FATAL, AlertDescription.internal_error)
        to_client(pair, pair.server_conn.datagrams_to_send(pair.now))
    else:
        pair.server.close(CLIENT_ADDR)
        to_client(pair, pair.s2c())
    drain(pair.client)
    pair.c2s()
    drain_server(pair.server)
    return Setup(pair, pair.client)


def _server_none() -> Setup:
    return Setup(Pair(), None)


def _server_wait_cke() -> Setup:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 3)
    pair.s2c()
    return Setup(pair, pair.server_conn)


def _server_wait_finished(ccs: bool) -> Setup:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    (final,) = pair.c2s()
    to_server(pair, raw_records(final)[: 2 if ccs else 1])  # ClientKeyExchange (and ChangeCipherSpec)
    return Setup(pair, pair.server_conn)


def _server_established() -> Setup:
    pair = established_pair()
    return Setup(pair, pair.server_conn)


def _server_closed(fatal: bool) -> Setup:
    pair = established_pair()
    conn = pair.server_conn
    if fatal:
        pair.client._send_alert(AlertLevel.FATAL, AlertDescription.internal_error)
    else:
        pair.client.close()
    to_server(pair, pair.c2s())
    drain_server(pair.server)
    pair.s2c()
    return Setup(pair, conn)


ROWS: list[Row] = [
    Row("START", "client", State.CLIENT_START, _client_start),
    Row("WAIT_HELLO", "client", State.CLIENT_WAIT_HELLO, _client_wait_hello, keeps_flight=True),
    Row("WAIT_HELLO(HVR)", "client", State.CLIENT_WAIT_HELLO, _client_wait_hello_after_hvr, next_seq=1,
        keeps_flight=True),
    Row("WAIT_SKE_OR_DONE", "client", State.CLIENT_WAIT_SKE_OR_DONE, lambda: _client_server_flight(None, 1),
        next_seq=2, keeps_flight=True),
    Row("WAIT_DONE", "client", State.CLIENT_WAIT_DONE, lambda: _client_server_flight(b"hint", 2), next_seq=3,
        keeps_flight=True),
    Row("WAIT_FINISHED", "client", State.CLIENT_WAIT_FINISHED, lambda: _client_wait_finished(False), next_seq=3,
        keys=True, keeps_flight=True),
    Row("WAIT_FINISHED+CCS", "client", State.CLIENT_WAIT_FINISHED, lambda: _client_wait_finished(True),
        read_epoch=1, next_seq=3, keys=True, keeps_flight=True),
    Row("ESTABLISHED", "client", State.ESTABLISHED, _client_established, read_epoch=1, next_seq=4, keys=True),
    Row("CLOSED(close_notify)", "client", State.CLOSED, lambda: _client_closed(False), read_epoch=1, next_seq=4,
        keys=True),
    Row("CLOSED(fatal)", "client", State.CLOSED, lambda: _client_closed(True), read_epoch=1, next_seq=4, keys=True),
    Row("NONE", "server", None, _server_none, front_only=True),
    Row("WAIT_CKE", "server", State.SERVER_WAIT_CKE, _server_wait_cke, next_seq=2, keeps_flight=True),
    Row("WAIT_FINISHED", "server", State.SERVER_WAIT_FINISHED, lambda: _server_wait_finished(False), next_seq=3,
        keys=True, keeps_flight=True),
    Row("WAIT_FINISHED+CCS", "server", State.SERVER_WAIT_FINISHED, lambda: _server_wait_finished(True),
        read_epoch=1, next_seq=3, keys=True, keeps_flight=True),
    # The server keeps its final flight (ChangeCipherSpec, Finished) until the client's first record in epoch 1.
    Row("ESTABLISHED", "server", State.ESTABLISHED, _server_established, read_epoch=1, next_seq=4, keys=True,
        keeps_flight=True),
    Row("CLOSED(close_notify)", "server", State.CLOSED, lambda: _server_closed(False), read_epoch=1, next_seq=4,
        keys=True, front_only=True),
    Row("CLOSED(fatal)", "server", State.CLOSED, lambda: _server_closed(True), read_epoch=1, next_seq=4, keys=True,
        front_only=True),
]



# -- public-key rows: ECDHE-ECDSA with raw public keys, the server requesting the client's key ----------------


def _messages(datagram: bytes) -> dict[int, bytes]:
    """The whole epoch-0 handshake messages of a datagram, by type."""
    return {f.msg_type: f.body for r in split_records(datagram)
            if r.epoch == 0 and r.content_type == ContentType.HANDSHAKE for f in parse_fragments(r.fragment)}


def _pk_server_flight(messages: int) -> Setup:
    """The client after the first ``messages`` of ServerHello, Certificate, ServerKeyExchange,
    CertificateRequest, ServerHelloDone."""
    pair = PkPair()
    pair.client.connect(pair.now)
    half_steps(pair, 3)
    (flight,) = pair.s2c()
    to_client(pair, split_messages(flight, 10)[:messages])
    return Setup(pair, pair.client, _messages(flight))


def _pk_client_wait_finished() -> Setup:
    pair = PkPair()
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    to_server(pair, pair.c2s())
    drain_server(pair.server)
    (flight,) = pair.s2c()
    to_client(pair, raw_records(flight)[:1])  # the server's ChangeCipherSpec, not its Finished
    return Setup(pair, pair.client)


def _pk_client_final_flight(records: tuple[int, ...], anonymous: bool = False) -> Setup:
    """The server after the records ``records`` of the client's final flight: Certificate, ClientKeyExchange,
    CertificateVerify, ChangeCipherSpec, Finished (``anonymous``: a client without a key sends an empty
    Certificate, no CertificateVerify)."""
    # No amplification budget: an old message_seq is answered by the whole flight here (the budget that limits
    # this answer before the client's Finished is tested in tests/test_amplification.py).
    pair = PkPair({"key": None} if anonymous else None, {"amplification_factor": None})
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    (final,) = pair.c2s()
    recs = raw_records(final)
    to_server(pair, [recs[i] for i in records])
    return Setup(pair, pair.server_conn, _messages(final))


PK_ROWS: list[Row] = [
    Row("WAIT_CERTIFICATE", "client", State.CLIENT_WAIT_CERTIFICATE, lambda: _pk_server_flight(1), next_seq=2,
        keeps_flight=True, pk=True),
    Row("WAIT_ECDHE_SKE", "client", State.CLIENT_WAIT_ECDHE_SKE, lambda: _pk_server_flight(2), next_seq=3,
        keeps_flight=True, pk=True),
    Row("WAIT_CR_OR_DONE", "client", State.CLIENT_WAIT_CR_OR_DONE, lambda: _pk_server_flight(3), next_seq=4,
        keeps_flight=True, pk=True),
    Row("WAIT_DONE(CR)", "client", State.CLIENT_WAIT_DONE, lambda: _pk_server_flight(4), next_seq=5,
        keeps_flight=True, pk=True),
    Row("WAIT_FINISHED+CCS(pk)", "client", State.CLIENT_WAIT_FINISHED, _pk_client_wait_finished, read_epoch=1,
        next_seq=6, keys=True, keeps_flight=True, pk=True),
    Row("WAIT_CLIENT_CERTIFICATE", "server", State.SERVER_WAIT_CLIENT_CERTIFICATE,
        lambda: _pk_client_final_flight(()), next_seq=2, keeps_flight=True, pk=True),
    Row("WAIT_CKE(anonymous)", "server", State.SERVER_WAIT_CKE, lambda: _pk_client_final_flight((0,), True),
        next_seq=3, keeps_flight=True, pk=True),
    Row("WAIT_CKE_AUTH", "server", State.SERVER_WAIT_CKE_AUTH, lambda: _pk_client_final_flight((0,)), next_seq=3,
        keeps_flight=True, pk=True),
    Row("WAIT_CERTIFICATE_VERIFY", "server", State.SERVER_WAIT_CERTIFICATE_VERIFY,
        lambda: _pk_client_final_flight((0, 1)), next_seq=4, keys=True, keeps_flight=True, pk=True),
    Row("WAIT_CERTIFICATE_VERIFY+CCS", "server", State.SERVER_WAIT_CERTIFICATE_VERIFY,
        lambda: _pk_client_final_flight((0, 1, 3)), read_epoch=1, next_seq=4, keys=True, keeps_flight=True,
        pk=True),
    Row("WAIT_FINISHED+CCS(pk)", "server", State.SERVER_WAIT_FINISHED,
        lambda: _pk_client_final_flight((0, 1, 2, 3)), read_epoch=1, next_seq=5, keys=True, keeps_flight=True,
        pk=True),
]
ROWS += PK_ROWS

# SERVER_START is not reachable through DTLSServer: the front creates a connection and accepts its ClientHello
# in one call. It appears in no row.




# -- session tickets, abbreviated handshakes and Connection ID -------------------------------------------------
# PSK pairs. A ticket-issuing server front: both sides with ``session_tickets=True``, the front with TicketKeys.
# Resumption: a second client offers the session of a first, completed handshake to the same server front (after
# the front closed the first one), by session ID (the default cache) or, in the (cid) rows, by ticket. The (cid)
# rows negotiate 4-byte connection IDs both ways, so their epoch-1 records travel as tls12_cid.

TICKETS: dict[str, object] = {"session_tickets": True}
CID: dict[str, object] = {"cid_length": 4}
CID_LEN = 4


def _ticket_keys() -> TicketKeys:
    return TicketKeys(seeded(9))


def _client_wait_ticket(cid: bool) -> Setup:
    kw = {**TICKETS, **CID} if cid else TICKETS
    pair = Pair(kw, kw, ticket_keys=_ticket_keys())
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    (final,) = pair.c2s()
    if not cid:
        return Setup(pair, pair.client)
    to_server(pair, [final])
    drain_server(pair.server)
    (flight,) = pair.s2c()
    ticket, ccs, _ = cid_records(flight, CID_LEN)
    to_client(pair, [ccs])  # the server's ChangeCipherSpec overtook its NewSessionTicket (lost)
    (nst,) = parse_fragments(ticket[13:])  # a plaintext record: the fragment follows the header
    return Setup(pair, pair.client, {HandshakeType.NEW_SESSION_TICKET: nst.body})


def resumption_pair(cid: bool) -> Pair:
    """A new client that has called ``connect(session=...)`` with the session of a first handshake with the same
    server front; nothing delivered yet."""
    kw = {**TICKETS, **CID} if cid else {}
    first = established_pair(kw, kw, **({"ticket_keys": _ticket_keys()} if cid else {}))
    session = first.client.session
    assert session is not None
    first.server.close(CLIENT_ADDR)
    first.s2c()
    drain_server(first.server)
    pair = Pair(kw, kw)
    pair.server = first.server
    pair.client.connect(pair.now, session=session)
    return pair


def _client_resume(records: int, cid: bool) -> Setup:
    """The client after the first ``records`` records (ServerHello, ChangeCipherSpec, Finished) of the server's
    abbreviated flight."""
    pair = resumption_pair(cid)
    half_steps(pair, 3)
    (flight,) = pair.s2c()
    to_client(pair, cid_records(flight, CID_LEN if cid else 0)[:records])
    return Setup(pair, pair.client)


def renewal_setup() -> tuple[Pair, RenewingServer, list[bytes]]:
    """A client resuming a ticket session with tests/ticket_renewal's scripted server, which renews the ticket;
    the scripted flight (ServerHello, NewSessionTicket, ChangeCipherSpec, Finished) not delivered yet."""
    first = established_pair(TICKETS, TICKETS, ticket_keys=_ticket_keys())
    session = first.client.session
    assert session is not None
    pair = Pair(TICKETS, TICKETS)
    pair.client.connect(pair.now, session=session)
    script = RenewingServer(session, seeded(5))
    (hello,) = pair.c2s()
    return pair, script, script.answer(hello)


def _client_resume_wait_ticket() -> Setup:
    pair, script, flight = renewal_setup()
    to_client(pair, flight[:1])  # the ServerHello: resumed, a ticket promised
    return Setup(pair, pair.client, dict(script.sent))


def _server_resume(ccs: bool, cid: bool) -> Setup:
    pair = resumption_pair(cid)
    half_steps(pair, 3)
    if ccs:
        to_client(pair, pair.s2c())
        (final,) = pair.c2s()
        to_server(pair, cid_records(final, CID_LEN if cid else 0)[:1])  # the client's CCS, not its Finished
    else:
        pair.s2c()
    return Setup(pair, pair.server_conn)


def _established_cid(role: str) -> Setup:
    pair = established_pair(CID, CID)
    return Setup(pair, pair.client if role == "client" else pair.server_conn)


EXT_ROWS: list[Row] = [
    Row("WAIT_TICKET", "client", State.CLIENT_WAIT_TICKET, lambda: _client_wait_ticket(False), next_seq=3, keys=True,
        keeps_flight=True, ext=True),
    Row("WAIT_TICKET+CCS(cid)", "client", State.CLIENT_WAIT_TICKET, lambda: _client_wait_ticket(True), next_seq=3,
        keys=True, keeps_flight=True, ext=True, cid=True),
    Row("RESUME_WAIT_TICKET", "client", State.CLIENT_RESUME_WAIT_TICKET, _client_resume_wait_ticket, next_seq=1,
        keys=True, keeps_flight=True, ext=True, scripted=True),
    Row("RESUME_WAIT_FINISHED", "client", State.CLIENT_RESUME_WAIT_FINISHED, lambda: _client_resume(1, False),
        next_seq=2, keys=True, keeps_flight=True, ext=True),
    Row("RESUME_WAIT_FINISHED+CCS", "client", State.CLIENT_RESUME_WAIT_FINISHED, lambda: _client_resume(2, False),
        read_epoch=1, next_seq=2, keys=True, keeps_flight=True, ext=True),
    Row("RESUME_WAIT_FINISHED+CCS(cid)", "client", State.CLIENT_RESUME_WAIT_FINISHED,
        lambda: _client_resume(2, True), read_epoch=1, next_seq=2, keys=True, keeps_flight=True, ext=True, cid=True),
    Row("ESTABLISHED(cid)", "client", State.ESTABLISHED, lambda: _established_cid("client"), read_epoch=1,
        next_seq=4, keys=True, ext=True, cid=True),
    Row("RESUME_WAIT_FINISHED", "server", State.SERVER_RESUME_WAIT_FINISHED, lambda: _server_resume(False, False),
        next_seq=2, keys=True, keeps_flight=True, ext=True),
    Row("RESUME_WAIT_FINISHED(cid)", "server", State.SERVER_RESUME_WAIT_FINISHED,
        lambda: _server_resume(False, True), next_seq=2, keys=True, keeps_flight=True, ext=True, cid=True),
    Row("RESUME_WAIT_FINISHED+CCS", "server", State.SERVER_RESUME_WAIT_FINISHED, lambda: _server_resume(True, False),
        read_epoch=1, next_seq=2, keys=True, keeps_flight=True, ext=True),
    Row("RESUME_WAIT_FINISHED+CCS(cid)", "server", State.SERVER_RESUME_WAIT_FINISHED,
        lambda: _server_resume(True, True), read_epoch=1, next_seq=2, keys=True, keeps_flight=True, ext=True,
        cid=True),
    Row("ESTABLISHED(cid)", "server", State.ESTABLISHED, lambda: _established_cid("server"), read_epoch=1,
        next_seq=4, keys=True, keeps_flight=True, ext=True, cid=True),
]
ROWS += EXT_ROWS
REACHABLE = {(r.role, r.state) for r in ROWS}
