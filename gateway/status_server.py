"""The metrics server at ``[metrics] bind``: a small, bounded, read-only HTTP/1.1 server on the event loop.

    GET /metrics       Prometheus text format (prometheus-client's generate_latest over the gateway's registry)
    GET /healthz       200 "ok" while serving CoAPs with the spool writer running; 503 and the reason otherwise
    GET /              the status page (HTML)
    GET /status.json   the figures and the device list (what ``iotdtls-gateway status`` prints)

Why not prometheus-client's own ``start_http_server``: it serves from a thread of its own, and the collector
would then read the gateway's dicts while the event loop changes them. Here every request is answered on the
loop, between two of its callbacks, so the figures are consistent and nothing needs a lock; a scrape reads
counters only, and the page does one pass over the devices.

Bounds: the request head (request line and headers) is at most :data:`HEAD_LIMIT` bytes (beyond: 431) and must
arrive within :data:`READ_TIMEOUT` seconds (then the connection is closed); at most :data:`MAX_CONNECTIONS`
connections at once (one more gets 503); one request per connection (``Connection: close``); GET and HEAD only
(405), unknown paths 404, a malformed request 400. A request body is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from typing import TYPE_CHECKING

from iotdtls.ratelog import RateLimitedLog

from .figures import collect, device_rows, health, status_document
from .metrics import CONTENT_TYPE, build_registry, exposition
from .status_page import render

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger("iotdtls_gateway.metrics")

HEAD_LIMIT = 8192
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 16
PAGE_REFRESH = 10
_REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/1\.([01])")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
#: The page is static HTML with inline CSS and an inline SVG: the browser may load nothing else, run no script.
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; " \
              "frame-ancestors 'none'"


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
                 headers: dict[str, str] | None = None) -> None:
        self.status, self.body = status, body
        self.headers = {"Content-Type": content_type, **(headers or {})}

    def encode(self, head_only: bool) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Error')}",
                 *(f"{k}: {v}" for k, v in self.headers.items()),
                 f"Content-Length: {len(self.body)}", "Cache-Control: no-store", "X-Content-Type-Options: nosniff",
                 "Connection: close", "", ""]
        head = "\r\n".join(lines).encode("latin-1")
        return head if head_only else head + self.body


def _text(status: int, line: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, (line + "\n").encode(), headers=headers)


class StatusServer:
    """Serves the gateway's metrics, health, status page and status JSON; ``start()`` raises OSError when the
    address cannot be bound."""

    def __init__(self, gateway: Gateway, host: str, port: int, *, max_connections: int = MAX_CONNECTIONS,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.gateway = gateway
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.registry = build_registry(gateway)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._ratelog = RateLimitedLog(log)
        self.stats = {"requests": 0, "refused_busy": 0, "bad_requests": 0, "timeouts": 0, "errors": 0}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port, limit=HEAD_LIMIT,
                                                  reuse_address=True)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None and self._server.sockets
        name = self._server.sockets[0].getsockname()
        return name[0], name[1]

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)

    # -- one connection ------------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        busy = len(self._clients) >= self.max_connections
        if task is not None and not busy:
            self._clients.add(task)
        try:
            response: Response | None
            if busy:
                self.stats["refused_busy"] += 1
                response, head_only = _text(503, "busy: too many connections", {"Retry-After": "1"}), False
            else:
                response, head_only = await self._request(reader)
            if response is not None:
                writer.write(response.encode(head_only))
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or stopped reading
        except Exception as exc:  # never let a request take the server down
            self.stats["errors"] += 1
            self._ratelog("http_error", time.monotonic(), logging.WARNING, "metrics server: %s: %s",
                          type(exc).__name__, exc)
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _request(self, reader: asyncio.StreamReader) -> tuple[Response | None, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.read_timeout)
        except asyncio.LimitOverrunError:
            self.stats["bad_requests"] += 1
            return _text(431, f"request head over {HEAD_LIMIT} bytes"), False
        except TimeoutError:
            self.stats["timeouts"] += 1
            return _text(408, "request head not received in time"), False
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None, False  # connected and went away: nothing to answer
            self.stats["bad_requests"] += 1
            return _text(400, "incomplete request"), False
        self.stats["requests"] += 1
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        m = _REQUEST_LINE.fullmatch(line)
        if m is None or not m.group(2).startswith("/"):
            self.stats["bad_requests"] += 1
            return _text(400, "bad request line"), False
        method, target = m.group(1), m.group(2)
        if method not in ("GET", "HEAD"):
            return _text(405, f"{method[:16]} not allowed: this server is read-only", {"Allow": "GET, HEAD"}), False
        return self.route(target.split("?", 1)[0]), method == "HEAD"

    # -- what is served ------------------------------------------------------------------------------
    def route(self, path: str) -> Response:
        gateway = self.gateway
        try:
            if path == "/metrics":
                return Response(200, exposition(self.registry), CONTENT_TYPE)
            if path == "/healthz":
                reason = health(gateway)
                return _text(200, "ok") if reason is None else _text(503, reason)
            if path == "/status.json":
                body = json.dumps(status_document(gateway), separators=(",", ":")).encode()
                return Response(200, body, "application/json")
            if path in ("/", "/index.html"):
                rows, hidden = device_rows(gateway)
                page = render(collect(gateway), rows, hidden, refresh=PAGE_REFRESH)
                return Response(200, page.encode(), "text/html; charset=utf-8",
                                {"Content-Security-Policy": PAGE_POLICY, "Referrer-Policy": "no-referrer"})
        except Exception as exc:  # a figure that cannot be read must not end the connection without an answer
            self.stats["errors"] += 1
            self._ratelog("render_error", time.monotonic(), logging.WARNING, "metrics server: %s failed: %s: %s",
                          path, type(exc).__name__, exc)
            return _text(500, "internal error (logged)")
        return _text(404, "not found: try /, /metrics, /healthz or /status.json")
