"""aiocoap's host-info text for the local end of a transport's UDP socket."""

from __future__ import annotations

import asyncio

from aiocoap.util import hostportjoin


def local_hostinfo(udp: asyncio.DatagramTransport | None) -> str:
    """``host:port`` of the socket `udp` is bound to; "unknown" before it exists."""
    if udp is None:
        return "unknown"
    host, port, *_ = udp.get_extra_info("sockname")
    return str(hostportjoin(host, port))
