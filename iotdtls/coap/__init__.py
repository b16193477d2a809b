"""CoAPs (``coaps://``, RFC 7252 section 9) for aiocoap over iotdtls.

``client_context()`` and ``server_context()`` return ordinary :class:`aiocoap.Context` objects whose DTLS
transport is iotdtls. They never load aiocoap's tinydtls transports, so iotdtls serves ``coaps://`` even where
DTLSSocket is installed. Private aiocoap API used (tested with aiocoap 0.4.17): ``Context(...)``'s constructor,
``Context._append_tokenmanaged_messagemanaged_transport`` and ``CredentialsMap._class_map``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from aiocoap import Context

from ..config import DTLSConfiguration
from .client import ClientSession, IotdtlsClientTransport
from .credentials import RawPublicKeyCredential, load_credentials, register, server_config
from .server import IotdtlsServerTransport, ServerRemote

__all__ = ["ClientSession", "RawPublicKeyCredential", "ServerRemote", "client_context", "load_credentials",
           "server_context"]

#: aiocoap credentials: a CredentialsMap, a dict in its JSON form, a JSON file name, or None.
Credentials = Any


async def client_context(credentials: Credentials = None, *, config: DTLSConfiguration | None = None,
                         plain_udp: bool = True, loggername: str = "coap") -> Context:
    """An aiocoap client context: ``coaps://`` over iotdtls (and ``coap://`` over UDP unless ``plain_udp`` is
    False). ``credentials`` is aiocoap's credentials map, as a CredentialsMap, a dict or a JSON file name.
    ``config`` gives DTLS settings (mtu, timers, idle_timeout); credentials come from the map per request."""
    register()
    base = config or DTLSConfiguration()
    ctx = Context(loop=asyncio.get_running_loop(), serversite=None, loggername=loggername,
                  client_credentials=load_credentials(credentials))
    log = logging.getLogger(loggername + ".iotdtls")

    async def make(mman: Any) -> IotdtlsClientTransport:
        return IotdtlsClientTransport(mman, base, log)

    await ctx._append_tokenmanaged_messagemanaged_transport(make)
    if plain_udp:
        from aiocoap.transports.udp6 import MessageInterfaceUDP6

        loop = asyncio.get_running_loop()
        await ctx._append_tokenmanaged_messagemanaged_transport(
            lambda mman: MessageInterfaceUDP6.create_client_transport_endpoint(mman, log=ctx.log, loop=loop))
    return ctx


async def server_context(site: Any, bind: tuple[str, int] | None = None, credentials: Credentials = None, *,
                         config: DTLSConfiguration | None = None, max_sessions: int = 10000,
                         max_handshakes: int = 1000, receive_buffer: int = 4 << 20,
                         loggername: str = "coap-server") -> Context:
    """An aiocoap server context serving ``site`` over ``coaps://`` on ``bind`` (default ``("::", 5684)``).

    Every PSK (``dtls``) and raw-public-key (``iotdtls-rpk``) entry of ``credentials`` is served at once; a
    request's ``remote.authenticated_claims`` names the entry the client authenticated with. ``config`` gives
    DTLS settings (mtu, timers, idle_timeout, require_client_auth, a private_key or certificate_chain).
    ``max_handshakes`` bounds handshakes in progress (more ClientHellos are dropped and retried by the clients);
    ``receive_buffer`` is the UDP socket buffer asked of the kernel (capped by net.core.rmem_max)."""
    register()
    cmap = load_credentials(credentials)
    dtls = server_config(cmap, replace(config or DTLSConfiguration(is_client=False), is_client=False))
    dtls.validate()
    ctx = Context(loop=asyncio.get_running_loop(), serversite=site, loggername=loggername,
                  server_credentials=cmap)
    log = logging.getLogger(loggername + ".iotdtls")

    async def make(mman: Any) -> IotdtlsServerTransport:
        return await IotdtlsServerTransport.create(mman, bind, dtls, cmap, log, max_sessions=max_sessions,
                                                   max_handshakes=max_handshakes, receive_buffer=receive_buffer)

    await ctx._append_tokenmanaged_messagemanaged_transport(make)
    return ctx
