"""What ``benchmarks/bench_gateway.py`` prints: the machine, the six headline figures against their targets, and
the details of every phase; and the top of a cProfile of the gateway."""

from __future__ import annotations

import argparse
import io
import os
import platform
import pstats
from pathlib import Path
from typing import Any

from iotdtls_gateway.config import CoapsConfig

from benchmarks.gateway_procs import core_speed, fsync_latency

#: The issue's targets: (key, comparison, bound, unit).
TARGETS = (
    ("rate_ratio_vs_aiocoap", ">=", 0.5, "x"),
    ("acked_per_s", None, None, "/s"),
    ("p99_ms_at_200", "<=", 50.0, "ms"),
    ("rss_per_session_kb", "<=", 8.0, "KiB"),
    ("storm_s", "<=", 60.0, "s"),
    ("storm_s_default_config", "<=", 60.0, "s"),
    ("drain_per_s", ">=", 5000.0, "/s"),
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def machine_facts(tmp: Path) -> dict[str, Any]:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "fsync_4k_median_ms": 1000 * fsync_latency(tmp),
            "pure_python_mloops_per_s": core_speed(), "loadavg_at_start": loadavg()}


def summary(f: dict[str, Any]) -> dict[str, Any]:
    """The six figures the issue names, from the details."""
    gw = f["gateway"]
    acked = gw["throughput"]["acked_per_s"]
    bare = max((f[k]["throughput"]["acked_per_s"] for k in ("bare", "bare_again") if k in f), default=None)
    return {"rate_ratio_vs_aiocoap": acked / bare if bare else None, "acked_per_s": acked,
            "p99_ms_at_200": gw["latency"]["p99_ms"], "rss_per_session_kb": gw["sessions"]["rss_per_session_kb"],
            "storm_s": gw.get("storm_tuned", gw.get("storm", {})).get("storm_s"),
            "storm_max_handshakes": gw.get("storm_tuned", gw.get("storm", {})).get("max_handshakes"),
            "storm_s_default_config": gw.get("storm", {}).get("storm_s"),
            "drain_per_s": f.get("drain", {}).get("per_s"),
            "loadavg_at_end": loadavg()}


def _met(value: float | None, op: str | None, bound: float | None) -> str:
    if op is None or bound is None:
        return ""
    if value is None:
        return "no"
    return "yes" if (value >= bound if op == ">=" else value <= bound) else "no"


def _n(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _phase_rows(gw: dict[str, Any], bare: dict[str, Any] | None, again: dict[str, Any] | None) -> list[str]:
    def both(f: Any) -> tuple[str, str]:
        return f(gw), (f(bare) if bare is not None else "-")

    def rt(key: str) -> Any:
        return lambda x: " / ".join(_n(x[key][q], ".1f") for q in ("p50_ms", "p99_ms", "max_ms"))

    t, lat = gw["throughput"], gw["latency"]
    rows = [
        (f"acknowledged POSTs/s, {t['concurrency']} devices back to back, {t['seconds']:g} s",
         *both(lambda x: _n(x["throughput"]["acked_per_s"]))),
        ("  the same at the end of the run (the ratio takes the higher bare rate)", "-",
         _n(again["throughput"]["acked_per_s"]) if again else "-"),
        ("  one core's pure-Python speed just before (M iterations/s; lower: a busier machine)",
         *both(lambda x: f"{x['throughput']['core_speed_before']:.1f}"
               + (f" / {again['throughput']['core_speed_before']:.1f}" if again and x is bare else ""))),
        ("  messages/s arriving at the MQTT subscriber (same window)", _n(t.get("subscriber_per_s")), "-"),
        ("  failed attempts / CoAP retransmissions",
         *both(lambda x: f"{x['throughput']['failed']} / {x['throughput']['retransmissions']}")),
        ("  server CPU s / load generator CPU s (all its processes)",
         *both(lambda x: f"{x['throughput']['server_cpu_s']:.1f} / {x['throughput']['generator_cpu_s']:.1f}")),
        ("  p50 / p99 / max round trip (ms)", *both(rt("throughput"))),
        (f"p50 / p99 / max round trip at {lat['rate']} POSTs/s (ms), {lat['seconds']:g} s", *both(rt("latency"))),
        ("  acknowledged / failed attempts / busy devices skipped",
         *both(lambda x: f"{x['latency']['ok']} / {x['latency']['failed']} / {x['latency']['skipped']}")),
        ("  server CPU s / load generator CPU s",
         *both(lambda x: f"{x['latency']['server_cpu_s']:.1f} / {x['latency']['generator_cpu_s']:.1f}")),
        ("first reading of every device (over DTLS: with its handshake), s (per s)",
         f"{gw['sessions']['seconds']:.1f} ({gw['sessions']['per_s']:,.0f}/s)",
         f"{bare['first']['seconds']:.1f} ({bare['first']['per_s']:,.0f}/s)" if bare else "-"),
    ]
    return ["| Phase | iotdtls-gateway | bare aiocoap (udp6) |", "|---|---:|---:|"] + \
        [f"| {a} | {b} | {c} |" for a, b, c in rows]


def report(out: dict[str, Any], args: argparse.Namespace) -> str:
    m, gw = out["machine"], out["gateway"]
    load = " ".join(f"{x:.2f}" for x in m["loadavg_at_start"]), " ".join(f"{x:.2f}" for x in out["loadavg_at_end"])
    lines = [
        f"# python -m benchmarks.bench_gateway --devices {args.devices} ({m['cores']} cores, {m['cpu']}, "
        f"CPython {m['python']})",
        f"fsync of 4 KB: {m['fsync_4k_median_ms']:.2f} ms (median); pure-Python loop: "
        f"{m['pure_python_mloops_per_s']:.1f} M iterations/s on one core; load average {load[0]} at the start, "
        f"{load[1]} at the end",
        f"{args.devices:,} simulated PSK devices in {out['workers']} load processes, each device on a socket and a "
        f"loopback address of its own; the run took {out['total_s']:.0f} s",
        "",
        "| Figure | Measured | Target | Met |",
        "|---|---:|---|:-:|",
    ]
    for key, op, bound, unit in TARGETS:
        value = out[key]
        shown = "-" if value is None else (f"{value:.2f}" if unit in ("x", "KiB") else
                                           f"{value:.1f}" if unit in ("ms", "s") else f"{value:,.0f}")
        target = f"{op} {bound:g} {unit}" if op else ""
        name = {"storm_s": f"storm_s (coaps.max_handshakes = {out.get('storm_max_handshakes')})",
                "storm_s_default_config": f"storm_s_default_config (max_handshakes = {CoapsConfig.max_handshakes})",
                }.get(key, key)
        lines.append(f"| {name} | {shown} {unit} | {target} | {_met(value, op, bound)} |")
    lines += ["", *_phase_rows(gw, out.get("bare"), out.get("bare_again")), ""]
    s = gw["sessions"]
    lines.append(
        f"Sessions: {s['connected']:,} of {args.devices:,} devices connected ({s['handshakes']:,} handshakes, "
        f"{s['failed']} failed attempts, gateway CPU {s['server_cpu_s']:.1f} s), in two halves; gateway VmRSS "
        f"{s['rss_before_kb']:,} KiB before, {s['rss_half_kb']:,} KiB with half of them, {s['rss_after_kb']:,} KiB "
        f"with all: {s['rss_per_session_kb']:.2f} KiB per session from the start (one-time costs included), "
        f"{s['rss_per_session_marginal_kb']:.2f} KiB per session of the second half (DTLS session, CoAP remote, "
        f"the deduplication entry of its POST, the gateway's per-device figures).")
    for st in (gw.get("storm"), gw.get("storm_tuned")):
        if not st:
            continue
        lines.append(
            f"Storm, coaps.max_handshakes = {st['max_handshakes']}: readings every {st['interval']:g} s +-25 %; "
            f"SIGTERM -> exit {st['stop_s']:.1f} s, restart -> "
            f"serving {st['start_s']:.1f} s; {st['noticed']:,} devices heard close_notify; {st.get('back', 0):,} of "
            f"{args.devices:,} had a reading acknowledged by the new process, the last {_n(st['storm_s'], '.1f')} s "
            f"after the restart ({_n(st['from_sigterm_s'], '.1f')} s after SIGTERM); locked out: {st['locked_out']}; "
            f"{st['handshakes_in_storm']:,} handshakes started, {st['failed_attempts']:,} failed attempts (each "
            f"retried after the device's back-off); devices back after 10/20/30/45/60 s: "
            f"{' / '.join(f'{n:,}' for n in st['back_by'])}.")
    d = out.get("drain")
    if d:
        lines.append(
            f"Drain: {d['messages']:,} messages spooled (appended in {d['fill_s']:.1f} s) while the broker was "
            f"stopped; the subscriber had all of them {_n(d['seconds'], '.1f')} s after the broker's start "
            f"({_n(d['first_to_last_s'], '.1f')} s from the first to the last): {_n(d['per_s'])} messages/s; "
            f"duplicates {d['duplicates']}, missing {d['missing']}.")
    for name, prof in (out.get("profile") or {}).items():
        g = prof["gc"]
        pauses = "; ".join(f"generation {k}: {v['count']} pauses, longest {v['max_ms']:.1f} ms" for k, v in g.items()
                           if k != "objects")
        lines += ["", f"cProfile of the gateway's event loop, {name} ({_n(prof['per_s'])}/s under the profiler, p99 "
                      f"{_n(prof['p99_ms'], '.1f')} ms); collector: {pauses}; {g['objects']:,} objects tracked. "
                      "By own time:", "", "| function | calls | own s | cumulative s |", "|---|---:|---:|---:|"]
        lines += [f"| `{e['function']}` | {e['calls']:,} | {e['tottime']:.2f} | {e['cumtime']:.2f} |"
                  for e in prof["top"]]
    return "\n".join(lines)


def profile_top(path: Path, n: int = 25) -> list[dict[str, Any]]:
    """The ``n`` functions with the most own time in a cProfile dump."""
    stats = pstats.Stats(str(path), stream=io.StringIO())
    rows = []
    stdlib = os.path.dirname(os.__file__) + "/"
    root = str(Path(__file__).resolve().parent.parent) + "/"
    for (file, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        short = file.split("site-packages/")[-1].removeprefix(stdlib).removeprefix(root)
        where = f"{short}:{line} " if file != "~" else ""
        rows.append({"function": f"{where}{name}", "calls": calls, "tottime": own, "cumtime": cumulative})
    rows.sort(key=lambda r: r["tottime"], reverse=True)
    return rows[:n]
