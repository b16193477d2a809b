"""PRF, PSK premaster and handshake-message vectors, cross-checked against independent implementations."""

from __future__ import annotations

import hashlib
import hmac
import io

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from helpers import CLIENT_ADDR, IDENTITY, KEY, Pair, client_config

from iotdtls.buffer import Buffer, BufferReadError, Writer
from iotdtls.constants import DTLS_1_0, DTLS_1_2, CipherSuite, ContentType, ExtensionType, HandshakeType
from iotdtls.cookie import hello_without_cookie
from iotdtls.errors import DecodeError
from iotdtls.messages import (
    ClientHello,
    HelloVerifyRequest,
    ServerHello,
    pull_client_hello,
    pull_finished,
    pull_hello_verify_request,
    pull_psk_identity,
    pull_server_hello,
    push_client_hello,
    push_hello_verify_request,
    push_psk_identity,
    push_server_hello,
)
from iotdtls.prf import finished_verify_data, key_block, master_secret, p_sha256, prf, psk_premaster
from iotdtls.reassembly import message_header, parse_fragments
from iotdtls.record import split_records

# ---------------------------------------------------------------------------------------------------------
# An independent TLS 1.2 PRF written straight from RFC 5246 section 5, with hmac.new objects.


def ref_p_hash(secret: bytes, seed: bytes, length: int) -> bytes:
    a = [seed]
    out = b""
    while len(out) < length:
        a.append(hmac.new(secret, a[-1], hashlib.sha256).digest())  # A(i) = HMAC(secret, A(i-1))
        out += hmac.new(secret, a[-1] + seed, hashlib.sha256).digest()
    return out[:length]


def ref_prf(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    return ref_p_hash(secret, label + seed, length)


# The widely published TLS 1.2 PRF (SHA-256) test vector.
PRF_SECRET = bytes.fromhex("9bbe436ba940f017b17652849a71db35")
PRF_SEED = bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c")
PRF_OUT = bytes.fromhex(
    "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a"
    "6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab"
    "4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff701"
    "87347b66")


def test_prf_sha256_published_vector() -> None:
    assert len(PRF_OUT) == 100
    assert prf(PRF_SECRET, b"test label", PRF_SEED, 100) == PRF_OUT
    assert ref_prf(PRF_SECRET, b"test label", PRF_SEED, 100) == PRF_OUT
    assert p_sha256(PRF_SECRET, b"test label" + PRF_SEED, 100) == PRF_OUT


@pytest.mark.parametrize("length", [0, 1, 12, 31, 32, 33, 48, 64, 100, 200])
def test_p_sha256_matches_reference_and_is_prefix_stable(length: int) -> None:
    secret, seed = b"\x0b" * 20, b"seed material"
    out = p_sha256(secret, seed, length)
    assert out == ref_p_hash(secret, seed, length)
    assert p_sha256(secret, seed, 200)[:length] == out


def test_psk_premaster_layout_rfc4279() -> None:
    # struct { uint16 N; opaque other_secret[N] (zeros); uint16 N; opaque psk[N] }
    assert psk_premaster(b"\x01\x02\x03") == bytes.fromhex("0003 000000 0003 010203")
    psk = bytes(range(16))
    pm = psk_premaster(psk)
    assert pm == b"\x00\x10" + bytes(16) + b"\x00\x10" + psk
    assert len(pm) == 2 + 16 + 2 + 16


def test_master_secret_key_block_finished_against_reference() -> None:
    pm = psk_premaster(KEY)
    cr, sr = bytes(range(32)), bytes(range(32, 64))
    session_hash = hashlib.sha256(b"transcript").digest()
    assert master_secret(pm, cr, sr, None) == ref_prf(pm, b"master secret", cr + sr, 48)
    ems = master_secret(pm, cr, sr, session_hash)
    assert ems == ref_prf(pm, b"extended master secret", session_hash, 48)
    assert ems != master_secret(pm, cr, sr, None)
    # key_block seeds with server_random first (RFC 5246 section 6.3).
    assert key_block(ems, cr, sr, 40) == ref_prf(ems, b"key expansion", sr + cr, 40)
    h = hashlib.sha256(b"msgs").digest()
    assert finished_verify_data(ems, True, h) == ref_prf(ems, b"client finished", h, 12)
    assert finished_verify_data(ems, False, h) == ref_prf(ems, b"server finished", h, 12)


# ---------------------------------------------------------------------------------------------------------
# Handshake message vectors, shared by parser and writer.

RANDOM = bytes(range(32))
COOKIE = bytes(range(0xC0, 0xD0))

CLIENT_HELLO_BODY = bytes.fromhex(
    "fefd" + RANDOM.hex()
    + "00"  # session_id
    + "10" + COOKIE.hex()  # cookie
    + "0004c0a8c0a4"  # cipher_suites
    + "0100"  # compression_methods: null
    + "0009" + "ff01000100" + "00170000"  # renegotiation_info(empty), extended_master_secret
)
CLIENT_HELLO = ClientHello(
    random=RANDOM,
    cipher_suites=[CipherSuite.TLS_PSK_WITH_AES_128_CCM_8, CipherSuite.TLS_PSK_WITH_AES_128_CCM],
    cookie=COOKIE,
    extensions=[(ExtensionType.RENEGOTIATION_INFO, b"\x00"), (ExtensionType.EXTENDED_MASTER_SECRET, b"")],
)

SERVER_HELLO_BODY = bytes.fromhex(
    "fefd" + bytes(range(32, 64)).hex() + "00" + "c0a8" + "00" + "0009" + "ff01000100" + "00170000")
SERVER_HELLO = ServerHello(
    random=bytes(range(32, 64)), cipher_suite=CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,
    extensions=[(ExtensionType.RENEGOTIATION_INFO, b"\x00"), (ExtensionType.EXTENDED_MASTER_SECRET, b"")],
)

HVR_BODY = bytes.fromhex("feff10" + COOKIE.hex())
HVR = HelloVerifyRequest(cookie=COOKIE, version=DTLS_1_0)


def _push(fn: object, msg: object) -> bytes:
    w = Writer()
    fn(w, msg)  # type: ignore[operator]
    return w.data()


def test_client_hello_vector() -> None:
    assert pull_client_hello(Buffer(CLIENT_HELLO_BODY)) == CLIENT_HELLO
    assert _push(push_client_hello, CLIENT_HELLO) == CLIENT_HELLO_BODY
    assert hello_without_cookie(CLIENT_HELLO_BODY) == CLIENT_HELLO_BODY.replace(b"\x10" + COOKIE, b"")


def test_client_hello_without_extensions_vector() -> None:
    body = bytes.fromhex("fefd" + RANDOM.hex() + "00" + "00" + "0002c0a8" + "0100")
    hello = ClientHello(random=RANDOM, cipher_suites=[0xC0A8])
    assert pull_client_hello(Buffer(body)) == hello
    assert _push(push_client_hello, hello) == body


def test_server_hello_vector() -> None:
    assert pull_server_hello(Buffer(SERVER_HELLO_BODY)) == SERVER_HELLO
    assert _push(push_server_hello, SERVER_HELLO) == SERVER_HELLO_BODY


def test_hello_verify_request_vector() -> None:
    assert pull_hello_verify_request(Buffer(HVR_BODY)) == HVR
    assert _push(push_hello_verify_request, HVR) == HVR_BODY


def test_psk_identity_and_finished_bodies() -> None:
    assert _push(push_psk_identity, b"dev1") == b"\x00\x04dev1"
    assert pull_psk_identity(Buffer(b"\x00\x04dev1")) == b"dev1"
    assert pull_finished(Buffer(bytes(12))) == bytes(12)
    for bad in (bytes(11), bytes(13)):
        with pytest.raises(DecodeError):
            pull_finished(Buffer(bad))
    with pytest.raises(DecodeError):
        pull_psk_identity(Buffer(b"\x00\x04dev1!"))


def test_handshake_header_vector() -> None:
    assert message_header(HandshakeType.CLIENT_HELLO, 0x57, 1) == bytes.fromhex("01 000057 0001 000000 000057")
    assert message_header(HandshakeType.FINISHED, 12, 3, 4, 8) == bytes.fromhex("14 00000c 0003 000004 000008")
    frags = parse_fragments(message_header(2, 3, 9, 1, 2) + b"ab" + message_header(14, 0, 10) + b"")
    assert [(f.msg_type, f.length, f.message_seq, f.offset, f.body) for f in frags] == [
        (2, 3, 9, 1, b"ab"), (14, 0, 10, 0, b"")]


@pytest.mark.parametrize("body", [
    CLIENT_HELLO_BODY + b"\x00",  # trailing byte after the extensions
    CLIENT_HELLO_BODY[:-1],  # truncated extension block
    CLIENT_HELLO_BODY[:40],
    bytes.fromhex("fefd" + RANDOM.hex() + "21" + "00" * 33 + "00" + "0002c0a8" + "0100"),  # session_id > 32
    bytes.fromhex("fefd" + RANDOM.hex() + "00" + "00" + "0003c0a8ff" + "0100"),  # odd suites length
    bytes.fromhex("fefd" + RANDOM.hex() + "00" + "00" + "0000" + "0100"),  # no suites
    bytes.fromhex("fefd" + RANDOM.hex() + "00" + "00" + "0002c0a8" + "00"),  # no compression methods
    bytes.fromhex("fefd" + RANDOM.hex() + "00" + "00" + "0002c0a8" + "0100" + "0008" + "00170000" * 2),
])
def test_client_hello_malformed_is_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        pull_client_hello(Buffer(body))


@pytest.mark.parametrize("body", [SERVER_HELLO_BODY + b"\x01", SERVER_HELLO_BODY[:-2], HVR_BODY[:-1]])
def test_server_messages_malformed_is_decode_error(body: bytes) -> None:
    parser = pull_hello_verify_request if body.startswith(b"\xfe\xff") else pull_server_hello
    with pytest.raises(BufferReadError):
        parser(Buffer(body))


# The first datagram of a client seeded with 1: a regression vector of the whole ClientHello record.
CLIENT_HELLO_1_DATAGRAM = bytes.fromhex(
    "16fefd00000000000000000040010000340000000000000034fefd"
    "f5b165224a58b791df6af1d8303e61cdc4bb86c3d1c427103c344c4189eb2f1e"
    "00" "00" "0006c0a8c0a400ff" "0100" "000400170000")  # SCSV (0x00FF) signals secure renegotiation


def test_client_hello_datagram_regression_vector() -> None:
    pair = Pair()
    pair.client.connect(0.0)
    (dgram,) = pair.c2s()
    assert dgram == CLIENT_HELLO_1_DATAGRAM
    (rec,) = list(split_records(dgram))
    (frag,) = parse_fragments(rec.fragment)
    hello = pull_client_hello(Buffer(frag.body))
    assert hello.random == client_config(1).random(32)  # the seeded random, nothing else
    assert _push(push_client_hello, hello) == frag.body


# ---------------------------------------------------------------------------------------------------------
# End to end: the keys of a real handshake, re-derived from the wire with the reference PRF and AESCCM.


def _messages(datagram: bytes) -> list[tuple[int, int, bytes]]:
    """(msg_type, message_seq, body) of whole epoch-0 handshake messages in a datagram."""
    out = []
    for rec in split_records(datagram):
        if rec.epoch == 0 and rec.content_type == ContentType.HANDSHAKE:
            out += [(f.msg_type, f.message_seq, f.body) for f in parse_fragments(rec.fragment)]
    return out


def _full(msg_type: int, seq: int, body: bytes) -> bytes:
    return message_header(msg_type, len(body), seq) + body


@pytest.mark.parametrize("ems", [True, False])
def test_handshake_secrets_rederived_from_the_wire(ems: bool) -> None:
    keylog = io.StringIO()
    pair = Pair(client_kw={"keylog_file": keylog, "extended_master_secret": ems})
    pair.handshake()
    assert pair.client.is_established
    wire = [d for _, d in pair.wire]
    assert len(wire) == 6
    (ch2,) = _messages(wire[2])
    sh_flight = _messages(wire[3])
    assert [m[0] for m in sh_flight] == [HandshakeType.SERVER_HELLO, HandshakeType.SERVER_HELLO_DONE]
    cke = _messages(wire[4])[0]
    assert cke[0] == HandshakeType.CLIENT_KEY_EXCHANGE and cke[2] == b"\x00\x04" + IDENTITY
    client_random = ch2[2][2:34]
    server_random = sh_flight[0][2][2:34]

    # RFC 6347 4.2.6: ClientHello1 and HelloVerifyRequest stay out of the transcript.
    transcript = b"".join(_full(*m) for m in [ch2, *sh_flight, cke])
    pm = psk_premaster(KEY)
    if ems:
        master = ref_prf(pm, b"extended master secret", hashlib.sha256(transcript).digest(), 48)
    else:
        master = ref_prf(pm, b"master secret", client_random + server_random, 48)
    assert keylog.getvalue() == f"CLIENT_RANDOM {client_random.hex()} {master.hex()}\n"

    kb = ref_prf(master, b"key expansion", server_random + client_random, 40)
    ckey, skey, civ, siv = kb[:16], kb[16:32], kb[32:36], kb[36:40]

    def open_record(datagram: bytes, key: bytes, iv: bytes) -> bytes:
        rec = next(r for r in split_records(datagram) if r.epoch == 1)
        explicit, sealed = rec.fragment[:8], rec.fragment[8:]
        assert explicit == rec.epoch_seq.to_bytes(8, "big")
        aad = explicit + bytes([rec.content_type]) + b"\xfe\xfd" + (len(sealed) - 8).to_bytes(2, "big")
        return AESCCM(key, tag_length=8).decrypt(iv + explicit, sealed, aad)

    client_fin = open_record(wire[4], ckey, civ)
    verify = ref_prf(master, b"client finished", hashlib.sha256(transcript).digest(), 12)
    assert client_fin == _full(HandshakeType.FINISHED, 3, verify)
    server_fin = open_record(wire[5], skey, siv)
    verify = ref_prf(master, b"server finished", hashlib.sha256(transcript + client_fin).digest(), 12)
    assert server_fin == _full(HandshakeType.FINISHED, 3, verify)

    # And application data under the same keys, both ways.
    pair.client.send(b"ping")
    assert open_record(pair.c2s()[0], ckey, civ) == b"ping"
    pair.server.send(CLIENT_ADDR, b"pong")
    assert open_record(pair.s2c()[0], skey, siv) == b"pong"


def test_version_constants() -> None:
    assert DTLS_1_2 == 0xFEFD and DTLS_1_0 == 0xFEFF
