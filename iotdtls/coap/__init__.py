"""CoAPs (``coaps://``, RFC 7252 section 9) for aiocoap over iotdtls.

``client_context()`` and ``server_context()`` return ordinary :class:`aiocoap.Context` objects whose DTLS
transport is iotdtls. They never load aiocoap's tinydtls transports, so iotdtls serves ``coaps://`` even where
DTLSSocket is installed. Private aiocoap API used (tested with aiocoap 0.4.17): ``Context(...)``'s constructor,
``Context._append_tokenmanaged_messagemanaged_transport`` (the client; the server repeats its four lines with its
own message manager, :class:`~iotdtls.coap.manager.BoundedMessageManager`, which overrides private methods of
aiocoap's ``MessageManager``) and ``CredentialsMap._class_map``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from aiocoap import Context
from aiocoap.tokenmanager import TokenManager

from ..aio.liveness import ProgressCallback
from ..aio.sockbuf import DEFAULT_RECEIVE_BUFFER
from ..config import DTLSConfiguration
from ..resumption import Session, TicketKeys
from .client import ClientSession, IotdtlsClientTransport
from .credentials import RawPublicKeyCredential, load_credentials, register, server_config
from .limits import KIB, MIB, ServerLimits
from .manager import BoundedMessageManager
from .server import IotdtlsServerTransport, ServerRemote

__all__ = ["ClientSession", "RawPublicKeyCredential", "ServerLimits", "ServerRemote", "client_context",
           "load_credentials", "server_context", "server_transport"]

#: aiocoap credentials: a CredentialsMap, a dict in its JSON form, a JSON file name, or None.
Credentials = Any


async def client_context(credentials: Credentials = None, *, config: DTLSConfiguration | None = None,
                         plain_udp: bool = True, loggername: str = "coap",
                         on_progress: ProgressCallback | None = None,
                         sessions: dict[tuple[str, int], Session] | None = None) -> Context:
    """An aiocoap client context: ``coaps://`` over iotdtls (and ``coap://`` over UDP unless ``plain_udp`` is
    False). ``credentials`` is aiocoap's credentials map, as a CredentialsMap, a dict or a JSON file name.
    ``config`` gives DTLS settings (mtu, timers, idle_timeout); credentials come from the map per request.
    A ``coaps://`` request to a port where nothing listens fails with an ``aiocoap.error.NetworkError`` whose
    ``__cause__`` is :class:`~iotdtls.errors.ConnectionRefused`, after one DTLS or CoAP retransmission.
    ``on_progress`` is called with a line per handshake retransmission (default: logged on ``iotdtls.aio``).
    ``sessions`` maps (host, port) to the DTLS session a handshake there offers for resumption; the transport
    keeps it up to date (the last resumable session per server), so a caller can save it and pass it again."""
    register()
    base = config or DTLSConfiguration()
    ctx = Context(loop=asyncio.get_running_loop(), serversite=None, loggername=loggername,
                  client_credentials=load_credentials(credentials))
    log = logging.getLogger(loggername + ".iotdtls")

    async def make(mman: Any) -> IotdtlsClientTransport:
        return IotdtlsClientTransport(mman, base, log, on_progress, sessions)

    await ctx._append_tokenmanaged_messagemanaged_transport(make)
    if plain_udp:
        from aiocoap.transports.udp6 import MessageInterfaceUDP6

        loop = asyncio.get_running_loop()
        await ctx._append_tokenmanaged_messagemanaged_transport(
            lambda mman: MessageInterfaceUDP6.create_client_transport_endpoint(mman, log=ctx.log, loop=loop))
    return ctx


async def server_context(site: Any, bind: tuple[str, int] | None = None, credentials: Credentials = None, *,
                         config: DTLSConfiguration | None = None, max_sessions: int = 10000,
                         max_handshakes: int = 1000, max_handshakes_per_ip: int | None = None,
                         max_sessions_per_identity: int | None = 1, max_anonymous_per_ip: int | None = 4,
                         receive_buffer: int = DEFAULT_RECEIVE_BUFFER,
                         max_datagram: int | None = None, max_message_size: int = 1152, max_options: int = 64,
                         dedup_bytes_per_session: int = 64 * KIB, dedup_bytes_total: int = 8 * MIB,
                         max_uploads_per_session: int = 4, max_upload_bytes: int = 64 * KIB,
                         upload_bytes_total: int = 8 * MIB, upload_lifetime: float = 93.0,
                         max_block2_per_session: int = 4, block2_bytes_total: int = 8 * MIB,
                         block2_lifetime: float = 93.0, max_observers_per_session: int = 8,
                         con_notification_every: int = 100, con_notification_interval: float = 86400.0,
                         max_backlog_per_session: int = 32, loggername: str = "coap-server",
                         session_cache: int = 1000, ticket_keys: TicketKeys | None = None) -> Context:
    """An aiocoap server context serving ``site`` over ``coaps://`` on ``bind`` (default ``("::", 5684)``).

    Every PSK (``dtls``) and raw-public-key (``iotdtls-rpk``) entry of ``credentials`` is served at once; a
    request's ``remote.authenticated_claims`` names the entry the client authenticated with. ``config`` gives
    DTLS settings (mtu, timers, idle_timeout, require_client_auth, a private_key or certificate_chain).
    ``max_handshakes`` bounds handshakes in progress (more ClientHellos are dropped and retried by the clients),
    and with ``max_sessions``, ``max_handshakes_per_ip``, ``max_sessions_per_identity`` and
    ``max_anonymous_per_ip`` keeps the DTLS server fair (:class:`~iotdtls.DTLSServer`, docs/resources.md);
    ``receive_buffer`` is the UDP socket buffer asked of the kernel (capped by net.core.rmem_max).
    Session resumption: ``session_cache`` session IDs (0: none), and RFC 5077 tickets with ``ticket_keys``.

    The other keywords bound what sessions can make the server hold (:class:`ServerLimits` describes each;
    ``max_datagram=None`` is 1500 bytes, or the mtu if larger). What each refused is counted in
    ``server_transport(ctx).stats``."""
    register()
    limits = ServerLimits(
        max_datagram=max_datagram, max_message_size=max_message_size, max_options=max_options,
        dedup_bytes_per_session=dedup_bytes_per_session, dedup_bytes_total=dedup_bytes_total,
        max_uploads_per_session=max_uploads_per_session, max_upload_bytes=max_upload_bytes,
        upload_bytes_total=upload_bytes_total, upload_lifetime=upload_lifetime,
        max_block2_per_session=max_block2_per_session, block2_bytes_total=block2_bytes_total,
        block2_lifetime=block2_lifetime, max_observers_per_session=max_observers_per_session,
        con_notification_every=con_notification_every, con_notification_interval=con_notification_interval,
        max_backlog_per_session=max_backlog_per_session)
    limits.validate()
    cmap = load_credentials(credentials)
    dtls = server_config(cmap, replace(config or DTLSConfiguration(is_client=False), is_client=False))
    dtls.validate()
    ctx = Context(loop=asyncio.get_running_loop(), serversite=site, loggername=loggername,
                  server_credentials=cmap)
    log = logging.getLogger(loggername + ".iotdtls")
    # Context._append_tokenmanaged_messagemanaged_transport, with the bounded message manager
    tman = TokenManager(ctx)
    mman = BoundedMessageManager(tman, limits)
    transport = await IotdtlsServerTransport.create(
        mman, bind, dtls, cmap, log, receive_buffer=receive_buffer, limits=limits, max_sessions=max_sessions,
        max_handshakes=max_handshakes, max_handshakes_per_ip=max_handshakes_per_ip,
        max_sessions_per_identity=max_sessions_per_identity, max_anonymous_per_ip=max_anonymous_per_ip,
        session_cache=session_cache, ticket_keys=ticket_keys)
    mman.message_interface = transport
    tman.token_interface = mman
    ctx.request_interfaces.append(tman)
    return ctx


def server_transport(ctx: Context) -> IotdtlsServerTransport:
    """The iotdtls transport of a context made by :func:`server_context` (its ``stats``, ``core``, ``limits``)."""
    for interface in ctx.request_interfaces:
        transport = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        if isinstance(transport, IotdtlsServerTransport):
            return transport
    raise ValueError("not a context made by iotdtls.coap.server_context()")
