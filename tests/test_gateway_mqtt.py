"""The gateway's MQTT uplink against a real mosquitto (started by the tests on a free port) and a subscriber.

Messages go into the spool through the real group-commit writer, as the CoAP side puts them there (the envelopes
here are simple JSON bytes: ``{"device", "id", "n"...}``), and must reach the subscriber in order per device,
leaving the spool only after their PUBACK: in normal operation, through a broker outage, through ``kill -9`` of
the process that runs the uplink, over TLS with a CA, a password and a client certificate. A proxy between the
uplink and the broker shows the in-flight window, and the status topic the gateway's availability.

``IOTDTLS_MQTT_OUTAGE_SECONDS`` shortens the outage (30 s by default, as the issue asks).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path

import pytest
from iotdtls_gateway.config import MqttConfig
from iotdtls_gateway.spool import Message, SpoolLimits, SpoolStore
from iotdtls_gateway.spool_writer import SpoolWriter
from iotdtls_gateway.uplink import mqtt as uplink_module
from iotdtls_gateway.uplink.mqtt import MqttUplink, backoff_delay, broker_name, describe
from mosquitto import Broker, MqttProxy, Received, Subscriber, fetch_retained, make_tls_files
from peers import LOCALHOST, LineReader, require_mosquitto

DEVICES = ("dev-a", "dev-b", "dev-c")
OUTAGE_SECONDS = float(os.environ.get("IOTDTLS_MQTT_OUTAGE_SECONDS", "30"))
TOPIC_PREFIX = "devices/"


# -- helpers ----------------------------------------------------------------------------------------------------


def envelope(device: str, n: int, pad: int = 0) -> bytes:
    return json.dumps({"device": device, "id": f"{device}:{n}", "received_at": time.time(), "content_format": 50,
                       "data": {"n": n, "pad": "x" * pad}}, separators=(",", ":")).encode()


def message(device: str, n: int, pad: int = 0) -> Message:
    return Message(device, f"{device}:{n}", None, time.time(), envelope(device, n, pad))


def mqtt_config(port: int, **overrides: object) -> MqttConfig:
    values: dict[str, object] = {
        "url": f"mqtt://{LOCALHOST}:{port}", "host": LOCALHOST, "port": port, "tls": False,
        "client_id": f"gw-test-{uuid.uuid4().hex[:8]}", "keepalive": 5, "reconnect_min": 0.2, "reconnect_max": 1.0,
    }
    values.update(overrides)
    return MqttConfig(**values)  # type: ignore[arg-type]


def deliveries(received: Iterable[Received]) -> dict[str, list[int]]:
    """Per device, the ``n`` of every telemetry message received, in arrival order (duplicates included)."""
    out: dict[str, list[int]] = {}
    for r in received:
        if not r.topic.startswith(TOPIC_PREFIX):
            continue
        body = json.loads(r.payload)
        device = r.topic.split("/")[1]
        assert body["device"] == device, r
        out.setdefault(device, []).append(body["data"]["n"])
    return out


def unique_count(received: Iterable[Received]) -> int:
    return sum(len(set(ns)) for ns in deliveries(received).values())


def check_delivery(received: Iterable[Received], expected: dict[str, list[int]], *, exact: bool = True) -> int:
    """Every expected message arrived, and the first deliveries of each device are in order; returns the number
    of duplicates. ``exact=False`` allows messages that were stored but not reported (a process killed between
    its commit and its print), provided they keep the order."""
    got = deliveries(received)
    duplicates = 0
    for device in sorted(set(expected) | set(got)):
        seen = got.get(device, [])
        firsts = list(dict.fromkeys(seen))
        want = expected.get(device, [])
        if exact:
            assert firsts == want, f"{device}: first deliveries {firsts[:20]}... != expected {want[:20]}..."
        else:
            assert firsts == sorted(firsts), f"{device}: out of order: {firsts}"
            missing = sorted(set(want) - set(firsts))
            assert not missing, f"{device}: {len(missing)} stored messages never arrived: {missing[:20]}"
        duplicates += len(seen) - len(firsts)
    return duplicates


async def until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(uplink: MqttUplink, *, cancel: bool = False) -> AsyncIterator[asyncio.Task[None]]:
    """Run the uplink in a task; afterwards stop() it (or cancel its task), and surface its errors."""
    task = asyncio.ensure_future(uplink.run())
    try:
        yield task
    finally:
        if cancel:
            task.cancel()
        else:
            await asyncio.wait_for(uplink.stop(), 30)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


class Records(logging.Handler):
    """Every log record of every logger, formatted (message, arguments and exception)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, needle: str = "", level: int = logging.DEBUG) -> list[str]:
        out = [self.format(r) for r in self.records if r.levelno >= level]
        return [line for line in out if needle in line]


@contextlib.contextmanager
def capture_logs() -> Iterator[Records]:
    handler = Records()
    root, paho = logging.getLogger(), logging.getLogger("mqtt")
    old = root.level, paho.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    paho.setLevel(logging.DEBUG)  # paho's own packet log too: the password must not be in it either
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old[0])
        paho.setLevel(old[1])


# -- without a broker -------------------------------------------------------------------------------------------


def test_backoff_is_exponential_capped_and_jittered_within_the_bounds() -> None:
    low, high = 1.0, 60.0
    assert backoff_delay(0, low, high, lambda a, b: b) == 1.0
    assert [backoff_delay(i, low, high, lambda a, b: b) for i in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [backoff_delay(i, low, high, lambda a, b: a) for i in range(8)] == [1, 1, 2, 4, 8, 16, 30, 30]
    import random

    rnd = random.Random(1)
    for attempt in range(200):
        assert low <= backoff_delay(attempt, low, high, rnd.uniform) <= high
    assert backoff_delay(10_000, 0.5, 2.0, rnd.uniform) <= 2.0


def test_the_broker_name_never_carries_the_credentials_of_the_url() -> None:
    cfg = MqttConfig(url="mqtts://gw:s3cret@broker.example:8883", host="broker.example", port=8883, tls=True,
                     username="gw", password="s3cret")
    assert broker_name(cfg) == "mqtts://broker.example:8883"
    v6 = MqttConfig(url="mqtt://[::1]:1883", host="::1", port=1883, tls=False)
    assert broker_name(v6) == "mqtt://[::1]:1883"


def test_a_refusal_is_described_in_one_line() -> None:
    from aiomqtt.exceptions import MqttConnectError
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    assert describe(MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=134))) == \
        "the broker refused the connection: Bad user name or password (code 134)"
    assert describe(ExceptionGroup("x", [OSError(111, "Connection refused")])) == \
        "ConnectionRefusedError: [Errno 111] Connection refused"


def test_without_a_broker_it_backs_off_and_stops_promptly(tmp_path: Path) -> None:
    """Nothing listens on the port: the uplink logs one refusal, retries with back-off, and stop() ends it at
    once, the spool untouched."""
    spool = tmp_path / "spool.sqlite3"

    async def main() -> None:
        writer = SpoolWriter(spool, SpoolLimits(), commit_window=0.0)
        await writer.start()
        await writer.append(message("dev-a", 1))
        from mosquitto import free_tcp_port

        uplink = MqttUplink(mqtt_config(free_tcp_port(), reconnect_min=0.05, reconnect_max=0.2), writer, spool)
        assert uplink.state == "connecting"
        with capture_logs() as logs:
            task = asyncio.ensure_future(uplink.run())
            await until(lambda: uplink.stats["reconnects"] >= 3, what="three reconnects")
            assert uplink.state in ("offline", "connecting") and not task.done()
            started = time.monotonic()
            await uplink.stop()
            assert time.monotonic() - started < 2.0
            await asyncio.wait_for(task, 5)
        assert uplink.state == "offline" and uplink.stats["published"] == 0
        assert "Connection refused" in (uplink.stats["last_error"] or "")
        offline = logs.lines("uplink offline:", logging.WARNING)
        assert len(offline) == 1 and "retrying in" in offline[0], logs.lines()
        assert writer.totals.messages == 1
        await writer.close()

    asyncio.run(main())


def test_stop_is_prompt_while_a_silent_broker_keeps_it_connecting(tmp_path: Path) -> None:
    """A server that accepts the TCP connection and never answers the CONNECT: stop() does not wait for the
    CONNACK timeout."""
    spool = tmp_path / "spool.sqlite3"

    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()

        server = await asyncio.start_server(silent, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        writer = SpoolWriter(spool, SpoolLimits(), commit_window=0.0)
        await writer.start()
        uplink = MqttUplink(mqtt_config(port), writer, spool)
        task = asyncio.ensure_future(uplink.run())
        await asyncio.sleep(0.5)
        assert uplink.state == "connecting"
        started = time.monotonic()
        await uplink.stop()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - started < 1.0 and uplink.state == "offline"
        await writer.close()
        server.close()

    asyncio.run(main())


# -- against mosquitto ------------------------------------------------------------------------------------------


def test_messages_arrive_in_order_per_device_and_are_deleted_after_their_puback(tmp_path: Path) -> None:
    require_mosquitto()
    spool, per_device = tmp_path / "spool.sqlite3", 200

    async def main() -> None:
        with Broker(tmp_path / "broker") as broker, Subscriber(broker.port, ["devices/#"]) as sub:
            writer = SpoolWriter(spool, SpoolLimits(), commit_window=0.002)
            await writer.start()
            uplink = MqttUplink(mqtt_config(broker.port), writer, spool)
            async with running(uplink, cancel=True):
                await until(lambda: uplink.state == "online", what="online")

                async def produce(device: str) -> None:
                    for n in range(per_device):
                        await writer.append(message(device, n))

                await asyncio.gather(*(produce(d) for d in DEVICES))
                await sub.until(lambda r: len(r) >= 3 * per_device, timeout=30)
                await until(lambda: writer.totals.messages == 0, what="an empty spool")
            # cancelled (not stopped): it still says "offline" before its DISCONNECT
            assert fetch_retained(broker.port, uplink.status_topic) == b"offline"
            await writer.close()
        assert check_delivery(sub.snapshot(), {d: list(range(per_device)) for d in DEVICES}) == 0
        s = uplink.stats
        assert s["published"] == s["acknowledged"] == s["deleted"] == 3 * per_device, s
        assert s["reconnects"] == 0 and s["in_flight"] == 0 and uplink.state == "offline"
        assert SpoolStore(spool).totals.messages == 0

    asyncio.run(main())


def test_the_inflight_window_and_the_retained_status(tmp_path: Path) -> None:
    """Through a proxy that holds the broker's PUBACKs: the uplink stops at ``inflight`` publishes, the broker
    has them (the subscriber got them) but the spool keeps them until their PUBACK arrives."""
    require_mosquitto()
    spool, inflight, total = tmp_path / "spool.sqlite3", 5, 60

    async def main() -> None:
        with Broker(tmp_path / "broker") as broker:
            proxy = await MqttProxy(broker.port).start()
            cfg = mqtt_config(proxy.port, inflight=inflight)
            status = cfg.status_topic.format(client_id=cfg.client_id)
            with Subscriber(broker.port, ["devices/#", status]) as sub:
                writer = SpoolWriter(spool, SpoolLimits(), commit_window=0.002)
                await writer.start()
                uplink = MqttUplink(cfg, writer, spool)
                async with running(uplink):
                    await until(lambda: uplink.state == "online", what="online")
                    assert await asyncio.to_thread(fetch_retained, broker.port, status) == b"online"
                    proxy.hold()
                    await asyncio.gather(*(writer.append(message(DEVICES[i % 3], i // 3)) for i in range(total)))
                    await until(lambda: len(proxy.outstanding) == inflight, what="a full window")
                    await asyncio.sleep(0.5)  # and no more than that, however long the PUBACKs take
                    assert len(proxy.outstanding) == inflight and proxy.publishes == 1 + inflight  # 1: "online"
                    await sub.until(lambda r: len(deliveries_of(r)) == inflight)
                    assert writer.totals.messages == total  # at the broker, not acknowledged: still spooled
                    assert uplink.stats["in_flight"] == inflight and uplink.stats["acknowledged"] == 0
                    proxy.release()
                    await sub.until(lambda r: len(deliveries_of(r)) >= total, timeout=20)
                    await until(lambda: writer.totals.messages == 0, what="an empty spool")
                    assert proxy.max_outstanding == inflight and uplink.stats["max_in_flight"] == inflight
                await proxy.close()
                assert await asyncio.to_thread(fetch_retained, broker.port, status) == b"offline"
                await writer.close()
                await sub.until(lambda r: len([m for m in r if m.topic == status]) >= 2)
                assert [m.payload for m in sub.on(status)] == [b"online", b"offline"]
        expected = {d: [i // 3 for i in range(total) if DEVICES[i % 3] == d] for d in DEVICES}
        assert check_delivery(sub.snapshot(), expected) == 0

    asyncio.run(main())


def test_a_dropped_connection_publishes_the_unacknowledged_first_again(tmp_path: Path) -> None:
    """The connection is cut while ``inflight`` publishes await their PUBACK (the broker has them): the next
    connection publishes those again first, oldest first, then the rest. The subscriber sees each of them twice,
    the first deliveries in order; the broker published the will in between."""
    require_mosquitto()
    spool, inflight, total = tmp_path / "spool.sqlite3", 8, 90

    async def main() -> None:
        with Broker(tmp_path / "broker") as broker:
            proxy = await MqttProxy(broker.port).start()
            cfg = mqtt_config(proxy.port, inflight=inflight, reconnect_min=0.1, reconnect_max=0.2)
            status = cfg.status_topic.format(client_id=cfg.client_id)
            with Subscriber(broker.port, ["devices/#", status]) as sub:
                writer = SpoolWriter(spool, SpoolLimits(), commit_window=0.002)
                await writer.start()
                uplink = MqttUplink(cfg, writer, spool)
                async with running(uplink):
                    await until(lambda: uplink.state == "online", what="online")
                    proxy.hold()
                    await asyncio.gather(*(writer.append(message(DEVICES[i % 3], i // 3)) for i in range(total)))
                    await until(lambda: len(proxy.outstanding) == inflight, what="a full window")
                    await sub.until(lambda r: len(deliveries_of(r)) == inflight)
                    proxy.drop()
                    proxy.release()
                    await sub.until(lambda r: unique_count(r) >= total, timeout=20)
                    await until(lambda: writer.totals.messages == 0, what="an empty spool")
                    assert uplink.stats["reconnects"] == 1 and uplink.stats["published"] == total + inflight
                await proxy.close()
                await writer.close()
                await sub.until(lambda r: len([m for m in r if m.topic == status]) >= 4)
                assert [m.payload for m in sub.on(status)] == [b"online", b"offline", b"online", b"offline"]
        received = deliveries_of(sub.snapshot())
        first_ids = [json.loads(r.payload)["id"] for r in received[:inflight]]
        again = [json.loads(r.payload)["id"] for r in received[inflight:2 * inflight]]
        assert again == first_ids  # the unacknowledged ones, again, first and in order
        expected = {d: [i // 3 for i in range(total) if DEVICES[i % 3] == d] for d in DEVICES}
        assert check_delivery(received, expected) == inflight

    asyncio.run(main())


def deliveries_of(received: Iterable[Received]) -> list[Received]:
    return [r for r in received if r.topic.startswith(TOPIC_PREFIX)]


def test_broker_outage_loses_nothing_and_keeps_the_order(tmp_path: Path, record_property: Callable[..., None]) \
        -> None:
    """mosquitto stops for OUTAGE_SECONDS while devices keep posting (20 messages/s each); after it is back,
    every message arrives, in order per device. The subscriber has a persistent session on a broker with
    persistence, so that it misses nothing while the broker restarts."""
    require_mosquitto()
    spool = tmp_path / "spool.sqlite3"

    async def main() -> dict[str, object]:
        broker = Broker(tmp_path / "broker", persistence=True)
        broker.start()
        sub = Subscriber(broker.port, ["devices/#"], client_id=f"test-outage-{os.getpid()}", persistent=True)
        sub.start()
        try:
            writer = SpoolWriter(spool, SpoolLimits(), commit_window=0.002)
            await writer.start()
            uplink = MqttUplink(mqtt_config(broker.port, reconnect_min=0.2, reconnect_max=2.0), writer, spool)
            produced: dict[str, list[int]] = {d: [] for d in DEVICES}
            done = asyncio.Event()

            async def produce(device: str) -> None:
                n = 0
                while not done.is_set():
                    await writer.append(message(device, n))
                    produced[device].append(n)  # committed: the device would get its 2.04 now
                    n += 1
                    await asyncio.sleep(0.05)

            with capture_logs() as logs:
                async with running(uplink):
                    await until(lambda: uplink.state == "online", what="online")
                    producers = [asyncio.ensure_future(produce(d)) for d in DEVICES]
                    await asyncio.sleep(2.0)
                    before = sum(map(len, produced.values()))
                    await asyncio.to_thread(broker.stop)
                    await until(lambda: uplink.state != "online", what="offline")
                    await asyncio.sleep(OUTAGE_SECONDS)
                    spooled = writer.totals.messages
                    await asyncio.to_thread(broker.start)
                    restarted = time.monotonic()
                    await until(lambda: uplink.state == "online", timeout=15, what="online again")
                    back_after = time.monotonic() - restarted
                    await asyncio.sleep(2.0)
                    done.set()
                    await asyncio.gather(*producers)
                    total = sum(map(len, produced.values()))
                    await sub.until(lambda r: unique_count(r) >= total, timeout=60, what="every message")
                    await until(lambda: writer.totals.messages == 0, what="an empty spool")
            await writer.close()
            duplicates = check_delivery(sub.snapshot(), produced)
            online = logs.lines("uplink online:", logging.INFO)
            offline = logs.lines("uplink offline:", logging.WARNING)
            assert len(online) == 2 and len(offline) == 1, logs.lines("uplink")
            print("\n" + "\n".join(logs.lines("uplink", logging.INFO)))
            assert uplink.stats["reconnects"] >= 1
            return {"produced": total, "before_outage": before, "spooled_during_outage": spooled,
                    "delivered_unique": unique_count(sub.snapshot()), "duplicates": duplicates,
                    "reconnect_seconds_after_restart": round(back_after, 2), "outage_seconds": OUTAGE_SECONDS,
                    "published": uplink.stats["published"], "reconnects": uplink.stats["reconnects"]}
        finally:
            sub.stop()
            broker.stop()

    figures = asyncio.run(main())
    for key, value in figures.items():
        record_property(f"outage_{key}", value)
    print(f"\nbroker outage: {figures}")
    assert figures["produced"] == figures["delivered_unique"]
    assert int(figures["spooled_during_outage"]) > 0  # type: ignore[call-overload]


# -- kill -9 of the process that runs the uplink ---------------------------------------------------------------


def _uplink_process(spool: str, port: str, client_id: str, device: str, start: str) -> None:
    """The child process: a spool writer, the uplink, and a device posting about 50 messages/s (each printed once
    committed). On SIGTERM it stops posting, waits until the spool is drained, and stops the uplink."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    async def main() -> None:
        writer = SpoolWriter(spool, SpoolLimits(), commit_window=0.002)
        await writer.start()
        uplink = MqttUplink(mqtt_config(int(port), client_id=client_id), writer, Path(spool))
        task = asyncio.ensure_future(uplink.run())
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        sys.stdout.write("started\n")
        n = int(start)
        while not stop.is_set():
            await writer.append(message(device, n))
            sys.stdout.write(f"stored {device} {n}\n")
            sys.stdout.flush()
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)
        deadline = time.monotonic() + 30
        while writer.totals.messages and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await uplink.stop()
        await task
        await writer.close()
        sys.stdout.write("stopped\n")
        sys.stdout.flush()

    asyncio.run(main())


def test_kill_9_of_the_uplink_process_loses_nothing_and_the_will_says_offline(
        tmp_path: Path, record_property: Callable[..., None]) -> None:
    """3,000 messages wait in the spool and a device keeps posting; the process that runs the uplink is killed
    with SIGKILL three times in the middle of the stream, and restarted. Every message that was in the spool
    arrives (first deliveries in order per device), and the broker publishes the will "offline" each time."""
    require_mosquitto()
    spool, prefill, kills, live = tmp_path / "spool.sqlite3", 1000, 3, "dev-live"
    store = SpoolStore(spool)
    store.append([message(d, n) for n in range(prefill) for d in DEVICES], time.time())
    store.close()
    expected: dict[str, list[int]] = {d: list(range(prefill)) for d in DEVICES}
    expected[live] = []
    client_id = f"gw-kill-{uuid.uuid4().hex[:8]}"
    status = f"gateways/{client_id}/status"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent),
         os.environ.get("PYTHONPATH", "")]))
    logs: list[str] = []

    def start(broker: Broker, round_: int) -> tuple[subprocess.Popen[bytes], LineReader]:
        err = open(tmp_path / f"uplink-{round_}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, __file__, "uplink-process", str(spool), str(broker.port), client_id,
                                 live, str(round_ * 1_000_000)], stdout=subprocess.PIPE, stderr=err, env=env)
        err.close()
        assert proc.stdout is not None
        return proc, LineReader(proc.stdout, f"uplink process {round_}")

    def stored(reader: LineReader) -> list[int]:
        reader.join(5)
        return [int(line.split()[2]) for line in reader.lines if line.startswith("stored ")]

    with Broker(tmp_path / "broker") as broker, Subscriber(broker.port, ["devices/#", status]) as sub:
        started = time.monotonic()
        for round_ in range(kills):
            proc, reader = start(broker, round_)
            try:
                base = len(deliveries_of(sub.snapshot()))
                if round_ < kills - 1:  # while the uplink drains the backlog
                    sub.wait_for(lambda r, base=base: len(deliveries_of(r)) >= base + 400,  # type: ignore[misc]
                                 timeout=30, what="deliveries")
                else:  # the backlog drained, the device's messages streaming one by one
                    sub.wait_for(lambda r: all(set(expected[d]) <= set(deliveries(r).get(d, [])) for d in DEVICES),
                                 timeout=30, what="the backlog")
                    time.sleep(1.0)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
            finally:
                if proc.poll() is None:
                    proc.kill()
            expected[live] += stored(reader)
            sub.wait_for(lambda r, k=round_: sum(m.payload == b"offline" for m in r if m.topic == status) == k + 1,
                         timeout=10, what="the will")  # type: ignore[misc]
            assert fetch_retained(broker.port, status) == b"offline"
            logs.append((tmp_path / f"uplink-{round_}.log").read_text())
        proc, reader = start(broker, kills)
        try:
            reader.wait_for("started", timeout=30)
            sub.wait_for(lambda r: all(set(ns) <= set(deliveries(r).get(d, [])) for d, ns in expected.items()),
                         timeout=60, what="every prefilled and stored message")
            sub.wait_for(lambda r: len([n for n in deliveries(r).get(live, []) if n >= kills * 1_000_000]) >= 20,
                         timeout=30, what="messages of the last run")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(40) == 0, (tmp_path / f"uplink-{kills}.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
        expected[live] += stored(reader)
        elapsed = time.monotonic() - started
        sub.wait_for(lambda r: set(expected[live]) <= set(deliveries(r).get(live, [])), timeout=10,
                     what="the last stored messages")
        assert fetch_retained(broker.port, status) == b"offline"
        statuses = [m.payload for m in sub.on(status)]
    assert statuses == [b"online", b"offline"] * (kills + 1), statuses
    duplicates = check_delivery(sub.snapshot(), expected, exact=False)
    assert SpoolStore(spool).totals.messages == 0
    delivered = unique_count(sub.snapshot())
    figures = {"prefilled": prefill * len(DEVICES), "stored_by_the_device": len(expected[live]),
               "delivered_unique": delivered, "duplicates": duplicates, "kills": kills,
               "seconds": round(elapsed, 1)}
    for key, value in figures.items():
        record_property(f"kill9_{key}", value)
    print(f"\nkill -9 of the uplink process: {figures}")


# -- TLS and credentials ---------------------------------------------------------------------------------------


GOOD_PASSWORD = "good-Pa55word-7e1f"
BAD_PASSWORD = "bad-Pa55word-93c2"


def test_tls_with_a_ca_a_password_and_a_client_certificate_and_refusals_that_only_back_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_mosquitto()
    tls = make_tls_files(tmp_path / "pki")
    other_ca = make_tls_files(tmp_path / "other-pki").ca

    async def deliver(cfg: MqttConfig, spool: Path, sub: Subscriber, device: str) -> MqttUplink:
        writer = SpoolWriter(spool, SpoolLimits(), commit_window=0.0)
        await writer.start()
        for n in range(20):
            await writer.append(message(device, n))
        uplink = MqttUplink(cfg, writer, spool)
        async with running(uplink):
            await sub.until(lambda r: len(deliveries(r).get(device, [])) >= 20, timeout=15)
            await until(lambda: writer.totals.messages == 0, what="an empty spool")
        await writer.close()
        return uplink

    async def refused(cfg: MqttConfig, spool: Path, attempts: int = 3) -> tuple[MqttUplink, Records]:
        writer = SpoolWriter(spool, SpoolLimits(), commit_window=0.0)
        await writer.start()
        await writer.append(message("dev-x", 0))
        uplink = MqttUplink(dataclasses.replace(cfg, reconnect_min=0.1, reconnect_max=0.3), writer, spool)
        with capture_logs() as logs:
            async with running(uplink) as task:
                await until(lambda: uplink.stats["reconnects"] >= attempts, timeout=15, what="reconnects")
                assert not task.done() and uplink.state != "online"
        assert writer.totals.messages == 1 and uplink.stats["published"] == 0
        await writer.close()
        return uplink, logs

    async def main() -> None:
        with Broker(tmp_path / "broker", tls=tls, users={"gateway": GOOD_PASSWORD}, client_certs=True) as broker, \
                Subscriber(broker.port, ["devices/#"]) as sub:
            assert broker.tls_port is not None and broker.mtls_port is not None
            base = {"host": LOCALHOST, "tls": True, "ca_file": tls.ca, "username": "gateway",
                    "password": GOOD_PASSWORD}
            tls_cfg = mqtt_config(broker.tls_port, url=f"mqtts://gateway:{GOOD_PASSWORD}@{LOCALHOST}:"
                                  f"{broker.tls_port}", **base)
            with capture_logs() as logs:
                await deliver(tls_cfg, tmp_path / "tls.sqlite3", sub, "dev-tls")
            assert logs.lines(f"uplink online: mqtts://{LOCALHOST}:{broker.tls_port}")
            mtls_cfg = mqtt_config(broker.mtls_port, cert_file=tls.client_cert, key_file=tls.client_key, **base)
            await deliver(mtls_cfg, tmp_path / "mtls.sqlite3", sub, "dev-mtls")

            wrong = mqtt_config(broker.tls_port, **{**base, "password": BAD_PASSWORD})
            uplink, logs = await refused(wrong, tmp_path / "wrong.sqlite3")
            offline = logs.lines("uplink offline:", logging.WARNING)
            assert len(offline) == 1, logs.lines()
            assert "refused the connection" in offline[0] and "retrying in" in offline[0], offline
            assert "refused the connection" in (uplink.stats["last_error"] or "")
            everything = "\n".join(logs.lines()) + repr([r.__dict__ for r in logs.records])
            assert BAD_PASSWORD not in everything and GOOD_PASSWORD not in everything

            # TLS 1.3: the broker refuses the missing client certificate after the handshake, by an alert that
            # aiomqtt (waiting for the CONNACK) does not see: this attempt ends after CONNECT_TIMEOUT
            monkeypatch.setattr(uplink_module, "CONNECT_TIMEOUT", 0.5)
            no_cert = mqtt_config(broker.mtls_port, **base)
            uplink, logs = await refused(no_cert, tmp_path / "nocert.sqlite3", attempts=2)
            assert logs.lines("uplink offline: no CONNACK within 0.5 s", logging.WARNING)
            assert len(logs.lines("uplink offline:", logging.WARNING)) == 1
            monkeypatch.undo()

            untrusted = mqtt_config(broker.tls_port, **{**base, "ca_file": other_ca})
            uplink, logs = await refused(untrusted, tmp_path / "untrusted.sqlite3")
            assert "cannot connect: [SSL: CERTIFICATE_VERIFY_FAILED]" in (uplink.stats["last_error"] or ""), \
                uplink.stats
        check_delivery(deliveries_of(sub.snapshot()),
                       {"dev-tls": list(range(20)), "dev-mtls": list(range(20))})

    asyncio.run(main())


# -- throughput ------------------------------------------------------------------------------------------------


def test_throughput_draining_10000_messages_with_qos_1(tmp_path: Path, record_property: Callable[..., None]) -> None:
    """A first figure: a spool of 10,000 messages (about 200 bytes each, 10 devices) drained to mosquitto with
    QoS 1 and the default window, every message deleted after its PUBACK."""
    require_mosquitto()
    spool, total, devices = tmp_path / "spool.sqlite3", 10_000, [f"dev-{i}" for i in range(10)]
    store = SpoolStore(spool)
    store.append([message(devices[i % 10], i // 10, pad=100) for i in range(total)], time.time())
    store.close()

    async def main() -> dict[str, float]:
        with Broker(tmp_path / "broker") as broker, Subscriber(broker.port, ["devices/#"]) as sub:
            writer = SpoolWriter(spool, SpoolLimits())
            await writer.start()
            cfg = mqtt_config(broker.port)
            uplink = MqttUplink(cfg, writer, spool)
            started = time.monotonic()
            async with running(uplink):
                await until(lambda: writer.totals.messages == 0, timeout=300, what="an empty spool")
                drained = time.monotonic() - started
                await sub.until(lambda r: len(r) >= total, timeout=60)
            await writer.close()
        check_delivery(sub.snapshot(), {d: list(range(total // 10)) for d in devices})
        return {"messages": total, "seconds": round(drained, 2), "per_second": round(total / drained),
                "inflight": cfg.inflight, "spool_commits": writer.stats.commits}

    figures = asyncio.run(main())
    for key, value in figures.items():
        record_property(f"throughput_{key}", value)
    print(f"\nMQTT uplink throughput: {figures}")
    assert figures["per_second"] > 200


if __name__ == "__main__":
    if sys.argv[1:2] == ["uplink-process"]:
        _uplink_process(*sys.argv[2:])
