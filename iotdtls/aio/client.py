"""asyncio client: ``async with connect(host, port, config) as session``."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any, cast

from ..config import DTLSConfiguration
from ..connection import DTLSConnection
from ..errors import ConnectionClosed, DTLSError
from ..events import ConnectionTerminated, DataReceived, HandshakeCompleted
from ..trust import PeerCredential
from .queue import DataQueue


class ClientSession(asyncio.DatagramProtocol):
    """A client DTLS session over one connected UDP socket."""

    def __init__(self, config: DTLSConfiguration) -> None:
        self.connection = DTLSConnection(config)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handshake: asyncio.Future[None] = self._loop.create_future()
        self._data = DataQueue()

    @property
    def identity(self) -> bytes:
        """Our PSK identity, or for public-key suites the server's key/certificate identity."""
        return self.connection.identity

    @property
    def peer_credential(self) -> PeerCredential | None:
        """The server's verified raw public key or certificate chain (public-key suites)."""
        return self.connection.peer_credential

    # -- DatagramProtocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self.connection.connect(self._loop.time())
        self._pump()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.connection.receive_datagram(data, self._loop.time())
        self._pump()

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors: DTLS relies on its own timers

    def connection_lost(self, exc: Exception | None) -> None:
        self._data.close(exc or ConnectionClosed("socket closed"))

    # -- session API -----------------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        self.connection.send(data)
        self._pump()

    async def recv(self) -> bytes:
        """The next application datagram; raises when the session has ended."""
        return await self._data.get()

    async def close(self) -> None:
        self.connection.close()
        self._pump()
        if self._transport is not None:
            self._transport.close()

    async def __aenter__(self) -> ClientSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals -------------------------------------------------------------------------------
    def _pump(self) -> None:
        conn = self.connection
        now = self._loop.time()
        if self._transport is not None and not self._transport.is_closing():
            for dgram in conn.datagrams_to_send(now):
                self._transport.sendto(dgram)
        while (event := conn.next_event()) is not None:
            if isinstance(event, DataReceived):
                self._data.put(event.data)
            elif isinstance(event, HandshakeCompleted):
                if not self._handshake.done():
                    self._handshake.set_result(None)
            elif isinstance(event, ConnectionTerminated):
                error = event.error or ConnectionClosed("connection closed by peer")
                if not self._handshake.done():
                    self._handshake.set_exception(error)
                self._data.close(error)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = conn.get_timer()
        if when is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.connection.handle_timer(self._loop.time())
        self._pump()


class _Connector:
    """Awaitable and async context manager returned by :func:`connect`."""

    def __init__(self, host: str, port: int, config: DTLSConfiguration,
                 local_addr: tuple[str, int] | None) -> None:
        self._args = (host, port, config)
        self._local_addr = local_addr
        self._session: ClientSession | None = None

    async def _open(self) -> ClientSession:
        host, port, config = self._args
        config.is_client = True
        config = config.for_host(host)  # a CA-issued server certificate must name the host we connect to
        loop = asyncio.get_running_loop()
        transport, session = await loop.create_datagram_endpoint(
            lambda: ClientSession(config), remote_addr=(host, port), local_addr=self._local_addr)
        try:
            await session._handshake
        except BaseException:
            transport.close()
            raise
        self._session = session
        return session

    def __await__(self) -> Generator[Any, None, ClientSession]:
        return self._open().__await__()

    async def __aenter__(self) -> ClientSession:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()


def connect(host: str, port: int, config: DTLSConfiguration, *,
            local_addr: tuple[str, int] | None = None) -> _Connector:
    """Open a DTLS client session; completes when the handshake has. Raises the handshake's error
    (an :class:`~iotdtls.errors.AlertError` or :class:`~iotdtls.errors.HandshakeTimeout`) on failure.
    ``local_addr`` binds the client's own address and port (a device with a fixed source port).
    With CA certificates in ``config.trust`` and no ``server_name`` set there, the server certificate must name
    ``host`` (a DNS name or IP address in its subjectAltName)."""
    if not isinstance(config, DTLSConfiguration):
        raise DTLSError("connect() needs a DTLSConfiguration")
    return _Connector(host, port, config, local_addr)
