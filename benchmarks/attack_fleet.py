"""Many sans-IO :class:`iotdtls.DTLSConnection` clients over plain UDP sockets, driven by one selector loop."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from iotdtls import DTLSConfiguration, DTLSConnection
from iotdtls.events import AlertReceived, ConnectionTerminated, DataReceived, HandshakeCompleted

from .attack_common import plain_alerts, udp_socket


@dataclass(eq=False)
class Peer:
    """One client of a :class:`Fleet`."""

    conn: DTLSConnection
    sock: socket.socket
    server: tuple[str, int]
    started: float | None = None
    established: float | None = None
    ended: float | None = None
    error: BaseException | None = None
    #: ``ConnectionTerminated(None)`` seen: the peer closed with close_notify (ours or the server's).
    closed_cleanly: bool = False
    we_closed: bool = False
    received: list[bytes] = field(default_factory=list)
    alerts: list[tuple[int, int]] = field(default_factory=list)
    sent_datagrams: int = 0
    sent_bytes: int = 0
    received_datagrams: int = 0
    received_bytes: int = 0
    timer_at: float | None = None

    @property
    def local(self) -> tuple[str, int]:
        addr: tuple[str, int] = self.sock.getsockname()
        return addr

    @property
    def handshake_time(self) -> float | None:
        if self.established is None or self.started is None:
            return None
        return self.established - self.started

    @property
    def is_established(self) -> bool:
        return self.conn.is_established

    @property
    def closed_by_server(self) -> bool:
        return self.closed_cleanly and not self.we_closed


class Fleet:
    """Sans-IO clients, each on its own non-blocking UDP socket, driven by one selector loop (not thread-safe).

    ``now`` is ``time.monotonic()``. Timers of all clients are kept in one heap.
    """

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.peers: list[Peer] = []
        self._heap: list[tuple[float, int, Peer]] = []
        self._counter = itertools.count()
        #: Handshakes that ended (established or failed) and sessions that ended, counted as they happen.
        self.settled = 0

    def add(self, config: DTLSConfiguration, server: tuple[str, int], *, ip: str = "127.0.0.1", port: int = 0,
            rcvbuf: int | None = None, sock: socket.socket | None = None) -> Peer:
        config.is_client = True
        sock = sock or udp_socket(ip, port, rcvbuf)
        sock.setblocking(False)
        peer = Peer(DTLSConnection(config), sock, server)
        self.selector.register(sock, selectors.EVENT_READ, peer)
        self.peers.append(peer)
        return peer

    def connect(self, peer: Peer) -> None:
        now = time.monotonic()
        peer.started = now
        peer.conn.connect(now)
        self._pump(peer, now)

    def send(self, peer: Peer, data: bytes) -> None:
        peer.conn.send(data)
        self._pump(peer, time.monotonic())

    def close(self, peer: Peer) -> None:
        """Send close_notify (if established) and forget the peer's socket."""
        peer.we_closed = True
        peer.conn.close()
        self._pump(peer, time.monotonic())
        self.discard(peer)

    def discard(self, peer: Peer) -> None:
        """Close the socket silently (the server is not told)."""
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(peer.sock)
        peer.sock.close()
        peer.timer_at = None

    def close_all(self) -> None:
        for peer in self.peers:
            if peer.sock.fileno() >= 0:
                self.discard(peer)
        self.selector.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()

    # -- loop --------------------------------------------------------------------------------------
    def run(self, until: Callable[[], bool] | None, timeout: float) -> bool:
        """Process datagrams and timers until ``until()`` is true (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if until is not None and until():
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            self._fire_timers(now)
            if until is not None and until():
                return True
            wake = deadline
            if self._heap and self._heap[0][0] < wake:
                wake = self._heap[0][0]
            for key, _ in self.selector.select(max(0.0, wake - time.monotonic())):
                self._readable(key.data)

    def sleep(self, seconds: float) -> None:
        """Keep serving every client for ``seconds``."""
        self.run(None, seconds)

    def _readable(self, peer: Peer) -> None:
        now = time.monotonic()
        for _ in range(64):
            try:
                data = peer.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ICMP port unreachable from a stopped server
                break
            peer.received_datagrams += 1
            peer.received_bytes += len(data)
            peer.alerts += plain_alerts(data)
            peer.conn.receive_datagram(data, now)
        self._pump(peer, now)

    def _fire_timers(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, peer = heapq.heappop(heap)
            if peer.timer_at != when:
                continue
            peer.timer_at = None
            peer.conn.handle_timer(now)
            self._pump(peer, now)

    def _pump(self, peer: Peer, now: float) -> None:
        conn = peer.conn
        if peer.sock.fileno() >= 0:
            for dgram in conn.datagrams_to_send(now):
                with contextlib.suppress(OSError):
                    peer.sock.sendto(dgram, peer.server)
                    peer.sent_datagrams += 1
                    peer.sent_bytes += len(dgram)
        while (event := conn.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                peer.established = now
                self.settled += 1
            elif isinstance(event, DataReceived):
                peer.received.append(event.data)
            elif isinstance(event, AlertReceived):
                peer.alerts.append((int(event.level), int(event.description)))
            elif isinstance(event, ConnectionTerminated):
                peer.ended = now
                peer.error = event.error
                peer.closed_cleanly = event.error is None
                self.settled += 1
        when = conn.get_timer() if peer.sock.fileno() >= 0 else None
        if when != peer.timer_at:
            peer.timer_at = when
            if when is not None:
                heapq.heappush(self._heap, (when, next(self._counter), peer))

    # -- conveniences ------------------------------------------------------------------------------
    def handshake(self, peer: Peer, timeout: float) -> bool:
        """Connect ``peer`` and wait until its handshake ends; True if established."""
        self.connect(peer)
        self.run(lambda: peer.established is not None or peer.ended is not None, timeout)
        return peer.established is not None and peer.conn.is_established

    def handshake_many(self, peers: list[Peer], timeout: float, window: int = 32,
                       progress: Callable[[int, int], None] | None = None) -> int:
        """Handshake ``peers`` with at most ``window`` in progress at once; return how many got established."""
        queue = list(reversed(peers))
        active: list[Peer] = []
        done = 0
        ok = 0
        deadline = time.monotonic() + timeout
        while (queue or active) and time.monotonic() < deadline:
            while queue and len(active) < window:
                peer = queue.pop()
                self.connect(peer)
                active.append(peer)
            self.run(self._changed(self.settled), min(1.0, max(0.0, deadline - time.monotonic())))
            still = []
            for p in active:
                if p.established is not None or p.ended is not None:
                    done += 1
                    ok += p.established is not None
                else:
                    still.append(p)
            active = still
            if progress is not None:
                progress(done, len(peers))
        return ok

    def _changed(self, mark: int) -> Callable[[], bool]:
        return lambda: self.settled != mark

    def echo(self, peer: Peer, data: bytes, timeout: float) -> bool:
        """Send ``data`` and wait for the server to echo it; True if it came back."""
        if not peer.conn.is_established:
            return False
        self.send(peer, data)
        return self.run(lambda: data in peer.received or peer.ended is not None, timeout) and data in peer.received
