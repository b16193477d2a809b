"""The client half of the aiocoap transport: one DTLS session per (host, port, credentials), reused across
requests, re-handshaken when it fails or when the peer stops answering (a restarted server has forgotten it).
A new handshake offers the last session to that (host, port) for resumption (:attr:`IotdtlsClientTransport.sessions`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiocoap import error, interfaces
from aiocoap.numbers import COAPS_PORT
from aiocoap.util import hostportjoin, hostportsplit

from ..aio.liveness import HandshakeProgress, ProgressCallback, RefusalCounter, log
from ..config import DTLSConfiguration
from ..connection import DTLSConnection
from ..errors import AlertError, ConnectionRefused, DTLSError
from ..events import ConnectionTerminated, DataReceived, HandshakeCompleted
from ..resumption import Session
from .credentials import client_config
from .hostinfo import local_hostinfo
from .sizing import block_size_exp_for_mtu

#: A session that has sent this many datagrams without receiving one authenticated record for STALE_AFTER
#: seconds is presumed dead (a restarted or rebooted server) and re-handshakes under the pending requests.
STALE_SENDS = 2
STALE_AFTER = 4.0
MAX_QUEUED = 64


class SessionError(DTLSError):
    """The DTLS session to this remote failed; the request was not delivered over it."""


class RefusedError(error.NetworkError):  # type: ignore[misc]
    """What a request fails with when nothing listens at its ``coaps://`` address: an aiocoap NetworkError
    whose text is its ``__cause__``'s, a :class:`~iotdtls.errors.ConnectionRefused`."""

    def __init__(self, cause: ConnectionRefused) -> None:
        super().__init__(str(cause))
        self.__cause__ = cause

    def __str__(self) -> str:
        return str(self.args[0])  # aiocoap's is "Network error: NetworkError"


class ClientSession(interfaces.EndpointAddress, asyncio.DatagramProtocol):  # type: ignore[misc]
    """One DTLS session to a server, and the aiocoap remote address of requests sent over it."""

    scheme = "coaps"
    is_multicast = False
    is_multicast_locally = False
    #: Largest RFC 7959 block size exponent whose blocks fit one DTLS record (a plain attribute: aiocoap
    #: lowers it per remote when a peer asks for smaller blocks).
    maximum_block_size_exp: int = 6

    def __init__(self, transport: IotdtlsClientTransport, host: str, port: int, key: object,
                 config: DTLSConfiguration) -> None:
        self._owner = transport
        self._host, self._port, self._key = host, port, key
        self._config = config
        self._hostinfo = str(hostportjoin(host, None if port == COAPS_PORT else port))
        self._conn: DTLSConnection | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._queue: list[bytes] = []
        self._sends_unanswered = 0
        self._last_heard = 0.0
        self._closed = False
        self._opening: asyncio.Future[None] | None = None
        # ICMP port unreachable for two separate transmissions (handshake flights or CoAP retransmissions):
        # the requests fail with ConnectionRefused instead of waiting out their timeouts
        self._refusals = RefusalCounter(config.retransmit_initial / 2)
        self._progress = HandshakeProgress(host, port, config, transport.on_progress)
        self.maximum_block_size_exp = block_size_exp_for_mtu(config.mtu)

    def _offer(self) -> Session | None:
        """The session to offer for an abbreviated handshake: the last one to this (host, port), if it was made
        with this PSK identity (a public-key session: with whatever key the config has)."""
        session = self._owner.sessions.get((self._host, self._port))
        identity = self._config.psk_identity
        if session is None or (identity is not None and session.identity != identity):
            return None
        return session

    # -- EndpointAddress -------------------------------------------------------------------------
    @property
    def hostinfo(self) -> str:
        return self._hostinfo

    uri_base = property(lambda self: "coaps://" + self.hostinfo)
    uri_base_local = property(lambda self: "coaps://" + self.hostinfo_local)

    @property
    def hostinfo_local(self) -> str:
        return local_hostinfo(self._udp)

    @property
    def blockwise_key(self) -> object:
        return (self._host, self._port, self._key)

    @property
    def maximum_payload_size(self) -> int:
        return 1 << (self.maximum_block_size_exp + 4)

    @property
    def authenticated_claims(self) -> list[str]:
        conn = self._conn
        if conn is None or not conn.is_established or conn.peer_credential is None:
            return []
        return [conn.peer_credential.identity]

    @property
    def connection(self) -> DTLSConnection | None:
        """The current DTLS connection (replaced when the session re-handshakes)."""
        return self._conn

    # -- sending ---------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        conn = self._conn
        if conn is not None and conn.is_established:
            if self._sends_unanswered < STALE_SENDS or now - self._last_heard <= STALE_AFTER:
                self._sends_unanswered += 1
                try:
                    conn.send(data)
                except (DTLSError, ValueError) as exc:
                    self._fail(exc)
                    return
                self._flush(now)
                return
            self._owner.log.info("%s stopped answering; starting a new DTLS handshake", self.hostinfo)
            self._restart(now)
        if len(self._queue) < MAX_QUEUED:
            self._queue.append(data)
        if self._conn is None or self._conn.is_closed:
            self._restart(now)

    def _restart(self, now: float) -> None:
        old = self._conn
        if old is not None and not old.is_closed:
            # detach first: the old connection's end must not fail the requests waiting for the new one
            old.close()
            if self._udp is not None:
                for datagram in old.datagrams_to_send(now):
                    self._udp.sendto(datagram)
        self._conn = DTLSConnection(self._config, peer=(self._host, self._port), validate=False)
        self._progress = HandshakeProgress(self._host, self._port, self._config, self._owner.on_progress)
        self._sends_unanswered = 0
        self._last_heard = now
        if self._udp is None:
            if self._opening is None or self._opening.done():
                self._opening = asyncio.ensure_future(self._open())
        else:
            self._conn.connect(now, session=self._offer())
            self._flush(now)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_datagram_endpoint(lambda: self, remote_addr=(self._host, self._port))
        except OSError as exc:
            self._fail(exc)

    # -- DatagramProtocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._udp = transport  # type: ignore[assignment]
        now = asyncio.get_running_loop().time()
        if self._conn is not None and self._conn.state.name == "CLIENT_START":
            self._conn.connect(now, session=self._offer())
        self._flush(now)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        conn = self._conn
        if conn is None:
            return
        now = asyncio.get_running_loop().time()
        self._refusals.heard()
        conn.receive_datagram(data, now)
        self._flush(now)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on the connected socket: nobody listens there (yet). Once is not proof (a
        # server starting up); refused again for a later transmission, the pending requests fail.
        if not isinstance(exc, ConnectionRefusedError) or self._closed:
            self._owner.log.debug("%s: %s", self.hostinfo, exc)
        else:
            log.info("%s: port unreachable (ICMP): nothing listening yet?", self._progress.where)
            loop = asyncio.get_running_loop()
            if self._refusals.refused(loop.time()):
                loop.call_soon(self._refused)  # may be inside _flush's sendto: fail from the loop

    def _refused(self) -> None:
        if not self._closed:
            self._fail(RefusedError(ConnectionRefused(self._host, self._port)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._udp = None

    # -- the sans-IO connection ------------------------------------------------------------------
    def _flush(self, now: float) -> None:
        conn = self._conn
        if conn is None:
            return
        while (event := conn.next_event()) is not None:
            if isinstance(event, DataReceived):
                self._sends_unanswered = 0
                self._last_heard = now
                self._owner.received(self, event.data)
            elif isinstance(event, HandshakeCompleted):
                self._last_heard = now
                if conn.session is not None:  # kept for the next handshake to this (host, port)
                    self._owner.sessions[(self._host, self._port)] = conn.session
                elif not conn.resumed:
                    self._owner.sessions.pop((self._host, self._port), None)
                queued, self._queue = self._queue, []
                for data in queued:
                    conn.send(data)
            elif isinstance(event, ConnectionTerminated):
                self._connection_ended(conn, event.error)
        if self._udp is not None:
            datagrams = conn.datagrams_to_send(now)
            if datagrams:
                self._refusals.sent()
            for datagram in datagrams:
                self._udp.sendto(datagram)
        self._arm_timer(now)

    def _arm_timer(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn = self._conn
        when = conn.get_timer() if conn is not None else None
        if when is not None:
            self._timer = asyncio.get_running_loop().call_at(max(when, now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        conn = self._conn
        if conn is None:
            return
        now = asyncio.get_running_loop().time()
        quiet = self._refusals.pending  # refused just now: the retransmission settles it, no progress line
        conn.handle_timer(now)
        self._progress.check(conn, quiet=quiet)
        self._flush(now)

    def _connection_ended(self, conn: DTLSConnection, exc: Exception | None) -> None:
        if isinstance(exc, AlertError):  # a session ended by a fatal alert is not resumed (RFC 5246 7.2.2)
            self._owner.sessions.pop((self._host, self._port), None)
        if conn is not self._conn:
            return
        self._conn = None
        self._queue = []
        self._fail(exc or SessionError("the server closed the DTLS session"))

    def _fail(self, exc: BaseException) -> None:
        """Error every pending request to this remote; the next request starts a new session."""
        self._owner.forget(self)
        self.shutdown()
        self._owner.failed(self, exc)

    def shutdown(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._conn is not None and not self._conn.is_closed:
            self._conn.close()
            if self._udp is not None:
                for datagram in self._conn.datagrams_to_send(0.0):
                    self._udp.sendto(datagram)
        if self._udp is not None:
            self._udp.close()


def server_of(request: Any) -> tuple[str, int]:
    """The (host, port) a coaps:// request goes to: how the transport keys its sessions (``sessions``)."""
    if request.unresolved_remote:
        host, port = hostportsplit(request.unresolved_remote)
        return host, port or COAPS_PORT
    if request.opt.uri_host:
        return request.opt.uri_host, request.opt.uri_port or COAPS_PORT
    raise ValueError("No location found to send message to (neither in .opt.uri_host nor in .remote)")


class IotdtlsClientTransport(interfaces.MessageInterface):  # type: ignore[misc]
    """aiocoap MessageInterface for ``coaps://`` requests over iotdtls."""

    def __init__(self, mman: Any, base: DTLSConfiguration, log: logging.Logger,
                 on_progress: ProgressCallback | None = None,
                 sessions: dict[tuple[str, int], Session] | None = None) -> None:
        self._mman = mman
        self._base = base
        self.log = log
        #: Called with a line per handshake retransmission (None: logged at INFO on ``iotdtls.aio``).
        self.on_progress = on_progress
        #: The last resumable session per (host, port), offered by the next handshake there; updated as
        #: handshakes complete, dropped after a fatal alert. Secret, like a key.
        self.sessions: dict[tuple[str, int], Session] = sessions if sessions is not None else {}
        self._pool: dict[tuple[str, int, int], ClientSession] = {}
        self._shutting_down = False

    async def determine_remote(self, request: Any) -> ClientSession | None:
        if request.requested_scheme != "coaps":
            return None
        if self._shutting_down:
            raise error.LibraryShutdown
        host, port = server_of(request)
        credential = self._mman.token_manager.context.client_credentials.credentials_from_request(request)
        key = (host, port, id(credential))
        session = self._pool.get(key)
        if session is None:
            config = client_config(credential, self._base).for_host(host)
            config.validate()
            session = ClientSession(self, host, port, credential, config)
            self._pool[key] = session
        return session

    async def recognize_remote(self, remote: Any) -> bool:
        return isinstance(remote, ClientSession) and remote in self._pool.values()

    def send(self, message: Any) -> None:
        message.remote.send(message.encode())

    def received(self, session: ClientSession, data: bytes) -> None:
        from aiocoap import Message

        try:
            message = Message.decode(data, remote=session)
        except error.UnparsableMessage:
            self.log.warning("Ignoring unparsable CoAP message from %s", session.hostinfo)
            return
        if self._mman is not None:
            self._mman.dispatch_message(message)

    def failed(self, session: ClientSession, exc: BaseException) -> None:
        if self._mman is not None:
            self._mman.dispatch_error(exc, session)

    def forget(self, session: ClientSession) -> None:
        for key, value in list(self._pool.items()):
            if value is session:
                del self._pool[key]

    async def shutdown(self) -> None:
        self._shutting_down = True
        for session in list(self._pool.values()):
            session.shutdown()
        self._pool.clear()
        self._mman = None
