"""Acknowledged POSTs per second through the gateway, and what durability costs, in one run.

    python -m benchmarks.bench_gateway [--devices 16] [--readings 200] [--json FILE]

Setup: an ``iotdtls-gateway run`` process (spool in a temporary directory on the local disk: WAL,
``synchronous=FULL``, group commit) with ``--devices`` devices provisioned; a load process in which every device
is an aiocoap client over iotdtls (its own PSK and DTLS session) posting ``--readings`` CBOR readings one after
the other (confirmable, NSTART = 1, each with its ``k`` key), all devices at once. A POST counts when its 2.04 has
arrived, i.e. when the reading is on disk. The same load then runs against ``iotdtls-coap-server``'s
``/telemetry``, which answers 2.04 at once and keeps nothing: the ratio is the cost of the spool. The fsync
latency of the disk is measured alone, for scale (an SD card takes 2-50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
from iotdtls_gateway.registry import Registry

from benchmarks.ports import free_port
from iotdtls.coap import client_context

ROOT = Path(__file__).resolve().parent.parent
KEY = bytes(range(16))


def fsync_latency(directory: Path, n: int = 50) -> float:
    """Median seconds of write + fsync of 4 KB in ``directory``."""
    path = directory / "fsync.probe"
    times = []
    with open(path, "wb") as f:
        for _ in range(n):
            t = time.perf_counter()
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t)
    path.unlink()
    return statistics.median(times)


async def load(port: int, devices: int, readings: int) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0

    async def device(i: int) -> None:
        nonlocal failures
        creds = {f"coaps://127.0.0.1:{port}/*": {"dtls": {"psk": {"hex": KEY.hex()},
                                                            "client-identity": {"ascii": f"dev{i}"}}}}
        ctx = await client_context(creds)
        try:
            for n in range(1, readings + 1):
                request = aiocoap.Message(code=aiocoap.POST, uri=f"coaps://127.0.0.1:{port}/telemetry?k=b{i}.{n}",
                                          payload=cbor2.dumps({"seq": n, "temp": 21.5}))
                request.opt.content_format = 60
                t = time.perf_counter()
                try:
                    answer = await asyncio.wait_for(ctx.request(request).response, 30)
                    if answer.code != aiocoap.CHANGED:
                        failures += 1
                    latencies.append(time.perf_counter() - t)
                except (TimeoutError, aiocoap.error.Error):
                    failures += 1
        finally:
            await ctx.shutdown()

    # warm-up: every device's handshake first, so the figure is POSTs on established sessions
    t0 = time.perf_counter()
    await asyncio.gather(*(device(i) for i in range(devices)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {"requests": devices * readings, "failures": failures, "seconds": elapsed,
            "acked_per_s": (len(latencies) - failures) / elapsed,
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None}


def wait_ready(proc: subprocess.Popen[str], needle: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if needle in line:
            return
        if not line and proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}")
    raise RuntimeError(f"server not ready: {needle!r} not seen")


def run_gateway_load(tmp: Path, devices: int, readings: int) -> dict[str, Any]:
    port = free_port()
    config = tmp / "gateway.toml"
    config.write_text(f'data_dir = "data"\n[coaps]\nbind = "127.0.0.1:{port}"\n')
    (tmp / "data").mkdir(mode=0o700)
    with Registry(tmp / "data" / "registry.sqlite3") as reg:
        for i in range(devices):
            reg.add_device(f"dev{i}", psk=KEY)
    proc = subprocess.Popen([sys.executable, "-m", "iotdtls_gateway", "run", "--config", str(config),
                             "--log-json"], stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    try:
        wait_ready(proc, '"event":"started"')
        result = asyncio.run(load(port, devices, readings))
    finally:
        proc.terminate()
        proc.wait(30)
    from iotdtls_gateway.spool import SpoolLimits, SpoolStore

    store = SpoolStore(tmp / "data" / "spool.sqlite3", SpoolLimits())
    result["stored"] = store.totals.messages
    store.close()
    return result


def run_baseline_load(tmp: Path, devices: int, readings: int) -> dict[str, Any]:
    port = free_port()
    creds = tmp / "creds.json"
    creds.write_text(json.dumps({f":dev{i}": {"dtls": {"psk": {"hex": KEY.hex()},
                                                        "client-identity": {"ascii": f"dev{i}"}}}
                                 for i in range(devices)}))
    proc = subprocess.Popen([sys.executable, "-m", "iotdtls.cli.coap_server", "--bind", f"127.0.0.1:{port}",
                             "--credentials", str(creds)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=str(ROOT))
    try:
        wait_ready(proc, "serving coaps://")
        return asyncio.run(load(port, devices, readings))
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_gateway", description=__doc__)
    p.add_argument("--devices", type=int, default=16)
    p.add_argument("--readings", type=int, default=200)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as d:
        tmp = Path(d)
        fsync = fsync_latency(tmp)
        gw = run_gateway_load(tmp, args.devices, args.readings)
        base = run_baseline_load(tmp, args.devices, args.readings)
    out = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "fsync_median_ms": 1000 * fsync, "devices": args.devices, "readings_per_device": args.readings,
           "gateway": gw, "iotdtls_coap_server": base, "ratio": gw["acked_per_s"] / base["acked_per_s"]}
    print(f"# python -m benchmarks.bench_gateway ({platform.machine()}, {os.cpu_count()} CPUs, "
          f"CPython {platform.python_version()}); fsync of 4 KB on this disk: {1000 * fsync:.2f} ms (median)")
    print(f"{args.devices} devices x {args.readings} confirmable CBOR POSTs, all devices at once, NSTART = 1\n")
    print("| server | acknowledged POSTs/s | p50 | p99 | failures | stored |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in (("iotdtls-gateway (spool: WAL, synchronous=FULL, group commit)", gw),
                    ("iotdtls-coap-server /telemetry (nothing stored)", base)):
        print(f"| {name} | {r['acked_per_s']:,.0f} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['failures']} "
              f"| {r.get('stored', '-')} |")
    print(f"\ngateway / bare CoAPs server: {out['ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
