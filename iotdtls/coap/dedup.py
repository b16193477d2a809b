"""Message deduplication (RFC 7252 section 4.5) for the CoAPs server, bounded.

Every request's message ID is remembered for EXCHANGE_LIFETIME (247 s) with the encoded reply that went back
under that ID (the piggybacked ACK, an empty ACK or an RST), so a retransmitted confirmable request gets the same
bytes again instead of running twice. Unlike aiocoap's own cache (a ``Message`` per request, which references
the request, and a ``loop.call_later`` timer each), an entry holds bytes only and expires lazily; the cache is
bounded in bytes per session and in total, oldest entries first out.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable

from .bounded import BoundedStore, StoreBacked

#: RFC 7252 section 4.8.2, with the default transmission parameters.
EXCHANGE_LIFETIME = 247.0
#: What one entry costs besides its reply bytes, measured with tracemalloc on CPython 3.11 (the entry object,
#: its (session, mid) key tuple and int, the slots in two ordered dicts): 367 B, rounded up.
ENTRY_COST = 400

_NO_REPLY_YET = b""


class DedupCache(StoreBacked[int, bytes]):
    """Which (session, message ID) pairs were seen, and what was answered to them."""

    def __init__(self, *, max_session_bytes: int, max_total_bytes: int,
                 lifetime: float = EXCHANGE_LIFETIME) -> None:
        self._store: BoundedStore[Hashable, int, bytes] = BoundedStore(
            lifetime=lifetime, max_total_bytes=max_total_bytes, max_session_bytes=max_session_bytes)

    def seen(self, session: Hashable, mid: int, now: float) -> bytes | None:
        """None for a new message ID (now remembered); otherwise the reply sent for it (b"" if none yet)."""
        found = self._store.get(session, mid, now)
        if found is not None:
            return found
        self._store.put(session, mid, _NO_REPLY_YET, ENTRY_COST, now)
        return None

    def answered(self, session: Hashable, mid: int, reply: bytes, now: float) -> None:
        """Keep ``reply`` as the answer to a remembered message ID (keeping its place and expiry)."""
        if self._store.get(session, mid, now) is not None:
            self._store.put(session, mid, reply, ENTRY_COST + sys.getsizeof(reply), now, refresh=False)

    def session_bytes(self, session: Hashable) -> int:
        return self._store.session_bytes(session)
