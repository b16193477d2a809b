"""A bounded queue of received datagrams that ends with an error."""

from __future__ import annotations

import asyncio
from collections import deque

MAX_QUEUED = 256


class DataQueue:
    def __init__(self, limit: int = MAX_QUEUED) -> None:
        self._items: deque[bytes] = deque()
        self._limit = limit
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.dropped = 0

    def put(self, item: bytes) -> None:
        if len(self._items) >= self._limit:
            self.dropped += 1  # datagram semantics: a slow reader loses the newest data
            return
        self._items.append(item)
        self._wake()

    def close(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> bytes:
        while not self._items:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._items.popleft()
