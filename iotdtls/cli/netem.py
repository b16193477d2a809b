"""iotdtls-netem: a UDP proxy that loses, duplicates, reorders, delays and MTU-limits datagrams."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from typing import Any

from ..netem import (
    DEFAULT_MAX_DELAY,
    DIRECTIONS,
    Address,
    Direction,
    Impairment,
    LinkProfile,
    NetemProxy,
    parse_hostport,
)
from .common import (
    ToolParser,
    UsageError,
    add_standard,
    int_range,
    is_quiet,
    run_tool,
    seconds,
    setup_logging,
    verbosity,
)

PROG = "iotdtls-netem"
#: (knob, type, metavar, help) of every impairment knob; each also gets --KNOB-c2s and --KNOB-s2c overrides.
KNOBS: list[tuple[str, type, str, str]] = [
    ("loss", float, "P", "drop each datagram with probability P (0..1, default 0)"),
    ("dup", float, "P", "send a surviving datagram twice with probability P (default 0)"),
    ("reorder", float, "P", "hold a datagram back by a random extra delay with probability P (default 0)"),
    ("max-delay", float, "S", f"the extra delay of a held-back datagram is uniform in (0, S] "
                              f"(default {DEFAULT_MAX_DELAY:g})"),
    ("delay", float, "S", "delay every datagram by S seconds (default 0)"),
    ("mtu", int, "N", "drop datagrams larger than N bytes of UDP payload (default: no limit)"),
]
NAMES: dict[Direction, str] = {"c2s": "client -> target", "s2c": "target -> client"}


def build_parser() -> argparse.ArgumentParser:
    p = ToolParser(
        prog=PROG, description="UDP impairment proxy: clients send to --listen, each is relayed through its own "
        "socket to --target, with loss, duplication, reordering, delay and an MTU limit in each direction.",
        epilog="Each knob applies both ways; --KNOB-c2s and --KNOB-s2c (e.g. --loss-s2c 0.5) override one "
        "direction. Runs until SIGINT or SIGTERM, then prints its counters on stderr and exits 0.")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="address the clients send to")
    p.add_argument("--target", required=True, metavar="HOST:PORT", help="the server")
    for knob, kind, metavar, text in KNOBS:
        p.add_argument(f"--{knob}", type=kind, metavar=metavar, help=text)
    group = p.add_argument_group("per-direction overrides (c2s: client to target, s2c: target to client)")
    for knob, kind, metavar, _ in KNOBS:
        for direction in DIRECTIONS:
            group.add_argument(f"--{knob}-{direction}", type=kind, metavar=metavar, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the random decisions (default 0)")
    p.add_argument("--max-clients", type=int_range(1, 1_000_000), default=1024, metavar="N",
                   help="clients tracked at once; the least recently active is evicted (default 1024)")
    p.add_argument("--idle-timeout", type=seconds, default=60.0, metavar="S",
                   help="forget a client after S seconds without traffic (default 60)")
    add_standard(p, verbose_help="-v also logs every datagram and its fate on stderr")
    return p


def profile_for(args: argparse.Namespace, direction: Direction) -> LinkProfile:
    values: dict[str, Any] = {}
    for knob, _, _, _ in KNOBS:
        attr = knob.replace("-", "_")
        value = getattr(args, f"{attr}_{direction}")
        if value is None:
            value = getattr(args, attr)
        if value is not None:
            values[attr] = value
    try:
        profile = LinkProfile(**values)
        profile.validate()
    except ValueError as exc:
        raise UsageError(f"{direction}: {exc}") from None
    return profile


def build_impairment(args: argparse.Namespace) -> Impairment:
    return Impairment(profile_for(args, "c2s"), profile_for(args, "s2c"), seed=args.seed)


def log(message: str) -> None:
    """A line about the proxy on stderr (none with -q)."""
    if not is_quiet():
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def format_addr(addr: Address) -> str:
    host = str(addr[0])
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


async def resolve(host: str, port: int) -> tuple[str, int]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise UsageError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    addr = infos[0][4]
    return str(addr[0]), int(addr[1])


async def run(args: argparse.Namespace, impairment: Impairment) -> None:
    listen_host, listen_port = parse_hostport(args.listen)
    target = await resolve(*parse_hostport(args.target))
    loop = asyncio.get_running_loop()
    start = loop.time()

    def trace(direction: Direction, client: Address, data: bytes, delays: list[float]) -> None:
        mtu = impairment.profiles[direction].mtu
        if delays:
            fate = "delivered " + ", ".join(f"+{d * 1000:.0f} ms" for d in delays)
            fate += " (duplicated)" if len(delays) > 1 else ""
        else:
            fate = "TOO BIG" if mtu is not None and len(data) > mtu else "LOST"
        print(f"{loop.time() - start:9.3f}s {direction} {format_addr(client)} {len(data):5d} B  {fate}",
              file=sys.stderr, flush=True)

    proxy = NetemProxy(target, impairment, max_clients=args.max_clients, idle_timeout=args.idle_timeout,
                       observer=trace if args.verbose else None)
    try:
        address = await proxy.start(listen_host, listen_port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from None
    log(f"{format_addr(address)} -> {format_addr(target)}, seed {args.seed}")
    for direction in DIRECTIONS:
        log(f"{direction} ({NAMES[direction]}): {impairment.profiles[direction].describe()}")
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        proxy.close()
    for direction in DIRECTIONS:
        log(f"{direction}: {impairment.stats[direction].describe()}")
    log(proxy.stats.describe())


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(PROG, verbosity(args))

    def body() -> None:
        try:
            parse_hostport(args.listen)
            parse_hostport(args.target)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        asyncio.run(run(args, build_impairment(args)))

    run_tool(PROG, body)


if __name__ == "__main__":
    main()
