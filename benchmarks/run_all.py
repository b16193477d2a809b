"""Run every iotdtls benchmark and print a markdown summary table (for the docs).

Run with ``python -m benchmarks.run_all`` (add ``--json FILE`` to also write all figures as JSON).
Each benchmark prints its own detailed table first; the summary follows: the PSK table, then the public-key
(ECDHE-ECDSA, raw public keys) tables, then the CoAPs tables (aiocoap over iotdtls).  ``--psk-only`` runs only the
three sans-IO PSK benchmarks; ``--no-coap`` skips the CoAPs benchmark (about 65-85 s of the total).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib.metadata import version
from typing import Any

from benchmarks import bench_handshake, bench_pk_handshake, bench_pk_wire, bench_records, bench_wire

__all__ = ["coap_markdown", "main", "markdown", "pk_markdown"]


def _ok(met: bool) -> str:
    return "yes" if met else "**no**"


def markdown(records: dict[str, float], handshake: dict[str, float], wire: dict[str, Any]) -> str:
    """The summary table, as markdown."""
    floor = records["aesccm_floor_s"]
    tiny_rec = records["tinydtls_record_s"]
    target_rec = bench_records.TARGET_FLOOR_RATIO
    target_rate = bench_handshake.TARGET_RATE_RATIO
    us = 1e6
    rows = [
        "| Benchmark | iotdtls | AEAD floor | tinydtls | iotdtls / floor | iotdtls / tinydtls | Target | Met |",
        "|---|---:|---:|---:|---:|---:|---|:-:|",
    ]
    for label, key in (("Record 64 B: connection -> connection", "iotdtls_connection"),
                       ("Record 64 B: via DTLSServer front", "iotdtls_server_front"),
                       ("Record 64 B: record layer (split_records + unprotect)", "iotdtls_record_layer"),
                       ("Record 64 B: record layer (header unpack + open)", "iotdtls_record_layer_open")):
        if f"{key}_s" not in records:
            continue
        ratio = records[f"{key}_vs_floor"]
        rows.append(f"| {label} | {records[f'{key}_s'] * us:.2f} us | {floor * us:.2f} us | {tiny_rec * us:.2f} us "
                    f"| {ratio:.2f}x | {records[f'{key}_vs_tinydtls']:.2f}x | <= {target_rec}x floor "
                    f"| {_ok(ratio <= target_rec)} |")
    rate = handshake["iotdtls_handshakes_per_s"]
    tiny_rate = handshake["tinydtls_handshakes_per_s"]
    rate_ratio = handshake["rate_ratio_vs_tinydtls"]
    rows.append(f"| PSK handshakes/s (cookie + EMS) | {rate:.0f}/s ({handshake['iotdtls_handshake_s'] * us:.0f} us) "
                f"| - | {tiny_rate:.0f}/s ({handshake['tinydtls_handshake_s'] * us:.0f} us) | - "
                f"| {rate_ratio:.2f}x rate | >= {target_rate}x tinydtls rate | {_ok(rate_ratio >= target_rate)} |")
    nbytes, ndgrams = wire["iotdtls_bytes"], wire["iotdtls_datagrams"]
    wire_ok = nbytes <= bench_wire.TARGET_BYTES and ndgrams <= bench_wire.TARGET_DATAGRAMS
    rows.append(f"| Handshake wire size (cookie + EMS) | {nbytes} B / {ndgrams} dgrams | - "
                f"| {wire['tinydtls_bytes']} B / {wire['tinydtls_datagrams']} dgrams | - "
                f"| {wire['bytes_ratio_vs_tinydtls']:.3f}x bytes | <= {bench_wire.TARGET_BYTES} B in "
                f"<= {bench_wire.TARGET_DATAGRAMS} dgrams | {_ok(wire_ok)} |")
    env = (f"Python {platform.python_version()} ({platform.python_implementation()}), "
           f"cryptography {version('cryptography')}, DTLSSocket {version('DTLSSocket')}, "
           f"{platform.machine()} {platform.system()}")
    return "\n".join(rows) + f"\n\n_{env}; medians, one process, peers measured in the same run._"


def pk_markdown(pk_handshake: dict[str, float], pk_wire: dict[str, Any]) -> str:
    """The public-key summary: handshake rate against the P-256 floor, then the wire size against GnuTLS."""
    us = 1e6
    psk = pk_handshake["psk_handshake_s"]
    rows = [
        "| ECDHE-ECDSA handshake (RPK, cookie + EMS) | iotdtls | P-256 floor | iotdtls / floor | overhead "
        "| overhead / PSK handshake |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, key in (("server-only auth", "server_only"), ("mutual auth", "mutual")):
        hs, floor = pk_handshake[f"{key}_handshake_s"], pk_handshake[f"{key}_floor_s"]
        overhead = pk_handshake[f"{key}_overhead_s"]
        rows.append(f"| {label} | {1 / hs:.0f}/s ({hs * us:.0f} us) | {1 / floor:.0f}/s ({floor * us:.0f} us) "
                    f"| {pk_handshake[f'{key}_ratio_vs_floor']:.2f}x | {overhead * us:.0f} us "
                    f"| {overhead / psk:.2f}x ({psk * us:.0f} us) |")
    rows += [
        "",
        "| RPK mutual-auth handshake, UDP payload | iotdtls <-> iotdtls | iotdtls -> gnutls-serv "
        "| gnutls-cli -> iotdtls | gnutls-cli <-> gnutls-serv | iotdtls / GnuTLS | iotdtls RPK / PSK |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    psk_bytes = pk_wire["psk_bytes"]
    for mtu in bench_pk_wire.MTUS:
        cells = []
        for pair, _ in bench_pk_wire.PAIRS:
            if f"{pair}_{mtu}_bytes" in pk_wire:
                cells.append(f"{pk_wire[f'{pair}_{mtu}_bytes']} B / {pk_wire[f'{pair}_{mtu}_datagrams']}")
            else:
                cells.append("n/a")
        ratio = pk_wire.get(f"iotdtls_vs_gnutls_{mtu}_bytes")
        cells.append(f"{ratio:.2f}x" if ratio is not None else "n/a")
        cells.append(f"{pk_wire[f'iotdtls_{mtu}_bytes'] / psk_bytes:.2f}x ({psk_bytes} B)")
        rows.append(f"| mtu {mtu} | " + " | ".join(cells) + " |")
    ticket = pk_wire.get("gnutls_512_ticket_bytes")
    note = (f"bytes / datagrams up to the server's Finished; GnuTLS's session ticket ({ticket} B at mtu 512) "
            "excluded" if ticket else "bytes / datagrams up to the server's Finished")
    return "\n".join(rows) + f"\n\n_{note}; the P-256 floor is the bare `cryptography` calls of the handshake._"


def coap_markdown(coap: dict[str, Any]) -> str:
    """The CoAPs summary: requests/s against plain CoAP, then the concurrent-client sweeps."""
    from benchmarks import bench_coap

    rates = coap["rates"]
    rows = ["| CoAP CON POST, 64 B CBOR, 127.0.0.1, one process | " + " | ".join(
        label for _key, label, _n, _w in bench_coap.MODES) + " |", "|---|" + "---:|" * len(bench_coap.MODES)]
    for name in ("coaps iotdtls", "coap udp6", "coap simple6"):
        rows.append(f"| {name} | " + " | ".join(f"{rates[f'{name} {m} req_per_s']:.0f}/s"
                                               for m, _l, _n, _w in bench_coap.MODES) + " |")
    for plain in ("coap udp6", "coap simple6"):
        ratios = [rates[f"coaps vs {plain} {m} ratio"] for m, _l, _n, _w in bench_coap.MODES]
        rows.append(f"| coaps / {plain} (DTLS cost) | "
                    + " | ".join(f"{r:.2f}x ({(1 - r) * 100:+.0f} %)" for r in ratios) + " |")
    rows += ["", "| Concurrent CoAPs clients | N | handshakes ok | time | sessions/s | requests ok | time "
             "| server CPU per handshake | RSS per session |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    labels = {key: label for key, label, _k, _m, _r in bench_coap.SWEEPS}
    for key, results in coap["clients"].items():
        for r in results:
            rows.append(f"| {labels[key]} | {r['clients']} | {r['handshake_ok']} | {r['handshake_s']:.2f} s "
                        f"| {r['handshakes_per_s']:.0f} | {r['request_ok']} | {r['request_s']:.2f} s "
                        f"| {r['server_cpu_per_handshake_s'] * 1e6:.0f} us "
                        f"| {r['server_rss_growth_per_session'] / 1024:.1f} KiB |")
    return "\n".join(rows) + ("\n\n_coaps / plain: median of per-round rate ratios; server CPU per handshake "
                              "includes the first request; RSS from /proc/self/statm of the server process._")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    parser.add_argument("--psk-only", action="store_true",
                        help="only the three sans-IO PSK benchmarks (no public-key, no CoAPs benchmarks)")
    parser.add_argument("--no-coap", action="store_true", help="skip the CoAPs (aiocoap) benchmark")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    benches: list[tuple[str, Any]] = [("records", bench_records), ("handshake", bench_handshake), ("wire", bench_wire)]
    if not args.psk_only:
        benches += [("pk_handshake", bench_pk_handshake), ("pk_wire", bench_pk_wire)]
    for name, bench in benches:
        t0 = time.perf_counter()
        results[name] = bench.main()
        print(f"  ({name}: {time.perf_counter() - t0:.1f} s)\n")
    if not (args.psk_only or args.no_coap):
        from benchmarks import bench_coap  # imports aiocoap

        t0 = time.perf_counter()
        results["coap"] = bench_coap.main([])
        print(f"  (coap: {time.perf_counter() - t0:.1f} s)\n")
    print(markdown(results["records"], results["handshake"], results["wire"]))
    if not args.psk_only:
        print()
        print(pk_markdown(results["pk_handshake"], results["pk_wire"]))
    if "coap" in results:
        print()
        print(coap_markdown(results["coap"]))
    print(f"\n(total {time.perf_counter() - started:.1f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
