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
from typing import Any

import aiocoap
import aiocoap.resource as resource
import cbor2
from aiocoap.credentials import CredentialsLoadError
from aiocoap.numbers import COAPS_PORT
from aiocoap.util import hostportsplit

from ..aio.sockbuf import DEFAULT_RECEIVE_BUFFER
from ..coap import server_context
from ..coap.credentials import load_credentials
from ..config import DTLSConfiguration
from .common import UsageError, fail, non_negative_int, positive_int


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
    """POST a CBOR map (Content-Format 60): 2.04 Changed, and one JSON line on stdout; anything else 4.00/4.15."""

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
        print(json.dumps(line, default=repr, sort_keys=True), flush=True)
        return aiocoap.Message(code=aiocoap.CHANGED)


def build_site(observe_interval: float = 1.0) -> Any:
    site = resource.Site()
    site.add_resource([".well-known", "core"], resource.WKCResource(site.get_resources_as_linkheader))
    site.add_resource(["time"], TimeResource(observe_interval))
    site.add_resource(["echo"], EchoResource())
    site.add_resource(["whoami"], WhoAmIResource())
    site.add_resource(["telemetry"], TelemetryResource())
    return site


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iotdtls-coap-server", description=__doc__)
    p.add_argument("--bind", default=f"[::]:{COAPS_PORT}", metavar="HOST:PORT",
                   help=f"address to serve coaps:// on (default [::]:{COAPS_PORT})")
    p.add_argument("--credentials", required=True, metavar="FILE",
                   help="aiocoap credentials JSON (dtls PSK entries and/or iotdtls-rpk entries)")
    p.add_argument("--mtu", type=int, default=None, help="datagram budget in bytes (default 512)")
    p.add_argument("--idle-timeout", type=float, default=None, metavar="S", help="close idle sessions after S")
    p.add_argument("--require-client-auth", action="store_true",
                   help="refuse public-key clients without a trusted key")
    p.add_argument("--observe-interval", type=float, default=1.0, metavar="S", help="/time notification period")
    bounds = p.add_argument_group("bounds", "what one session can make the server hold (docs/coap.md#bounds)")
    bounds.add_argument("--max-datagram", type=int, default=None, metavar="BYTES",
                        help="drop longer DTLS datagrams before decrypting them (default 1500, or the mtu)")
    bounds.add_argument("--max-message-size", type=int, default=1152, metavar="BYTES",
                        help="answer longer CoAP requests 4.13 (default 1152)")
    bounds.add_argument("--max-options", type=int, default=64, metavar="N",
                        help="answer requests with more options 4.02 (default 64)")
    bounds.add_argument("--max-upload", type=int, default=64 * 1024, metavar="BYTES",
                        help="largest request body taken in Block1 blocks (default 65536)")
    bounds.add_argument("--max-observers", type=int, default=8, metavar="N",
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
    p.add_argument("-v", "--verbose", action="store_true", help="log sessions")
    return p


async def run(args: argparse.Namespace) -> None:
    try:
        host, port = hostportsplit(args.bind)
    except ValueError:
        raise UsageError(f"--bind {args.bind}: expected HOST:PORT") from None
    try:
        credentials = load_credentials(args.credentials)
    except CredentialsLoadError as exc:
        raise UsageError(str(exc)) from None
    config = DTLSConfiguration(is_client=False, idle_timeout=args.idle_timeout,
                               require_client_auth=args.require_client_auth)
    if args.mtu is not None:
        config.mtu = args.mtu
    try:
        ctx = await server_context(build_site(args.observe_interval), (host, port or COAPS_PORT), credentials,
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
    print(f"iotdtls-coap-server: serving coaps://{args.bind}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await ctx.shutdown()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.WARNING, format="iotdtls-coap-server: %(message)s")
        logging.getLogger("coap-server.iotdtls").setLevel(logging.INFO)
    try:
        asyncio.run(run(args))
    except UsageError as exc:
        fail(str(exc), 2, "iotdtls-coap-server")
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
