"""One authenticated session sending hostile CoAP at full speed: what it costs the server's memory.

Run with ``python -m benchmarks.bench_coap_hostile`` (7 attacks x 60 s x 2 servers plus a block-latency run,
about 16 minutes), ``--seconds 10`` for a shorter run, ``--attacks option_bomb,dedup_flood`` for some,
``--server-tree DIR`` to attack the server of another checkout (the figures before a change), ``--no-udp6`` to
skip the comparison, ``--json FILE`` to also write the figures.

For each attack of :mod:`benchmarks.hostile_coap` (option bombs, a deduplication flood, 16 KB records, endless
Block1 uploads and blocks, deaf observers registered with CON and with NON requests), in the same run:

* **iotdtls**: a real ``iotdtls-coap-server`` process (``python -m iotdtls.cli.coap_server``, ``/time``
  notifying every 10 ms) and one PSK session from :class:`~benchmarks.hostile_coap.RawCoapsClient`;
* **aiocoap udp6**: what a user would otherwise run, aiocoap's own server (``create_server_context`` with the
  ``udp6`` transport) serving the same site, sent the same CoAP bytes in plain UDP datagrams.

After a 1 s warm-up of the attack, the server's VmRSS (``/proc/PID/status``) is read, the attack runs for
``--seconds``, VmRSS is sampled every 0.5 s (the peak) and read again 0.5 s after the end. Reported: bytes the
client sent (UDP payload), RSS growth at the end and at the peak, growth / bytes sent, the server's CPU seconds,
and whether a second session was still answered afterwards. The target (issue 13): growth at most 16 MB and at
most 3x the bytes sent.

Block latency: one client uploads 3,000 blocks of 1024 bytes in one Block1 transfer, one block at a time;
the mean round trip of blocks 1-100 and 2901-3000 (with ``--max-upload`` raised to 4 MiB where the server has
that option, so the transfer is not refused at its default 64 KiB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from benchmarks import hostile_coap as hc
from benchmarks.ports import free_port, udp_bound

ROOT: Final = Path(__file__).resolve().parent.parent
HOST: Final = "127.0.0.1"
OBSERVE_INTERVAL: Final = 0.01
WARMUP: Final = 1.0
TARGET_MB: Final = 16.0
TARGET_RATIO: Final = 3.0
LATENCY_BLOCKS: Final = 3000
MB: Final = 1e6

#: (key, how the client attacks, the mtu of its DTLS session)
ATTACKS: Final[dict[str, tuple[Callable[[hc.RawCoapsClient, float], hc.AttackResult], int]]] = {
    "option_bomb": (hc.option_bomb, 1500),
    "dedup_flood": (hc.dedup_flood, 1500),
    "oversized_records": (hc.oversized_records, 17000),
    "endless_uploads": (hc.endless_uploads, 1500),
    "endless_blocks": (hc.endless_blocks, 1500),
    "deaf_observers_con": (lambda c, s: hc.deaf_observers(c, s, confirmable=True), 1500),
    "deaf_observers_non": (lambda c, s: hc.deaf_observers(c, s, confirmable=False), 1500),
}


def _credentials(directory: Path) -> Path:
    entry = {"psk": {"ascii": hc.PSK.decode()}}
    creds = {f":{name}": {"dtls": {**entry, "client-identity": {"ascii": name}}} for name in ("dev1", "dev2")}
    path = directory / "server.json"
    path.write_text(json.dumps(creds))
    return path


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """A server process: ``kind`` "iotdtls" (from ``tree``) or "udp6" (aiocoap's own, from this checkout)."""

    def __init__(self, kind: str, tree: Path, creds: Path, extra: list[str]) -> None:
        self.kind = kind
        self.port = free_port(HOST)
        if kind == "iotdtls":
            argv = [sys.executable, "-m", "iotdtls.cli.coap_server", "--bind", f"{HOST}:{self.port}",
                    "--credentials", str(creds), "--observe-interval", str(OBSERVE_INTERVAL), *extra]
            env = dict(os.environ, PYTHONPATH=str(tree))
            cwd = tree
        else:
            argv = [sys.executable, "-m", "benchmarks.bench_coap_hostile", "--serve-udp6", str(self.port)]
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            cwd = ROOT
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not udp_bound(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} server did not start ({argv})")
            time.sleep(0.05)
        time.sleep(0.3)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, mtu: int = 1500, identity: bytes = b"dev1") -> hc.RawCoapsClient:
        client = hc.RawCoapsClient(self.port, mtu=mtu, identity=identity, plain=self.kind == "udp6")
        client.handshake()
        return client

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def serving(kind: str, tree: Path, creds: Path, extra: list[str] | None = None) -> Iterator[Server]:
    server = Server(kind, tree, creds, extra or [])
    try:
        yield server
    finally:
        server.stop()


class RssSampler:
    """Reads VmRSS of ``pid`` every 0.5 s in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = hc.rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.peak = max(self.peak, hc.rss(self.pid))
            except (OSError, RuntimeError):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _probe(server: Server) -> bool:
    """Does another session still get an answer?"""
    try:
        client = server.client(identity=b"dev2")
        reply = client.request(hc.coap(hc.CON, hc.GET, client.next_mid(), b"p", hc.path("whoami")), 5.0)
        client.close()
        return reply.code == 0x45
    except (TimeoutError, OSError):
        return False


def run_attack(kind: str, name: str, seconds: float, tree: Path, creds: Path) -> dict[str, Any]:
    attack, mtu = ATTACKS[name]
    with serving(kind, tree, creds) as server:
        client = server.client(mtu=mtu)
        attack(client, WARMUP)
        client.bytes_sent = client.datagrams_sent = 0
        time.sleep(0.5)
        before, cpu0 = hc.rss(server.pid), _cpu_seconds(server.pid)
        sampler = RssSampler(server.pid)
        result = attack(client, seconds)
        time.sleep(0.5)
        peak = sampler.stop()
        after, cpu1 = hc.rss(server.pid), _cpu_seconds(server.pid)
        client.close()
        served = _probe(server)
    growth = after - before
    return {"server": kind, "attack": name, **asdict(result), "rss_before": before, "rss_growth": growth,
            "rss_peak_growth": peak - before, "growth_per_byte_sent": growth / max(result.bytes_sent, 1),
            "server_cpu_s": cpu1 - cpu0, "other_session_served": served,
            "target_met": growth <= TARGET_MB * MB and growth <= TARGET_RATIO * result.bytes_sent}


def block_latency(tree: Path, creds: Path) -> dict[str, Any]:
    """Mean round trip of blocks 1-100 and the last 100 of a 3,000-block upload, one block at a time."""
    help_text = subprocess.run([sys.executable, "-m", "iotdtls.cli.coap_server", "--help"], capture_output=True,
                               text=True, env=dict(os.environ, PYTHONPATH=str(tree)), cwd=tree, check=False).stdout
    extra = ["--max-upload", str(4 << 20)] if "--max-upload" in help_text else []
    times: list[float] = []
    with serving("iotdtls", tree, creds, extra) as server:
        client = server.client()
        for num in range(LATENCY_BLOCKS):
            options = [*hc.path("echo"), (hc.BLOCK1, hc.block(num, True, 6))]
            start = time.perf_counter()
            reply = client.request(hc.coap(hc.CON, hc.POST, client.next_mid(), b"u", options, bytes(1024)), 5.0)
            times.append(time.perf_counter() - start)
            if reply.code != 0x5F:
                raise RuntimeError(f"block {num}: {hc.code_text(reply.code)}")
        rss = hc.rss(server.pid)
        client.close()
    return {"first_100_ms": sum(times[:100]) / 100 * 1e3, "last_100_ms": sum(times[-100:]) / 100 * 1e3,
            "server_rss_after": rss, "max_upload_option": bool(extra)}


def _row(r: dict[str, Any]) -> str:
    return (f"  {r['attack']:20} {r['server']:8} {r['bytes_sent'] / MB:9.1f} {r['requests']:9} {r['replies']:9} "
            f"{r['rss_growth'] / MB:+9.1f} {r['rss_peak_growth'] / MB:+9.1f} {r['growth_per_byte_sent']:8.2f}x "
            f"{r['server_cpu_s']:7.1f} {'yes' if r['other_session_served'] else 'NO':>6} "
            f"{'yes' if r['target_met'] else 'no':>6}  {r['codes']} {r['notes'] or ''}")


async def _serve_udp6(port: int) -> None:
    """aiocoap's own plain-CoAP server with the iotdtls-coap-server demo site."""
    import logging

    import aiocoap

    from iotdtls.cli.coap_server import build_site

    logging.getLogger("coap-server").setLevel(logging.CRITICAL)
    logging.getLogger("coap").setLevel(logging.CRITICAL)
    await aiocoap.Context.create_server_context(build_site(OBSERVE_INTERVAL), bind=(HOST, port), transports=["udp6"])
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each attack (default 60)")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated: " + ", ".join(ATTACKS))
    parser.add_argument("--server-tree", type=Path, default=ROOT, help="checkout whose iotdtls-coap-server to attack")
    parser.add_argument("--no-udp6", action="store_true", help="skip aiocoap's udp6 server")
    parser.add_argument("--no-latency", action="store_true", help="skip the block-latency run")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--serve-udp6", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_udp6:
        asyncio.run(_serve_udp6(args.serve_udp6))
        return {}
    tree = args.server_tree.resolve()
    names = [n for n in args.attacks.split(",") if n]
    unknown = set(names) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {"server_tree": str(tree), "seconds": args.seconds, "attacks": []}
    with tempfile.TemporaryDirectory() as tmp:
        creds = _credentials(Path(tmp))
        print(f"One session attacking for {args.seconds:g} s at full speed; iotdtls-coap-server from {tree}")
        print(f"  {'attack':20} {'server':8} {'sent MB':>9} {'requests':>9} {'replies':>9} {'RSS MB':>9} "
              f"{'peak MB':>9} {'RSS/sent':>9} {'CPU s':>7} {'other':>6} {'target':>6}  replies, notes")
        for name in names:
            for kind in ("iotdtls", *(() if args.no_udp6 else ("udp6",))):
                result = run_attack(kind, name, args.seconds, tree, creds)
                out["attacks"].append(result)
                print(_row(result), flush=True)
        print(f"  (RSS: growth at the end; peak: the highest sample; target: <= {TARGET_MB:g} MB and <= "
              f"{TARGET_RATIO:g}x the bytes sent; other: a second session answered afterwards)")
        if not args.no_latency:
            latency = block_latency(tree, creds)
            out["block_latency"] = latency
            print(f"Block1 upload of {LATENCY_BLOCKS} x 1024 B, one block at a time: blocks 1-100 "
                  f"{latency['first_100_ms']:.2f} ms, blocks {LATENCY_BLOCKS - 99}-{LATENCY_BLOCKS} "
                  f"{latency['last_100_ms']:.2f} ms per round trip"
                  + ("" if latency["max_upload_option"] else " (server without --max-upload)"))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
