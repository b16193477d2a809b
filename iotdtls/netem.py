"""Network impairment for UDP: a pure, seeded decision engine and a thin asyncio proxy around it.

:class:`Impairment` decides the fate of each datagram - lost, delivered once, delivered twice, delivered late -
from per-direction :class:`LinkProfile` knobs and a seed. It does no I/O and reads no clock: ``decide()``
returns the delays after which copies of the datagram are to be delivered (``[]``: dropped), so the same
engine drives the asyncio proxy below, the demo relay and simulations in virtual time.

:class:`NetemProxy` is a UDP proxy between any number of clients and one target. Each client address gets its
own upstream socket (so the target sees one peer per client, as behind a NAT), its own engine seeded from
the proxy's seed and the client's arrival order, and an entry in a bounded table that expires when idle.

Directions are ``"c2s"`` (client to target) and ``"s2c"`` (target to client).
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, cast

Direction = Literal["c2s", "s2c"]
DIRECTIONS: tuple[Direction, Direction] = ("c2s", "s2c")

#: Extra delay of a reordered datagram is uniform in (0, max_delay]; this is the default max_delay.
DEFAULT_MAX_DELAY = 0.3


@dataclass(frozen=True)
class LinkProfile:
    """Impairments of one direction.

    Applied in this order: datagrams larger than ``mtu`` bytes are dropped; the rest are lost with
    probability ``loss``; a survivor is duplicated with probability ``dup``; every copy is delivered after
    ``delay`` seconds, plus, with probability ``reorder``, an extra delay uniform in (0, ``max_delay``] -
    which lets later datagrams overtake it.
    """

    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    max_delay: float = DEFAULT_MAX_DELAY
    delay: float = 0.0
    mtu: int | None = None

    def validate(self) -> None:
        for name in ("loss", "dup", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], not {value:g}")
        if self.delay < 0:
            raise ValueError(f"delay must not be negative, not {self.delay:g}")
        if self.max_delay < 0:
            raise ValueError(f"max_delay must not be negative, not {self.max_delay:g}")
        if self.reorder > 0 and self.max_delay == 0:
            raise ValueError("reorder needs a max_delay above 0")
        if self.mtu is not None and self.mtu < 1:
            raise ValueError(f"mtu must be at least 1 byte, not {self.mtu}")

    def describe(self) -> str:
        parts = [f"loss {self.loss:.0%}"]
        if self.dup:
            parts.append(f"dup {self.dup:.0%}")
        if self.reorder:
            parts.append(f"reorder {self.reorder:.0%} up to {self.max_delay * 1000:g} ms")
        if self.delay:
            parts.append(f"delay {self.delay * 1000:g} ms")
        if self.mtu is not None:
            parts.append(f"mtu {self.mtu} B")
        return ", ".join(parts)


@dataclass
class DirectionStats:
    """Counters of one direction. ``delivered`` counts copies handed on (duplicates included)."""

    datagrams: int = 0
    bytes: int = 0
    lost: int = 0
    too_big: int = 0
    duplicated: int = 0
    reordered: int = 0
    delivered: int = 0

    def add(self, other: DirectionStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def describe(self) -> str:
        return (f"{self.datagrams} datagrams ({self.bytes} B), {self.lost} lost, {self.too_big} over MTU, "
                f"{self.duplicated} duplicated, {self.reordered} reordered, {self.delivered} delivered")


@dataclass
class ImpairmentStats:
    c2s: DirectionStats = field(default_factory=DirectionStats)
    s2c: DirectionStats = field(default_factory=DirectionStats)

    def __getitem__(self, direction: Direction) -> DirectionStats:
        return self.c2s if direction == "c2s" else self.s2c


@dataclass(frozen=True)
class Decision:
    """The last decision, for tracing: when, which way, how big, and the delays of the copies."""

    now: float
    direction: Direction
    size: int
    delays: tuple[float, ...]
    reason: str  # "delivered", "lost" or "too big"


class Impairment:
    """Pure, seeded decision engine: ``decide(datagram, direction, now) -> list of delays``.

    Each (direction, knob) pair draws from its own random stream derived from ``seed``, so the fate of the
    n-th datagram of a direction depends only on the seed and n: not on the timing of the other direction,
    and not on the other knobs (the loss pattern is the same with or without duplication). The engine keeps
    no clock; ``now`` is only recorded in :attr:`last` for traces. ``s2c`` defaults to the ``c2s`` profile.
    """

    def __init__(self, c2s: LinkProfile | None = None, s2c: LinkProfile | None = None,
                 seed: int | str = 0, stats: ImpairmentStats | None = None) -> None:
        self.profiles: dict[Direction, LinkProfile] = {"c2s": c2s or LinkProfile(), "s2c": s2c or c2s or LinkProfile()}
        for profile in self.profiles.values():
            profile.validate()
        self.seed = seed
        self.stats = stats if stats is not None else ImpairmentStats()
        self.last: Decision | None = None
        self._rng = {(d, knob): random.Random(f"iotdtls-netem/{seed}/{d}/{knob}")
                     for d in DIRECTIONS for knob in ("loss", "dup", "reorder")}

    def fork(self, flow: int | str) -> Impairment:
        """An engine with the same profiles and its own streams (seed ``"{seed}/{flow}"``), sharing the stats."""
        return Impairment(self.profiles["c2s"], self.profiles["s2c"], f"{self.seed}/{flow}", self.stats)

    def decide(self, datagram: bytes, direction: Direction, now: float) -> list[float]:
        """Delays in seconds (from ``now``) after which to deliver each copy of ``datagram``; empty: drop it."""
        profile = self.profiles[direction]
        stats = self.stats[direction]
        stats.datagrams += 1
        stats.bytes += len(datagram)
        # Draw from every stream for every datagram, so each stream advances once per datagram whatever happens.
        lost = self._draw(direction, "loss") < profile.loss
        dup = self._draw(direction, "dup") < profile.dup
        reorder_rng = self._rng[(direction, "reorder")]
        holds = [(reorder_rng.random(), reorder_rng.random()) for _ in range(2)]
        delays: list[float] = []
        if profile.mtu is not None and len(datagram) > profile.mtu:
            stats.too_big += 1
            reason = "too big"
        elif lost:
            stats.lost += 1
            reason = "lost"
        else:
            reason = "delivered"
            if dup:
                stats.duplicated += 1
            for hold, amount in holds[: 2 if dup else 1]:
                delay = profile.delay
                if hold < profile.reorder:
                    stats.reordered += 1
                    delay += profile.max_delay * (1.0 - amount)  # uniform in (0, max_delay]
                delays.append(delay)
            stats.delivered += len(delays)
        self.last = Decision(now, direction, len(datagram), tuple(delays), reason)
        return delays

    def _draw(self, direction: Direction, knob: str) -> float:
        return self._rng[(direction, knob)].random()


# ----------------------------------------------------------------------------------------------------------------
# asyncio proxy
# ----------------------------------------------------------------------------------------------------------------

Address = tuple[Any, ...]
#: Called for every datagram with (direction, client address, datagram, delays); ``delays == []``: dropped.
Observer = Callable[[Direction, Address, bytes, list[float]], None]


@dataclass
class ProxyStats:
    clients: int = 0
    expired: int = 0
    evicted: int = 0
    send_errors: int = 0
    icmp_errors: int = 0

    def describe(self) -> str:
        return (f"clients: {self.clients} ({self.expired} expired idle, {self.evicted} evicted), "
                f"{self.send_errors} send errors, {self.icmp_errors} ICMP errors")


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Address], None], on_error: Callable[[Exception], None]) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self._on_datagram = on_datagram
        self._on_error = on_error

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._on_error(exc)


class _Flow:
    """One client: its upstream socket to the target, its engine, and datagrams waiting for the socket."""

    def __init__(self, client: Address, engine: Impairment, now: float) -> None:
        self.client = client
        self.engine = engine
        self.last_active = now
        self.upstream: _Endpoint | None = None
        self.pending: list[bytes] = []
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.pending.clear()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


class NetemProxy:
    """UDP impairment proxy: clients talk to ``listen``, each is relayed through its own socket to ``target``.

    The table of clients holds at most ``max_clients`` (the least recently active one is evicted to make room)
    and forgets a client after ``idle_timeout`` seconds without a datagram either way. ``observer`` sees every
    decision. Call :meth:`start`, then :meth:`close`.
    """

    def __init__(self, target: tuple[str, int], impairment: Impairment, *, max_clients: int = 1024,
                 idle_timeout: float = 60.0, observer: Observer | None = None) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        self.target = target
        self.impairment = impairment
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.observer = observer
        self.stats = ProxyStats()
        self.address: tuple[str, int] | None = None
        self._flows: OrderedDict[Address, _Flow] = OrderedDict()
        self._front: _Endpoint | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def impairment_stats(self) -> ImpairmentStats:
        return self.impairment.stats

    @property
    def clients(self) -> list[Address]:
        return list(self._flows)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Bind the listening socket; returns its address."""
        self._loop = asyncio.get_running_loop()
        _, self._front = await self._loop.create_datagram_endpoint(
            lambda: _Endpoint(self._from_client, self._on_error), local_addr=(host, port))
        assert self._front.transport is not None
        sockname = self._front.transport.get_extra_info("sockname")
        self.address = (str(sockname[0]), int(sockname[1]))
        self._schedule_sweep()
        return self.address

    def close(self) -> None:
        self._closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for flow in self._flows.values():
            flow.close()
        self._flows.clear()
        if self._front is not None and self._front.transport is not None:
            self._front.transport.close()

    # -- datagrams ---------------------------------------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _from_client(self, data: bytes, addr: Address) -> None:
        if self._closed:
            return
        now = self._now()
        flow = self._flows.get(addr)
        if flow is None:
            flow = self._new_flow(addr, now)
        else:
            self._flows.move_to_end(addr)
        flow.last_active = now
        delays = flow.engine.decide(data, "c2s", now)
        if self.observer is not None:
            self.observer("c2s", addr, data, delays)
        for delay in delays:
            self._later(delay, self._send_upstream, flow, data)

    def _from_target(self, flow: _Flow, data: bytes) -> None:
        if self._closed or flow.closed:
            return
        now = self._now()
        flow.last_active = now
        if self._flows.get(flow.client) is flow:
            self._flows.move_to_end(flow.client)
        delays = flow.engine.decide(data, "s2c", now)
        if self.observer is not None:
            self.observer("s2c", flow.client, data, delays)
        for delay in delays:
            self._later(delay, self._send_downstream, flow, data)

    def _later(self, delay: float, callback: Callable[[_Flow, bytes], None], flow: _Flow, data: bytes) -> None:
        if delay <= 0:
            callback(flow, data)
            return
        assert self._loop is not None
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            callback(flow, data)

        handle = self._loop.call_later(delay, fire)
        self._timers.add(handle)

    def _send_upstream(self, flow: _Flow, data: bytes) -> None:
        if flow.closed:
            return
        if flow.upstream is None or flow.upstream.transport is None:
            flow.pending.append(data)  # the upstream socket is still being opened
            return
        try:
            flow.upstream.transport.sendto(data)
        except OSError:
            self.stats.send_errors += 1

    def _send_downstream(self, flow: _Flow, data: bytes) -> None:
        if self._closed or self._front is None or self._front.transport is None:
            return
        try:
            self._front.transport.sendto(data, flow.client)
        except OSError:
            self.stats.send_errors += 1

    def _on_error(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: UDP has no connection to lose, so count it and carry on.
        self.stats.icmp_errors += 1

    # -- the client table --------------------------------------------------------------------------------------

    def _new_flow(self, addr: Address, now: float) -> _Flow:
        while len(self._flows) >= self.max_clients:
            _, oldest = self._flows.popitem(last=False)
            oldest.close()
            self.stats.evicted += 1
        flow = _Flow(addr, self.impairment.fork(self.stats.clients), now)
        self.stats.clients += 1
        self._flows[addr] = flow
        task = asyncio.ensure_future(self._open_upstream(flow))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return flow

    async def _open_upstream(self, flow: _Flow) -> None:
        assert self._loop is not None
        try:
            _, upstream = await self._loop.create_datagram_endpoint(
                lambda: _Endpoint(lambda data, _addr: self._from_target(flow, data), self._on_error),
                remote_addr=self.target)
        except OSError:
            self.stats.send_errors += 1
            flow.close()
            if self._flows.get(flow.client) is flow:
                del self._flows[flow.client]
            return
        flow.upstream = upstream
        if flow.closed:
            flow.close()
            return
        pending, flow.pending = flow.pending, []
        for data in pending:
            self._send_upstream(flow, data)

    def _schedule_sweep(self) -> None:
        assert self._loop is not None
        self._sweeper = self._loop.call_later(min(self.idle_timeout / 4, 5.0), self._sweep)

    def _sweep(self) -> None:
        if self._closed:
            return
        deadline = self._now() - self.idle_timeout
        for addr, flow in list(self._flows.items()):
            if flow.last_active <= deadline:
                del self._flows[addr]
                flow.close()
                self.stats.expired += 1
        self._schedule_sweep()


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port); ValueError otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write IPv6 addresses as [ADDR]:PORT, not {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


__all__ = [
    "DEFAULT_MAX_DELAY",
    "DIRECTIONS",
    "Address",
    "Decision",
    "Direction",
    "DirectionStats",
    "Impairment",
    "ImpairmentStats",
    "LinkProfile",
    "NetemProxy",
    "Observer",
    "ProxyStats",
    "parse_hostport",
]
