"""Bounds-checked reading and writing of DTLS wire formats.

Every ``pull_*`` raises :class:`BufferReadError` (a ``decode_error`` alert) when the data runs out, so a
truncated datagram can never index past its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .errors import DecodeError

_U16 = 1 << 16
_U24 = 1 << 24
_U48 = 1 << 48


class BufferReadError(DecodeError):
    """Raised when a read goes past the end of the data or a length prefix is inconsistent."""


class Buffer:
    """A cursor over immutable input bytes (``data``) or a growable output (``capacity`` form)."""

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes = b"", end: int | None = None) -> None:
        self._data = data
        self._pos = 0
        self._end = len(data) if end is None else end

    # -- reading ---------------------------------------------------------------------------------
    def eof(self) -> bool:
        return self._pos >= self._end

    def tell(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return self._end - self._pos

    def pull_bytes(self, n: int) -> bytes:
        if n < 0 or self._pos + n > self._end:
            raise BufferReadError("read past end of data")
        v = self._data[self._pos : self._pos + n]
        self._pos += n
        return v

    def pull_uint8(self) -> int:
        if self._pos + 1 > self._end:
            raise BufferReadError("read past end of data")
        v = self._data[self._pos]
        self._pos += 1
        return v

    def pull_uint16(self) -> int:
        return int.from_bytes(self.pull_bytes(2), "big")

    def pull_uint24(self) -> int:
        return int.from_bytes(self.pull_bytes(3), "big")

    def pull_uint32(self) -> int:
        return int.from_bytes(self.pull_bytes(4), "big")

    def pull_uint48(self) -> int:
        return int.from_bytes(self.pull_bytes(6), "big")

    def pull_vector(self, length_size: int, minimum: int = 0, maximum: int | None = None) -> bytes:
        """Read a ``<minimum..maximum>`` vector with a ``length_size``-byte length prefix."""
        n = int.from_bytes(self.pull_bytes(length_size), "big")
        if n < minimum or (maximum is not None and n > maximum):
            raise BufferReadError("vector length out of range")
        return self.pull_bytes(n)

    @contextmanager
    def pull_block(self, length_size: int) -> Iterator[int]:
        """Limit reads to a length-prefixed block; the block must be consumed exactly."""
        n = int.from_bytes(self.pull_bytes(length_size), "big")
        end = self._pos + n
        if end > self._end:
            raise BufferReadError("block longer than data")
        outer_end = self._end
        self._end = end
        try:
            yield n
        finally:
            self._end = outer_end
        if self._pos != end:
            raise BufferReadError("trailing bytes in block")


class Writer:
    """An append-only output buffer with the push counterparts of :class:`Buffer`."""

    __slots__ = ("_out",)

    def __init__(self) -> None:
        self._out = bytearray()

    def data(self) -> bytes:
        return bytes(self._out)

    def push_bytes(self, v: bytes) -> None:
        self._out += v

    def push_uint8(self, v: int) -> None:
        self._out.append(v)

    def push_uint16(self, v: int) -> None:
        self._out += v.to_bytes(2, "big")

    def push_uint24(self, v: int) -> None:
        self._out += v.to_bytes(3, "big")

    def push_uint32(self, v: int) -> None:
        self._out += v.to_bytes(4, "big")

    def push_uint48(self, v: int) -> None:
        self._out += v.to_bytes(6, "big")

    def push_vector(self, length_size: int, v: bytes) -> None:
        if len(v) >= 1 << (8 * length_size):
            raise ValueError("vector too long for its length prefix")
        self._out += len(v).to_bytes(length_size, "big")
        self._out += v

    @contextmanager
    def push_block(self, length_size: int) -> Iterator[None]:
        """Write a length prefix that covers whatever is pushed inside the ``with`` block."""
        start = len(self._out)
        self._out += bytes(length_size)
        yield
        n = len(self._out) - start - length_size
        if n >= 1 << (8 * length_size):
            raise ValueError("block too long for its length prefix")
        self._out[start : start + length_size] = n.to_bytes(length_size, "big")


__all__ = ["_U16", "_U24", "_U48", "Buffer", "BufferReadError", "Writer"]
