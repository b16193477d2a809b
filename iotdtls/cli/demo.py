"""iotdtls-demo: a client and server on loopback (PSK, or raw public keys with --rpk), the handshake shown flight by
flight."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from ..aio import ClientSession, ServerSession, connect, serve
from ..aio.relay import LossyRelay
from ..config import DTLSConfiguration
from ..constants import CipherSuite
from ..errors import DTLSError
from ..keys import fingerprint, generate_private_key, spki_der
from ..trace import describe_datagram
from ..trust import TrustStore
from .common import (
    ToolParser,
    add_standard,
    describe_error,
    int_range,
    mtu_type,
    probability,
    register_secrets,
    run_tool,
    seconds,
    setup_logging,
    verbosity,
    write_stdout,
)
from .runtime import StdoutClosed, float_range

PROG = "iotdtls-demo"

IDENTITY = b"sensor-42"
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def build_parser() -> argparse.ArgumentParser:
    p = ToolParser(prog=PROG, description=__doc__)
    p.add_argument("--loss", type=float_range(0.0, 0.99, what="a fraction from 0 to 0.99"), default=0.0,
                   help="drop this fraction of datagrams (0..0.99), each way")
    p.add_argument("--dup", type=probability, default=0.0, help="duplicate this fraction of datagrams (0..1), each way")
    p.add_argument("--reorder", type=probability, default=0.0,
                   help="hold back this fraction of datagrams (0..1) by a random delay, each way")
    p.add_argument("--max-delay", type=seconds, default=0.3, metavar="S",
                   help="longest hold-back of a reordered datagram (default 0.3)")
    p.add_argument("--seed", type=int, default=7, help="seed of the loss pattern")
    p.add_argument("--mtu", type=mtu_type(), default=512, help="datagram budget in bytes")
    p.add_argument("--retransmit-initial", type=seconds, default=0.5, metavar="S",
                   help="first retransmission timeout")
    p.add_argument("--messages", type=int_range(0, 10000), default=3, help="application messages to echo (0-10000)")
    p.add_argument("--rpk", action="store_true",
                   help="raw public keys (ECDHE-ECDSA, mutual authentication, pinned keys) instead of a PSK")
    add_standard(p)
    return p


async def wait_echo(session: ClientSession, message: bytes, timeout: float) -> bool:
    """True when ``message`` comes back within ``timeout`` s; late echoes of earlier messages are skipped."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (remaining := deadline - loop.time()) > 0:
        try:
            if await asyncio.wait_for(session.recv(), timeout=remaining) == message:
                return True
        except TimeoutError:
            return False
    return False


async def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    totals = {"c2s": [0, 0, 0], "s2c": [0, 0, 0]}  # datagrams, bytes, dropped
    work: asyncio.Future[int] | None = None  # the handshake and the echoes, cancelled when stdout closes
    stdout_closed = False

    def show(direction: str, data: bytes, delays: list[float]) -> None:
        t = time.monotonic() - start
        arrow = "client -> server" if direction == "c2s" else "server -> client"
        dropped = not delays
        fate = "  LOST" if dropped else ""
        if len(delays) > 1:
            fate += "  DUPLICATED"
        if any(delays):
            fate += "  DELAYED " + ", ".join(f"{d * 1000:.0f} ms" for d in delays)
        nonlocal stdout_closed
        if not stdout_closed:
            try:
                write_stdout(f"{t:7.3f}s  {arrow}  {len(data):4d} B  {' + '.join(describe_datagram(data))}{fate}")
            except StdoutClosed:  # called by the relay, outside of `work`: stop it from here
                stdout_closed = True
                if work is not None:
                    work.cancel()
        totals[direction][0] += 1
        totals[direction][1] += len(data)
        totals[direction][2] += dropped

    common = {"mtu": args.mtu, "retransmit_initial": args.retransmit_initial,
              "retransmit_max": max(8 * args.retransmit_initial, args.retransmit_initial)}
    if args.rpk:
        server_key, client_key = generate_private_key(), generate_private_key()
        server_cfg = DTLSConfiguration(is_client=False, private_key=server_key, require_client_auth=True,
                                       trust=TrustStore.of([fingerprint(spki_der(client_key))]), **common)
        client_cfg = DTLSConfiguration(private_key=client_key, trust=TrustStore.of([fingerprint(spki_der(server_key))]),
                                       **common)
    else:
        server_cfg = DTLSConfiguration(is_client=False, psk_store={IDENTITY: KEY}, **common)
        client_cfg = DTLSConfiguration(psk_identity=IDENTITY, psk=KEY, **common)
        register_secrets([KEY])

    async def echo(session: ServerSession) -> None:
        while True:
            try:
                await session.send(await session.recv())
            except DTLSError:
                return

    server = await serve("127.0.0.1", 0, server_cfg, echo)
    relay = LossyRelay(server.address, loss=args.loss, seed=args.seed, dup=args.dup, reorder=args.reorder,
                       max_delay=args.max_delay, tracer=show)
    host, port = await relay.start()
    extra = f", dup {args.dup:.0%}" if args.dup else ""
    extra += f", reorder {args.reorder:.0%} up to {args.max_delay * 1000:g} ms" if args.reorder else ""
    status = 0

    async def exchange() -> int:
        write_stdout(f"iotdtls demo: server {server.address[0]}:{server.address[1]}, relay {host}:{port}, "
                     f"loss {args.loss:.0%}{extra} each way, datagram budget {args.mtu} B, "
                     f"first retransmission after {args.retransmit_initial:g} s\n")
        async with connect(host, port, client_cfg) as session:
            conn = session.connection
            hs_time = time.monotonic() - start
            hs_bytes = totals["c2s"][1] + totals["s2c"][1]
            who = f"server key {conn.identity.decode()}" if args.rpk else f"identity {conn.identity.decode()}"
            write_stdout(f"\nhandshake complete in {hs_time:.3f} s: {who}, "
                         f"{CipherSuite(conn.cipher_suite).name}, extended master secret on; "
                         f"{totals['c2s'][0] + totals['s2c'][0]} datagrams, {hs_bytes} B on the wire; "
                         f"client retransmitted {conn.retransmissions} time(s)\n")
            for i in range(args.messages):
                message = f"reading {i}: 21.{i} C".encode()
                for _attempt in range(20):  # application data is unreliable: retry like CoAP would
                    await session.send(message)
                    if await wait_echo(session, message, args.retransmit_initial):
                        write_stdout(f"echo: {message.decode()}")
                        break
        return 0

    work = asyncio.ensure_future(exchange())
    try:
        status = await work
    except asyncio.CancelledError:
        if not stdout_closed:
            raise
    except (DTLSError, OSError) as exc:
        print(f"{PROG}: {describe_error(exc)}", file=sys.stderr)
        status = 1
    finally:
        work.cancel()
        await asyncio.sleep(0.05)
        relay.close()
        server.close()
    if stdout_closed:
        raise StdoutClosed
    c, s = totals["c2s"], totals["s2c"]
    write_stdout(f"\ntotal: client sent {c[0]} datagrams ({c[1]} B, {c[2]} lost), "
                 f"server sent {s[0]} ({s[1]} B, {s[2]} lost)")
    return status


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(PROG, verbosity(args))
    run_tool(PROG, lambda: asyncio.run(run(args)))


if __name__ == "__main__":
    main()
