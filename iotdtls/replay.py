"""Sliding anti-replay window (RFC 6347 section 4.1.2.6)."""

from __future__ import annotations


class ReplayWindow:
    """Tracks the highest sequence number seen and a bitmap of the ``size`` numbers below it."""

    __slots__ = ("_bits", "_mask", "_size", "top")

    def __init__(self, size: int = 64) -> None:
        if size < 1:
            raise ValueError("replay window must hold at least one entry")
        self._size = size
        self._mask = (1 << size) - 1
        self._bits = 0  # bit i set <=> (top - i) seen
        self.top = -1

    def is_fresh(self, seq: int) -> bool:
        """True when ``seq`` has not been seen and is not too old for the window."""
        top = self.top
        if seq > top:
            return True
        diff = top - seq
        return diff < self._size and not (self._bits >> diff) & 1

    def state(self) -> tuple[int, int]:
        """A snapshot that changes whenever a record is marked (to tell whether a datagram authenticated)."""
        return self.top, self._bits

    def mark(self, seq: int) -> None:
        """Record ``seq`` as seen; call only after the record authenticated."""
        top = self.top
        if seq > top:
            shift = seq - top
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self._size else 1
            self.top = seq
        else:
            self._bits |= 1 << (top - seq)
