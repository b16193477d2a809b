"""Finding 6: what the server sends to an address that answered one HelloVerifyRequest and then went silent.

:class:`AmplificationMeter` is a raw UDP client on its own 127.0.0.x address: ClientHello, HelloVerifyRequest,
ClientHello with the cookie; then either silence (``mode="silent"``: the server's flight and its retransmissions
arrive) or the same ClientHello again every ``interval`` seconds (``mode="repeat"``; each copy gets the next record
sequence number, as a real retransmission does). Bytes are UDP payload bytes, counted each way on the socket.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iotdtls import DTLSConfiguration, DTLSConnection

from .attack_common import (
    ServerCommand,
    ServerProcess,
    Timers,
    is_hello_verify_request,
    records,
    starts_flight,
    udp_socket,
    with_record_seq,
)
from .attack_credentials import Credentials


@dataclass
class Traffic:
    sent: list[tuple[float, int]] = field(default_factory=list)
    received: list[tuple[float, int, bool]] = field(default_factory=list)  # (time, bytes, starts a flight)

    def bytes_sent(self, until: float = float("inf")) -> int:
        return sum(n for t, n in self.sent if t <= until)

    def bytes_received(self, until: float = float("inf")) -> int:
        return sum(n for t, n, _ in self.received if t <= until)

    def ratio(self, until: float = float("inf")) -> float:
        return self.bytes_received(until) / max(1, self.bytes_sent(until))

    def flight_times(self, until: float = float("inf")) -> list[float]:
        return [t for t, _, start in self.received if start and t <= until]

    def min_flight_interval(self, until: float = float("inf")) -> float | None:
        times = self.flight_times(until)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return min(gaps) if gaps else None


class AmplificationMeter:
    """See the module docstring. ``run()`` blocks for ``duration`` seconds; ``start()``/``join()`` run it in a
    thread. Times in :attr:`traffic` count from the first ClientHello."""

    def __init__(self, server: tuple[str, int], config: Callable[[], DTLSConfiguration], ip: str, *,
                 mode: str = "silent", duration: float = 16.0, interval: float = 0.1) -> None:
        if mode not in ("silent", "repeat"):
            raise ValueError("mode is 'silent' or 'repeat'")
        self.server, self.config, self.ip = server, config, ip
        self.mode, self.duration, self.interval = mode, duration, interval
        self.traffic = Traffic()
        self.cookie_exchange_ok = False
        self.client_hello_bytes = 0
        self.hello_verify_bytes = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._guarded, daemon=True, name=f"AmplificationMeter-{ip}")

    def start(self) -> AmplificationMeter:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _guarded(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # reported by join()
            self.error = exc

    def run(self) -> None:
        sock = udp_socket(self.ip, rcvbuf=1 << 20, blocking=True)
        t0 = time.monotonic()

        def send(data: bytes) -> None:
            sock.sendto(data, self.server)
            self.traffic.sent.append((time.monotonic() - t0, len(data)))

        def receive(until: float) -> bytes | None:
            sock.settimeout(max(0.0005, until - (time.monotonic() - t0)))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return None
            self.traffic.received.append((time.monotonic() - t0, len(data), starts_flight(data)))
            return data

        try:
            conn = DTLSConnection(self.config())
            conn.connect(0.0)
            for dgram in conn.datagrams_to_send(0.0):
                send(dgram)
            hello: bytes | None = None
            while hello is None and time.monotonic() - t0 < min(self.duration, 5.0):
                data = receive(min(self.duration, 5.0))
                if data is not None and is_hello_verify_request(data):
                    self.hello_verify_bytes = len(data)
                    conn.receive_datagram(data, 0.0)
                    out = conn.datagrams_to_send(0.0)
                    if len(out) == 1:
                        hello = out[0]
            if hello is None:
                return
            self.cookie_exchange_ok = True
            self.client_hello_bytes = len(hello)
            send(hello)
            seq = next(records(hello))[2]
            next_send = time.monotonic() - t0 + self.interval
            while (now := time.monotonic() - t0) < self.duration:
                if self.mode == "repeat" and now >= next_send:
                    seq += 1
                    send(with_record_seq(hello, seq))
                    next_send += self.interval
                    continue
                receive(min(self.duration, next_send) if self.mode == "repeat" else self.duration)
        finally:
            sock.close()


SUITES = ("psk", "rpk", "chain")


def run_amplification(command: ServerCommand, creds: Credentials, timers: Timers, *,
                      windows: tuple[float, ...] = (16.0, 120.0), repeat_window: float = 16.0,
                      repeat_interval: float = 0.1, suites: tuple[str, ...] = SUITES) -> dict[str, Any]:
    """Finding 6: one silent and one repeating meter per suite, all at once, each from its own address.
    Servers: PSK + raw public key (``--psk-file --key``, no client keys asked for) and an X.509 2-certificate
    chain (``--key --cert``). Silent meters run for ``max(windows)`` plus one second."""
    base = timers.server_args()
    with ServerProcess(command, [*creds.psk_args(), *creds.rpk_args(trust_device=False), *base]) as mixed, \
            ServerProcess(command, [*creds.chain_args(), *base]) as chain:
        setups = {"psk": (mixed, lambda: creds.psk_client()), "rpk": (mixed, creds.anonymous_rpk_client),
                  "chain": (chain, creds.chain_client)}
        meters: dict[tuple[str, str], AmplificationMeter] = {}
        for i, suite in enumerate(suites):
            server, config = setups[suite]
            meters[suite, "silent"] = AmplificationMeter(server.address, config, f"127.0.0.{11 + i}",
                                                         mode="silent", duration=max(windows) + 1.0)
            meters[suite, "repeat"] = AmplificationMeter(server.address, config, f"127.0.0.{21 + i}",
                                                         mode="repeat", duration=repeat_window,
                                                         interval=repeat_interval)
        for meter in meters.values():
            meter.start()
        for meter in meters.values():
            meter.join()
    out: dict[str, Any] = {"retransmit_initial_s": timers.initial, "retransmit_max_s": timers.maximum,
                              "handshake_timeout_s": timers.handshake, "windows_s": list(windows),
                              "repeat_window_s": repeat_window, "repeat_interval_s": repeat_interval}
    for suite in suites:
        silent, repeat = meters[suite, "silent"].traffic, meters[suite, "repeat"].traffic
        ok = meters[suite, "silent"].cookie_exchange_ok and meters[suite, "repeat"].cookie_exchange_ok
        flights = len(silent.flight_times())
        flight_bytes = (silent.bytes_received() - meters[suite, "silent"].hello_verify_bytes) / max(1, flights)
        hello_bytes = meters[suite, "silent"].client_hello_bytes
        out[suite] = {
            "cookie_exchange_ok": ok,
            "client_hello_with_cookie_bytes": hello_bytes,
            "flight_bytes": round(flight_bytes),
            "flight_per_hello_ratio": round(flight_bytes / max(1, hello_bytes), 2),
            "silent": {
                f"{w:g}s": {"sent": silent.bytes_sent(w), "received": silent.bytes_received(w),
                            "ratio": round(silent.ratio(w), 2), "flights": len(silent.flight_times(w))}
                for w in windows
            },
            "repeat": {"sent": repeat.bytes_sent(), "received": repeat.bytes_received(),
                       "ratio": round(repeat.ratio(), 2), "flights": len(repeat.flight_times()),
                       "hellos_sent": len(repeat.sent),
                       "min_flight_interval_s": repeat.min_flight_interval()},
        }
    return out
