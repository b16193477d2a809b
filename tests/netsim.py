"""A deterministic network simulator for the sans-IO core.

Everything runs in virtual time: a clock, an event queue (a heap of ``(time, seq, action)``) and one seeded
``random.Random`` that drives every impairment (and, in :func:`run_trial`, the endpoints' randomness too), so a
trial is a pure function of its seed and parameters. Thousands of handshakes take seconds.

Pieces:

* :class:`LinkParams` / :class:`Link`: one direction of a path. Base one-way latency, loss, duplication,
  reordering (with probability ``reorder`` a datagram gets an extra delay drawn from ``[0, max_reorder]``) and
  an MTU (bigger datagrams are dropped and counted). A ``script`` hook lets a test decide the fate of chosen
  datagrams exactly (drop, delay, split, duplicate) and leave the others to the random impairments.
* :class:`Network`: one :class:`~iotdtls.DTLSServer` and any number of client :class:`~iotdtls.DTLSConnection`
  objects, each client on its own pair of links. It delivers datagrams at their arrival times, fires
  ``handle_timer`` exactly at ``get_timer()`` and records every event with its time.
* :func:`run_trial`: a handshake followed by ``data_messages`` application messages each way with CoAP-like
  application retries, returning a :class:`TrialResult`.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from iotdtls import DTLSConfiguration, DTLSConnection, DTLSServer
from iotdtls.errors import DTLSError
from iotdtls.events import ConnectionTerminated, DataReceived, Event, HandshakeCompleted
from iotdtls.record import split_records

Address = Hashable
#: ``script(index, datagram)`` for the ``index``-th datagram sent on a link (0-based): ``None`` leaves it to the
#: random impairments; a list of ``(extra_delay, datagram)`` delivers exactly these (after the base latency);
#: an empty list drops it.
Script = Callable[[int, bytes], "list[tuple[float, bytes]] | None"]

SERVER_ADDR = ("198.51.100.1", 5684)
IDENTITY = b"dev1"
KEY = bytes(range(16))
_HANDSHAKE = 22


# -- links -----------------------------------------------------------------------------------------------
@dataclass
class LinkParams:
    """Impairments of one direction. Probabilities are per datagram; times are in seconds."""

    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    max_reorder: float = 0.3
    latency: float = 0.02
    #: Largest datagram the link carries; bigger ones are dropped (``None``: no limit).
    mtu: int | None = None


@dataclass
class LinkStats:
    sent: int = 0  # datagrams handed to the link by the sender
    bytes_sent: int = 0
    delivered: int = 0  # copies delivered (duplicates count)
    bytes_delivered: int = 0
    lost: int = 0  # copies dropped by random loss (or by a script)
    mtu_dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    app_sent: int = 0  # datagrams that start with an application_data record (the rest is handshake/alerts)
    app_bytes_sent: int = 0

    def add(self, other: LinkStats) -> LinkStats:
        return LinkStats(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))


class Link:
    """One direction of a path: decides, for each datagram, when (and how often) it arrives."""

    def __init__(self, params: LinkParams, rng: random.Random, name: str = "") -> None:
        self.params = params
        self.rng = rng
        self.name = name
        self.stats = LinkStats()
        self.script: Script | None = None
        self._index = 0

    def transmit(self, datagram: bytes) -> list[tuple[float, bytes]]:
        """Delays (from now) and contents of the copies that will arrive."""
        p, st, rng = self.params, self.stats, self.rng
        index = self._index
        self._index += 1
        st.sent += 1
        st.bytes_sent += len(datagram)
        if datagram[:1] == b"\x17":
            st.app_sent += 1
            st.app_bytes_sent += len(datagram)
        if p.mtu is not None and len(datagram) > p.mtu:
            st.mtu_dropped += 1
            return []
        scripted = self.script(index, datagram) if self.script is not None else None
        if scripted is not None:
            if not scripted:
                st.lost += 1
            return [(p.latency + extra, d) for extra, d in scripted]
        copies = 2 if p.dup and rng.random() < p.dup else 1
        if copies == 2:
            st.duplicated += 1
        out = []
        for _ in range(copies):
            if p.loss and rng.random() < p.loss:
                st.lost += 1
                continue
            delay = p.latency
            if p.reorder and rng.random() < p.reorder:
                st.reordered += 1
                delay += rng.uniform(0.0, p.max_reorder)
            out.append((delay, datagram))
        return out


# -- the network -------------------------------------------------------------------------------------------
@dataclass
class Delivery:
    """One datagram copy that reached its receiver (``to`` is ``"server"`` or the client's address)."""

    time: float
    sent: float
    src: Address
    dst: Address
    datagram: bytes


class ClientEndpoint:
    """A client connection with its address, its two links and what happened to it."""

    def __init__(self, network: Network, conn: DTLSConnection, addr: Address, up: Link, down: Link) -> None:
        self.network = network
        self.conn = conn
        self.addr = addr
        self.up = up  # client -> server
        self.down = down  # server -> client
        self.events: list[tuple[float, Event]] = []
        self.established_at: float | None = None
        self.terminated: tuple[float, Exception | None] | None = None
        self.received: list[tuple[float, bytes]] = []  # DataReceived payloads
        #: Called with (endpoint, event, now) for each event, after it is recorded.
        self.on_event: Callable[[ClientEndpoint, Event, float], None] | None = None
        self._timer_gen = 0
        self._timer_at: float | None = None

    def send(self, data: bytes) -> None:
        self.conn.send(data)
        self.network.flush_client(self)


class Network:
    """A virtual-time network between one :class:`DTLSServer` and any number of client connections."""

    def __init__(self, server_config: DTLSConfiguration, rng: random.Random, *, max_sessions: int = 10000,
                 max_handshakes: int = 100) -> None:
        self.rng = rng
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.server = DTLSServer(server_config, max_sessions=max_sessions, max_handshakes=max_handshakes)
        self.clients: dict[Address, ClientEndpoint] = {}
        self.server_events: list[tuple[float, Address, Event]] = []
        #: Every server-side connection object ever created, per client address (a reboot makes a second one).
        self.server_conns: dict[Address, list[DTLSConnection]] = {}
        self.server_established_at: dict[Address, float] = {}
        #: Called with (address, event, now) for each server event, after it is recorded.
        self.on_server_event: Callable[[Address, Event, float], None] | None = None
        #: Called with each :class:`Delivery` just after the receiver processed it (invariant checks).
        self.on_delivery: Callable[[Delivery], None] | None = None
        self.log: list[Delivery] | None = None  # set to [] to record every delivery
        #: Set to [] to record every datagram handed to a link: (time, source, destination, datagram).
        self.sent: list[tuple[float, Address, Address, bytes]] | None = None
        self._server_timer_gen = 0
        self._server_timer_at: float | None = None
        self.steps = 0

    # -- setup -----------------------------------------------------------------------------------------
    def add_client(self, config: DTLSConfiguration, addr: Address, up: LinkParams, down: LinkParams,
                   *, start: float | None = 0.0) -> ClientEndpoint:
        """Add a client on its own pair of links; it calls ``connect`` at ``start`` (``None``: never)."""
        conn = DTLSConnection(config, peer=SERVER_ADDR)
        ep = ClientEndpoint(self, conn, addr, Link(up, self.rng, f"{addr}->server"),
                            Link(down, self.rng, f"server->{addr}"))
        self.clients[addr] = ep
        if start is not None:
            self.schedule(start, lambda: self._connect(ep))
        return ep

    def _connect(self, ep: ClientEndpoint) -> None:
        ep.conn.connect(self.now)
        self.flush_client(ep)

    # -- event queue -----------------------------------------------------------------------------------
    def schedule(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, self._seq, action))
        self._seq += 1

    def run(self, until: float = float("inf"), stop: Callable[[], bool] | None = None,
            max_steps: int = 10_000_000) -> None:
        """Process events in time order up to ``until`` (inclusive) or until ``stop()`` is true."""
        heap = self._heap
        while heap and heap[0][0] <= until:
            if stop is not None and stop():
                return
            when, _, action = heapq.heappop(heap)
            self.now = max(self.now, when)
            action()
            self.steps += 1
            if self.steps > max_steps:
                raise RuntimeError("simulation did not settle")
        if until != float("inf") and not (stop is not None and stop()):
            self.now = max(self.now, until)

    # -- moving datagrams --------------------------------------------------------------------------------
    def flush_client(self, ep: ClientEndpoint) -> None:
        """Send what the client queued, record its events (callbacks may queue more) and re-arm its timer."""
        now = self.now
        conn = ep.conn
        while True:
            for dgram in conn.datagrams_to_send(now):
                if self.sent is not None:
                    self.sent.append((now, ep.addr, "server", dgram))
                for delay, copy in ep.up.transmit(dgram):
                    self.schedule(now + delay, self._deliver_to_server_action(ep.addr, copy, now))
            event = conn.next_event()
            if event is None:
                break
            while event is not None:
                ep.events.append((now, event))
                if isinstance(event, HandshakeCompleted) and ep.established_at is None:
                    ep.established_at = now
                elif isinstance(event, DataReceived):
                    ep.received.append((now, event.data))
                elif isinstance(event, ConnectionTerminated) and ep.terminated is None:
                    ep.terminated = (now, event.error)
                if ep.on_event is not None:
                    ep.on_event(ep, event, now)
                event = conn.next_event()
        when = conn.get_timer()
        if when != ep._timer_at:
            ep._timer_at = when
            ep._timer_gen += 1
            if when is not None:
                gen = ep._timer_gen
                self.schedule(when, lambda: self._client_timer(ep, gen))

    def _client_timer(self, ep: ClientEndpoint, gen: int) -> None:
        if gen != ep._timer_gen:
            return
        ep._timer_at = None
        ep.conn.handle_timer(self.now)
        self.flush_client(ep)

    def _deliver_to_server_action(self, src: Address, dgram: bytes, sent: float) -> Callable[[], None]:
        return lambda: self._deliver_to_server(src, dgram, sent)

    def _deliver_to_server(self, src: Address, dgram: bytes, sent: float) -> None:
        ep = self.clients[src]
        ep.up.stats.delivered += 1
        ep.up.stats.bytes_delivered += len(dgram)
        self.server.receive_datagram(dgram, src, self.now)
        self.flush_server()
        self._delivered(Delivery(self.now, sent, src, "server", dgram))

    def _deliver_to_client(self, dst: Address, dgram: bytes, sent: float) -> None:
        ep = self.clients[dst]
        ep.down.stats.delivered += 1
        ep.down.stats.bytes_delivered += len(dgram)
        ep.conn.receive_datagram(dgram, self.now)
        self.flush_client(ep)
        self._delivered(Delivery(self.now, sent, "server", dst, dgram))

    def _delivered(self, d: Delivery) -> None:
        if self.log is not None:
            self.log.append(d)
        if self.on_delivery is not None:
            self.on_delivery(d)

    def flush_server(self) -> None:
        """Send what the server queued, record its events (callbacks may queue more) and re-arm its timer."""
        now = self.now
        server = self.server
        for addr, conn in server.connections.items():
            known = self.server_conns.setdefault(addr, [])
            if not known or known[-1] is not conn:
                known.append(conn)
        while True:
            for dgram, addr in server.datagrams_to_send(now):
                ep = self.clients.get(addr)
                if ep is None:
                    continue  # nobody at that address: lost
                if self.sent is not None:
                    self.sent.append((now, "server", addr, dgram))
                for delay, copy in ep.down.transmit(dgram):
                    self.schedule(now + delay, self._deliver_to_client_action(addr, copy, now))
            item = server.next_event()
            if item is None:
                break
            while item is not None:
                addr, event = item
                self.server_events.append((now, addr, event))
                if isinstance(event, HandshakeCompleted):
                    self.server_established_at.setdefault(addr, now)
                if self.on_server_event is not None:
                    self.on_server_event(addr, event, now)
                item = server.next_event()
        when = server.get_timer()
        if when != self._server_timer_at:
            self._server_timer_at = when
            self._server_timer_gen += 1
            if when is not None:
                gen = self._server_timer_gen
                self.schedule(when, lambda: self._server_timer(gen))

    def _deliver_to_client_action(self, dst: Address, dgram: bytes, sent: float) -> Callable[[], None]:
        return lambda: self._deliver_to_client(dst, dgram, sent)

    def _server_timer(self, gen: int) -> None:
        if gen != self._server_timer_gen:
            return
        self._server_timer_at = None
        self.server.handle_timer(self.now)
        self.flush_server()

    def server_send(self, addr: Address, data: bytes) -> None:
        self.server.send(addr, data)
        self.flush_server()

    def server_conn(self, addr: Address) -> DTLSConnection | None:
        """The latest server-side connection for ``addr`` (even after it closed)."""
        known = self.server_conns.get(addr)
        return known[-1] if known else None


# -- invariants ----------------------------------------------------------------------------------------------
def carries(datagram: bytes, content_type: int, epoch: int | None = None) -> bool:
    """Whether ``datagram`` holds a record of ``content_type`` (and ``epoch``)."""
    return any(r.content_type == content_type and (epoch is None or r.epoch == epoch)
               for r in split_records(datagram))


class FinishedOrder:
    """Checks, after every delivery, that nobody considers the session up before it really is.

    * the server reports HandshakeCompleted for a client only after an epoch-1 handshake record (the client's
      Finished; nothing else is sent in epoch 1 before the client completes) was delivered to it;
    * a client reports HandshakeCompleted only after the server's Finished was delivered to it and after the
      server completed, i.e. verified the client's Finished (the server's Finished only exists after that).

    Install it with ``FinishedOrder(network)``; it takes over ``network.on_delivery``.
    """

    def __init__(self, network: Network) -> None:
        self.network = network
        self.fin_to_server: set[Address] = set()
        self.fin_to_client: set[Address] = set()
        self.server_done: set[Address] = set()
        self.client_done: set[Address] = set()
        self.violations: list[str] = []
        network.on_delivery = self

    def __call__(self, d: Delivery) -> None:
        net = self.network
        finished = carries(d.datagram, _HANDSHAKE, 1)
        if d.dst == "server":
            addr = d.src
            if finished:
                self.fin_to_server.add(addr)
            if addr not in self.server_done and addr in net.server_established_at:
                self.server_done.add(addr)
                if addr not in self.fin_to_server:
                    self.violations.append(f"{d.time:.3f}: server completed before the client's Finished arrived")
        else:
            addr = d.dst
            if finished:
                self.fin_to_client.add(addr)
            ep = net.clients[addr]
            if addr not in self.client_done and ep.established_at is not None:
                self.client_done.add(addr)
                if addr not in self.fin_to_client:
                    self.violations.append(f"{d.time:.3f}: client completed before the server's Finished arrived")
                server_at = net.server_established_at.get(addr)
                if server_at is None or server_at > ep.established_at:
                    self.violations.append(f"{d.time:.3f}: client completed before the server verified its Finished")


# -- application traffic with retries ------------------------------------------------------------------
class RetryingSender:
    """CoAP-like application reliability on top of DTLS: each message is resent every ``timeout`` seconds
    until its echo comes back. Messages are tracked by content, so copies delivered twice are harmless.

    ``send`` queues one message on the connection; ``flush`` hands queued datagrams to the network (not needed
    when :meth:`start` is called from an event callback: the network flushes after callbacks)."""

    def __init__(self, network: Network, send: Callable[[bytes], None], flush: Callable[[], None],
                 messages: Iterable[bytes], timeout: float) -> None:
        self.network = network
        self._send = send
        self._flush = flush
        self.messages = list(messages)
        self.acked: set[bytes] = set()
        self.transmissions = 0
        self.timeout = timeout
        self.started = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            for msg in self.messages:
                self._transmit(msg)

    def _retry(self, msg: bytes) -> None:
        self._transmit(msg)
        self._flush()

    def _transmit(self, msg: bytes) -> None:
        if msg in self.acked:
            return
        try:
            self._send(msg)
        except DTLSError:  # the connection closed under us: the trial reports that outcome
            return
        self.transmissions += 1
        self.network.schedule(self.network.now + self.timeout, lambda: self._retry(msg))

    def ack(self, msg: bytes) -> None:
        self.acked.add(msg)

    @property
    def done(self) -> bool:
        return len(self.acked) == len(self.messages)


# -- trials ------------------------------------------------------------------------------------------------
@dataclass
class TrialResult:
    seed: int
    outcome: str  # "established", or the error type that ended the handshake ("HandshakeTimeout", ...)
    handshake_time: float | None  # virtual seconds from connect() to the client's HandshakeCompleted
    server_handshake_time: float | None
    client_flights: int
    client_retransmissions: int
    server_flights: int
    server_retransmissions: int
    #: Datagrams and bytes handed to the network by both sides until the client completed (or gave up).
    handshake_datagrams: int
    handshake_bytes: int
    up: LinkStats  # whole trial, client -> server
    down: LinkStats
    data_ok: bool  # every application message arrived at least once in both directions and was echoed
    data_time: float | None  # virtual seconds from the client's completion to the end of the data exchange
    app_transmissions: int  # application messages sent by both sides, retries included
    duplicate_deliveries: int  # application messages delivered more than once (from application retries)
    errors: list[str] = field(default_factory=list)  # every ConnectionTerminated error seen, "side: Type"
    end_time: float = 0.0

    @property
    def established(self) -> bool:
        return self.outcome == "established"

    @property
    def retransmissions(self) -> int:
        return self.client_retransmissions + self.server_retransmissions


def psk_configs(rng: random.Random, client_overrides: dict[str, Any] | None = None,
                server_overrides: dict[str, Any] | None = None,
                **common: Any) -> tuple[DTLSConfiguration, DTLSConfiguration]:
    """A client and a server configuration (identity ``dev1``) drawing randomness from ``rng``.

    ``common`` applies to both (timers, ``mtu``, ...); the overrides to one side (``psk_identity``,
    ``psk_identity_hint``, ...). A client identity override is added to the server's store."""
    ckw: dict[str, Any] = {"psk_identity": IDENTITY, "psk": KEY, **common, **(client_overrides or {})}
    skw: dict[str, Any] = {"psk_store": {ckw["psk_identity"]: ckw["psk"]}, **common, **(server_overrides or {})}
    return (DTLSConfiguration(is_client=True, random=rng.randbytes, **ckw),
            DTLSConfiguration(is_client=False, random=rng.randbytes, **skw))


CLIENT_ADDR = ("192.0.2.10", 40000)


def run_trial(seed: int, *, loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0, max_delay: float = 0.3,
              latency: float = 0.02, mtu: int | None = None, loss_down: float | None = None,
              data_messages: int = 2, app_timeout: float = 2.0, data_budget: float = 300.0,
              client_overrides: dict[str, Any] | None = None, server_overrides: dict[str, Any] | None = None,
              observe: Callable[[Network, ClientEndpoint], None] | None = None, **config: Any) -> TrialResult:
    """One seeded handshake over impaired links, then ``data_messages`` messages each way.

    The impairments apply to both directions (``loss_down`` overrides the server -> client loss). ``mtu`` sets
    both the link MTU and the endpoints' datagram budget. ``config`` overrides go to both configurations
    (``retransmit_initial=...``, ``handshake_timeout=...``). ``observe(network, client)`` is called before the
    simulation starts, to attach scripts, logs and invariant checks.

    After the client's HandshakeCompleted the client sends ``c0..`` and the server ``s0..``; each side echoes
    what it receives and resends its own messages every ``app_timeout`` seconds until their echo arrives.
    """
    rng = random.Random(seed)
    if mtu is not None:
        config.setdefault("mtu", mtu)
    cconf, sconf = psk_configs(rng, client_overrides, server_overrides, **config)
    net = Network(sconf, rng)
    up = LinkParams(loss, dup, reorder, max_delay, latency, mtu)
    down = LinkParams(loss if loss_down is None else loss_down, dup, reorder, max_delay, latency, mtu)
    ep = net.add_client(cconf, CLIENT_ADDR, up, down)

    client_msgs = [b"c%d" % i for i in range(data_messages)]
    server_msgs = [b"s%d" % i for i in range(data_messages)]
    got_at_server: dict[bytes, int] = {}
    got_at_client: dict[bytes, int] = {}
    client_tx = RetryingSender(net, ep.conn.send, lambda: net.flush_client(ep), client_msgs, app_timeout)
    server_tx = RetryingSender(net, lambda m: net.server.send(CLIENT_ADDR, m), net.flush_server, server_msgs,
                               app_timeout)
    handshake_snapshot: list[int] = []
    errors: list[str] = []
    data_done_at: list[float] = []

    def snapshot() -> None:
        if not handshake_snapshot:
            u, d = ep.up.stats, ep.down.stats
            handshake_snapshot.extend((u.sent + d.sent - u.app_sent - d.app_sent,
                                       u.bytes_sent + d.bytes_sent - u.app_bytes_sent - d.app_bytes_sent))

    def check_done() -> None:
        if not data_done_at and client_tx.done and server_tx.done and \
                set(got_at_server) >= set(client_msgs) and set(got_at_client) >= set(server_msgs):
            data_done_at.append(net.now)

    def on_client_event(_: ClientEndpoint, event: Event, now: float) -> None:
        if isinstance(event, HandshakeCompleted):
            snapshot()
            client_tx.start()
            check_done()
        elif isinstance(event, DataReceived):
            data = event.data
            if data[:1] == b"s":  # the server's message: count it, echo it
                got_at_client[data] = got_at_client.get(data, 0) + 1
                ep.conn.send(b"e" + data)
            elif data[:2] == b"ec":  # the echo of one of ours
                client_tx.ack(data[1:])
            check_done()
        elif isinstance(event, ConnectionTerminated):
            snapshot()
            if event.error is not None:
                errors.append(f"client: {type(event.error).__name__}")

    def on_server_event(addr: Address, event: Event, now: float) -> None:
        if isinstance(event, HandshakeCompleted):
            server_tx.start()  # the server may send as soon as it verified the client's Finished
        elif isinstance(event, DataReceived):
            data = event.data
            if data[:1] == b"c":
                got_at_server[data] = got_at_server.get(data, 0) + 1
                net.server.send(addr, b"e" + data)
            elif data[:2] == b"es":
                server_tx.ack(data[1:])
            check_done()
        elif isinstance(event, ConnectionTerminated) and event.error is not None:
            errors.append(f"server: {type(event.error).__name__}")

    ep.on_event = on_client_event
    net.on_server_event = on_server_event
    if observe is not None:
        observe(net, ep)

    def stop() -> bool:
        return ep.terminated is not None or (ep.established_at is not None and bool(data_done_at))

    net.run(until=cconf.handshake_timeout + data_budget, stop=stop)
    snapshot()

    sconn = net.server_conn(CLIENT_ADDR)
    if ep.established_at is not None:
        outcome = "established"
    elif ep.terminated is not None and ep.terminated[1] is not None:
        outcome = type(ep.terminated[1]).__name__
    else:
        outcome = "unfinished"
    data_ok = ep.established_at is not None and bool(data_done_at)
    dups = sum(n - 1 for n in got_at_server.values()) + sum(n - 1 for n in got_at_client.values())
    return TrialResult(
        seed=seed,
        outcome=outcome,
        handshake_time=ep.established_at,
        server_handshake_time=net.server_established_at.get(CLIENT_ADDR),
        client_flights=ep.conn.flights_sent,
        client_retransmissions=ep.conn.retransmissions,
        server_flights=sconn.flights_sent if sconn is not None else 0,
        server_retransmissions=sconn.retransmissions if sconn is not None else 0,
        handshake_datagrams=handshake_snapshot[0],
        handshake_bytes=handshake_snapshot[1],
        up=ep.up.stats,
        down=ep.down.stats,
        data_ok=data_ok,
        data_time=data_done_at[0] - ep.established_at if data_ok and ep.established_at is not None else None,
        app_transmissions=client_tx.transmissions + server_tx.transmissions,
        duplicate_deliveries=dups,
        errors=errors,
        end_time=net.now,
    )


def run_trials(seeds: Iterable[int], **kw: Any) -> list[TrialResult]:
    return [run_trial(seed, **kw) for seed in seeds]


# -- summaries (tests and benchmarks) ----------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    s = sorted(values)
    if not s:
        raise ValueError("no values")
    rank = max(1, min(len(s), -(-len(s) * q // 100)))
    return s[int(rank) - 1]


def summarize(results: list[TrialResult]) -> dict[str, Any]:
    done = [r for r in results if r.established]
    times = [r.handshake_time for r in done if r.handshake_time is not None]
    hist: dict[int, int] = {}
    for r in results:
        hist[r.retransmissions] = hist.get(r.retransmissions, 0) + 1
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    out: dict[str, Any] = {
        "trials": len(results),
        "established": len(done),
        "data_ok": sum(r.data_ok for r in results),
        "outcomes": outcomes,
        "retransmission_histogram": dict(sorted(hist.items())),
    }
    if times:
        out["handshake_time"] = {"min": min(times), "p50": percentile(times, 50), "p90": percentile(times, 90),
                                 "p99": percentile(times, 99), "max": max(times),
                                 "mean": sum(times) / len(times)}
        out["datagrams_per_handshake"] = sum(r.handshake_datagrams for r in done) / len(done)
        out["bytes_per_handshake"] = sum(r.handshake_bytes for r in done) / len(done)
    return out
