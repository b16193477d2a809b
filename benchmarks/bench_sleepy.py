"""Sleepy and moving devices: what a connection ID and session resumption cost and save, on the wire and in time.

Run with ``python -m benchmarks.bench_sleepy [--json FILE]``.

Every handshake runs in memory between an iotdtls client and an iotdtls server front (cookie exchange on, the
extended master secret, AES-128-CCM-8), and is counted in UDP payload bytes, datagrams and flights (a flight is
a run of datagrams in one direction). In the same run: a tinydtls PSK handshake (what a device otherwise does
after a NAT rebinding or a gateway restart: a full handshake), and the CPU time of a full and an abbreviated
handshake, PSK and raw public keys (the abbreviated one skips both P-256 operations on the device).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import baselines
from iotdtls import DTLSConfiguration, DTLSConnection, DTLSServer
from iotdtls.keys import derive_scalar_key, fingerprint, spki_der
from iotdtls.resumption import Session, TicketKeys
from iotdtls.trust import TrustStore

ADDR = ("192.0.2.1", 5000)
GOAL_ABBREVIATED = 250


def _rng(seed: int) -> Callable[[int], bytes]:
    import random
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def _key(label: str):  # type: ignore[no-untyped-def]
    import hashlib
    return derive_scalar_key(hashlib.sha512(label.encode()).digest()[:48])


def configs(kind: str, seed: int, **kw: object) -> tuple[DTLSConfiguration, DTLSConfiguration]:
    client_kw = {k[2:]: v for k, v in kw.items() if k.startswith("c_")}
    server_kw = {k[2:]: v for k, v in kw.items() if k.startswith("s_")}
    if kind == "psk":
        c = DTLSConfiguration(is_client=True, psk_identity=b"dev1", psk=bytes(16), random=_rng(seed), **client_kw)
        s = DTLSConfiguration(is_client=False, psk_store={b"dev1": bytes(16)}, random=_rng(seed + 1000),
                              **server_kw)
    else:
        ck, sk = _key("client"), _key("server")
        c = DTLSConfiguration(is_client=True, private_key=ck, trust=TrustStore.of([fingerprint(spki_der(sk))]),
                              random=_rng(seed), **client_kw)
        s = DTLSConfiguration(is_client=False, private_key=sk, trust=TrustStore.of([fingerprint(spki_der(ck))]),
                              require_client_auth=True, random=_rng(seed + 1000), **server_kw)
    return c, s  # type: ignore[arg-type]


@dataclass
class Wire:
    bytes: int
    datagrams: int
    flights: int
    up: int
    down: int


def run(client: DTLSConnection, server: DTLSServer, session: Session | None = None) -> Wire:
    log: list[tuple[bool, bytes]] = []
    client.connect(0.0, session=session)
    for _ in range(12):
        moved = False
        for d in client.datagrams_to_send(0.0):
            log.append((True, d))
            server.receive_datagram(d, ADDR, 0.0)
            moved = True
        for d, _ in server.datagrams_to_send(0.0):
            log.append((False, d))
            client.receive_datagram(d, 0.0)
            moved = True
        if not moved:
            break
    if not client.is_established:
        raise RuntimeError("handshake did not complete")
    flights = sum(1 for i, (up, _) in enumerate(log) if i == 0 or log[i - 1][0] != up)
    up = sum(len(d) for u, d in log if u)
    return Wire(up + sum(len(d) for u, d in log if not u), len(log), flights, up, sum(len(d) for u, d in log if not u))


def case(kind: str, resume: str | None = None, nocookie: bool = False,
         **kw: object) -> tuple[Wire, Wire | None, float, float | None]:
    """A full handshake and, with ``resume`` ("id" or "ticket"), an abbreviated one on the same server front;
    wire figures and seconds of CPU per handshake (both sides)."""
    tickets = resume == "ticket"
    c_cfg, s_cfg = configs(kind, 1, c_session_tickets=tickets, s_session_tickets=tickets, **kw)
    front = DTLSServer(s_cfg, ticket_keys=TicketKeys(_rng(5)) if tickets else None, max_sessions_per_identity=None)
    front.resume_without_cookie = nocookie
    t0 = time.perf_counter()
    client = DTLSConnection(c_cfg)
    full = run(client, front)
    full_time = time.perf_counter() - t0
    if resume is None:
        return full, None, full_time, None
    session = client.session
    assert session is not None
    times = []
    wire = None
    for i in range(5):
        c2, _ = configs(kind, 10 + i, c_session_tickets=tickets, **kw)
        t0 = time.perf_counter()
        conn = DTLSConnection(c2)
        wire = run(conn, front, session)
        times.append(time.perf_counter() - t0)
        if not conn.resumed:
            raise RuntimeError("not resumed")
    assert wire is not None
    return full, wire, full_time, statistics.median(times)


def full_times(kind: str, n: int = 5) -> float:
    out = []
    for i in range(n):
        c, s = configs(kind, 20 + i)
        front = DTLSServer(s)
        t0 = time.perf_counter()
        run(DTLSConnection(c), front)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def measure() -> dict[str, object]:
    rows: dict[str, dict[str, object]] = {}

    def add(name: str, w: Wire, note: str = "") -> None:
        rows[name] = {"bytes": w.bytes, "datagrams": w.datagrams, "flights": w.flights, "up": w.up,
                      "down": w.down, "note": note}

    psk_full, psk_abbr, _, _ = case("psk", "id")
    add("PSK full (session ID issued)", psk_full, "default server: an 8-byte session ID in the ServerHello")
    add("PSK abbreviated (session ID)", psk_abbr)
    # RFC 6347 lets a server skip the cookie exchange for a resumption (DTLSServer.resume_without_cookie)
    add("PSK abbreviated, no cookie exchange (resume_without_cookie)", case("psk", "id", nocookie=True)[1] or psk_full,
        "opt-in: see docs/sleepy-devices.md for the trade-off")
    t_full, t_abbr, _, _ = case("psk", "ticket")
    add("PSK full, ticket issued", t_full, "client asks for a ticket (4 B), NewSessionTicket in the last flight")
    add("PSK abbreviated (ticket)", t_abbr or t_full)
    add("PSK abbreviated (ticket), no cookie exchange", case("psk", "ticket", nocookie=True)[1] or t_full)
    cid_full, _, _, _ = case("psk", None, c_cid_length=0, s_cid_length=4)
    add("PSK full with CID (device 0 B, gateway 4 B)", cid_full)
    cid_abbr = case("psk", "id", c_cid_length=0, s_cid_length=4)[1]
    assert cid_abbr is not None
    add("PSK abbreviated with CID", cid_abbr)
    rpk_full, rpk_abbr, _, _ = case("rpk", "id")
    add("RPK full (mutual raw public keys)", rpk_full)
    add("RPK abbreviated (session ID)", rpk_abbr or rpk_full)
    tiny_bytes, tiny_datagrams = baselines.tinydtls_handshake_wire()
    rows["tinydtls PSK full (baseline)"] = {"bytes": tiny_bytes, "datagrams": tiny_datagrams, "flights": None,
                                           "up": None, "down": None, "note": "what a rebinding costs without CID"}
    # time: full vs abbreviated, both sides of the handshake in one process
    psk_t_full = full_times("psk")
    rpk_t_full = full_times("rpk")
    psk_t_abbr = case("psk", "id")[3]
    rpk_t_abbr = case("rpk", "id")[3]
    tiny_t = baselines.tinydtls_handshake()
    times = {"PSK full": psk_t_full, "PSK abbreviated": psk_t_abbr, "RPK full": rpk_t_full,
             "RPK abbreviated": rpk_t_abbr, "tinydtls PSK full (C)": tiny_t}
    # the per-record cost of a CID: bytes of one 10-byte application record, without and with a 4-byte CID
    record = {"without CID": 13 + 8 + 10 + 8, "with a 4-byte CID": 13 + 4 + 8 + 10 + 1 + 8}
    return {"wire": rows, "seconds": times, "record_10B": record, "goal_abbreviated_bytes": GOAL_ABBREVIATED}


def report(result: dict[str, object]) -> str:
    wire = result["wire"]
    assert isinstance(wire, dict)
    lines = ["| Handshake | UDP bytes | datagrams | flights | device sends | device receives |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in wire.items():
        lines.append(f"| {name} | {r['bytes']} | {r['datagrams']} | {r['flights'] or '-'} | {r['up'] or '-'} | "
                     f"{r['down'] or '-'} |")
    full = wire["PSK full (session ID issued)"]["bytes"]
    abbr = wire["PSK abbreviated (session ID)"]["bytes"]
    proper = wire["PSK abbreviated, no cookie exchange (resume_without_cookie)"]["bytes"]
    tiny = wire["tinydtls PSK full (baseline)"]["bytes"]
    lines.append("")
    verdict = "met" if proper <= GOAL_ABBREVIATED else "NOT met"
    lines.append(f"Abbreviated / full: {abbr / full:.2f}x ({abbr} vs {full} B); vs tinydtls' full handshake "
                 f"{abbr / tiny:.2f}x. Goal <= {GOAL_ABBREVIATED} B: {verdict} ({abbr} B with the cookie exchange, "
                 f"{proper} B without it; the floor of DTLS 1.2 with CCM_8 is about 209 B: 5 record headers, two "
                 "randoms, two protected Finished).")
    times = result["seconds"]
    assert isinstance(times, dict)
    lines.append("")
    lines.append("| CPU per handshake (both sides, one process) | ms |")
    lines.append("|---|---:|")
    for name, t in times.items():
        lines.append(f"| {name} | {t * 1000:.2f} |")
    lines.append(f"\nRPK abbreviated / full: {times['RPK abbreviated'] / times['RPK full']:.2f}x; "
                 f"PSK abbreviated / full: {times['PSK abbreviated'] / times['PSK full']:.2f}x")
    rec = result["record_10B"]
    assert isinstance(rec, dict)
    lines.append(f"\nOne 10-byte application record: {rec['without CID']} B without a CID, "
                 f"{rec['with a 4-byte CID']} B with a 4-byte CID (+{rec['with a 4-byte CID'] - rec['without CID']} B:"
                 " the CID and the inner content type).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    result = measure()
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
