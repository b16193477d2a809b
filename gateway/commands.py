"""Commands for devices and their results, as values: parsing what the cloud publishes, and the result envelopes.

Pure: no I/O, no clock, no randomness (the caller passes the time and a maker of ids). The command's journey is
in :mod:`.downlink`; its durable queue in :mod:`.command_store`; the formats in docs/gateway.md ("Commands").

A command, published to ``devices/{device}/commands`` (QoS 1), is a JSON object::

    {"id": "c-42", "name": "led", "args": {"on": true}, "ttl": 600}

``name`` is required; ``id`` (1-64 printable characters) is made by the gateway when absent; ``args`` is any JSON
value; ``ttl`` (seconds) defaults to ``[commands] ttl`` and may not exceed ``max_ttl``. What becomes of every
command is published to ``devices/{device}/commands/result`` as one JSON object::

    {"id": "c-42", "device": "sensor-1", "status": "ok", "result": ..., "at": "2026-12-07T12:00:00.000Z"}

``status`` is the device's ``ok`` or ``error`` (with its ``result``), or the gateway's ``expired`` (the TTL ended
before a result came; ``delivered`` says whether the device was sent it), ``undeliverable`` (an unknown or revoked
device) or ``rejected`` (not a valid command, or the device's queue is full), each with a ``reason``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import CommandsConfig
from .envelope import format_timestamp

COMMAND_ID = re.compile(r"[!-~]{1,64}")
COMMAND_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
FIELDS = frozenset({"id", "name", "args", "ttl"})
#: The statuses a device may report.
DEVICE_STATUSES = frozenset({"ok", "error"})


@dataclass(frozen=True)
class Command:
    device: str
    id: str
    name: str
    args: Any
    received_at: float
    expires_at: float
    delivered_at: float | None = None

    def for_device(self) -> dict[str, Any]:
        """What the device is sent (CBOR): ``{"id", "name", "args"}`` (``args`` only when there are some)."""
        out: dict[str, Any] = {"id": self.id, "name": self.name}
        if self.args is not None:
            out["args"] = self.args
        return out


@dataclass(frozen=True)
class Rejected:
    """A command that cannot be queued; ``id`` is the command's, or one made for the report."""

    device: str
    id: str
    reason: str


def parse_command(device: str, payload: bytes, now: float, config: CommandsConfig,
                  new_id: Callable[[], str]) -> Command | Rejected:
    """A command published for ``device``, or why it is rejected (one line, safe to publish)."""
    if len(payload) > config.max_bytes:
        return Rejected(device, new_id(), f"a command has at most {config.max_bytes} bytes, this one {len(payload)}")

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return Rejected(device, new_id(), "not a JSON object")
    if not isinstance(doc, dict):
        return Rejected(device, new_id(), "not a JSON object")
    cid = doc.get("id")
    if cid is not None and not (isinstance(cid, str) and COMMAND_ID.fullmatch(cid)):
        return Rejected(device, new_id(), "id must be 1-64 printable ASCII characters without spaces")
    cid = cid or new_id()
    unknown = sorted(set(doc) - FIELDS)
    if unknown:
        return Rejected(device, cid, f"unknown field {unknown[0]!r} (known: args, id, name, ttl)")
    name = doc.get("name")
    if not (isinstance(name, str) and COMMAND_NAME.fullmatch(name)):
        return Rejected(device, cid, "name must be 1-32 characters of A-Z a-z 0-9 _ . -")
    ttl = doc.get("ttl", config.ttl)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0:
        return Rejected(device, cid, "ttl must be a positive number of seconds")
    if ttl > config.max_ttl:
        return Rejected(device, cid, f"ttl {ttl:g} s is above the gateway's max_ttl of {config.max_ttl:g} s")
    return Command(device, cid, name, doc.get("args"), now, now + float(ttl))


def result_envelope(device: str, command_id: str, status: str, at: float, *, result: Any = None,
                    reason: str | None = None, delivered: bool | None = None) -> bytes:
    """The JSON published on the result topic (compact UTF-8)."""
    out: dict[str, Any] = {"id": command_id, "device": device, "status": status, "at": format_timestamp(at)}
    if result is not None:
        out["result"] = result
    if reason is not None:
        out["reason"] = reason
    if delivered is not None:
        out["delivered"] = delivered
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def parse_result(doc: Any) -> tuple[str, str, Any] | str:
    """A device's result, decoded from its CBOR: ``{"id": text, "status": "ok"|"error", "result": any}`` ->
    (id, status, result), or what is wrong with it (for its 4.00)."""
    if not isinstance(doc, dict):
        return "a result is a map {id, status, result}"
    cid, status = doc.get("id"), doc.get("status", "ok")
    if not (isinstance(cid, str) and COMMAND_ID.fullmatch(cid)):
        return "id: the command's id (text)"
    if status not in DEVICE_STATUSES:
        return "status: ok or error"
    unknown = sorted(set(doc) - {"id", "status", "result"})
    if unknown:
        return f"unknown field {unknown[0]!r}"
    return cid, str(status), doc.get("result")
