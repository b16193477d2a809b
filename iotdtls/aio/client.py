"""asyncio client: ``async with connect(host, port, config) as session``."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any, cast

from ..config import DTLSConfiguration
from ..connection import DTLSConnection
from ..errors import ConnectionClosed, ConnectionRefused, DTLSError
from ..events import ConnectionTerminated, DataReceived, HandshakeCompleted
from ..handshake import State
from ..resumption import Session
from ..trust import PeerCredential
from .liveness import HandshakeProgress, ProgressCallback, RefusalCounter, log
from .queue import DataQueue


class ClientSession(asyncio.DatagramProtocol):
    """A client DTLS session over one connected UDP socket (so the kernel reports ICMP port unreachable:
    refusals of two separate transmissions end it with :class:`~iotdtls.errors.ConnectionRefused`)."""

    def __init__(self, config: DTLSConfiguration, *, host: str = "", port: int = 0,
                 on_progress: ProgressCallback | None = None, session: Session | None = None) -> None:
        self.connection = DTLSConnection(config)
        self._offer = session
        self._loop = asyncio.get_running_loop()
        self._host, self._port = host, port
        self._refusals = RefusalCounter(config.retransmit_initial / 2)
        self._progress = HandshakeProgress(host, port, config, on_progress)
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

    @property
    def session(self) -> Session | None:
        """What to keep to resume this session on a later :func:`connect` (``session=``); secret, like a key."""
        return self.connection.session

    @property
    def resumed(self) -> bool:
        """The handshake was abbreviated: it resumed the session offered to :func:`connect`."""
        return self.connection.resumed

    async def rebind(self, local_addr: tuple[str, int] | None = None) -> None:
        """Go on from a new UDP socket (a new source port, as after a NAT rebinding), without a word to the
        server and without a new handshake. The server follows only with a connection ID (RFC 9146)."""
        old = self._transport
        self._transport = None
        if old is not None:
            old.close()
        await self._loop.create_datagram_endpoint(lambda: self, remote_addr=(self._host, self._port),
                                                  local_addr=local_addr)

    # -- DatagramProtocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        if self.connection.state is State.CLIENT_START:
            self.connection.connect(self._loop.time(), self._offer)
        self._pump()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._refusals.heard()
        self.connection.receive_datagram(data, self._loop.time())
        self._pump()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors on the connected socket. Port unreachable twice, for separate transmissions: nobody
        # listens there. Anything else: DTLS relies on its own timers.
        if not isinstance(exc, ConnectionRefusedError) or self.connection.is_closed:
            log.debug("%s: %s", self._progress.where, exc)
            return
        log.info("%s: port unreachable (ICMP): nothing listening yet?", self._progress.where)
        if self._refusals.refused(self._loop.time()):
            self.connection.abort(ConnectionRefused(self._host, self._port))
            self._loop.call_soon(self._pump)  # may be inside _pump's sendto: report the end from the loop

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return  # the socket that rebind() replaced
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
            datagrams = conn.datagrams_to_send(now)
            if datagrams:
                self._refusals.sent()
            for dgram in datagrams:
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
        quiet = self._refusals.pending  # refused just now: the retransmission settles it, no progress line
        self.connection.handle_timer(self._loop.time())
        self._progress.check(self.connection, quiet=quiet)
        self._pump()


class _Connector:
    """Awaitable and async context manager returned by :func:`connect`."""

    def __init__(self, host: str, port: int, config: DTLSConfiguration,
                 local_addr: tuple[str, int] | None, on_progress: ProgressCallback | None,
                 session: Session | None = None) -> None:
        self._args = (host, port, config)
        self._local_addr = local_addr
        self._on_progress = on_progress
        self._offer = session
        self._session: ClientSession | None = None

    async def _open(self) -> ClientSession:
        host, port, config = self._args
        config.is_client = True
        config = config.for_host(host)  # a CA-issued server certificate must name the host we connect to
        loop = asyncio.get_running_loop()
        transport, session = await loop.create_datagram_endpoint(
            lambda: ClientSession(config, host=host, port=port, on_progress=self._on_progress, session=self._offer),
            remote_addr=(host, port), local_addr=self._local_addr)  # connected: ICMP errors get reported
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
            local_addr: tuple[str, int] | None = None, on_progress: ProgressCallback | None = None,
            session: Session | None = None) -> _Connector:
    """Open a DTLS client session; completes when the handshake has. Raises the handshake's error
    (an :class:`~iotdtls.errors.AlertError` or :class:`~iotdtls.errors.HandshakeTimeout`) on failure, and
    :class:`~iotdtls.errors.ConnectionRefused` within about ``retransmit_initial`` seconds (one
    retransmission) when nothing listens at ``host``:``port`` (ICMP port unreachable for two transmissions).
    ``local_addr`` binds the client's own address and port (a device with a fixed source port).
    ``on_progress`` is called with one line per handshake retransmission ("handshake with HOST:PORT: no
    answer yet, retrying (2/17)"); without it the line is logged at INFO on the ``iotdtls.aio`` logger.
    With CA certificates in ``config.trust`` and no ``server_name`` set there, the server certificate must name
    ``host`` (a DNS name or IP address in its subjectAltName).
    ``session``: an earlier session's :attr:`ClientSession.session`, offered for an abbreviated handshake
    (:attr:`ClientSession.resumed` tells whether the server took it)."""
    if not isinstance(config, DTLSConfiguration):
        raise DTLSError("connect() needs a DTLSConfiguration")
    return _Connector(host, port, config, local_addr, on_progress, session)
