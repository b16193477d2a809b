"""The running gateway's figures, read at the moment they are asked for, as plain JSON-ready values.

One reading feeds all three views: the Prometheus collector (:mod:`.metrics`), ``/status.json`` (which
``iotdtls-gateway status`` prints) and the status page (:mod:`.status_page`). Everything is read on the event
loop, the thread that changes it, so no lock is needed and no figure is counted twice; a part that is not there
(no uplink, no downlink, the server still starting or already stopped) reads as absent or zero, never as an
error. Nothing here is a secret: no key, no password, the broker's URL without its credentials.

Where each figure comes from:

* handshakes, revocations, per-device activity, messages per minute, publish latency: :class:`.stats.GatewayStats`;
* requests answered by ``/telemetry`` (received, acknowledged, refused by reason): ``TelemetryResource.stats``;
* refusals and evictions of the DTLS server: ``DTLSServer.stats``; of the CoAP layer: the transport's ``stats``;
* the spool: the writer's totals and commit counters; the uplink: its ``state`` and ``stats``;
* commands: the downlink's ``stats`` (received, delivered, expired, undeliverable, rejected, results, pending).
"""

from __future__ import annotations

import heapq
import json
import time
from typing import TYPE_CHECKING, Any

from iotdtls.constants import CipherSuite

from .resources import session_credential

if TYPE_CHECKING:
    from .service import Gateway

#: TelemetryResource.stats key -> refusal reason
TELEMETRY_REFUSALS = {"forbidden": "forbidden", "bad_request": "bad_request", "unsupported_format":
                      "unsupported_format", "too_large": "too_large", "refused_full": "spool_full",
                      "storage_errors": "storage_error"}
#: DTLSServer.stats key -> refusal reason (datagrams and handshakes the DTLS server turned away)
DTLS_REFUSALS = {"dropped_full": "handshake_table_full", "dropped_per_ip": "handshakes_per_ip",
                 "dropped_invalid": "invalid_datagram", "dropped_oversize": "oversize_datagram",
                 "sessions_refused_full": "session_table_full"}
#: The CoAP transport's stats key -> refusal reason (messages refused before or by the message layer)
COAP_REFUSALS = {"dropped_unparsable": "unparsable", "dropped_too_big": "too_big", "refused_too_big": "too_big",
                 "dropped_too_many_options": "too_many_options", "refused_too_many_options": "too_many_options",
                 "uploads_too_large": "upload_too_large", "uploads_refused_full": "uploads_full"}
#: DTLSServer.stats key -> eviction kind
EVICTIONS = {"handshakes_evicted": "handshake", "sessions_evicted_full": "session_table_full",
             "sessions_evicted_identity": "same_identity", "sessions_evicted_anonymous": "anonymous",
             "sessions_replaced": "replaced"}
COMMAND_KEYS = ("received", "delivered", "expired", "undeliverable", "rejected", "results", "pending")
UPLINK_STATES = ("connecting", "online", "offline")
SUITES = tuple(s.name for s in CipherSuite if s is not CipherSuite.TLS_EMPTY_RENEGOTIATION_INFO_SCSV)
#: At most this many devices are listed by the page and /status.json (the rest are counted).
MAX_DEVICE_ROWS = 1000


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def collect(gateway: Gateway) -> dict[str, Any]:
    """Every figure but the device list (cheap enough for each scrape: no loop over devices or sessions)."""
    now = gateway.stats.now()
    stats = gateway.stats
    transport = gateway.transport
    core: dict[str, int] = dict(transport.core.stats) if transport is not None else {}
    coap: dict[str, int] = dict(transport.stats) if transport is not None else {}
    telemetry: dict[str, int] = dict(getattr(gateway.telemetry, "stats", None) or {})
    refused_requests = {reason: 0 for reason in TELEMETRY_REFUSALS.values()}
    for key, reason in TELEMETRY_REFUSALS.items():
        refused_requests[reason] += _int(telemetry.get(key))
    stored, duplicates = _int(telemetry.get("accepted")), _int(telemetry.get("duplicates"))
    snapshot = gateway.snapshot
    enabled = sum(1 for d in snapshot.devices.values() if d.enabled)
    ring = stats.per_minute.series(now)
    handshakes = stats.handshake_totals()
    return {
        "now": now,
        "started_at": stats.started_at,
        "uptime_s": max(0.0, now - stats.started_at),
        "coaps": _address(gateway),
        "health": health(gateway),
        "devices": {"registered": len(snapshot.devices), "enabled": enabled,
                    "revoked": len(snapshot.devices) - enabled},
        "sessions": {"open": _int(coap.get("sessions"))},
        "handshakes": {"ok": handshakes.get("ok", 0), "resumed": handshakes.get("resumed", 0),
                       "failed": handshakes.get("failed", 0), "by_suite": _by_suite(stats.handshakes),
                       "resumed_by_suite": _by_suite(stats.handshakes, "resumed"),
                       "address_changes": stats.address_changes},
        "messages": {"received": stored + duplicates + sum(refused_requests.values()),
                     "acknowledged": stored + duplicates, "stored": stored, "duplicates": duplicates,
                     "per_minute": ring, "last_hour": sum(ring)},
        "refusals": {"telemetry": refused_requests, "dtls": _mapped(core, DTLS_REFUSALS),
                     "coap": _mapped(coap, COAP_REFUSALS)},
        "evictions": _mapped(core, EVICTIONS),
        "revocations": dict(stats.revocations),
        "spool": _spool(gateway, now),
        "uplink": _uplink(gateway),
        "commands": _commands(gateway),
    }


def _by_suite(handshakes: dict[tuple[str, str], int], which: str = "ok") -> dict[str, int]:
    """Completed handshakes (full ones, or ``which="resumed"`` abbreviated ones) by suite, every suite the
    server can negotiate listed (0 until used)."""
    out = dict.fromkeys(SUITES, 0)
    for (outcome, suite), n in handshakes.items():
        if outcome == which:
            out[suite] = out.get(suite, 0) + n
    return out


def _mapped(source: dict[str, int], names: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, name in names.items():
        out[name] = out.get(name, 0) + _int(source.get(key))
    return out


def _address(gateway: Gateway) -> str | None:
    transport = gateway.transport
    if transport is None:
        return None
    try:
        host, port = transport.address
    except Exception:  # the socket closed (stopping)
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _spool(gateway: Gateway, now: float) -> dict[str, Any]:
    writer = gateway.writer
    out: dict[str, Any] = {"messages": 0, "bytes": 0, "max_bytes": gateway.config.spool.max_bytes,
                           "oldest_at": None, "oldest_age_s": None, "commits": 0, "commit_failures": 0}
    if writer is None:
        return out
    try:
        totals = writer.totals
    except Exception:  # closed (stopping)
        return out
    out.update(messages=totals.messages, bytes=totals.bytes, oldest_at=totals.oldest_at,
               oldest_age_s=None if totals.oldest_at is None else max(0.0, now - totals.oldest_at),
               commits=writer.stats.commits, commit_failures=writer.stats.failures)
    return out


def _uplink(gateway: Gateway) -> dict[str, Any]:
    uplink, mqtt = gateway.uplink, gateway.config.mqtt
    latency = gateway.stats.publish_latency
    out: dict[str, Any] = {
        "state": "none", "broker": mqtt.url if mqtt is not None else None,
        "published": 0, "sent": 0, "reconnects": 0, "in_flight": 0, "last_error": None,
        "latency": {"count": latency.count, "sum_s": latency.sum, "p50_le_s": latency.quantile(0.5),
                    "p99_le_s": latency.quantile(0.99), "buckets": latency.cumulative()},
    }
    if uplink is None:
        return out
    state = getattr(uplink, "state", None)
    out["state"] = state if state in UPLINK_STATES else "offline"
    s: dict[str, Any] = dict(getattr(uplink, "stats", None) or {})
    out.update(published=_int(s.get("acknowledged")), sent=_int(s.get("published")),
               reconnects=_int(s.get("reconnects")), in_flight=_int(s.get("in_flight")))
    error = s.get("last_error")
    out["last_error"] = error[:200] if isinstance(error, str) else None
    return out


def _commands(gateway: Gateway) -> dict[str, int] | None:
    downlink = getattr(gateway, "downlink", None)
    s = getattr(downlink, "stats", None)
    if not isinstance(s, dict):
        return None
    return {key: _int(s.get(key)) for key in COMMAND_KEYS}


def health(gateway: Gateway) -> str | None:
    """None when the gateway serves and its spool writer runs; otherwise why not, in one line."""
    if gateway.transport is None:
        return "not serving coaps"
    writer = gateway.writer
    if writer is None or not writer.alive:
        return "the spool writer is not running"
    return None


def device_rows(gateway: Gateway, limit: int = MAX_DEVICE_ROWS) -> tuple[list[dict[str, Any]], int]:
    """The devices for the page and /status.json, most recently seen first (then by id), at most ``limit``; and how
    many more there are. One pass over the registry snapshot picks the rows; only those are described, and the
    sessions are looked at only for them (10,000 devices: about 10 ms)."""
    now = gateway.stats.now()
    snapshot = gateway.snapshot
    activity = gateway.stats.devices
    never = (float("inf"),)
    chosen = heapq.nsmallest(limit, snapshot.devices, key=lambda d: (
        (-activity[d].last_seen, d) if d in activity else (*never, d)))
    with_session: set[str] = set()
    transport = gateway.transport
    if transport is not None and chosen:
        wanted = set(chosen)
        for remote in transport.sessions():
            found = session_credential(remote, snapshot)
            if found is not None and found[0] in wanted:
                with_session.add(found[0])
    rows: list[dict[str, Any]] = []
    for device_id in chosen:
        device = snapshot.devices[device_id]
        seen = activity.get(device_id)
        rows.append({"device": device_id,
                     "session": "revoked" if not device.enabled else "open" if device_id in with_session else "none",
                     "last_seen": seen.last_seen if seen is not None else None,
                     "today": gateway.stats.messages_today(device_id, now),
                     "metadata": _metadata(device.metadata)})
    return rows, max(0, len(snapshot.devices) - len(rows))


def _metadata(metadata: Any, limit: int = 80) -> str:
    if not metadata:
        return ""
    text = json.dumps(metadata, ensure_ascii=False, sort_keys=True, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def status_document(gateway: Gateway, limit: int = MAX_DEVICE_ROWS) -> dict[str, Any]:
    """``/status.json``: the figures and the device list."""
    out = collect(gateway)
    rows, hidden = device_rows(gateway, limit)
    out["device_list"] = rows
    out["devices_not_listed"] = hidden
    return out


def utc(ts: float | None) -> str:
    """``2026-12-07 13:05:01 UTC``, or ``-``."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def ago(seconds: float | None) -> str:
    """``42 s``, ``12 min``, ``3.5 h``, ``2.0 d``, or ``-``."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def human_bytes(n: int) -> str:
    """``512 B``, ``3.4 KiB``, ``1.2 MiB``, ``256.0 MiB``, ``2.0 GiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
