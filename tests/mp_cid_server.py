"""An iotdtls DTLSServer (sans-IO) on a real UDP socket in a thread, for the MicroPython device tests that need the
server's Connection ID, record_size_limit and resumption (tests/test_mp_cid_resume.py, tests/test_mp_footprint.py).

Every datagram is logged with its direction and the client address; a CoAP request is answered with a piggybacked
2.04 (an empty payload), anything else is echoed back. ``restart()`` swaps in a new server that knows no session.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from mp_shim import import_device

from iotdtls import DataReceived, DTLSConfiguration, DTLSServer
from iotdtls.events import HandshakeCompleted, PeerAddressChanged
from iotdtls.resumption import TicketKeys

LOCALHOST = "127.0.0.1"
KEY = bytes(range(16))
Address = Any


@dataclass
class Handshake:
    addr: Address
    resumed: bool
    cid: bytes | None  # the CID the server receives with (what the device puts in its records)
    peer_cid: bytes | None  # the CID the server sends (the device's own)


@dataclass
class Log:
    wire: list[tuple[float, str, Address, bytes]] = field(default_factory=list)  # (t, "in"/"out", addr, datagram)
    handshakes: list[Handshake] = field(default_factory=list)
    moves: list[tuple[Address, Address]] = field(default_factory=list)  # (old, new) on PeerAddressChanged
    data: list[tuple[Address, bytes]] = field(default_factory=list)


def coap_answer(data: bytes) -> bytes:
    """A piggybacked 2.04 for a CoAP CON request, else the data echoed."""
    coap = import_device("coap")
    try:
        m = coap.decode(data)
    except (ValueError, IndexError):
        return data
    if m.type == coap.CON and 0 < m.code < 32:
        return coap.encode(coap.ACK, coap.CHANGED, m.mid, m.token)
    return data


class CidServer:
    """``with CidServer(cid_length=4, record_size_limit=512) as srv:`` on 127.0.0.1:``srv.port``."""

    def __init__(self, *, session_cache: int = 1000, tickets: bool = True, **config: Any) -> None:
        self.config = config
        self.session_cache = session_cache
        self.tickets = tickets
        self.log = Log()
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, 0))
        self.port = self.sock.getsockname()[1]
        self.server = self._new()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="CidServer", daemon=True)
        self.t0 = time.monotonic()

    def _new(self) -> DTLSServer:
        import os

        cfg = DTLSConfiguration(is_client=False, psk_store={b"dev1": KEY}, session_tickets=self.tickets,
                                **self.config)
        keys = TicketKeys(os.urandom) if self.tickets else None
        return DTLSServer(cfg, session_cache=self.session_cache, ticket_keys=keys)

    def restart(self, **changes: Any) -> None:
        """A new server (a restart): no session cache, no ticket key of the old one."""
        with self.lock:
            for k, v in changes.items():
                setattr(self, k, v)
            self.server = self._new()

    def __enter__(self) -> CidServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop:
            with self.lock:
                t = self.server.get_timer()
            now = time.monotonic() - self.t0
            wait = 0.05 if t is None else max(0.0, min(0.05, t - now))
            ready, _, _ = select.select([self.sock], [], [], wait)
            with self.lock:
                now = time.monotonic() - self.t0
                srv = self.server
                if ready:
                    d, addr = self.sock.recvfrom(65536)
                    self.log.wire.append((now, "in", addr, d))
                    srv.receive_datagram(d, addr, now)
                srv.handle_timer(now)
                while (ev := srv.next_event()) is not None:
                    addr, e = ev
                    if isinstance(e, HandshakeCompleted):
                        c = srv.connections.get(addr)
                        self.log.handshakes.append(Handshake(addr, bool(c and c.resumed),
                                                             c.connection_id if c else None,
                                                             c.peer_connection_id if c else None))
                    elif isinstance(e, PeerAddressChanged):
                        self.log.moves.append((e.previous, addr))
                    elif isinstance(e, DataReceived):
                        self.log.data.append((addr, e.data))
                        with contextlib.suppress(ValueError):  # over the device's record_size_limit: not sent
                            srv.send(addr, coap_answer(e.data))
                for d, addr in srv.datagrams_to_send(now):
                    self.log.wire.append((now, "out", addr, d))
                    self.sock.sendto(d, addr)

    def wire_bytes(self, since: int = 0) -> tuple[int, int, int, int]:
        """(datagrams in, bytes in, datagrams out, bytes out) of the log from index `since`."""
        w = self.log.wire[since:]
        i = [len(d) for _, way, _, d in w if way == "in"]
        o = [len(d) for _, way, _, d in w if way == "out"]
        return len(i), sum(i), len(o), sum(o)
