"""SIGHUP: the configuration is read again. The pure diff (gateway/reload.py: what changed, what applies live, what
needs a restart), the spool's bounds changed under a running writer, and the real ``iotdtls-gateway run`` process
with a good configuration (logging, a new MQTT topic with a real mosquitto, no session dropped) and with a bad one
(every problem logged as ``check`` prints it, the gateway goes on with the old one)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from gateway_fixtures import GATEWAY, Gateway, device_config, run_device, start_device, wait_rows
from iotdtls_gateway.config import GatewayConfig, parse
from iotdtls_gateway.reload import changed_keys, flatten, plan, spool_limits, summary
from iotdtls_gateway.spool import Message, SpoolFull, SpoolLimits, Stored
from iotdtls_gateway.spool_writer import SpoolWriter
from mosquitto import Broker, Subscriber
from peers import free_udp_port, require_mosquitto
from systemd_fixtures import NotifySocket, start_gateway

FILE = Path("/etc/iotdtls-gateway/gateway.toml")
BASE: dict[str, Any] = {"data_dir": "/var/lib/iotdtls-gateway", "coaps": {"bind": "0.0.0.0:5684"},
                        "mqtt": {"url": "mqtt://broker:1883"}}


def config(**tables: Any) -> GatewayConfig:
    raw = json.loads(json.dumps(BASE))
    for name, value in tables.items():
        if value is None:
            raw.pop(name, None)
        elif isinstance(value, dict):
            raw.setdefault(name, {}).update(value)
        else:
            raw[name] = value
    return parse(raw, FILE)


# -- the plan, pure ------------------------------------------------------------------------------------------------
def test_no_change() -> None:
    p = plan(config(), config())
    assert not p.changed and p.live == () and p.restart == ()
    assert summary(p) == ["configuration reloaded: no change"]


def test_log_spool_and_mqtt_apply_live() -> None:
    new = config(log={"level": "debug", "format": "json"}, spool={"max_bytes": 1 << 20, "commit_window": 0.01},
                 mqtt={"topic": "site/{device}/up"})
    p = plan(config(), new)
    assert set(p.live) == {"log.level", "log.format", "spool.max_bytes", "spool.commit_window", "mqtt.topic"}
    assert p.restart == () and p.effective == new
    assert p.touches("log") and p.touches("spool") and p.touches("mqtt")
    assert summary(p)[0].startswith("configuration reloaded: ") and len(summary(p)) == 1


def test_mqtt_added_or_removed_is_one_key() -> None:
    assert plan(config(mqtt=None), config()).live == ("mqtt",)
    removed = plan(config(), config(mqtt=None))
    assert removed.live == ("mqtt",) and removed.effective.mqtt is None and removed.touches("mqtt")


def test_broker_url_host_and_port_are_one_key() -> None:
    assert changed_keys(config(), config(mqtt={"url": "mqtt://broker:1884"})) == ["mqtt.url"]
    assert changed_keys(config(), config(mqtt={"url": "mqtts://broker"})) == ["mqtt.url"]


def test_what_needs_a_restart_keeps_its_old_value() -> None:
    old = config()
    new = config(data_dir="/srv/gw", coaps={"bind": "[::]:5684", "key_file": "gw.key", "max_sessions": 5},
                 log={"level": "warning"})
    p = plan(old, new)
    assert p.restart == ("data_dir", "coaps.bind", "coaps.max_sessions", "coaps.key_file")
    assert p.live == ("log.level",)
    assert p.effective.data_dir == old.data_dir and p.effective.coaps == old.coaps
    assert p.effective.log.level == "warning"
    lines = summary(p)
    assert lines[1] == ("configuration reloaded, but data_dir, coaps.bind, coaps.max_sessions, coaps.key_file "
                        "changed: they take effect at the next restart")
    # the running configuration still differs from the file: the next reload says so again
    assert plan(p.effective, new).restart == p.restart and plan(p.effective, new).live == ()


def test_a_changed_password_is_named_never_shown() -> None:
    p = plan(config(mqtt={"password": "old-secret"}), config(mqtt={"password": "new-secret"}))
    assert p.live == ("mqtt.password",)
    assert not any("secret" in line for line in summary(p))


@dataclasses.dataclass(frozen=True)
class _Extra:
    size: int = 1


@dataclasses.dataclass(frozen=True)
class _WithExtra(GatewayConfig):
    extra: _Extra = _Extra()


def test_unknown_tables_need_a_restart() -> None:
    """A table this module does not know (another part of the gateway may add one) is never applied half-way."""
    base = config()
    old = _WithExtra(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    assert flatten(old)["extra.size"] == 1 and flatten(old)["coaps.bind"] == ("0.0.0.0", 5684)
    new = dataclasses.replace(old, extra=_Extra(size=2), log=dataclasses.replace(old.log, level="debug"))
    p = plan(old, new)
    assert p.restart == ("extra.size",) and p.live == ("log.level",)
    assert p.effective.extra == _Extra(size=1) and p.effective.log.level == "debug"


def test_spool_limits_of_a_config() -> None:
    limits = spool_limits(config(spool={"max_bytes": 65536, "retry_after": 7}))
    assert limits.max_bytes == 65536 and limits.retry_after == 7


# -- the writer takes new bounds -----------------------------------------------------------------------------------
def test_spool_writer_takes_new_limits_at_its_next_commit(tmp_path: Path) -> None:
    async def main() -> None:
        writer = SpoolWriter(tmp_path / "spool.sqlite3", SpoolLimits(max_bytes=64 * 1024, retry_after=3),
                             commit_window=0.0, clock=lambda: 1000.0)
        await writer.start()
        try:
            def msg(n: int, size: int) -> Message:
                return Message("d", f"m{n}", f"k{n}", 1000.0, b"x" * size)

            assert isinstance(await writer.append(msg(1, 60_000)), Stored)
            with pytest.raises(SpoolFull) as full:
                await writer.append(msg(2, 10_000))
            assert full.value.retry_after == 3
            writer.set_limits(SpoolLimits(max_bytes=1 << 20, retry_after=9), commit_window=0.002)
            assert isinstance(await writer.append(msg(3, 10_000)), Stored)
            assert writer.commit_window == 0.002 and writer.limits.max_bytes == 1 << 20
            writer.set_limits(SpoolLimits(max_bytes=64 * 1024, retry_after=9), commit_window=0.0)
            with pytest.raises(SpoolFull) as full:
                await writer.append(msg(4, 10))
            assert full.value.retry_after == 9
        finally:
            await writer.close()

    asyncio.run(main())


# -- the real process ----------------------------------------------------------------------------------------------
@pytest.fixture
def broker(tmp_path: Path) -> Broker:
    require_mosquitto()
    b = Broker(tmp_path / "mosquitto")
    b.start()
    yield b  # type: ignore[misc]
    b.stop()


def _handshakes(text: str, device: str) -> int:
    """Handshakes of ``device`` in a log that switched from text to JSON lines."""
    return sum(1 for line in text.splitlines() if f"handshake: device {device} from" in line)


def _events(text: str, name: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == name:
                out.append(record)
    return out


def _reload(proc: Any, sd: NotifySocket, event: str) -> tuple[dict[str, Any], str]:
    """SIGHUP, then the log event ``event`` and the notifications RELOADING=1, then READY=1: the event's record, and
    the STATUS that came with READY=1."""
    before, lines = len(sd.received), len(proc.stderr.lines)
    os.kill(proc.pid, signal.SIGHUP)
    proc.wait_output(f'"event":"{event}"', timeout=30)
    reloading = sd.wait_for(lambda n: n.has("RELOADING"), after=before, what="RELOADING=1")
    assert int(reloading.fields["MONOTONIC_USEC"]) > 0
    ready = sd.wait_for(lambda n: n.has("READY") and n.at >= reloading.at, after=before,
                        what="READY=1 after the reload")
    return _events("\n".join(proc.stderr.lines[lines:]), event)[-1], ready.fields["STATUS"]


@pytest.mark.interop
def test_sighup_with_a_good_config_applies_logging_and_a_new_topic_without_dropping_a_session(
        tmp_path: Path, broker: Broker) -> None:
    gw = Gateway(tmp_path, mqtt=broker.url())
    count = 50
    cfg = device_config(gw.provision("hup-dev"), host="127.0.0.1", port=gw.port, interval=0.1)
    with Subscriber(broker.port, ["devices/#", "site/#"]) as sub, NotifySocket() as sd:
        proc = start_gateway(gw, {"NOTIFY_SOCKET": sd.env}, log_json=False, wait="serving coaps")
        try:
            device = start_device(cfg, count)
            sub.wait_for(lambda got: len([m for m in got if m.topic == "devices/hup-dev/telemetry"]) >= 3,
                         timeout=30, what="readings on the first topic")
            assert "reading from hup-dev" not in proc.stderr.text()  # debug lines: not at level info
            gw.config.write_text(gw.config.read_text() + 'topic = "site/{device}/telemetry"\n\n'
                                 '[log]\nformat = "json"\nlevel = "debug"\n')
            reloaded, _ = _reload(proc, sd, "reloaded")
            assert set(reloaded["applied"]) == {"mqtt.topic", "log.format", "log.level"}, reloaded
            assert reloaded["restart"] == []
            sub.wait_for(lambda got: len([m for m in got if m.topic == "site/hup-dev/telemetry"]) >= 3, timeout=30,
                         what="readings on the new topic")
            out, _ = device.communicate(timeout=120)
            assert device.returncode == 0 and out.split() == ["2.04"] * count, out
            ids = {json.loads(m.payload)["id"] for m in sub.wait_for(
                lambda got: len({json.loads(m.payload)["id"] for m in got if m.topic.endswith("/telemetry")})
                >= count, timeout=30, what="every reading") if m.topic.endswith("/telemetry")}
            assert len(ids) == count  # nothing lost across the uplink's restart
            text = proc.stderr.text()
            assert _events(text, "reading"), "no debug line after the reload"
            handshakes = _handshakes(text, "hup-dev") + len([e for e in _events(text, "handshake")
                                                             if e.get("device") == "hup-dev"])
            assert handshakes == 1, "the device handshook again: its session was dropped"
            proc.stop(grace=30)
            assert proc.returncode == 0, proc.transcript()
        finally:
            proc.stop()


def test_sighup_with_a_bad_config_keeps_the_old_one(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    count = 40
    cfg = device_config(gw.provision("bad-dev"), host="127.0.0.1", port=gw.port, interval=0.1)
    good = gw.config.read_text()
    with NotifySocket() as sd:
        proc = start_gateway(gw, {"NOTIFY_SOCKET": sd.env})
        try:
            device = start_device(cfg, count)
            assert len(wait_rows(gw, 3, timeout=30)) >= 3
            # several problems: each is logged as `check` prints it
            gw.config.write_text(good + '\n[spool]\nmax_bytes = "lots"\nmax_age = 1\n\n[log]\nlevel = "loud"\n'
                                 '\n[bogus]\n')
            check = subprocess.run([*GATEWAY, "check", "--config", str(gw.config)], capture_output=True, text=True,
                                   timeout=60)
            assert check.returncode == 2
            expected = [line.removeprefix("iotdtls-gateway: ") for line in check.stderr.splitlines()]
            assert len(expected) == 4, check.stderr
            refused, status = _reload(proc, sd, "reload_refused")
            assert "4 problems" in refused["reason"]
            assert [e["msg"] for e in gw.log_events("reload_problem")] == expected
            assert "last reload refused" in status
            # not TOML at all: one line
            gw.config.write_text(good + "\n[coaps\n")
            _reload(proc, sd, "reload_refused")
            assert "not valid TOML" in gw.log_events("reload_problem")[-1]["msg"]
            # a good file again, with a key that needs a restart: named, and the old value kept
            new_port = free_udp_port()
            gw.config.write_text(good.replace(f"127.0.0.1:{gw.port}", f"127.0.0.1:{new_port}")
                                 + '\n[spool]\nmax_bytes = 100000\n')
            reloaded, status = _reload(proc, sd, "reloaded")
            assert reloaded["applied"] == ["spool.max_bytes"] and reloaded["restart"] == ["coaps.bind"]
            proc.wait_output('"event":"restart_needed"', timeout=30)  # the line after "reloaded"
            warning = gw.log_events("restart_needed")[-1]
            assert warning["level"] == "warning" and warning["keys"] == ["coaps.bind"]
            assert "last reload refused" not in status and f"127.0.0.1:{gw.port}" in status
            out, _ = device.communicate(timeout=120)
            assert device.returncode == 0 and out.split() == ["2.04"] * count, out
            assert len([e for e in gw.log_events("handshake") if e.get("device") == "bad-dev"]) == 1
            r = run_device(cfg, 1)  # still on the old port
            assert r.returncode == 0 and r.stdout.split() == ["2.04"], r.stdout + r.stderr
            assert len(wait_rows(gw, count + 1, timeout=30)) == count + 1
            proc.stop(grace=30)
            assert proc.returncode == 0, proc.transcript()
        finally:
            proc.stop()


def test_sighup_while_starting_never_kills_the_gateway(tmp_path: Path) -> None:
    """A reload while the gateway starts (the default action of SIGHUP ends a process) is ignored until the gateway
    takes the signal, and then applied once it serves. (Before ``run`` begins, while Python starts, SIGHUP still
    ends the process: systemd sends it only once the start job is done.)"""
    gw = Gateway(tmp_path)
    with NotifySocket() as sd:
        proc = start_gateway(gw, {"NOTIFY_SOCKET": sd.env}, wait=None)
        try:
            while not (gw.data / "registry.sqlite3").exists():  # Gateway.start() has begun
                assert proc.alive(), proc.transcript()
                time.sleep(0.005)
            sent = 0
            while not any('"event":"started"' in line for line in proc.stderr.lines):
                assert proc.alive(), proc.transcript()
                os.kill(proc.pid, signal.SIGHUP)
                sent += 1
                time.sleep(0.01)
            sd.wait_for(lambda n: n.has("READY"), what="READY=1")
            assert sent >= 1  # (a fast start takes only one)
            proc.wait_output('"event":"reloaded"', timeout=30)  # the ones during the start: one reload, once serving
            time.sleep(0.5)
            assert proc.alive(), proc.transcript()
            assert len(gw.log_events("reloaded")) <= 2  # coalesced (one more if the last came while it ran)
            proc.stop(grace=30)
            assert proc.returncode == 0, proc.transcript()
        finally:
            proc.stop()
