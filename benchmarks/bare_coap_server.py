"""The bare baseline of ``benchmarks/bench_gateway.py``: a plain aiocoap UDP server that answers ``POST /telemetry``
with 2.04 and keeps nothing (no DTLS, no spool, no MQTT): what a user would otherwise run.

    python -m benchmarks.bare_coap_server --port PORT [--host 127.0.0.1] [--transport udp6]

It prints ``ready <port>`` on stdout once it serves, and stops on SIGTERM. aiocoap's default server transport on
Linux is ``udp6`` (one IPv6 socket that also takes IPv4, with ``recvmsg`` and packet info); ``simple6`` is its
lighter asyncio-datagram transport, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import aiocoap
import aiocoap.resource as resource


class Telemetry(resource.Resource):  # type: ignore[misc]
    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CHANGED)


async def serve(host: str, port: int, transport: str) -> None:
    site = resource.Site()
    site.add_resource(["telemetry"], Telemetry())
    if transport == "simple6":
        ctx = await aiocoap.Context.create_server_context(site, bind=(host, port), transports=["simplesocketserver"])
    else:
        ctx = await aiocoap.Context.create_server_context(site, bind=(host, port), transports=[transport])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {port}", flush=True)
    await stop.wait()
    with contextlib.suppress(Exception):
        await ctx.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bare_coap_server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--transport", default="udp6", choices=["udp6", "simple6"])
    args = p.parse_args()
    try:
        asyncio.run(serve(args.host, args.port, args.transport))
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
