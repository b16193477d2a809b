"""Drive the MicroPython device DTLS client (micropython/iotdtls_mp/dtls.py) over a real UDP socket on CPython.

The device client is sans-IO; `UdpDriver` is the thinnest possible I/O loop around it (the same shape as main.py's
Device.wait): send what ``datagrams()`` returns, feed what the socket receives to ``receive()``, call ``on_timer()``
at ``timer()``. Every datagram in each direction is recorded (time, size, phase) so tests can report the bytes a
handshake costs on the wire.
"""

from __future__ import annotations

import asyncio
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mp_shim import import_device

from iotdtls.netem import Address, Direction, Impairment, NetemProxy

LOCALHOST = "127.0.0.1"


def load_dtls() -> Any:
    """The device ``iotdtls_mp.dtls`` module, freshly imported with the cryptolib (AES-ECB) shim."""
    for name in ("iotdtls_mp.dtls", "iotdtls_mp.aes", "iotdtls_mp.ccm", "iotdtls_mp.prf"):
        sys.modules.pop(name, None)
    import_device("aes")
    return import_device("dtls")


@dataclass
class Wire:
    """Datagrams seen by the device: (seconds since start, direction "out"/"in", size, phase)."""

    log: list[tuple[float, str, int, str]] = field(default_factory=list)
    raw: list[tuple[str, bytes]] = field(default_factory=list)  # (direction, datagram), in order

    def add(self, t: float, direction: str, data: bytes, phase: str) -> None:
        self.log.append((t, direction, len(data), phase))
        self.raw.append((direction, bytes(data)))

    def count(self, direction: str, phase: str | None = None) -> tuple[int, int]:
        """(datagrams, bytes of UDP payload) in `direction`, optionally of one phase only."""
        sizes = [s for _, d, s, p in self.log if d == direction and (phase is None or p == phase)]
        return len(sizes), sum(sizes)

    def sizes(self, direction: str, phase: str | None = None) -> list[int]:
        return [s for _, d, s, p in self.log if d == direction and (phase is None or p == phase)]

    def summary(self, phase: str = "handshake") -> str:
        out_n, out_b = self.count("out", phase)
        in_n, in_b = self.count("in", phase)
        return (f"{out_n + in_n} datagrams / {out_b + in_b} B (client->server {out_n} dg {out_b} B "
                f"{self.sizes('out', phase)}, server->client {in_n} dg {in_b} B {self.sizes('in', phase)})")


class UdpDriver:
    """One device client talking to 127.0.0.1:port from its own UDP socket."""

    def __init__(self, client: Any, port: int, host: str = LOCALHOST) -> None:
        self.client = client
        self.addr = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, 0))
        self.t0 = time.monotonic()
        self.wire = Wire()
        self.phase = "handshake"
        self.received: list[bytes] = []
        self.foreign = 0  # datagrams from other addresses (ignored)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def close(self) -> None:
        """close_notify if established, then close the socket."""
        self.client.close()
        self.flush()
        self.sock.close()

    def __enter__(self) -> UdpDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sock.fileno() != -1:
            self.close()

    def flush(self) -> None:
        for d in self.client.datagrams():
            self.wire.add(self.now(), "out", d, self.phase)
            self.sock.sendto(d, self.addr)

    def run(self, done: Callable[[], bool], timeout: float) -> bool:
        """Pump I/O and timers until done() (True) or `timeout` seconds pass (False)."""
        end = self.now() + timeout
        c = self.client
        while True:
            self.flush()
            self.received.extend(c.recv())
            if done():
                return True
            now = self.now()
            if now >= end:
                return False
            t = c.timer()
            if t is not None and t <= now:
                c.on_timer(now)
                continue
            wait = end - now if t is None else min(end, t) - now
            ready, _, _ = select.select([self.sock], [], [], max(0.0, wait))
            if not ready:
                continue
            d, a = self.sock.recvfrom(4096)
            if a != self.addr:
                self.foreign += 1
                continue
            self.wire.add(self.now(), "in", d, self.phase)
            c.receive(d, self.now())

    def connect(self, timeout: float = 10.0) -> bool:
        """Handshake; True when established. On False see client.error / client.closed."""
        self.client.connect(self.now())
        ok = self.run(lambda: self.client.established or self.client.closed, timeout)
        self.phase = "data"
        return ok and self.client.established

    def send(self, data: bytes) -> None:
        self.client.send(data)
        self.flush()

    def wait_data(self, predicate: Callable[[bytes], bool], timeout: float = 5.0) -> bytes:
        """Wait until the concatenated application data received satisfies `predicate`; returns it."""
        self.run(lambda: predicate(b"".join(self.received)) or self.client.closed, timeout)
        return b"".join(self.received)


class UdpRelay:
    """A recording UDP relay: iotdtls.netem's NetemProxy with no impairment, on an event loop in a daemon thread.

    Clients send to 127.0.0.1:`port` (known after ``__enter__``); ``log`` holds (seconds since start,
    "c2s"/"s2c", datagram) for every datagram relayed.
    """

    def __init__(self, target_port: int, host: str = LOCALHOST) -> None:
        self.log: list[tuple[float, str, bytes]] = []
        self.port = 0
        self.t0 = time.monotonic()
        self._loop = asyncio.new_event_loop()
        self._proxy = NetemProxy((host, target_port), Impairment(), observer=self._observe)
        self._thread = threading.Thread(target=self._loop.run_forever, name="UdpRelay", daemon=True)

    def _observe(self, direction: Direction, _client: Address, data: bytes, _delays: list[float]) -> None:
        self.log.append((time.monotonic() - self.t0, direction, bytes(data)))

    def __enter__(self) -> UdpRelay:
        self._thread.start()
        _, self.port = asyncio.run_coroutine_threadsafe(self._proxy.start(LOCALHOST, 0), self._loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._proxy.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2)
        self._loop.close()
