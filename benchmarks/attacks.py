"""Attack a real ``iotdtls-server`` over UDP on loopback and print one figure table per finding of issue 13.

    python3 -m benchmarks.attacks                 # full figures, real timers (~8 min)
    python3 -m benchmarks.attacks --quick         # timers divided by 16, smaller tables (~1 min)
    python3 -m benchmarks.attacks --only replay,burst --json out.json
    IOTDTLS_ATTACK_PYTHONPATH=/tmp/iotdtls-before python3 -m benchmarks.attacks   # measure another copy

Findings: ``replay`` (1), ``slots`` (2), ``table`` (3), ``burst`` (5), ``amplification`` (6), ``timing`` (7).
The building blocks live in ``benchmarks/attack_*.py``; ``tests/test_attacks.py`` asserts the targets.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .attack_amplification import run_amplification
from .attack_burst import run_bursts
from .attack_common import ServerCommand, Timers
from .attack_credentials import Credentials
from .attack_replay import run_replay
from .attack_slots import run_slots
from .attack_table import run_table
from .attack_timing import run_timing

QUICK_FACTOR = 16
#: In-process timing target: unknown and known identities within this many microseconds (medians).
TIMING_TOLERANCE_US = 1.0
AMPLIFICATION_LIMIT = 3.0

Rows = list[tuple[str, str]]


@dataclass
class Context:
    command: ServerCommand
    creds: Credentials
    quick: bool
    receive_buffer: int | None

    @property
    def timers(self) -> Timers:
        return Timers.scaled(QUICK_FACTOR) if self.quick else Timers()


def yes(flag: object) -> str:
    return "**yes**" if flag else "no"


# -- one function per finding: run, then rows for the table ----------------------------------------------------


def replay(ctx: Context) -> tuple[dict[str, Any], Rows]:
    r = run_replay(ctx.command, ctx.creds, ctx.timers, echo_timeout=0.3 if ctx.quick else 1.0)
    rows = [
        ("trials (A handshakes and leaves with close_notify, B from the same address)", str(r["trials"])),
        ("set-ups where A and B both handshook and B's echo came back", f"{r['setup_ok']} of {r['trials']}"),
        ("A's ClientHello with cookie replayed", f"{r['replayed']} of {r['trials']}"),
        ("B's sessions still carrying data after the replay", f"{r['b_survived']} of {r['trials']}"),
        ("B's echoes answered after the replay", f"{r['b_echoes_after']} of {r['echoes_after']}"),
        ("alerts B received / B told its session ended", f"{r['b_alerts']} / {r['b_told_closed']}"),
        ("target: B survives and carries data both ways", yes(r["b_survived"] == r["trials"])),
    ]
    return r, rows


def slots(ctx: Context) -> tuple[dict[str, Any], Rows]:
    t = ctx.timers
    if ctx.quick:
        variants = [dict(ports=150, period=3.0, legit_budget=2.0)]
    else:
        variants = [dict(ports=200, period=15.0, legit_budget=30.0), dict(ports=1500, period=30.0, legit_budget=30.0)]
    results = [run_slots(ctx.command, ctx.creds, t, **v) for v in variants]  # type: ignore[arg-type]
    rows: Rows = [("server", f"max_handshakes {results[0]['max_handshakes']}, handshake_timeout {t.handshake:g} s, "
                             f"first retransmission {t.initial:g} s"),
                  ("rate that holds every slot at these settings (2 datagrams per slot per handshake_timeout)",
                   f"{2 * int(results[0]['max_handshakes']) / t.handshake:.1f} datagrams/s")]
    for r in results:
        name = f"{r['attacker_ports']} ports of 127.0.0.2, fresh ClientHello each every {r['refresh_period_s']:g} s"
        budget = float(r["unloaded_handshake_max_s"] or 0) + t.initial
        seconds = r["legit_seconds"][0]
        ok = bool(r["legit_established"]) and seconds <= budget + 0.1 * t.initial + 0.05
        rows += [
            (f"[{name}] attacker sent", f"{r['attacker_packets_per_s']} datagrams/s, {r['attacker_bytes_per_s']} B/s"),
            (f"[{name}] attacker refreshes answered with a server flight (during the device's try)",
             f"{r['attacker_flights_during_legit']} of {r['attacker_refreshes_during_legit']}"),
            (f"[{name}] device from 127.0.0.3: unloaded handshake (max of 3)",
             f"{1000 * float(r['unloaded_handshake_max_s'] or 0):.1f} ms"),
            (f"[{name}] device under attack: established within {r['legit_budget_s']:g} s",
             f"{yes(r['legit_established'])} after {seconds:.2f} s, {r['legit_retransmissions'][0]} "
             "retransmissions"),
            (f"[{name}] target: within unloaded + one retransmission interval ({budget:.2f} s)", yes(ok)),
        ]
    return {"variants": results}, rows


def table(ctx: Context) -> tuple[dict[str, Any], Rows]:
    t = ctx.timers
    max_sessions = 200 if ctx.quick else None
    device_budget = 2.0 if ctx.quick else 30.0
    out: dict[str, Any] = {}
    rows: Rows = []
    for kind in ("rpk", "psk"):
        r = run_table(ctx.command, ctx.creds, t, kind=kind, max_sessions=max_sessions, device_budget=device_budget)
        out[kind] = r
        k = str(r["kind"])
        rows += [
            (f"[{k}] max_sessions; fillers tried from 127.0.0.2", f"{r['max_sessions']}; {r['fillers_tried']}"),
            (f"[{k}] fillers established (fill time)", f"{r['fillers_established']} ({r['fill_seconds']} s)"),
            (f"[{k}] fillers evicted with close_notify", str(r["fillers_evicted_with_close_notify"])),
            (f"[{k}] oldest filler still answers after idling", f"{yes(r['oldest_filler_still_answers'])} "
                                                                f"({r['oldest_filler_idle_s']} s)"),
            (f"[{k}] server log lines about the table / eviction", str(r["server_log_lines_about_the_table"])),
            (f"[{k}] new authenticated device from 127.0.0.3 got in (budget {device_budget:g} s)",
             f"{yes(r['device_established'])} ({r['device_seconds']} s), echo {yes(r['device_echo'])}"),
            (f"[{k}] target: the new device gets in", yes(r["device_established"] and r["device_echo"])),
        ]
    return out, rows


def burst(ctx: Context) -> tuple[dict[str, Any], Rows]:
    r = run_bursts(ctx.command, ctx.creds, ctx.timers, receive_buffer=ctx.receive_buffer)
    k = r["kernel"]
    rows = [
        ("server socket receive buffer (ss -m rb)", f"{r['server_receive_buffer_bytes']} B"),
        ("bursts x ClientHellos (each from its own socket, sent at once)", f"{r['bursts']} x {r['hellos_per_burst']}"),
        ("HelloVerifyRequests received", f"{r['answered']} of {r['sent']}"),
        ("lost (per burst)", f"{r['lost']} ({', '.join(map(str, r['lost_per_burst']))})"),
        ("drops counted at the server socket (/proc/net/udp)", str(r["server_socket_drops"])),
        ("time to send one burst", f"{', '.join(map(str, r['send_ms_per_burst']))} ms"),
        ("kernel: net.core.rmem_max / rmem_default; running as uid", f"{k['rmem_max']} / {k['rmem_default']}; "
                                                                     f"{k['euid']}"),
        ("kernel: SO_RCVBUF of 4 MiB gives; SO_RCVBUFFORCE of 16 MiB gives",
         f"{k['so_rcvbuf_of_wanted']}; {k['so_rcvbufforce_of_4x_wanted']}"),
        ("target: 0 lost", yes(r["lost"] == 0)),
    ]
    return r, rows


def amplification(ctx: Context) -> tuple[dict[str, Any], Rows]:
    t = ctx.timers
    if ctx.quick:
        r = run_amplification(ctx.command, ctx.creds, t, windows=(16.0 / QUICK_FACTOR, t.handshake),
                              repeat_window=16.0 / QUICK_FACTOR, repeat_interval=0.0625)
    else:
        r = run_amplification(ctx.command, ctx.creds, t)
    rows: Rows = [("timers", f"retransmission {t.initial:g} s doubling to {t.maximum:g} s, handshake timeout "
                             f"{t.handshake:g} s; repeat every {1000 * r['repeat_interval_s']:g} ms for "
                             f"{r['repeat_window_s']:g} s")]
    met = True
    for suite, name in (("psk", "PSK"), ("rpk", "raw public key"), ("chain", "2-certificate chain")):
        s = r[suite]
        for w, v in s["silent"].items():
            rows.append((f"[{name}] silent after one cookie, first {w}: sent / received / ratio",
                         f"{v['sent']} B / {v['received']} B / **{v['ratio']}x** ({v['flights']} flights)"))
            met = met and v["ratio"] <= AMPLIFICATION_LIMIT
        rows.append((f"[{name}] one flight / the ClientHello with cookie that triggers it",
                     f"{s['flight_bytes']} B / {s['client_hello_with_cookie_bytes']} B = "
                     f"**{s['flight_per_hello_ratio']}x**"))
        rep = s["repeat"]
        gap = rep["min_flight_interval_s"]
        rows.append((f"[{name}] same ClientHello repeated: sent / received / ratio",
                     f"{rep['sent']} B / {rep['received']} B / **{rep['ratio']}x** ({rep['hellos_sent']} hellos, "
                     f"{rep['flights']} flights, closest {1000 * gap:.1f} ms apart)" if gap is not None else
                     f"{rep['sent']} B / {rep['received']} B / **{rep['ratio']}x** ({rep['flights']} flights)"))
        met = met and rep["ratio"] <= AMPLIFICATION_LIMIT and (gap is None or gap >= 0.8 * t.initial)
    rows.append((f"target: every ratio <= {AMPLIFICATION_LIMIT:g}x, flights no closer than the retransmission timer",
                 yes(met)))
    return r, rows


def timing(ctx: Context) -> tuple[dict[str, Any], Rows]:
    r = run_timing(ctx.command, ctx.creds, ctx.timers, network_rounds=200 if ctx.quick else 1000,
                   inprocess_rounds=1000 if ctx.quick else 5000)
    rows: Rows = []
    for key, name in (("network", "over UDP, final flight -> alert"),
                      ("inprocess", "in-process DTLSServer.receive_datagram"),
                      ("inprocess_known_vs_known", "in-process, known vs known (noise check)")):
        v = r[key]
        rows.append((f"[{name}] tries each; median unknown / known",
                     f"{v['tries_each']}; {v['median_unknown_us']} us / {v['median_known_us']} us"))
        rows.append((f"[{name}] difference of medians (median of paired differences)",
                     f"**{v['difference_us']} us** ({v['median_paired_difference_us']} us)"))
    rows.append(("alerts: unknown / known", f"{r['network']['alerts_unknown']} / {r['network']['alerts_known']}"))
    rows.append((f"target: in-process medians within {TIMING_TOLERANCE_US:g} us",
                 yes(abs(r["inprocess"]["difference_us"]) <= TIMING_TOLERANCE_US)))
    return r, rows


FINDINGS: dict[str, tuple[str, Callable[[Context], tuple[dict[str, Any], Rows]]]] = {
    "replay": ("Finding 1: a replayed ClientHello against a live session from the same address", replay),
    "slots": ("Finding 2: handshake slots held from one IP address with many source ports", slots),
    "table": ("Finding 3: the session table filled by anonymous RPK clients / one leaked PSK", table),
    "burst": ("Finding 5: synchronized bursts of ClientHellos", burst),
    "amplification": ("Finding 6: bytes sent to an address after one cookie exchange", amplification),
    "timing": ("Finding 7: unknown PSK identity vs known identity with a wrong key", timing),
}


def print_table(title: str, rows: Rows, seconds: float) -> None:
    width = max(len(label) for label, _ in rows)
    print(f"\n### {title} ({seconds:.0f} s)\n")
    print(f"| {'Figure'.ljust(width)} | Value |")
    print(f"|{'-' * (width + 2)}|---|")
    for label, value in rows:
        print(f"| {label.ljust(width)} | {value} |")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attacks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"timers divided by {QUICK_FACTOR}, smaller tables")
    p.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    p.add_argument("--only", metavar="NAME[,NAME]", action="append", default=[],
                   help=f"run only these findings: {', '.join(FINDINGS)}")
    p.add_argument("--server-pythonpath", metavar="DIR", help="run the server from this copy of the code "
                   "(default: $IOTDTLS_ATTACK_PYTHONPATH, else this checkout)")
    p.add_argument("--server-python", metavar="EXE", help="Python for the server (default: $IOTDTLS_ATTACK_PYTHON)")
    p.add_argument("--server-arg", metavar="ARG", action="append", default=[],
                   help="extra argument for every server command line (repeat; e.g. --server-arg=--idle-timeout=60)")
    p.add_argument("--receive-buffer", type=int, metavar="BYTES",
                   help="pass --receive-buffer to the server in the burst finding (newer servers only)")
    args = p.parse_args(argv)
    names = [n for spec in args.only for n in spec.split(",") if n] or list(FINDINGS)
    unknown = [n for n in names if n not in FINDINGS]
    if unknown:
        p.error(f"unknown finding(s) {', '.join(unknown)}; choose from {', '.join(FINDINGS)}")
    command = ServerCommand.from_env()
    if args.server_pythonpath:
        command.pythonpath = args.server_pythonpath
    if args.server_python:
        command.python = args.server_python
    command.extra_args += args.server_arg
    where = command.code_location()
    print(f"# iotdtls attack figures ({'quick' if args.quick else 'full'})\n")
    print(f"server: {' '.join(command.argv(['...']))}; iotdtls from {where}")
    print(f"harness: Python {platform.python_version()}, {platform.machine()} {platform.system()} "
          f"{platform.release()}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    results: dict[str, Any] = {"quick": args.quick, "server_code": where, "server_argv": command.argv([]),
                               "python": platform.python_version(), "findings": {}}
    with Credentials() as creds:
        ctx = Context(command, creds, args.quick, args.receive_buffer)
        for name in names:
            title, run = FINDINGS[name]
            start = time.monotonic()
            data, rows = run(ctx)
            print_table(title, rows, time.monotonic() - start)
            results["findings"][name] = data
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return results


if __name__ == "__main__":
    main()
