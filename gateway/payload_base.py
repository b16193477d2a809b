"""What the payload decoders share: the JSON value type, :class:`PayloadError` and its codes, the bounds, and
helpers for diagnostics (one short line, quoting at most a few characters of the input)."""

from __future__ import annotations

import base64
from typing import NoReturn, TypeAlias, Union

#: What :func:`json.dumps` takes: the value of the envelope's ``data`` field.
JSONValue: TypeAlias = Union[bool, int, float, str, list["JSONValue"], dict[str, "JSONValue"], None]  # noqa: UP007


#: Integers are accepted up to this many bits of magnitude (about 1233 decimal digits), from CBOR and from JSON
#: alike: far beyond any reading, and well under CPython's default limit for int <-> str conversion (4300 digits).
MAX_INT_BITS = 4096
MAX_INT_DIGITS = 1234  # len(str(2**4096)); a longer JSON integer literal is refused before it is converted

#: The largest ``max_depth`` :func:`decode_payload` takes: the json module parses and writes nested values by
#: recursion, which stays far from Python's recursion limit at this depth.
MAX_DEPTH_LIMIT = 256

class PayloadError(Exception):
    """A body the gateway refuses. ``code`` is the CoAP response code ("4.00", "4.13" or "4.15"); ``diagnostic``
    is one short line of printable ASCII, safe to send back as the diagnostic payload and to log: it quotes at
    most a few characters of the input (a map key, for example)."""

    def __init__(self, code: str, diagnostic: str) -> None:
        super().__init__(f"{code} {diagnostic}")
        self.code = code
        self.diagnostic = diagnostic


#: The codes of :class:`PayloadError`.
BAD_REQUEST = "4.00"
REQUEST_ENTITY_TOO_LARGE = "4.13"
UNSUPPORTED_CONTENT_FORMAT = "4.15"


def fail(diagnostic: str) -> NoReturn:
    raise PayloadError(BAD_REQUEST, diagnostic)


_QUOTE_CHARS = 16


def quote(text: str) -> str:
    """``text`` for a diagnostic: at most 16 characters, printable ASCII (others escaped), in single quotes."""
    out = []
    for ch in text[:_QUOTE_CHARS]:
        if " " <= ch <= "~" and ch not in "'\\":
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "'" + "".join(out) + ("...'" if len(text) > _QUOTE_CHARS else "'")


def show_key(key: str | int) -> str:
    return quote(key) if isinstance(key, str) else str(key)


def b64(data: bytes) -> str:
    """Standard base64 with padding (RFC 4648 section 4): how byte strings appear in the JSON output."""
    return base64.b64encode(data).decode("ascii")


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 4648 section 5): SenML's ``vd`` (RFC 8428 section 5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")



class Limits:
    __slots__ = ("items", "max_depth", "max_items")

    def __init__(self, max_depth: int, max_items: int) -> None:
        self.max_depth = max_depth
        self.max_items = max_items
        self.items = 0

    def add_items(self, n: int) -> None:
        self.items += n
        if self.items > self.max_items:
            fail(f"more than {self.max_items} items")

    def check_depth(self, depth: int) -> None:
        if depth > self.max_depth:
            fail(f"nesting deeper than {self.max_depth}")
