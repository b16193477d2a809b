"""A store of per-session entries with a price in bytes: bounded per session (entries and bytes) and in total
bytes, expired lazily (no timers), oldest first out. The deduplication cache, the Block1 assemblies and the
Block2 cache of the CoAPs server are each one of these.

Every entry lives ``lifetime`` seconds from when it was put (or last refreshed); since the lifetime is the same
for all entries, insertion order is expiry order, and expiring is popping from the front. Nothing here knows
about asyncio or sockets: ``now`` is passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

S = TypeVar("S", bound=Hashable)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Entry(Generic[S, K, V]):
    __slots__ = ("cost", "expires", "key", "session", "value")

    def __init__(self, session: S, key: K, value: V, cost: int, expires: float) -> None:
        self.session = session
        self.key = key
        self.value = value
        self.cost = cost
        self.expires = expires


class _Session(Generic[S, K, V]):
    __slots__ = ("bytes", "entries")

    def __init__(self) -> None:
        self.entries: OrderedDict[K, _Entry[S, K, V]] = OrderedDict()
        self.bytes = 0


class BoundedStore(Generic[S, K, V]):
    """Entries ``(session, key) -> value``, each costing ``cost`` bytes (the caller's estimate of what it holds).

    Beyond ``max_session_entries`` or ``max_session_bytes`` in one session, that session's oldest entries go;
    beyond ``max_total_bytes``, the oldest entries of any session go. An entry that alone exceeds a byte bound
    is not stored. ``evicted`` and ``expired`` count what left early and what timed out.
    """

    def __init__(self, *, lifetime: float, max_total_bytes: int, max_session_bytes: int | None = None,
                 max_session_entries: int | None = None) -> None:
        self.lifetime = lifetime
        self.max_total_bytes = max_total_bytes
        self.max_session_bytes = max_session_bytes
        self.max_session_entries = max_session_entries
        self._order: OrderedDict[tuple[S, K], _Entry[S, K, V]] = OrderedDict()
        self._sessions: dict[S, _Session[S, K, V]] = {}
        self.total_bytes = 0
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._order)

    def session_entries(self, session: S) -> int:
        found = self._sessions.get(session)
        return len(found.entries) if found is not None else 0

    def session_bytes(self, session: S) -> int:
        found = self._sessions.get(session)
        return found.bytes if found is not None else 0

    def fits(self, extra: int) -> bool:
        """Whether ``extra`` more bytes stay within the total bound (for callers that refuse rather than evict)."""
        return self.total_bytes + extra <= self.max_total_bytes

    def get(self, session: S, key: K, now: float) -> V | None:
        """The live value, or None. Does not refresh the entry."""
        self.expire(now)
        found = self._sessions.get(session)
        if found is None:
            return None
        entry = found.entries.get(key)
        return entry.value if entry is not None else None

    def put(self, session: S, key: K, value: V, cost: int, now: float, *, refresh: bool = True) -> bool:
        """Store or replace an entry; False if it was not kept (too large, or evicted at once as the oldest).

        ``refresh``: the entry becomes the newest and lives ``lifetime`` from ``now``; without it, a replaced
        entry keeps its place and expiry (a new one is always the newest)."""
        self.expire(now)
        limit = self.max_session_bytes
        if cost > self.max_total_bytes or (limit is not None and cost > limit):
            self.pop(session, key)
            return False
        found = self._sessions.get(session)
        if found is None:
            found = self._sessions[session] = _Session()
        entry = found.entries.get(key)
        if entry is None:
            entry = _Entry(session, key, value, cost, now + self.lifetime)
            found.entries[key] = entry
            self._order[(session, key)] = entry
        else:
            found.bytes -= entry.cost
            self.total_bytes -= entry.cost
            entry.value, entry.cost = value, cost
            if refresh:
                entry.expires = now + self.lifetime
                found.entries.move_to_end(key)
                self._order.move_to_end((session, key))
        found.bytes += cost
        self.total_bytes += cost
        count = self.max_session_entries
        while (count is not None and len(found.entries) > count) or (limit is not None and found.bytes > limit):
            self._remove(next(iter(found.entries.values())))
            self.evicted += 1
        while self.total_bytes > self.max_total_bytes:
            self._remove(next(iter(self._order.values())))
            self.evicted += 1
        return found.entries.get(key) is entry

    def pop(self, session: S, key: K) -> V | None:
        found = self._sessions.get(session)
        entry = found.entries.get(key) if found is not None else None
        if entry is None:
            return None
        self._remove(entry)
        return entry.value

    def drop_session(self, session: S) -> int:
        """Forget every entry of ``session``; returns how many there were."""
        found = self._sessions.pop(session, None)
        if found is None:
            return 0
        for key in found.entries:
            del self._order[(session, key)]
        self.total_bytes -= found.bytes
        return len(found.entries)

    def expire(self, now: float) -> int:
        """Drop the entries whose lifetime is over; returns how many."""
        order = self._order
        count = 0
        while order:
            entry = next(iter(order.values()))
            if entry.expires > now:
                break
            self._remove(entry)
            count += 1
        self.expired += count
        return count

    def _remove(self, entry: _Entry[S, K, V]) -> None:
        del self._order[(entry.session, entry.key)]
        found = self._sessions[entry.session]
        del found.entries[entry.key]
        found.bytes -= entry.cost
        self.total_bytes -= entry.cost
        if not found.entries:
            del self._sessions[entry.session]


class StoreBacked(Generic[K, V]):
    """What a cache built on one :class:`BoundedStore` (``self._store``, sessions of any hashable) reports."""

    _store: BoundedStore[Hashable, K, V]

    def drop_session(self, session: Hashable) -> int:
        return self._store.drop_session(session)

    def __len__(self) -> int:
        return len(self._store)

    @property
    def total_bytes(self) -> int:
        return self._store.total_bytes

    @property
    def evicted(self) -> int:
        return self._store.evicted

    @property
    def expired(self) -> int:
        return self._store.expired
