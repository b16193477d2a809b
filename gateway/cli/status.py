"""``iotdtls-gateway status --config FILE [--json]``: the running gateway's figures, from its metrics server.

The command reads ``[metrics] bind`` from the configuration and fetches ``/status.json`` (urllib, a short timeout);
``--json`` prints that document as it came, otherwise a summary of a few lines. A gateway that does not answer, or
a configuration without ``[metrics]``, is one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ..config import GatewayConfig
from ..figures import ago, human_bytes

TIMEOUT = 5.0
#: The document must fit in this many bytes (1,000 device rows take about 150 KB).
MAX_DOCUMENT = 16 << 20


class StatusUnavailable(Exception):
    """No status: the gateway is not running, or not serving metrics; one line."""


def status_url(config: GatewayConfig) -> str:
    """``http://HOST:PORT/status.json`` of ``[metrics] bind`` (a wildcard address is asked on loopback)."""
    m = config.metrics
    if m is None:
        raise StatusUnavailable(f"{config.path}: no [metrics] table: the gateway serves no status (add [metrics] "
                                'with bind = "127.0.0.1:9464" and restart it)')
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(m.host, m.host)
    return f"http://{'[' + host + ']' if ':' in host else host}:{m.port}/status.json"


def fetch_status(config: GatewayConfig, timeout: float = TIMEOUT) -> dict[str, Any]:
    url = status_url(config)
    try:
        # straight to the gateway: never through an http_proxy of the environment
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=timeout) as response:
            body = response.read(MAX_DOCUMENT + 1)
    except urllib.error.HTTPError as exc:
        raise StatusUnavailable(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        raise StatusUnavailable(f"no gateway answers at {url}: {reason} (is it running with this configuration?)") \
            from None
    except (OSError, ValueError) as exc:  # a timeout, a reset connection, a malformed answer
        raise StatusUnavailable(f"no status from {url}: {exc}") from None
    if len(body) > MAX_DOCUMENT:
        raise StatusUnavailable(f"{url}: the answer is over {MAX_DOCUMENT} bytes")
    try:
        doc = json.loads(body)
    except ValueError:
        raise StatusUnavailable(f"{url}: the answer is not JSON (another server on that port?)") from None
    if not isinstance(doc, dict) or "messages" not in doc:
        raise StatusUnavailable(f"{url}: the answer is not a gateway status (another server on that port?)")
    return doc


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)



def _ms(seconds: Any) -> str:
    return "-" if not isinstance(seconds, int | float) else f"{seconds * 1000:g} ms"


def summary(doc: dict[str, Any]) -> list[str]:
    """The human summary of a ``/status.json`` document."""
    d, s, u, m, h = doc["devices"], doc["spool"], doc["uplink"], doc["messages"], doc["handshakes"]
    health = "healthy" if doc.get("health") is None else f"NOT HEALTHY: {doc['health']}"
    seen_hour = sum(1 for r in doc.get("device_list", []) if r.get("last_seen") is not None
                    and doc["now"] - r["last_seen"] < 3600)
    lines = [
        f"gateway    coaps {doc.get('coaps') or '-'}, up {ago(doc.get('uptime_s'))}, {health}",
        f"devices    {_n(d['registered'])} registered ({_n(d['enabled'])} enabled, {_n(d['revoked'])} revoked), "
        f"{_n(seen_hour)} seen in the last hour",
        f"sessions   {_n(doc['sessions']['open'])} open",
        f"handshakes {_n(h['ok'])} completed, {_n(h['failed'])} failed" + "".join(
            f", {suite} {_n(n)}" for suite, n in h["by_suite"].items() if n),
    ]
    refused = {f"{layer}/{reason}": n for layer, reasons in doc["refusals"].items() for reason, n in reasons.items()
               if n}
    lines.append(f"messages   {_n(m['received'])} received, {_n(m['acknowledged'])} acknowledged "
                 f"({_n(m['duplicates'])} resends), {_n(m['last_hour'])} in the last hour"
                 + (", refused: " + ", ".join(f"{k} {_n(v)}" for k, v in sorted(refused.items())) if refused else ""))
    oldest = s.get("oldest_age_s")
    lines.append(f"spool      {_n(s['messages'])} messages, "
                 f"{human_bytes(s['bytes'])} of {human_bytes(s['max_bytes'])}, "
                 + ("empty" if oldest is None else f"oldest {ago(oldest)} old"))
    if u["state"] == "none":
        lines.append("uplink     none (no [mqtt]: messages stay in the spool)")
    else:
        lat = u["latency"]
        lines.append(f"uplink     {u['state']} {u['broker']}, {_n(u['published'])} published, {_n(u['in_flight'])} "
                     f"in flight, {_n(u['reconnects'])} reconnects"
                     + (f", PUBACK p50 <= {_ms(lat['p50_le_s'])}, p99 <= {_ms(lat['p99_le_s'])}"
                        if lat.get("count") else ""))
        if u.get("last_error"):
            lines.append(f"           last error: {u['last_error']}")
    c = doc.get("commands")
    lines.append("commands   none (no downlink)" if c is None else
                 f"commands   {_n(c['pending'])} pending, {_n(c['received'])} received, {_n(c['delivered'])} "
                 f"delivered, {_n(c['expired'])} expired, {_n(c['undeliverable'])} undeliverable, "
                 f"{_n(c.get('rejected', 0))} rejected, {_n(c['results'])} results")
    ended = {k: v for k, v in doc.get("revocations", {}).items() if v}
    evicted = {k: v for k, v in doc.get("evictions", {}).items() if v}
    if ended or evicted:
        lines.append("ended      " + ", ".join([*(f"{_n(v)} {k}" for k, v in ended.items()),
                                                 *(f"{_n(v)} evicted ({k})" for k, v in evicted.items())]))
    return lines
