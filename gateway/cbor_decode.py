"""A CBOR decoder (RFC 8949) of its own for telemetry bodies, and the CBOR -> JSON mapping.

It builds JSON values directly, so none of cbor2's automatic conversions (datetime, Decimal, Fraction, IP
addresses, shared references, string references) can reach the output, and every bound is checked before
anything is allocated. It never recurses (containers, tags and embedded CBOR are handled with an explicit stack),
so no input can raise RecursionError, and a declared length is checked against the bytes that remain before it
is used, so a 1 GB length is refused at once. docs/gateway-envelope.md has the mapping.
"""

from __future__ import annotations

import math
import re
import struct
import uuid
from decimal import Decimal
from typing import TypeAlias, Union

from .payload_base import MAX_INT_BITS, JSONValue, Limits, b64, fail, show_key

# -------------------------------------------------------------------------------------------------------------- CBOR

class DecimalFraction:
    """CBOR tag 4 (RFC 8949 section 3.4.4), kept only while decoding SenML CBOR, where RFC 8428 section 6 allows it
    for numbers; anywhere else it is refused."""

    __slots__ = ("exponent", "mantissa")

    def __init__(self, exponent: int, mantissa: int) -> None:
        self.exponent = exponent
        self.mantissa = mantissa

    def to_float(self) -> float:
        """The nearest double, as RFC 8428 reads a SenML number; refused if out of the double range."""
        if self.mantissa == 0:
            return 0.0
        if self.exponent > 100_000:  # |mantissa| >= 1, so the value is over 1e100000
            fail("CBOR tag 4 (decimal fraction): number out of range")
        if self.exponent < -100_000:  # |mantissa| < 2**4096 < 1e1234, so the value is under 1e-98000
            fail("CBOR tag 4 (decimal fraction): number underflows to zero")
        digits = tuple(int(d) for d in str(abs(self.mantissa)))
        value = float(Decimal((1 if self.mantissa < 0 else 0, digits, self.exponent)))
        if not math.isfinite(value):
            fail("CBOR tag 4 (decimal fraction): number out of range")
        if value == 0.0:
            fail("CBOR tag 4 (decimal fraction): number underflows to zero")
        return value


#: A decoded CBOR item before the JSON mapping: byte strings are still bytes and map keys still text or integers.
Raw: TypeAlias = Union[bool, int, float, str, bytes, DecimalFraction, list["Raw"],  # noqa: UP007
                        dict[Union[str, int], "Raw"], None]  # noqa: UP007

#: Names of tags that are refused (RFC 8949 section 3.4 and the IANA CBOR Tags registry), for the diagnostic.
_TAG_NAMES = {
    4: "decimal fraction", 5: "bigfloat", 16: "COSE_Encrypt0", 17: "COSE_Mac0", 18: "COSE_Sign1",
    21: "expected base64url encoding", 22: "expected base64 encoding", 23: "expected base16 encoding",
    25: "string reference", 26: "Perl object", 27: "language-independent object", 28: "shareable value",
    29: "shared reference", 30: "rational number", 33: "base64url text", 34: "base64 text",
    35: "regular expression", 36: "MIME message", 52: "IPv4 address", 54: "IPv6 address", 61: "CBOR Web Token",
    96: "COSE_Encrypt", 97: "COSE_Mac", 98: "COSE_Sign", 100: "days since the epoch",
    256: "string reference namespace", 258: "set", 260: "network address", 261: "network address prefix",
    1004: "full-date string",
}
#: The tags that are mapped (see :meth:`CborDecoder.tag`), with the names their diagnostics use.
_KEPT_TAGS = {0: "date/time string", 1: "epoch date/time", 2: "unsigned bignum", 3: "negative bignum",
              24: "encoded CBOR data item", 32: "URI", 37: "UUID"}
_SELF_DESCRIBED = 55799

#: RFC 3339 date-time as refined by RFC 4287 section 3.3 (upper-case T and Z), which RFC 8949 requires of tag 0.
_DATE_TIME = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:"
                        r"([0-5][0-9]|60)(\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])", re.ASCII)

_HALF, _SINGLE, _DOUBLE = struct.Struct(">e"), struct.Struct(">f"), struct.Struct(">d")
_INDEFINITE = -1  # the argument of a head with additional information 31


def _tag_text(number: int) -> str:
    name = _KEPT_TAGS.get(number) or _TAG_NAMES.get(number)
    if name is None and 64 <= number <= 87:
        name = "typed array"
    return f"CBOR tag {number} ({name})" if name else f"CBOR tag {number}"


def describe(value: Raw) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a text string"
    if isinstance(value, bytes):
        return "a byte string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, DecimalFraction):
        return "a decimal fraction"
    return "null"


def check_int(value: int, where: str) -> int:
    if value.bit_length() > MAX_INT_BITS:
        fail(f"{where}: integer too large (over {MAX_INT_BITS} bits)")
    return value


class Array:
    __slots__ = ("items", "left")

    def __init__(self, left: int) -> None:
        self.items: list[Raw] = []
        self.left = left  # elements still to come, or _INDEFINITE


class Map:
    __slots__ = ("has_key", "items", "key", "left")

    def __init__(self, left: int) -> None:
        self.items: dict[str | int, Raw] = {}
        self.left = left  # entries still to come, or _INDEFINITE
        self.key: str | int = 0
        self.has_key = False


class Embedded:
    """A tag 24 being decoded: the outer input to return to once its one data item is complete."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: memoryview, pos: int, end: int) -> None:
        self.buf, self.pos, self.end = buf, pos, end


_Frame: TypeAlias = Union[Array, Map, Embedded]  # noqa: UP007


class CborDecoder:
    """One CBOR data item (RFC 8949) -> :data:`Raw`, iteratively, within the limits."""

    def __init__(self, data: bytes, limits: Limits, *, senml: bool) -> None:
        self.buf = memoryview(data)
        self.pos = 0
        self.end = len(data)
        self.limits = limits
        self.senml = senml

    # -- the input

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes; a length beyond what remains is refused before anything is allocated."""
        if n > self.end - self.pos:
            fail("CBOR: truncated")
        start = self.pos
        self.pos += n
        return self.buf[start:self.pos]

    def head(self) -> tuple[int, int, int]:
        """(major type, additional information, argument); the argument is _INDEFINITE for additional
        information 31, which only byte and text strings, arrays, maps and the break code may use."""
        if self.pos >= self.end:
            fail("CBOR: truncated")
        initial = self.buf[self.pos]
        self.pos += 1
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info <= 27:
            return major, info, int.from_bytes(self.take(1 << (info - 24)), "big")
        if info == 31:
            if major in (0, 1, 6):
                fail(f"CBOR: not well-formed (indefinite length with major type {major})")
            return major, info, _INDEFINITE
        fail(f"CBOR: not well-formed (reserved additional information {info})")

    def remaining(self) -> int:
        return self.end - self.pos

    # -- items

    def text(self, chunk: memoryview) -> str:
        try:
            return str(chunk, "utf-8")
        except UnicodeDecodeError:
            fail("CBOR: invalid UTF-8 in a text string")

    def string(self, major: int, length: int) -> bytes | str:
        """A byte (major 2) or text (major 3) string; an indefinite-length one is a series of definite-length
        chunks of the same type, each text chunk valid UTF-8 on its own (RFC 8949 section 3.2.3)."""
        if length != _INDEFINITE:
            chunk = self.take(length)
            return bytes(chunk) if major == 2 else self.text(chunk)
        parts: list[bytes] = []
        texts: list[str] = []
        while True:
            m, info, n = self.head()
            if m == 7 and info == 31:
                return b"".join(parts) if major == 2 else "".join(texts)
            if m != major or n == _INDEFINITE:
                fail("CBOR: not well-formed (bad chunk in an indefinite-length string)")
            chunk = self.take(n)
            if major == 2:
                parts.append(bytes(chunk))
            else:
                texts.append(self.text(chunk))

    def simple(self, info: int, arg: int) -> Raw:
        """Major type 7: false, true, null and finite floats; the rest is refused."""
        if info == 25 or info == 26 or info == 27:
            codec = _HALF if info == 25 else _SINGLE if info == 26 else _DOUBLE
            value: float = codec.unpack(arg.to_bytes(codec.size, "big"))[0]
            if math.isnan(value):
                fail("CBOR: NaN is not representable in JSON")
            if math.isinf(value):
                fail(f"CBOR: {'-' if value < 0 else ''}Infinity is not representable in JSON")
            return value
        if info == 24 and arg < 32:
            fail(f"CBOR: not well-formed (simple value {arg} in two bytes)")
        if arg == 20:
            return False
        if arg == 21:
            return True
        if arg == 22:
            return None
        if arg == 23:
            fail("CBOR undefined is not supported")
        fail(f"CBOR simple value {arg} is not supported")

    def number(self, major: int, info: int, arg: int) -> int | float | None:
        """An integer (major 0 or 1) or a float, or None if the head is neither."""
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 7 and 25 <= info <= 27:
            value = self.simple(info, arg)
            assert isinstance(value, float)
            return value
        return None

    def bignum(self, tag: int) -> int:
        major, _, arg = self.head()
        if major != 2:
            fail(f"{_tag_text(tag)} must enclose a byte string")
        data = self.string(2, arg)
        assert isinstance(data, bytes)
        n = int.from_bytes(data, "big")
        return check_int(n if tag == 2 else -1 - n, "CBOR")

    def integer(self, tag: int) -> int:
        """An integer inside tag ``tag``: major type 0 or 1, or a bignum (tags 2 and 3)."""
        major, _, arg = self.head()
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 6 and arg in (2, 3):
            return self.bignum(arg)
        fail(f"{_tag_text(tag)} must enclose integers")

    def tag(self, number: int) -> Raw | Embedded:
        """The JSON-ready value of a tag other than 55799, or the frame of a tag 24 whose item is to be decoded."""
        if number in (0, 32):
            major, _, arg = self.head()
            if major != 3:
                fail(f"{_tag_text(number)} must enclose a text string")
            text = self.string(3, arg)
            assert isinstance(text, str)
            if number == 0 and not _DATE_TIME.fullmatch(text):
                fail("CBOR tag 0 (date/time string) must enclose an RFC 3339 date-time")
            return text
        if number == 1:
            major, info, arg = self.head()
            value = self.number(major, info, arg)
            if value is None:
                fail("CBOR tag 1 (epoch date/time) must enclose an integer or a float")
            return value
        if number in (2, 3):
            return self.bignum(number)
        if number == 37:
            major, _, arg = self.head()
            data = self.string(2, arg) if major == 2 else None
            if not isinstance(data, bytes) or len(data) != 16:
                fail("CBOR tag 37 (UUID) must enclose a byte string of 16 bytes")
            return str(uuid.UUID(bytes=data))
        if number == 24:
            major, _, arg = self.head()
            if major != 2:
                fail("CBOR tag 24 (encoded CBOR data item) must enclose a byte string")
            if arg == _INDEFINITE:
                data = self.string(2, arg)
                assert isinstance(data, bytes)
                inner = memoryview(data)
            else:
                inner = self.take(arg)
            frame = Embedded(self.buf, self.pos, self.end)
            self.buf, self.pos, self.end = inner, 0, len(inner)
            return frame
        if number == 4 and self.senml:
            major, _, arg = self.head()
            if major != 4 or arg != 2:
                fail("CBOR tag 4 (decimal fraction) must enclose an array of two integers")
            self.limits.add_items(2)
            exponent = self.integer(4)
            mantissa = self.integer(4)
            if exponent.bit_length() > 64:
                fail("CBOR tag 4 (decimal fraction): exponent out of range")
            return DecimalFraction(exponent, mantissa)
        fail(f"{_tag_text(number)} is not supported")

    def decode(self) -> Raw:
        """The one data item that makes up the whole input."""
        limits = self.limits
        stack: list[_Frame] = []
        depth = 0  # arrays, maps and tag 24 items open on the stack
        while True:
            # Read one data item: a complete value, or a container (or tag 24) opened on the stack.
            tagged = False
            major, info, arg = self.head()
            while major == 6 and arg == _SELF_DESCRIBED:  # self-described CBOR: transparent
                tagged = True
                major, info, arg = self.head()
            value: Raw
            if major == 7 and info == 31:
                top = stack[-1] if stack and not tagged else None
                if not isinstance(top, (Array, Map)) or top.left != _INDEFINITE or (
                        isinstance(top, Map) and top.has_key):
                    fail("CBOR: not well-formed (unexpected break)")
                value = top.items
                stack.pop()
                depth -= 1
            elif major == 4 or major == 5:
                depth += 1
                limits.check_depth(depth)
                if arg != _INDEFINITE:
                    if arg * (1 if major == 4 else 2) > self.remaining():
                        fail("CBOR: truncated")
                    limits.add_items(arg)
                if arg == 0:
                    value = [] if major == 4 else {}
                    depth -= 1
                else:
                    stack.append(Array(arg) if major == 4 else Map(arg))
                    continue
            elif major == 6:
                result = self.tag(arg)
                if isinstance(result, Embedded):
                    depth += 1
                    limits.check_depth(depth)
                    stack.append(result)
                    continue
                value = result
                tagged = True
            elif major == 2 or major == 3:
                value = self.string(major, arg)
            elif major == 7:
                value = self.simple(info, arg)
            else:
                value = arg if major == 0 else -1 - arg
            # Hand the value to the containers above it, closing each one it completes.
            while True:
                if not stack:
                    if self.pos != self.end:
                        fail(f"CBOR: {self.end - self.pos} bytes after the data item")
                    return value
                top = stack[-1]
                if isinstance(top, Embedded):
                    if self.pos != self.end:
                        fail(f"CBOR tag 24 (encoded CBOR data item): {self.end - self.pos} bytes after the "
                              "data item")
                    self.buf, self.pos, self.end = top.buf, top.pos, top.end
                    stack.pop()
                    depth -= 1
                    tagged = True
                    continue
                if isinstance(top, Array):
                    top.items.append(value)
                    if top.left == _INDEFINITE:
                        limits.add_items(1)
                        break
                    top.left -= 1
                    if top.left:
                        break
                    value = top.items
                elif not top.has_key:
                    top.key = self.map_key(value, tagged, top)
                    top.has_key = True
                    if top.left == _INDEFINITE:
                        limits.add_items(1)
                    break
                else:
                    top.items[top.key] = value
                    top.has_key = False
                    if top.left == _INDEFINITE:
                        break
                    top.left -= 1
                    if top.left:
                        break
                    value = top.items
                stack.pop()
                depth -= 1
                tagged = False

    @staticmethod
    def map_key(key: Raw, tagged: bool, frame: Map) -> str | int:
        if tagged:
            fail("CBOR: a map key must be a text string or an integer, not a tagged item")
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            fail(f"CBOR: a map key must be a text string or an integer, not {describe(key)}")
        if key in frame.items:
            fail(f"CBOR: duplicate map key {show_key(key)}")
        return key


def _scalar_to_json(value: Raw) -> JSONValue:
    if isinstance(value, bytes):
        return b64(value)
    if isinstance(value, DecimalFraction):
        fail("CBOR tag 4 (decimal fraction) is not supported outside SenML numbers")
    assert not isinstance(value, (list, dict))
    return value


def _convert_key(key: str | int, out: dict[str, JSONValue]) -> str:
    """A CBOR map key in JSON: text as is, an integer in decimal; refused if another key of the map already
    became the same string (1 and "1")."""
    name = key if isinstance(key, str) else str(key)
    if name in out:  # the map had no duplicates, so the other key is the same number or text in the other type
        other: str | int = int(name) if isinstance(key, str) else name
        fail(f"CBOR: map keys {show_key(other)} and {show_key(key)} are the same in JSON")
    return name


def to_json(raw: Raw) -> JSONValue:
    """Byte strings -> base64, integer keys -> decimal strings (refusing collisions), iteratively."""
    if not isinstance(raw, (list, dict)):
        return _scalar_to_json(raw)
    root: list[JSONValue] | dict[str, JSONValue] = [] if isinstance(raw, list) else {}
    stack: list[tuple[list[Raw] | dict[str | int, Raw], list[JSONValue] | dict[str, JSONValue]]] = [(raw, root)]
    while stack:
        src, dst = stack.pop()
        pairs = enumerate(src) if isinstance(src, list) else src.items()
        for key, item in pairs:
            child: JSONValue
            if isinstance(item, list):
                child = []
                stack.append((item, child))
            elif isinstance(item, dict):
                child = {}
                stack.append((item, child))
            else:
                child = _scalar_to_json(item)
            if isinstance(dst, list):
                dst.append(child)
            else:
                dst[_convert_key(key, dst)] = child
    return root
