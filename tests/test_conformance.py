"""State-machine conformance: the bug patterns protocol state fuzzers found in other DTLS stacks
(DTLS-Fuzzer, USENIX Security 2020, and its follow-ups), each checked in both roles where it applies."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers import (
    CLIENT_ADDR,
    Pair,
    drain,
    drain_server,
    established_pair,
    half_steps,
    handshake_record,
    raw_records,
    record_types,
    split_messages,
    to_client,
    to_server,
)

from iotdtls import AlertDescription, ConnectionTerminated, DataReceived, DTLSConnection, RemoteAlert
from iotdtls.buffer import Buffer, Writer
from iotdtls.constants import AlertLevel, CipherSuite, ContentType, ExtensionType, HandshakeType
from iotdtls.errors import AlertError, DecodeError, InternalError, UnexpectedMessage
from iotdtls.events import AlertReceived, Event
from iotdtls.handshake import State
from iotdtls.messages import pull_client_hello, push_client_hello
from iotdtls.reassembly import message_header, parse_fragments
from iotdtls.record import encode_plain, split_records

CCS_RECORD = encode_plain(ContentType.CHANGE_CIPHER_SPEC, 40, b"\x01")


def errors_of(events: list[Event]) -> list[Exception | None]:
    return [e.error for e in events if isinstance(e, ConnectionTerminated)]


def server_events(pair: Pair) -> list[Event]:
    return [e for _, e in drain_server(pair.server)]


def sent_alerts(conn: DTLSConnection, datagrams: list[bytes]) -> list[tuple[int, int]]:
    """Alerts ``conn`` sent, decrypting epoch-1 alerts with its own write keys."""
    out = []
    for d in datagrams:
        for rec in split_records(d):
            if rec.content_type != ContentType.ALERT:
                continue
            if rec.epoch == 0:
                payload: bytes | None = rec.fragment
            else:
                assert conn._write_cipher is not None
                payload = conn._write_cipher.unprotect(rec)
            assert payload is not None and len(payload) == 2
            out.append((payload[0], payload[1]))
    return out


def assert_client_failed(pair: Pair, exc_type: type[AlertError], desc: AlertDescription) -> None:
    (err,) = errors_of(drain(pair.client))
    assert isinstance(err, exc_type) and not err.remote and err.description == desc
    assert not isinstance(err, InternalError)
    assert pair.client.is_closed
    assert sent_alerts(pair.client, pair.c2s()) == [(AlertLevel.FATAL, desc)]


def assert_server_failed(pair: Pair, conn: DTLSConnection, exc_type: type[AlertError],
                         desc: AlertDescription) -> None:
    (err,) = errors_of(server_events(pair))
    assert isinstance(err, exc_type) and not err.remote and err.description == desc
    assert not isinstance(err, InternalError)
    assert conn.is_closed and CLIENT_ADDR not in pair.server.connections
    assert sent_alerts(conn, pair.s2c()) == [(AlertLevel.FATAL, desc)]


# -- driving a pair into a given handshake state -----------------------------------------------------------


def client_wait_hello() -> Pair:
    pair = Pair()
    pair.client.connect(pair.now)
    pair.c2s()
    return pair


def client_wait_ske_or_done(hint: bytes | None = None) -> Pair:
    pair = Pair(server_kw={"psk_identity_hint": hint})
    pair.client.connect(pair.now)
    half_steps(pair, 3)
    pieces = [p for d in pair.s2c() for p in split_messages(d, 10)]
    to_client(pair, pieces[:1])  # the ServerHello alone
    assert pair.client.state is State.CLIENT_WAIT_SKE_OR_DONE
    return pair


def client_wait_done() -> Pair:
    pair = Pair(server_kw={"psk_identity_hint": b"hint"})
    pair.client.connect(pair.now)
    half_steps(pair, 3)
    pieces = [p for d in pair.s2c() for p in split_messages(d, 10)]
    to_client(pair, pieces[:2])  # ServerHello and ServerKeyExchange, no ServerHelloDone
    assert pair.client.state is State.CLIENT_WAIT_DONE
    return pair


def client_wait_finished() -> Pair:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    pair.c2s()
    assert pair.client.state is State.CLIENT_WAIT_FINISHED
    return pair


def server_wait_cke() -> Pair:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 3)
    pair.s2c()
    assert pair.server_conn.state is State.SERVER_WAIT_CKE
    return pair


def server_wait_finished() -> Pair:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    (final,) = pair.c2s()
    to_server(pair, raw_records(final)[:1])  # the ClientKeyExchange alone
    assert pair.server_conn.state is State.SERVER_WAIT_FINISHED
    return pair


# ---------------------------------------------------------------------------------------------------------
# Finished accepted in epoch 0 / without ChangeCipherSpec


def test_finished_in_epoch_0_rejected_by_server() -> None:
    pair = server_wait_finished()
    conn = pair.server_conn
    fin_body = pair.client._flight[-1].body  # the genuine verify_data, sent unprotected
    to_server(pair, [handshake_record(HandshakeType.FINISHED, fin_body, 3, record_seq=30)])
    assert_server_failed(pair, conn, UnexpectedMessage, AlertDescription.unexpected_message)
    assert not any(e for e in server_events(pair))


def test_finished_in_epoch_0_rejected_by_client() -> None:
    pair = client_wait_finished()
    server_fin = pair.client._finished_data(False)  # the genuine server verify_data, sent unprotected
    to_client(pair, [handshake_record(HandshakeType.FINISHED, server_fin, 3, record_seq=30)])
    assert_client_failed(pair, UnexpectedMessage, AlertDescription.unexpected_message)


@pytest.mark.parametrize("driver", [client_wait_hello, client_wait_ske_or_done])
def test_finished_in_epoch_0_before_key_exchange_rejected_by_client(driver: Callable[[], Pair]) -> None:
    pair = driver()
    seq = pair.client._reasm.next_seq
    to_client(pair, [handshake_record(HandshakeType.FINISHED, bytes(12), seq, record_seq=30)])
    assert_client_failed(pair, UnexpectedMessage, AlertDescription.unexpected_message)


def test_finished_without_change_cipher_spec_not_accepted_by_server() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    (final,) = pair.c2s()
    cke, ccs, fin = raw_records(final)
    to_server(pair, [cke, fin])
    assert pair.server_conn.state is State.SERVER_WAIT_FINISHED
    assert server_events(pair) == [] and pair.s2c() == []
    to_server(pair, [ccs])  # only the ChangeCipherSpec releases the held-back Finished
    assert pair.server_conn.is_established


def test_finished_without_change_cipher_spec_not_accepted_by_client() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 5)
    (final,) = pair.s2c()
    ccs, fin = raw_records(final)
    to_client(pair, [fin, fin])
    assert pair.client.state is State.CLIENT_WAIT_FINISHED and drain(pair.client) == []
    to_client(pair, [ccs])
    assert pair.client.is_established


# ---------------------------------------------------------------------------------------------------------
# ChangeCipherSpec before any hello (tinydtls CVE-2017-7243)


def test_change_cipher_spec_before_client_hello_server_keeps_no_state() -> None:
    pair = Pair()
    for rec in (CCS_RECORD, CCS_RECORD + CCS_RECORD, encode_plain(ContentType.CHANGE_CIPHER_SPEC, 0, b"")):
        to_server(pair, [rec])
    assert pair.server.connections == {} and pair.s2c() == [] and drain_server(pair.server) == []
    assert pair.server.get_timer() is None
    pair.handshake()  # and the server still works
    assert pair.client.is_established


@pytest.mark.parametrize("driver", [client_wait_hello, client_wait_ske_or_done, client_wait_done])
def test_change_cipher_spec_before_server_hello_done_rejected_by_client(driver: Callable[[], Pair]) -> None:
    pair = driver()
    to_client(pair, [CCS_RECORD])
    assert_client_failed(pair, UnexpectedMessage, AlertDescription.unexpected_message)


def test_second_change_cipher_spec_ignored_by_client() -> None:
    pair = client_wait_finished()
    to_client(pair, [CCS_RECORD])
    assert pair.client.state is State.CLIENT_WAIT_FINISHED
    to_client(pair, [encode_plain(ContentType.CHANGE_CIPHER_SPEC, 41, b"\x01")])
    # A second CCS arrives in epoch 0 after the switch: ignored as an old-epoch record, never a second switch.
    assert pair.client.state is State.CLIENT_WAIT_FINISHED and drain(pair.client) == []


def test_malformed_change_cipher_spec_is_decode_error() -> None:
    pair = client_wait_finished()
    to_client(pair, [encode_plain(ContentType.CHANGE_CIPHER_SPEC, 41, b"\x02")])
    assert_client_failed(pair, DecodeError, AlertDescription.decode_error)


# ---------------------------------------------------------------------------------------------------------
# ClientKeyExchange before ServerHelloDone


def _cke(seq: int, record_seq: int = 30) -> bytes:
    return handshake_record(HandshakeType.CLIENT_KEY_EXCHANGE, b"\x00\x04dev1", seq, record_seq)


@pytest.mark.parametrize("driver", [client_wait_hello, client_wait_ske_or_done, client_wait_done])
def test_client_key_exchange_rejected_by_client(driver: Callable[[], Pair]) -> None:
    pair = driver()
    to_client(pair, [_cke(pair.client._reasm.next_seq)])
    assert_client_failed(pair, UnexpectedMessage, AlertDescription.unexpected_message)


def test_client_key_exchange_without_state_ignored_by_server() -> None:
    pair = Pair()
    to_server(pair, [_cke(2), _cke(0)])
    assert pair.server.connections == {} and pair.s2c() == []


@pytest.mark.parametrize("same_record", [False, True])
def test_client_key_exchange_with_the_client_hello_not_processed(same_record: bool) -> None:
    # Sent before the server could have sent its ServerHelloDone: in the ClientHello's datagram.
    pair, hello, body = _cookie_hello()
    if same_record:
        cke = message_header(HandshakeType.CLIENT_KEY_EXCHANGE, 6, 2) + b"\x00\x04dev1"
        datagram = encode_plain(ContentType.HANDSHAKE, 1,
                                message_header(HandshakeType.CLIENT_HELLO, len(body), 1) + body + cke)
    else:
        datagram = hello + _cke(2, 7)
    to_server(pair, [datagram])
    conn = pair.server_conn
    assert conn.state is State.SERVER_WAIT_CKE and conn._master == b""
    pair.pump()  # the genuine handshake still completes
    assert pair.client.is_established and conn.is_established


# ---------------------------------------------------------------------------------------------------------
# HelloVerifyRequest after ServerHello


def _hvr(seq: int, cookie: bytes = b"\x55" * 16, record_seq: int = 30) -> bytes:
    return handshake_record(HandshakeType.HELLO_VERIFY_REQUEST, b"\xfe\xff" + bytes([len(cookie)]) + cookie,
                            seq, record_seq)


@pytest.mark.parametrize("driver", [client_wait_ske_or_done, client_wait_done, client_wait_finished])
def test_hello_verify_request_after_server_hello_rejected_by_client(driver: Callable[[], Pair]) -> None:
    pair = driver()
    suite = pair.client._suite
    to_client(pair, [_hvr(pair.client._reasm.next_seq)])
    assert pair.client._suite == suite
    assert_client_failed(pair, UnexpectedMessage, AlertDescription.unexpected_message)  # no new ClientHello


def test_hello_verify_request_with_old_message_seq_after_server_hello_ignored() -> None:
    pair = client_wait_ske_or_done()
    to_client(pair, [_hvr(0, record_seq=30), _hvr(1, record_seq=31)])
    assert pair.client.state is State.CLIENT_WAIT_SKE_OR_DONE and drain(pair.client) == []
    assert all(ContentType.HANDSHAKE not in [t for t, _ in record_types(d)] or
               HandshakeType.CLIENT_HELLO not in [f.msg_type for r in split_records(d)
                                                  for f in parse_fragments(r.fragment)]
               for d in pair.c2s())


def test_hello_verify_request_rejected_by_server() -> None:
    pair = server_wait_cke()
    conn = pair.server_conn
    to_server(pair, [_hvr(2)])
    assert_server_failed(pair, conn, UnexpectedMessage, AlertDescription.unexpected_message)


def test_too_many_hello_verify_requests_rejected_by_client() -> None:
    pair = client_wait_hello()
    for seq in range(4):
        to_client(pair, [_hvr(seq, record_seq=30 + seq)])
        assert len(pair.c2s()) == 1  # a new ClientHello each time
        assert pair.client.state is State.CLIENT_WAIT_HELLO and drain(pair.client) == []
    to_client(pair, [_hvr(4, record_seq=40)])
    (err,) = errors_of(drain(pair.client))
    assert isinstance(err, AlertError) and err.description == AlertDescription.illegal_parameter


# ---------------------------------------------------------------------------------------------------------
# Cookies bind the offered parameters


def _cookie_hello() -> tuple[Pair, bytes, bytes]:
    """A pair whose client holds a valid cookie; returns the ClientHello2 datagram and its body."""
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 2)
    (dgram,) = pair.c2s()
    (rec,) = list(split_records(dgram))
    (frag,) = parse_fragments(rec.fragment)
    return pair, dgram, frag.body


def _rewrite(body: bytes, **changes: object) -> bytes:
    hello = pull_client_hello(Buffer(body))
    for k, v in changes.items():
        setattr(hello, k, v)
    w = Writer()
    push_client_hello(w, hello)
    return w.data()


@pytest.mark.parametrize("changes", [
    {"cipher_suites": [CipherSuite.TLS_PSK_WITH_AES_128_CCM]},
    {"cipher_suites": [CipherSuite.TLS_PSK_WITH_AES_128_CCM, CipherSuite.TLS_PSK_WITH_AES_128_CCM_8]},
    {"random": bytes(32)},
    {"extensions": [(ExtensionType.RENEGOTIATION_INFO, b"\x00")]},  # extended_master_secret dropped
    {"session_id": b"\x01" * 32},
    {"version": 0xFEFF},
])
def test_changed_client_hello_with_old_cookie_gets_new_hello_verify(changes: dict[str, object]) -> None:
    pair, _, body = _cookie_hello()
    changed = _rewrite(body, **changes)
    assert changed != body
    old_cookie = pull_client_hello(Buffer(body)).cookie
    to_server(pair, [handshake_record(HandshakeType.CLIENT_HELLO, changed, 1, record_seq=1)])
    assert pair.server.connections == {}
    (reply,) = pair.s2c()
    (rec,) = list(split_records(reply))
    (frag,) = parse_fragments(rec.fragment)
    assert frag.msg_type == HandshakeType.HELLO_VERIFY_REQUEST
    assert frag.body[3:] != old_cookie


def test_old_cookie_from_another_address_gets_new_hello_verify() -> None:
    pair, dgram, _ = _cookie_hello()
    to_server(pair, [dgram], addr=("192.0.2.99", 5000))
    assert pair.server.connections == {}
    assert len(pair.s2c()) == 1
    to_server(pair, [dgram])  # the address it was made for: accepted
    assert list(pair.server.connections) == [CLIENT_ADDR]


def test_expired_cookie_gets_new_hello_verify() -> None:
    pair, dgram, _ = _cookie_hello()
    pair.now = 2 * 120.0 + 1  # cookie_lifetime 120 s: the current and the previous period verify
    to_server(pair, [dgram])
    assert pair.server.connections == {}
    assert len(pair.s2c()) == 1


# ---------------------------------------------------------------------------------------------------------
# Duplicate Finished after the handshake


def test_duplicate_client_finished_answered_only_by_retransmission() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    (final,) = pair.c2s()
    to_server(pair, [final])
    original = pair.s2c()
    to_client(pair, original)
    assert pair.client.is_established and len(server_events(pair)) == 1
    drain(pair.client)
    pair.now = 5.0
    to_server(pair, [final])  # the same flight again (replayed or retransmitted)
    assert server_events(pair) == []  # not accepted as new
    replies = pair.s2c()
    # Answered by at most a retransmission of the server's own final flight: same messages, new records.
    for reply in replies:
        assert record_types(reply) == [(ContentType.CHANGE_CIPHER_SPEC, 0), (ContentType.HANDSHAKE, 1)]
        fin = list(split_records(reply))[1]
        assert pair.client._read_cipher is not None
        plain = pair.client._read_cipher.unprotect(fin)
        orig = pair.client._read_cipher.unprotect(list(split_records(original[0]))[1])
        assert plain == orig
    to_client(pair, replies)
    assert drain(pair.client) == [] and pair.c2s() == []
    assert pair.server_conn.is_established and pair.client.is_established


def test_duplicate_finished_record_alone_is_dropped() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    (final,) = pair.c2s()
    to_server(pair, [final])
    to_client(pair, pair.s2c())
    drain_server(pair.server)
    pair.now = 5.0
    to_server(pair, raw_records(final)[2:])  # the protected Finished record, replayed byte for byte
    assert server_events(pair) == [] and pair.s2c() == []


def test_duplicate_finished_after_application_data_not_answered() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    (final,) = pair.c2s()
    to_server(pair, [final])
    to_client(pair, pair.s2c())
    pair.client.send(b"data")
    pair.pump()  # the server now knows its Finished arrived
    drain_server(pair.server)
    pair.now = 5.0
    to_server(pair, [final])
    assert server_events(pair) == [] and pair.s2c() == []


def test_duplicate_server_finished_ignored_by_client() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 5)
    final = pair.s2c()
    to_client(pair, final)
    assert len(drain(pair.client)) == 1
    pair.now = 5.0
    to_client(pair, final + final)
    pair.server_conn._retransmit(pair.now, backoff=False)  # a genuine retransmission with new records
    to_client(pair, pair.s2c())
    assert drain(pair.client) == [] and pair.c2s() == []
    assert pair.client.is_established


@pytest.mark.parametrize("role", ["server", "client"])
def test_new_finished_after_handshake_is_unexpected(role: str) -> None:
    pair = established_pair()
    sender = pair.client if role == "server" else pair.server_conn
    payload = message_header(HandshakeType.FINISHED, 12, 4) + bytes(12)
    rec = sender._write_record(1, ContentType.HANDSHAKE, payload)
    if role == "server":
        conn = pair.server_conn
        to_server(pair, [rec])
        (err,) = errors_of(server_events(pair))
        out = pair.s2c()
    else:
        conn = pair.client
        to_client(pair, [rec])
        (err,) = errors_of(drain(pair.client))
        out = pair.c2s()
    assert isinstance(err, UnexpectedMessage)
    assert sent_alerts(conn, out) == [(AlertLevel.FATAL, AlertDescription.unexpected_message)]


# ---------------------------------------------------------------------------------------------------------
# Processing stops after close_notify or a fatal alert


def test_server_ignores_records_after_close_notify_in_same_datagram() -> None:
    pair = established_pair()
    pair.client.send(b"before")
    pair.client.close()
    pair.client._state = State.ESTABLISHED  # keep writing after the close_notify (a misbehaving peer)
    pair.client.send(b"after")
    before, alert, after = pair.c2s()
    to_server(pair, [before + alert + after])
    assert server_events(pair) == [DataReceived(b"before"), ConnectionTerminated(None)]
    to_server(pair, [after])
    assert server_events(pair) == [] and pair.server.connections == {}


def test_client_ignores_records_after_close_notify() -> None:
    pair = established_pair()
    pair.server.send(CLIENT_ADDR, b"late-1")
    late = pair.s2c()
    conn = pair.server_conn
    pair.server.close(CLIENT_ADDR)
    close = pair.s2c()
    conn._state = State.ESTABLISHED  # a misbehaving server keeps writing
    conn.send(b"late-2")
    later = conn.datagrams_to_send(pair.now)
    to_client(pair, close + late + later)
    assert drain(pair.client) == [ConnectionTerminated(None)]
    assert len(pair.c2s()) == 1  # only the close_notify reply
    to_client(pair, late + later)
    assert drain(pair.client) == [] and pair.c2s() == []


def test_client_ignores_records_after_fatal_alert() -> None:
    pair = established_pair()
    conn = pair.server_conn
    conn.send(b"late")
    late = conn.datagrams_to_send(pair.now)
    conn._send_alert(AlertLevel.FATAL, AlertDescription.internal_error)
    fatal = conn.datagrams_to_send(pair.now)
    to_client(pair, fatal + late)
    (err,) = errors_of(drain(pair.client))
    assert isinstance(err, RemoteAlert) and err.description == AlertDescription.internal_error
    assert drain(pair.client) == [] and pair.c2s() == []
    pair.client.handle_timer(1000.0)
    assert drain(pair.client) == [] and pair.c2s() == []


def test_server_ignores_records_after_fatal_alert() -> None:
    pair = established_pair()
    pair.client.send(b"late")
    (late,) = pair.c2s()
    pair.client._send_alert(AlertLevel.FATAL, AlertDescription.decrypt_error)
    (fatal,) = pair.c2s()
    to_server(pair, [fatal + late])
    (err,) = errors_of(server_events(pair))
    assert isinstance(err, RemoteAlert) and err.description == AlertDescription.decrypt_error
    to_server(pair, [late])
    assert server_events(pair) == [] and pair.s2c() == [] and pair.server.connections == {}


def test_server_ignores_records_after_its_own_fatal_alert() -> None:
    pair = server_wait_cke()
    to_server(pair, [handshake_record(HandshakeType.SERVER_HELLO_DONE, b"", 2, 30)])
    assert isinstance(errors_of(server_events(pair))[0], UnexpectedMessage)
    pair.s2c()
    to_server(pair, [_cke(2, 31)])  # the client's (stale) traffic: no state is re-created, no answer
    assert pair.server.connections == {} and pair.s2c() == [] and server_events(pair) == []


# ---------------------------------------------------------------------------------------------------------
# Unexpected messages get unexpected_message, never internal_error

ALL_TYPES = [*HandshakeType, 99]

CLIENT_STATES: dict[str, tuple[Callable[[], Pair], set[int]]] = {
    "WAIT_HELLO": (client_wait_hello, {HandshakeType.HELLO_VERIFY_REQUEST, HandshakeType.SERVER_HELLO}),
    "WAIT_SKE_OR_DONE": (client_wait_ske_or_done, {HandshakeType.SERVER_KEY_EXCHANGE,
                                                   HandshakeType.SERVER_HELLO_DONE}),
    "WAIT_DONE": (client_wait_done, {HandshakeType.SERVER_HELLO_DONE}),
    "WAIT_FINISHED": (client_wait_finished, set()),  # Finished is legal only in epoch 1
}
SERVER_STATES: dict[str, tuple[Callable[[], Pair], set[int]]] = {
    "WAIT_CKE": (server_wait_cke, {HandshakeType.CLIENT_KEY_EXCHANGE}),
    "WAIT_FINISHED": (server_wait_finished, set()),
}


def _illegal(states: dict[str, tuple[Callable[[], Pair], set[int]]]) -> list[object]:
    return [pytest.param(state, t, id=f"{state}-{getattr(t, 'name', t)}")
            for state, (_, legal) in states.items() for t in ALL_TYPES if t not in legal]


@pytest.mark.parametrize(("state", "msg_type"), _illegal(CLIENT_STATES))
def test_unexpected_handshake_message_to_client(state: str, msg_type: int) -> None:
    driver, _ = CLIENT_STATES[state]
    pair = driver()
    to_client(pair, [handshake_record(msg_type, b"", pair.client._reasm.next_seq, record_seq=30)])
    assert_client_failed(pair, UnexpectedMessage, AlertDescription.unexpected_message)


@pytest.mark.parametrize(("state", "msg_type"), _illegal(SERVER_STATES))
def test_unexpected_handshake_message_to_server(state: str, msg_type: int) -> None:
    driver, _ = SERVER_STATES[state]
    pair = driver()
    conn = pair.server_conn
    body = b""
    if msg_type == HandshakeType.CLIENT_HELLO:
        # The front routes a ClientHello with the connection's own random to the connection.
        body = b"\xfe\xfd" + conn.client_random + b"\x00\x00\x00\x02\xc0\xa8\x01\x00"
    to_server(pair, [handshake_record(msg_type, body, conn._reasm.next_seq, record_seq=30)])
    assert_server_failed(pair, conn, UnexpectedMessage, AlertDescription.unexpected_message)


@pytest.mark.parametrize("msg_type", [t for t in ALL_TYPES if t not in (HandshakeType.CLIENT_HELLO,
                                                                          HandshakeType.HELLO_REQUEST)],
                         ids=lambda t: getattr(t, "name", str(t)))
@pytest.mark.parametrize("role", ["server", "client"])
def test_handshake_message_after_handshake_is_unexpected(role: str, msg_type: int) -> None:
    pair = established_pair()
    sender = pair.client if role == "server" else pair.server_conn
    rec = sender._write_record(1, ContentType.HANDSHAKE, message_header(msg_type, 0, 4))
    if role == "server":
        conn = pair.server_conn
        to_server(pair, [rec])
        (err,) = errors_of(server_events(pair))
        out = pair.s2c()
    else:
        conn = pair.client
        to_client(pair, [rec])
        (err,) = errors_of(drain(pair.client))
        out = pair.c2s()
    assert isinstance(err, UnexpectedMessage)
    assert sent_alerts(conn, out) == [(AlertLevel.FATAL, AlertDescription.unexpected_message)]


@pytest.mark.parametrize("driver", [client_wait_hello, client_wait_ske_or_done, client_wait_finished])
def test_application_data_in_epoch_0_rejected_by_client(driver: Callable[[], Pair]) -> None:
    pair = driver()
    to_client(pair, [encode_plain(ContentType.APPLICATION_DATA, 30, b"GET /")])
    assert_client_failed(pair, UnexpectedMessage, AlertDescription.unexpected_message)


@pytest.mark.parametrize("driver", [server_wait_cke, server_wait_finished])
def test_application_data_in_epoch_0_rejected_by_server(driver: Callable[[], Pair]) -> None:
    pair = driver()
    conn = pair.server_conn
    to_server(pair, [encode_plain(ContentType.APPLICATION_DATA, 30, b"GET /")])
    assert_server_failed(pair, conn, UnexpectedMessage, AlertDescription.unexpected_message)


def test_application_data_without_state_ignored_by_server() -> None:
    pair = Pair()
    to_server(pair, [encode_plain(ContentType.APPLICATION_DATA, 0, b"GET /")])
    assert pair.server.connections == {} and pair.s2c() == []


@pytest.mark.parametrize("driver", [client_wait_hello, client_wait_ske_or_done])
@pytest.mark.parametrize(("msg_type", "body"), [
    (HandshakeType.SERVER_HELLO, b"\xfe\xfd" + bytes(10)),
    (HandshakeType.SERVER_HELLO_DONE, b"\x00"),
    (HandshakeType.SERVER_KEY_EXCHANGE, b"\x00\x09ab"),
    (HandshakeType.HELLO_VERIFY_REQUEST, b"\xfe\xff\x20" + bytes(5)),
])
def test_malformed_expected_message_is_decode_error(driver: Callable[[], Pair], msg_type: int,
                                                    body: bytes) -> None:
    pair = driver()
    to_client(pair, [handshake_record(msg_type, body, pair.client._reasm.next_seq, record_seq=30)])
    (err,) = errors_of(drain(pair.client))
    assert isinstance(err, AlertError) and not isinstance(err, InternalError)
    assert err.description in (AlertDescription.decode_error, AlertDescription.unexpected_message)


def test_malformed_client_key_exchange_is_decode_error() -> None:
    pair = server_wait_cke()
    conn = pair.server_conn
    to_server(pair, [handshake_record(HandshakeType.CLIENT_KEY_EXCHANGE, b"\x00\x05dev1", 2, 30)])
    assert_server_failed(pair, conn, DecodeError, AlertDescription.decode_error)


@pytest.mark.parametrize("payload", [b"", b"\x02", b"\x02\x0a\x00"])
def test_malformed_alert_is_decode_error(payload: bytes) -> None:
    pair = client_wait_hello()
    to_client(pair, [encode_plain(ContentType.ALERT, 30, payload)])
    assert_client_failed(pair, DecodeError, AlertDescription.decode_error)


def test_fatal_alert_with_unknown_description_terminates() -> None:
    pair = client_wait_hello()
    to_client(pair, [encode_plain(ContentType.ALERT, 30, b"\x02\xee")])
    (err,) = errors_of(drain(pair.client))
    assert isinstance(err, RemoteAlert) and pair.client.is_closed
    assert pair.c2s() == []  # never answer an alert with an alert


def test_warning_alert_reported_and_handshake_continues() -> None:
    pair = client_wait_hello()
    to_client(pair, [encode_plain(ContentType.ALERT, 30, b"\x01\x5a")])  # user_canceled, warning
    assert drain(pair.client) == [AlertReceived(AlertLevel.WARNING, AlertDescription.user_canceled)]
    assert not pair.client.is_closed and pair.c2s() == []


# ---------------------------------------------------------------------------------------------------------
# Attacker-chosen counters in the ClientHello must not reach internal_error


def _accepted_hello_with(message_seq: int, record_seq: int) -> tuple[Pair, bytes]:
    pair, _, body = _cookie_hello()
    return pair, handshake_record(HandshakeType.CLIENT_HELLO, body, message_seq, record_seq)


def _no_internal_error(pair: Pair) -> None:
    pair.pump()
    for _, e in drain_server(pair.server):
        if isinstance(e, ConnectionTerminated):
            assert not isinstance(e.error, InternalError), e.error
    for e in drain(pair.client):
        if isinstance(e, ConnectionTerminated):
            assert not isinstance(e.error, InternalError), e.error


def test_client_hello_message_seq_at_limit_is_not_internal_error() -> None:
    pair, hello = _accepted_hello_with(0xFFFF, 1)
    to_server(pair, [hello])
    _no_internal_error(pair)


def test_client_hello_large_message_seq_without_overflow() -> None:
    pair, hello = _accepted_hello_with(0x8000, 1)
    to_server(pair, [hello])
    _no_internal_error(pair)


def test_client_hello_record_seq_at_limit_is_not_internal_error() -> None:
    pair, hello = _accepted_hello_with(1, (1 << 48) - 1)
    to_server(pair, [hello])
    for d in pair.s2c():
        pair.client.receive_datagram(d, pair.now)
    _no_internal_error(pair)


# ---------------------------------------------------------------------------------------------------------
# A replayed ClientHello must not tear down the session it created


def _fragmented_hello(body: bytes, size: int, first_seq: int, per_datagram: int) -> list[bytes]:
    records = [encode_plain(ContentType.HANDSHAKE, first_seq + i,
                            message_header(HandshakeType.CLIENT_HELLO, len(body), 1, off, len(body[off:off + size]))
                            + body[off:off + size])
               for i, off in enumerate(range(0, len(body), size))]
    return [b"".join(records[i:i + per_datagram]) for i in range(0, len(records), per_datagram)]


@pytest.mark.parametrize(("size", "per_datagram"), [(20, 1), (40, 1), (40, 2), (96, 1)])
def test_client_hello_fragments_accepted(size: int, per_datagram: int) -> None:
    pair, _, body = _cookie_hello()
    to_server(pair, _fragmented_hello(body, size, 1, per_datagram))
    assert pair.server_conn.state is State.SERVER_WAIT_CKE
    pair.pump()
    assert pair.client.is_established


@pytest.mark.parametrize(("size", "per_datagram"), [
    (20, 1), (40, 1), (40, 2), (96, 1),
    (20, 2),
])
def test_replayed_client_hello_fragments_do_not_replace_the_session(size: int, per_datagram: int) -> None:
    pair, _, body = _cookie_hello()
    to_server(pair, _fragmented_hello(body, size, 1, per_datagram))
    pair.pump()
    assert pair.client.is_established
    conn = pair.server_conn
    drain_server(pair.server)
    pair.now = 5.0
    to_server(pair, _fragmented_hello(body, size, 20, per_datagram))  # duplicated by the network or replayed
    assert pair.server.connections.get(CLIENT_ADDR) is conn and conn.is_established
    assert server_events(pair) == []


# ---------------------------------------------------------------------------------------------------------
# Unauthenticated (epoch 0) records cannot affect an established session


@pytest.mark.parametrize("payload", [b"\x02\x28", b"\x01\x00", b"\x02\x50"])
@pytest.mark.parametrize("role", ["server", "client"])
def test_plaintext_alert_after_handshake_ignored(role: str, payload: bytes) -> None:
    pair = established_pair()
    rec = encode_plain(ContentType.ALERT, 50, payload)
    if role == "server":
        to_server(pair, [rec])
        assert server_events(pair) == [] and pair.s2c() == [] and pair.server_conn.is_established
    else:
        to_client(pair, [rec])
        assert drain(pair.client) == [] and pair.c2s() == [] and pair.client.is_established


@pytest.mark.parametrize("role", ["server", "client"])
def test_plaintext_application_data_after_handshake_ignored(role: str) -> None:
    pair = established_pair()
    rec = encode_plain(ContentType.APPLICATION_DATA, 50, b"forged")
    if role == "server":
        to_server(pair, [rec])
        assert server_events(pair) == [] and pair.server_conn.is_established
    else:
        to_client(pair, [rec])
        assert drain(pair.client) == [] and pair.client.is_established


@pytest.mark.parametrize("role", ["server", "client"])
def test_forged_protected_record_after_handshake_dropped_silently(role: str) -> None:
    pair = established_pair()
    rec = bytearray(pair.client._write_record(1, ContentType.APPLICATION_DATA, b"x" * 20) if role == "server"
                    else pair.server_conn._write_record(1, ContentType.APPLICATION_DATA, b"x" * 20))
    rec[-1] ^= 1
    if role == "server":
        to_server(pair, [bytes(rec)])
        assert server_events(pair) == [] and pair.s2c() == [] and pair.server_conn.is_established
    else:
        to_client(pair, [bytes(rec)])
        assert drain(pair.client) == [] and pair.c2s() == [] and pair.client.is_established


# ---------------------------------------------------------------------------------------------------------
# Finished with a wrong verify_data (correctly encrypted) is a decrypt_error, in both roles


def test_wrong_client_finished_rejected_by_server() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    (final,) = pair.c2s()
    cke, ccs, _ = raw_records(final)
    bad = pair.client._write_record(1, ContentType.HANDSHAKE,
                                    message_header(HandshakeType.FINISHED, 12, 3) + bytes(12))
    to_server(pair, [cke + ccs + bad])
    (err,) = errors_of(server_events(pair))
    assert isinstance(err, AlertError) and err.description == AlertDescription.decrypt_error
    assert plain_alerts_of(pair.s2c()) == [(AlertLevel.FATAL, AlertDescription.decrypt_error)]


def test_wrong_server_finished_rejected_by_client() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    (final,) = pair.c2s()
    cke = raw_records(final)[0]
    to_server(pair, [cke])  # the server derives its keys; its Finished is forged below
    conn = pair.server_conn
    conn._write_epoch = 1
    bad = conn._write_record(1, ContentType.HANDSHAKE, message_header(HandshakeType.FINISHED, 12, 3) + bytes(12))
    to_client(pair, [CCS_RECORD, bad])
    assert_client_failed(pair, AlertError, AlertDescription.decrypt_error)


def plain_alerts_of(datagrams: list[bytes]) -> list[tuple[int, int]]:
    return [(r.fragment[0], r.fragment[1]) for d in datagrams for r in split_records(d)
            if r.content_type == ContentType.ALERT and r.epoch == 0]


# ---------------------------------------------------------------------------------------------------------
# Parameter checks of the hellos


def _server_hello(**changes: object) -> bytes:
    fields: dict[str, object] = {"version": 0xFEFD, "random": bytes(32), "session_id": b"",
                                 "suite": CipherSuite.TLS_PSK_WITH_AES_128_CCM_8, "compression": 0,
                                 "extensions": [(ExtensionType.EXTENDED_MASTER_SECRET, b"")]}
    fields.update(changes)
    w = Writer()
    w.push_uint16(fields["version"])  # type: ignore[arg-type]
    w.push_bytes(fields["random"])  # type: ignore[arg-type]
    w.push_vector(1, fields["session_id"])  # type: ignore[arg-type]
    w.push_uint16(fields["suite"])  # type: ignore[arg-type]
    w.push_uint8(fields["compression"])  # type: ignore[arg-type]
    exts: list[tuple[int, bytes]] = fields["extensions"]  # type: ignore[assignment]
    if exts:
        with w.push_block(2):
            for t, data in exts:
                w.push_uint16(t)
                w.push_vector(2, data)
    return w.data()


@pytest.mark.parametrize(("changes", "desc"), [
    ({"version": 0xFEFF}, AlertDescription.protocol_version),
    ({"version": 0xFEFC}, AlertDescription.protocol_version),
    ({"suite": 0xC0AE}, AlertDescription.illegal_parameter),  # not offered
    ({"suite": CipherSuite.TLS_EMPTY_RENEGOTIATION_INFO_SCSV}, AlertDescription.illegal_parameter),
    ({"compression": 1}, AlertDescription.illegal_parameter),
    ({"extensions": [(ExtensionType.SESSION_TICKET, b"")]}, AlertDescription.unsupported_extension),
    ({"extensions": [(ExtensionType.RENEGOTIATION_INFO, b"\x01\x00")]}, AlertDescription.handshake_failure),
    ({"extensions": [(ExtensionType.EXTENDED_MASTER_SECRET, b""), (ExtensionType.EXTENDED_MASTER_SECRET, b"")]},
     AlertDescription.decode_error),
])
def test_server_hello_parameters_checked_by_client(changes: dict[str, object], desc: AlertDescription) -> None:
    pair = client_wait_hello()
    to_client(pair, [handshake_record(HandshakeType.SERVER_HELLO, _server_hello(**changes), 0, 30)])
    (err,) = errors_of(drain(pair.client))
    assert isinstance(err, AlertError) and not isinstance(err, InternalError)
    assert err.description == desc
    assert plain_alerts_of(pair.c2s()) == [(AlertLevel.FATAL, desc)]


def test_valid_server_hello_without_cookie_exchange_accepted() -> None:
    pair = client_wait_hello()
    to_client(pair, [handshake_record(HandshakeType.SERVER_HELLO, _server_hello(), 0, 30)])
    assert pair.client.state is State.CLIENT_WAIT_SKE_OR_DONE and drain(pair.client) == []


def _hello_through_cookie(pair: Pair, hello_body: bytes) -> None:
    """Send a crafted ClientHello, answer the HelloVerifyRequest with the same hello plus its cookie."""
    to_server(pair, [handshake_record(HandshakeType.CLIENT_HELLO, hello_body, 0, 0)])
    (hvr,) = pair.s2c()
    (frag,) = parse_fragments(next(split_records(hvr)).fragment)
    assert frag.msg_type == HandshakeType.HELLO_VERIFY_REQUEST
    with_cookie = _rewrite(hello_body, cookie=frag.body[3:])
    to_server(pair, [handshake_record(HandshakeType.CLIENT_HELLO, with_cookie, 1, 1)])


@pytest.mark.parametrize(("changes", "desc"), [
    ({"cipher_suites": [0xC0AE, 0x00FF]}, AlertDescription.handshake_failure),
    ({"compression_methods": b"\x01"}, AlertDescription.illegal_parameter),
    ({"version": 0xFEFF}, AlertDescription.protocol_version),  # DTLS 1.0 at most (versions count down)
    ({"extensions": [(ExtensionType.RENEGOTIATION_INFO, b"\x01\x00")]}, AlertDescription.handshake_failure),
])
def test_client_hello_parameters_checked_by_server(changes: dict[str, object], desc: AlertDescription) -> None:
    pair, _, body = _cookie_hello()
    plain = _rewrite(body, cookie=b"", **changes)
    _hello_through_cookie(pair, plain)
    (err,) = errors_of(server_events(pair))
    assert isinstance(err, AlertError) and not isinstance(err, InternalError)
    assert err.description == desc
    assert plain_alerts_of(pair.s2c()) == [(AlertLevel.FATAL, desc)]
    assert pair.server.connections == {}


def test_client_hello_newer_version_extra_compression_unknown_extensions_accepted() -> None:
    pair, _, body = _cookie_hello()
    hello = pull_client_hello(Buffer(body))
    plain = _rewrite(body, cookie=b"", compression_methods=b"\x01\x00", version=0xFEFC,
                     extensions=[*hello.extensions, (ExtensionType.SERVER_NAME, b"\x00\x00"), (0x3A3A, b"")])
    _hello_through_cookie(pair, plain)
    assert pair.server_conn.state is State.SERVER_WAIT_CKE
    (flight,) = pair.s2c()
    (sh, *_) = [f for r in split_records(flight) for f in parse_fragments(r.fragment)]
    # The ServerHello answers only what was offered and understood.
    exts = [t for t, _ in pull_server_hello_exts(sh.body)]
    assert set(exts) <= {ExtensionType.EXTENDED_MASTER_SECRET, ExtensionType.RENEGOTIATION_INFO}


def pull_server_hello_exts(body: bytes) -> list[tuple[int, bytes]]:
    from iotdtls.messages import pull_server_hello

    return pull_server_hello(Buffer(body)).extensions
