"""iotdtls-coap-client: one CoAP(s) request, like aiocoap-client, with coaps:// over iotdtls.

Prints the response payload; exit status 0 on a 2.xx response, 1 with a one-line message otherwise (4.xx/5.xx,
refused or failed DTLS handshake, timeout), 2 for usage errors."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import aiocoap
from aiocoap.credentials import CredentialsLoadError

from ..coap import client_context
from ..coap.client import server_of
from ..coap.credentials import load_credentials
from ..config import DTLSConfiguration
from ..resumption import Session
from .common import (
    ToolParser,
    UsageError,
    add_standard,
    cid_length,
    describe_error,
    int_range,
    mtu_type,
    record_size_limit,
    run_tool,
    seconds,
    setup_logging,
    verbosity,
)
from .progress import progress_printer
from .runtime import StdoutClosed, silence_stdout
from .session_file import load_session, report_session

PROG = "iotdtls-coap-client"


def build_parser() -> argparse.ArgumentParser:
    p = ToolParser(prog=PROG, description=__doc__)
    p.add_argument("-m", "--method", default="GET", help="GET, POST, PUT, DELETE, ... (default GET)")
    p.add_argument("--payload", help="request payload (text; prefix @ to read a file)")
    p.add_argument("--content-format", help="numeric content format or a media type")
    p.add_argument("--credentials", metavar="FILE", help="aiocoap credentials JSON")
    p.add_argument("--observe", action="store_true", help="observe the resource, print each notification")
    p.add_argument("--observe-count", type=int_range(0), default=0, metavar="N",
                   help="stop after N notifications (default 0: never)")
    p.add_argument("--mtu", type=mtu_type(), default=None, help="DTLS datagram budget in bytes (default 512)")
    p.add_argument("--cid", type=cid_length, metavar="N",
                   help="DTLS connection ID (RFC 9146): ask the server to send a CID of N bytes (0-20; 0: send one "
                   "if the server wants it, need none); default: no connection ID")
    p.add_argument("--record-size-limit", type=record_size_limit, metavar="BYTES",
                   help="RFC 8449: the largest DTLS record plaintext to accept (64-16384); default: not sent")
    p.add_argument("--session", metavar="FILE",
                   help="DTLS session resumption: offer the session saved in FILE (if it exists), and save this one "
                   "there after the request (mode 0600: it holds the session's master secret)")
    p.add_argument("--timeout", type=seconds, default=120.0, metavar="S", help="give up after S seconds")
    p.add_argument("uri", help="coap://HOST[:PORT]/PATH or coaps://HOST[:PORT]/PATH")
    add_standard(p)
    return p


def check_scheme(uri: str) -> None:
    """Only coap:// and coaps:// (the transports of client_context); anything else is a usage error."""
    scheme, sep, _ = uri.partition("://")
    if not sep:
        raise UsageError(f"{uri}: not a URI: use coap://HOST/PATH or coaps://HOST/PATH")
    if scheme.lower() not in ("coap", "coaps"):
        raise UsageError(f"unsupported scheme {scheme}: use coap:// or coaps://")


def _method(text: str) -> Any:
    """A request method by name, any case (GET, iPATCH, ...), or by number."""
    codes = aiocoap.numbers.Code
    if text.isdigit():
        try:
            code = codes(int(text))
        except ValueError:
            code = None
        if code is not None and code.is_request():
            return code
    for code in codes:
        if code.name.lower() == text.lower() and code.is_request():
            return code
    raise UsageError(f"unknown method {text!r}")


def _content_format(text: str | None) -> Any:
    if text is None:
        return None
    if text.isdigit():
        return aiocoap.numbers.ContentFormat(int(text))
    try:
        return aiocoap.numbers.ContentFormat.by_media_type(text)
    except KeyError:
        raise UsageError(f"unknown content format {text!r}") from None


def _payload(text: str | None) -> bytes:
    if text is None:
        return b""
    if text.startswith("@"):
        try:
            with open(text[1:], "rb") as f:
                return f.read()
        except OSError as exc:
            raise UsageError(f"cannot read payload file {text[1:]}: {exc.strerror}") from None
    return text.encode()


def _print(response: Any) -> None:
    try:
        sys.stdout.buffer.write(response.payload + (b"" if response.payload.endswith(b"\n") else b"\n"))
        sys.stdout.flush()
    except BrokenPipeError:  # | head: stop quietly
        silence_stdout()
        raise StdoutClosed from None


async def run(args: argparse.Namespace) -> int:
    check_scheme(args.uri)
    method = _method(args.method)
    try:
        credentials = load_credentials(args.credentials)
    except CredentialsLoadError as exc:
        raise UsageError(str(exc)) from None
    config = DTLSConfiguration()
    if args.mtu is not None:
        config.mtu = args.mtu
    if args.cid is not None:
        config.cid_length = args.cid
    if args.record_size_limit is not None:
        config.record_size_limit = args.record_size_limit
    try:
        request = aiocoap.Message(code=method, uri=args.uri, payload=_payload(args.payload))
    except ValueError as exc:
        raise UsageError(f"{args.uri}: {exc}") from None
    sessions: dict[tuple[str, int], Session] = {}
    offer = None
    if args.session:
        config.session_tickets = True  # a ticket survives a server restart; a cached session ID does not
        offer = load_session(PROG, args.session)
        if offer is not None and request.requested_scheme == "coaps":
            sessions[server_of(request)] = offer
    ctx = await client_context(credentials, config=config,
                               on_progress=progress_printer("iotdtls-coap-client", args), sessions=sessions)
    try:
        cf = _content_format(args.content_format)
        if cf is not None:
            request.opt.content_format = cf
        if args.observe:
            request.opt.observe = 0
        req = ctx.request(request)
        response = await asyncio.wait_for(req.response, args.timeout)
        conn = getattr(response.remote, "connection", None)  # the DTLS connection of a coaps:// response
        if args.session and conn is not None:
            report_session(PROG, args.session, conn.resumed, conn.session, offer)
        if not response.code.is_successful():
            print(f"iotdtls-coap-client: {response.code.dotted} {response.code.name_printable}"
                  + (f": {response.payload.decode(errors='replace')}" if response.payload else ""), file=sys.stderr)
            return 1
        _print(response)
        if args.observe:
            seen = 0
            async for notification in req.observation:
                _print(notification)
                seen += 1
                if args.observe_count and seen >= args.observe_count:
                    break
        return 0
    except TimeoutError:
        print(f"iotdtls-coap-client: timeout: no response within {args.timeout:g} s", file=sys.stderr)
        return 1
    except aiocoap.error.Error as exc:
        cause = exc.__cause__ or exc
        print(f"iotdtls-coap-client: {describe_error(cause)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if isinstance(exc, (UsageError, StdoutClosed)):
            raise
        print(f"iotdtls-coap-client: {describe_error(exc)}", file=sys.stderr)
        return 1
    finally:
        await ctx.shutdown()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(PROG, verbosity(args))
    run_tool(PROG, lambda: asyncio.run(run(args)))


if __name__ == "__main__":
    main()
