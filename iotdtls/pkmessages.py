"""Messages and extensions of the ECDHE-ECDSA handshake (RFC 8422, RFC 5246 section 7.4, RFC 7250).

Bodies only, as in :mod:`iotdtls.messages`: every parser consumes its input exactly and checks every length.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from .buffer import Buffer, Writer
from .constants import CertificateType, ClientCertificateType, ECCurveType, NamedGroup, SignatureScheme
from .errors import DecodeError, IllegalParameter
from .messages import _done

P256_POINT_LEN = 65  # uncompressed: 0x04 || X || Y


# -- extensions ----------------------------------------------------------------------------------
def push_uint16_list(values: Sequence[int]) -> bytes:
    return struct.pack(f">H{len(values)}H", 2 * len(values), *values)


def pull_uint16_list(data: bytes) -> list[int]:
    buf = Buffer(data)
    raw = buf.pull_vector(2, 2, 0xFFFE)
    _done(buf)
    return _uint16s(raw)


def _uint16s(raw: bytes) -> list[int]:
    if len(raw) % 2:
        raise DecodeError("odd list length")
    return list(struct.unpack(f">{len(raw) // 2}H", raw))


def pull_uint8_list(data: bytes) -> list[int]:
    buf = Buffer(data)
    raw = buf.pull_vector(1, 1, 255)
    _done(buf)
    return list(raw)


def push_uint8_list(values: Sequence[int]) -> bytes:
    return bytes((len(values), *values))


def pull_certificate_type(data: bytes) -> CertificateType:
    """The single certificate type a ServerHello selects (RFC 7250 section 3)."""
    if len(data) != 1:
        raise DecodeError("certificate type extension in ServerHello must hold one type")
    try:
        return CertificateType(data[0])
    except ValueError:
        raise IllegalParameter("server selected a certificate type we did not offer") from None


# -- Certificate ---------------------------------------------------------------------------------
@dataclass(slots=True)
class CertificateMessage:
    """RFC 7250: a raw public key (one DER SubjectPublicKeyInfo) or an X.509 chain (DER, leaf first)."""

    kind: CertificateType
    spki: bytes = b""
    chain: list[bytes] = field(default_factory=list)


def pull_certificate(buf: Buffer, kind: CertificateType) -> CertificateMessage:
    if kind == CertificateType.RAW_PUBLIC_KEY:
        spki = buf.pull_vector(3, 1)
        _done(buf)
        return CertificateMessage(kind, spki=spki)
    block = Buffer(buf.pull_vector(3))
    _done(buf)
    chain = []
    while not block.eof():
        chain.append(block.pull_vector(3, 1))
    return CertificateMessage(kind, chain=chain)


def push_certificate(w: Writer, m: CertificateMessage) -> None:
    if m.kind == CertificateType.RAW_PUBLIC_KEY:
        w.push_vector(3, m.spki)
        return
    with w.push_block(3):
        for cert in m.chain:
            w.push_vector(3, cert)


# -- ServerKeyExchange (ECDHE, signed) -----------------------------------------------------------
@dataclass(slots=True)
class ECDHEServerKeyExchange:
    point: bytes
    scheme: int
    signature: bytes
    group: int = NamedGroup.SECP256R1

    def params(self) -> bytes:
        """ServerECDHParams: the bytes the signature covers after the two randoms."""
        return struct.pack(">BHB", ECCurveType.NAMED_CURVE, self.group, len(self.point)) + self.point


def pull_ecdhe_server_key_exchange(buf: Buffer) -> ECDHEServerKeyExchange:
    curve_type = buf.pull_uint8()
    group = buf.pull_uint16()
    if curve_type != ECCurveType.NAMED_CURVE or group != NamedGroup.SECP256R1:
        raise IllegalParameter("server chose a curve other than secp256r1")
    point = buf.pull_vector(1, 1)
    scheme = buf.pull_uint16()
    signature = buf.pull_vector(2, 1)
    _done(buf)
    return ECDHEServerKeyExchange(point=point, scheme=scheme, signature=signature, group=group)


def push_ecdhe_server_key_exchange(w: Writer, m: ECDHEServerKeyExchange) -> None:
    w.push_bytes(m.params())
    w.push_uint16(m.scheme)
    w.push_vector(2, m.signature)


# -- CertificateRequest --------------------------------------------------------------------------
@dataclass(slots=True)
class CertificateRequest:
    certificate_types: list[int] = field(default_factory=lambda: [ClientCertificateType.ECDSA_SIGN])
    schemes: list[int] = field(default_factory=lambda: [SignatureScheme.ECDSA_SECP256R1_SHA256])
    authorities: list[bytes] = field(default_factory=list)


def pull_certificate_request(buf: Buffer) -> CertificateRequest:
    types = list(buf.pull_vector(1, 1))
    schemes = _uint16s(buf.pull_vector(2, 2, 0xFFFE))
    names = Buffer(buf.pull_vector(2))
    _done(buf)
    authorities = []
    while not names.eof():
        authorities.append(names.pull_vector(2, 1))
    return CertificateRequest(certificate_types=types, schemes=schemes, authorities=authorities)


def push_certificate_request(w: Writer, m: CertificateRequest) -> None:
    w.push_vector(1, bytes(m.certificate_types))
    w.push_bytes(push_uint16_list(m.schemes))
    with w.push_block(2):
        for name in m.authorities:
            w.push_vector(2, name)


# -- ClientKeyExchange (ECDHE) and CertificateVerify ---------------------------------------------
def pull_ecdhe_client_key_exchange(buf: Buffer) -> bytes:
    point = buf.pull_vector(1, 1)
    _done(buf)
    return point


def push_ecdhe_client_key_exchange(w: Writer, point: bytes) -> None:
    w.push_vector(1, point)


@dataclass(slots=True)
class CertificateVerify:
    scheme: int
    signature: bytes


def pull_certificate_verify(buf: Buffer) -> CertificateVerify:
    scheme = buf.pull_uint16()
    signature = buf.pull_vector(2, 1)
    _done(buf)
    return CertificateVerify(scheme=scheme, signature=signature)


def push_certificate_verify(w: Writer, m: CertificateVerify) -> None:
    w.push_uint16(m.scheme)
    w.push_vector(2, m.signature)
