"""Logging: one line per event, human readable by default, JSON with ``--log-json`` / ``[log] format = "json"``.

Events are logged with an ``event`` name and fields (``log.info("...", extra=event("handshake", device=...))``);
the text line is the message, the JSON line carries the fields as keys. Secrets are never passed to a logger.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def event(name: str, **fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the event's name and fields (JSON lines carry them as keys)."""
    return {"event": name, "fields": fields}


def _utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record.created)} {record.levelname.lower():7} {record.getMessage()}"
        if record.exc_info and record.levelno >= logging.ERROR:
            exc = record.exc_info[1]
            line += f" ({type(exc).__name__}: {exc})"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _utc(record.created), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        name = getattr(record, "event", None)
        if name:
            out["event"] = name
            out.update(getattr(record, "fields", {}) or {})
        if record.exc_info and record.exc_info[1] is not None:
            out["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return json.dumps(out, default=str, separators=(",", ":"))


def setup(fmt: str = "text", level: str = "info", stream: TextIO | None = None) -> None:
    """Route every logger (the gateway's, iotdtls's, aiocoap's) to one handler on stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # aiocoap logs every exchange at INFO: keep it to warnings unless debugging
    logging.getLogger("coap-server").setLevel(logging.WARNING if level != "debug" else logging.DEBUG)
    logging.getLogger("coap").setLevel(logging.WARNING if level != "debug" else logging.DEBUG)
