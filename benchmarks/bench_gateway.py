"""The gateway at scale (issue 16, "Scale, measured"), against a bare aiocoap server in the same run.

    python -m benchmarks.bench_gateway [--devices 10000] [--json OUT] [--profile OUT.prof]

Setup: real UDP on loopback; ``iotdtls-gateway run`` as a process with its defaults (spool: SQLite WAL,
``synchronous=FULL``, group commit; coaps.max_sessions 10,000, max_handshakes 1000) and its MQTT uplink to a real
mosquitto, with a subscriber (QoS 1, persistent session) counting what arrives. ``--devices`` PSK devices are
provisioned in the registry; they are simulated by :mod:`benchmarks.gateway_device` (sans-IO, the timers of
``micropython/main.py``) in ``--workers`` processes (:mod:`benchmarks.gateway_load`), each device on a socket of its
own bound to a loopback address of its own. Phases, in order:

1. **bare**: a plain aiocoap server (:mod:`benchmarks.bare_coap_server`, udp6, no DTLS, no spool, no MQTT) takes
   the same devices' readings: every device posts once, then ``--concurrency`` devices post back to back for
   ``--seconds`` (acknowledged POSTs/s), then ``--rate`` POSTs/s for ``--rate-seconds`` (latency).
2. **sessions**: every device handshakes with the gateway and posts once, ``--window`` at a time, in two halves;
   the gateway's VmRSS before, between and after (each time once the uplink has delivered those readings) gives the
   memory per session, DTLS and CoAP state together.
3. **throughput** and 4. **latency**: as in 1, against the gateway; the subscriber's arrivals are counted too.
5. **storm**: every device posts every ``--storm-interval`` s, and at once when its session ends; the gateway is
   stopped (SIGTERM: close_notify to every device) and started again; the time until every device has had a
   reading acknowledged by the new process, and the devices that never made it (locked out). Once with the run's
   configuration, then again with ``coaps.max_handshakes = --storm-max-handshakes``.
6. **drain**: with the gateway and the broker stopped, ``--drain`` messages are appended straight to the spool file
   (SpoolStore, 2,000 per transaction: filling it through the gateway would take minutes); the gateway is started,
   then the broker; the time until the subscriber has every one of them (duplicates and missing ones counted).
7. **bare** once more: its throughput phase; the ratio is taken against the higher of its two rates, so that a
   moment of contention on a shared machine does not flatter the gateway.

A summary goes to stdout, progress to stderr; ``--json OUT`` writes the figures (``rate_ratio_vs_aiocoap``,
``acked_per_s``, ``p99_ms_at_200``, ``rss_per_session_kb``, ``storm_s``, ``drain_per_s``, then the details).
``--profile OUT.prof`` then runs the first readings, a throughput and a latency phase against a gateway under
cProfile (:mod:`benchmarks.profiled_gateway`) and prints its hottest functions and its collector's pauses.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iotdtls_gateway.config import CoapsConfig
from iotdtls_gateway.spool import SpoolError, SpoolStore

from benchmarks.gateway_load import QUIESCE, Fleet
from benchmarks.gateway_procs import (
    ChildProcess,
    core_speed,
    cpu_of,
    fill_spool,
    gateway_config,
    provision,
    rss_kb,
    start_bare_server,
    start_gateway,
    thread_cpu,
)
from benchmarks.gateway_report import machine_facts, profile_top, report, summary
from benchmarks.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the real mosquitto and its subscriber, as the gateway's tests use them
from mosquitto import Broker, Subscriber  # noqa: E402

STARTED = '"event":"started"'


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def merge(results: list[dict[str, Any]], seconds: float | None = None) -> dict[str, Any]:
    """The workers' answers to one phase, added up."""
    lat = sorted(x for r in results for x in r.get("latencies", ()))
    out: dict[str, Any] = {key: sum(r.get(key, 0) for r in results)
                           for key in ("ok", "ok_in_window", "failed", "skipped", "unfinished", "retransmissions",
                                       "empty_acks", "renewals")}
    out["generator_cpu_s"] = sum(r["cpu"] for r in results)
    slow = sorted(x for r in results for x in r.get("slow", ()))
    out["over_50ms"] = sum(1 for x in lat if x > 0.05)
    # when the first slow readings started (s after the first of them) and their round trips (ms)
    out["slow"] = [(round(t - slow[0][0], 3), round(1000 * x, 1)) for t, x in slow[:20]]
    for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("max_ms", 1.0)):
        p = percentile(lat, q)
        out[name] = None if p is None else 1000 * p
    if seconds:
        out["seconds"] = seconds
        out["acked_per_s"] = out["ok_in_window"] / seconds
        out["generator_cores"] = out["generator_cpu_s"] / seconds
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.fleet = Fleet(args.devices, args.workers)
        self.port = free_port()
        self.broker: Broker | None = None
        self.sub: Subscriber | None = None
        self.gateway: ChildProcess | None = None
        self.config = tmp / "gateway.toml"
        self.coaps: dict[str, int] = {}
        self.log = tmp / "gateway.log"

    def close(self) -> None:
        self.fleet.close()
        if self.gateway is not None:
            self.gateway.stop()
        if self.sub is not None:
            self.sub.stop()
        if self.broker is not None:
            self.broker.stop()

    # -- load phases, against the server the devices point at --------------------------------------------------
    def target(self, port: int, secure: bool) -> None:
        self.fleet.command(cmd="target", host="127.0.0.1", port=port, secure=secure)

    def connect(self, pid: int, parts: tuple[float, ...] = (0.0, 1.0),
                between: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Every device posts one reading (``window`` handshakes at a time), in parts: the fractions of the devices
        between consecutive ``parts``, with ``between(n)`` called after part n (the gateway's RSS)."""
        a = self.args
        seconds, cpu, results, counts = 0.0, 0.0, [], []
        for n, (since, upto) in enumerate(itertools.pairwise(parts)):
            t, cpu0 = time.monotonic(), cpu_of(pid)
            part = self.fleet.command(a.connect_timeout + 60, [{"window": w} for w in self.fleet.share(a.window)],
                                      cmd="connect", timeout=a.connect_timeout, since=since, upto=upto)
            results += part
            counts.append(sum(r["connected"] for r in part))
            seconds += time.monotonic() - t
            cpu += cpu_of(pid) - cpu0
            if between is not None:
                between(n)
        out = merge(results)
        connected = sum(r["connected"] for r in results)
        out.update(seconds=seconds, connected=connected, parts=counts, server_cpu_s=cpu, per_s=connected / seconds,
                   handshakes=sum(r["handshakes"] for r in results[-len(self.fleet.pipes):]))
        return out

    def closed(self, pid: int) -> dict[str, Any]:
        a = self.args
        speed = core_speed(3)  # how fast one core runs pure Python just now: the contention of the moment
        start = time.monotonic() + 0.5
        end = start + a.seconds
        cpu, threads = cpu_of(pid), thread_cpu(pid)
        results = self.fleet.command(a.seconds + QUIESCE + 60,
                                     [{"concurrency": c} for c in self.fleet.share(a.concurrency)],
                                     cmd="closed", start=start, end=end)
        out = merge(results, a.seconds)
        after = thread_cpu(pid)
        out.update(server_cpu_s=cpu_of(pid) - cpu, concurrency=a.concurrency, server_main_thread_cpu_s=after[0] -
                   threads[0], server_other_threads_cpu_s=after[1] - threads[1], core_speed_before=speed)
        if self.sub is not None:
            out["subscriber_per_s"] = sum(1 for r in self.sub.snapshot() if start <= r.at < end) / a.seconds
        return out

    def rate(self, pid: int) -> dict[str, Any]:
        a = self.args
        start = time.monotonic() + 0.5
        end = start + a.rate_seconds
        cpu = cpu_of(pid)
        n = len(self.fleet.pipes)
        results = self.fleet.command(a.rate_seconds + QUIESCE + 60, None, cmd="rate", rate=a.rate / n, start=start,
                                     end=end)
        out = merge(results, a.rate_seconds)
        out.update(server_cpu_s=cpu_of(pid) - cpu, rate=a.rate)
        return out

    # -- 1. the bare aiocoap server -----------------------------------------------------------------------------
    def bare(self, again: bool = False) -> dict[str, Any]:
        """The bare aiocoap server: every device posts once, the throughput phase, and (the first time) the latency
        phase. ``again``: the throughput phase once more at the end of the run, so that a rate measured while the
        shared machine was busy does not flatter the gateway (the ratio is taken against the higher of the two)."""
        port = free_port()
        server = start_bare_server(port, self.tmp / "aiocoap.log")
        try:
            server.wait_for("ready", 30)
            self.target(port, secure=False)
            out: dict[str, Any] = {"first": self.connect(server.pid)}
            say(f"bare aiocoap: {out['first']['connected']} devices posted once; closed loop, "
                f"{self.args.concurrency} devices, {self.args.seconds:g} s")
            out["throughput"] = self.closed(server.pid)
            say(f"bare aiocoap: {out['throughput']['acked_per_s']:,.0f} acknowledged POSTs/s")
            if not again:
                out["latency"] = self.rate(server.pid)
            out["rss_kb"] = rss_kb(server.pid)
        finally:
            server.stop()
        return out

    # -- 2.-5. the gateway --------------------------------------------------------------------------------------
    def start_gateway(self, wait: float = 60.0) -> float:
        self.gateway = start_gateway(self.config, self.log)
        return self.gateway.wait_for(STARTED, wait)

    def gateway_phases(self) -> dict[str, Any]:
        a = self.args
        out: dict[str, Any] = {}
        self.broker = Broker(self.tmp / "broker", persistence=True)
        self.broker.start()
        # a persistent session: what the gateway publishes while the subscriber reconnects is kept for it
        self.sub = Subscriber(self.broker.port, ["devices/#"], client_id="bench-gateway-subscriber", persistent=True)
        self.sub.start()
        self.coaps = {"max_handshakes": a.max_handshakes} if a.max_handshakes else {}
        gateway_config(self.tmp, self.port, self.broker.port, self.coaps)
        out["provision_s"] = provision(self.tmp / "data" / "registry.sqlite3", a.devices)
        self.start_gateway()
        assert self.gateway is not None
        time.sleep(1.0)
        pid = self.gateway.pid
        rss0 = rss_kb(pid)
        self.target(self.port, secure=True)
        say(f"gateway: {a.devices} devices handshake and post once, {a.window} at a time")
        rss: list[int] = []

        def settled(n: int) -> None:
            # the uplink delivers what the first readings left in the spool: the phases below start from a steady
            # state, and RSS is measured without that transient
            self.wait_spool_empty(120)
            time.sleep(1.0)
            rss.append(rss_kb(pid))

        out["sessions"] = s = self.connect(pid, (0.0, 0.5, 1.0), settled)
        rss1 = rss[-1]
        s.update(rss_before_kb=rss0, rss_half_kb=rss[0], rss_after_kb=rss1,
                 rss_per_session_kb=(rss1 - rss0) / max(1, s["connected"]),
                 rss_per_session_marginal_kb=(rss1 - rss[0]) / max(1, s["parts"][1]))
        say(f"gateway: {s['connected']} sessions in {s['seconds']:.1f} s; RSS {rss0:,} -> {rss1:,} KiB "
            f"({s['rss_per_session_kb']:.2f} KiB per session); closed loop")
        out["throughput"] = self.closed(pid)
        say(f"gateway: {out['throughput']['acked_per_s']:,.0f} acknowledged POSTs/s; {a.rate} POSTs/s")
        out["latency"] = self.rate(pid)
        out["spool_empty_s"] = self.wait_spool_empty(120)
        if "storm" not in a.skip:
            say(f"gateway: p99 {out['latency']['p99_ms']:.1f} ms; storm (readings every {a.storm_interval:g} s), "
                f"max_handshakes {self.coaps.get('max_handshakes', 'default')}")
            out["storm"] = self.storm(self.coaps)
            out["rss_after_storm_kb"] = rss_kb(self.gateway.pid)
            tuned = a.storm_max_handshakes
            if tuned and tuned != self.coaps.get("max_handshakes"):
                say(f"storm again, the gateway restarting with max_handshakes {tuned}")
                out["storm_tuned"] = self.storm({**self.coaps, "max_handshakes": tuned})
        return out

    def wait_spool_empty(self, timeout: float) -> float | None:
        """Seconds until the uplink has delivered everything in the spool (None: not within ``timeout``)."""
        t = time.monotonic()
        store = SpoolStore(self.tmp / "data" / "spool.sqlite3", readonly=True)
        try:
            while time.monotonic() - t < timeout:
                try:
                    if store.totals_now().messages == 0:
                        return time.monotonic() - t
                except (SpoolError, sqlite3.Error):
                    pass
                time.sleep(0.1)
        finally:
            store.close()
        return None

    def storm(self, coaps: dict[str, int]) -> dict[str, Any]:
        """Readings every ``--storm-interval`` s; the gateway stopped and started again with ``coaps`` settings."""
        a = self.args
        assert self.gateway is not None and self.broker is not None
        self.fleet.command(cmd="storm", interval=a.storm_interval)
        time.sleep(a.storm_lead)
        gateway_config(self.tmp, self.port, self.broker.port, coaps)  # what the restarted process reads
        t_stop = time.monotonic()
        self.gateway.stop()
        t_exited = time.monotonic()
        t_restart = time.monotonic()
        t_up = self.start_gateway()
        say(f"storm: stopped in {t_exited - t_stop:.1f} s, started again in {t_up - t_restart:.1f} s")
        status: dict[str, Any] = {}
        deadline = t_restart + a.storm_timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            answers = self.fleet.command(cmd="storm_status", since=t_restart)
            back_after = sorted(t for r in answers for t in r["back_after"])
            status = {"back": sum(r["back"] for r in answers), "noticed": sum(r["noticed"] for r in answers),
                      "missing_count": sum(r["missing_count"] for r in answers),
                      "missing": [i for r in answers for i in r["missing"]][:20],
                      "handshakes_in_storm": sum(r["handshakes"] for r in answers),
                      "back_by": [sum(1 for t in back_after if t <= limit) for limit in (10, 20, 30, 45, 60)],
                      "last_back": max((r["last_back"] for r in answers if r["last_back"] is not None),
                                       default=None)}
            if status["back"] >= a.devices:
                break
        stopped = self.fleet.command(QUIESCE + 30, cmd="stop")
        last = status.get("last_back")
        return {**status, "stop_s": t_exited - t_stop, "start_s": t_up - t_restart,
                "storm_s": None if last is None or status["back"] < a.devices else last - t_restart,
                "from_sigterm_s": None if last is None or status["back"] < a.devices else last - t_stop,
                "locked_out": status.get("missing_count", a.devices), "failed_attempts": sum(
                    r.get("failed", 0) for r in stopped), "generator_cpu_s": sum(r.get("cpu", 0) for r in stopped),
                "interval": a.storm_interval, "max_handshakes": coaps.get("max_handshakes", CoapsConfig.max_handshakes)}

    # -- 6. the drain -------------------------------------------------------------------------------------------
    def drain(self) -> dict[str, Any]:
        a = self.args
        assert self.gateway is not None and self.broker is not None and self.sub is not None
        self.gateway.stop()
        self.broker.stop()
        say(f"drain: broker stopped; {a.drain:,} messages into the spool")
        ids, fill_s = fill_spool(self.tmp / "data" / "spool.sqlite3", a.drain, a.devices)
        self.start_gateway()
        time.sleep(1.5)  # the uplink finds the broker down
        before = len(self.sub.snapshot())
        t_broker = time.monotonic()
        self.broker.start()
        t_listening = time.monotonic()
        got = self.sub.wait_for(lambda r: len(r) - before >= a.drain, timeout=a.drain_timeout,
                                what=f"{a.drain} drained messages") if a.drain else []
        arrived = got[before:]
        wanted = set(ids)
        seen = [json.loads(r.payload).get("id") for r in arrived if r.topic.startswith("devices/")]
        drained = [i for i in seen if i in wanted]
        t_last = max((r.at for r in arrived), default=t_listening)
        t_first = min((r.at for r in arrived), default=t_listening)
        return {"messages": a.drain, "fill_s": fill_s, "broker_start_s": t_listening - t_broker,
                "seconds": t_last - t_broker, "first_to_last_s": t_last - t_first,
                "per_s": a.drain / (t_last - t_broker) if a.drain else None,
                "duplicates": len(drained) - len(set(drained)), "missing": len(wanted - set(drained)),
                "gateway_rss_kb": rss_kb(self.gateway.pid)}

    # -- profile ------------------------------------------------------------------------------------------------
    def profile(self, path: Path) -> dict[str, Any]:
        """The first readings of every device (handshakes), a throughput and a latency phase, each against a gateway
        under cProfile (SIGUSR1/SIGUSR2 around the phase: ``path``-1, -2, -3), with its collector's pauses."""
        if self.gateway is not None:
            self.gateway.stop()
        argv = [sys.executable, "-m", "benchmarks.profiled_gateway", str(path), "run", "--config", str(self.config),
                "--log-json"]
        self.gateway = gw = ChildProcess("profiled gateway", argv, self.log)
        gw.wait_for(STARTED, 60)
        self.target(self.port, secure=True)
        out: dict[str, Any] = {}
        phases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("connect", lambda: self.connect(gw.pid)), ("throughput", lambda: self.closed(gw.pid)),
            ("latency", lambda: self.rate(gw.pid))]
        for n, (name, phase) in enumerate(phases, 1):
            self.wait_spool_empty(120)
            os.kill(gw.pid, signal.SIGUSR1)
            result = phase()
            os.kill(gw.pid, signal.SIGUSR2)
            dump = path.with_name(f"{path.stem}-{n}{path.suffix}")
            deadline = time.monotonic() + 30
            while not dump.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
            gc_pauses = json.loads(path.with_name(f"{path.stem}-{n}.gc.json").read_text())
            out[name] = {"per_s": result.get("acked_per_s", result.get("per_s")), "p99_ms": result.get("p99_ms"),
                         "file": str(dump), "gc": gc_pauses, "top": profile_top(dump)}
        return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=10_000, help="simulated devices (default 10,000)")
    p.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2), help="load processes")
    p.add_argument("--concurrency", type=int, default=100, help="devices posting back to back (default 100)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the throughput phases")
    p.add_argument("--rate", type=int, default=200, help="POSTs/s of the latency phases (default 200)")
    p.add_argument("--rate-seconds", type=float, default=10.0, help="length of the latency phases")
    p.add_argument("--window", type=int, default=100, help="handshakes at once when the devices first connect")
    p.add_argument("--connect-timeout", type=float, default=300.0)
    p.add_argument("--storm-interval", type=float, default=30.0, help="seconds between a device's readings")
    p.add_argument("--storm-lead", type=float, default=3.0, help="seconds of readings before the restart")
    p.add_argument("--storm-timeout", type=float, default=180.0)
    p.add_argument("--storm-max-handshakes", type=int, default=1000,
                   help="a second storm, the gateway restarting with this coaps.max_handshakes (0: none)")
    p.add_argument("--max-handshakes", type=int, help="the gateway's coaps.max_handshakes (default: its own, 1000)")
    p.add_argument("--drain", type=int, default=100_000, help="messages spooled during the broker outage")
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument("--json", metavar="OUT", help="write the figures to OUT")
    p.add_argument("--profile", metavar="OUT.prof",
                   help="profile the gateway under the handshakes and the throughput load (OUT-1.prof, OUT-2.prof)")
    p.add_argument("--workdir", metavar="DIR", help="a new directory to work in and keep (default: a temporary one)")
    p.add_argument("--skip", action="append", default=[], choices=["bare", "storm", "drain"],
                   help="leave a phase out (for development; the summary shows it as missing)")
    args = p.parse_args(argv)
    if args.devices < 1 or args.concurrency < 1 or args.rate < 1 or args.workers < 1 or args.drain < 0:
        p.error("--devices, --workers, --concurrency and --rate must be at least 1, --drain at least 0")
    args.concurrency = min(args.concurrency, args.devices)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        return run(args)
    except (RuntimeError, TimeoutError, OSError) as exc:  # a peer that will not start, a phase that never ends
        print(f"bench_gateway: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        sys.exit(1)
    except EOFError:  # its traceback is above
        print("bench_gateway: a load process died", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as d:
        tmp = Path(d)
        if args.workdir:  # kept afterwards: the gateway's and the broker's logs, the data dir
            tmp = Path(args.workdir).resolve()
            tmp.mkdir(parents=True, exist_ok=False)
        figures: dict[str, Any] = {"machine": machine_facts(tmp), "devices": args.devices, "workers": args.workers}
        say(f"{args.devices} devices in {args.workers} processes; bare aiocoap server first")
        bench = Bench(args, tmp)
        try:
            if "bare" not in args.skip:
                figures["bare"] = bench.bare()
            figures["gateway"] = bench.gateway_phases()
            if "drain" not in args.skip:
                figures["drain"] = bench.drain()
            if "bare" not in args.skip:
                figures["bare_again"] = bench.bare(again=True)
            if args.profile:
                figures["profile"] = bench.profile(Path(args.profile).resolve())
        finally:
            bench.close()
    figures["total_s"] = time.monotonic() - t0
    out = {**summary(figures), **figures}
    print(report(out, args))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
