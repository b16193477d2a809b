"""Local UDP ports for the benchmarks that run real peers: a free one, and whether one is bound."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free on `host` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def udp_bound(port: int) -> bool:
    """True if some socket is bound to UDP `port` (any address), read from /proc/net/udp{,6}."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(len(f := line.split()) > 1 and f[1].endswith(suffix) for line in lines):
            return True
    return False
