"""Handshake messages of the DTLS 1.2 PSK handshake, as dataclasses with ``pull_*`` / ``push_*``.

Bodies only: the 12-byte DTLS handshake header is handled by :mod:`iotdtls.reassembly`. Every parser consumes
its input exactly; trailing bytes are a ``decode_error``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .buffer import Buffer, BufferReadError, Writer
from .constants import DTLS_1_2, MAX_PLAINTEXT, MIN_RECORD_SIZE_LIMIT, CompressionMethod, ExtensionType
from .errors import DecodeError, HandshakeFailure, IllegalParameter

Extensions = list[tuple[int, bytes]]
_HH = struct.Struct(">HH")


def pull_extensions(buf: Buffer) -> Extensions:
    """An optional extension block; each type at most once (RFC 5246 section 7.4.1.4)."""
    if buf.eof():
        return []
    block = buf.pull_vector(2)
    exts: Extensions = []
    seen: set[int] = set()
    pos, end = 0, len(block)
    while pos < end:
        if end - pos < 4:
            raise DecodeError("truncated extension header")
        ext_type, length = _HH.unpack_from(block, pos)
        pos += 4
        if pos + length > end:
            raise DecodeError("extension longer than its block")
        if ext_type in seen:
            raise DecodeError("duplicate extension")
        seen.add(ext_type)
        exts.append((ext_type, block[pos : pos + length]))
        pos += length
    return exts


def push_extensions(w: Writer, exts: Extensions) -> None:
    if not exts:
        return
    with w.push_block(2):
        for ext_type, data in exts:
            w.push_uint16(ext_type)
            w.push_vector(2, data)


def find_extension(exts: Extensions, ext_type: int) -> bytes | None:
    for t, data in exts:
        if t == ext_type:
            return data
    return None


def check_renegotiation_info(exts: Extensions) -> bool:
    """True when the peer sent renegotiation_info; it must be empty for an initial handshake."""
    data = find_extension(exts, ExtensionType.RENEGOTIATION_INFO)
    if data is None:
        return False
    if data != b"\x00":
        raise HandshakeFailureReneg()
    return True


class HandshakeFailureReneg(HandshakeFailure):
    """A non-empty renegotiation_info on an initial handshake (RFC 5746 section 3.6)."""


@dataclass(slots=True)
class ClientHello:
    random: bytes
    cipher_suites: list[int]
    session_id: bytes = b""
    cookie: bytes = b""
    compression_methods: bytes = b"\x00"
    extensions: Extensions = field(default_factory=list)
    version: int = DTLS_1_2


def pull_client_hello(buf: Buffer) -> ClientHello:
    version = buf.pull_uint16()
    random = buf.pull_bytes(32)
    session_id = buf.pull_vector(1, 0, 32)
    cookie = buf.pull_vector(1, 0, 255)
    raw_suites = buf.pull_vector(2, 2, 0xFFFE)
    if len(raw_suites) % 2:
        raise DecodeError("odd cipher_suites length")
    suites = list(struct.unpack(f">{len(raw_suites) // 2}H", raw_suites))
    compression = buf.pull_vector(1, 1, 255)
    exts = pull_extensions(buf)
    _done(buf)
    return ClientHello(random=random, cipher_suites=suites, session_id=session_id, cookie=cookie,
                       compression_methods=compression, extensions=exts, version=version)


def push_client_hello(w: Writer, m: ClientHello) -> None:
    w.push_uint16(m.version)
    w.push_bytes(m.random)
    w.push_vector(1, m.session_id)
    w.push_vector(1, m.cookie)
    w.push_vector(2, struct.pack(f">{len(m.cipher_suites)}H", *m.cipher_suites))
    w.push_vector(1, m.compression_methods)
    push_extensions(w, m.extensions)


@dataclass(slots=True)
class HelloVerifyRequest:
    cookie: bytes
    version: int = DTLS_1_2


def pull_hello_verify_request(buf: Buffer) -> HelloVerifyRequest:
    version = buf.pull_uint16()
    cookie = buf.pull_vector(1, 0, 255)
    _done(buf)
    return HelloVerifyRequest(cookie=cookie, version=version)


def push_hello_verify_request(w: Writer, m: HelloVerifyRequest) -> None:
    w.push_uint16(m.version)
    w.push_vector(1, m.cookie)


@dataclass(slots=True)
class ServerHello:
    random: bytes
    cipher_suite: int
    session_id: bytes = b""
    compression_method: int = CompressionMethod.NULL
    extensions: Extensions = field(default_factory=list)
    version: int = DTLS_1_2


def pull_server_hello(buf: Buffer) -> ServerHello:
    version = buf.pull_uint16()
    random = buf.pull_bytes(32)
    session_id = buf.pull_vector(1, 0, 32)
    suite = buf.pull_uint16()
    compression = buf.pull_uint8()
    exts = pull_extensions(buf)
    _done(buf)
    return ServerHello(random=random, cipher_suite=suite, session_id=session_id,
                       compression_method=compression, extensions=exts, version=version)


def push_server_hello(w: Writer, m: ServerHello) -> None:
    w.push_uint16(m.version)
    w.push_bytes(m.random)
    w.push_vector(1, m.session_id)
    w.push_uint16(m.cipher_suite)
    w.push_uint8(m.compression_method)
    push_extensions(w, m.extensions)


def pull_psk_identity(buf: Buffer) -> bytes:
    """The body of a PSK ServerKeyExchange (identity hint) or ClientKeyExchange (identity)."""
    v = buf.pull_vector(2)
    _done(buf)
    return v


def push_psk_identity(w: Writer, identity: bytes) -> None:
    w.push_vector(2, identity)


def pull_empty(buf: Buffer) -> None:
    _done(buf)


def pull_finished(buf: Buffer) -> bytes:
    v = buf.pull_bytes(12)
    _done(buf)
    return v


def _done(buf: Buffer) -> None:
    if not buf.eof():
        raise BufferReadError("trailing bytes in handshake message")


def pull_connection_id(data: bytes) -> bytes:
    """The connection_id extension (RFC 9146 section 3): ``opaque cid<0..2^8-1>``."""
    buf = Buffer(data)
    cid = buf.pull_vector(1)
    _done(buf)
    return cid


def connection_id_extension(cid: bytes) -> tuple[int, bytes]:
    return ExtensionType.CONNECTION_ID, bytes((len(cid),)) + cid


def pull_record_size_limit(data: bytes) -> int:
    """The record_size_limit extension (RFC 8449): a uint16 of at least 64; larger than TLS 1.2's 2^14 counts
    as 2^14 (section 4)."""
    buf = Buffer(data)
    limit = buf.pull_uint16()
    _done(buf)
    if limit < MIN_RECORD_SIZE_LIMIT:
        raise IllegalParameter(f"record_size_limit of {limit} bytes is below {MIN_RECORD_SIZE_LIMIT}")
    return min(limit, MAX_PLAINTEXT)


def record_size_limit_extension(limit: int) -> tuple[int, bytes]:
    return ExtensionType.RECORD_SIZE_LIMIT, limit.to_bytes(2, "big")


@dataclass(slots=True)
class NewSessionTicket:
    """RFC 5077 section 3.3."""

    lifetime_hint: int
    ticket: bytes


def pull_new_session_ticket(buf: Buffer) -> NewSessionTicket:
    hint = buf.pull_uint32()
    ticket = buf.pull_vector(2)
    _done(buf)
    return NewSessionTicket(lifetime_hint=hint, ticket=ticket)


def push_new_session_ticket(w: Writer, m: NewSessionTicket) -> None:
    w.push_uint32(m.lifetime_hint)
    w.push_vector(2, m.ticket)
