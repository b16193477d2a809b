"""Message bodies for the state-table tests (tests/test_state_table.py): for each handshake type, hypothesis
strategies of well-formed bodies (the peer's genuine message where the row has it, the genuine Finished, keys the
peer does not trust, hellos with the extensions of CID, record_size_limit and tickets, NewSessionTickets) and
random bytes."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from helpers import IDENTITY, p256_key
from hypothesis import strategies as st
from state_rows import Setup

from iotdtls.buffer import Writer
from iotdtls.constants import CertificateType, CipherSuite, ExtensionType, HandshakeType
from iotdtls.keys import spki_der
from iotdtls.messages import (
    ClientHello,
    HelloVerifyRequest,
    NewSessionTicket,
    ServerHello,
    push_client_hello,
    push_hello_verify_request,
    push_new_session_ticket,
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


def _push(fn: Callable[[Writer], None]) -> bytes:
    w = Writer()
    fn(w)
    return w.data()


_EXT_TYPES = [int(e) for e in ExtensionType] + [0x3A3A, 0xFFFF]
#: Well-formed bodies of the extensions of CID, record_size_limit and tickets (and random ones, below).
_EXT_BODIES: dict[int, st.SearchStrategy[bytes]] = {
    ExtensionType.CONNECTION_ID: st.binary(max_size=21).map(lambda c: bytes((len(c),)) + c),
    ExtensionType.RECORD_SIZE_LIMIT: st.integers(0, 0xFFFF).map(lambda n: n.to_bytes(2, "big")),
    ExtensionType.SESSION_TICKET: st.one_of(st.just(b""), st.binary(max_size=40)),
}
_extensions = st.lists(st.sampled_from(_EXT_TYPES).flatmap(
    lambda t: st.tuples(st.just(t), st.one_of(_EXT_BODIES.get(t, st.binary(max_size=6)), st.binary(max_size=6)))),
    max_size=4, unique_by=lambda e: e[0])
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
new_session_ticket_bodies = st.builds(NewSessionTicket, lifetime_hint=st.integers(0, 0xFFFFFFFF),
                                      ticket=st.binary(max_size=120)).map(
    lambda m: _push(lambda w: push_new_session_ticket(w, m)))




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
    elif msg_type == HandshakeType.NEW_SESSION_TICKET:
        valid = new_session_ticket_bodies
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
