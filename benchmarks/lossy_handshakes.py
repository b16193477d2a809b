"""PSK handshakes over lossy, duplicating, reordering links, in virtual time (``tests/netsim.py``).

Run with ``python -m benchmarks.lossy_handshakes`` (about 10 s). For each loss rate it runs seeded trials (default
1,000, seeds 0..999): a handshake, then two application messages each way with CoAP-like retries, and prints

* how many handshakes completed (and how the others ended), and how many delivered their data;
* the distribution of the handshake time (virtual seconds from ``connect()`` to the client's
  HandshakeCompleted): min, p50, p90, p99, max;
* the histogram of retransmitted flights per handshake (client + server, ``conn.retransmissions``);
* datagrams and bytes both sides sent per completed handshake (application data excluded).

Impairments apply to both directions: loss as given, 10% duplication, 30% reordering with an extra delay of up
to 300 ms, 20 ms one-way latency. Timers are the ``DTLSConfiguration`` defaults unless overridden.

    python -m benchmarks.lossy_handshakes --loss 0.3 --retransmit-max 8   # one row, other timers
    python -m benchmarks.lossy_handshakes --trials 10000 --json out.json
    python -m benchmarks.lossy_handshakes --mtu 128 --identity-len 300 --hint-len 300   # fragmented flights
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netsim import TrialResult, run_trials, summarize

LOSSES = (0.0, 0.1, 0.3, 0.5)
BUCKETS = ((0, 0), (1, 1), (2, 2), (3, 3), (4, 5), (6, 9), (10, 14), (15, 10**9))


def bucketed(hist: dict[int, int]) -> list[tuple[str, int]]:
    out = []
    for lo, hi in BUCKETS:
        label = str(lo) if lo == hi else (f"{lo}-{hi}" if hi < 10**9 else f"{lo}+")
        out.append((label, sum(n for k, n in hist.items() if lo <= k <= hi)))
    return out


def run_row(loss: float, trials: int, first_seed: int, **kw: Any) -> dict[str, Any]:
    started = time.perf_counter()
    results: list[TrialResult] = run_trials(range(first_seed, first_seed + trials), loss=loss, dup=0.1, reorder=0.3,
                                            max_delay=0.3, **kw)
    summary = summarize(results)
    summary["loss"] = loss
    summary["failed_seeds"] = [r.seed for r in results if not r.established][:20]
    summary["cpu_seconds"] = time.perf_counter() - started
    summary["app_retries"] = sum(r.app_transmissions for r in results if r.established) - \
        4 * summary["established"]
    return summary


def fmt_time(t: float) -> str:
    return f"{t:.2f}" if t < 10 else f"{t:.1f}"


def print_tables(rows: list[dict[str, Any]], timers: str) -> None:
    print(f"\nTimers: {timers}. Impairment: loss as listed, 10% duplication, 30% reordering up to 300 ms, "
          "20 ms latency, each way.\n")
    print("| Loss | Completed | Data delivered | Other outcomes | min | p50 | p90 | p99 | max (s) "
          "| Datagrams / handshake | Bytes / handshake |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in rows:
        others = ", ".join(f"{k} {v}" for k, v in s["outcomes"].items() if k != "established") or "-"
        t = s.get("handshake_time")
        times = " | ".join(fmt_time(t[k]) for k in ("min", "p50", "p90", "p99", "max")) if t else "- | - | - | - | -"
        per = f"{s['datagrams_per_handshake']:.1f} | {s['bytes_per_handshake']:.0f}" if t else "- | -"
        print(f"| {s['loss']:.0%} | {s['established']} / {s['trials']} | {s['data_ok']} | {others} | {times} "
              f"| {per} |")
    print("\nRetransmitted flights per handshake (client + server), number of trials:\n")
    labels = [label for label, _ in bucketed({})]
    print("| Loss | " + " | ".join(labels) + " | mean |")
    print("|---:|" + "---:|" * (len(labels) + 1))
    for s in rows:
        hist = s["retransmission_histogram"]
        mean = sum(k * n for k, n in hist.items()) / max(1, s["trials"])
        print(f"| {s['loss']:.0%} | " + " | ".join(str(n) for _, n in bucketed(hist)) + f" | {mean:.2f} |")
    print()
    for s in rows:
        if s["failed_seeds"]:
            print(f"loss {s['loss']:.0%}: first seeds that did not complete: {s['failed_seeds']}")
    print(f"simulated in {sum(s['cpu_seconds'] for s in rows):.1f} s of CPU time")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--loss", type=float, action="append", help="loss rate(s) to run (default: 0, 0.1, 0.3, 0.5)")
    ap.add_argument("--retransmit-initial", type=float)
    ap.add_argument("--retransmit-max", type=float)
    ap.add_argument("--handshake-timeout", type=float)
    ap.add_argument("--mtu", type=int, help="datagram budget of both ends and the link MTU")
    ap.add_argument("--identity-len", type=int, help="client PSK identity of this many bytes (fragments at small MTUs)")
    ap.add_argument("--hint-len", type=int, help="server PSK identity hint of this many bytes (ServerKeyExchange)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    kw: dict[str, Any] = {}
    for name in ("retransmit_initial", "retransmit_max", "handshake_timeout", "mtu"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    from iotdtls import DTLSConfiguration

    d = DTLSConfiguration()
    timers = (f"retransmit_initial {kw.get('retransmit_initial', d.retransmit_initial):g} s, "
              f"retransmit_max {kw.get('retransmit_max', d.retransmit_max):g} s, "
              f"handshake_timeout {kw.get('handshake_timeout', d.handshake_timeout):g} s")
    if "mtu" in kw:
        timers += f", mtu {kw['mtu']}"
    if args.identity_len:
        kw["client_overrides"] = {"psk_identity": b"i" * args.identity_len}
        timers += f", {args.identity_len}-byte identity"
    if args.hint_len:
        kw["server_overrides"] = {"psk_identity_hint": b"h" * args.hint_len}
        timers += f", {args.hint_len}-byte identity hint"
    rows = [run_row(loss, args.trials, args.first_seed, **kw) for loss in (args.loss or LOSSES)]
    print_tables(rows, timers)
    if args.json:
        Path(args.json).write_text(json.dumps({"timers": timers, "rows": rows}, indent=1, default=str))
    return rows


if __name__ == "__main__":
    main()
