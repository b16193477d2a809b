"""Downlink, end to end with real parts: ``iotdtls-provision set-config`` and commands published to a real
mosquitto reach the device client (CPython, and the real MicroPython) through a real ``iotdtls-gateway``; results,
expiries and refusals come back on the result topic. The pure parts (command parsing, the durable queue) are
tested with a fake clock."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
from gateway_fixtures import Gateway, device_config, gateway, run_device
from iotdtls_gateway.command_store import DONE_KEPT, CommandStore
from iotdtls_gateway.commands import Command, Rejected, parse_command, parse_result, result_envelope
from iotdtls_gateway.config import CommandsConfig
from iotdtls_gateway.devices import config_etag
from mosquitto import Broker, Subscriber
from peers import require_mosquitto, require_peer

from iotdtls.coap import client_context

NODE_MODULES = Path(__file__).resolve().parent / "mpwasm" / "node_modules" / "@micropython"
CONFIG = CommandsConfig()


def ids() -> Any:
    n = iter(range(1, 1000))
    return lambda: f"g-{next(n)}"


# -- pure: commands and results ---------------------------------------------------------------------------------
def test_parse_command() -> None:
    c = parse_command("d1", b'{"id": "c1", "name": "led", "args": {"on": true}, "ttl": 60}', 100.0, CONFIG, ids())
    assert c == Command("d1", "c1", "led", {"on": True}, 100.0, 160.0)
    assert c.for_device() == {"id": "c1", "name": "led", "args": {"on": True}}
    made = parse_command("d1", b'{"name": "reboot"}', 5.0, CONFIG, ids())
    assert isinstance(made, Command) and made.id == "g-1" and made.expires_at == 5.0 + CONFIG.ttl
    assert made.for_device() == {"id": "g-1", "name": "reboot"}


@pytest.mark.parametrize(("payload", "reason"), [
    (b"not json", "not a JSON object"),
    (b"[1]", "not a JSON object"),
    (b'{"name": "led", "ttl": NaN}', "not a JSON object"),
    (b"\xff", "not a JSON object"),
    (b'{"name": ""}', "name must be"),
    (b'{"name": "a b"}', "name must be"),
    (b'{"id": 5, "name": "led"}', "id must be"),
    (b'{"id": "has space", "name": "led"}', "id must be"),
    (b'{"name": "led", "ttl": 0}', "ttl must be a positive"),
    (b'{"name": "led", "ttl": true}', "ttl must be a positive"),
    (b'{"name": "led", "ttl": 99999999}', "above the gateway's max_ttl"),
    (b'{"name": "led", "colour": 1}', "unknown field 'colour'"),
    (b'{"name": "led", "args": "' + b"x" * 600 + b'"}', "at most 512 bytes"),
])
def test_parse_command_rejects(payload: bytes, reason: str) -> None:
    r = parse_command("d1", payload, 0.0, CONFIG, ids())
    assert isinstance(r, Rejected) and reason in r.reason, r


def test_rejected_keeps_the_command_id_when_it_has_one() -> None:
    r = parse_command("d1", b'{"id": "c9", "name": "led", "ttl": -1}', 0.0, CONFIG, ids())
    assert isinstance(r, Rejected) and r.id == "c9"


def test_result_envelope_and_parse_result() -> None:
    body = json.loads(result_envelope("d1", "c1", "expired", 0.0, reason="late", delivered=False))
    assert body == {"id": "c1", "device": "d1", "status": "expired", "at": "1970-01-01T00:00:00.000Z",
                    "reason": "late", "delivered": False}
    assert parse_result({"id": "c1", "status": "ok", "result": {"led": True}}) == ("c1", "ok", {"led": True})
    assert parse_result({"id": "c1"}) == ("c1", "ok", None)
    for bad in ([], {"status": "ok"}, {"id": "c1", "status": "maybe"}, {"id": "c1", "x": 1}, {"id": 3}):
        assert isinstance(parse_result(bad), str)


def test_command_topics() -> None:
    from iotdtls_gateway.config import ConfigError, parse
    from iotdtls_gateway.uplink.mqtt import command_filter, device_of_topic

    assert command_filter("devices/{device}/commands") == "devices/+/commands"
    assert device_of_topic("devices/{device}/commands", "devices/d1/commands") == "d1"
    for topic in ("devices/d1/commands/result", "devices//commands", "other/d1/commands", "devices/d1"):
        assert device_of_topic("devices/{device}/commands", topic) is None
    cfg = parse({"mqtt": {"url": "mqtt://h", "command_topic": "sites/{client_id}/{device}/cmd",
                          "topic": "sites/{client_id}/{device}/data", "client_id": "site-a"}}, Path("g.toml"))
    assert cfg.mqtt is not None and cfg.mqtt.command_topic == "sites/{client_id}/{device}/cmd"
    for bad in ("devices/{device}{device}", "devices/x{device}/c", "devices/+/{device}", "devices/{dev}/c"):
        with pytest.raises(ConfigError):
            parse({"mqtt": {"url": "mqtt://h", "command_topic": bad}}, Path("g.toml"))
    assert parse({"mqtt": {"url": "mqtt://h", "command_topic": ""}}, Path("g.toml")).mqtt.command_topic == ""  # type: ignore[union-attr]


def test_command_store_queue(tmp_path: Path) -> None:
    store = CommandStore(tmp_path / "downlink.sqlite3", max_per_device=2)
    c1 = Command("d1", "c1", "led", {"on": True}, 0.0, 10.0)
    c2 = Command("d1", "c2", "reboot", None, 1.0, 100.0)
    assert store.add(c1) == "queued"
    assert store.add(c1) == "duplicate"  # the broker delivered it again (QoS 1)
    assert store.add(c2) == "queued"
    assert store.add(Command("d1", "c3", "led", None, 2.0, 100.0)) == "full"
    assert store.add(Command("d2", "c3", "led", None, 2.0, 100.0)) == "queued"
    assert store.counts().counts == {"d1": 2, "d2": 1}
    assert [c.id for c in store.pending("d1", 5.0)] == ["c1", "c2"]
    store.mark_delivered("d1", ["c1"], 5.0)
    assert store.pending("d1", 5.0)[0].delivered_at == 5.0
    assert [c.id for c in store.pending("d1", 10.0)] == ["c2"]  # c1's ttl is over
    assert [c.id for c in store.due(10.0)] == ["c1"]
    store.finish("d1", "c1", 10.0)
    assert store.due(10.0) == [] and store.get("d1", "c1") is not None and store.get("d1", "c1")[1]  # type: ignore[index]
    assert store.add(c1) == "duplicate"  # finished, still remembered
    assert store.purge(10.0 + DONE_KEPT + 1) == 1
    assert store.get("d1", "c1") is None
    store.set_served("d1", b"12345678", 1.0)
    store.close()
    again = CommandStore(tmp_path / "downlink.sqlite3")  # durable
    assert again.counts().counts == {"d1": 1, "d2": 1} and again.served() == {"d1": b"12345678"}
    assert (tmp_path / "downlink.sqlite3").stat().st_mode & 0o777 == 0o600
    again.close()


# -- over the network --------------------------------------------------------------------------------------------
async def _request(port: int, cfg: Path, method: aiocoap.Code, path: str, payload: bytes = b"",
                   etag: bytes | None = None) -> aiocoap.Message:
    c = json.loads(cfg.read_text())
    creds = {f"coaps://127.0.0.1:{port}/*": {"dtls": {"psk": {"hex": c["psk"]},
                                                      "client-identity": {"ascii": c["identity"]}}}}
    ctx = await client_context(creds)
    try:
        msg = aiocoap.Message(code=method, uri=f"coaps://127.0.0.1:{port}/{path}", payload=payload)
        if payload:
            msg.opt.content_format = 60
        if etag is not None:
            msg.opt.etags = (etag,)
        return await asyncio.wait_for(ctx.request(msg).response, 20)
    finally:
        await ctx.shutdown()


def request(gw: Gateway, cfg: Path, method: aiocoap.Code, path: str, payload: bytes = b"",
            etag: bytes | None = None) -> aiocoap.Message:
    return asyncio.run(_request(gw.port, cfg, method, path, payload, etag))


def set_config(gw: Gateway, tmp: Path, device: str, doc: dict[str, Any]) -> None:
    f = tmp / "doc.json"
    f.write_text(json.dumps(doc))
    r = gw.provision_cmd("set-config", device, str(f))
    assert r.returncode == 0, r.stderr
    assert f"ETag {config_etag(doc).hex()}" in r.stdout


def test_config_get_etag_and_the_hint_on_the_next_exchange(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw:
        cfg = device_config(gw.provision("d1"), host="127.0.0.1", port=gw.port, interval=0)
        assert request(gw, cfg, aiocoap.GET, "config").code == aiocoap.NOT_FOUND  # none yet
        r = run_device(cfg, 1)
        assert r.stdout.split() == ["2.04"], r.stdout + r.stderr  # no hint: nothing waits
        set_config(gw, tmp_path, "d1", {"interval": 0.2, "colour": "red"})
        r = run_device(cfg, 2)
        etag = config_etag({"interval": 0.2, "colour": "red"})
        assert r.returncode == 0 and f"config {etag.hex()}: interval" in r.stdout, r.stdout + r.stderr
        stored = json.loads(cfg.read_text())
        assert stored["interval"] == 0.2 and stored["config_etag"] == etag.hex()
        assert stored["psk"] and (cfg.stat().st_mode & 0o777) == 0o600
        # served: the next exchanges carry no hint
        r = run_device(cfg, 2)
        assert r.stdout.split() == ["2.04", "2.04"], r.stdout
        # GET with and without the ETag
        m = request(gw, cfg, aiocoap.GET, "config")
        assert m.code == aiocoap.CONTENT and cbor2.loads(m.payload) == {"interval": 0.2, "colour": "red"}
        assert m.opt.etag == etag and m.opt.content_format == 60
        m = request(gw, cfg, aiocoap.GET, "config", etag=etag)
        assert m.code == aiocoap.VALID and m.payload == b"" and m.opt.etag == etag
        assert request(gw, cfg, aiocoap.GET, "config", etag=b"stale!!!").code == aiocoap.CONTENT


async def _observe_config(gw: Gateway, cfg: Path, change: Any) -> tuple[list[Any], float]:
    c = json.loads(cfg.read_text())
    creds = {f"coaps://127.0.0.1:{gw.port}/*": {"dtls": {"psk": {"hex": c["psk"]},
                                                         "client-identity": {"ascii": c["identity"]}}}}
    ctx = await client_context(creds)
    try:
        msg = aiocoap.Message(code=aiocoap.GET, uri=f"coaps://127.0.0.1:{gw.port}/config", observe=0)
        req = ctx.request(msg)
        first = await asyncio.wait_for(req.response, 20)
        seen = [cbor2.loads(first.payload)]
        assert first.opt.observe is not None
        started = time.monotonic()
        await asyncio.to_thread(change)
        note = await asyncio.wait_for(req.observation.__aiter__().__anext__(), 10)
        seen.append(cbor2.loads(note.payload))
        return seen, time.monotonic() - started
    finally:
        await ctx.shutdown()


def test_config_observers_are_notified_within_a_second(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw:
        cfg = device_config(gw.provision("d1"), host="127.0.0.1", port=gw.port)
        set_config(gw, tmp_path, "d1", {"interval": 60})
        f = tmp_path / "new.json"
        f.write_text('{"interval": 5}')
        changed: list[float] = []

        def change() -> None:
            r = subprocess.run([*__import__("gateway_fixtures").PROVISION, "--config", str(gw.config),
                                "set-config", "d1", str(f)], capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            changed.append(time.monotonic())

        seen, elapsed = asyncio.run(_observe_config(gw, cfg, change))
        assert seen == [{"interval": 60}, {"interval": 5}]
        # the registry is polled each second: the notification follows the change within a second (plus the
        # provisioning process's own start-up, counted here; a loaded CI machine gets some slack)
        print(f"\n[config observe] notified {elapsed:.2f} s after set-config started")
        assert changed and elapsed < 3.0, elapsed


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    require_mosquitto()
    b = Broker(tmp_path / "mosquitto", persistence=True)
    b.start()
    yield b
    b.stop()


def publish(broker: Broker, device: str, command: dict[str, Any] | bytes) -> None:
    payload = command if isinstance(command, bytes) else json.dumps(command).encode()
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                    "-t", f"devices/{device}/commands", "-s"], input=payload, check=True, timeout=10)


def results(sub: Subscriber, device: str) -> list[dict[str, Any]]:
    return [json.loads(r.payload) for r in sub.on(f"devices/{device}/commands/result")]


def wait_event(gw: Gateway, name: str, n: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = gw.log_events(name)
        if len(found) >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {n} {name} events in the gateway's log")


@pytest.mark.interop
def test_command_delivered_at_the_next_exchange_and_its_result_published(tmp_path: Path, broker: Broker) -> None:
    with Subscriber(broker.port, ["devices/+/commands/result"]) as sub, \
            gateway(tmp_path, mqtt=broker.url()) as gw:
        cfg = device_config(gw.provision("d1"), host="127.0.0.1", port=gw.port)
        wait_event(gw, "uplink_online")
        publish(broker, "d1", {"id": "c1", "name": "led", "args": {"on": True}, "ttl": 60})
        publish(broker, "d1", {"id": "c2", "name": "selfdestruct"})
        wait_event(gw, "command_queued", 2)
        r = run_device(cfg, 1)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "command c1 led: ok -> 2.04" in r.stdout and "command c2 selfdestruct: error -> 2.04" in r.stdout
        sub.wait_for(lambda _: len(results(sub, "d1")) >= 2)
        got = {e["id"]: e for e in results(sub, "d1")}
        assert got["c1"]["status"] == "ok" and got["c1"]["result"] == {"led": True} and got["c1"]["device"] == "d1"
        assert got["c2"]["status"] == "error" and got["c2"]["result"] == "unknown command"
        # done: no hint, not sent again
        r = run_device(cfg, 1)
        assert r.stdout.split() == ["2.04"], r.stdout
        # a result for a command that does not exist
        m = request(gw, cfg, aiocoap.POST, "commands", cbor2.dumps({"id": "nope", "status": "ok"}))
        assert m.code == aiocoap.NOT_FOUND
        m = request(gw, cfg, aiocoap.POST, "commands", cbor2.dumps([1, 2]))
        assert m.code == aiocoap.BAD_REQUEST


@pytest.mark.interop
def test_expired_undeliverable_and_rejected_commands_are_reported(tmp_path: Path, broker: Broker) -> None:
    with Subscriber(broker.port, ["devices/+/commands/result"]) as sub, \
            gateway(tmp_path, mqtt=broker.url()) as gw:
        cfg = device_config(gw.provision("d1"), host="127.0.0.1", port=gw.port)
        gw.provision("d2")
        wait_event(gw, "uplink_online")
        publish(broker, "d1", {"id": "short", "name": "led", "ttl": 1})  # the device sleeps through it
        publish(broker, "ghost", {"id": "g1", "name": "led"})
        publish(broker, "d1", b"{oops")
        publish(broker, "d2", {"id": "r1", "name": "led"})
        wait_event(gw, "command_queued", 2)
        assert gw.provision_cmd("revoke", "d2").returncode == 0
        sub.wait_for(lambda _: len(results(sub, "d1")) >= 2 and bool(results(sub, "ghost"))
                     and bool(results(sub, "d2")), timeout=15)
        d1 = {e["id"]: e for e in results(sub, "d1")}
        assert d1["short"]["status"] == "expired" and d1["short"]["delivered"] is False
        rejected = [e for e in d1.values() if e["status"] == "rejected"]
        assert len(rejected) == 1 and rejected[0]["reason"] == "not a JSON object"
        assert results(sub, "ghost")[0] == {**results(sub, "ghost")[0], "id": "g1", "status": "undeliverable",
                                            "reason": "unknown device"}
        assert results(sub, "d2")[0]["status"] == "undeliverable"
        assert results(sub, "d2")[0]["reason"] == "device revoked"
        r = run_device(cfg, 1)  # the device wakes: nothing waits any more
        assert r.stdout.split() == ["2.04"], r.stdout


@pytest.mark.interop
def test_commands_survive_a_gateway_crash_and_an_offline_gateway(tmp_path: Path, broker: Broker) -> None:
    with Subscriber(broker.port, ["devices/+/commands/result"]) as sub:
        gw = Gateway(tmp_path, mqtt=broker.url())
        gw.start()
        try:
            cfg = device_config(gw.provision("d1"), host="127.0.0.1", port=gw.port)
            wait_event(gw, "uplink_online")
            publish(broker, "d1", {"id": "before-crash", "name": "led"})
            wait_event(gw, "command_queued")
            gw.kill9()  # acknowledged to the broker: it is the gateway's now
            publish(broker, "d1", {"id": "while-down", "name": "led"})  # the broker keeps it (persistent session)
            gw.start()
            wait_event(gw, "command_queued")
            r = run_device(cfg, 1)
            assert "command before-crash led: ok" in r.stdout and "command while-down led: ok" in r.stdout, r.stdout
            sub.wait_for(lambda _: len(results(sub, "d1")) >= 2)
            assert sorted(e["id"] for e in results(sub, "d1")) == ["before-crash", "while-down"]
        finally:
            if gw.proc is not None:
                gw.proc.stop()


async def _observe_commands(gw: Gateway, cfg: Path, broker: Broker) -> list[Any]:
    c = json.loads(cfg.read_text())
    creds = {f"coaps://127.0.0.1:{gw.port}/*": {"dtls": {"psk": {"hex": c["psk"]},
                                                         "client-identity": {"ascii": c["identity"]}}}}
    ctx = await client_context(creds)
    try:
        req = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=f"coaps://127.0.0.1:{gw.port}/commands", observe=0))
        first = await asyncio.wait_for(req.response, 20)
        seen = [cbor2.loads(first.payload)]
        started = time.monotonic()
        await asyncio.to_thread(publish, broker, "d1", {"id": "o1", "name": "led", "args": {"on": False}})
        note = await asyncio.wait_for(req.observation.__aiter__().__anext__(), 10)
        print(f"\n[commands observe] notified {1000 * (time.monotonic() - started):.0f} ms after mosquitto_pub started")
        seen.append(cbor2.loads(note.payload))
        answer = aiocoap.Message(code=aiocoap.POST, uri=f"coaps://127.0.0.1:{gw.port}/commands",
                                 payload=cbor2.dumps({"id": "o1", "status": "ok", "result": 1}), content_format=60)
        seen.append((await asyncio.wait_for(ctx.request(answer).response, 20)).code)
        return seen
    finally:
        await ctx.shutdown()


@pytest.mark.interop
def test_an_awake_device_gets_commands_through_observe(tmp_path: Path, broker: Broker) -> None:
    with Subscriber(broker.port, ["devices/+/commands/result"]) as sub, \
            gateway(tmp_path, mqtt=broker.url()) as gw:
        cfg = device_config(gw.provision("d1"), host="127.0.0.1", port=gw.port)
        wait_event(gw, "uplink_online")
        seen = asyncio.run(_observe_commands(gw, cfg, broker))
        assert seen == [[], [{"id": "o1", "name": "led", "args": {"on": False}}], aiocoap.CHANGED]
        sub.wait_for(lambda _: len(results(sub, "d1")) >= 1)
        assert results(sub, "d1")[0]["result"] == 1


@pytest.mark.interop
def test_real_micropython_applies_config_and_runs_a_command(tmp_path: Path, broker: Broker) -> None:
    require_peer("node + tests/mpwasm/node_modules", shutil.which("node") is not None and NODE_MODULES.is_dir())
    with Subscriber(broker.port, ["devices/+/commands/result"]) as sub, \
            gateway(tmp_path, mqtt=broker.url()) as gw:
        cfg = device_config(gw.provision("board-1"), host="127.0.0.1", port=gw.port)
        wait_event(gw, "uplink_online")
        set_config(gw, tmp_path, "board-1", {"interval": 0.1})
        publish(broker, "board-1", {"id": "m1", "name": "led", "args": {"on": True}})
        publish(broker, "board-1", {"id": "m2", "name": "reboot"})
        publish(broker, "board-1", {"id": "m-late", "name": "led", "ttl": 1})
        wait_event(gw, "command_queued", 3)
        time.sleep(2.5)  # the board sleeps through m-late's ttl
        r = run_device(cfg, 2, wasm=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        # (the WebAssembly port writes config.json to its in-memory file system: the CPython test checks the file)
        assert f"config {config_etag({'interval': 0.1}).hex()}: interval" in r.stdout, r.stdout
        assert "command m1 led: ok -> 2.04" in r.stdout and "command m2 reboot: ok -> 2.04" in r.stdout
        assert "rebooted" in r.stdout and "m-late" not in r.stdout
        sub.wait_for(lambda _: len(results(sub, "board-1")) >= 3)
        got = {e["id"]: e for e in results(sub, "board-1")}
        assert got["m1"]["result"] == {"led": True} and got["m2"]["status"] == "ok"
        assert got["m-late"]["status"] == "expired" and got["m-late"]["delivered"] is False


@pytest.mark.interop
def test_a_new_command_topic_on_reload_unsubscribes_the_old_one(tmp_path: Path, broker: Broker) -> None:
    """The session is persistent, so the broker would keep the old subscription: the old uplink unsubscribes it
    before it disconnects, and commands on the old topic no longer reach the gateway."""
    with gateway(tmp_path, mqtt=broker.url()) as gw:
        gw.provision("d1")
        wait_event(gw, "uplink_online")
        gw.config.write_text(gw.config.read_text() + 'command_topic = "site/{device}/cmd"\n')
        assert gw.proc is not None
        os.kill(gw.proc.pid, signal.SIGHUP)
        wait_event(gw, "reloaded")
        wait_event(gw, "uplink_online", 2)
        publish(broker, "d1", {"id": "old-topic", "name": "led"})
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", "site/d1/cmd",
                        "-m", '{"id": "new-topic", "name": "led"}'], check=True, timeout=10)
        queued = wait_event(gw, "command_queued")
        time.sleep(0.5)
        assert [e["id"] for e in gw.log_events("command_queued")] == ["new-topic"] == [queued[0]["id"]]
        assert "not a command topic" not in gw.proc.transcript()  # the old subscription is gone, not ignored
