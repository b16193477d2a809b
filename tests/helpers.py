"""Shared test helpers: seeded randomness, configurations and an in-memory client/server pair."""

from __future__ import annotations

import random
from collections.abc import Callable

from iotdtls import DTLSConfiguration, DTLSConnection, DTLSServer
from iotdtls.events import Event

CLIENT_ADDR = ("192.0.2.1", 5000)
IDENTITY = b"dev1"
KEY = bytes(range(16))


def seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def client_config(seed: int = 1, **kw: object) -> DTLSConfiguration:
    kw.setdefault("psk_identity", IDENTITY)
    kw.setdefault("psk", KEY)
    return DTLSConfiguration(is_client=True, random=seeded(seed), **kw)  # type: ignore[arg-type]


def server_config(seed: int = 2, **kw: object) -> DTLSConfiguration:
    kw.setdefault("psk_store", {IDENTITY: KEY})
    return DTLSConfiguration(is_client=False, random=seeded(seed), **kw)  # type: ignore[arg-type]


def drain(conn: DTLSConnection) -> list[Event]:
    out = []
    while (e := conn.next_event()) is not None:
        out.append(e)
    return out


def drain_server(server: DTLSServer) -> list[tuple[object, Event]]:
    out = []
    while (e := server.next_event()) is not None:
        out.append(e)
    return out


class Pair:
    """A client connection and a server front wired in memory; ``deliver`` hands datagrams over."""

    def __init__(self, client_kw: dict[str, object] | None = None, server_kw: dict[str, object] | None = None,
                 **server_limits: int) -> None:
        self.now = 0.0
        self.client = DTLSConnection(client_config(**(client_kw or {})), peer="server")
        self.server = DTLSServer(server_config(**(server_kw or {})), **server_limits)
        self.wire: list[tuple[str, bytes]] = []  # ("c2s"|"s2c", datagram) log

    def c2s(self) -> list[bytes]:
        out = self.client.datagrams_to_send(self.now)
        self.wire += [("c2s", d) for d in out]
        return out

    def s2c(self) -> list[bytes]:
        out = [d for d, _ in self.server.datagrams_to_send(self.now)]
        self.wire += [("s2c", d) for d in out]
        return out

    def pump(self, rounds: int = 10) -> None:
        for _ in range(rounds):
            moved = False
            for d in self.c2s():
                self.server.receive_datagram(d, CLIENT_ADDR, self.now)
                moved = True
            for d in self.s2c():
                self.client.receive_datagram(d, self.now)
                moved = True
            if not moved:
                return

    def handshake(self) -> None:
        self.client.connect(self.now)
        self.pump()

    @property
    def server_conn(self) -> DTLSConnection:
        return self.server.connections[CLIENT_ADDR]
