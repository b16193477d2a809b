"""The connection IDs of a server front's connections (RFC 9146), and the return routability checks in flight
(RFC 9853). :class:`iotdtls.DTLSServer` owns one and decides, per record, whether a session moves."""

from __future__ import annotations

from collections.abc import Callable, Hashable

from .connection import DTLSConnection
from .rrc import CHALLENGE_TIMEOUT

Address = Hashable
#: Random draws before a server gives up finding a CID no live connection uses (the session goes without one).
CID_ATTEMPTS = 8


class CidRoutes:
    """Connections by the CID their peer puts in its records; at most one pending path challenge each."""

    def __init__(self, length: int, random: Callable[[int], bytes], stats: dict[str, int]) -> None:
        #: The length of the CIDs this front hands out (0: none); records are looked up by it.
        self.length = length
        self._random = random
        self._stats = stats
        self._by_cid: dict[bytes, DTLSConnection] = {}
        self._checks: dict[DTLSConnection, tuple[Address, float]] = {}

    def __len__(self) -> int:
        return len(self._by_cid)

    def new_cid(self, length: int) -> bytes | None:
        """A random CID that no live connection uses: it says nothing about the session or the device."""
        if length == 0:
            return b""
        for _ in range(CID_ATTEMPTS):
            cid = self._random(length)
            if cid not in self._by_cid:
                return cid
        self._stats["cid_exhausted"] += 1
        return None

    def add(self, conn: DTLSConnection) -> None:
        cid = conn.connection_id
        if cid:
            self._by_cid[cid] = conn

    def discard(self, conn: DTLSConnection) -> None:
        cid = conn.connection_id
        if cid and self._by_cid.get(cid) is conn:
            del self._by_cid[cid]
        self._checks.pop(conn, None)

    def lookup(self, data: bytes) -> DTLSConnection | None:
        """The connection a tls12_cid datagram is for (counted as dropped when none)."""
        conn = self._by_cid.get(data[11 : 11 + self.length])
        if conn is None:
            self._stats["dropped_unknown_cid"] += 1
        return conn

    def challenge(self, conn: DTLSConnection, addr: Address, now: float) -> bytes | None:
        """RFC 9853 basic procedure: a path_challenge record to send to ``addr``, unless one is already out
        there and still awaited."""
        pending = self._checks.get(conn)
        if pending is not None and pending[0] == addr and now <= pending[1]:
            return None
        record = conn.path_challenge()
        if record is None:
            return None
        self._checks[conn] = (addr, now + CHALLENGE_TIMEOUT)
        self._stats["path_challenges"] += 1
        return record

    def answered(self, conn: DTLSConnection, addr: Address, now: float) -> bool:
        """The connection just received the answer to its challenge: True if it came, in time, from the
        address that was challenged."""
        pending = self._checks.pop(conn, None)
        return pending is not None and pending[0] == addr and now <= pending[1]
