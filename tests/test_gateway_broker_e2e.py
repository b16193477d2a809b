"""The whole chain with real parts: iotdtls-provision -> the device client (the real MicroPython, or CPython) ->
iotdtls-gateway (a process) -> a real mosquitto -> a subscriber. A broker outage of 30 s and kill -9 of the gateway
while devices post: every reading a device got 2.04 for reaches the subscriber, in order per device."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from gateway_fixtures import Gateway, device_config, gateway, run_device, start_device
from mosquitto import Broker, Subscriber
from peers import require_mosquitto, require_peer

NODE_MODULES = Path(__file__).resolve().parent / "mpwasm" / "node_modules" / "@micropython"
OUTAGE = float(os.environ.get("IOTDTLS_MQTT_OUTAGE_SECONDS", "30"))


@pytest.fixture
def broker(tmp_path: Path) -> Broker:
    require_mosquitto()
    b = Broker(tmp_path / "mosquitto", persistence=True)
    b.start()
    yield b  # type: ignore[misc]
    b.stop()


def envelopes(sub: Subscriber, device: str) -> list[dict[str, object]]:
    return [json.loads(r.payload) for r in sub.on(f"devices/{device}/telemetry")]


def first_deliveries(items: list[dict[str, object]]) -> list[dict[str, object]]:
    seen: set[object] = set()
    out = []
    for e in items:
        if e["id"] not in seen:
            seen.add(e["id"])
            out.append(e)
    return out


@pytest.mark.interop
def test_real_micropython_reading_arrives_at_the_subscriber(tmp_path: Path, broker: Broker) -> None:
    require_peer("node + tests/mpwasm/node_modules", shutil.which("node") is not None and NODE_MODULES.is_dir())
    with Subscriber(broker.port, ["devices/#", "gateways/#"]) as sub, gateway(tmp_path, mqtt=broker.url()) as gw:
        cfg = device_config(gw.provision("board-1"), host="127.0.0.1", port=gw.port)
        r = run_device(cfg, 3, wasm=True)
        assert r.returncode == 0 and r.stdout.split() == ["2.04"] * 3, r.stdout + r.stderr
        got = sub.wait_for(lambda rs: len([x for x in rs if x.topic == "devices/board-1/telemetry"]) >= 3,
                           what="3 envelopes")
        arrived = [json.loads(x.payload) for x in got if x.topic == "devices/board-1/telemetry"]
        assert [(e["device"], e["data"]["seq"]) for e in arrived] == [("board-1", n) for n in (1, 2, 3)]  # type: ignore[index]
        assert any(x.topic == "gateways/iotdtls-gateway/status" and x.payload == b"online" for x in got)
        deadline = time.monotonic() + 5
        while gw.rows() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.rows() == []  # deleted after the broker's PUBACK


@pytest.mark.interop
def test_broker_outage_loses_nothing_acknowledged(tmp_path: Path, broker: Broker) -> None:
    devices = [f"dev-{i}" for i in range(3)]
    with Subscriber(broker.port, ["devices/#"], persistent=True, client_id="outage-sub") as sub, \
            gateway(tmp_path, mqtt=broker.url()) as gw:
        cfgs = [device_config(gw.provision(d), host="127.0.0.1", port=gw.port, interval=0.05) for d in devices]
        count = int(OUTAGE * 4) + 40
        procs = [start_device(cfg, count) for cfg in cfgs]
        time.sleep(1.0)
        broker.stop()
        stopped = time.monotonic()
        time.sleep(OUTAGE)
        waiting = len(gw.rows())
        broker.restart()
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outputs
        acked = {d: out.split().count("2.04") for d, out in zip(devices, outputs, strict=True)}
        sub.wait_for(lambda rs: all(len(first_deliveries([json.loads(x.payload) for x in rs
                                                          if x.topic == f"devices/{d}/telemetry"])) >= acked[d]
                                    for d in devices), timeout=60, what="every acknowledged reading")
        total = dup = 0
        for d in devices:
            got = envelopes(sub, d)
            firsts = first_deliveries(got)
            assert [e["data"]["seq"] for e in firsts] == list(range(1, acked[d] + 1))  # type: ignore[index]
            total += len(firsts)
            dup += len(got) - len(firsts)
        print(f"\nMEASURED broker outage {time.monotonic() - stopped:.0f} s: {sum(acked.values())} acknowledged, "
              f"{waiting} waited in the spool, {total} delivered, {dup} duplicates")


@pytest.mark.interop
def test_gateway_kill_9_delivers_every_acknowledged_reading(tmp_path: Path, broker: Broker) -> None:
    devices = [f"dev-{i}" for i in range(3)]
    with Subscriber(broker.port, ["devices/#"]) as sub:
        gw = Gateway(tmp_path, mqtt=broker.url())
        gw.start()
        cfgs = [device_config(gw.provision(d), host="127.0.0.1", port=gw.port, interval=0.05, tries=50,
                              handshake_timeout=60) for d in devices]
        procs = [start_device(cfg, 40) for cfg in cfgs]
        try:
            for _ in range(3):
                time.sleep(1.0)
                gw.kill9()
                time.sleep(0.3)
                gw.start()
            outputs = [p.communicate(timeout=180)[0] for p in procs]
            acked = {d: out.split().count("2.04") for d, out in zip(devices, outputs, strict=True)}
            assert all(n == 40 for n in acked.values()), outputs
            sub.wait_for(lambda rs: all(len(first_deliveries([json.loads(x.payload) for x in rs if x.topic ==
                                                              f"devices/{d}/telemetry"])) >= 40 for d in devices),
                         timeout=60, what="every acknowledged reading")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
            gw.stop()
        dup = 0
        for d in devices:
            got = envelopes(sub, d)
            firsts = first_deliveries(got)
            assert [e["data"]["seq"] for e in firsts] == list(range(1, 41))  # type: ignore[index]
            dup += len(got) - len(firsts)
        print(f"\nMEASURED gateway kill -9 x3 with a broker: 120 acknowledged, 120 delivered, {dup} duplicates")
