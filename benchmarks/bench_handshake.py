"""PSK handshakes per second: iotdtls client + server in one process, sans-IO, versus tinydtls.

Run with ``python -m benchmarks.bench_handshake``.

What is timed mirrors :func:`benchmarks.baselines.tinydtls_handshake`: every handshake gets a fresh client
:class:`~iotdtls.DTLSConnection` and a fresh :class:`~iotdtls.DTLSServer` (created *outside* the timed
section); the clock runs from ``connect()`` until both sides are established, and includes the cookie exchange
(ClientHello, HelloVerifyRequest, ClientHello with cookie), the extended master secret, every datagram handed
over in memory and draining both event queues.  The figure is the median of individually timed handshakes.
The garbage collector stays enabled during timing, as in the baselines (a ``gc.collect()`` runs before a
series, outside the clock).

The in-memory :class:`IotPair` defined here is also used by :mod:`benchmarks.bench_records` and
:mod:`benchmarks.bench_wire`.
"""

from __future__ import annotations

import cProfile
import gc
import pstats
import statistics
import sys
import time
from typing import Final

from DTLSSocket import dtls  # type: ignore[import-untyped,unused-ignore]

from benchmarks.baselines import PSK_IDENTITY, PSK_KEY, tinydtls_handshake
from iotdtls import DTLSConfiguration, DTLSConnection, DTLSServer, HandshakeCompleted

__all__ = [
    "CLIENT_ADDR",
    "IotPair",
    "client_config",
    "interleaved",
    "iotdtls_handshake",
    "main",
    "profile",
    "server_config",
]

CLIENT_ADDR: Final = ("192.0.2.1", 5000)
NOW: Final = 1000.0  # sans-IO clock value; constant, the handshake never waits for a timer
TARGET_RATE_RATIO: Final = 0.5  # the issue's target: >= 0.5x tinydtls' handshakes/s
WARMUP: Final = 5


def client_config(**kw: object) -> DTLSConfiguration:
    """Default client configuration (AES-128-CCM-8 first, EMS on), the same PSK as the tinydtls baseline."""
    return DTLSConfiguration(is_client=True, psk_identity=PSK_IDENTITY, psk=PSK_KEY, **kw)  # type: ignore[arg-type]


def server_config(**kw: object) -> DTLSConfiguration:
    """Default server configuration: cookies on, EMS on, no identity hint (as tinydtls sends none)."""
    return DTLSConfiguration(is_client=False, psk_store={PSK_IDENTITY: PSK_KEY}, **kw)  # type: ignore[arg-type]


class IotPair:
    """An iotdtls client connection and server front wired together in memory, loss-free and in order.

    With ``record_wire`` every datagram is logged in :attr:`wire` as ``(from_client, datagram)``.
    """

    def __init__(self, client_cfg: DTLSConfiguration, server_cfg: DTLSConfiguration, *,
                 record_wire: bool = False) -> None:
        self.client = DTLSConnection(client_cfg, peer="server")
        self.server = DTLSServer(server_cfg)
        self.record_wire = record_wire
        self.wire: list[tuple[bool, bytes]] = []
        self.completed: list[HandshakeCompleted] = []

    def handshake(self, now: float = NOW) -> None:
        """Run a whole handshake: ``connect()``, then deliver datagrams until both sides are quiet."""
        client = self.client
        server = self.server
        client_out = client.datagrams_to_send
        server_out = server.datagrams_to_send
        client_in = client.receive_datagram
        server_in = server.receive_datagram
        wire = self.wire if self.record_wire else None
        client.connect(now)
        moved = True
        while moved:
            moved = False
            for dgram in client_out(now):
                if wire is not None:
                    wire.append((True, dgram))
                server_in(dgram, CLIENT_ADDR, now)
                moved = True
            for dgram, _addr in server_out(now):
                if wire is not None:
                    wire.append((False, dgram))
                client_in(dgram, now)
                moved = True
        completed = self.completed
        while (event := client.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                completed.append(event)
        while (item := server.next_event()) is not None:
            if isinstance(item[1], HandshakeCompleted):
                completed.append(item[1])

    @property
    def server_conn(self) -> DTLSConnection:
        return self.server.connections[CLIENT_ADDR]

    def check_established(self) -> None:
        conn = self.server.connections.get(CLIENT_ADDR)
        if not (self.client.is_established and conn is not None and conn.is_established):
            raise RuntimeError(f"iotdtls handshake did not complete: client {self.client.state.name}, "
                               f"client error {self.client.error!r}, server connection "
                               f"{'missing' if conn is None else conn.state.name}")
        if len(self.completed) != 2:
            raise RuntimeError(f"expected 2 HandshakeCompleted events, got {len(self.completed)}")


def _iotdtls_samples(ccfg: DTLSConfiguration, scfg: DTLSConfiguration, handshakes: int,
                     ) -> tuple[list[float], list[float]]:
    """``(handshake seconds, setup seconds)`` of ``handshakes`` individually timed handshakes (+ warm-up)."""
    samples: list[float] = []
    setups: list[float] = []
    perf_counter = time.perf_counter
    gc.collect()
    for _ in range(handshakes + WARMUP):  # the first few are warm-up
        t0 = perf_counter()
        pair = IotPair(ccfg, scfg)
        t1 = perf_counter()
        pair.handshake()
        t2 = perf_counter()
        pair.check_established()
        setups.append(t1 - t0)
        samples.append(t2 - t1)
    return samples[WARMUP:], setups[WARMUP:]


def iotdtls_handshake(*, handshakes: int = 2000) -> tuple[float, float]:
    """``(seconds per handshake, seconds of untimed setup)`` - medians over individually timed handshakes.

    The setup figure (creating the DTLSConnection and DTLSServer) is reported for information only.
    """
    samples, setups = _iotdtls_samples(client_config(), server_config(), handshakes)
    return statistics.median(samples), statistics.median(setups)


def interleaved(*, handshakes: int = 2000, blocks: int = 10) -> tuple[float, float, float, float]:
    """``(iotdtls s, tinydtls s, iotdtls setup s, rate ratio)``, measured in alternating blocks of handshakes.

    Each block times ``handshakes // blocks`` handshakes of each stack; a stack's figure is the median of its
    block medians (tinydtls through :func:`benchmarks.baselines.tinydtls_handshake`) and the rate ratio
    (iotdtls handshakes/s over tinydtls') the median of the per-block ratios.  Alternating, and taking ratios
    within a block, keeps the ratio honest when the machine's speed drifts during the run.
    """
    per_block = max(1, handshakes // blocks)
    ccfg, scfg = client_config(), server_config()
    ours: list[float] = []
    tiny: list[float] = []
    setup: list[float] = []
    for _ in range(blocks):
        samples, setups = _iotdtls_samples(ccfg, scfg, per_block)
        ours.append(statistics.median(samples))
        setup.append(statistics.median(setups))
        gc.collect()
        tiny.append(tinydtls_handshake(handshakes=per_block))
    ratio = statistics.median(t / o for t, o in zip(tiny, ours, strict=True))
    return statistics.median(ours), statistics.median(tiny), statistics.median(setup), ratio


def handshake_phases(*, handshakes: int = 500) -> list[tuple[str, float]]:
    """Median seconds of each step of a handshake: ``connect()``, then each datagram's delivery.

    A step is one ``receive_datagram`` call plus collecting the reply with ``datagrams_to_send``, labelled with
    the messages received; the events are drained outside the steps.  For profiling, not for the targets.
    """
    from benchmarks.bench_wire import describe_datagram  # imported here: bench_wire imports this module

    ccfg, scfg = client_config(), server_config()
    perf_counter = time.perf_counter
    labels: list[str] = []
    columns: list[list[float]] = []
    gc.collect()
    for n in range(handshakes + WARMUP):
        pair = IotPair(ccfg, scfg)
        client, server = pair.client, pair.server
        times: list[float] = []
        step_labels = ["client connect() -> ClientHello"]
        t0 = perf_counter()
        client.connect(NOW)
        queue = [(True, d) for d in client.datagrams_to_send(NOW)]
        times.append(perf_counter() - t0)
        while queue:
            from_client, dgram = queue.pop(0)
            if n == 0:
                names = ", ".join(describe_datagram(from_client, dgram).messages)
                step_labels.append(f"{'server' if from_client else 'client'} <- {names}")
            t0 = perf_counter()
            if from_client:
                server.receive_datagram(dgram, CLIENT_ADDR, NOW)
                replies = [(False, d) for d, _ in server.datagrams_to_send(NOW)]
            else:
                client.receive_datagram(dgram, NOW)
                replies = [(True, d) for d in client.datagrams_to_send(NOW)]
            times.append(perf_counter() - t0)
            queue.extend(replies)
        while client.next_event() is not None:
            pass
        while server.next_event() is not None:
            pass
        if not (client.is_established and pair.server_conn.is_established):
            raise RuntimeError("iotdtls handshake did not complete")
        if n == 0:
            labels = step_labels
            columns = [[] for _ in labels]
        if len(times) != len(labels):
            raise RuntimeError("the handshake took a different number of steps")
        if n >= WARMUP:
            for column, value in zip(columns, times, strict=True):
                column.append(value)
    return [(label, statistics.median(column)) for label, column in zip(labels, columns, strict=True)]


def profile(*, handshakes: int = 2000, top: int = 30) -> None:
    """cProfile ``handshakes`` handshakes (setup excluded) and print the ``top`` functions by own time.

    cProfile adds a fixed cost per call, so it overstates small Python functions against C calls; use it for
    call counts and shape, and :func:`handshake_phases` / ``py-spy`` for real time.
    """
    ccfg, scfg = client_config(), server_config()
    pairs = [IotPair(ccfg, scfg) for _ in range(handshakes)]
    profiler = cProfile.Profile()
    profiler.enable()
    for pair in pairs:
        pair.handshake()
    profiler.disable()
    for pair in pairs:
        pair.check_established()
    stats = pstats.Stats(profiler)
    print(f"cProfile of {handshakes} iotdtls handshakes ({stats.total_calls / handshakes:.0f} calls each)")  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)


def main() -> dict[str, float]:
    """Measure both stacks in this process, print a short table and return the figures."""
    dtls.setLogLevel(dtls.DTLS_LOG_EMERG)
    ours, tiny, setup, ratio = interleaved()  # ratio of rates: (1/ours) / (1/tiny), per block
    print("PSK handshake, cookie exchange + EMS, client and server in one process "
          "(median per handshake; ratio: median of per-block ratios)")
    print(f"  {'':30} {'us/handshake':>13} {'handshakes/s':>13} {'rate vs tinydtls':>17}")
    print(f"  {'iotdtls':30} {ours * 1e6:13.1f} {1 / ours:13.0f} {ratio:16.2f}x")
    print(f"  {'tinydtls (DTLSSocket)':30} {tiny * 1e6:13.1f} {1 / tiny:13.0f} {1.0:16.2f}x")
    print(f"  iotdtls setup (DTLSConnection + DTLSServer, untimed): {setup * 1e6:.1f} us")
    phases = handshake_phases()
    print("  iotdtls steps (median us; informative):")
    for label, secs in phases:
        print(f"    {secs * 1e6:7.1f}  {label}")
    print(f"    {sum(s for _, s in phases) * 1e6:7.1f}  sum of steps")
    verdict = "met" if ratio >= TARGET_RATE_RATIO else "NOT met"
    print(f"  target >= {TARGET_RATE_RATIO}x tinydtls rate: {verdict}")
    return {
        "iotdtls_handshake_s": ours,
        "iotdtls_handshakes_per_s": 1 / ours,
        "iotdtls_setup_s": setup,
        "tinydtls_handshake_s": tiny,
        "tinydtls_handshakes_per_s": 1 / tiny,
        "rate_ratio_vs_tinydtls": ratio,
        **{f"step {label} s": secs for label, secs in phases},
    }


if __name__ == "__main__":
    if "--profile" in sys.argv[1:]:
        profile()
    else:
        main()
