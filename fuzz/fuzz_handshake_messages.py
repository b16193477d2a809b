"""Fuzz target (b): the handshake message parsers (``messages.pull_*`` and, for ECDHE-ECDSA,
``pkmessages.pull_*``), ``reassembly.parse_fragments``, the ``Reassembler`` and ``pack_flight`` -> parse ->
reassemble round trips. A parsed Certificate goes on to what the handshake does with it: the DER key or
certificate is decoded (``handshake_pk._peer_credential``) and judged by a trust store with pins and a CA
(``TrustStore.verify``); a parsed ECDH share is decoded as a P-256 point.

The extensions and message of Connection ID, record_size_limit and session tickets: ``pull_connection_id``,
``pull_record_size_limit``, ``pull_new_session_ticket``, each re-encoded; a ClientHello carrying them goes through
the server's negotiation (``_server_negotiate``, ``_server_find_session`` with a session cache and ticket keys
that hold a real session) and a ServerHello through the client's (``_client_negotiated``, ``_client_try_resume``).

Input: one selector byte, then the bytes for the selected parser.
Bugs: any exception other than the protocol errors the parsers are documented to raise (``AlertError``:
decode_error, illegal_parameter, handshake_failure), parsed messages that do not survive push -> pull,
fragments that do not re-encode, reassembled messages that differ from what was sent, unbounded memory.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TypeVar

from _harness import FuzzBug, instrumented, main

with instrumented(__name__ == "__main__"):
    from fixed_pki import WALL_TIME, certificates
    from helpers import p256_key, pin_of
    from negotiation import client_negotiates, server_negotiates

    from iotdtls.buffer import Buffer, Writer
    from iotdtls.constants import CertificateType, ContentType
    from iotdtls.cookie import hello_without_cookie
    from iotdtls.errors import AlertError, IllegalParameter
    from iotdtls.handshake_pk import _decode_point, _peer_credential
    from iotdtls.messages import (
        check_renegotiation_info,
        connection_id_extension,
        pull_client_hello,
        pull_connection_id,
        pull_empty,
        pull_extensions,
        pull_finished,
        pull_hello_verify_request,
        pull_new_session_ticket,
        pull_psk_identity,
        pull_record_size_limit,
        pull_server_hello,
        push_client_hello,
        push_extensions,
        push_hello_verify_request,
        push_new_session_ticket,
        push_server_hello,
        record_size_limit_extension,
    )
    from iotdtls.pkmessages import (
        pull_certificate,
        pull_certificate_request,
        pull_certificate_type,
        pull_certificate_verify,
        pull_ecdhe_client_key_exchange,
        pull_ecdhe_server_key_exchange,
        pull_uint8_list,
        pull_uint16_list,
        push_certificate,
        push_certificate_request,
        push_certificate_verify,
        push_ecdhe_client_key_exchange,
        push_ecdhe_server_key_exchange,
        push_uint8_list,
        push_uint16_list,
    )
    from iotdtls.reassembly import CCS, OutMessage, Reassembler, message_header, pack_flight, parse_fragments
    from iotdtls.record import encode_plain, split_records
    from iotdtls.trust import TrustStore

T = TypeVar("T")


def _again(what: str, fn: Callable[[], T]) -> T:
    """Parse something we produced ourselves: a protocol error there is a bug, not a refusal."""
    try:
        return fn()
    except AlertError as exc:
        raise FuzzBug(f"{what}: our own encoding is refused: {exc}") from exc


MAX_LEN = 600  # reassembler limit used here: small, so that the limit itself is fuzzed
MAX_AHEAD = 4


def _client_hello(body: bytes) -> None:
    hello = pull_client_hello(Buffer(body))
    w = Writer()
    push_client_hello(w, hello)
    if _again("ClientHello", lambda: pull_client_hello(Buffer(w.data()))) != hello:
        raise FuzzBug("ClientHello does not survive push -> pull")
    bare = hello_without_cookie(body)  # the server front runs this on every parsed hello
    if len(bare) != len(body) - 1 - len(hello.cookie):
        raise FuzzBug("hello_without_cookie removed the wrong bytes")
    check_renegotiation_info(hello.extensions)


def _server_hello(body: bytes) -> None:
    sh = pull_server_hello(Buffer(body))
    w = Writer()
    push_server_hello(w, sh)
    if _again("ServerHello", lambda: pull_server_hello(Buffer(w.data()))) != sh:
        raise FuzzBug("ServerHello does not survive push -> pull")
    check_renegotiation_info(sh.extensions)


def _hello_verify(body: bytes) -> None:
    hvr = pull_hello_verify_request(Buffer(body))
    w = Writer()
    push_hello_verify_request(w, hvr)
    if w.data() != body:
        raise FuzzBug("HelloVerifyRequest does not re-encode to its bytes")


def _extensions(body: bytes) -> None:
    buf = Buffer(body)
    exts = pull_extensions(buf)
    if len({t for t, _ in exts}) != len(exts):
        raise FuzzBug("duplicate extension accepted")
    w = Writer()
    push_extensions(w, exts)
    if exts and w.data() != body[: buf.tell()]:
        raise FuzzBug("extensions do not re-encode to their bytes")


def _simple(body: bytes) -> None:
    pull_psk_identity(Buffer(body))
    if len(body) == 12:
        pull_finished(Buffer(body))
    if not body:
        pull_empty(Buffer(body))


def _fragments(body: bytes) -> None:
    frags = parse_fragments(body)
    rebuilt = b"".join(message_header(f.msg_type, f.length, f.message_seq, f.offset, len(f.body)) + f.body
                       for f in frags)
    if rebuilt != body:
        raise FuzzBug("fragments do not re-encode to their record payload")


def _reassembler(body: bytes) -> None:
    """Fragments (parsed from ``body``, one 'record' per 0xFF-separated chunk) fed to a Reassembler: its memory
    stays bounded and whatever it pops is consistent with the fragments it was given."""
    reasm = Reassembler(MAX_LEN, MAX_AHEAD)
    given: dict[int, list[tuple[int, bytes, int, int]]] = {}
    for i, chunk in enumerate(body.split(b"\xff\xfe")):
        try:
            frags = parse_fragments(chunk)
        except AlertError:
            continue
        for f in frags:
            if f.message_seq < reasm.next_seq:
                continue  # the connection filters old fragments out before add()
            try:
                reasm.add(f, i & 1)
            except IllegalParameter:
                continue
            given.setdefault(f.message_seq, []).append((f.msg_type, f.body, f.offset, f.length))
        if len(reasm._parts) > MAX_AHEAD:
            raise FuzzBug("reassembler holds more messages than max_ahead")
        if sum(p.length for p in reasm._parts.values()) > MAX_AHEAD * MAX_LEN:
            raise FuzzBug("reassembler memory above max_ahead * max_len")
        while (msg := reasm.pop()) is not None:
            msg_type, data, _epoch = msg
            seq = reasm.next_seq - 1
            pieces = given.get(seq, [])
            if not pieces or any(t != msg_type or length != len(data) for t, _, _, length in pieces):
                raise FuzzBug(f"popped message {seq} disagrees with its fragments")
            covered = bytearray(len(data))
            for _, fbody, off, _ in pieces:
                covered[off : off + len(fbody)] = b"\x01" * len(fbody)
            if len(data) and not all(covered):
                raise FuzzBug(f"message {seq} popped before all its bytes arrived")


def _flight(body: bytes) -> None:
    """Messages cut from ``body`` packed to an MTU and a coalescing mode taken from it, then parsed and
    reassembled: the receiver must get exactly the messages sent."""
    if len(body) < 2:
        return
    mtu = 64 + body[0] * 2
    coalesce = bool(body[1] & 1)
    messages: list[OutMessage] = []
    seq = 0
    for part in body[2:].split(b"\xff\xfe")[:6]:
        if part[:1] == b"\x14" and not messages:
            messages.append(OutMessage(0, CCS))
            continue
        messages.append(OutMessage(0, (part[0] if part else 0) % 30, seq, part[1:]))
        seq += 1
    counter = iter(range(1 << 20))

    def write_record(epoch: int, content_type: int, payload: bytes) -> bytes:
        return encode_plain(content_type, next(counter), payload)

    datagrams = pack_flight(messages, mtu, lambda epoch: 0, write_record, coalesce)
    _again("flight", lambda: _receive_flight(datagrams, messages, mtu))


def _receive_flight(datagrams: list[bytes], messages: list[OutMessage], mtu: int) -> None:
    reasm = Reassembler(1 << 16, 8)
    got = []
    ccs = 0
    for d in datagrams:
        if len(d) > mtu:
            raise FuzzBug(f"datagram of {len(d)} bytes above the budget of {mtu}")
        for rec in split_records(d):
            if rec.content_type == ContentType.CHANGE_CIPHER_SPEC:
                ccs += 1
                continue
            for f in parse_fragments(rec.fragment):
                reasm.add(f, 0)
            while (msg := reasm.pop()) is not None:
                got.append((msg[0], msg[1]))
    sent = [(m.msg_type, m.body) for m in messages if m.msg_type != CCS]
    if got != sent or ccs != len(messages) - len(sent):
        raise FuzzBug("pack_flight -> parse -> reassemble does not give back the flight")


# -- ECDHE-ECDSA (pkmessages) -----------------------------------------------------------------------------


def _reencodes(what: str, body: bytes, push: Callable[[Writer], None]) -> None:
    w = Writer()
    push(w)
    if w.data() != body:
        raise FuzzBug(f"{what} does not re-encode to its bytes")


def _certificate(body: bytes) -> None:
    """Both encodings (raw public key, X.509 list), then the key decoding and trust decision of the handshake:
    every refusal must be an alert (bad_certificate, unsupported_certificate, unknown_ca, ...)."""
    for kind in (CertificateType.RAW_PUBLIC_KEY, CertificateType.X509):
        with contextlib.suppress(AlertError):
            _judge(body, kind)


def _judge(body: bytes, kind: CertificateType) -> None:
    msg = pull_certificate(Buffer(body), kind)
    _reencodes("Certificate", body, lambda w: push_certificate(w, msg))
    if kind == CertificateType.X509 and not msg.chain:
        return  # an empty list: the handshake refuses it (or goes on anonymously) before decoding anything
    cred, _ = _peer_credential(msg)
    _trust().verify(cred, WALL_TIME).identity.encode()


@functools.cache
def _trust() -> TrustStore:
    """The pinned raw public key of tests/helpers' server and the CA of fuzz/fixed_pki."""
    return TrustStore.of([pin_of(p256_key("server"))], [certificates()["ca"]])


def _server_key_exchange(body: bytes) -> None:
    ske = pull_ecdhe_server_key_exchange(Buffer(body))
    _reencodes("ServerKeyExchange", body, lambda w: push_ecdhe_server_key_exchange(w, ske))
    _decode_point(ske.point)


def _certificate_request(body: bytes) -> None:
    cr = pull_certificate_request(Buffer(body))
    _reencodes("CertificateRequest", body, lambda w: push_certificate_request(w, cr))


def _pk_small(body: bytes) -> None:
    """ClientKeyExchange (and its point), CertificateVerify and the extension bodies of the public-key suites."""
    with contextlib.suppress(AlertError):
        point = pull_ecdhe_client_key_exchange(Buffer(body))
        _reencodes("ClientKeyExchange", body, lambda w: push_ecdhe_client_key_exchange(w, point))
        _decode_point(point)
    with contextlib.suppress(AlertError):
        cv = pull_certificate_verify(Buffer(body))
        _reencodes("CertificateVerify", body, lambda w: push_certificate_verify(w, cv))
    with contextlib.suppress(AlertError):
        if push_uint16_list(pull_uint16_list(body)) != body:
            raise FuzzBug("uint16 list does not re-encode to its bytes")
    with contextlib.suppress(AlertError):
        if push_uint8_list(pull_uint8_list(body)) != body:
            raise FuzzBug("uint8 list does not re-encode to its bytes")
    with contextlib.suppress(AlertError):
        pull_certificate_type(body)


# -- Connection ID, record_size_limit, tickets ------------------------------------------------------------


def _ext_bodies(body: bytes) -> None:
    """The connection_id and record_size_limit extension bodies and the NewSessionTicket message."""
    with contextlib.suppress(AlertError):
        cid = pull_connection_id(body)
        if connection_id_extension(cid)[1] != body:
            raise FuzzBug("connection_id does not re-encode to its bytes")
    with contextlib.suppress(AlertError):
        limit = pull_record_size_limit(body)
        if not 64 <= limit <= 16384:
            raise FuzzBug(f"record_size_limit {limit} accepted")
        if int.from_bytes(body, "big") <= 16384 and record_size_limit_extension(limit)[1] != body:
            raise FuzzBug("record_size_limit does not re-encode to its bytes")
    nst = pull_new_session_ticket(Buffer(body))
    _reencodes("NewSessionTicket", body, lambda w: push_new_session_ticket(w, nst))


def _negotiation(body: bytes) -> None:
    """A ClientHello (even first byte) through the server's extension negotiation and session lookup, or a
    ServerHello through the client's; the endpoints offer CIDs, a record_size_limit and tickets, and the server
    knows one session by ID and one by ticket (fuzz/negotiation.py)."""
    if not body:
        return
    if body[0] & 1:
        client_negotiates(pull_server_hello(Buffer(body[1:])), body[1:])
    else:
        server_negotiates(pull_client_hello(Buffer(body[1:])), body[1:])


PARSERS = [_client_hello, _server_hello, _hello_verify, _extensions, _simple, _fragments, _reassembler, _flight,
           _certificate, _server_key_exchange, _certificate_request, _pk_small, _ext_bodies, _negotiation]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    with contextlib.suppress(AlertError):  # decode_error & co.: the documented way to refuse input
        PARSERS[data[0] % len(PARSERS)](data[1:])


if __name__ == "__main__":
    main(test_one_input)
