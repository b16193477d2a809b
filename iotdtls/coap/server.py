"""The server half of the aiocoap transport: one UDP socket, a sans-IO :class:`~iotdtls.server.DTLSServer` in
front, one aiocoap remote per authenticated peer with its ``authenticated_claims``.

Datagrams longer than ``max_datagram`` are dropped by the DTLS server before decryption; decrypted CoAP messages
pass :func:`~iotdtls.coap.precheck.precheck` (size, option count) before aiocoap decodes them; the message
manager (:class:`~iotdtls.coap.manager.BoundedMessageManager`) keeps the rest bounded. ``transport.stats`` counts
what each bound refused, and what is held."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiocoap import Message, error, interfaces
from aiocoap.credentials import CredentialsMap
from aiocoap.numbers import COAPS_PORT
from aiocoap.util import hostportjoin

from ..aio.sockbuf import DEFAULT_RECEIVE_BUFFER, set_receive_buffer
from ..config import DTLSConfiguration
from ..errors import AlertError
from ..events import ConnectionTerminated, DataReceived, Event, HandshakeCompleted, PeerAddressChanged
from ..resumption import TicketKeys
from ..server import DTLSServer
from ..trust import PeerCredential
from .credentials import claims_for
from .hostinfo import local_hostinfo
from .limits import ServerLimits
from .manager import BoundedMessageManager
from .precheck import precheck
from .sizing import block_size_exp_for_mtu

Address = Any  # what the UDP socket reports: (host, port[, flowinfo, scope_id])

#: What a server remote tells aiocoap it may send in one message: more than any response, so aiocoap's resources
#: never cut responses into blocks themselves (nor keep them in their per-resource Block2Cache); the message
#: manager does, bounded, at ``maximum_block_size_exp``.
UNSLICED = 1 << 40

#: Counters of the transport itself (see :attr:`IotdtlsServerTransport.stats`).
PRECHECK_COUNTERS = ("dropped_unparsable", "dropped_too_big", "refused_too_big", "dropped_too_many_options",
                     "refused_too_many_options")


class ServerRemote(interfaces.EndpointAddress):  # type: ignore[misc]
    """A client with an established DTLS session, as aiocoap sees it."""

    scheme = "coaps"
    is_multicast = False
    is_multicast_locally = False
    #: Largest RFC 7959 block size exponent whose blocks fit one DTLS record; responses larger than a block are
    #: sliced to it (or to the smaller size a request asks for).
    maximum_block_size_exp: int = 6

    def __init__(self, transport: IotdtlsServerTransport, addr: Address, identity: bytes, claims: list[str],
                 block_exp: int, peer: PeerCredential | None = None) -> None:
        self._transport = transport
        self.address = addr
        #: The PSK identity or public-key identity the client authenticated with (b"" for anonymous clients).
        self.identity = identity
        #: The client's verified raw public key or certificate chain (public-key suites), else None (PSK).
        self.peer = peer
        self._claims = claims
        self.maximum_block_size_exp = block_exp

    hostinfo = property(lambda self: str(hostportjoin(self.address[0], self.address[1])))
    hostinfo_local = property(lambda self: self._transport.hostinfo_local)
    uri_base = property(lambda self: "coaps://" + self.hostinfo)
    uri_base_local = property(lambda self: "coaps://" + self.hostinfo_local)

    @property
    def authenticated_claims(self) -> list[str]:
        return self._claims

    @property
    def blockwise_key(self) -> object:
        return (self.address, tuple(self._claims), self.identity)

    @property
    def maximum_payload_size(self) -> int:
        return UNSLICED

    def __repr__(self) -> str:
        return f"<ServerRemote {self.hostinfo} identity={self.identity!r}>"


class IotdtlsServerTransport(interfaces.MessageInterface, asyncio.DatagramProtocol):  # type: ignore[misc]
    """aiocoap MessageInterface serving ``coaps://`` on one UDP socket."""

    def __init__(self, mman: Any, config: DTLSConfiguration, credentials: CredentialsMap, log: logging.Logger,
                 *, max_sessions: int, max_handshakes: int, limits: ServerLimits | None = None,
                 ticket_keys: TicketKeys | None = None, session_cache: int = 1000,
                 **fairness: int | None) -> None:
        self._mman = mman
        self._credentials = credentials
        self.log = log
        self.limits = limits = limits or ServerLimits()
        limits.validate()
        self.core = DTLSServer(config, max_sessions=max_sessions, max_handshakes=max_handshakes,
                               max_datagram=limits.datagram_limit(config.mtu), ticket_keys=ticket_keys,
                               session_cache=session_cache, **fairness)
        self._precheck_stats = dict.fromkeys(PRECHECK_COUNTERS, 0)
        self._block_exp = block_size_exp_for_mtu(config.mtu)
        self._remotes: dict[Address, ServerRemote] = {}
        #: the message manager whose stats ``stats`` reports (server_context's; None for a plain aiocoap one)
        self._bounded = mman if isinstance(mman, BoundedMessageManager) else None
        self._udp: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: The UDP receive buffer the kernel granted (bytes, as the kernel reports it).
        self.receive_buffer = 0
        #: Optional observer of the DTLS server's events other than data (handshakes completed, sessions ended,
        #: failed handshakes), called with the peer address before the transport acts on them: for logging.
        self.on_event: Callable[[Address, Event], None] | None = None

    @classmethod
    async def create(cls, mman: Any, bind: tuple[str, int] | None, config: DTLSConfiguration,
                     credentials: CredentialsMap, log: logging.Logger, *, max_sessions: int = 10000,
                     max_handshakes: int = 1000, receive_buffer: int = DEFAULT_RECEIVE_BUFFER,
                     limits: ServerLimits | None = None, ticket_keys: TicketKeys | None = None,
                     session_cache: int = 1000, **fairness: int | None) -> IotdtlsServerTransport:
        host, port = bind or ("::", COAPS_PORT)
        self = cls(mman, config, credentials, log, max_sessions=max_sessions, max_handshakes=max_handshakes,
                   limits=limits, ticket_keys=ticket_keys, session_cache=session_cache, **fairness)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # a burst of handshakes (a fleet coming back after a gateway restart) overflows the kernel's default
            # ~200 KB socket buffer long before the CPU is busy
            self.receive_buffer = set_receive_buffer(sock, receive_buffer, log)
        return self

    @property
    def hostinfo_local(self) -> str:
        return local_hostinfo(self._udp)

    def sessions(self) -> list[ServerRemote]:
        """The remotes of the established DTLS sessions."""
        return list(self._remotes.values())

    def end_session(self, remote: ServerRemote, error: AlertError | None = None) -> None:
        """End ``remote``'s DTLS session now: close_notify, or ``error``'s fatal alert (a revoked device)."""
        if self._remotes.get(remote.address) is remote:
            self.core.close(remote.address, error)
            self._pump(asyncio.get_running_loop().time())

    @property
    def stats(self) -> dict[str, int]:
        """Counters of what each bound refused or dropped, and gauges of what is held now: ``dropped_oversize``
        (datagrams over ``max_datagram``), the precheck's ``dropped_*`` / ``refused_*``, and the message
        manager's counters and gauges (:data:`iotdtls.coap.manager.COUNTERS`, ``dedup_bytes``, ``uploads``, ...)."""
        out = {"dropped_oversize": self.core.stats.get("dropped_oversize", 0), "sessions": len(self._remotes)}
        out.update(self._precheck_stats)
        if self._bounded is not None:
            out.update(self._bounded.stats)
            out.update(self._bounded.gauges())
        return out

    @property
    def address(self) -> tuple[str, int]:
        assert self._udp is not None
        sockname = self._udp.get_extra_info("sockname")
        return sockname[0], sockname[1]

    # -- DatagramProtocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._udp = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        now = asyncio.get_running_loop().time()
        self.core.receive_datagram(data, addr, now)
        self._pump(now)

    def error_received(self, exc: Exception) -> None:
        self.log.debug("UDP error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._udp = None

    # -- MessageInterface ------------------------------------------------------------------------
    async def determine_remote(self, request: Any) -> None:
        return None  # a CoAPs server answers; it does not open sessions

    async def recognize_remote(self, remote: Any) -> bool:
        return isinstance(remote, ServerRemote) and self._remotes.get(remote.address) is remote

    def send(self, message: Any) -> None:
        self.send_bytes(message.remote, message.encode())

    def send_bytes(self, remote: ServerRemote, data: bytes) -> None:
        """Send an encoded CoAP message over ``remote``'s DTLS session (the message manager encodes once)."""
        if self._remotes.get(remote.address) is not remote:
            self.log.info("Not sending to %s: its DTLS session has ended", remote.hostinfo)
            return
        try:
            self.core.send(remote.address, data)
        except Exception as exc:  # payload over the record budget, session closed meanwhile
            self.log.warning("Cannot send to %s: %s", remote.hostinfo, exc)
            return
        self._pump(asyncio.get_running_loop().time())

    async def shutdown(self) -> None:
        for addr in list(self._remotes):
            self.core.close(addr)
        self._mman = None  # aiocoap's message manager is already shut down: nothing more to dispatch
        self._pump(asyncio.get_running_loop().time())
        self._remotes.clear()
        if self._timer is not None:
            self._timer.cancel()
        if self._udp is not None:
            self._udp.close()

    # -- the sans-IO server ----------------------------------------------------------------------
    def _pump(self, now: float) -> None:
        core = self.core
        while (item := core.next_event()) is not None:
            addr: Address = item[0]
            event = item[1]
            if isinstance(event, DataReceived):
                found = self._remotes.get(addr)
                if found is None:
                    continue
                limits = self.limits
                verdict = precheck(event.data, max_message_size=limits.max_message_size,
                                   max_options=limits.max_options, max_entity=limits.max_upload_bytes)
                if not verdict.accept:
                    self._precheck_stats[verdict.reason] += 1
                    if verdict.reply is not None:
                        with contextlib.suppress(Exception):  # the session closed meanwhile
                            core.send(addr, verdict.reply)
                    continue
                try:
                    message = Message.decode(event.data, remote=found)
                except Exception:  # error.UnparsableMessage, and UnicodeDecodeError for a bad text option
                    self._precheck_stats["dropped_unparsable"] += 1
                    self.log.info("Ignoring unparsable CoAP message from %s", found.hostinfo)
                    continue
                if self._mman is not None:
                    self._mman.dispatch_message(message)
                continue
            if self.on_event is not None:
                self.on_event(addr, event)
            if isinstance(event, PeerAddressChanged):
                # RFC 9146: the session (and the CoAP remote that stands for it) moved to a new address
                moved = self._remotes.pop(event.previous, None)
                if moved is not None:
                    moved.address = addr
                    self._remotes[addr] = moved
                    self.log.info("DTLS session %r moved to %s", moved.identity, moved.hostinfo)
            elif isinstance(event, HandshakeCompleted):
                old = self._remotes.pop(addr, None)
                if old is not None:
                    self._end(addr, old, error.LibraryShutdown("Replaced by a new DTLS session"))
                claims = claims_for(self._credentials, event.identity, event.peer)
                self._remotes[addr] = ServerRemote(self, addr, event.identity, claims, self._block_exp, event.peer)
                self.log.info("DTLS session with %s, identity %r", hostportjoin(addr[0], addr[1]), event.identity)
            elif isinstance(event, ConnectionTerminated):
                ended = self._remotes.get(addr)
                if ended is not None:
                    self._end(addr, ended, event.error or error.LibraryShutdown("DTLS session closed"))
        if self._udp is not None:
            for datagram, to in core.datagrams_to_send(now):
                self._udp.sendto(datagram, to)  # type: ignore[arg-type]
        self._arm(now)

    def _end(self, addr: Address, remote: ServerRemote, exc: BaseException) -> None:
        if self._remotes.get(addr) is remote:
            del self._remotes[addr]
        if self._mman is not None:
            self._mman.dispatch_error(exc, remote)

    def _arm(self, now: float) -> None:
        when = self.core.get_timer()
        if self._timer is not None:
            if when is not None and self._timer.when() == when:
                return
            self._timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = asyncio.get_running_loop().call_at(max(when, now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        self.core.handle_timer(now)
        self._pump(now)
