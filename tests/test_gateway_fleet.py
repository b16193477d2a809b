"""Beyond one machine: two sites, each with its own ``iotdtls-gateway run`` (config, data dir, registry, MQTT client id
and status topic), publishing to one real mosquitto; a device moved from site A to site B with the real
``iotdtls-provision`` console script (``export --include-secrets --device``, ``import``, ``device-config``,
``revoke``). One subscriber on ``devices/+/telemetry`` collects everything; after de-duplication by the envelope's
``id`` (as docs/gateway-envelope.md tells consumers to), the device's readings continue with no gap and no duplicate.

- A running device (same boot id, its sequence continues) re-pointed by the network: its config names a site address
  (here a UDP relay, in the field a DNS name or a virtual IP) that moves from A to B. The reading in flight at the move
  is stored by A, its 2.04 is lost, and the device resends it to B with the same idempotency key: both gateways
  publish it, with the same ``id``.
- A device that reboots with the config.json ``device-config`` wrote on B (a new boot id), as docs/gateway.md
  ("Fleet topology") shows.
- Two gateways with the same client id: the broker closes the older connection each time the other one connects.
- The ``[mqtt]`` snippets of docs/gateway.md's "Fleet topology" (EMQX, HiveMQ Cloud, AWS IoT Core) load with
  ``iotdtls_gateway.config.parse``.

The envelope does not name the gateway that stored it; the tests tell the two apart by each gateway's ``reading`` log
events (debug level).
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import shutil
import socket
import subprocess
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fleet import load_main
from gateway_fixtures import FAST_DEVICE, Gateway, device_config, run_device
from iotdtls_gateway.config import parse
from iotdtls_gateway.envelope import ENVELOPE_FIELDS, message_id
from mosquitto import Broker, Subscriber, fetch_retained
from peers import LOCALHOST, require_mosquitto, require_peer

DOC = Path(__file__).resolve().parent.parent / "docs" / "gateway.md"
NODE_MODULES = Path(__file__).resolve().parent / "mpwasm" / "node_modules" / "@micropython"
TELEMETRY = "devices/+/telemetry"
WAIT = 45.0  # generous: two gateways, a broker and a device share two CPUs with other test runs


def provision_script() -> str:
    """The installed ``iotdtls-provision`` console script (what an operator runs)."""
    found = shutil.which("iotdtls-provision")
    require_peer("iotdtls-provision console script (pip install -e '.[gateway]')", found is not None)
    assert found is not None
    return found


class Site(Gateway):
    """One site's gateway: its own folder (gateway.toml, data/), its MQTT client id (and so its status topic), debug
    logs (each stored reading is a ``reading`` event with its id); devices managed with the console script."""

    def __init__(self, tmp: Path, client_id: str, broker: Broker) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        mqtt = (f'\n[mqtt]\nurl = "{broker.url()}"\nclient_id = "{client_id}"\nreconnect_min = 0.2\n'
                'reconnect_max = 1\n\n[log]\nlevel = "debug"\n')
        super().__init__(tmp, extra=mqtt)
        self.client_id = client_id
        self.script = provision_script()

    def provision_cmd(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """``iotdtls-provision --config SITE/gateway.toml ARGV``; a running gateway has reloaded its registry when a
        change returns."""
        before = len(self.log_events("registry_reloaded")) if self.running else 0
        r = subprocess.run([self.script, "--config", str(self.config), *argv], capture_output=True, text=True,
                           timeout=60)
        if r.returncode == 0 and self.running and argv[0] in ("add", "import", "revoke", "enable"):
            deadline = time.monotonic() + 15
            while len(self.log_events("registry_reloaded")) == before and time.monotonic() < deadline:
                time.sleep(0.05)
        return r

    def run(self, *argv: str) -> str:
        r = self.provision_cmd(*argv)
        assert r.returncode == 0, f"iotdtls-provision {' '.join(argv)}: {r.stderr}"
        return r.stdout

    def stored(self, device: str) -> list[str]:
        """The ids of the readings of ``device`` this gateway committed (not the resends it recognised)."""
        return [e["id"] for e in self.log_events("reading") if e.get("device") == device and not e.get("duplicate")]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    require_mosquitto()
    with Broker(tmp_path / "mosquitto") as b:
        yield b


@contextlib.contextmanager
def sites(tmp_path: Path, broker: Broker, *client_ids: str) -> Iterator[list[Site]]:
    started: list[Site] = []
    try:
        for i, client_id in enumerate(client_ids):
            site = Site(tmp_path / f"site-{'ab'[i]}", client_id, broker)
            site.start()
            started.append(site)
        yield started
    finally:
        for site in started:
            if site.running:
                site.stop()


class SiteAddress:
    """The address a device knows its site by (a DNS name or a virtual IP in the field): a UDP relay on 127.0.0.1 to
    one gateway, which can be re-pointed while the device runs. After ``repoint_after_answer(port)`` the next datagram
    from the current gateway is dropped (an answer lost on the way), then the relay points at ``port``. Each device
    address gets its own upstream socket, so a gateway sees a new source address after a re-point."""

    def __init__(self, target: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, 0))
        self.port: int = self.sock.getsockname()[1]
        self.target = target
        self.dropped = 0
        self._after_answer: int | None = None
        self._up: dict[tuple[str, int], socket.socket] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="SiteAddress", daemon=True)
        self._thread.start()

    def repoint(self, port: int) -> None:
        with self._lock:
            self._switch(port)

    def repoint_after_answer(self, port: int) -> None:
        with self._lock:
            self._after_answer = port

    def _switch(self, port: int) -> None:
        self.target = port
        for up in self._up.values():
            up.close()
        self._up.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                socks = [self.sock, *self._up.values()]
            try:
                ready, _, _ = select.select(socks, [], [], 0.05)
            except (OSError, ValueError):  # an upstream socket closed by a re-point meanwhile
                continue
            with self._lock:
                for s in ready:
                    if s.fileno() < 0:
                        continue
                    if s is self.sock:
                        self._from_device()
                    else:
                        self._from_gateway(s)

    def _from_device(self) -> None:
        try:
            data, addr = self.sock.recvfrom(65535)
        except OSError:
            return
        up = self._up.get(addr)
        if up is None:
            up = self._up[addr] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            up.connect((LOCALHOST, self.target))
        with contextlib.suppress(OSError):  # ICMP unreachable from an earlier send: the retransmissions go on
            up.send(data)

    def _from_gateway(self, up: socket.socket) -> None:
        addr = next((a for a, u in self._up.items() if u is up), None)
        try:
            data = up.recv(65535)
        except OSError:
            return
        if addr is None:
            return
        if self._after_answer is not None:
            self.dropped += 1
            self._switch(self._after_answer)
            self._after_answer = None
            return
        with contextlib.suppress(OSError):
            self.sock.sendto(data, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with self._lock:
            self._switch(self.target)
        self.sock.close()


def post(main: ModuleType, dev: Any, n: int, tries: int = 8) -> str:
    """Reading ``n`` as main.run_count posts it: up to ``tries`` attempts with the session's back-off; its CoAP code
    (or the error)."""
    for attempt in range(tries):
        ok, r = dev.post(n)
        if ok == "ok":
            return str(main.coap.code_str(r.code))
        if attempt + 1 < tries:
            dev.pause(dev.session.delay())
    return f"error: {r}"


def envelopes(sub: Subscriber, device: str) -> list[dict[str, Any]]:
    return [json.loads(r.payload) for r in sub.on(f"devices/{device}/telemetry")]


def first_deliveries(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a consumer keeps: the first envelope with each id."""
    seen: set[str] = set()
    out = []
    for e in items:
        if e["id"] not in seen:
            seen.add(e["id"])
            out.append(e)
    return out


def wait_unique(sub: Subscriber, device: str, n: int) -> list[dict[str, Any]]:
    sub.wait_for(lambda got: len({json.loads(r.payload)["id"] for r in got
                                  if r.topic == f"devices/{device}/telemetry"}) >= n,
                 timeout=WAIT, what=f"{n} distinct envelopes of {device}")
    return envelopes(sub, device)


def assert_status_online(broker: Broker, *site_list: Site) -> None:
    for site in site_list:
        assert fetch_retained(broker.port, f"gateways/{site.client_id}/status", timeout=5) == b"online", site.client_id


def assert_refused_by(main: ModuleType, site: Site, cfg: Path, sub: Subscriber, device: str) -> None:
    """A reading sent straight to ``site`` (which revoked ``device``): the handshake is refused, nothing is stored
    and nothing arrives."""
    direct = cfg.with_name(f"{device}-to-{site.client_id}.json")
    direct.write_text(json.dumps({**json.loads(cfg.read_text()), **FAST_DEVICE, "host": LOCALHOST, "port": site.port,
                                  "tries": 1}))
    stored_before = len(site.stored(device))
    probe = main.Device(main.load_config(str(direct)), out=lambda line: None)
    try:
        ok, why = probe.post(1)
    finally:
        probe.close()
    assert ok == "error" and "bad_record_mac" in why, (ok, why)
    time.sleep(1.0)
    assert len(site.stored(device)) == stored_before
    assert message_id(device, f"{probe.boot}.1") not in {e["id"] for e in envelopes(sub, device)}


# -- a running device, re-pointed -------------------------------------------------------------------------------
@pytest.mark.interop
def test_running_device_moves_with_its_key_and_sequence(tmp_path: Path, broker: Broker) -> None:
    device = "mover"
    main = load_main()
    with Subscriber(broker.port, [TELEMETRY]) as sub, sites(tmp_path, broker, "site-a", "site-b") as (a, b):
        address = SiteAddress(a.port)
        try:
            cfg = device_config(a.provision(device, "--host", LOCALHOST, "--port", str(address.port)))
            dev = main.Device(main.load_config(str(cfg)), out=lambda line: None)
            codes = [post(main, dev, n) for n in range(1, 6)]
            # the move: the device's key goes to B, then the site address moves to B right after A answered
            # reading 6 (that 2.04 is lost): the device resends reading 6, same key, to B
            export = tmp_path / f"{device}.csv"
            a.run("export", str(export), "--include-secrets", "--device", device)
            assert export.stat().st_mode & 0o777 == 0o600
            b.run("import", str(export))
            address.repoint_after_answer(b.port)
            codes += [post(main, dev, n) for n in range(6, 11)]
            a.run("revoke", device)
            assert codes == ["2.04"] * 10, codes
            assert address.dropped == 1 and address.target == b.port
            got = wait_unique(sub, device, 10)
            assert_status_online(broker, a, b)
            assert_refused_by(main, a, cfg, sub, device)
            dev.close()
        finally:
            address.close()
        expected = [message_id(device, f"{dev.boot}.{n}") for n in range(1, 11)]
        firsts = first_deliveries(got)
        # each gateway publishes in order; across the two, a consumer orders by the key (here data.seq)
        by_seq = sorted(firsts, key=lambda e: e["data"]["seq"])
        assert [e["id"] for e in by_seq] == expected
        assert [e["data"]["seq"] for e in by_seq] == list(range(1, 11))
        in_order = [e["id"] for e in firsts] == expected
        assert all(tuple(e) == ENVELOPE_FIELDS and e["device"] == device for e in got)  # no gateway field
        # who stored what: A readings 1-6 (6 arrived, its answer was lost), B readings 6-10 (6 again: a new store)
        assert a.stored(device) == expected[:6]
        assert b.stored(device) == expected[5:]
        copies = Counter(e["id"] for e in got)
        assert copies[expected[5]] >= 2  # published by A and by B, with the same id: the consumer keeps one
        raw_duplicates = len(got) - len(firsts)
    print(f"\nMEASURED fleet move of a running device: 10 readings acknowledged (A 1-5, B 6-10), A stored 6 too; "
          f"{len(got)} envelopes at the subscriber, {len(firsts)} distinct ids, {raw_duplicates} raw duplicate(s), "
          f"{'in' if in_order else 'out of'} order")


# -- a device that reboots with the config B wrote ---------------------------------------------------------------
@pytest.mark.interop
@pytest.mark.parametrize("runtime", ["cpython", "micropython-wasm"])
def test_rebooted_device_moves_with_export_import(tmp_path: Path, broker: Broker, runtime: str) -> None:
    """``micropython/main.py`` as a process, on CPython or on the real MicroPython (WebAssembly, under Node.js)."""
    wasm = runtime == "micropython-wasm"
    if wasm:
        require_peer("node + tests/mpwasm/node_modules (npm ci --prefix tests/mpwasm)",
                     shutil.which("node") is not None and NODE_MODULES.is_dir())
    device = "sensor-1"
    main = load_main()
    with Subscriber(broker.port, [TELEMETRY]) as sub, sites(tmp_path, broker, "site-a", "site-b") as (a, b):
        cfg_a = device_config(a.provision(device))
        before = json.loads(cfg_a.read_text())
        r = run_device(cfg_a, 3, wasm=wasm)
        assert r.returncode == 0 and r.stdout.split() == ["2.04"] * 3, r.stdout + r.stderr
        # the commands of docs/gateway.md, "Moving a device between sites"
        export = tmp_path / f"{device}.csv"
        a.run("export", str(export), "--include-secrets", "--device", device)
        b.run("import", str(export))
        cfg_b = tmp_path / "site-b" / f"{device}.json"
        b.run("device-config", device, "--out", str(cfg_b), "--host", LOCALHOST)
        a.run("revoke", device)
        export.unlink()
        after = json.loads(cfg_b.read_text())
        assert (after["identity"], after["psk"]) == (before["identity"], before["psk"])  # the same key
        assert (after["host"], after["port"]) == (LOCALHOST, b.port)
        r = run_device(device_config(cfg_b), 3, wasm=wasm)  # a new process: a new boot id
        assert r.returncode == 0 and r.stdout.split() == ["2.04"] * 3, r.stdout + r.stderr
        got = wait_unique(sub, device, 6)
        assert_status_online(broker, a, b)
        r = run_device(device_config(cfg_a, tries=1), 1, wasm=wasm)  # the old config, straight to A
        assert r.returncode == 1 and "bad_record_mac" in r.stdout, r.stdout + r.stderr
        assert_refused_by(main, a, cfg_a, sub, device)
        firsts = first_deliveries(got)
        ids = [e["id"] for e in firsts]
        first_boot, second_boot = a.stored(device), b.stored(device)  # who stored what: A 3, B 3
        assert len(first_boot) == len(second_boot) == 3 and sorted(ids) == sorted(first_boot + second_boot)
        for stored in (first_boot, second_boot):  # in order per gateway, seq 1, 2, 3 under each boot
            assert [e["data"]["seq"] for e in firsts if e["id"] in stored] == [1, 2, 3]
            assert [i for i in ids if i in stored] == stored
        raw_duplicates = len(got) - len(firsts)
    print(f"\nMEASURED fleet move after a reboot ({runtime}): 6 readings acknowledged (A 3, B 3), {len(got)} "
          f"envelopes at the subscriber, {len(firsts)} distinct ids, {raw_duplicates} raw duplicate(s)")


# -- one client id per gateway ----------------------------------------------------------------------------------
@pytest.mark.interop
def test_duplicate_client_id_the_broker_drops_the_older_connection(tmp_path: Path, broker: Broker) -> None:
    with Subscriber(broker.port, ["gateways/site-x/status"]) as status, \
            sites(tmp_path, broker, "site-x", "site-x") as (a, b):
        for site in (a, b):
            site.proc.wait_output('"event":"uplink_online"', timeout=WAIT)  # type: ignore[union-attr]
        time.sleep(3.0)
        takeovers = broker.log().count("already connected, closing old connection")
        online = [len(s.log_events("uplink_online")) for s in (a, b)]
        offline = [len(s.log_events("uplink_offline")) for s in (a, b)]
        flaps = Counter(m.payload.decode() for m in status.snapshot() if not m.retain)
    assert takeovers >= 1
    assert sum(offline) >= 1  # the older connection was closed under a running gateway
    print(f"\nMEASURED two gateways with one client id for 3 s (reconnect_min 0.2 s): {takeovers} takeover(s) in the "
          f"broker's log, connections {online}, disconnections {offline}, status messages {dict(flaps)}")


# -- the [mqtt] snippets of the fleet documentation ---------------------------------------------------------------
def fleet_snippets() -> list[str]:
    text = DOC.read_text()
    start = text.index("## Fleet topology")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```toml\n(.*?)```", text[start:end if end > 0 else len(text)], re.S)


def test_fleet_mqtt_snippets_load(tmp_path: Path) -> None:
    snippets = fleet_snippets()
    assert len(snippets) >= 3
    hosts = []
    for i, snippet in enumerate(snippets):
        raw = tomllib.loads(snippet)
        folder = tmp_path / f"snippet-{i}"
        folder.mkdir()
        for key in ("ca_file", "cert_file", "key_file", "password_file"):  # files the loader checks exist
            name = raw.get("mqtt", {}).get(key)
            if name:
                path = folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("secret\n" if key == "password_file" else "-----BEGIN CERTIFICATE-----\n")
        mqtt = parse(raw, folder / "gateway.toml").mqtt
        assert mqtt is not None and mqtt.tls and mqtt.port == 8883, snippet
        assert mqtt.client_id != "iotdtls-gateway", "a fleet needs one client id per gateway"
        hosts.append(mqtt.host)
        if mqtt.host.endswith(".amazonaws.com"):
            assert "-ats.iot." in mqtt.host and mqtt.qos == 1 and mqtt.cert_file and mqtt.key_file
        elif mqtt.host.endswith(".hivemq.cloud"):
            assert mqtt.username and mqtt.password == "secret" and mqtt.cert_file is None
        else:
            assert mqtt.cert_file and mqtt.key_file and mqtt.ca_file
    assert any(h.endswith(".amazonaws.com") for h in hosts) and any(h.endswith(".hivemq.cloud") for h in hosts)
