"""RFC 7959 blockwise transfers for the CoAPs server, bounded.

* :class:`Block1Assembler`: request bodies arriving in Block1 blocks, collected in a ``bytearray`` per transfer
  (amortised linear, unlike aiocoap's ``payload +=``). Bounded in transfers per session (the session's oldest
  goes), in bytes per transfer and in total bytes (beyond either: 4.13 with Size1), and in lifetime (a transfer
  idle that long is forgotten; its next block gets 4.08).
* :class:`Block2Cache`: responses too large for one block, kept so the following Block2 requests are answered
  from it. Bounded in entries per session and in total bytes (oldest first out), and in lifetime; a miss is
  rendered again (safe methods) or answered 4.08.

Both are keyed by the session and a request key that all blocks of one transfer share (the method and the
options that are part of the cache key, without Block1, Block2 and Observe). Nothing here knows about asyncio,
sockets or aiocoap; ``now`` is passed in.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable
from dataclasses import dataclass

from . import wire
from .bounded import BoundedStore, StoreBacked

#: RFC 7252 section 4.8.2 MAX_TRANSMIT_WAIT with the default parameters: how long a client may keep trying to
#: get one block through, so the longest gap between two blocks of a live transfer.
MAX_TRANSMIT_WAIT = 93.0
#: What an assembly or a cache entry costs besides its body and key: the entry, the record, the ordered-dict
#: slots (rounded up from tracemalloc on CPython 3.11: a 1 KiB assembly keyed by /echo?n=N holds 1,781 B in all,
#: and is counted as 1,811 B).
ENTRY_COST = 400
#: Block size exponent 7 is BERT, for reliable transports only (RFC 8323); on UDP it is a bad request.
MAX_SZX = 6


def block_size(szx: int) -> int:
    return 1 << (szx + 4)


def key_cost(options: int, value_bytes: int) -> int:
    """Estimated bytes of a request key with ``options`` options holding ``value_bytes`` bytes of values (an
    aiocoap option value is a Python object of about 100 bytes plus its data)."""
    return 64 + 128 * options + value_bytes


@dataclass(frozen=True, slots=True)
class Continue:
    """Block stored: answer 2.31 Continue with Block1 (num, more, szx)."""

    num: int
    szx: int


@dataclass(frozen=True, slots=True)
class Complete:
    """The last block arrived: the whole body. ``num`` and ``szx`` are the last block's (for the response's
    Block1 option)."""

    body: bytes
    num: int
    szx: int


@dataclass(frozen=True, slots=True)
class Refused:
    """Answer with ``code`` (a wire code byte); a 4.13 carries Size1 ``size1``. The transfer is forgotten."""

    code: int
    reason: str
    size1: int | None = None
    diagnostic: bytes = b""


class _Assembly:
    __slots__ = ("body", "key_cost", "last")

    def __init__(self, key_cost: int) -> None:
        self.body = bytearray()
        self.key_cost = key_cost
        self.last = -1

    def cost(self) -> int:
        return ENTRY_COST + self.key_cost + sys.getsizeof(self.body)


class Block1Assembler(StoreBacked[Hashable, "_Assembly"]):
    """Request bodies in the making, per (session, request key)."""

    def __init__(self, *, max_per_session: int, max_bytes: int, max_total_bytes: int,
                 lifetime: float = MAX_TRANSMIT_WAIT) -> None:
        self.max_bytes = max_bytes
        self._store: BoundedStore[Hashable, Hashable, _Assembly] = BoundedStore(
            lifetime=lifetime, max_total_bytes=max_total_bytes, max_session_entries=max_per_session)

    def feed(self, session: Hashable, key: Hashable, key_cost: int, num: int, more: bool, szx: int,
             payload: bytes, size1: int | None, now: float) -> Continue | Complete | Refused:
        """One Block1 block (RFC 7959 section 2.5). ``size1``: the request's Size1 option (the announced total)."""
        if szx > MAX_SZX or (more and len(payload) != block_size(szx)):
            self._store.pop(session, key)
            return Refused(wire.BAD_REQUEST, "uploads_bad_block", diagnostic=b"payload size does not match Block1")
        if size1 is not None and size1 > self.max_bytes:
            self._store.pop(session, key)
            return Refused(wire.REQUEST_ENTITY_TOO_LARGE, "uploads_too_large", self.max_bytes)
        start = num * block_size(szx)
        if num == 0:
            self._store.pop(session, key)  # a new transfer replaces an unfinished one with the same key
            if len(payload) > self.max_bytes:
                return Refused(wire.REQUEST_ENTITY_TOO_LARGE, "uploads_too_large", self.max_bytes)
            if not more:  # a body of one block: nothing to keep
                return Complete(payload, num, szx)
            assembly = _Assembly(key_cost)
        else:
            found = self._store.get(session, key, now)
            if found is None:
                return Refused(wire.REQUEST_ENTITY_INCOMPLETE, "uploads_incomplete")
            assembly = found
            if num == assembly.last and start + len(payload) == len(assembly.body):
                # the same block again under a new message ID (the client gave up on our 2.31): answer it again
                self._store.put(session, key, assembly, assembly.cost(), now)
                return Continue(num, szx)
            if start != len(assembly.body):
                self._store.pop(session, key)
                return Refused(wire.REQUEST_ENTITY_INCOMPLETE, "uploads_incomplete")
            if start + len(payload) > self.max_bytes:
                self._store.pop(session, key)
                return Refused(wire.REQUEST_ENTITY_TOO_LARGE, "uploads_too_large", self.max_bytes)
        before = assembly.cost() if num else 0
        assembly.body += payload
        assembly.last = num
        if not more:
            self._store.pop(session, key)
            return Complete(bytes(assembly.body), num, szx)
        cost = assembly.cost()
        if not self._store.fits(cost - before):
            self._store.pop(session, key)
            return Refused(wire.REQUEST_ENTITY_TOO_LARGE, "uploads_refused_full", self.max_bytes)
        self._store.put(session, key, assembly, cost, now)
        return Continue(num, szx)


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A response body to serve in blocks: its code, its options as (number, encoded value) without Block1,
    Block2, Size2 and Observe, and its payload."""

    code: int
    options: tuple[tuple[int, bytes], ...]
    payload: bytes

    def cost(self) -> int:
        return ENTRY_COST + len(self.payload) + key_cost(len(self.options), sum(len(v) for _n, v in self.options))


def slice_block(payload: bytes, num: int, szx: int) -> tuple[bytes, bool] | None:
    """Block ``num`` of size 2**(szx+4) of ``payload`` and whether more follow; None if it starts past the end
    (block 0 of an empty payload is the empty block)."""
    size = block_size(szx)
    start = num * size
    if start >= len(payload) and not (num == 0 and not payload):
        return None
    return payload[start:start + size], start + size < len(payload)


class Block2Cache(StoreBacked[Hashable, CachedResponse]):
    """Responses being fetched in Block2 blocks, per (session, request key)."""

    def __init__(self, *, max_per_session: int, max_total_bytes: int, lifetime: float = MAX_TRANSMIT_WAIT) -> None:
        self._store: BoundedStore[Hashable, Hashable, CachedResponse] = BoundedStore(
            lifetime=lifetime, max_total_bytes=max_total_bytes, max_session_entries=max_per_session)

    def put(self, session: Hashable, key: Hashable, response: CachedResponse, key_cost: int, now: float) -> bool:
        return self._store.put(session, key, response, response.cost() + key_cost, now)

    def get(self, session: Hashable, key: Hashable, now: float) -> CachedResponse | None:
        return self._store.get(session, key, now)

    def pop(self, session: Hashable, key: Hashable) -> CachedResponse | None:
        return self._store.pop(session, key)
