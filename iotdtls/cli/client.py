"""iotdtls-client: send stdin lines as DTLS datagrams, print what comes back."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from ..aio import ClientSession, connect
from ..config import DTLSConfiguration
from ..errors import DTLSError
from .common import (
    UsageError,
    add_common,
    add_public_key,
    apply_common,
    apply_public_key,
    describe_error,
    fail,
    parse_hex,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iotdtls-client", description="DTLS 1.2 client (PSK or raw public keys and "
                                "certificates): stdin lines out, received datagrams to stdout")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--psk-identity", metavar="ID")
    p.add_argument("--psk", metavar="HEX")
    p.add_argument("--linger", type=float, default=1.0, metavar="S",
                   help="keep receiving S seconds after stdin ends (default 1)")
    add_common(p)
    add_public_key(p, server=False)
    return p


async def printer(session: ClientSession) -> None:
    out = sys.stdout.buffer
    while True:
        data = await session.recv()
        out.write(data + b"\n")
        out.flush()


async def run(args: argparse.Namespace, config: DTLSConfiguration) -> int:
    try:
        session = await connect(args.host, args.port, config)
    except (DTLSError, OSError) as exc:
        fail(describe_error(exc), 1, "iotdtls-client")
    loop = asyncio.get_running_loop()
    reader = asyncio.ensure_future(printer(session))
    status = 0
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.buffer.readline)
            if not line:
                break
            if reader.done():
                break
            await session.send(line.rstrip(b"\r\n"))
        if not reader.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), timeout=args.linger)
        if reader.done() and not reader.cancelled():
            error = reader.exception()
            if error is not None and not (isinstance(error, DTLSError) and session.connection.error is None):
                print(f"iotdtls-client: {describe_error(error)}", file=sys.stderr)
                status = 1
    except (DTLSError, ValueError) as exc:
        print(f"iotdtls-client: {describe_error(exc)}", file=sys.stderr)
        status = 1
    finally:
        reader.cancel()
        await session.close()
    return status


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if (args.psk is None) != (args.psk_identity is None):
            raise UsageError("--psk and --psk-identity go together")
        if args.psk is None and not (args.trust_key or args.ca):
            raise UsageError("give --psk-identity and --psk, or --trust-key/--ca to verify a public-key server")
        config = DTLSConfiguration(is_client=True,
                                   psk_identity=args.psk_identity.encode() if args.psk_identity else None,
                                   psk=parse_hex(args.psk, "--psk") if args.psk else None)
        apply_public_key(config, args)
        apply_common(config, args)
        status = asyncio.run(run(args, config))
    except UsageError as exc:
        fail(str(exc), 2, "iotdtls-client")
    except KeyboardInterrupt:
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    main()
