"""Gateway metrics: the counters' functional core with a fake clock, the [metrics] configuration, and a real
``iotdtls-gateway run`` process with devices posting over real CoAPs, scraped at ``/metrics`` and parsed with
prometheus-client's parser (the counters must be exactly what the test did); ``/healthz``, bad HTTP requests,
``iotdtls-gateway status`` and the Grafana dashboard against what the endpoint exposes."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from gateway_fixtures import GATEWAY, Gateway, device_config, run_device
from iotdtls_gateway.config import ConfigError, MetricsConfig, parse
from iotdtls_gateway.stats import LATENCY_BUCKETS, GatewayStats, LatencyHistogram, MinuteRing, suite_name
from mosquitto import Broker, Subscriber
from peers import require_mosquitto
from prometheus_client.parser import text_string_to_metric_families

from iotdtls.coap import client_context

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "gateway" / "grafana-dashboard.json"
MIDNIGHT = 1_796_601_600.0  # 2026-12-07 00:00:00 UTC


# -- the functional core ----------------------------------------------------------------------------------------
class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_messages_today_reset_at_utc_midnight() -> None:
    clock = Clock(MIDNIGHT - 2)  # 23:59:58
    stats = GatewayStats(clock)
    stats.reading_stored("d1")
    stats.reading_stored("d1")
    assert stats.messages_today("d1", clock.now) == 2
    clock.now = MIDNIGHT + 1  # the next day, no reading yet: 0 without any timer
    assert stats.messages_today("d1", clock.now) == 0
    stats.reading_stored("d1")
    assert stats.messages_today("d1", clock.now) == 1
    assert stats.devices["d1"].last_seen == MIDNIGHT + 1
    assert stats.messages_today("never-seen", clock.now) == 0


def test_minute_ring_keeps_the_last_hour() -> None:
    ring = MinuteRing()
    t0 = MIDNIGHT + 30
    for i in range(3):
        ring.add(t0 + i)  # minute 0: 3
    ring.add(t0 + 60, 5)  # minute 1: 5
    series = ring.series(t0 + 60)
    assert len(series) == 60 and series[-2:] == [3, 5] and sum(series) == 8
    # 59 minutes later minute 0 is the oldest bucket still shown; one more minute and it is gone
    assert ring.series(t0 + 59 * 60)[0] == 3
    assert ring.series(t0 + 60 * 60)[:1] == [5] and sum(ring.series(t0 + 60 * 60)) == 5
    # a bucket reused an hour later starts again from zero
    ring.add(t0 + 3600)
    assert ring.series(t0 + 3600)[-1] == 1 and sum(ring.series(t0 + 3600)) == 6
    assert sum(ring.series(t0 + 10 * 3600)) == 0


def test_per_minute_counts_and_device_bounds() -> None:
    clock = Clock(MIDNIGHT + 600)
    stats = GatewayStats(clock)
    for device in ("a", "b", "c"):
        stats.reading_stored(device)
    assert stats.per_minute.series(clock.now)[-1] == 3
    stats.prune({"a", "c"})  # "b" left the registry
    assert sorted(stats.devices) == ["a", "c"]
    stats.prune(set())
    assert stats.devices == {}


def test_handshake_outcomes_and_the_bounded_address_set() -> None:
    stats = GatewayStats(Clock(MIDNIGHT), max_addresses=2)
    stats.handshake_completed(("10.0.0.1", 1), 0xC0A8, "d1")
    stats.connection_ended(("10.0.0.1", 1), failed=True)  # an established session that ended: not a failure
    stats.connection_ended(("10.0.0.2", 2), failed=True)  # a handshake that ended with an error
    stats.connection_ended(("10.0.0.3", 3), failed=False)  # a handshake the client closed: not counted
    stats.handshake_failed()  # a replacement handshake that failed
    assert stats.handshakes == {("ok", "TLS_PSK_WITH_AES_128_CCM_8"): 1, ("failed", "unknown"): 2}
    assert stats.handshake_totals() == {"ok": 1, "resumed": 0, "failed": 2}
    for i in range(10):  # never more than max_addresses remembered
        stats.handshake_completed(("10.0.1.1", i), 0xC0AE, None)
        assert len(stats._open) <= 2
    assert stats.devices.keys() == {"d1"}  # a handshake of no known device adds no activity
    stats.session_revoked("revoked")
    stats.session_revoked("key_invalid")
    assert stats.revocations == {"revoked": 1, "key_invalid": 1}


def test_suite_names() -> None:
    assert suite_name(0xC0A8) == "TLS_PSK_WITH_AES_128_CCM_8"
    assert suite_name(0xC0AE) == "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8"
    assert suite_name(0x1234) == "0x1234"


def test_latency_histogram() -> None:
    h = LatencyHistogram()
    for seconds in (0.0005, 0.003, 0.003, 0.2, 99.0, -1.0, float("nan")):
        h.observe(seconds)
    assert h.count == 5 and h.sum == pytest.approx(99.2065)
    buckets = dict(h.cumulative())
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    assert buckets["0.001"] == 1 and buckets["0.005"] == 3 and buckets["0.25"] == 4 and buckets["+Inf"] == 5
    counts = list(buckets.values())
    assert counts == sorted(counts)
    assert h.quantile(0.5) == 0.005 and h.quantile(0.99) is None and LatencyHistogram().quantile(0.5) is None


# -- configuration ----------------------------------------------------------------------------------------------
def test_metrics_config() -> None:
    path = Path("/etc/iotdtls-gateway/gateway.toml")
    assert parse({}, path).metrics is None
    assert parse({"metrics": {}}, path).metrics == MetricsConfig("127.0.0.1", 9464)
    assert parse({"metrics": {"bind": "[::1]:9100"}}, path).metrics == MetricsConfig("::1", 9100)
    with pytest.raises(ConfigError) as err:
        parse({"metrics": {"bind": "localhost", "port": 1}}, path)
    assert [str(p) for p in err.value.problems] == [
        f"{path}: metrics.bind: expected HOST:PORT (an IPv6 address in brackets: [::]:5684)",
        f"{path}: metrics.port: unknown key"]
    with pytest.raises(ConfigError, match="expected a table"):
        parse({"metrics": "127.0.0.1:9464"}, path)


# -- a real gateway ---------------------------------------------------------------------------------------------
def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def metrics_gateway(tmp: Path, devices: int = 0, extra: str = "", mqtt: str | None = None) -> Iterator[
        tuple[Gateway, int]]:
    port = free_tcp_port()
    gw = Gateway(tmp, extra=f'\n[metrics]\nbind = "127.0.0.1:{port}"\n{extra}', mqtt=mqtt)
    for i in range(devices):
        gw.provision(f"dev-{i}")
    with gateway_started(gw):
        yield gw, port


@contextmanager
def gateway_started(gw: Gateway) -> Iterator[Gateway]:
    gw.start()
    try:
        yield gw
    finally:
        if gw.proc is not None:
            gw.proc.stop()


def http(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of a request to the metrics server (no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with opener.open(request, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape, parsed by prometheus-client."""
    status, content_type, text = http(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4"), (status, content_type)
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def families(port: int) -> dict[str, str]:
    """{family name: type} of one scrape."""
    return {f.name: f.type for f in text_string_to_metric_families(http(port, "/metrics")[2])}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def creds(cfg: Path) -> tuple[str, str]:
    c = json.loads(cfg.read_text())
    return c["identity"], c["psk"]


async def open_device(port: int, identity: str, psk_hex: str) -> aiocoap.Context:
    return await client_context({f"coaps://127.0.0.1:{port}/*": {
        "dtls": {"psk": {"hex": psk_hex}, "client-identity": {"ascii": identity}}}})


async def post(ctx: aiocoap.Context, port: int, payload: dict[str, Any], key: str | None = None) -> Any:
    import cbor2

    uri = f"coaps://127.0.0.1:{port}/telemetry" + (f"?k={key}" if key else "")
    request = aiocoap.Message(code=aiocoap.POST, uri=uri, payload=cbor2.dumps(payload), content_format=60)
    return await asyncio.wait_for(ctx.request(request).response, 30)


def test_metrics_match_what_the_devices_did(tmp_path: Path) -> None:
    """3 devices post 2 readings each over open sessions, one resends a reading with its idempotency key, one
    client uses a wrong key; then one device is revoked while connected. Every figure is exact."""
    with metrics_gateway(tmp_path, devices=3) as (gw, mport):
        cfgs = [tmp_path / f"dev-{i}.json" for i in range(3)]

        async def scenario() -> tuple[dict[Any, float], dict[Any, float], dict[str, Any]]:
            contexts = [await open_device(gw.port, *creds(cfg)) for cfg in cfgs]
            try:
                for i, ctx in enumerate(contexts):
                    for seq in range(2):
                        r = await post(ctx, gw.port, {"seq": seq}, key=f"r{i}.{seq}")
                        assert str(r.code) == "2.04 Changed", r
                r = await post(contexts[0], gw.port, {"seq": 1}, key="r0.1")  # a resend: recognised, acknowledged
                assert str(r.code) == "2.04 Changed"
                identity, psk = creds(cfgs[1])
                wrong = await open_device(gw.port, identity, "00" * (len(psk) // 2))
                try:
                    with pytest.raises(Exception):  # noqa: B017 (the handshake fails: an alert or an error)
                        await post(wrong, gw.port, {"seq": 9})
                finally:
                    await wrong.shutdown()
                before = await asyncio.to_thread(scrape, mport)
                status = json.loads((await asyncio.to_thread(http, mport, "/status.json"))[2])
                r = await asyncio.to_thread(gw.provision_cmd, "revoke", "dev-2")
                assert r.returncode == 0, r.stderr
                deadline = time.monotonic() + 10
                while True:  # the session ends at the reload the provision command waited for
                    after = await asyncio.to_thread(scrape, mport)
                    if value(after, "iotdtls_gateway_sessions_open") == 2 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.1)
                return before, after, status
            finally:
                for ctx in contexts:
                    await ctx.shutdown()

        before, after, status = asyncio.run(scenario())
        rows = gw.rows()

    s = before
    ok = {labels: v for (name, labels), v in s.items() if name == "iotdtls_gateway_handshakes_total"
          and dict(labels)["outcome"] == "ok"}
    assert sum(ok.values()) == 3, ok
    assert value(s, "iotdtls_gateway_handshakes_total", outcome="ok", suite="TLS_PSK_WITH_AES_128_CCM_8") == 3
    assert value(s, "iotdtls_gateway_handshakes_total", outcome="failed", suite="unknown") == 1
    assert value(s, "iotdtls_gateway_sessions_open") == 3
    assert value(s, "iotdtls_gateway_messages_received_total") == 7
    assert value(s, "iotdtls_gateway_messages_acknowledged_total", result="stored") == 6
    assert value(s, "iotdtls_gateway_messages_acknowledged_total", result="duplicate") == 1
    assert value(s, "iotdtls_gateway_spool_messages") == 6 == len(rows)
    assert value(s, "iotdtls_gateway_spool_bytes") == sum(len(r.body) for r in rows)
    assert 0 < value(s, "iotdtls_gateway_spool_oldest_age_seconds") < 120
    assert value(s, "iotdtls_gateway_devices", state="enabled") == 3
    assert value(s, "iotdtls_gateway_uplink_state", state="none") == 1  # no [mqtt]: everything stays spooled
    assert value(s, "iotdtls_gateway_uplink_state", state="online") == 0
    assert value(s, "iotdtls_gateway_messages_published_total") == 0
    assert value(s, "iotdtls_gateway_publish_latency_seconds_count") == 0
    assert value(s, "iotdtls_gateway_healthy") == 1
    assert sum(v for (name, _), v in s.items() if name == "iotdtls_gateway_refusals_total") == 0
    assert value(s, "iotdtls_gateway_revocations_total", reason="revoked") == 0
    # after the revocation
    a = after
    assert value(a, "iotdtls_gateway_revocations_total", reason="revoked") == 1
    assert value(a, "iotdtls_gateway_sessions_open") == 2
    assert value(a, "iotdtls_gateway_devices", state="revoked") == 1
    assert value(a, "iotdtls_gateway_devices", state="enabled") == 2
    assert value(a, "iotdtls_gateway_handshakes_total", outcome="failed", suite="unknown") == 1  # not a failure
    # no device id is ever a label (10,000 devices would be 10,000 series)
    assert not any("dev-" in v for _, labels in a for _, v in labels)
    # /status.json: the same figures, and the devices
    assert status["messages"]["acknowledged"] == 7 and status["sessions"]["open"] == 3
    none = {"TLS_PSK_WITH_AES_128_CCM": 0, "TLS_PSK_WITH_AES_128_CCM_8": 0, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM": 0,
            "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8": 0}
    assert status["handshakes"] == {"ok": 3, "resumed": 0, "failed": 1, "address_changes": 0,
                                    "by_suite": {**none, "TLS_PSK_WITH_AES_128_CCM_8": 3}, "resumed_by_suite": none}
    assert {r["device"]: (r["session"], r["today"]) for r in status["device_list"]} == {
        "dev-0": ("open", 3), "dev-1": ("open", 2), "dev-2": ("open", 2)}
    assert sum(status["messages"]["per_minute"]) == 7 == status["messages"]["last_hour"]


def wait_metric(port: int, name: str, expected: float, timeout: float = 20.0, **labels: str) -> dict[Any, float]:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if value(samples, name, **labels) == expected or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


@pytest.mark.interop
def test_uplink_metrics_with_a_real_broker(tmp_path: Path) -> None:
    """mosquitto: 2 devices x 3 readings are published, acknowledged and deleted; the PUBACK latency histogram
    counts each; the broker stops: the state leaves online, a reading waits in the spool; it comes back."""
    require_mosquitto()
    with Broker(tmp_path / "mosquitto") as broker, Subscriber(broker.port, ["devices/#"]) as sub, \
            metrics_gateway(tmp_path, devices=2, mqtt=broker.url()) as (gw, mport):
        for i in range(2):
            cfg = device_config(tmp_path / f"dev-{i}.json", host="127.0.0.1", port=gw.port)
            r = run_device(cfg, 3)
            assert r.returncode == 0 and r.stdout.split() == ["2.04"] * 3, r.stdout + r.stderr
        sub.wait_for(lambda got: len(got) >= 6)
        s = wait_metric(mport, "iotdtls_gateway_spool_messages", 0)
        assert value(s, "iotdtls_gateway_spool_messages") == 0 and value(s, "iotdtls_gateway_spool_bytes") == 0
        assert value(s, "iotdtls_gateway_uplink_state", state="online") == 1
        assert value(s, "iotdtls_gateway_uplink_state", state="none") == 0
        assert value(s, "iotdtls_gateway_messages_published_total") == 6
        assert value(s, "iotdtls_gateway_mqtt_publishes_total") == 6
        assert value(s, "iotdtls_gateway_publish_latency_seconds_count") == 6
        assert value(s, "iotdtls_gateway_publish_latency_seconds_bucket", le="+Inf") == 6
        assert 0 < value(s, "iotdtls_gateway_publish_latency_seconds_sum") < 6 * 30
        assert value(s, "iotdtls_gateway_uplink_in_flight") == 0
        assert value(s, "iotdtls_gateway_uplink_reconnects_total") == 0
        broker.stop()
        s = wait_metric(mport, "iotdtls_gateway_uplink_state", 0, state="online")
        assert value(s, "iotdtls_gateway_uplink_state", state="online") == 0
        assert value(s, "iotdtls_gateway_healthy") == 1  # the broker's outage is not the gateway's health
        r = run_device(tmp_path / "dev-0.json", 1)
        assert r.returncode == 0 and r.stdout.split() == ["2.04"], r.stdout + r.stderr
        s = scrape(mport)
        assert value(s, "iotdtls_gateway_spool_messages") == 1 and value(s, "iotdtls_gateway_spool_bytes") > 0
        broker.start()
        s = wait_metric(mport, "iotdtls_gateway_messages_published_total", 7)
        assert value(s, "iotdtls_gateway_messages_published_total") == 7
        assert value(s, "iotdtls_gateway_uplink_reconnects_total") >= 1
        assert value(s, "iotdtls_gateway_publish_latency_seconds_count") == 7
        doc = json.loads(http(mport, "/status.json")[2])
        assert doc["uplink"]["state"] == "online" and doc["uplink"]["broker"] == broker.url()
        # commands from the cloud: one queued for a device, one for no device, one malformed
        for topic, payload in (("devices/dev-1/commands", '{"id": "c1", "name": "led", "args": {"on": true}}'),
                               ("devices/nobody/commands", '{"id": "c2", "name": "led"}'),
                               ("devices/dev-1/commands", "not json")):
            pub = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic,
                                  "-m", payload], capture_output=True, text=True, timeout=30)
            assert pub.returncode == 0, pub.stderr
        s = wait_metric(mport, "iotdtls_gateway_commands_received_total", 3)
        assert value(s, "iotdtls_gateway_commands_received_total") == 3
        assert value(s, "iotdtls_gateway_commands_pending") == 1
        assert value(s, "iotdtls_gateway_commands_undeliverable_total") == 1
        assert value(s, "iotdtls_gateway_commands_rejected_total") == 1
        assert value(s, "iotdtls_gateway_commands_delivered_total") == 0
        assert value(s, "iotdtls_gateway_commands_expired_total") == 0


def test_metric_types_and_names(tmp_path: Path) -> None:
    with metrics_gateway(tmp_path) as (_, mport):
        types = families(mport)
    ours = {name: kind for name, kind in types.items() if name.startswith("iotdtls_gateway_")}
    assert ours["iotdtls_gateway_handshakes"] == "counter"
    assert ours["iotdtls_gateway_messages_received"] == "counter"
    assert ours["iotdtls_gateway_sessions_open"] == "gauge"
    assert ours["iotdtls_gateway_spool_bytes"] == "gauge"
    assert ours["iotdtls_gateway_publish_latency_seconds"] == "histogram"
    assert ours["iotdtls_gateway_commands_pending"] == "gauge"
    assert ours["iotdtls_gateway_commands_expired"] == "counter"
    assert "process_resident_memory_bytes" in types
    assert len(ours) >= 28


def raw(port: int, data: bytes, *, read_timeout: float = 10.0, half_close: bool = False) -> bytes:
    """Send ``data`` on a fresh connection (then end the sending side with ``half_close``) and read until the
    server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_healthz_and_bad_requests_never_crash_the_server(tmp_path: Path) -> None:
    with metrics_gateway(tmp_path) as (gw, mport):
        assert http(mport, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
        head = raw(mport, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")  # no body
        assert http(mport, "/nope")[0] == 404
        assert http(mport, "/metrics", method="POST")[0] == 405
        assert raw(mport, b"DELETE / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
        assert b"Allow: GET, HEAD" in raw(mport, b"PUT /healthz HTTP/1.1\r\n\r\n")
        for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",
                        b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET http://x/ HTTP/1.1\r\n\r\n",
                        b"hello world\r\n\r\n"):
            assert raw(mport, garbage).startswith(b"HTTP/1.1 400 "), garbage
        huge = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        assert raw(mport, huge).startswith(b"HTTP/1.1 431 ")
        assert raw(mport, b"GET / HT", half_close=True).startswith(b"HTTP/1.1 400 ")  # ended half way
        assert raw(mport, b"", half_close=True) == b""  # connected and went away: nothing to answer
        # at most 16 connections at once: the 17th is answered 503 at once, the others are still served
        idle = [socket.create_connection(("127.0.0.1", mport), timeout=10) for _ in range(16)]
        try:
            time.sleep(0.3)
            assert raw(mport, b"GET /healthz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 503 ")
        finally:
            for sock in idle[1:]:
                sock.close()
        idle[0].sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert idle[0].recv(65536).startswith(b"HTTP/1.1 200 ")
        idle[0].close()
        assert http(mport, "/healthz")[0] == 200  # the server survived all of it
        assert gw.running
        text = gw.proc.stderr.text() if gw.proc is not None else ""
        assert "Traceback" not in text


def test_a_slow_request_head_gets_408() -> None:
    """The read timeout, on a server of its own (no gateway: a request that never completes reads nothing)."""
    from iotdtls_gateway.status_server import StatusServer

    async def main() -> bytes:
        server = StatusServer(object(), "127.0.0.1", 0, read_timeout=0.2)  # type: ignore[arg-type]
        await server.start()
        try:
            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return answer
        finally:
            await server.close()

    started = time.monotonic()
    assert asyncio.run(main()).startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 5


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        gw = Gateway(tmp_path, extra=f'\n[metrics]\nbind = "127.0.0.1:{port}"\n')
        r = subprocess.run([*GATEWAY, "run", "--config", str(gw.config)], capture_output=True, text=True,
                           timeout=60)
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if "iotdtls-gateway:" in line]
    assert lines == [f"iotdtls-gateway: cannot serve metrics on 127.0.0.1:{port}: Address already in use"], r.stderr
    assert "Traceback" not in r.stderr


def status_cmd(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATEWAY, "status", "--config", str(config), *extra], capture_output=True, text=True,
                          timeout=60)


def test_status_command(tmp_path: Path) -> None:
    with metrics_gateway(tmp_path, devices=2) as (gw, _mport):
        async def two_readings() -> None:
            ctx = await open_device(gw.port, *creds(tmp_path / "dev-0.json"))
            try:
                for seq in range(2):
                    await post(ctx, gw.port, {"t": seq})
            finally:
                await ctx.shutdown()

        asyncio.run(two_readings())
        r = status_cmd(gw.config)
        j = status_cmd(gw.config, "--json")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"gateway    coaps 127.0.0.1:{gw.port}, up ") and lines[0].endswith(", healthy")
    assert "devices    2 registered (2 enabled, 0 revoked), 1 seen in the last hour" in lines
    assert "handshakes 1 completed, 0 failed, TLS_PSK_WITH_AES_128_CCM_8 1" in lines
    assert any(line.startswith("messages   2 received, 2 acknowledged (0 resends), 2 in the last hour")
               for line in lines), lines
    assert any(line.startswith("spool      2 messages, ") and line.endswith(" old") for line in lines), lines
    assert "uplink     none (no [mqtt]: messages stay in the spool)" in lines
    assert any(line.startswith("commands   ") for line in lines)
    doc = json.loads(j.stdout)
    assert j.returncode == 0 and doc["messages"]["acknowledged"] == 2 and doc["spool"]["messages"] == 2
    psk = json.loads((tmp_path / "dev-0.json").read_text())["psk"]
    assert psk not in r.stdout + j.stdout  # no key in the output


def test_status_command_without_a_running_gateway(tmp_path: Path) -> None:
    port = free_tcp_port()
    gw = Gateway(tmp_path, extra=f'\n[metrics]\nbind = "127.0.0.1:{port}"\n')
    r = status_cmd(gw.config)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [f"iotdtls-gateway: no gateway answers at http://127.0.0.1:{port}/status.json: "
                                     "Connection refused (is it running with this configuration?)"]
    plain = tmp_path / "plain.toml"
    plain.write_text('data_dir = "data"\n')
    r = status_cmd(plain)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "no [metrics] table" in r.stderr


# -- the Grafana dashboard --------------------------------------------------------------------------------------
def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
            assert target["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    return exprs


def test_grafana_dashboard_uses_only_exposed_metrics(tmp_path: Path) -> None:
    board = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert board["uid"] and board["title"]
    with metrics_gateway(tmp_path) as (_, mport):
        samples = {name for name, _ in scrape(mport)}
        names = families(mport)
    exprs = dashboard_exprs()
    referenced = {m for e in exprs for m in re.findall(r"\b((?:iotdtls_gateway|process)_[a-z_]+)", e)}
    assert referenced and referenced <= samples, referenced - samples
    # and every family of ours has a panel
    covered = {name for name in names if name.startswith("iotdtls_gateway_")
               and any(r == name or r.startswith(name + "_") for r in referenced)}
    assert covered == {n for n in names if n.startswith("iotdtls_gateway_")}
    for e in exprs:  # balanced, and every selector filters on the dashboard's instance variable
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
