"""iotdtls-coap-server: a demo CoAPs site over iotdtls (aiocoap): /.well-known/core, /time (GET, Observe),
/echo (POST/PUT: the payload back with its content format), /whoami (the caller's authenticated identity),
/telemetry (POST a CBOR map: 2.04, printed on stdout as one JSON line with the sender's identity)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

import aiocoap
import aiocoap.resource as resource
import cbor2
from aiocoap.credentials import CredentialsLoadError
from aiocoap.numbers import COAPS_PORT
from aiocoap.util import hostportjoin, hostportsplit

from ..aio.sockbuf import DEFAULT_RECEIVE_BUFFER
from ..coap import server_context, server_transport
from ..coap.credentials import load_credentials
from ..config import DTLSConfiguration
from .common import (
    ToolParser,
    UsageError,
    add_standard,
    cid_length,
    int_range,
    is_quiet,
    mtu_type,
    non_negative_float,
    non_negative_int,
    positive_int,
    run_tool,
    seconds,
    setup_logging,
    verbosity,
)
from .runtime import StdoutClosed, silence_stdout

PROG = "iotdtls-coap-server"


class TimeResource(resource.ObservableResource):  # type: ignore[misc]
    """The current UTC time as text; observers get a notification every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None

    def update_observation_count(self, count: int) -> None:
        if count and self._handle is None:
            self._schedule()
        elif not count and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self._interval, self._notify)

    def _notify(self) -> None:
        self.updated_state()
        self._schedule()

    async def render_get(self, request: Any) -> Any:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return aiocoap.Message(payload=now.encode(), content_format=0)


class EchoResource(resource.Resource):  # type: ignore[misc]
    async def render_post(self, request: Any) -> Any:
        return aiocoap.Message(code=aiocoap.CONTENT, payload=request.payload,
                               content_format=request.opt.content_format)

    render_put = render_post


class WhoAmIResource(resource.Resource):  # type: ignore[misc]
    async def render_get(self, request: Any) -> Any:
        remote = request.remote
        claims = list(remote.authenticated_claims)
        text = _identity_text(remote)
        if claims:
            text += " (" + ", ".join(str(c) for c in claims) + ")"
        return aiocoap.Message(payload=text.encode(), content_format=0)


def _identity_text(remote: Any) -> str:
    identity = getattr(remote, "identity", b"")
    return identity.decode(errors="replace") if identity else "anonymous"


class TelemetryResource(resource.Resource):  # type: ignore[misc]
    """POST a CBOR map (Content-Format 60): 2.04 Changed, and one JSON line on stdout; anything else 4.00/4.15.
    When stdout's reader has gone (``| head``), ``on_stdout_closed`` is called (the server then stops)."""

    def __init__(self, on_stdout_closed: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._on_stdout_closed = on_stdout_closed

    async def render_post(self, request: Any) -> Any:
        if request.opt.content_format != 60:
            return aiocoap.Message(code=aiocoap.UNSUPPORTED_CONTENT_FORMAT)
        try:
            reading = cbor2.loads(request.payload)
        except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError):
            return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=b"not CBOR")
        if not isinstance(reading, dict):
            return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=b"expected a CBOR map")
        line = {"from": _identity_text(request.remote), "reading": reading}
        try:
            print(json.dumps(line, default=repr, sort_keys=True), flush=True)
        except BrokenPipeError:
            silence_stdout()
            if self._on_stdout_closed is not None:
                self._on_stdout_closed()
            return aiocoap.Message(code=aiocoap.SERVICE_UNAVAILABLE)
        return aiocoap.Message(code=aiocoap.CHANGED)


def build_site(observe_interval: float = 1.0, on_stdout_closed: Callable[[], None] | None = None) -> Any:
    site = resource.Site()
    site.add_resource([".well-known", "core"], resource.WKCResource(site.get_resources_as_linkheader))
    site.add_resource(["time"], TimeResource(observe_interval))
    site.add_resource(["echo"], EchoResource())
    site.add_resource(["whoami"], WhoAmIResource())
    site.add_resource(["telemetry"], TelemetryResource(on_stdout_closed))
    return site


def build_parser() -> argparse.ArgumentParser:
    p = ToolParser(prog=PROG, description=__doc__)
    p.add_argument("--bind", default=f"[::]:{COAPS_PORT}", metavar="HOST:PORT",
                   help=f"address to serve coaps:// on; port 0: one the kernel picks (default [::]:{COAPS_PORT}); "
                   "ready, the server prints \"serving coaps://HOST:PORT\" on stderr")
    p.add_argument("--credentials", required=True, metavar="FILE",
                   help="aiocoap credentials JSON (dtls PSK entries and/or iotdtls-rpk entries)")
    p.add_argument("--mtu", type=mtu_type(), default=None, help="datagram budget in bytes (default 512)")
    p.add_argument("--cid", type=cid_length, metavar="N",
                   help="DTLS connection ID (RFC 9146): give each client that asks a CID of N bytes (0-20), so its "
                   "session survives a new address; default: no connection ID")
    p.add_argument("--idle-timeout", type=non_negative_float, default=None, metavar="S",
                   help="close idle sessions after S seconds (default 86400, 0: never)")
    p.add_argument("--require-client-auth", action="store_true",
                   help="refuse public-key clients without a trusted key")
    p.add_argument("--observe-interval", type=seconds, default=1.0, metavar="S", help="/time notification period")
    bounds = p.add_argument_group("bounds", "what one session can make the server hold (docs/coap.md#bounds)")
    bounds.add_argument("--max-datagram", type=int_range(1), default=None, metavar="BYTES",
                        help="drop longer DTLS datagrams before decrypting them (default 1500, or the mtu)")
    bounds.add_argument("--max-message-size", type=int_range(1), default=1152, metavar="BYTES",
                        help="answer longer CoAP requests 4.13 (default 1152)")
    bounds.add_argument("--max-options", type=int_range(1), default=64, metavar="N",
                        help="answer requests with more options 4.02 (default 64)")
    bounds.add_argument("--max-upload", type=int_range(1), default=64 * 1024, metavar="BYTES",
                        help="largest request body taken in Block1 blocks (default 65536)")
    bounds.add_argument("--max-observers", type=int_range(0), default=8, metavar="N",
                        help="observations per session; more are served without Observe (default 8)")
    fair = p.add_argument_group("DTLS limits", "who gets a handshake and a session (docs/resources.md)")
    fair.add_argument("--max-sessions", type=positive_int, default=10000, metavar="N",
                      help="established sessions; beyond, the least recently active is closed (default 10000)")
    fair.add_argument("--max-handshakes", type=positive_int, default=1000, metavar="N",
                      help="handshakes in progress (default 1000; a quarter of them per source IP)")
    fair.add_argument("--max-sessions-per-identity", type=non_negative_int, default=1, metavar="N",
                      help="sessions per PSK identity or client key; a new one closes the oldest (default 1, "
                      "0: no limit)")
    fair.add_argument("--receive-buffer", type=non_negative_int, default=DEFAULT_RECEIVE_BUFFER, metavar="BYTES",
                      help=f"UDP receive buffer to ask for (default {DEFAULT_RECEIVE_BUFFER}, 0: system default)")
    add_standard(p, verbose_help="-v also logs sessions")
    return p


async def run(args: argparse.Namespace) -> None:
    try:
        host, port = hostportsplit(args.bind)
    except ValueError:
        raise UsageError(f"--bind {args.bind}: expected HOST:PORT") from None
    if port is not None and not 0 <= port <= 65535:
        raise UsageError(f"--bind {args.bind}: the port must be from 0 to 65535 (0: any free port)")
    stop = asyncio.Event()
    stdout_closed = False

    def on_stdout_closed() -> None:
        nonlocal stdout_closed
        stdout_closed = True
        stop.set()
    try:
        credentials = load_credentials(args.credentials)
    except CredentialsLoadError as exc:
        raise UsageError(str(exc)) from None
    config = DTLSConfiguration(is_client=False, idle_timeout=args.idle_timeout,
                               require_client_auth=args.require_client_auth)
    if args.mtu is not None:
        config.mtu = args.mtu
    config.cid_length = args.cid
    try:
        ctx = await server_context(build_site(args.observe_interval, on_stdout_closed),
                                   (host, COAPS_PORT if port is None else port), credentials,
                                   config=config, max_datagram=args.max_datagram,
                                   max_message_size=args.max_message_size, max_options=args.max_options,
                                   max_upload_bytes=args.max_upload, max_observers_per_session=args.max_observers,
                                   max_sessions=args.max_sessions, max_handshakes=args.max_handshakes,
                                   max_sessions_per_identity=args.max_sessions_per_identity or None,
                                   receive_buffer=args.receive_buffer)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot bind {args.bind}: {exc.strerror}") from None
    bound_host, bound_port = server_transport(ctx).address[:2]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the ready line: whoever waits for it may signal at once
        loop.add_signal_handler(sig, stop.set)
    if not is_quiet():
        print(f"{PROG}: serving coaps://{hostportjoin(bound_host, bound_port)}", file=sys.stderr, flush=True)
    await stop.wait()
    await ctx.shutdown()
    if stdout_closed:
        raise StdoutClosed


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    level = verbosity(args)
    setup_logging(PROG, level)
    if level >= 1:
        import logging

        logging.getLogger("coap-server.iotdtls").setLevel(logging.INFO if level == 1 else logging.DEBUG)
    run_tool(PROG, lambda: asyncio.run(run(args)))


if __name__ == "__main__":
    main()
