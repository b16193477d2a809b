"""The inputs and the oracle of the state-table tests (tests/test_state_table.py): every kind of record a state can
receive, the outcome the handshake tables (plus the documented rules in `expected_outcome`) predict for it,
the hypothesis strategy of concrete records (message bodies in tests/state_bodies.py, Connection ID records in
tests/state_cid.py), and `inject` / `check`, which run one cell and compare."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from helpers import (
    CLIENT_ADDR,
    drain,
    drain_server,
)
from hypothesis import strategies as st
from state_bodies import body_strategy
from state_cid import (
    STRANGER_CID,
    header_len,
    other_cid,
    peer_cipher,
    plain_cid_record,
    records_sent,
    seal,
    seal_without_type,
)
from state_rows import DELAY, RENEGOTIATION, ROWS, UNKNOWN_TYPES, Outcome, Row, Setup

from iotdtls import ConnectionTerminated, DataReceived, DTLSConnection
from iotdtls.buffer import Buffer, BufferReadError
from iotdtls.constants import (
    AlertDescription,
    AlertLevel,
    ContentType,
    HandshakeType,
)
from iotdtls.errors import (
    AlertError,
    BadRecordMac,
    DecodeError,
    DTLSError,
    InternalError,
    RemoteAlert,
    UnexpectedMessage,
)
from iotdtls.events import AlertReceived, Event
from iotdtls.handshake import (
    CCS_TABLE,
    HANDSHAKE_TABLE,
    HANDSHAKING,
    PROTECTED_MESSAGES,
    WAITING_FINISHED,
    State,
)
from iotdtls.messages import (
    pull_client_hello,
)
from iotdtls.reassembly import message_header, parse_fragments
from iotdtls.record import encode_plain, split_records

# -- inputs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    content: ContentType
    msg_type: int | None = None  # handshake type; UNKNOWN_TYPE stands for any value not in HandshakeType
    seq: str | None = None  # handshake: "in-order", "old" or "future"
    alert: str | None = None  # "warning", "fatal" or "close_notify"
    cid: str | None = None  # ContentType.TLS12_CID: one of CID_KINDS

    @property
    def label(self) -> str:
        if self.content == ContentType.TLS12_CID:
            return CID_KINDS[self.cid or ""]
        if self.content == ContentType.HANDSHAKE:
            assert self.msg_type is not None
            name = "unknown" if self.msg_type == UNKNOWN_TYPE else HandshakeType(self.msg_type).name
            return f"{name} ({self.seq})"
        if self.content == ContentType.ALERT:
            return f"Alert {self.alert}"
        if self.content == ContentType.RETURN_ROUTABILITY_CHECK:
            return "return_routability_check"
        return "ChangeCipherSpec" if self.content == ContentType.CHANGE_CIPHER_SPEC else "ApplicationData"


UNKNOWN_TYPE = -1
SEQ_CLASSES = ("in-order", "old", "future")
#: Connection ID records (RFC 9146) beyond the ordinary kinds (which a connection with a CID receives as
#: tls12_cid records carrying its CID): an inner content type that does not exist, an inner plaintext with no
#: content type at all (only zeros), a CID that is not the connection's, and a protected record in the classic
#: format where the CID is due.
CID_KINDS = {"bad-type": "tls12_cid, inner type not 20-23", "no-type": "tls12_cid, no inner type",
             "other-cid": "tls12_cid, another CID", "without-cid": "protected record without the CID"}
KINDS: list[Kind] = [
    *(Kind(ContentType.HANDSHAKE, int(t), s) for t in [*HandshakeType, UNKNOWN_TYPE] for s in SEQ_CLASSES),
    Kind(ContentType.CHANGE_CIPHER_SPEC),
    *(Kind(ContentType.ALERT, alert=a) for a in ("warning", "fatal", "close_notify")),
    Kind(ContentType.APPLICATION_DATA),
    Kind(ContentType.RETURN_ROUTABILITY_CHECK),
    *(Kind(ContentType.TLS12_CID, cid=c) for c in CID_KINDS),
]
#: "0": plaintext epoch 0; "1": epoch 1 protected with the real keys; "1*": epoch 1 that fails authentication.
EPOCHS = ("0", "1", "1*")


def applicable(row: Row, kind: Kind, epoch: str) -> bool:
    if epoch == "1" and not row.keys:
        return False
    if kind.cid == "without-cid" and (not row.cid or epoch == "0"):
        return False  # without a CID it is ordinary application data; in epoch 0 it is not protected
    if kind.content == ContentType.TLS12_CID and not (row.ext or row.state is State.ESTABLISHED):
        return False  # rows without a CID drop every tls12_cid record: shown for the established ones only
    return not (kind.seq == "old" and (row.next_seq == 0 or row.front_only))


# -- the oracle --------------------------------------------------------------------------------------------


def expected_outcome(row: Row, kind: Kind, epoch: str, *, well_formed: bool = True,
                     hello_route: str = "conn") -> Outcome:
    """The defined outcome of one record, from the tables plus these documented rules:

    1. A closed connection ignores everything (data after close_notify or a fatal alert); the server front
       forgets it, so there only a ClientHello is answered, statelessly.
    2. The server front answers every epoch-0 ClientHello that does not carry the random of the address's
       connection (``hello_route`` "front") with a HelloVerifyRequest and drops unparseable ones ("invalid");
       everything else without a connection is dropped.
    3. Record layer (RFC 6347 4.1): epoch 1 before the ChangeCipherSpec is buffered while handshaking
       (dropped otherwise); epoch 0 after the switch counts only as a retransmission hint, except a handshake
       record in a state whose ``HANDSHAKE_TABLE`` entries still expect an unprotected message (the server's
       WAIT_CERTIFICATE_VERIFY: the client's ChangeCipherSpec overtook its CertificateVerify), which is
       processed as the handshake message it is (rule 4, in epoch 0); a record failing authentication is
       dropped, except a handshake record while waiting for Finished (bad_record_mac, openssl #10906; with a
       Connection ID the content type is encrypted, so there every tls12_cid record carrying the connection's
       CID counts); a malformed ChangeCipherSpec or alert is a decode_error.
    4. Handshake messages: an old message_seq is a retransmission, a future one is buffered; after the
       handshake a ClientHello or HelloRequest gets a no_renegotiation warning (in both roles) and anything
       new is unexpected. In-order messages: ``PROTECTED_MESSAGES`` must come in epoch 1 and nothing else
       may; then ``HANDSHAKE_TABLE`` decides. States outside ``HANDSHAKING`` (the client before ``connect``)
       have no table entries: any handshake message there is unexpected.
    5. ChangeCipherSpec: ``CCS_TABLE`` while the read side is in epoch 0, unexpected otherwise. Its handler
       switches the read side to epoch 1 at once where the keys exist (the server's WAIT_CERTIFICATE_VERIFY
       included, so a Finished that skips the CertificateVerify is unexpected) and defers the switch to the
       ClientKeyExchange where they do not yet (the server's WAIT_CKE, WAIT_CLIENT_CERTIFICATE, WAIT_CKE_AUTH),
       and to the NewSessionTicket where one was promised (RFC 5077 section 3.3: it precedes the
       ChangeCipherSpec; the client's WAIT_TICKET and RESUME_WAIT_TICKET).
    6. Application data only in epoch 1: delivered when established, held while waiting for Finished.
    7. Connection ID (RFC 9146): a connection that asked for no CID never parses a tls12_cid record (its CID
       length is unknown): dropped. One that did: a tls12_cid record in epoch 0 is dropped (section 4: plaintext
       records keep their format); one carrying another CID, or a protected record in the classic format, is
       dropped before authentication (the server front routes tls12_cid records by CID: an unknown CID reaches
       no connection) or, before the ChangeCipherSpec, buffered like any epoch-1 record (rule 3); an
       authentic one with an inner content type that does not exist, or with none (an all-zero inner plaintext:
       RFC 9146 section 4 refers to RFC 8446 section 5.4, whose receiver "MUST terminate the connection with an
       unexpected_message alert"), is unexpected_message.
    8. return_routability_check (RFC 9853), which no row negotiates: it exists only protected, so in epoch 0 it
       is dropped like a tls12_cid record; in epoch 1, unexpected_message wherever the record is processed (rule
       3 decides where).
    """
    content = kind.content
    hello = content == ContentType.HANDSHAKE and kind.msg_type == HandshakeType.CLIENT_HELLO and epoch == "0"
    if row.role == "server" and hello and (row.front_only or hello_route != "conn"):
        ok = hello_route != "invalid"
        return Outcome.HELLO_VERIFY if ok else Outcome.DROP  # rule 2 (every message_seq used here is <= 16)
    if row.front_only or row.state is State.CLOSED:
        return Outcome.DROP  # rules 1 and 2
    assert row.state is not None
    if content == ContentType.TLS12_CID:
        return _cid_outcome(row, kind, epoch)
    if content == ContentType.RETURN_ROUTABILITY_CHECK and epoch == "0":
        return Outcome.DROP  # rule 8
    record_epoch = 0 if epoch == "0" else 1
    if record_epoch != row.read_epoch:  # rule 3
        if record_epoch == 1:
            return Outcome.BUFFER_EPOCH if row.state in HANDSHAKING else Outcome.DROP
        if content != ContentType.HANDSHAKE:
            return Outcome.DROP
        if not (row.read_epoch == 1 and expects_unprotected(row.state)):
            return Outcome.RETRANSMIT if kind.seq == "old" else Outcome.DROP
    if epoch == "1*":
        if row.state in WAITING_FINISHED and (content == ContentType.HANDSHAKE or row.cid):
            return Outcome.BAD_MAC
        return Outcome.DROP
    if content == ContentType.CHANGE_CIPHER_SPEC:  # rule 5
        if not well_formed:
            return Outcome.DECODE
        return Outcome.HANDLER if row.state in CCS_TABLE and row.read_epoch == 0 else Outcome.UNEXPECTED
    if content == ContentType.ALERT:
        if not well_formed:
            return Outcome.DECODE
        return {"warning": Outcome.WARNING, "fatal": Outcome.FATAL, "close_notify": Outcome.CLOSE}[kind.alert or ""]
    if content == ContentType.RETURN_ROUTABILITY_CHECK:  # rule 8
        return Outcome.UNEXPECTED
    if content == ContentType.APPLICATION_DATA:  # rule 6
        if record_epoch == 1 and row.state is State.ESTABLISHED:
            return Outcome.DATA
        if record_epoch == 1 and row.state in WAITING_FINISHED:
            return Outcome.EARLY_DATA
        return Outcome.UNEXPECTED
    assert kind.msg_type is not None  # rule 4
    if row.state is State.ESTABLISHED:
        if kind.msg_type in RENEGOTIATION:
            return Outcome.NO_RENEGOTIATION
        return Outcome.RETRANSMIT if kind.seq == "old" else Outcome.UNEXPECTED
    if row.state not in HANDSHAKING:
        return Outcome.UNEXPECTED
    if kind.seq == "old":
        return Outcome.RETRANSMIT
    if kind.seq == "future":
        return Outcome.BUFFER_SEQ
    if (kind.msg_type in PROTECTED_MESSAGES) != (record_epoch == 1):
        return Outcome.UNEXPECTED
    return Outcome.HANDLER if (row.state, kind.msg_type) in HANDSHAKE_TABLE else Outcome.UNEXPECTED


def _cid_outcome(row: Row, kind: Kind, epoch: str) -> Outcome:
    """Rule 7, for the tls12_cid kinds (the ordinary kinds reach a connection with a CID as tls12_cid records)."""
    assert row.state is not None
    if not row.cid or epoch == "0":
        return Outcome.DROP
    if kind.cid == "other-cid" and row.role == "server":
        return Outcome.DROP  # the front knows no connection with that CID
    if row.read_epoch == 0:
        return Outcome.BUFFER_EPOCH if row.state in HANDSHAKING else Outcome.DROP
    if kind.cid in ("other-cid", "without-cid"):
        return Outcome.DROP
    if epoch == "1*":
        return Outcome.BAD_MAC if row.state in WAITING_FINISHED else Outcome.DROP
    return Outcome.UNEXPECTED


#: States where a ChangeCipherSpec waits for the NewSessionTicket that must precede it (rule 5).
TICKET_BEFORE_CCS = frozenset({State.CLIENT_WAIT_TICKET, State.CLIENT_RESUME_WAIT_TICKET})


def expects_unprotected(state: State) -> bool:
    """The table still has an entry for a message that must arrive in epoch 0 (rule 3)."""
    return any(s is state and t not in PROTECTED_MESSAGES for s, t in HANDSHAKE_TABLE)


# -- known deviations of the implementation from the oracle (each one is a bug) --------------------------
# A cell listed here runs as xfail(strict=True) with the reason; the matrix marks it with ✗. The table
# KNOWN_DEVIATIONS was emptied by 08c6732, which fixed the only deviation found in the base handshake: the client
# stored handshake records received before connect() in its reassembler instead of refusing them (a stored
# message later collided with the server's message of the same message_seq and killed the handshake with
# illegal_parameter). The three deviations found in the Connection ID rows (a tls12_cid record in epoch 0 reaching
# the ChangeCipherSpec handler, an all-zero inner plaintext dropped instead of unexpected_message, a wrong PSK with
# a CID failing only at the handshake timeout) were fixed with the commit after 85ca6f8.
KNOWN_DEVIATIONS: dict[tuple[str, State | None, ContentType, str], str] = {}

def deviation(row: Row, kind: Kind, epoch: str) -> str | None:
    return KNOWN_DEVIATIONS.get((row.role, row.state, kind.content, epoch))


def cells() -> list[object]:
    out: list[object] = []
    for row in ROWS:
        for kind in KINDS:
            for epoch in EPOCHS:
                if not applicable(row, kind, epoch):
                    continue
                reason = deviation(row, kind, epoch)
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                out.append(pytest.param(row, kind, epoch, marks=marks,
                                        id=f"{row.id}|{kind.label}|e{epoch}".replace(" ", "")))
    return out


# -- concrete inputs ---------------------------------------------------------------------------------


@dataclass
class Input:
    kind: Kind
    epoch: str
    record: bytes  # the datagram
    msg_type: int = -1
    seq: int = -1
    body: bytes = b""
    well_formed: bool = True
    hello_route: str = "conn"


@st.composite
def inputs(draw: st.DrawFn, setup: Setup, row: Row, kind: Kind, epoch: str) -> Input:
    inp = Input(kind, epoch, b"")
    if kind.content == ContentType.HANDSHAKE:
        assert kind.msg_type is not None
        inp.msg_type = draw(st.sampled_from(UNKNOWN_TYPES)) if kind.msg_type == UNKNOWN_TYPE else kind.msg_type
        if kind.seq == "old":
            inp.seq = draw(st.integers(0, row.next_seq - 1))
        elif kind.seq == "future":
            inp.seq = row.next_seq + draw(st.integers(1, 3))
        else:
            inp.seq = row.next_seq
        inp.body = draw(body_strategy(inp.msg_type, setup))
        payload = message_header(inp.msg_type, len(inp.body), inp.seq) + inp.body
        if inp.msg_type == HandshakeType.CLIENT_HELLO:
            inp.hello_route = _hello_route(inp.body, setup)
    elif kind.content == ContentType.CHANGE_CIPHER_SPEC:
        inp.body = payload = draw(st.one_of(st.just(b"\x01"), st.just(b"\x01"), st.binary(max_size=3)))
        inp.well_formed = payload == b"\x01"
    elif kind.content == ContentType.ALERT:
        nonzero = st.one_of(st.sampled_from(list(AlertDescription)[1:]), st.integers(1, 255))
        if kind.alert == "warning":
            level, desc = AlertLevel.WARNING, draw(nonzero)
        elif kind.alert == "fatal":
            level, desc = AlertLevel.FATAL, draw(nonzero)
        else:
            level, desc = draw(st.sampled_from(list(AlertLevel))), AlertDescription.close_notify
        payload = bytes((level, desc))
        if draw(st.integers(0, 9)) == 0:
            payload = draw(st.binary(max_size=4).filter(lambda b: len(b) != 2))
        inp.body = payload
        inp.well_formed = len(payload) == 2
    elif kind.content == ContentType.RETURN_ROUTABILITY_CHECK:
        inp.body = payload = draw(st.one_of(st.sampled_from([0, 1, 2, 9]).map(lambda t: bytes((t,)) + bytes(8)),
                                            st.binary(max_size=12)))
    else:
        inp.body = payload = draw(st.binary(max_size=100))
    record_seq = 100 + draw(st.integers(0, 20))
    conn = setup.conn
    if kind.content == ContentType.TLS12_CID:
        inp.body, inp.record = _cid_input(draw, conn, kind, epoch, record_seq)
    elif epoch == "0":
        inp.record = encode_plain(kind.content, record_seq, payload)
    elif epoch == "1":
        assert conn is not None
        inp.record = seal(conn, kind.content, (1 << 48) | record_seq, payload)
    elif conn is not None and (conn._read_cipher or conn._next_read_cipher) is not None:
        inp.record = _corrupt(draw, seal(conn, kind.content, (1 << 48) | record_seq, payload), header_len(conn._cid))
    else:
        inp.record = encode_plain(kind.content, (1 << 48) | record_seq, draw(st.binary(max_size=60)))
    return inp


def _corrupt(draw: st.DrawFn, record: bytes, header: int) -> bytes:
    """One byte of the protected part changed (the header stays: the record still reaches the connection)."""
    sealed = bytearray(record)
    pos = draw(st.integers(header, len(sealed) - 1))
    sealed[pos] ^= draw(st.integers(1, 255))
    return bytes(sealed)


#: Inner content types that do not exist in DTLS 1.2 (0 is padding, never a type).
BAD_INNER_TYPES = [t for t in range(1, 256) if not 20 <= t <= 23]


def _cid_input(draw: st.DrawFn, conn: DTLSConnection | None, kind: Kind, epoch: str,
               record_seq: int) -> tuple[bytes, bytes]:
    """(body, datagram) of a tls12_cid kind: with the connection's CID (a stranger's when it has none) or
    another one; in epoch 0, or without keys, with an unprotected fragment (a ChangeCipherSpec body, often)."""
    own = conn._cid if conn is not None and conn._cid else STRANGER_CID
    cid = other_cid(own) if kind.cid == "other-cid" else own
    epoch_seq = (1 << 48) | record_seq
    if epoch == "0" or conn is None or (conn._read_cipher or conn._next_read_cipher) is None:
        body = draw(st.one_of(st.just(b"\x01"), st.binary(max_size=24)))
        return body, plain_cid_record(cid, record_seq if epoch == "0" else epoch_seq, body)
    header = header_len(cid)
    body = draw(st.binary(max_size=40))
    if kind.cid == "without-cid":
        record, header = seal(conn, ContentType.APPLICATION_DATA, epoch_seq, body, classic=True), 13
    elif kind.cid == "no-type":
        body = b""
        record = seal_without_type(conn, epoch_seq, draw(st.integers(1, 32)), cid)
    else:
        types = BAD_INNER_TYPES if kind.cid == "bad-type" else [21, 22, 23]
        record = peer_cipher(conn).protect_cid(draw(st.sampled_from(types)), epoch_seq, body, cid)
    return body, _corrupt(draw, record, header) if epoch == "1*" else record


def _hello_route(body: bytes, setup: Setup) -> str:
    try:
        hello = pull_client_hello(Buffer(body))
    except (BufferReadError, DTLSError):
        return "invalid"
    conn = setup.conn
    if conn is not None and not conn.is_closed and hello.random == conn.client_random:
        return "conn"
    return "front"


# -- injection and checks ----------------------------------------------------------------------------------


@contextlib.contextmanager
def spying() -> Iterator[list[tuple[str, object]]]:
    """Wrap every handler of HANDSHAKE_TABLE and CCS_TABLE to record which one runs."""
    calls: list[tuple[str, object]] = []
    saved_hs, saved_ccs = dict(HANDSHAKE_TABLE), dict(CCS_TABLE)

    def hs_spy(key: tuple[State, int], handler: Callable[..., None]) -> Callable[..., None]:
        def spy(layer: object, body: bytes, seq: int, now: float) -> None:
            calls.append(("handshake", key))
            handler(layer, body, seq, now)
        return spy

    def ccs_spy(state: State, handler: Callable[..., None]) -> Callable[..., None]:
        def spy(layer: object) -> None:
            calls.append(("ccs", state))
            handler(layer)
        return spy

    for key, handler in saved_hs.items():
        HANDSHAKE_TABLE[key] = hs_spy(key, handler)
    for state, ccs_handler in saved_ccs.items():
        CCS_TABLE[state] = ccs_spy(state, ccs_handler)
    try:
        yield calls
    finally:
        HANDSHAKE_TABLE.update(saved_hs)
        CCS_TABLE.update(saved_ccs)


@dataclass
class Observed:
    events: list[Event]
    out: list[bytes]
    calls: list[tuple[str, object]]
    state_before: State | None
    future_before: int
    parts_before: set[int]
    flight_before: list[tuple[int, int]]
    early_before: int
    epoch_before: tuple[int, bool]  # the read epoch and whether a ChangeCipherSpec waits (``_early_ccs``)


Snapshot = tuple[State | None, int, set[int], list[tuple[int, int]], int, tuple[int, bool]]


def _conn_snapshot(conn: DTLSConnection | None) -> Snapshot:
    if conn is None:
        return None, 0, set(), [], 0, (0, False)
    flight = [(int(ContentType.CHANGE_CIPHER_SPEC if m.msg_type < 0 else ContentType.HANDSHAKE), m.epoch)
              for m in conn._flight]
    return (conn.state, len(conn._future), set(conn._reasm._parts), flight, len(conn._early_data),
            (conn._read_epoch, conn._early_ccs))


def inject(row: Row, setup: Setup, inp: Input) -> Observed:
    pair = setup.pair
    pair.now += DELAY
    drain(pair.client)
    drain_server(pair.server)
    before = _conn_snapshot(setup.conn)
    with spying() as calls:
        if row.role == "client":
            pair.client.receive_datagram(inp.record, pair.now)
            events = drain(pair.client)
            out = pair.client.datagrams_to_send(pair.now)
        else:
            pair.server.receive_datagram(inp.record, CLIENT_ADDR, pair.now)
            events = [e for a, e in drain_server(pair.server) if a == CLIENT_ADDR]
            out = [d for d, a in pair.server.datagrams_to_send(pair.now) if a == CLIENT_ADDR]
    return Observed(events, out, list(calls), *before)


def alerts_sent(conn: DTLSConnection, out: list[bytes]) -> list[tuple[int, int]]:
    found = []
    for content_type, _, payload in records_sent(conn, out):
        if content_type != ContentType.ALERT:
            continue
        assert payload is not None and len(payload) == 2, payload
        found.append((payload[0], payload[1]))
    return found


def terminations(events: list[Event]) -> list[Exception | None]:
    return [e.error for e in events if isinstance(e, ConnectionTerminated)]


def only_termination(events: list[Event]) -> Exception | None:
    ended = terminations(events)
    assert len(ended) == 1, f"expected the connection to end once, got events {events}"
    return ended[0]


def check(row: Row, setup: Setup, inp: Input, want: Outcome, got: Observed) -> None:
    conn = setup.conn
    for err in terminations(got.events):
        assert not isinstance(err, InternalError), f"internal_error (a bug in the core): {err}"
    server = setup.pair.server
    if want in (Outcome.UNEXPECTED, Outcome.DECODE, Outcome.BAD_MAC):
        exc = {Outcome.UNEXPECTED: UnexpectedMessage, Outcome.DECODE: DecodeError,
               Outcome.BAD_MAC: BadRecordMac}[want]
        assert conn is not None
        err = only_termination(got.events)
        assert isinstance(err, exc) and not err.remote, (err, got.calls)
        assert conn.is_closed
        assert alerts_sent(conn, got.out) == [(AlertLevel.FATAL, err.description)]
        assert not any(c[0] == "handshake" for c in got.calls), got.calls
        if row.role == "server":
            assert CLIENT_ADDR not in server.connections
        return
    if want is Outcome.HANDLER:
        assert conn is not None and got.calls, "no handler ran"
        key = ("ccs", row.state) if inp.kind.content == ContentType.CHANGE_CIPHER_SPEC else \
            ("handshake", (row.state, inp.msg_type))
        assert got.calls[0] == key, got.calls
        for err in terminations(got.events):
            assert isinstance(err, AlertError) and not err.remote, err  # the handler refused the body
            assert conn.is_closed
            assert (AlertLevel.FATAL, err.description) in alerts_sent(conn, got.out)
        if inp.kind.content == ContentType.CHANGE_CIPHER_SPEC:  # rule 5: switch now, or at the key exchange or
            switch = row.keys and row.state not in TICKET_BEFORE_CCS  # the NewSessionTicket
            assert (conn._read_epoch, conn._early_ccs) == ((1, False) if switch else (0, True)), row
        return
    # Every other outcome is quiet: no handler runs (no ChangeCipherSpec handler either), the state stays.
    assert not got.calls, got.calls
    if want is Outcome.HELLO_VERIFY:
        assert got.events == []
        (reply,) = got.out
        (rec,) = list(split_records(reply))
        (frag,) = parse_fragments(rec.fragment)
        assert frag.msg_type == HandshakeType.HELLO_VERIFY_REQUEST and frag.message_seq == inp.seq
        if row.front_only:
            assert CLIENT_ADDR not in server.connections
        else:
            assert server.connections.get(CLIENT_ADDR) is conn and conn is not None and conn.state is got.state_before
        return
    if want in (Outcome.CLOSE, Outcome.FATAL):
        assert conn is not None and conn.is_closed
        err = only_termination(got.events)
        if want is Outcome.CLOSE:
            assert err is None
            answer = [(AlertLevel.WARNING, AlertDescription.close_notify)] \
                if got.state_before is State.ESTABLISHED else []
            assert alerts_sent(conn, got.out) == answer and len(got.out) == len(answer)
        else:
            assert isinstance(err, RemoteAlert) and err.remote
            assert got.out == []  # never answer an alert with an alert
        return
    if want is Outcome.WARNING:
        level, desc = inp.body
        description: AlertDescription | int = AlertDescription(desc) if desc in set(AlertDescription) else desc
        assert got.events == [AlertReceived(level, description)] and got.out == []
    elif want is Outcome.DATA:
        assert got.events == [DataReceived(inp.body)] and got.out == []
    elif want is Outcome.NO_RENEGOTIATION:
        assert conn is not None
        assert got.events == [] and alerts_sent(conn, got.out) == [(AlertLevel.WARNING,
                                                                     AlertDescription.no_renegotiation)]
    elif want is Outcome.RETRANSMIT:
        assert got.events == []
        assert bool(got.flight_before) == row.keeps_flight, got.flight_before
        sent = [(content_type, epoch) for content_type, epoch, _ in records_sent(conn, got.out)]
        assert sent == got.flight_before, "an old message_seq must be answered by our last flight, if we keep one"
    else:
        assert got.events == [] and got.out == [], (got.events, got.out)
    if row.front_only:
        assert CLIENT_ADDR not in server.connections
        return
    assert conn is not None and conn.state is got.state_before
    if row.state is not State.CLOSED:
        assert (conn._read_epoch, conn._early_ccs) == got.epoch_before
    if row.role == "server":
        assert server.connections.get(CLIENT_ADDR) is conn
    parts, future = set(conn._reasm._parts), len(conn._future)
    if want is Outcome.BUFFER_SEQ:
        assert inp.seq in parts and future == got.future_before
    elif want is Outcome.BUFFER_EPOCH:
        assert future == got.future_before + 1 and parts == got.parts_before
    elif want is Outcome.EARLY_DATA:
        assert len(conn._early_data) == got.early_before + 1
    elif row.state is not State.CLOSED:
        assert parts == got.parts_before and future == got.future_before, (parts, future)


# -- the matrix test ---------------------------------------------------------------------------------------


