"""The inputs and the oracle of the state-table tests (tests/test_state_table.py): every kind of record a state can
receive, the outcome the handshake tables (plus the documented rules in `expected_outcome`) predict for it,
hypothesis strategies for message bodies, and `inject` / `check`, which run one cell and compare."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from helpers import (
    CLIENT_ADDR,
    IDENTITY,
    drain,
    drain_server,
    p256_key,
)
from hypothesis import strategies as st
from state_rows import DELAY, RENEGOTIATION, ROWS, UNKNOWN_TYPES, Outcome, Row, Setup

from iotdtls import ConnectionTerminated, DataReceived, DTLSConnection
from iotdtls.buffer import Buffer, BufferReadError, Writer
from iotdtls.constants import (
    AlertDescription,
    AlertLevel,
    CertificateType,
    CipherSuite,
    ContentType,
    ExtensionType,
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
from iotdtls.keys import spki_der
from iotdtls.messages import (
    ClientHello,
    HelloVerifyRequest,
    ServerHello,
    pull_client_hello,
    push_client_hello,
    push_hello_verify_request,
    push_psk_identity,
    push_server_hello,
)
from iotdtls.pkmessages import (
    CertificateMessage,
    CertificateRequest,
    CertificateVerify,
    ECDHEServerKeyExchange,
    push_certificate,
    push_certificate_request,
    push_certificate_verify,
    push_ecdhe_client_key_exchange,
    push_ecdhe_server_key_exchange,
)
from iotdtls.reassembly import message_header, parse_fragments
from iotdtls.record import CipherState, encode_plain, split_records

# -- inputs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    content: ContentType
    msg_type: int | None = None  # handshake type; UNKNOWN_TYPE stands for any value not in HandshakeType
    seq: str | None = None  # handshake: "in-order", "old" or "future"
    alert: str | None = None  # "warning", "fatal" or "close_notify"

    @property
    def label(self) -> str:
        if self.content == ContentType.HANDSHAKE:
            assert self.msg_type is not None
            name = "unknown" if self.msg_type == UNKNOWN_TYPE else HandshakeType(self.msg_type).name
            return f"{name} ({self.seq})"
        if self.content == ContentType.ALERT:
            return f"Alert {self.alert}"
        return "ChangeCipherSpec" if self.content == ContentType.CHANGE_CIPHER_SPEC else "ApplicationData"


UNKNOWN_TYPE = -1
SEQ_CLASSES = ("in-order", "old", "future")
KINDS: list[Kind] = [
    *(Kind(ContentType.HANDSHAKE, int(t), s) for t in [*HandshakeType, UNKNOWN_TYPE] for s in SEQ_CLASSES),
    Kind(ContentType.CHANGE_CIPHER_SPEC),
    *(Kind(ContentType.ALERT, alert=a) for a in ("warning", "fatal", "close_notify")),
    Kind(ContentType.APPLICATION_DATA),
]
#: "0": plaintext epoch 0; "1": epoch 1 protected with the real keys; "1*": epoch 1 that fails authentication.
EPOCHS = ("0", "1", "1*")


def applicable(row: Row, kind: Kind, epoch: str) -> bool:
    if epoch == "1" and not row.keys:
        return False
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
       dropped, except a handshake record while waiting for Finished (bad_record_mac, openssl #10906); a
       malformed ChangeCipherSpec or alert is a decode_error.
    4. Handshake messages: an old message_seq is a retransmission, a future one is buffered; after the
       handshake a ClientHello or HelloRequest gets a no_renegotiation warning (in both roles) and anything
       new is unexpected. In-order messages: ``PROTECTED_MESSAGES`` must come in epoch 1 and nothing else
       may; then ``HANDSHAKE_TABLE`` decides. States outside ``HANDSHAKING`` (the client before ``connect``)
       have no table entries: any handshake message there is unexpected.
    5. ChangeCipherSpec: ``CCS_TABLE`` while the read side is in epoch 0, unexpected otherwise. Its handler
       switches the read side to epoch 1 at once where the keys exist (the server's WAIT_CERTIFICATE_VERIFY
       included, so a Finished that skips the CertificateVerify is unexpected) and defers the switch to the
       ClientKeyExchange where they do not yet (the server's WAIT_CKE, WAIT_CLIENT_CERTIFICATE, WAIT_CKE_AUTH).
    6. Application data only in epoch 1: delivered when established, held while waiting for Finished.
    """
    content = kind.content
    hello = content == ContentType.HANDSHAKE and kind.msg_type == HandshakeType.CLIENT_HELLO and epoch == "0"
    if row.role == "server" and hello and (row.front_only or hello_route != "conn"):
        ok = hello_route != "invalid"
        return Outcome.HELLO_VERIFY if ok else Outcome.DROP  # rule 2 (every message_seq used here is <= 16)
    if row.front_only or row.state is State.CLOSED:
        return Outcome.DROP  # rules 1 and 2
    assert row.state is not None
    record_epoch = 0 if epoch == "0" else 1
    if record_epoch != row.read_epoch:  # rule 3
        if record_epoch == 1:
            return Outcome.BUFFER_EPOCH if row.state in HANDSHAKING else Outcome.DROP
        if content != ContentType.HANDSHAKE:
            return Outcome.DROP
        if not (row.read_epoch == 1 and expects_unprotected(row.state)):
            return Outcome.RETRANSMIT if kind.seq == "old" else Outcome.DROP
    if epoch == "1*":
        if row.state in WAITING_FINISHED and content == ContentType.HANDSHAKE:
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


def expects_unprotected(state: State) -> bool:
    """The table still has an entry for a message that must arrive in epoch 0 (rule 3)."""
    return any(s is state and t not in PROTECTED_MESSAGES for s, t in HANDSHAKE_TABLE)


# -- known deviations of the implementation from the oracle (each one is a bug) --------------------------
# A cell listed here runs as xfail(strict=True) with the reason; the matrix marks it with ✗. Empty since
# 08c6732 fixed the only one found: the client stored handshake records received before connect() in its
# reassembler instead of refusing them (a stored message later collided with the server's message of the same
# message_seq and killed the handshake with illegal_parameter).
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


# -- concrete inputs: message bodies, valid and random ---------------------------------------------------


def _push(fn: Callable[[Writer], None]) -> bytes:
    w = Writer()
    fn(w)
    return w.data()


_EXT_TYPES = [int(e) for e in ExtensionType] + [0x3A3A, 0xFFFF]
_extensions = st.lists(st.tuples(st.sampled_from(_EXT_TYPES), st.binary(max_size=6)), max_size=4,
                       unique_by=lambda e: e[0])
_suites = st.sampled_from([int(s) for s in CipherSuite] + [0x0000, 0xC0AE, 0x1301])
_versions = st.sampled_from([0xFEFD, 0xFEFF, 0xFEFC, 0x0303])


def client_hello_bodies(own_random: bytes | None) -> st.SearchStrategy[bytes]:
    randoms = st.binary(min_size=32, max_size=32)
    if own_random is not None:
        randoms = st.one_of(st.just(own_random), randoms)
    hello = st.builds(ClientHello, random=randoms, cipher_suites=st.lists(_suites, min_size=1, max_size=4),
                      session_id=st.binary(max_size=32), cookie=st.binary(max_size=32),
                      compression_methods=st.sampled_from([b"\x00", b"\x01\x00", b"\x01"]),
                      extensions=_extensions, version=_versions)
    return hello.map(lambda m: _push(lambda w: push_client_hello(w, m)))


server_hello_bodies = st.builds(
    ServerHello, random=st.binary(min_size=32, max_size=32), cipher_suite=_suites,
    session_id=st.binary(max_size=32), compression_method=st.sampled_from([0, 0, 1]), extensions=_extensions,
    version=_versions).map(lambda m: _push(lambda w: push_server_hello(w, m)))
hello_verify_bodies = st.builds(HelloVerifyRequest, cookie=st.binary(max_size=32), version=_versions).map(
    lambda m: _push(lambda w: push_hello_verify_request(w, m)))
psk_identity_bodies = st.one_of(st.just(IDENTITY), st.binary(max_size=20)).map(
    lambda i: _push(lambda w: push_psk_identity(w, i)))




# Public-key messages: other keys (an untrusted P-256 key: bad_certificate; secp256k1 and Ed25519 keys:
# unsupported_certificate), an empty X.509 list, random chains; ECDH shares on and off the curve.
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
_OTHER_SPKIS = [spki_der(p256_key("stranger")),
                ec.derive_private_key(7, ec.SECP256K1()).public_key().public_bytes(*_SPKI),
                ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key().public_bytes(*_SPKI)]
_POINT = p256_key("stranger").public_key().public_bytes(serialization.Encoding.X962,
                                                        serialization.PublicFormat.UncompressedPoint)
_points = st.one_of(st.just(_POINT), st.binary(min_size=64, max_size=64).map(lambda b: b"\x04" + b),
                    st.binary(min_size=1, max_size=80))
_schemes = st.one_of(st.just(0x0403), st.integers(0, 0xFFFF))


def _cert_body(kind: CertificateType, spki: bytes = b"", chain: list[bytes] | None = None) -> bytes:
    return _push(lambda w: push_certificate(w, CertificateMessage(kind, spki=spki, chain=chain or [])))


certificate_bodies = st.one_of(
    st.sampled_from(_OTHER_SPKIS).map(lambda k: _cert_body(CertificateType.RAW_PUBLIC_KEY, k)),
    st.just(_cert_body(CertificateType.X509)),
    st.lists(st.binary(min_size=1, max_size=30), min_size=1, max_size=3).map(
        lambda c: _cert_body(CertificateType.X509, chain=c)))
ecdhe_ske_bodies = st.builds(ECDHEServerKeyExchange, point=_points, scheme=_schemes,
                             signature=st.binary(min_size=1, max_size=72)).map(
    lambda m: _push(lambda w: push_ecdhe_server_key_exchange(w, m)))
ecdhe_cke_bodies = _points.map(lambda p: _push(lambda w: push_ecdhe_client_key_exchange(w, p)))
certificate_request_bodies = st.builds(
    CertificateRequest, certificate_types=st.lists(st.integers(0, 255), max_size=3),
    schemes=st.lists(_schemes, max_size=3), authorities=st.lists(st.binary(min_size=1, max_size=8), max_size=2),
).map(lambda m: _push(lambda w: push_certificate_request(w, m)))
certificate_verify_bodies = st.builds(CertificateVerify, scheme=_schemes,
                                      signature=st.binary(min_size=1, max_size=72)).map(
    lambda m: _push(lambda w: push_certificate_verify(w, m)))


def body_strategy(msg_type: int, setup: Setup) -> st.SearchStrategy[bytes]:
    """Well-formed bodies of the type (the genuine one where it matters) or random bytes."""
    conn = setup.conn
    valid: st.SearchStrategy[bytes]
    if msg_type == HandshakeType.CLIENT_HELLO:
        valid = client_hello_bodies(conn.client_random if conn is not None and not conn._config.is_client else None)
    elif msg_type == HandshakeType.SERVER_HELLO:
        valid = server_hello_bodies
    elif msg_type == HandshakeType.HELLO_VERIFY_REQUEST:
        valid = hello_verify_bodies
    elif msg_type == HandshakeType.SERVER_KEY_EXCHANGE:
        valid = st.one_of(psk_identity_bodies, ecdhe_ske_bodies)
    elif msg_type == HandshakeType.CLIENT_KEY_EXCHANGE:
        valid = st.one_of(psk_identity_bodies, ecdhe_cke_bodies)
    elif msg_type == HandshakeType.CERTIFICATE:
        valid = certificate_bodies
    elif msg_type == HandshakeType.CERTIFICATE_REQUEST:
        valid = certificate_request_bodies
    elif msg_type == HandshakeType.CERTIFICATE_VERIFY:
        valid = certificate_verify_bodies
    elif msg_type in (HandshakeType.HELLO_REQUEST, HandshakeType.SERVER_HELLO_DONE):
        valid = st.just(b"")
    elif msg_type == HandshakeType.FINISHED:
        valid = st.binary(min_size=12, max_size=12)
        if conn is not None and conn._master_mac is not None:
            genuine = conn._finished_data(not conn._config.is_client)  # what the peer's Finished must say
            valid = st.one_of(st.just(genuine), valid)
    else:
        valid = st.binary(max_size=40)
    if msg_type in setup.genuine:  # the peer's real message of this handshake
        valid = st.one_of(st.just(setup.genuine[msg_type]), valid)
    return st.one_of(valid, st.binary(max_size=80))


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


def read_cipher(conn: DTLSConnection) -> CipherState:
    """The cipher state of the records ``conn`` reads in epoch 1, i.e. its peer's write keys."""
    cipher = conn._read_cipher or conn._next_read_cipher
    assert cipher is not None
    return cipher


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
    else:
        inp.body = payload = draw(st.binary(max_size=100))
    record_seq = 100 + draw(st.integers(0, 20))
    if epoch == "0":
        inp.record = encode_plain(kind.content, record_seq, payload)
    elif epoch == "1":
        assert setup.conn is not None
        inp.record = read_cipher(setup.conn).protect(kind.content, (1 << 48) | record_seq, payload)
    elif setup.conn is not None and (setup.conn._read_cipher or setup.conn._next_read_cipher) is not None:
        sealed = bytearray(read_cipher(setup.conn).protect(kind.content, (1 << 48) | record_seq, payload))
        pos = draw(st.integers(13, len(sealed) - 1))
        sealed[pos] ^= draw(st.integers(1, 255))
        inp.record = bytes(sealed)
    else:
        inp.record = encode_plain(kind.content, (1 << 48) | record_seq, draw(st.binary(max_size=60)))
    return inp


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


def _conn_snapshot(conn: DTLSConnection | None) -> tuple[State | None, int, set[int], list[tuple[int, int]], int]:
    if conn is None:
        return None, 0, set(), [], 0
    flight = [(int(ContentType.CHANGE_CIPHER_SPEC if m.msg_type < 0 else ContentType.HANDSHAKE), m.epoch)
              for m in conn._flight]
    return conn.state, len(conn._future), set(conn._reasm._parts), flight, len(conn._early_data)


def inject(row: Row, setup: Setup, inp: Input) -> Observed:
    pair = setup.pair
    pair.now += DELAY
    drain(pair.client)
    drain_server(pair.server)
    state, future, parts, flight, early = _conn_snapshot(setup.conn)
    with spying() as calls:
        if row.role == "client":
            pair.client.receive_datagram(inp.record, pair.now)
            events = drain(pair.client)
            out = pair.client.datagrams_to_send(pair.now)
        else:
            pair.server.receive_datagram(inp.record, CLIENT_ADDR, pair.now)
            events = [e for a, e in drain_server(pair.server) if a == CLIENT_ADDR]
            out = [d for d, a in pair.server.datagrams_to_send(pair.now) if a == CLIENT_ADDR]
    return Observed(events, out, list(calls), state, future, parts, flight, early)


def alerts_sent(conn: DTLSConnection, out: list[bytes]) -> list[tuple[int, int]]:
    found = []
    for d in out:
        for rec in split_records(d):
            if rec.content_type != ContentType.ALERT:
                continue
            payload = rec.fragment if rec.epoch == 0 else conn._write_cipher.unprotect(rec) \
                if conn._write_cipher is not None else None
            assert payload is not None and len(payload) == 2, rec.fragment
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
        if inp.kind.content == ContentType.CHANGE_CIPHER_SPEC:  # rule 5: switch now or at the key exchange
            assert (conn._read_epoch, conn._early_ccs) == ((1, False) if row.keys else (0, True)), row
        return
    # Every other outcome is quiet: no handler runs, the state stays.
    assert not any(c[0] == "handshake" for c in got.calls), got.calls
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
        sent = [(r.content_type, r.epoch) for d in got.out for r in split_records(d)]
        assert sent == got.flight_before, "an old message_seq must be answered by our last flight, if we keep one"
    else:
        assert got.events == [] and got.out == [], (got.events, got.out)
    if row.front_only:
        assert CLIENT_ADDR not in server.connections
        return
    assert conn is not None and conn.state is got.state_before
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


