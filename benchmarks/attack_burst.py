"""Finding 5: synchronized bursts of ClientHellos against the server socket's receive buffer.

:func:`burst_hellos` opens ``count`` sockets (each with a large SO_RCVBUF, so no reply is lost on our side), has
every one send a ClientHello at once, and counts the HelloVerifyRequests that come back. Every ClientHello is
answered by a server that reads it, so each one missing was dropped by the kernel at the server's socket, which
the ``drops`` column of /proc/net/udp confirms.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotdtls import DTLSConfiguration, DTLSConnection

from .attack_common import (
    SO_RCVBUFFORCE,
    ServerCommand,
    ServerProcess,
    Timers,
    is_hello_verify_request,
    raise_fd_limit,
    udp_socket,
)
from .attack_credentials import Credentials


@dataclass
class Burst:
    sent: int
    answered: int
    send_seconds: float
    answer_seconds: float

    @property
    def lost(self) -> int:
        return self.sent - self.answered


def udp_rcvbuf_errors() -> int:
    """The host's UDP ``RcvbufErrors`` counter (/proc/net/snmp)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    if len(lines) < 2:
        return -1
    return int(dict(zip(lines[0][1:], lines[1][1:], strict=False)).get("RcvbufErrors", -1))


def kernel_buffer_facts(wanted: int = 4 << 20) -> dict[str, Any]:
    """What a UDP socket can get here: net.core.rmem_max/rmem_default, what SO_RCVBUF of ``wanted`` yields, and
    whether SO_RCVBUFFORCE (root / CAP_NET_ADMIN: past rmem_max) works."""
    def sysctl(name: str) -> int | None:
        try:
            return int(Path(f"/proc/sys/net/core/{name}").read_text())
        except (OSError, ValueError):
            return None

    facts: dict[str, Any] = {"rmem_max": sysctl("rmem_max"), "rmem_default": sysctl("rmem_default"),
                             "euid": os.geteuid()}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        facts["default_so_rcvbuf"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
        facts["so_rcvbuf_of_wanted"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 * wanted)
            facts["so_rcvbufforce_of_4x_wanted"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except OSError as exc:
            facts["so_rcvbufforce_of_4x_wanted"] = f"refused: {exc.strerror}"
    return facts


def burst_hellos(server: tuple[str, int], config: Callable[[], DTLSConfiguration], count: int = 1000, *,
                 ip: str = "127.0.0.6", rcvbuf: int = 1 << 20, quiet: float = 1.0, timeout: float = 10.0) -> Burst:
    """``count`` sockets on ``ip`` each send one ClientHello at once; count the HelloVerifyRequests back.
    Collecting stops when all are answered, after ``quiet`` seconds without an answer, or after ``timeout``."""
    raise_fd_limit(count + 256)
    socks = [udp_socket(ip, rcvbuf=rcvbuf) for _ in range(count)]
    hellos = []
    for _ in socks:
        conn = DTLSConnection(config())
        conn.connect(0.0)
        hellos.append(conn.datagrams_to_send(0.0)[0])
    sel = selectors.DefaultSelector()
    for sock in socks:
        sel.register(sock, selectors.EVENT_READ, sock)
    answered_socks: set[int] = set()
    try:
        t0 = time.monotonic()
        for sock, hello in zip(socks, hellos, strict=True):
            sock.sendto(hello, server)
        sent_at = time.monotonic()
        last = sent_at
        while len(answered_socks) < count:
            now = time.monotonic()
            if now - last > quiet or now - t0 > timeout:
                break
            for key, _ in sel.select(0.05):
                ready: socket.socket = key.data
                try:
                    data = ready.recv(65536)
                except OSError:
                    continue
                if is_hello_verify_request(data):
                    answered_socks.add(ready.fileno())
                    last = time.monotonic()
        return Burst(count, len(answered_socks), sent_at - t0, last - t0)
    finally:
        sel.close()
        for sock in socks:
            sock.close()


def run_bursts(command: ServerCommand, creds: Credentials, timers: Timers, *, bursts: int = 3, count: int = 1000,
               pause: float = 1.0, receive_buffer: int | None = None) -> dict[str, Any]:
    """Finding 5: ``bursts`` synchronized bursts of ``count`` ClientHellos against a PSK server.
    ``receive_buffer`` passes ``--receive-buffer`` (only servers that have the flag)."""
    args = [*creds.psk_args(), *timers.server_args()]
    if receive_buffer is not None:
        args += ["--receive-buffer", str(receive_buffer)]
    with ServerProcess(command, args) as server:
        drops0, errors0 = server.socket_drops(), udp_rcvbuf_errors()
        results = []
        for i in range(bursts):
            if i:
                time.sleep(pause)
            results.append(burst_hellos(server.address, creds.psk_client, count))
        time.sleep(0.2)
        drops, errors = server.socket_drops() - drops0, udp_rcvbuf_errors() - errors0
        rb = server.receive_buffer()
    sent = sum(b.sent for b in results)
    lost = sum(b.lost for b in results)
    return {
        "bursts": bursts,
        "hellos_per_burst": count,
        "server_receive_buffer_bytes": rb,
        "sent": sent,
        "answered": sent - lost,
        "lost": lost,
        "lost_per_burst": [b.lost for b in results],
        "send_ms_per_burst": [round(b.send_seconds * 1000, 1) for b in results],
        "answers_done_ms_per_burst": [round(b.answer_seconds * 1000, 1) for b in results],
        "server_socket_drops": drops,
        "host_udp_rcvbuf_errors": errors,
        "kernel": kernel_buffer_facts(),
    }
