"""iotdtls-server: a DTLS PSK echo server."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from ..aio import ServerSession, serve
from ..aio.sockbuf import DEFAULT_RECEIVE_BUFFER
from ..config import DTLSConfiguration
from ..constants import CipherSuite
from ..errors import DecodeError, DTLSError
from ..resumption import TicketKeys
from .common import (
    ToolParser,
    UsageError,
    add_common,
    add_public_key,
    add_standard,
    apply_common,
    apply_public_key,
    bind_port,
    describe_error,
    is_quiet,
    load_psk_file,
    non_negative_float,
    non_negative_int,
    positive_int,
    register_secrets,
    run_tool,
    setup_logging,
    verbosity,
)

PROG = "iotdtls-server"
#: The port served without --port: 5684, IANA's "coaps" port (CoAP over DTLS, RFC 7252) - DTLS itself has none.
DEFAULT_PORT = 5684


def build_parser() -> argparse.ArgumentParser:
    p = ToolParser(prog=PROG, description="DTLS 1.2 echo server (PSK and/or raw public keys and certificates). "
                   f"Prints one line on stderr when ready: \"{PROG}: listening on udp HOST:PORT\".")
    p.add_argument("--port", type=bind_port, default=DEFAULT_PORT,
                   help=f"UDP port to serve, 0: one the kernel picks (default {DEFAULT_PORT}, the coaps port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
    p.add_argument("--psk-file", metavar="FILE", help="identity:hexkey per line")
    p.add_argument("--psk-hint", metavar="TEXT", help="PSK identity hint (sends ServerKeyExchange)")
    limits = p.add_argument_group("limits (docs/resources.md)")
    resume = p.add_argument_group("session resumption (docs/sleepy-devices.md)")
    resume.add_argument("--session-cache", type=non_negative_int, default=1000, metavar="N",
                        help="keep N sessions for resumption by session ID (default 1000; 0: none)")
    resume.add_argument("--ticket-key-file", metavar="FILE",
                        help="issue RFC 5077 session tickets, sealed with keys kept in FILE (created 0600 if "
                        "missing), so that clients resume across restarts")
    limits.add_argument("--max-sessions", type=positive_int, default=10000, metavar="N",
                        help="established sessions; beyond, the least recently active is closed (default 10000)")
    limits.add_argument("--max-handshakes", type=positive_int, default=100, metavar="N",
                        help="handshakes in progress (default 100)")
    limits.add_argument("--max-handshakes-per-ip", type=positive_int, metavar="N",
                        help="handshakes in progress per source IP or IPv6 /64 (default a quarter of the total)")
    limits.add_argument("--max-sessions-per-identity", type=non_negative_int, default=1, metavar="N",
                        help="sessions per PSK identity or client key; a new one closes the oldest (default 1, "
                        "0: no limit)")
    limits.add_argument("--max-anonymous-per-ip", type=non_negative_int, default=4, metavar="N",
                        help="sessions of clients without a key, per source IP (default 4, 0: no limit)")
    limits.add_argument("--idle-timeout", type=non_negative_float, metavar="S",
                        help="close sessions silent for S seconds (default 86400, 0: never)")
    limits.add_argument("--max-datagram", type=positive_int, metavar="BYTES",
                        help="drop longer datagrams before decrypting them (default: no limit)")
    limits.add_argument("--receive-buffer", type=non_negative_int, default=DEFAULT_RECEIVE_BUFFER, metavar="BYTES",
                        help=f"UDP receive buffer to ask for (default {DEFAULT_RECEIVE_BUFFER}, 0: system default)")
    add_common(p)
    add_public_key(p, server=True)
    add_standard(p)
    return p


def load_ticket_keys(args: argparse.Namespace, config: DTLSConfiguration) -> TicketKeys | None:
    if not args.ticket_key_file:
        return None
    config.session_tickets = True
    try:
        return TicketKeys.load_or_create(args.ticket_key_file, config.random, config.wall_time(),
                                         lifetime=max(config.session_lifetime, 1.0))
    except OSError as exc:
        raise UsageError(f"cannot use ticket key file {args.ticket_key_file}: {exc.strerror}") from None
    except (DecodeError, ValueError):
        raise UsageError(f"{args.ticket_key_file} is not a ticket key file") from None


def log(message: str) -> None:
    """A line about the server and its sessions on stderr (none with -q)."""
    if not is_quiet():
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace, config: DTLSConfiguration) -> None:
    async def echo(session: ServerSession) -> None:
        while True:
            try:
                data = await session.recv()
                await session.send(data)
            except (DTLSError, ValueError) as exc:
                if not isinstance(exc, DTLSError) or not session.closed:
                    log(f"{session.peer[0]}:{session.peer[1]}: {describe_error(exc, peer='client')}")
                if session.closed:
                    log(f"{session.peer[0]}:{session.peer[1]}: session closed")
                    return

    def on_handshake(peer: Any, identity: bytes | None, error: Exception | None) -> None:
        where = f"{peer[0]}:{peer[1]}"
        if error is None:
            conn = server.core.connections.get(peer)
            suite = CipherSuite(conn.cipher_suite).name if conn else "?"
            assert identity is not None
            extra = ""
            if conn is not None and conn.resumed:
                extra += ", resumed"
            if conn is not None and conn.connection_id is not None:
                extra += f", cid={conn.connection_id.hex() or '-'}/{(conn.peer_connection_id or b'').hex() or '-'}"
            log(f"{where}: handshake complete, identity={identity.decode(errors='replace')!r}, suite={suite}{extra}")
        else:
            text = describe_error(error, peer="client")
            text = text if text.startswith("handshake failed") else "handshake failed: " + text
            live = server.core.connections.get(peer)
            if live is not None and live.is_established:
                text = "new " + text + " (the session at this address goes on)"
            log(f"{where}: {text}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the socket is bound: whoever sees the port may signal at once
        loop.add_signal_handler(sig, stop.set)
    try:
        server = await serve(args.host, args.port, config, echo, max_sessions=args.max_sessions,
                             max_handshakes=args.max_handshakes, max_handshakes_per_ip=args.max_handshakes_per_ip,
                             max_sessions_per_identity=args.max_sessions_per_identity or None,
                             max_anonymous_per_ip=args.max_anonymous_per_ip or None,
                             max_datagram=args.max_datagram, receive_buffer=args.receive_buffer,
                             session_cache=args.session_cache, ticket_keys=load_ticket_keys(args, config))
    except OSError as exc:
        raise UsageError(f"cannot bind {args.host}:{args.port}: {exc.strerror}") from None
    server.on_handshake = on_handshake
    host, port = server.address
    log(f"listening on udp {f'[{host}]' if ':' in host else host}:{port}")
    await stop.wait()
    server.close()
    log("stopped")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # evictions, refusals and buffer warnings of the server front (rate limited there) go to stderr; -v/-vv: more
    setup_logging(PROG, verbosity(args))

    def body() -> None:
        if not args.psk_file and not args.key:
            raise UsageError("give --psk-file, --key, or both")
        psk_store = load_psk_file(args.psk_file) if args.psk_file else None
        register_secrets((psk_store or {}).values())
        config = DTLSConfiguration(is_client=False, psk_store=psk_store,
                                   psk_identity_hint=args.psk_hint.encode() if args.psk_hint else None,
                                   idle_timeout=args.idle_timeout)
        apply_public_key(config, args)
        apply_common(config, args)
        asyncio.run(run(args, config))

    run_tool(PROG, body)


if __name__ == "__main__":
    main()
