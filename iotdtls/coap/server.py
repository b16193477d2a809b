"""The server half of the aiocoap transport: one UDP socket, a sans-IO :class:`~iotdtls.server.DTLSServer` in
front, one aiocoap remote per authenticated peer with its ``authenticated_claims``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from aiocoap import Message, error, interfaces
from aiocoap.credentials import CredentialsMap
from aiocoap.numbers import COAPS_PORT
from aiocoap.util import hostportjoin

from ..config import DTLSConfiguration
from ..events import ConnectionTerminated, DataReceived, HandshakeCompleted
from ..server import DTLSServer
from .credentials import claims_for
from .hostinfo import local_hostinfo
from .sizing import block_size_exp_for_mtu

Address = Any  # what the UDP socket reports: (host, port[, flowinfo, scope_id])


class ServerRemote(interfaces.EndpointAddress):  # type: ignore[misc]
    """A client with an established DTLS session, as aiocoap sees it."""

    scheme = "coaps"
    is_multicast = False
    is_multicast_locally = False
    #: Largest RFC 7959 block size exponent whose blocks fit one DTLS record (a plain attribute: aiocoap
    #: lowers it per remote when a peer asks for smaller blocks).
    maximum_block_size_exp: int = 6

    def __init__(self, transport: IotdtlsServerTransport, addr: Address, identity: bytes, claims: list[str],
                 block_exp: int) -> None:
        self._transport = transport
        self.address = addr
        #: The PSK identity or public-key identity the client authenticated with (b"" for anonymous clients).
        self.identity = identity
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
        return 1 << (self.maximum_block_size_exp + 4)

    def __repr__(self) -> str:
        return f"<ServerRemote {self.hostinfo} identity={self.identity!r}>"


class IotdtlsServerTransport(interfaces.MessageInterface, asyncio.DatagramProtocol):  # type: ignore[misc]
    """aiocoap MessageInterface serving ``coaps://`` on one UDP socket."""

    def __init__(self, mman: Any, config: DTLSConfiguration, credentials: CredentialsMap, log: logging.Logger,
                 *, max_sessions: int, max_handshakes: int) -> None:
        self._mman = mman
        self._credentials = credentials
        self.log = log
        self.core = DTLSServer(config, max_sessions=max_sessions, max_handshakes=max_handshakes)
        self._block_exp = block_size_exp_for_mtu(config.mtu)
        self._remotes: dict[Address, ServerRemote] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    async def create(cls, mman: Any, bind: tuple[str, int] | None, config: DTLSConfiguration,
                     credentials: CredentialsMap, log: logging.Logger, *, max_sessions: int = 10000,
                     max_handshakes: int = 1000, receive_buffer: int = 4 << 20) -> IotdtlsServerTransport:
        host, port = bind or ("::", COAPS_PORT)
        self = cls(mman, config, credentials, log, max_sessions=max_sessions, max_handshakes=max_handshakes)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        if receive_buffer:
            # a burst of handshakes (a fleet coming back after a gateway restart) overflows the kernel's default
            # ~200 KB socket buffer long before the CPU is busy; the kernel caps this at net.core.rmem_max
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        return self

    @property
    def hostinfo_local(self) -> str:
        return local_hostinfo(self._udp)

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
        remote: ServerRemote = message.remote
        if self._remotes.get(remote.address) is not remote:
            self.log.info("Not sending to %s: its DTLS session has ended", remote.hostinfo)
            return
        try:
            self.core.send(remote.address, message.encode())
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
                try:
                    message = Message.decode(event.data, remote=found)
                except error.UnparsableMessage:
                    self.log.warning("Ignoring unparsable CoAP message from %s", found.hostinfo)
                    continue
                if self._mman is not None:
                    self._mman.dispatch_message(message)
            elif isinstance(event, HandshakeCompleted):
                old = self._remotes.pop(addr, None)
                if old is not None:
                    self._end(addr, old, error.LibraryShutdown("Replaced by a new DTLS session"))
                claims = claims_for(self._credentials, event.identity, event.peer)
                self._remotes[addr] = ServerRemote(self, addr, event.identity, claims, self._block_exp)
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
