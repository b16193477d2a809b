"""Prometheus metrics of the gateway: a collector that reads :func:`.figures.collect` at scrape time.

The registry is the gateway's own (never prometheus-client's global one), so two gateways in one process, or a
test, do not mix. Nothing is counted per message for the metrics: a scrape reads the counters the gateway keeps
anyway. Labels take only bounded values (outcome, suite, layer, reason, kind, state): never a device id, which at
10,000 devices would make 10,000 series; the per-device view is the status page.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .figures import UPLINK_STATES, collect

if TYPE_CHECKING:
    from .service import Gateway

PREFIX = "iotdtls_gateway_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _counter(name: str, doc: str, value: float | None = None, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value, labels=labels)


def _gauge(name: str, doc: str, value: float | None = None, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value, labels=labels)


class GatewayCollector(Collector):
    """Turns one reading of the gateway's figures into metric families."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def describe(self) -> list[Metric]:
        return []  # nothing to check against other collectors: the registry is ours

    def collect(self) -> Iterator[Metric]:
        yield from families(collect(self._gateway))


def families(f: dict[str, Any]) -> Iterator[Metric]:
    """The metric families of one reading of the figures (:func:`.figures.collect`)."""
    yield _gauge("start_time_seconds", "When the gateway started (Unix time).", f["started_at"])
    yield _gauge("healthy", "1 while the gateway serves CoAPs and its spool writer runs (as /healthz says).",
                 0 if f["health"] else 1)
    devices = _gauge("devices", "Devices in the registry, by state.", labels=["state"])
    devices.add_metric(["enabled"], f["devices"]["enabled"])
    devices.add_metric(["revoked"], f["devices"]["revoked"])
    yield devices
    yield _gauge("sessions_open", "Established DTLS sessions.", f["sessions"]["open"])

    handshakes = _counter("handshakes", "DTLS handshakes by outcome (ok: full, resumed: abbreviated, failed) and "
                          "cipher suite (a failed one: suite \"unknown\"; an unknown identity and a wrong key both "
                          "fail).", labels=["outcome", "suite"])
    handshakes.add_metric(["failed", "unknown"], f["handshakes"]["failed"])
    for suite, n in f["handshakes"]["by_suite"].items():
        handshakes.add_metric(["ok", suite], n)
    for suite, n in f["handshakes"]["resumed_by_suite"].items():
        handshakes.add_metric(["resumed", suite], n)
    yield handshakes
    yield _counter("session_moves", "DTLS sessions that moved to a new address or port (RFC 9146 "
                         "connection ID).", f["handshakes"]["address_changes"])

    m = f["messages"]
    yield _counter("messages_received", "Telemetry POSTs answered (acknowledged or refused).", m["received"])
    acked = _counter("messages_acknowledged", "Telemetry POSTs answered 2.04 once committed to the spool "
                     "(result=duplicate: a resend recognised by its idempotency key).", labels=["result"])
    acked.add_metric(["stored"], m["stored"])
    acked.add_metric(["duplicate"], m["duplicates"])
    yield acked

    refusals = _counter("refusals", "Requests, datagrams and handshakes turned away, by layer and reason.",
                        labels=["layer", "reason"])
    for layer, reasons in f["refusals"].items():
        for reason, n in reasons.items():
            refusals.add_metric([layer, reason], n)
    yield refusals
    evictions = _counter("evictions", "Handshakes and sessions the DTLS server ended to make room, or replaced.",
                         labels=["kind"])
    for kind, n in f["evictions"].items():
        evictions.add_metric([kind], n)
    yield evictions
    revocations = _counter("revocations", "Sessions the gateway ended: the device was revoked (reason=revoked) "
                           "or its key retired or expired (reason=key_invalid).", labels=["reason"])
    for reason, n in f["revocations"].items():
        revocations.add_metric([reason], n)
    yield revocations

    s = f["spool"]
    yield _gauge("spool_messages", "Messages waiting in the spool.", s["messages"])
    yield _gauge("spool_bytes", "Bytes of the messages waiting in the spool.", s["bytes"])
    yield _gauge("spool_max_bytes", "The spool's bound ([spool] max_bytes): POSTs get 5.03 beyond it.",
                 s["max_bytes"])
    yield _gauge("spool_oldest_age_seconds", "Age of the oldest message waiting in the spool (0 when empty).",
                 s["oldest_age_s"] or 0.0)
    yield _counter("spool_commits", "Spool transactions committed (each one fsync).", s["commits"])
    yield _counter("spool_commit_failures", "Spool transactions that failed (disk full, I/O error).",
                   s["commit_failures"])

    u = f["uplink"]
    state = _gauge("uplink_state", "The MQTT uplink's state: 1 for the current one (none: no [mqtt]).",
                   labels=["state"])
    for name in (*UPLINK_STATES, "none"):
        state.add_metric([name], 1 if u["state"] == name else 0)
    yield state
    yield _counter("messages_published", "Messages the broker acknowledged (PUBACK): envelopes and command "
                   "results.", u["published"])
    yield _counter("mqtt_publishes", "PUBLISH packets sent, republishes after a reconnect included.", u["sent"])
    yield _counter("uplink_reconnects", "Connection attempts to the broker after the first.", u["reconnects"])
    yield _gauge("uplink_in_flight", "Publishes awaiting their PUBACK.", u["in_flight"])
    latency = HistogramMetricFamily(PREFIX + "publish_latency_seconds", "Time from PUBLISH to its PUBACK.")
    latency.add_metric([], [(le, float(n)) for le, n in u["latency"]["buckets"]], u["latency"]["sum_s"])
    yield latency

    c = f["commands"] or {}
    yield _counter("commands_received", "Commands taken from the broker into the per-device queues.",
                   c.get("received", 0))
    yield _counter("commands_delivered", "Commands delivered to their device.", c.get("delivered", 0))
    yield _counter("commands_expired", "Commands whose TTL ran out before delivery (reported on the result topic).",
                   c.get("expired", 0))
    yield _counter("commands_undeliverable", "Commands that could not be delivered (reported on the result topic).",
                   c.get("undeliverable", 0))
    yield _counter("commands_rejected", "Commands refused on arrival: malformed, too large, or the device's queue "
                   "full (reported on the result topic).", c.get("rejected", 0))
    yield _counter("command_results", "Results posted by devices and published.", c.get("results", 0))
    yield _gauge("commands_pending", "Commands queued for devices now.", c.get("pending", 0))


def build_registry(gateway: Gateway, *, process: bool = True) -> CollectorRegistry:
    """The gateway's registry: its collector, and the process's CPU, memory and file descriptors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway))
    if process:
        ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format of everything in ``registry``."""
    return generate_latest(registry)
