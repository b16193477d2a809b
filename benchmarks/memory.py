"""Memory and resource bounds of the server front, sans-IO, in one process (issue 3, "Floods and resource bounds").

Run with ``python -m benchmarks.memory`` (about a minute; ``--quick`` runs a tenth of everything, ``--json FILE``
also writes the figures).  Printed, in order:

1. **Spoofed ClientHellos**: 100,000 ClientHellos (fresh random, random record sequence number, no cookie) from
   random source addresses into one :class:`~iotdtls.DTLSServer`; tracemalloc before and after (after a 1,000
   hello warm-up), the peak, RSS before and after (separate run without tracemalloc), hellos per second.
2. **Fragmented ClientHellos**: 100,000 first fragments claiming the largest allowed length, each from its own
   address: the shared partial-hello table and its memory; and the cost of one datagram of 1-byte fragments.
3. **Handshakes in progress**: traced memory per connection waiting for the ClientKeyExchange, and what one peer
   can make such a connection hold (reassembly, early epoch-1 records); a 16 MB length claim.
4. **Established sessions**: 10,000 handshakes against one server, the clients discarded; traced bytes and RSS per
   session, tracemalloc statistics by line, an attribute breakdown of one connection, the same with
   ``idle_timeout`` (armed timers), and what each reduction listed in ``docs/resources.md`` would save, measured by
   applying it to the live objects (a what-if on the measured server, not a code change).

tracemalloc sees Python allocations only; OpenSSL and Rust (``cryptography``) allocate natively, which RSS shows.
RSS also keeps the allocator's free lists and fragmentation (clients and temporaries freed during the run), so it is
an upper bound.  Randomness is seeded and the clock is virtual, so runs are repeatable up to allocator noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import linecache
import os
import random
import subprocess
import sys
import time
import tracemalloc
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from iotdtls import DTLSConfiguration, DTLSConnection, DTLSServer
from iotdtls.constants import ContentType, HandshakeType
from iotdtls.reassembly import message_header
from iotdtls.record import encode_plain
from iotdtls.server import MAX_PARTIAL_HELLOS

__all__ = ["main"]

IDENTITY = b"dev1"
KEY = bytes(range(16))
MB16 = (1 << 24) - 1
Addr = tuple[str, int]


# -- plumbing ------------------------------------------------------------------------------------------------
def seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def client_config(seed: int = 1, **kw: Any) -> DTLSConfiguration:
    return DTLSConfiguration(is_client=True, psk_identity=IDENTITY, psk=KEY, random=seeded(seed), **kw)


def fleet_key(identity: bytes) -> bytes | None:
    """Every device of the fleet (``dev...``) has the same test key; each session has its own identity, since
    the server keeps one session per identity."""
    return KEY if identity.startswith(IDENTITY) else None


def server_config(seed: int = 2, **kw: Any) -> DTLSConfiguration:
    return DTLSConfiguration(is_client=False, psk_store=fleet_key, random=seeded(seed), **kw)


def rss() -> int | None:
    """Resident set size in bytes (Linux), or ``None``."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


class Traced:
    """tracemalloc around a block: ``grown()`` = traced bytes added since entry / ``reset()``; ``peak()``."""

    def __enter__(self) -> Traced:
        gc.collect()
        tracemalloc.start()
        self.base = tracemalloc.get_traced_memory()[0]
        return self

    def reset(self) -> None:
        gc.collect()
        tracemalloc.reset_peak()
        self.base = tracemalloc.get_traced_memory()[0]

    def grown(self) -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - self.base

    def peak(self) -> int:
        return tracemalloc.get_traced_memory()[1] - self.base

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        tracemalloc.stop()


def random_addresses(n: int, seed: int) -> list[Addr]:
    rand = seeded(seed)
    return [(".".join(str(b) for b in rand(4)), int.from_bytes(rand(2), "big") | 1024) for _ in range(n)]


def hello_template() -> bytes:
    client = DTLSConnection(client_config(seed=5))
    client.connect(0.0)
    (dgram,) = client.datagrams_to_send(0.0)
    return dgram


def spoofed_hellos(n: int, seed: int) -> list[bytes]:
    """ClientHello datagrams with a fresh random and a random record sequence number each."""
    tmpl = hello_template()
    rand = seeded(seed)
    return [tmpl[:5] + bytes(4) + rand(2) + tmpl[11:27] + rand(32) + tmpl[59:] for _ in range(n)]


def kb(n: float) -> str:
    return f"{n / 1024:,.1f} KB" if abs(n) >= 1024 else f"{n:,.0f} B"


def mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:,.1f} MB"


def section(title: str) -> None:
    print(f"\n## {title}\n")


# -- 1. spoofed ClientHellos ---------------------------------------------------------------------------------
def _feed(server: DTLSServer, addrs: list[Addr], hellos: list[bytes], start: int, end: int) -> int:
    replies = 0
    for i in range(start, end, 1000):
        now = i * 0.01
        for j in range(i, min(i + 1000, end)):
            server.receive_datagram(hellos[j], addrs[j], now)
        replies += len(server.datagrams_to_send(now))
    return replies


def _peer_state(server: DTLSServer) -> dict[str, int]:
    return {"connections": len(server.connections), "_partial_hellos": len(server._partial_hellos),
            "_armed": len(server._armed), "_heap": len(server._heap), "_slots": len(server._slots),
            "_successors": len(server._successors),
            "_events": len(server._events), "_out": len(server._out), "cookie secrets": len(server._cookies._cache)}


def spoofed_flood(n: int) -> dict[str, Any]:
    warmup = 1000
    addrs = random_addresses(n + warmup, seed=11)
    hellos = spoofed_hellos(n + warmup, seed=12)
    fresh = _fresh_process("flood", n)
    rss0, rss1, elapsed = fresh["rss_before"], fresh["rss_after"], fresh["seconds"]
    # With tracemalloc: traced memory before and after.
    server = DTLSServer(server_config())
    with Traced() as mem:
        _feed(server, addrs, hellos, 0, warmup)
        mem.reset()
        replies = _feed(server, addrs, hellos, warmup, n + warmup)
        grown, peak = mem.grown(), mem.peak()
    state = _peer_state(server)
    assert replies == n
    out = {"hellos": n, "hello_verify_sent": server.stats["hello_verify_sent"] - warmup,
           "traced_delta_bytes": grown, "traced_peak_bytes": peak,
           "rss_before_bytes": rss0, "rss_after_bytes": rss1,
           "rss_delta_bytes": None if rss0 is None or rss1 is None else rss1 - rss0,
           "hellos_per_s": n / elapsed, "containers_after": state}
    section(f"1. {n:,} spoofed ClientHellos (no cookie, random source addresses)")
    print(f"HelloVerifyRequests sent      {out['hello_verify_sent']:,} (one per ClientHello)")
    print(f"traced memory, after - before {grown:+,} B   ({grown / n:+.3f} B per hello; peak +{kb(peak)})")
    print(f"RSS before / after            {mb(rss0)} / {mb(rss1)}   (delta {out['rss_delta_bytes']:+,} B; "
          "fresh interpreter, no tracemalloc)" if rss0 is not None and rss1 is not None else "RSS  n/a")
    print(f"rate (no tracemalloc)         {out['hellos_per_s']:,.0f} hellos/s")
    print("server containers after       " + ", ".join(f"{k} {v}" for k, v in state.items()))
    return out


# -- 2. fragmented ClientHellos ------------------------------------------------------------------------------
def _hello_fragment(length: int, offset: int, body: bytes, message_seq: int = 0) -> bytes:
    header = message_header(HandshakeType.CLIENT_HELLO, length, message_seq, offset, len(body))
    return encode_plain(ContentType.HANDSHAKE, 0, header + body)


def fragment_flood(n: int) -> dict[str, Any]:
    server = DTLSServer(server_config())
    limit = server._config.max_handshake_message
    addrs = random_addresses(n, seed=21)
    first = _hello_fragment(limit, 0, hello_template()[25:])
    with Traced() as mem:
        t0 = time.perf_counter()
        for i, addr in enumerate(addrs):
            server.receive_datagram(first, addr, i * 0.001)
        elapsed = time.perf_counter() - t0
        grown, peak = mem.grown(), mem.peak()
    entries = len(server._partial_hellos)
    # The worst case of today's range bookkeeping: one datagram of 1-byte fragments at every other offset.
    frags = limit // 2
    payload = b"".join(message_header(HandshakeType.CLIENT_HELLO, limit, 0, off, 1) + b"x"
                       for off in range(0, limit, 2))
    dgram = encode_plain(ContentType.HANDSHAKE, 0, payload)
    server2 = DTLSServer(server_config())
    t0 = time.perf_counter()
    server2.receive_datagram(dgram, ("198.51.100.1", 1), 0.0)
    cpu = time.perf_counter() - t0
    server2 = DTLSServer(server_config())
    with Traced() as mem:
        server2.receive_datagram(dgram, ("198.51.100.1", 1), 0.0)
        worst_entry = mem.grown()
    out = {"fragments": n, "table_entries": entries, "table_limit": MAX_PARTIAL_HELLOS,
           "traced_bytes": grown, "traced_peak_bytes": peak, "bound_bytes": MAX_PARTIAL_HELLOS * limit,
           "fragments_per_s (traced)": n / elapsed,
           "tiny_fragments_datagram_bytes": len(dgram), "tiny_fragments_per_datagram": frags,
           "tiny_fragments_cpu_s": cpu, "tiny_fragments_entry_bytes": worst_entry,
           "tiny_fragments_table_bytes_estimate": worst_entry * MAX_PARTIAL_HELLOS}
    section(f"2. {n:,} fragmented ClientHellos (first fragment, claiming {limit} B), one per address")
    print(f"partial-hello table           {entries} entries (limit {MAX_PARTIAL_HELLOS}), no connection, no reply")
    print(f"traced memory                 {kb(grown)} (64 x {limit} B = {kb(MAX_PARTIAL_HELLOS * limit)} of buffers)")
    print(f"1-byte fragments, 1 datagram  {len(dgram):,} B, {frags} fragments: {cpu * 1e3:,.0f} ms CPU, "
          f"{kb(worst_entry)} held")
    print(f"  x {MAX_PARTIAL_HELLOS} entries                  ~{mb(worst_entry * MAX_PARTIAL_HELLOS)} held "
          f"(bitmap bookkeeping would hold ~{kb(MAX_PARTIAL_HELLOS * (limit + limit // 8 + 200))})")
    return out


# -- 3. handshakes in progress -------------------------------------------------------------------------------
def _stall(server: DTLSServer, addr: Addr, seed: int, cfg: DTLSConfiguration | None = None) -> None:
    """Drive a client to the point where the server waits for its ClientKeyExchange; the client then stops."""
    client = DTLSConnection(cfg or client_config(seed=seed), validate=False)
    client.connect(0.0)
    for _ in range(2):
        for d in client.datagrams_to_send(0.0):
            server.receive_datagram(d, addr, 0.0)
        for d, _ in server.datagrams_to_send(0.0):
            client.receive_datagram(d, 0.0)


def handshakes_in_progress(n: int) -> dict[str, Any]:
    server = DTLSServer(server_config(), max_handshakes=n)
    addrs = [(f"10.1.{i >> 8 & 255}.{i & 255}", 5684) for i in range(n)]
    cfg = client_config(seed=31)
    with Traced() as mem:
        for addr in addrs:
            _stall(server, addr, 0, cfg)
        per = mem.grown() / n
    assert server.handshakes_in_progress == n

    limit = server._config.max_handshake_message
    # What one peer can make one handshaking connection hold.
    def one() -> tuple[DTLSServer, Addr]:
        s = DTLSServer(server_config())
        a = ("198.51.100.50", 6000)
        _stall(s, a, 61)
        return s, a

    s, a = one()
    conn = s.connections[a]
    ahead = conn._reasm._max_ahead
    with Traced() as mem:
        seq = 100
        for msg in range(conn._reasm.next_seq, conn._reasm.next_seq + ahead):
            for off in range(0, limit - 1, 1000):  # everything but the last byte of maximal messages
                body = bytes(min(1000, limit - 1 - off))
                hdr = message_header(HandshakeType.CLIENT_KEY_EXCHANGE, limit, msg, off, len(body))
                s.receive_datagram(encode_plain(ContentType.HANDSHAKE, seq, hdr + body), a, 0.0)
                seq += 1
        reasm_contiguous = mem.grown()
    s, a = one()
    conn = s.connections[a]
    payload = b"".join(message_header(HandshakeType.CLIENT_KEY_EXCHANGE, limit, conn._reasm.next_seq, off, 1) + b"x"
                       for off in range(0, limit, 2))
    with Traced() as mem:
        s.receive_datagram(encode_plain(ContentType.HANDSHAKE, 100, payload), a, 0.0)
        reasm_tiny_one = mem.grown()
    s, a = one()
    conn = s.connections[a]
    nrec = conn._config.max_buffered_records
    with Traced() as mem:
        for i in range(nrec):
            s.receive_datagram(encode_plain(ContentType.APPLICATION_DATA, (1 << 48) | i, bytes(65_000)), a, 0.0)
        future = mem.grown()
    s, a = one()
    hdr = message_header(HandshakeType.CLIENT_KEY_EXCHANGE, MB16, s.connections[a]._reasm.next_seq, 0, 200)
    with Traced() as mem:
        s.receive_datagram(encode_plain(ContentType.HANDSHAKE, 100, hdr + bytes(200)), a, 0.0)
        refuse_peak = mem.peak()
    refused = a not in s.connections
    out = {"handshakes": n, "traced_per_handshake_bytes": per,
           "reassembly_contiguous_bytes": reasm_contiguous, "reassembly_bound_bytes": ahead * limit,
           "reassembly_tiny_fragments_one_message_bytes": reasm_tiny_one,
           "reassembly_tiny_fragments_estimate_bytes": reasm_tiny_one * ahead,
           "early_epoch_records_bytes": future, "early_epoch_records": nrec,
           "claim_16mb_refused": refused, "claim_16mb_traced_peak_bytes": refuse_peak}
    section(f"3. {n:,} handshakes in progress (server waiting for the ClientKeyExchange)")
    print(f"traced per handshake          {kb(per)}")
    print(f"one peer can pin, per slot:   reassembly {kb(reasm_contiguous)} (bound {ahead} x {limit} B); "
          f"with 1-byte fragments ~{kb(reasm_tiny_one * ahead)}")
    print(f"                              early epoch-1 records {kb(future)} "
          f"({nrec} x 65,000 B offered: too long, discarded)")
    print(f"16 MB length claim            refused with an alert: {refused}; traced peak {kb(refuse_peak)}")
    return out


# -- 4. established sessions ---------------------------------------------------------------------------------
def _establish(server: DTLSServer, addrs: list[Addr], cfg: DTLSConfiguration) -> None:
    """One session per address, each of its own identity (``dev1-<n>``)."""
    for n, addr in enumerate(addrs):
        client = DTLSConnection(dataclasses.replace(cfg, psk_identity=b"%s-%d" % (IDENTITY, n)), peer="server",
                                validate=False)
        client.connect(1.0)
        for _ in range(3):
            for d in client.datagrams_to_send(1.0):
                server.receive_datagram(d, addr, 1.0)
            for d, _ in server.datagrams_to_send(1.0):
                client.receive_datagram(d, 1.0)
        assert client.is_established
        while server.next_event() is not None:
            pass


def _addresses(n: int) -> list[Addr]:
    return [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 5684) for i in range(n)]


_SKIP = (type, types.ModuleType, types.FunctionType)


def _reachable(root: object) -> dict[int, object]:
    seen: dict[int, object] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SKIP) or (isinstance(obj, dict) and "__builtins__" in obj):
            continue
        seen[id(obj)] = obj
        stack.extend(gc.get_referents(obj))
    return seen


def _slots(obj: object) -> Iterator[tuple[str, object]]:
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name):
                yield name, getattr(obj, name)
    if hasattr(obj, "__dict__"):
        yield from vars(obj).items()


def attribute_breakdown(conn: DTLSConnection, other: DTLSConnection) -> list[tuple[str, str, int]]:
    """``(attribute, type, bytes)``: sys.getsizeof of everything reachable from each attribute of ``conn`` and not
    from ``other`` (a connection of the same server), i.e. what this session owns alone."""
    shared = _reachable(other)
    rows = [("(the object itself)", type(conn).__name__, sys.getsizeof(conn))]
    for name, value in _slots(conn):
        own = [o for i, o in _reachable(value).items() if i not in shared]
        rows.append((name, type(value).__name__, sum(sys.getsizeof(o) for o in own)))
    return sorted(rows, key=lambda r: -r[2])


_SHARED_LIST: list[Any] = []
_SHARED_FLOAT = 0.5
_SHARED_INT = 483


def _what_if_steps() -> list[tuple[str, Callable[[DTLSConnection], None]]]:
    """Reductions applied to the live objects to measure what they would save (docs/resources.md)."""
    spare_reasm = DTLSConnection(server_config(), validate=False)._reasm

    def ciphers(c: DTLSConnection) -> None:
        for state in (c._write_cipher, c._read_cipher):
            cs: Any = state
            if hasattr(cs, "_encrypt"):  # done in the core since: it keeps the AESCCM object
                cs._encrypt = cs._encrypt.__self__
                cs._decrypt = None

    def iv_once(c: DTLSConnection) -> None:
        for cs in (c._write_cipher, c._read_cipher):
            assert cs is not None
            cs._iv_int = 0

    def empty_lists(c: DTLSConnection) -> None:
        c._out = c._events = c._future = c._early_data = _SHARED_LIST

    def numbers(c: DTLSConnection) -> None:
        c._min_trigger_interval = _SHARED_FLOAT
        c._max_payload = _SHARED_INT

    def window0(c: DTLSConnection) -> None:
        c._windows[0] = None  # type: ignore[call-overload]

    return [
        ("server final flight dropped (handshake_timeout after completion)",
         lambda c: setattr(c, "_flight", _SHARED_LIST)),
        ("CipherState keeps the AESCCM object, not two bound methods", ciphers),
        ("CipherState keeps the IV once (bytes; int derived per record)", iv_once),
        ("epoch-0 replay window dropped some time after the switch", window0),
        ("Reassembler (+ its dict) replaced by a next_seq int", lambda c: setattr(c, "_reasm", spare_reasm)),
        ("empty _out/_events/_future/_early_data lists shared (None/() until used)", empty_lists),
        ("_server_random dropped after the handshake", lambda c: setattr(c, "_server_random", b"")),
        ("_min_trigger_interval/_max_payload taken from the configuration", numbers),
    ]


def established_sessions(n: int, idle_n: int, top: int = 15) -> dict[str, Any]:
    addrs = _addresses(n)
    fresh = _fresh_process("sessions", n)
    rss0, rss1, elapsed = fresh["rss_before"], fresh["rss_after"], fresh["seconds"]
    rss_per = None if rss0 is None or rss1 is None else (rss1 - rss0) / n
    # With tracemalloc: per session, by line, and the what-if reductions.
    server = DTLSServer(server_config(), max_sessions=n)
    cfg = client_config(seed=3)
    with Traced() as mem:
        before = tracemalloc.take_snapshot()
        _establish(server, addrs, cfg)
        per = mem.grown() / n
        after = tracemalloc.take_snapshot()
        lines = []
        for stat in after.compare_to(before, "lineno")[:top]:
            frame = stat.traceback[0]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            lines.append((where, linecache.getline(frame.filename, frame.lineno).strip(), stat.size_diff / n,
                          stat.count_diff / n))
        del before, after
        conns = list(server.connections.values())
        breakdown = attribute_breakdown(conns[n // 2], conns[n // 2 + 1])
        savings = []
        for label, step in _what_if_steps():
            mem.reset()
            for c in conns:
                step(c)
            savings.append((label, -mem.grown() / n))
        reduced = per - sum(s for _, s in savings)
    del server, conns
    gc.collect()
    # With idle_timeout: every session has an armed timer (heap entry + _armed entry + deadline).
    server = DTLSServer(server_config(idle_timeout=300.0), max_sessions=idle_n)
    with Traced() as mem:
        _establish(server, addrs[:idle_n], client_config(seed=4))
        per_idle = mem.grown() / idle_n
    out = {"sessions": n, "traced_per_session_bytes": per, "rss_per_session_bytes": rss_per,
           "handshakes_per_s": n / elapsed, "idle_timeout_sessions": idle_n,
           "traced_per_session_with_idle_timeout_bytes": per_idle,
           "by_line": [{"where": w, "code": c, "bytes": b, "allocations": k} for w, c, b, k in lines],
           "attributes": [{"attribute": a, "type": t, "bytes": b} for a, t, b in breakdown],
           "what_if": [{"change": label, "saves_bytes": s} for label, s in savings],
           "traced_per_session_after_all_bytes": reduced}
    section(f"4. {n:,} established sessions on one server (clients discarded)")
    print(f"traced per session            {kb(per)}")
    print(f"RSS per session               {kb(rss_per) if rss_per is not None else 'n/a'} "
          "(fresh interpreter, no tracemalloc: adds native OpenSSL/Rust memory and allocator slack)")
    print(f"with idle_timeout (timers)    {kb(per_idle)} ({idle_n:,} sessions)")
    print(f"handshakes/s (no tracemalloc) {out['handshakes_per_s']:,.0f}")
    print(f"\ntracemalloc by line, per session (top {top}):\n")
    print("| where | bytes | allocs | code |\n|---|---:|---:|---|")
    for where, code, b, k in lines:
        print(f"| {where} | {b:,.0f} | {k:.2f} | `{code}` |")
    print("\nattributes of one connection (bytes it owns alone; sys.getsizeof, shared objects excluded; `peer` is "
          "the transport's address, not counted above):\n")
    print("| attribute | type | bytes |\n|---|---|---:|")
    for a, t, b in breakdown:
        if b:
            print(f"| {a} | {t} | {b:,} |")
    print(f"\nwhat each reduction would save (applied to the {n:,} live connections, tracemalloc):\n")
    print("| change | saves per session |\n|---|---:|")
    for label, s in savings:
        print(f"| {label} | {s:,.0f} B |")
    print(f"| **all of the above** | **{per - reduced:,.0f} B: {kb(per)} -> {kb(reduced)}** |")
    return out


def _untraced(what: str, n: int) -> dict[str, Any]:
    """Run in a fresh interpreter (``--untraced``): RSS before and after, and the time, without tracemalloc."""
    if what == "flood":
        warmup = 1000
        addrs = random_addresses(n + warmup, seed=11)
        hellos = spoofed_hellos(n + warmup, seed=12)
        server = DTLSServer(server_config())
        _feed(server, addrs, hellos, 0, warmup)
        gc.collect()
        rss0 = rss()
        t0 = time.perf_counter()
        assert _feed(server, addrs, hellos, warmup, n + warmup) == n
    else:
        sessions = _addresses(n)
        server = DTLSServer(server_config(), max_sessions=n)
        cfg = client_config(seed=3)
        gc.collect()
        rss0 = rss()
        t0 = time.perf_counter()
        _establish(server, sessions, cfg)
    elapsed = time.perf_counter() - t0
    gc.collect()
    return {"rss_before": rss0, "rss_after": rss(), "seconds": elapsed}


def _fresh_process(what: str, n: int) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--untraced", what, str(n)], cwd=root,
                          capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a tenth of every count")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--untraced", nargs=2, metavar=("WHAT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.untraced:
        print(json.dumps(_untraced(args.untraced[0], int(args.untraced[1]))))
        return {}
    scale = 10 if args.quick else 1
    print(f"# iotdtls memory and resource bounds (Python {sys.version.split()[0]}, {sys.platform})")
    figures = {
        "spoofed_client_hellos": spoofed_flood(100_000 // scale),
        "fragmented_client_hellos": fragment_flood(100_000 // scale),
        "handshakes_in_progress": handshakes_in_progress(1_000 // scale),
        "established_sessions": established_sessions(10_000 // scale, 2_000 // scale),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return figures


if __name__ == "__main__":
    main()
