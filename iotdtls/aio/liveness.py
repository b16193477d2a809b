"""Is anybody listening? The bookkeeping the asyncio clients do around a handshake, free of sockets and clocks
(every method takes ``now`` or plain counts), so it tests with plain numbers.

:class:`RefusalCounter` decides when ICMP "port unreachable" reports mean that nothing listens at the server's
address. Linux reports them on a *connected* UDP socket as ``ConnectionRefusedError`` from the next send or
receive (asyncio: ``DatagramProtocol.error_received``). One report alone proves little: a server that starts a
moment after the client's first flight, or a stale report from an earlier peer on the same port, must not end
a handshake. So a refusal counts only when it follows a *different* transmission (a retransmission, the next
flight, the next request) at least ``min_gap`` seconds after the first one, with nothing received between.

:class:`HandshakeProgress` turns the connection's retransmission count into one line per retransmission,
``handshake with HOST:PORT: no answer yet, retrying (2/17)``, for the command-line tools to print.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..config import DTLSConfiguration
from ..connection import DTLSConnection

log = logging.getLogger("iotdtls.aio")

#: Called with one progress line per handshake retransmission; ``None`` logs it at INFO on ``iotdtls.aio``.
ProgressCallback = Callable[[str], None]


def host_port(host: str, port: int) -> str:
    """``HOST:PORT``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RefusalCounter:
    """Counts ICMP port-unreachable reports per transmission. Call :meth:`sent` when a batch of datagrams
    goes out, :meth:`heard` when a datagram arrives, :meth:`refused` on each report: it returns True once
    the reports say nothing listens."""

    __slots__ = ("_batch", "_first", "_last_refused", "min_gap")

    def __init__(self, min_gap: float) -> None:
        if min_gap < 0:
            raise ValueError("min_gap must be >= 0")
        self.min_gap = min_gap
        self._batch = 0
        self._first: tuple[int, float] | None = None  # (batch, time) of the first refusal since we last heard
        self._last_refused = -1

    def sent(self) -> None:
        self._batch += 1

    def heard(self) -> None:
        self._first = None

    def refused(self, now: float) -> bool:
        self._last_refused = self._batch
        if self._first is None:
            self._first = (self._batch, now)
            return False
        batch, at = self._first
        return batch != self._batch and now - at >= self.min_gap

    @property
    def pending(self) -> bool:
        """The latest transmission was refused: the next one decides (a progress line would be noise)."""
        return self._first is not None and self._last_refused == self._batch


def planned_attempts(config: DTLSConfiguration) -> int:
    """How many times one flight goes out (the first transmission included) before the handshake timeout,
    with the timer doubling from ``retransmit_initial`` up to ``retransmit_max``."""
    t, timeout, attempts = 0.0, config.retransmit_initial, 1
    while t + timeout < config.handshake_timeout and attempts < 10_000:
        t += timeout
        attempts += 1
        timeout = min(timeout * 2, config.retransmit_max)
    return attempts


class HandshakeProgress:
    """Reports each retransmission of a handshake in progress, once, through ``callback`` (or the log)."""

    __slots__ = ("_callback", "_planned", "_seen", "where")

    def __init__(self, host: str, port: int, config: DTLSConfiguration,
                 callback: ProgressCallback | None = None) -> None:
        self.where = host_port(host, port)
        self._planned = planned_attempts(config)
        self._callback = callback
        self._seen = 0

    def line(self, attempt: int) -> str:
        return f"handshake with {self.where}: no answer yet, retrying ({attempt}/{max(attempt, self._planned)})"

    def check(self, conn: DTLSConnection, *, quiet: bool = False) -> None:
        """Call after the connection's timer fired; ``quiet`` skips the line (the refusal counter is pending)."""
        count = conn.retransmissions
        if count <= self._seen or not conn.is_handshaking:
            return
        self._seen = count
        if quiet:
            return
        text = self.line(count + 1)
        if self._callback is None:
            log.info("%s", text)
            return
        try:
            self._callback(text)
        except Exception:  # a broken progress printer must not break the handshake
            log.exception("progress callback failed")
