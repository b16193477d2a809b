"""A UDP relay between one client and one server that can drop datagrams and reports each one.

Used by the demo to show a handshake flight by flight, and to show it surviving loss.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any, cast

Observer = Callable[[str, bytes, bool], None]  # direction ("c2s"/"s2c"), datagram, dropped


class _Side(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Any], None]) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self._on = on_datagram

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._on(data, addr)


class LossyRelay:
    """Listens on ``listen``; forwards client datagrams to ``target`` and replies back, dropping each one
    with probability ``loss`` (seeded, so a run can be repeated)."""

    def __init__(self, target: tuple[str, int], loss: float = 0.0, seed: int = 0,
                 observer: Observer | None = None) -> None:
        self.target = target
        self.loss = loss
        self._rng = random.Random(seed)
        self._observer = observer
        self._client_addr: Any = None
        self._front: _Side | None = None
        self._back: _Side | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        _, self._front = await loop.create_datagram_endpoint(lambda: _Side(self._from_client),
                                                             local_addr=(host, port))
        _, self._back = await loop.create_datagram_endpoint(lambda: _Side(self._from_server),
                                                            remote_addr=self.target)
        assert self._front.transport is not None
        addr: tuple[str, int] = self._front.transport.get_extra_info("sockname")[:2]
        return addr

    def _drop(self) -> bool:
        return self.loss > 0 and self._rng.random() < self.loss

    def _from_client(self, data: bytes, addr: Any) -> None:
        self._client_addr = addr
        dropped = self._drop()
        if self._observer:
            self._observer("c2s", data, dropped)
        if not dropped and self._back and self._back.transport:
            self._back.transport.sendto(data)

    def _from_server(self, data: bytes, addr: Any) -> None:
        dropped = self._drop()
        if self._observer:
            self._observer("s2c", data, dropped)
        if not dropped and self._front and self._front.transport and self._client_addr is not None:
            self._front.transport.sendto(data, self._client_addr)

    def close(self) -> None:
        for side in (self._front, self._back):
            if side and side.transport:
                side.transport.close()
