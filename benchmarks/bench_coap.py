"""CoAPs over iotdtls through aiocoap: requests per second against plain CoAP, and many concurrent clients.

Run with ``python -m benchmarks.bench_coap`` (both parts, about 65-85 s), ``--part rate`` or ``--part clients``
for one, ``--profile`` for a cProfile of where a CoAPs request spends time beyond plain CoAP, ``--quick`` for a
short run and ``--json FILE`` to also write the figures.

1. **Requests per second** (one process, one event loop, 127.0.0.1): a CON POST of a 64-byte CBOR telemetry
   payload (content format 60) to a resource answering 2.04 Changed with the same payload, on established
   sessions.  Contenders, in alternating blocks (the order rotates each round): ``coaps://`` over iotdtls
   (:func:`iotdtls.coap.client_context` -> :func:`iotdtls.coap.server_context`), and aiocoap's plain ``coap://``
   over its ``udp6`` transport (the default; ``recvmsg``/``sendmsg`` with packet info) and over ``simple6`` ->
   ``simplesocketserver`` (asyncio datagram endpoints, built like the iotdtls transport, so the difference to it
   is DTLS).  Modes: sequential; 8 requests pending from one client context (aiocoap keeps NSTART = 1 per remote,
   so one CON is on the wire and the others wait in its backlog); 8 in flight from 8 client contexts.  A rate is
   the median of its block rates, a ratio the median of the per-round ratios.
2. **Concurrent clients**: one server process (a subprocess, so its RSS and CPU are its own) with N + 1 PSK
   identities; N client contexts in this process, each with its own credentials entry and so its own
   ClientSession and UDP socket.  All N first GET ``/whoami`` at once (the handshake plus a first request,
   aiocoap opening the session on demand; the answer must name the client's own credentials entry), then all N
   POST ``/echo`` at once over the established sessions.  N = 64, 256, 1000; the sweep stops at the first N
   with a failure (a phase ends after ``--timeout`` seconds).  Server RSS (``/proc/self/statm``, and the peak
   VmHWM) and CPU time (:mod:`resource`) are read before and after.  Server setups (:data:`SWEEPS`): iotdtls with
   the ``server_context`` defaults, iotdtls with ``max_handshakes=1000`` and a 4 MiB socket receive buffer,
   and aiocoap's own ``tinydtls_server`` transport (DTLSSocket) with both buffer sizes, if it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import logging
import os
import pstats
import resource
import socket
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import aiocoap
import cbor2
from aiocoap import Code, Message
from aiocoap import resource as coap_resource

from benchmarks.ports import free_port
from iotdtls.coap import client_context, load_credentials, server_context

__all__ = ["MODES", "SWEEPS", "client_sweeps", "concurrent_clients", "main", "profile", "rates", "sweep",
           "telemetry_payload"]

ROOT: Final = Path(__file__).resolve().parent.parent
HOST: Final = "127.0.0.1"
CBOR: Final = 60
INFLIGHT: Final = 8
CLIENT_COUNTS: Final = (64, 256, 1000)
TINYDTLS_PEER_CAP: Final = 64  # aiocoap 0.4.17 tinydtls_server: _DatagramServerSocketSimpleDTLS.max_sockets
Contender = tuple[str, list[Any], str]  # (name, client contexts, URI of the echo resource)


def telemetry_payload() -> bytes:
    """A small CBOR telemetry map, padded with a byte string to exactly 64 bytes."""
    reading: dict[str, Any] = {"dev": "sensor-0042", "seq": 1234, "t": 1717171717, "temp": 21.5, "hum": 48.25}
    for pad in range(64):
        data: bytes = cbor2.dumps(reading | {"pad": bytes(pad)})
        if len(data) == 64:
            return data
    raise AssertionError("no padding gives 64 bytes")


class Echo(coap_resource.Resource):  # type: ignore[misc]
    """POST -> 2.04 Changed with the request's payload and content format."""

    async def render_post(self, request: Message) -> Message:
        return Message(code=Code.CHANGED, payload=request.payload, content_format=request.opt.content_format)


class WhoAmI(coap_resource.Resource):  # type: ignore[misc]
    """GET -> the authenticated claims of the session, comma-separated; remembers every claim seen."""

    def __init__(self, seen: set[str]) -> None:
        super().__init__()
        self.seen = seen

    async def render_get(self, request: Message) -> Message:
        claims = [str(c) for c in request.remote.authenticated_claims]
        self.seen.update(claims)
        return Message(code=Code.CONTENT, payload=",".join(claims).encode())


def make_site(seen: set[str] | None = None) -> Any:
    site = coap_resource.Site()
    site.add_resource(["echo"], Echo())
    site.add_resource(["whoami"], WhoAmI(seen if seen is not None else set()))
    return site


def psk_entry(k: int) -> dict[str, Any]:
    return {"dtls": {"psk": {"ascii": f"secretPSK{k:07d}"}, "client-identity": {"ascii": f"dev{k}"}}}


def quiet() -> None:
    for name in ("coap", "coap-server", "coap.iotdtls", "coap-server.iotdtls"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# -- 1. requests per second ------------------------------------------------------------------------------------
async def _contenders(site: Any) -> tuple[list[Contender], list[Any]]:
    """Start the three servers and INFLIGHT client contexts for each; returns the contenders and every context."""
    ps, pu, pm = free_port(HOST), free_port(HOST), free_port(HOST)
    creds = {f":dev{k}": psk_entry(k) for k in range(INFLIGHT)}
    contexts: list[Any] = [
        await server_context(site, bind=(HOST, ps), credentials=creds),
        await aiocoap.Context.create_server_context(site, bind=(HOST, pu), transports=["udp6"]),
        await aiocoap.Context.create_server_context(site, bind=(HOST, pm), transports=["simplesocketserver"])]
    coaps = [await client_context({f"coaps://{HOST}:{ps}/*": psk_entry(k)}, plain_udp=False)
             for k in range(INFLIGHT)]
    udp6 = [await aiocoap.Context.create_client_context(transports=["udp6"]) for _ in range(INFLIGHT)]
    simple6 = [await aiocoap.Context.create_client_context(transports=["simple6"]) for _ in range(INFLIGHT)]
    contexts += coaps + udp6 + simple6
    return [("coaps iotdtls", coaps, f"coaps://{HOST}:{ps}/echo"), ("coap udp6", udp6, f"coap://{HOST}:{pu}/echo"),
            ("coap simple6", simple6, f"coap://{HOST}:{pm}/echo")], contexts


async def _post(ctx: Any, uri: str, payload: bytes) -> None:
    response = await ctx.request(Message(code=Code.POST, uri=uri, payload=payload, content_format=CBOR)).response
    if response.code != Code.CHANGED:
        raise RuntimeError(f"{uri}: {response.code}")


async def _block(contexts: list[Any], uri: str, payload: bytes, requests: int, workers: int) -> float:
    """Seconds for ``requests`` POSTs by ``workers`` coroutines, each sending its share one after another
    through ``contexts[i % len(contexts)]``."""
    async def worker(ctx: Any, count: int) -> None:
        for _ in range(count):
            await _post(ctx, uri, payload)

    gc.collect()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(contexts[i % len(contexts)], requests // workers) for i in range(workers)))
    return time.perf_counter() - t0


#: (key, description, client contexts used, concurrent workers)
MODES: Final = (("seq", "sequential", 1, 1),
                ("pending8", f"{INFLIGHT} pending, 1 client", 1, INFLIGHT),
                ("inflight8", f"{INFLIGHT} in flight, {INFLIGHT} clients", INFLIGHT, INFLIGHT))


async def rates(*, rounds: int = 11, per_block: int = 120) -> dict[str, float]:
    """Requests/s of every contender in every mode, and the coaps / plain ratios."""
    quiet()
    payload = telemetry_payload()
    contenders, contexts = await _contenders(make_site())
    try:
        for _name, ctxs, uri in contenders:  # handshakes, caches, first-use imports
            for ctx in ctxs:
                msg = Message(code=Code.POST, uri=uri, payload=payload, content_format=CBOR)
                reply = await ctx.request(msg).response
                if reply.payload != payload or reply.opt.content_format != CBOR:
                    raise RuntimeError(f"{uri} did not echo the payload")
            await _block(ctxs, uri, payload, 100, INFLIGHT)
        out: dict[str, float] = {}
        for mode, _label, nctx, workers in MODES:
            per_round: list[dict[str, float]] = []
            for r in range(rounds):
                order = contenders[r % 3:] + contenders[:r % 3]
                per_round.append({name: per_block / await _block(ctxs[:nctx], uri, payload, per_block, workers)
                                  for name, ctxs, uri in order})
            for name, _ctxs, _uri in contenders:
                out[f"{name} {mode} req_per_s"] = statistics.median(d[name] for d in per_round)
            for plain in ("coap udp6", "coap simple6"):
                out[f"coaps vs {plain} {mode} ratio"] = statistics.median(d["coaps iotdtls"] / d[plain]
                                                                          for d in per_round)
        return out
    finally:
        for ctx in reversed(contexts):
            await ctx.shutdown()


def _category(key: tuple[str, int, str]) -> str:
    path, _line, func = key
    if "AESCCM" in func:
        return "AEAD (cryptography AESCCM)"
    if "/iotdtls/coap/" in path:
        return "iotdtls.coap transport"
    if "/iotdtls/" in path:
        return "iotdtls sans-IO (connection, records)"
    if "/aiocoap/transports/" in path:
        return "aiocoap transport (udp6 / simple6)"
    if "/aiocoap/" in path:
        return "aiocoap (messages, exchanges, credentials)"
    if "/asyncio/" in path or "selectors" in path or any(s in func for s in ("recv", "send", "poll")):
        return "asyncio loop + socket calls"
    return "other (stdlib: copy, ipaddress, re, ...)"


def _where(key: tuple[str, int, str]) -> str:
    path, line, func = key
    if path == "~":
        return func
    for marker in ("/iotdtls/", "/aiocoap/", "/python3.11/"):
        if marker in path:
            path = marker.strip("/") + "/" + path.split(marker)[-1]
            break
    return f"{func} ({path.replace('python3.11/', '')}:{line})"


async def profile(*, requests: int = 3000, chunks: int = 6, top: int = 20) -> dict[str, dict[str, float]]:
    """cProfile ``requests`` sequential POSTs per contender (in ``chunks`` alternating blocks, one profiler per
    contender); print microseconds per request by category and the functions whose own time grows most from plain
    CoAP (simple6) to CoAPs."""
    quiet()
    payload = telemetry_payload()
    contenders, contexts = await _contenders(make_site())
    table: dict[str, dict[str, float]] = {}
    funcs: dict[str, dict[tuple[str, int, str], tuple[float, float]]] = {}
    profilers = {name: cProfile.Profile() for name, _c, _u in contenders}
    try:
        for _name, ctxs, uri in contenders:
            await _block(ctxs[:1], uri, payload, 200, 1)
        for _ in range(chunks):
            for name, ctxs, uri in contenders:
                profilers[name].enable()
                await _block(ctxs[:1], uri, payload, requests // chunks, 1)
                profilers[name].disable()
    finally:
        for ctx in reversed(contexts):
            await ctx.shutdown()
    for name, profiler in profilers.items():
        raw = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        funcs[name] = {k: (v[2] * 1e6 / requests, v[1] / requests) for k, v in raw.items()}
        cats: dict[str, float] = {}
        for key, (tottime, _calls) in funcs[name].items():
            cats[_category(key)] = cats.get(_category(key), 0.0) + tottime
        table[name] = cats
    names = [c[0] for c in contenders]
    print(f"cProfile of {requests} sequential requests each, us per request by category (cProfile inflates "
          "Python calls about 3x against C calls; compare shapes, not totals)")
    print(f"  {'category':44}" + "".join(f"{n:>15}" for n in names) + f"{'coaps - simple6':>17}")
    for cat in sorted({c for d in table.values() for c in d}, key=lambda c: -table["coaps iotdtls"].get(c, 0)):
        cells = "".join(f"{table[n].get(cat, 0.0):15.1f}" for n in names)
        diff = table["coaps iotdtls"].get(cat, 0.0) - table["coap simple6"].get(cat, 0.0)
        print(f"  {cat:44}{cells}{diff:17.1f}")
    totals = {n: sum(table[n].values()) for n in names}
    print(f"  {'total':44}" + "".join(f"{totals[n]:15.1f}" for n in names)
          + f"{totals['coaps iotdtls'] - totals['coap simple6']:17.1f}")
    ours, plain = funcs["coaps iotdtls"], funcs["coap simple6"]
    grown = sorted(((ours[k][0] - plain.get(k, (0.0, 0.0))[0], k) for k in ours), reverse=True)[:top]
    print(f"\n  top {top} functions by own time added in the CoAPs path (us per request; calls per request)")
    print(f"  {'added':>7} {'coaps':>7} {'calls':>5} {'plain':>7} {'calls':>5}  function")
    for added, key in grown:
        p_us, p_calls = plain.get(key, (0.0, 0.0))
        print(f"  {added:7.1f} {ours[key][0]:7.1f} {ours[key][1]:5.1f} {p_us:7.1f} {p_calls:5.1f}  {_where(key)}")
    return table


# -- 2. concurrent clients -------------------------------------------------------------------------------------
def _udp_rcvbuf_errors() -> int:
    """The kernel's count of UDP datagrams dropped for a full socket receive buffer (whole host)."""
    try:
        with open("/proc/net/snmp", encoding="ascii") as fh:
            rows = [line.split() for line in fh if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return 0


def _server_socket(ctx: Any) -> socket.socket:
    transport = ctx.request_interfaces[0].token_interface.message_interface  # private aiocoap structure
    udp = transport._udp if hasattr(transport, "core") else transport._pool._transport
    sock: socket.socket = udp.get_extra_info("socket")
    return sock


def _server_stats(ctx: Any, seen: set[str]) -> dict[str, Any]:
    gc.collect()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/statm", encoding="ascii") as fh:
        rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    # The peak from /proc (VmHWM), not ru_maxrss: on Linux a child's ru_maxrss starts from its parent's RSS at
    # fork (kept across exec), so it says nothing about this process when the benchmark process is larger.
    with open("/proc/self/status", encoding="ascii") as fh:
        peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    out: dict[str, Any] = {"rss": rss, "maxrss": peak, "cpu": usage.ru_utime + usage.ru_stime,
                           "claims_seen": len(seen), "rcvbuf_errors": _udp_rcvbuf_errors(),
                           "rcvbuf": _server_socket(ctx).getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)}
    transport = ctx.request_interfaces[0].token_interface.message_interface
    core = getattr(transport, "core", None)
    if core is not None:  # iotdtls
        out |= {"sessions": len(core.connections), "dtls_stats": dict(core.stats)}
    else:  # aiocoap tinydtls_server: one DTLS context per peer address
        out["sessions"] = len(transport._pool._connections)
    return out


async def _serve(kind: str, port: int, clients: int, max_handshakes: int, rcvbuf: int) -> None:
    """The server process: serve until stdin says ``quit``; ``stats`` prints one JSON line."""
    quiet()
    seen: set[str] = set()
    site = make_site(seen)
    creds = {f":dev{k}": psk_entry(k) for k in range(clients + 1)}  # + 1: the warm-up client
    if kind == "iotdtls":
        ctx = await server_context(site, bind=(HOST, port), credentials=creds, max_handshakes=max_handshakes,
                                   receive_buffer=rcvbuf)
    else:
        # aiocoap adds 5684 - 5683 to the port of a bind given to its DTLS server transport
        ctx = await aiocoap.Context.create_server_context(site, bind=(HOST, port - 1), transports=["tinydtls_server"],
                                                          server_credentials=load_credentials(creds))
    if rcvbuf:
        _server_socket(ctx).setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while (await reader.readline()).strip() not in (b"quit", b""):
        print(json.dumps(_server_stats(ctx, seen)), flush=True)
    await ctx.shutdown()


async def _phase(calls: list[Callable[[], Awaitable[bool]]], timeout: float) -> dict[str, Any]:
    """Run every call at once; count successes and failures, time the phase and the individual calls."""
    t0 = time.perf_counter()
    done: list[float] = []
    failures: Counter[str] = Counter()

    async def one(call: Callable[[], Awaitable[bool]]) -> None:
        try:
            if await asyncio.wait_for(call(), timeout):
                done.append(time.perf_counter() - t0)
            else:
                failures["wrong answer"] += 1
        except Exception as exc:
            cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ is not None else ""
            failures[f"{type(exc).__name__}{cause}"[:100]] += 1

    await asyncio.gather(*(one(c) for c in calls))
    done.sort()
    return {"ok": len(done), "seconds": time.perf_counter() - t0, "failures": dict(failures),
            "median_latency": statistics.median(done) if done else 0.0,
            "p99_latency": done[int(0.99 * (len(done) - 1))] if done else 0.0}


async def concurrent_clients(kind: str, n: int, *, timeout: float = 10.0, max_handshakes: int = 100,
                             rcvbuf: int = 0) -> dict[str, Any]:
    """N clients against one ``kind`` ("iotdtls" or "tinydtls") server process; see the module docstring.

    ``max_handshakes`` goes to :func:`iotdtls.coap.server_context`; ``rcvbuf`` (if not 0) sets the server
    socket's SO_RCVBUF.  Each phase ends after ``timeout`` seconds; what has not completed by then counts as failed.
    """
    quiet()
    port = free_port(HOST)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.bench_coap", "--serve", kind, "--port", str(port), "--clients", str(n),
        "--max-handshakes", str(max_handshakes), "--rcvbuf", str(rcvbuf), cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def stats() -> dict[str, Any]:
        stdin.write(b"stats\n")
        result: dict[str, Any] = json.loads(await asyncio.wait_for(stdout.readline(), 30))
        return result

    base = f"coaps://{HOST}:{port}"
    payload = telemetry_payload()

    def whoami(ctx: Any, k: int) -> Callable[[], Awaitable[bool]]:
        async def call() -> bool:
            reply = await ctx.request(Message(code=Code.GET, uri=f"{base}/whoami")).response
            return bool(reply.code == Code.CONTENT and reply.payload == f":dev{k}".encode())
        return call

    def echo(ctx: Any) -> Callable[[], Awaitable[bool]]:
        async def call() -> bool:
            msg = Message(code=Code.POST, uri=f"{base}/echo", payload=payload, content_format=CBOR)
            reply = await ctx.request(msg).response
            return bool(reply.code == Code.CHANGED and reply.payload == payload)
        return call

    contexts: list[Any] = []
    try:
        if (await asyncio.wait_for(stdout.readline(), 30)).strip() != b"ready":
            raise RuntimeError(f"{kind} server did not start")
        contexts.append(await client_context({f"{base}/*": psk_entry(n)}, plain_udp=False))  # warm-up client
        if not await asyncio.wait_for(whoami(contexts[0], n)(), timeout):
            raise RuntimeError(f"{kind} server: the warm-up request failed")
        before = await stats()
        t0 = time.perf_counter()
        clients = [await client_context({f"{base}/*": psk_entry(k)}, plain_udp=False) for k in range(n)]
        contexts += clients
        setup = time.perf_counter() - t0
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        first = await _phase([whoami(ctx, k) for k, ctx in enumerate(clients)], timeout)
        after_hs = await stats()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        second = await _phase([echo(ctx) for ctx in clients], timeout)
        after_req = await stats()
    finally:
        await asyncio.gather(*(ctx.shutdown() for ctx in contexts), return_exceptions=True)
        if proc.returncode is None:
            stdin.write(b"quit\n")
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    hs_ok = max(first["ok"], 1)
    return {
        "kind": kind, "clients": n, "max_handshakes": max_handshakes if kind == "iotdtls" else None,
        "server_rcvbuf": before["rcvbuf"], "client_setup_s": setup,
        "handshake_ok": first["ok"], "handshake_s": first["seconds"], "handshake_failures": first["failures"],
        "handshakes_per_s": first["ok"] / first["seconds"], "handshake_median_latency_s": first["median_latency"],
        "handshake_p99_latency_s": first["p99_latency"],
        "request_ok": second["ok"], "request_s": second["seconds"], "request_failures": second["failures"],
        "server_sessions": after_req["sessions"] - 1, "server_claims_seen": after_req["claims_seen"] - 1,
        "server_cpu_per_handshake_s": (after_hs["cpu"] - before["cpu"]) / hs_ok,
        "server_cpu_per_request_s": (after_req["cpu"] - after_hs["cpu"]) / max(second["ok"], 1),
        "client_cpu_per_handshake_s": (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / hs_ok,
        "server_rss_before": before["rss"],
        "server_rss_growth_per_session": (after_req["rss"] - before["rss"]) / hs_ok,
        "server_peak_rss_growth_per_session": (after_req["maxrss"] - before["maxrss"]) / hs_ok,
        "kernel_rcvbuf_drops": after_req["rcvbuf_errors"] - before["rcvbuf_errors"],
        "server_dtls_stats": after_req.get("dtls_stats", {}),
    }


def _have_tinydtls_server() -> bool:
    try:
        import DTLSSocket  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


#: (key, label, server kind, max_handshakes, SO_RCVBUF to set or 0)
SWEEPS: Final = (
    ("iotdtls", "iotdtls, max_handshakes=100, kernel-default SO_RCVBUF (the first server_context defaults)",
     "iotdtls", 100, 0),
    ("iotdtls_tuned", "iotdtls server_context defaults (max_handshakes=1000, SO_RCVBUF 4 MiB)", "iotdtls", 1000,
     4 << 20),
    ("tinydtls", "aiocoap tinydtls_server (no handshake limit), default SO_RCVBUF", "tinydtls", 0, 0),
    ("tinydtls_tuned", "aiocoap tinydtls_server, SO_RCVBUF 4 MiB", "tinydtls", 0, 4 << 20),
)


async def sweep(kind: str, counts: tuple[int, ...], timeout: float, max_handshakes: int = 100, rcvbuf: int = 0,
                ) -> list[dict[str, Any]]:
    """``concurrent_clients`` for each N in ``counts``, printing a row each; stops after the first failing N."""
    results: list[dict[str, Any]] = []
    for n in counts:
        r = await concurrent_clients(kind, n, timeout=timeout, max_handshakes=max_handshakes, rcvbuf=rcvbuf)
        results.append(r)
        print(f"  {n:5} {r['handshake_ok']:5} {r['handshake_s']:6.2f} {r['handshakes_per_s']:6.0f} "
              f"{r['handshake_median_latency_s']:6.2f} {r['handshake_p99_latency_s']:6.2f}  {r['request_ok']:5} "
              f"{r['request_s']:6.2f}  {r['server_sessions']:5} {r['server_cpu_per_handshake_s'] * 1e6:6.0f} "
              f"{r['server_cpu_per_request_s'] * 1e6:6.0f} {r['client_cpu_per_handshake_s'] * 1e6:6.0f} "
              f"{r['server_rss_growth_per_session'] / 1024:7.1f} {r['kernel_rcvbuf_drops']:6}")
        for phase in ("handshake", "request"):
            if r[f"{phase}_failures"]:
                print(f"        {phase} failures: {r[f'{phase}_failures']}")
        if r["server_dtls_stats"].get("dropped_full"):
            print(f"        ClientHellos dropped at the handshake limit: {r['server_dtls_stats']['dropped_full']}")
        if r["handshake_ok"] < n or r["request_ok"] < n or max(r["handshake_s"], r["request_s"]) > timeout:
            print(f"        stopping at N={n}")
            break
    return results


async def client_sweeps(counts: tuple[int, ...], timeout: float) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    print("Concurrent CoAPs clients, one server process: all N GET /whoami at once (handshake + first request), "
          "then all N POST /echo")
    print(f"  {'N':>5} {'hs ok':>5} {'s':>6} {'hs/s':>6} {'p50 s':>6} {'p99 s':>6}  {'req':>5} {'s':>6}  "
          f"{'sess':>5} {'srv us':>6} {'srv us':>6} {'cli us':>6} {'RSS KiB':>7} {'kernel':>6}")
    print(f"  {'':>5} {'':>5} {'':>6} {'':>6} {'':>6} {'':>6}  {'':>5} {'':>6}  {'':>5} {'/hs':>6} {'/req':>6} "
          f"{'/hs':>6} {'/sess':>7} {'drops':>6}")
    for key, label, kind, max_handshakes, rcvbuf in SWEEPS:
        if kind == "tinydtls" and not _have_tinydtls_server():
            print(f"  {label}: DTLSSocket not installed")
            continue
        print(f"  {label}")
        out[key] = await sweep(kind, counts, timeout, max_handshakes, rcvbuf)
    print(f"  (aiocoap 0.4.17's tinydtls_server declares max_sockets = {TINYDTLS_PEER_CAP}, but never calls the "
          "method that would enforce it)")
    return out


# -- main --------------------------------------------------------------------------------------------------------
def _print_rates(out: dict[str, float]) -> None:
    print(f"CoAP CON POST, 64-byte CBOR payload, echoed with 2.04, one process and event loop on {HOST} "
          "(median of block rates; ratio: median of per-round ratios)")
    print(f"  {'':16}" + "".join(f"{label:>24}" for _m, label, _c, _w in MODES) + f"{'us/request (seq)':>18}")
    for name in ("coaps iotdtls", "coap udp6", "coap simple6"):
        cells = "".join(f"{out[f'{name} {m} req_per_s']:22.0f}/s" for m, _l, _c, _w in MODES)
        print(f"  {name:16}{cells}{1e6 / out[f'{name} seq req_per_s']:18.0f}")
    for plain in ("coap udp6", "coap simple6"):
        ratios = [out[f"coaps vs {plain} {m} ratio"] for m, _l, _c, _w in MODES]
        cells = "".join(f"{r:16.2f}x ({(1 - r) * 100:+3.0f}%)" for r in ratios)
        print(f"  {'/ ' + plain:16}{cells}")
    print("  (ratio: coaps rate / plain rate; in brackets the cost of DTLS, 1 - ratio)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("rate", "clients", "all"), default="all")
    parser.add_argument("--profile", action="store_true", help="cProfile the request paths instead")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, N up to 256")
    parser.add_argument("--timeout", type=float, default=10.0, help="longest phase of the client sweep (s)")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--serve", choices=("iotdtls", "tinydtls"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-handshakes", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--rcvbuf", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve, args.port, args.clients, args.max_handshakes, args.rcvbuf))
        return {}
    if args.profile:
        return {"profile": asyncio.run(profile())}
    results: dict[str, Any] = {}
    if args.part in ("rate", "all"):
        t0 = time.perf_counter()
        rounds, per_block = (3, 120) if args.quick else (11, 120)
        results["rates"] = asyncio.run(rates(rounds=rounds, per_block=per_block))
        _print_rates(results["rates"])
        print(f"  ({time.perf_counter() - t0:.1f} s)\n")
    if args.part in ("clients", "all"):
        t0 = time.perf_counter()
        counts = CLIENT_COUNTS[:2] if args.quick else CLIENT_COUNTS
        results["clients"] = asyncio.run(client_sweeps(counts, args.timeout))
        print(f"  ({time.perf_counter() - t0:.1f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
