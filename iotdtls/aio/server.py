"""asyncio server: many peers on one UDP socket, demultiplexed by address."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from ..config import DTLSConfiguration
from ..errors import ConnectionClosed
from ..events import (
    ConnectionTerminated,
    DataReceived,
    HandshakeCompleted,
    PeerAddressChanged,
    ReplacementFailed,
)
from ..resumption import TicketKeys
from ..server import DTLSServer
from ..trust import PeerCredential
from .queue import DataQueue
from .sockbuf import DEFAULT_RECEIVE_BUFFER, set_receive_buffer

_log = logging.getLogger("iotdtls.aio")

SessionHandler = Callable[["ServerSession"], Awaitable[None] | None]


class ServerSession:
    """One authenticated peer of a :class:`Server`."""

    def __init__(self, server: Server, addr: Any, identity: bytes, cipher_suite: int,
                 peer_credential: PeerCredential | None = None) -> None:
        self._server = server
        self.peer = addr
        #: The PSK identity, or for public-key suites the client's key/certificate identity (b"" if anonymous).
        self.identity = identity
        self.cipher_suite = cipher_suite
        #: The client's verified raw public key or certificate chain (public-key suites with client auth).
        self.peer_credential = peer_credential
        self._data = DataQueue()
        self.closed = False

    async def recv(self) -> bytes:
        return await self._data.get()

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionClosed("session is closed")
        self._server.core.send(self.peer, data)
        self._server._pump()

    async def close(self) -> None:
        if not self.closed:
            self._server.core.close(self.peer)
            self._server._pump()


class Server(asyncio.DatagramProtocol):
    def __init__(self, config: DTLSConfiguration, handler: SessionHandler | None, limits: dict[str, Any]) -> None:
        self.core = DTLSServer(config, **limits)
        self._loop = asyncio.get_running_loop()
        self._handler = handler
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._sessions: dict[Any, ServerSession] = {}
        self._new: asyncio.Queue[ServerSession] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = self._loop.create_future()
        #: Optional observer of handshake results: (peer, identity or None, error or None). A failed new
        #: handshake from the address of a live session (which goes on) is reported too.
        self.on_handshake: Callable[[Any, bytes | None, Exception | None], None] | None = None
        #: The UDP receive buffer the kernel granted (bytes, as the kernel reports it).
        self.receive_buffer = 0

    @property
    def address(self) -> tuple[str, int]:
        assert self._transport is not None
        addr: tuple[str, int] = self._transport.get_extra_info("sockname")[:2]
        return addr

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.core.receive_datagram(data, addr, self._loop.time())
        self._pump()

    def error_received(self, exc: Exception) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)

    def _pump(self) -> None:
        core = self.core
        now = self._loop.time()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            for dgram, addr in core.datagrams_to_send(now):
                transport.sendto(dgram, cast(tuple[str, int], addr))
        while (item := core.next_event()) is not None:
            addr, event = item
            if isinstance(event, DataReceived):
                session = self._sessions.get(addr)
                if session is not None:
                    session._data.put(event.data)
            elif isinstance(event, HandshakeCompleted):
                self._open_session(addr, event)
            elif isinstance(event, PeerAddressChanged):
                moved = self._sessions.pop(event.previous, None)
                if moved is not None:
                    moved.peer = addr
                    self._sessions[addr] = moved
            elif isinstance(event, ConnectionTerminated):
                session = self._sessions.pop(addr, None)
                if session is not None:
                    session.closed = True
                    session._data.close(event.error or ConnectionClosed("peer closed the session"))
                elif event.error is not None and self.on_handshake is not None:
                    self.on_handshake(addr, None, event.error)
            elif isinstance(event, ReplacementFailed) and self.on_handshake is not None:
                self.on_handshake(addr, None, event.error)
        when = core.get_timer()
        if when != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(when, self._on_timer) if when is not None else None
            self._timer_at = when

    def _open_session(self, addr: Any, event: HandshakeCompleted) -> None:
        session = ServerSession(self, addr, event.identity, event.cipher_suite, event.peer)
        self._sessions[addr] = session
        if self.on_handshake is not None:
            self.on_handshake(addr, event.identity, None)
        if self._handler is None:
            self._new.put_nowait(session)
            return
        result = self._handler(session)
        if result is not None:
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(self._loop.time())
        self._pump()

    async def __aiter__(self) -> AsyncIterator[ServerSession]:
        while True:
            yield await self._new.get()

    def close(self) -> None:
        """Send close_notify to every peer and close the socket."""
        self.core.close_all()
        self._pump()
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._closed

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def serve(host: str, port: int, config: DTLSConfiguration, handler: SessionHandler | None = None, *,
                max_sessions: int = 10000, max_handshakes: int = 100, max_handshakes_per_ip: int | None = None,
                max_sessions_per_identity: int | None = 1, max_anonymous_per_ip: int | None = 4,
                max_datagram: int | None = None, receive_buffer: int = DEFAULT_RECEIVE_BUFFER,
                session_cache: int = 1000, ticket_keys: TicketKeys | None = None) -> Server:
    """Serve DTLS on ``(host, port)``. Each authenticated peer becomes a :class:`ServerSession`, passed to
    ``handler`` (a function or coroutine function) or, without one, yielded by ``async for`` on the server.
    Handshake and idle timeouts come from ``config``; the limits are those of :class:`~iotdtls.DTLSServer`.
    ``receive_buffer`` is the UDP socket buffer asked of the kernel (0: the system default). Resumption:
    ``session_cache`` session IDs are kept (0: none), and with ``ticket_keys`` RFC 5077 tickets are issued."""
    config.is_client = False
    limits: dict[str, Any] = {
        "max_sessions": max_sessions, "max_handshakes": max_handshakes, "max_handshakes_per_ip": max_handshakes_per_ip,
        "max_sessions_per_identity": max_sessions_per_identity, "max_anonymous_per_ip": max_anonymous_per_ip,
        "max_datagram": max_datagram, "session_cache": session_cache, "ticket_keys": ticket_keys,
    }
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(lambda: Server(config, handler, limits),
                                                            local_addr=(host, port))
    sock = transport.get_extra_info("socket")
    if sock is not None:
        server.receive_buffer = set_receive_buffer(sock, receive_buffer, _log)
    return server
