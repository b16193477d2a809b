"""Finding 7: does the server answer an unknown PSK identity at a different speed than a known one with a wrong key?

Each try is a full cookie exchange, then the client's final flight (ClientKeyExchange, ChangeCipherSpec, Finished)
with either an unknown identity or a known identity and a wrong key; both identities have the same length. The
time from sending that flight to the server's alert is what an attacker can observe. Tries of both kinds are
interleaved in random order, so drift in machine speed hits both alike; figures are medians.

:func:`probe_network` times it against a real server over UDP; :func:`probe_inprocess` times only
``DTLSServer.receive_datagram`` of the final flight (the server's work, without the network and the event loop).
"""

from __future__ import annotations

import gc
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from iotdtls import DTLSConfiguration, DTLSConnection, DTLSServer

from .attack_common import (
    CT_CCS,
    PSK_KEY,
    WRONG_KEY,
    ServerCommand,
    ServerProcess,
    Timers,
    median,
    plain_alerts,
    records,
)
from .attack_credentials import Credentials

KNOWN = b"dev1"
UNKNOWN = b"zzz9"  # the same length as KNOWN: identity length must not be what differs
KINDS = ("unknown", "known")


def _client(kind: str) -> DTLSConfiguration:
    return DTLSConfiguration(psk_identity=UNKNOWN if kind == "unknown" else KNOWN, psk=WRONG_KEY)


@dataclass
class TimingSamples:
    """Seconds per try, by kind; ``pairs`` holds (unknown, known) of the same round."""

    unknown: list[float] = field(default_factory=list)
    known: list[float] = field(default_factory=list)
    pairs: list[tuple[float, float]] = field(default_factory=list)
    alerts: dict[str, set[int]] = field(default_factory=lambda: {"unknown": set(), "known": set()})
    failed: int = 0

    def add_round(self, times: dict[str, float]) -> None:
        self.unknown.append(times["unknown"])
        self.known.append(times["known"])
        self.pairs.append((times["unknown"], times["known"]))

    def summary(self) -> dict[str, Any]:
        mu, mk = median(self.unknown), median(self.known)
        return {
            "tries_each": len(self.pairs),
            "median_unknown_us": round(mu * 1e6, 2),
            "median_known_us": round(mk * 1e6, 2),
            "difference_us": round((mu - mk) * 1e6, 2),
            "median_paired_difference_us": round(median([u - k for u, k in self.pairs]) * 1e6, 2),
            "alerts_unknown": sorted(self.alerts["unknown"]),
            "alerts_known": sorted(self.alerts["known"]),
            "failed_tries": self.failed,
        }


def _final_flight_over_udp(sock: socket.socket, server: tuple[str, int], kind: str, timeout: float
                           ) -> tuple[DTLSConnection, list[bytes]] | None:
    """Cookie exchange and server flight over ``sock``; the client's final flight, not yet sent."""
    conn = DTLSConnection(_client(kind))
    conn.connect(0.0)
    deadline = time.monotonic() + timeout
    out = conn.datagrams_to_send(0.0)
    while True:
        for dgram in out:
            sock.sendto(dgram, server)
        out = []
        while not out:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return None
            conn.receive_datagram(data, 0.0)
            out = conn.datagrams_to_send(0.0)
        if has_change_cipher_spec(out):
            return conn, out


def has_change_cipher_spec(datagrams: list[bytes]) -> bool:
    """True for a client's final flight (it carries the ChangeCipherSpec)."""
    return any(ct == CT_CCS for d in datagrams for ct, _, _, _ in records(d))


def probe_network(server: tuple[str, int], rounds: int, *, ip: str = "127.0.0.7", timeout: float = 2.0,
                  seed: int = 7) -> TimingSamples:
    """``rounds`` rounds of one try of each kind (random order), over UDP against ``server``."""
    rng = random.Random(seed)
    samples = TimingSamples()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ip, 0))
        for _ in range(rounds):
            order = list(KINDS)
            rng.shuffle(order)
            times: dict[str, float] = {}
            for kind in order:
                prepared = _final_flight_over_udp(sock, server, kind, timeout)
                if prepared is None:
                    samples.failed += 1
                    break
                _, flight = prepared
                sock.settimeout(timeout)
                t0 = time.perf_counter()
                for dgram in flight:
                    sock.sendto(dgram, server)
                alert: list[tuple[int, int]] = []
                try:
                    while not alert:
                        alert = plain_alerts(sock.recv(65536))
                except TimeoutError:
                    samples.failed += 1
                    break
                times[kind] = time.perf_counter() - t0
                samples.alerts[kind].add(alert[0][1])
            if len(times) == 2:
                samples.add_round(times)
    return samples


def probe_inprocess(rounds: int, *, psk_store: dict[bytes, bytes] | None = None, seed: int = 7,
                    kinds: tuple[str, str] = KINDS) -> TimingSamples:
    """The same tries against an in-process :class:`DTLSServer`; only its ``receive_datagram`` of the final
    flight is timed. ``kinds`` ("unknown"/"known") may name the same kind twice for an A/A noise check."""
    store = psk_store or {KNOWN: PSK_KEY}
    server = DTLSServer(DTLSConfiguration(is_client=False, psk_store=store))
    rng = random.Random(seed)
    samples = TimingSamples()
    port = 1024
    clock = time.perf_counter
    gc.collect()
    for _ in range(rounds):
        slots = [0, 1]
        rng.shuffle(slots)
        times: dict[str, float] = {}
        for slot in slots:
            kind = kinds[slot]
            port += 1
            addr = ("192.0.2.7", port)
            conn = DTLSConnection(_client(kind))
            conn.connect(0.0)
            flight = conn.datagrams_to_send(0.0)
            for _step in range(2):  # ClientHello -> HelloVerifyRequest; ClientHello with cookie -> server flight
                for dgram in flight:
                    server.receive_datagram(dgram, addr, 0.0)
                for dgram, _ in server.datagrams_to_send(0.0):
                    conn.receive_datagram(dgram, 0.0)
                flight = conn.datagrams_to_send(0.0)
            if not has_change_cipher_spec(flight):
                raise RuntimeError("in-process handshake did not reach the client's final flight")
            t0 = clock()
            for dgram in flight:
                server.receive_datagram(dgram, addr, 0.0)
            took = clock() - t0
            replies = server.datagrams_to_send(0.0)
            while server.next_event() is not None:
                pass
            alerts = [a for d, _ in replies for a in plain_alerts(d)]
            if not alerts:
                samples.failed += 1
            else:
                samples.alerts["unknown" if slot == 0 else "known"].add(alerts[0][1])
            times["unknown" if slot == 0 else "known"] = took
        samples.add_round(times)
    return samples


def run_timing(command: ServerCommand, creds: Credentials, timers: Timers, *, network_rounds: int,
               inprocess_rounds: int) -> dict[str, Any]:
    """Finding 7: network tries against a PSK server process, then the in-process variant and an A/A check."""
    with ServerProcess(command, [*creds.psk_args(), *timers.server_args()]) as server:
        probe_network(server.address, max(10, network_rounds // 20))  # warm-up
        network = probe_network(server.address, network_rounds)
    inproc = probe_inprocess(inprocess_rounds)
    same = probe_inprocess(inprocess_rounds, kinds=("known", "known"))
    return {"network": network.summary(), "inprocess": inproc.summary(),
            "inprocess_known_vs_known": same.summary()}


def inprocess_difference(rounds: int, seed: int = 7) -> tuple[float, dict[str, Any]]:
    """Median(unknown) - median(known) of the in-process work in seconds, and the summary."""
    samples = probe_inprocess(rounds, seed=seed)
    return median(samples.unknown) - median(samples.known), samples.summary()

