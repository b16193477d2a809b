"""The UDP receive buffer a server asks for: a burst of handshakes (a fleet coming back after a gateway restart)
overflows the kernel's default ~208 KB buffer long before the CPU is busy."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys

#: What servers ask for by default. Linux caps SO_RCVBUF at net.core.rmem_max (208 KB by default): raise it
#: with ``sysctl -w net.core.rmem_max=8388608`` (see docs/resources.md), or run with CAP_NET_ADMIN.
DEFAULT_RECEIVE_BUFFER = 4 << 20
#: Python does not name it; Linux's value (asm-generic/socket.h).
SO_RCVBUFFORCE: int | None = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)


def set_receive_buffer(sock: socket.socket, size: int, log: logging.Logger | None = None) -> int:
    """Ask for a ``size``-byte receive buffer; returns what the kernel granted (Linux reports twice the value
    it was given, to account for its bookkeeping, so the granted size is compared against twice ``size``).
    If the kernel's cap stops it, SO_RCVBUFFORCE is tried (it works with CAP_NET_ADMIN, e.g. as root), and
    failing that one warning names the sysctl to raise."""
    if size <= 0:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted < size and SO_RCVBUFFORCE is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted < size and log is not None:
        log.warning("UDP receive buffer is %d KB, not the %d KB asked for: bursts of datagrams may be dropped; "
                    "raise the limit with: sysctl -w net.core.rmem_max=%d", granted // 2048, size // 1024,
                    2 * size)
    return granted
