"""Byte-exact vectors for the ECDHE-ECDSA messages and extensions (``iotdtls/pkmessages.py``).

Every vector is written out by hand, field by field, from RFC 8422 (ServerKeyExchange, ClientKeyExchange,
supported_groups, ec_point_formats), RFC 5246 section 7.4 (Certificate, CertificateRequest, CertificateVerify,
signature_algorithms) and RFC 7250 (raw public keys, client/server_certificate_type). Each one is checked in
both directions: the writer produces exactly these bytes and the parser reads them back. Damaged input
(truncated, trailing bytes, inconsistent lengths) must end in ``decode_error`` (or the documented alert),
never in another exception.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from helpers import p256_key, pin_of, pk_client_config

from iotdtls import DTLSConfiguration, DTLSConnection
from iotdtls.buffer import Buffer, Writer
from iotdtls.constants import CertificateType, ExtensionType, HandshakeType
from iotdtls.errors import AlertError, DecodeError, IllegalParameter
from iotdtls.messages import pull_client_hello, push_extensions
from iotdtls.pkmessages import (
    CertificateMessage,
    CertificateRequest,
    CertificateVerify,
    ECDHEServerKeyExchange,
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
from iotdtls.reassembly import parse_fragments
from iotdtls.record import split_records
from iotdtls.trust import TrustStore

RPK = CertificateType.RAW_PUBLIC_KEY
X509 = CertificateType.X509

# The P-256 base point G: the public key of the private scalar 1 (SEC 2, section 2.4.2), uncompressed.
G_X = "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
G_Y = "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
POINT = "04" + G_X + G_Y  # 65 bytes
# DER SubjectPublicKeyInfo of G (RFC 5480), 91 bytes
SPKI = (
    "3059"  # SEQUENCE, 89 bytes
    "3013"  # SEQUENCE AlgorithmIdentifier, 19 bytes
    "06072a8648ce3d0201"  # OID 1.2.840.10045.2.1 id-ecPublicKey
    "06082a8648ce3d030107"  # OID 1.2.840.10045.3.1.7 secp256r1
    "034200" + POINT  # BIT STRING, 66 bytes, no unused bits, the point
)
# A short DER ECDSA-Sig-Value (r = 1, s = 2): the parsers treat signatures as opaque bytes.
SIG = "3006" "020101" "020102"


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def written(push: Callable[[Writer], None]) -> bytes:
    w = Writer()
    push(w)
    return w.data()


# -- vectors: (name, wire bytes, parser, writer of the expected value, expected value) -----------------------

CERT_RPK = h("00005b" + SPKI)  # ASN.1_subjectPublicKeyInfo<1..2^24-1>: 3-byte length 91, then the SPKI
CERT_X509 = h(
    "00000d"  # certificate_list<0..2^24-1>: 13 bytes
    "000003 aabbcc"  # ASN.1Cert<1..2^24-1>: 3 bytes (the parser does not look inside)
    "000004 01020304"  # second certificate, 4 bytes
)
CERT_EMPTY = h("000000")  # an empty certificate_list: a client without a certificate
SKE = h(
    "03"  # ECCurveType named_curve (3)
    "0017"  # NamedCurve secp256r1 (23)
    "41" + POINT +  # ECPoint point<1..2^8-1>: 65 bytes
    "0403"  # SignatureAndHashAlgorithm: sha256 (4), ecdsa (3)
    "0008" + SIG  # signature<0..2^16-1>: 8 bytes
)
CR = h(
    "01 40"  # certificate_types<1..2^8-1>: ecdsa_sign (64)
    "0002 0403"  # supported_signature_algorithms<2..2^16-2>: ecdsa_secp256r1_sha256
    "0000"  # certificate_authorities<0..2^16-1>: none
)
CR_AUTHORITIES = h("01 40" "0002 0403" "0009" "0002 3000" "0003 310102")  # two DistinguishedNames
CKE = h("41" + POINT)  # ClientECDiffieHellmanPublic: ECPoint ecdh_Yc<1..2^8-1>
CV = h("0403" "0008" + SIG)  # digitally-signed: algorithm, signature<0..2^16-1>

VECTORS: list[tuple[str, bytes, Callable[[Buffer], object], Callable[[Writer, object], None], object]] = [
    ("certificate-rpk", CERT_RPK, lambda b: pull_certificate(b, RPK), push_certificate,  # type: ignore[list-item]
     CertificateMessage(RPK, spki=h(SPKI))),
    ("certificate-x509", CERT_X509, lambda b: pull_certificate(b, X509), push_certificate,  # type: ignore[list-item]
     CertificateMessage(X509, chain=[h("aabbcc"), h("01020304")])),
    ("certificate-empty", CERT_EMPTY, lambda b: pull_certificate(b, X509), push_certificate,  # type: ignore[list-item]
     CertificateMessage(X509)),
    ("server-key-exchange", SKE, pull_ecdhe_server_key_exchange, push_ecdhe_server_key_exchange,  # type: ignore[list-item]
     ECDHEServerKeyExchange(point=h(POINT), scheme=0x0403, signature=h(SIG))),
    ("certificate-request", CR, pull_certificate_request, push_certificate_request,  # type: ignore[list-item]
     CertificateRequest()),
    ("certificate-request-cas", CR_AUTHORITIES, pull_certificate_request, push_certificate_request,  # type: ignore[list-item]
     CertificateRequest(authorities=[h("3000"), h("310102")])),
    ("client-key-exchange", CKE, pull_ecdhe_client_key_exchange, push_ecdhe_client_key_exchange,  # type: ignore[list-item]
     h(POINT)),
    ("certificate-verify", CV, pull_certificate_verify, push_certificate_verify,  # type: ignore[list-item]
     CertificateVerify(scheme=0x0403, signature=h(SIG))),
]
IDS = [v[0] for v in VECTORS]


@pytest.mark.parametrize(("name", "wire", "pull", "push", "value"), VECTORS, ids=IDS)
def test_vector_round_trip(name: str, wire: bytes, pull: Callable[[Buffer], object],
                           push: Callable[[Writer, object], None], value: object) -> None:
    assert pull(Buffer(wire)) == value
    assert written(lambda w: push(w, value)) == wire
    assert written(lambda w: push(w, pull(Buffer(wire)))) == wire


def test_spki_vector_is_the_key_of_scalar_one() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from iotdtls.keys import spki_der

    assert spki_der(ec.derive_private_key(1, ec.SECP256R1())) == h(SPKI)
    assert len(h(SPKI)) == 91 and len(CERT_RPK) == 94


def test_server_key_exchange_params_are_what_is_signed() -> None:
    ske = pull_ecdhe_server_key_exchange(Buffer(SKE))
    assert ske.params() == h("03 0017 41" + POINT)  # ServerECDHParams, after client_random + server_random


@pytest.mark.parametrize(("name", "wire", "pull", "push", "value"), VECTORS, ids=IDS)
def test_truncated_and_trailing(name: str, wire: bytes, pull: Callable[[Buffer], object],
                                push: Callable[[Writer, object], None], value: object) -> None:
    for n in range(len(wire)):
        with pytest.raises(DecodeError):
            pull(Buffer(wire[:n]))
    for extra in (b"\x00", b"\xff\xff"):
        with pytest.raises(DecodeError):
            pull(Buffer(wire + extra))


BAD_LENGTHS = [
    ("rpk empty", h("000000"), lambda b: pull_certificate(b, RPK)),
    ("rpk length beyond data", h("00005c" + SPKI), lambda b: pull_certificate(b, RPK)),
    ("rpk length short of data", h("00005a" + SPKI), lambda b: pull_certificate(b, RPK)),
    ("x509 zero-length certificate", h("000003 000000"), lambda b: pull_certificate(b, X509)),
    ("x509 inner length overruns list", h("000005 000003 aabb"), lambda b: pull_certificate(b, X509)),
    ("x509 inner length beyond data", h("000006 000004 aabbcc"), lambda b: pull_certificate(b, X509)),
    ("x509 list leaves a partial header", h("000005 000001 aa 00"), lambda b: pull_certificate(b, X509)),
    ("ske empty point", h("03 0017 00 0403 0008" + SIG), pull_ecdhe_server_key_exchange),
    ("ske empty signature", h("03 0017 41" + POINT + "0403 0000"), pull_ecdhe_server_key_exchange),
    ("ske point length beyond data", h("03 0017 ff" + POINT), pull_ecdhe_server_key_exchange),
    ("cr empty types", h("00 0002 0403 0000"), pull_certificate_request),
    ("cr empty schemes", h("01 40 0000 0000"), pull_certificate_request),
    ("cr odd schemes", h("01 40 0003 040305 0000"), pull_certificate_request),
    ("cr authority overruns", h("01 40 0002 0403 0004 0003 3000"), pull_certificate_request),
    ("cr zero-length authority", h("01 40 0002 0403 0002 0000"), pull_certificate_request),
    ("cke empty point", h("00"), pull_ecdhe_client_key_exchange),
    ("cke length beyond data", h("42" + POINT), pull_ecdhe_client_key_exchange),
    ("cv empty signature", h("0403 0000"), pull_certificate_verify),
    ("cv length beyond data", h("0403 0009" + SIG), pull_certificate_verify),
]


@pytest.mark.parametrize(("name", "wire", "pull"), BAD_LENGTHS, ids=[b[0] for b in BAD_LENGTHS])
def test_bad_lengths(name: str, wire: bytes, pull: Callable[[Buffer], object]) -> None:
    with pytest.raises(DecodeError):
        pull(Buffer(wire))


@pytest.mark.parametrize("params", ["01 0017", "02 0017", "03 0018", "03 001d", "03 0000"])
def test_server_key_exchange_other_curves_are_illegal_parameter(params: str) -> None:
    # explicit_prime (1), explicit_char2 (2), secp384r1 (24), x25519 (29): only named secp256r1 is spoken
    with pytest.raises(IllegalParameter):
        pull_ecdhe_server_key_exchange(Buffer(h(params + "41" + POINT + "0403 0008" + SIG)))


# -- extensions ------------------------------------------------------------------------------------------


def test_list_encodings() -> None:
    assert push_uint16_list([0x0017]) == h("0002 0017")  # NamedGroupList<2..2^16-1>
    assert push_uint16_list([0x0403, 0x0503]) == h("0004 0403 0503")
    assert pull_uint16_list(h("0004 0403 0503")) == [0x0403, 0x0503]
    assert push_uint8_list([0]) == h("01 00")  # ECPointFormatList<1..2^8-1>
    assert push_uint8_list([RPK, X509]) == h("02 02 00")  # CertificateType types<1..2^8-1>
    assert pull_uint8_list(h("02 02 00")) == [2, 0]


@pytest.mark.parametrize("data", ["", "00", "0000", "0001 00", "0003 001700", "0004 0017", "0002 0017 00"])
def test_uint16_list_damaged(data: str) -> None:
    with pytest.raises(DecodeError):
        pull_uint16_list(h(data))


@pytest.mark.parametrize("data", ["", "00", "02 02", "01 00 00"])
def test_uint8_list_damaged(data: str) -> None:
    with pytest.raises(DecodeError):
        pull_uint8_list(h(data))


def test_selected_certificate_type() -> None:
    # In a ServerHello the extension holds exactly one CertificateType (RFC 7250 section 3).
    assert pull_certificate_type(h("02")) is RPK
    assert pull_certificate_type(h("00")) is X509
    for damaged in ("", "0202", "0102 00"):
        with pytest.raises(DecodeError):
            pull_certificate_type(h(damaged))
    for unknown in ("01", "03", "ff"):  # OpenPGP (1), 1609Dot2 (3): never offered
        with pytest.raises(IllegalParameter):
            pull_certificate_type(h(unknown))


# The extensions of a ClientHello from a client with a key that pins the server's key, as they go on the wire.
PK_EXTENSIONS = h(
    "000a 0004 0002 0017"  # supported_groups (10): NamedGroupList of 2 bytes: secp256r1 (23)
    "000b 0002 01 00"  # ec_point_formats (11): 1 format: uncompressed (0)
    "000d 0004 0002 0403"  # signature_algorithms (13): 2 bytes: sha256 (4) + ecdsa (3)
    "0013 0002 01 02"  # client_certificate_type (19): 1 type: RawPublicKey (2)
    "0014 0003 02 02 00"  # server_certificate_type (20): 2 types: RawPublicKey (2), X.509 (0)
)


def extension_bytes(conn: DTLSConnection) -> bytes:
    w = Writer()
    push_extensions(w, conn._client_pk_extensions())
    return w.data()[2:]  # without the extensions<0..2^16-1> length


def test_client_hello_pk_extensions() -> None:
    conn = DTLSConnection(pk_client_config())
    assert extension_bytes(conn) == PK_EXTENSIONS


def test_client_hello_pk_extensions_on_the_wire() -> None:
    conn = DTLSConnection(pk_client_config())
    conn.connect(0.0)
    (record,) = split_records(conn.datagrams_to_send(0.0)[0])
    (frag,) = parse_fragments(record.fragment)
    assert frag.msg_type == HandshakeType.CLIENT_HELLO
    hello = pull_client_hello(Buffer(frag.body))
    w = Writer()
    ours = {ExtensionType.SUPPORTED_GROUPS, ExtensionType.EC_POINT_FORMATS, ExtensionType.SIGNATURE_ALGORITHMS,
            ExtensionType.CLIENT_CERTIFICATE_TYPE, ExtensionType.SERVER_CERTIFICATE_TYPE}
    push_extensions(w, [e for e in hello.extensions if e[0] in ours])
    assert w.data()[2:] == PK_EXTENSIONS


def test_client_hello_pk_extensions_variants() -> None:
    common = h("000a 0004 0002 0017" "000b 0002 01 00" "000d 0004 0002 0403")
    # no key: nothing to present, so no client_certificate_type
    conn = DTLSConnection(pk_client_config(key=None))
    assert extension_bytes(conn) == common + h("0014 0003 02 02 00")
    # only CAs: the server can only be judged as X.509, which is the default, so no server_certificate_type
    import pki

    ca = pki.make_ca()
    conn = DTLSConnection(DTLSConfiguration(is_client=True, trust=TrustStore.of(cas=[ca.cert])))
    assert extension_bytes(conn) == common
    # a key and a certificate chain: both types can be presented, X.509 first
    leaf = pki.issue(ca, "client", key=p256_key("client"))
    conn = DTLSConnection(pk_client_config(certificate_chain=[leaf.cert]))
    assert extension_bytes(conn) == common + h("0013 0003 02 00 02" "0014 0003 02 02 00")
    assert pin_of(p256_key("server")) in conn._config.trust.pinned  # type: ignore[union-attr]


# -- damaged input never raises anything but an alert ---------------------------------------------------------

PARSERS: list[tuple[str, bytes, Callable[[Buffer], object]]] = [(v[0], v[1], v[2]) for v in VECTORS] + [
    ("uint16-list", h("0004 0403 0503"), lambda b: pull_uint16_list(b.pull_bytes(b.remaining()))),
    ("uint8-list", h("02 02 00"), lambda b: pull_uint8_list(b.pull_bytes(b.remaining()))),
    ("certificate-type", h("02"), lambda b: pull_certificate_type(b.pull_bytes(b.remaining()))),
]


@pytest.mark.parametrize(("name", "wire", "pull"), PARSERS, ids=[p[0] for p in PARSERS])
def test_mutations_raise_only_alerts(name: str, wire: bytes, pull: Callable[[Buffer], object]) -> None:
    rng = random.Random(name)
    for _ in range(400):
        data = bytearray(wire)
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            elif op == 1:
                data[pos:pos] = rng.randbytes(rng.randint(1, 4))
            else:
                del data[pos : pos + rng.randint(1, 4)]
        try:
            pull(Buffer(bytes(data)))
        except AlertError as exc:
            assert isinstance(exc, DecodeError | IllegalParameter), exc
