"""Who gets a handshake slot and a session when the server is full: pure bookkeeping for :class:`DTLSServer`.

Nothing here touches sockets or clocks. Handshakes in progress are grouped by source network (an IPv4 address,
or the /64 prefix of an IPv6 address, since one IPv6 host usually owns a whole /64), so that one network cannot
hold more than its share of the handshake table. Established sessions are kept in least-recently-active order
and indexed by identity, so a new session of an identity can replace the old one and a full table can make
room for a newcomer.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

C = TypeVar("C", bound=Hashable)

#: How far a handshake has come: a victim is chosen among the least advanced first (see ``HandshakeSlots``).
Progress = int


def network_of(addr: object) -> Hashable:
    """The source network an address belongs to: an IPv4 address, an IPv6 /64 prefix (IPv4-mapped IPv6
    addresses count as their IPv4 address), or the address itself when it is not an IP socket address."""
    if not isinstance(addr, tuple) or not addr or not isinstance(addr[0], str):
        return addr
    host: str = addr[0]
    if ":" not in host:
        return host
    try:
        ip6 = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip6.ipv4_mapped is not None:
        return str(ip6.ipv4_mapped)
    return ("v6", int(ip6) >> 64)


class HandshakeSlots(Generic[C]):
    """Handshakes in progress, bounded in total and per source network.

    :meth:`admit` decides for a new cookie-verified ClientHello from ``network``: take a free slot, evict a
    handshake (the least advanced, then the oldest) from a network that holds more than its share, or refuse.
    A network at ``per_network`` is refused (its clients retry on their timers while its handshakes in
    progress finish; evicting its own would churn a burst of clients behind one NAT). When the whole table is
    full, a network takes a slot from the network with the most handshakes only while that one holds at least
    two more than it does, so equal shares are never churned.
    """

    def __init__(self, total: int, per_network: int) -> None:
        if total < 1 or per_network < 1:
            raise ValueError("handshake limits must be at least 1")
        self.total = total
        self.per_network = per_network
        self._by_network: dict[Hashable, dict[C, tuple[float, int]]] = {}
        self._network_of: dict[C, Hashable] = {}

    def __len__(self) -> int:
        return len(self._network_of)

    def __contains__(self, conn: object) -> bool:
        return conn in self._network_of

    def count(self, network: Hashable) -> int:
        group = self._by_network.get(network)
        return len(group) if group else 0

    def add(self, conn: C, network: Hashable, started: float, order: int) -> None:
        self._network_of[conn] = network
        self._by_network.setdefault(network, {})[conn] = (started, order)

    def discard(self, conn: C) -> None:
        network = self._network_of.pop(conn, None)
        if network is None:
            return
        group = self._by_network[network]
        del group[conn]
        if not group:
            del self._by_network[network]

    def admit(self, network: Hashable, progress: Callable[[C], Progress]) -> tuple[bool, C | None]:
        """``(admitted, victim)``: whether a new handshake from ``network`` may start, and which handshake
        must make room for it first (``None``: a slot is free). ``progress`` ranks the candidates."""
        own = self.count(network)
        if own >= self.per_network:
            return False, None
        if len(self) < self.total:
            return True, None
        biggest = max(self._by_network, key=lambda n: len(self._by_network[n]))
        if len(self._by_network[biggest]) >= own + 2:
            return True, self._least_advanced(biggest, progress)
        return False, None

    def _least_advanced(self, network: Hashable, progress: Callable[[C], Progress]) -> C:
        group = self._by_network[network]
        return min(group, key=lambda c: (progress(c), group[c]))


class SessionTable(Generic[C]):
    """Established sessions: least recently active first, indexed by identity and, for anonymous peers (those
    that authenticated with nothing), by source network. Per session it costs one ordered-dict entry (whose
    value is the identity) and one small list entry; anonymous sessions are kept in two more ordered dicts."""

    def __init__(self) -> None:
        #: every session, least recently active first, with its identity (b"" for anonymous)
        self._lru: OrderedDict[C, bytes] = OrderedDict()
        #: sessions per identity, oldest first (usually one)
        self._by_identity: dict[bytes, list[C]] = {}
        self._anonymous_lru: OrderedDict[C, Hashable] = OrderedDict()  # value: the source network
        #: anonymous sessions per source network, least recently active first
        self._anonymous: dict[Hashable, OrderedDict[C, None]] = {}

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, conn: object) -> bool:
        return conn in self._lru

    def add(self, conn: C, identity: bytes, network: Hashable) -> None:
        self._lru[conn] = identity
        if identity:
            self._by_identity.setdefault(identity, []).append(conn)
        else:
            self._anonymous_lru[conn] = network
            self._anonymous.setdefault(network, OrderedDict())[conn] = None

    def discard(self, conn: C) -> None:
        identity = self._lru.pop(conn, None)
        if identity is None:
            return
        if identity:
            group = self._by_identity[identity]
            group.remove(conn)
            if not group:
                del self._by_identity[identity]
            return
        network = self._anonymous_lru.pop(conn)
        members = self._anonymous[network]
        del members[conn]
        if not members:
            del self._anonymous[network]

    def touch(self, conn: C) -> None:
        """``conn`` was just active: it becomes the most recently active session."""
        lru = self._lru
        if conn in lru:
            lru.move_to_end(conn)
            network = self._anonymous_lru.get(conn)
            if network is not None:
                self._anonymous_lru.move_to_end(conn)
                self._anonymous[network].move_to_end(conn)

    def anonymous(self, conn: C) -> bool:
        return conn in self._anonymous_lru

    def identity_excess(self, identity: bytes, cap: int) -> list[C]:
        """Sessions of ``identity`` beyond the ``cap`` most recently established, oldest first."""
        group = self._by_identity.get(identity)
        if not group or len(group) <= cap:
            return []
        return group[: len(group) - cap]

    def anonymous_excess(self, network: Hashable, cap: int, keep: C) -> list[C]:
        """Anonymous sessions from ``network`` beyond ``cap``, least recently active first, never ``keep``."""
        members = self._anonymous.get(network)
        if not members or len(members) <= cap:
            return []
        return [c for c in members if c is not keep][: len(members) - cap]

    def eviction_victim(self, newcomer: C) -> C | None:
        """The session to evict so that ``newcomer`` fits: the least recently active anonymous session if there
        is one; otherwise, for an authenticated newcomer, the least recently active session. An anonymous
        newcomer never displaces an authenticated device: it is the victim itself then. ``None`` if the
        newcomer is the only session."""
        for conn in self._anonymous_lru:
            if conn is not newcomer:
                return conn
        if self.anonymous(newcomer):
            return newcomer
        for conn in self._lru:
            if conn is not newcomer:
                return conn
        return None
