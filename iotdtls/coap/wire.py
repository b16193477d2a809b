"""CoAP over UDP on the wire (RFC 7252 section 3), without aiocoap: a bounds-checked scan of a message's header
and options that never raises, and an encoder for the few replies the server builds from bytes (2.31 Continue,
4.13, 4.02, cached Block2 blocks)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# message types
CON, NON, ACK, RST = 0, 1, 2, 3

# option numbers (RFC 7252 section 12.2, RFC 7641, RFC 7959)
OBSERVE = 6
BLOCK2 = 23
BLOCK1 = 27
SIZE2 = 28
SIZE1 = 60


def code(cls: int, detail: int) -> int:
    """The code byte of response code ``cls``.``detail`` (e.g. 4.13)."""
    return cls << 5 | detail


CONTINUE = code(2, 31)
BAD_REQUEST = code(4, 0)
BAD_OPTION = code(4, 2)
REQUEST_ENTITY_INCOMPLETE = code(4, 8)
REQUEST_ENTITY_TOO_LARGE = code(4, 13)

PAYLOAD_MARKER = 0xFF


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed part of a CoAP message: type, code, message ID and token."""

    mtype: int
    code: int
    mid: int
    token: bytes

    @property
    def is_request(self) -> bool:
        return 1 <= self.code < 32


def scan_header(data: bytes) -> Header | None:
    """The header and token of ``data``, or None if it cannot be a CoAP message (short, version not 1, a token
    length of 9-15, an empty message with more than its 4 bytes)."""
    if len(data) < 4:
        return None
    first = data[0]
    tkl = first & 0x0F
    if first >> 6 != 1 or tkl > 8 or len(data) < 4 + tkl:
        return None
    if data[1] == 0 and (tkl or len(data) > 4):
        return None
    return Header((first >> 4) & 3, data[1], data[2] << 8 | data[3], bytes(data[4:4 + tkl]))


def _extended(data: bytes, pos: int, nibble: int) -> tuple[int, int] | None:
    """An option delta or length nibble with its extended bytes: (value, next position) or None if malformed."""
    if nibble < 13:
        return nibble, pos
    if nibble == 13:
        return (data[pos] + 13, pos + 1) if pos < len(data) else None
    if nibble == 14:
        return ((data[pos] << 8 | data[pos + 1]) + 269, pos + 2) if pos + 1 < len(data) else None
    return None


def count_options(data: bytes, limit: int) -> int | None:
    """How many options ``data`` holds, counting up to ``limit + 1`` (more are not looked at), or None if the
    options are malformed (an option or its length running past the end, a reserved nibble 15, a payload marker
    with no payload). The message must have passed :func:`scan_header`."""
    pos = 4 + (data[0] & 0x0F)
    end = len(data)
    count = 0
    while pos < end:
        first = data[pos]
        if first == PAYLOAD_MARKER:
            return count if pos + 1 < end else None
        delta = _extended(data, pos + 1, first >> 4)
        if delta is None:
            return None
        length = _extended(data, delta[1], first & 0x0F)
        if length is None:
            return None
        pos = length[1] + length[0]
        if pos > end:
            return None
        count += 1
        if count > limit:
            return count
    return count


def uint(value: int) -> bytes:
    """An unsigned option value in the fewest bytes (0 is empty)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def block_value(num: int, more: bool, szx: int) -> bytes:
    """The value of a Block1/Block2 option (RFC 7959 section 2.2)."""
    return uint(num << 4 | (8 if more else 0) | szx)


def _nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    return 14, (value - 269).to_bytes(2, "big")


def encode(mtype: int, code: int, mid: int, token: bytes, options: Iterable[tuple[int, bytes]] = (),
           payload: bytes = b"") -> bytes:
    """A CoAP message; ``options`` are (number, value) pairs in any order (sorted here, stable for repeats)."""
    out = bytearray((0x40 | mtype << 4 | len(token), code, mid >> 8 & 0xFF, mid & 0xFF))
    out += token
    last = 0
    for number, value in sorted(options, key=lambda item: item[0]):
        d, dext = _nibble(number - last)
        n, next_ = _nibble(len(value))
        out.append(d << 4 | n)
        out += dext
        out += next_
        out += value
        last = number
    if payload:
        out.append(PAYLOAD_MARKER)
        out += payload
    return bytes(out)
