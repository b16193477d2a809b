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
    ToolParser,
    UsageError,
    add_common,
    add_public_key,
    add_standard,
    apply_common,
    apply_public_key,
    describe_error,
    fail,
    non_negative_float,
    parse_hex,
    port,
    register_secrets,
    run_tool,
    setup_logging,
    verbosity,
)
from .progress import progress_printer
from .runtime import StdoutClosed, silence_stdout
from .session_file import load_session, report_session

PROG = "iotdtls-client"


def build_parser() -> argparse.ArgumentParser:
    p = ToolParser(prog=PROG, description="DTLS 1.2 client (PSK or raw public keys and certificates): stdin lines "
                   "out, received datagrams to stdout")
    p.add_argument("host")
    p.add_argument("port", type=port, help="the server's UDP port (iotdtls-server's default: 5684)")
    p.add_argument("--psk-identity", metavar="ID", help="PSK identity (with --psk)")
    p.add_argument("--psk", metavar="HEX", help="the pre-shared key in hex (never logged)")
    p.add_argument("--linger", type=non_negative_float, default=1.0, metavar="S",
                   help="keep receiving S seconds after stdin ends (default 1)")
    p.add_argument("--session", metavar="FILE",
                   help="session resumption: offer the session saved in FILE (if it exists), and save this one "
                   "there after the handshake (mode 0600: it holds the session's master secret)")
    add_common(p)
    add_public_key(p, server=False)
    add_standard(p)
    return p


async def printer(session: ClientSession) -> None:
    out = sys.stdout.buffer
    while True:
        data = await session.recv()
        try:
            out.write(data + b"\n")
            out.flush()
        except BrokenPipeError:  # | head: stop quietly
            silence_stdout()
            raise StdoutClosed from None


async def run(args: argparse.Namespace, config: DTLSConfiguration) -> int:
    offer = load_session(PROG, args.session) if args.session else None
    try:
        session = await connect(args.host, args.port, config, on_progress=progress_printer(PROG, args),
                                session=offer)
    except (DTLSError, OSError) as exc:
        fail(describe_error(exc), 1, "iotdtls-client")
    if args.session:
        report_session(PROG, args.session, session.resumed, session.session, offer)
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
            if isinstance(error, StdoutClosed):
                raise error
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
    setup_logging(PROG, verbosity(args))

    def body() -> int:
        if (args.psk is None) != (args.psk_identity is None):
            raise UsageError("--psk and --psk-identity go together")
        if args.psk is None and not (args.trust_key or args.ca):
            raise UsageError("give --psk-identity and --psk, or --trust-key/--ca to verify a public-key server")
        config = DTLSConfiguration(is_client=True,
                                   psk_identity=args.psk_identity.encode() if args.psk_identity else None,
                                   psk=parse_hex(args.psk, "--psk") if args.psk else None)
        register_secrets([config.psk] if config.psk else [])
        if args.session:
            config.session_tickets = True  # a ticket survives a server restart; a cached session ID does not
        apply_public_key(config, args)
        apply_common(config, args)
        return asyncio.run(run(args, config))

    run_tool(PROG, body)


if __name__ == "__main__":
    main()
