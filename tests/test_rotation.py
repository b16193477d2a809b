"""Key rotation end to end (issue 15, "Rotate"): a real ``iotdtls-gateway run`` process (tests/gateway_fixtures.py),
``Registry.rotate`` as the provisioning tool will call it, and the device client: micropython/main.py on the real
MicroPython (WebAssembly, tests/mpwasm/) and on CPython, and 200 devices driven by main.py's own session and
rotation code from one process (tests/fleet.py).

The device learns of a new key from the 2.04 of a POST (CBOR {"cred": true}), GETs it from /credentials over its
authenticated session, stores it in its config file, closes the session and handshakes with the new key at once,
which retires the old one on the gateway. Measured figures are printed with a ``MEASURED`` prefix (pytest -s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
from fleet import Fleet, FleetDevice, handshake_all, load_main, write_config
from gateway_fixtures import MAIN, ROOT, WASM_RUNNER, Gateway, device_config, gateway, run_device, wait_rows
from iotdtls_gateway.devices import Credential
from iotdtls_gateway.registry import NewDevice, Registry
from mp_driver import UdpRelay
from peers import require_peer

from iotdtls.coap import client_context

NODE_MODULES = ROOT / "tests" / "mpwasm" / "node_modules" / "@micropython"
HINT = b"\xa1\x64cred\xf5"  # CBOR {"cred": true}
APP, ALERT, HANDSHAKE = 23, 21, 22
RECORD_OVERHEAD = 13 + 8 + 8  # DTLS record header, explicit nonce, CCM_8 tag

main = load_main()

# Each count is one boot of the board: main.main reads the config file again, as main.py does at power-on. After
# each, the file as MicroPython's file system holds it (WebAssembly: in memory, gone when the runner exits).
BOOTS = """\
import os
import sys

import main

cfg = sys.argv[1]
for count in sys.argv[2:]:
    print("exit", main.main(["main.py", cfg, "--count", count]))
    print("config", open(cfg).read())
print("left", [n for n in os.listdir(cfg.rsplit("/", 1)[0]) if n.endswith(".tmp")])
"""


def need_wasm() -> None:
    require_peer("node + tests/mpwasm/node_modules (npm ci --prefix tests/mpwasm)",
                 shutil.which("node") is not None and NODE_MODULES.is_dir())


def boots(tmp: Path, cfg: Path, *counts: int) -> list[str]:
    """The argv of the real MicroPython running main.py once per count (a board booted len(counts) times)."""
    script = tmp / "boots.py"
    script.write_text(BOOTS)
    return ["node", str(WASM_RUNNER), "--path", "micropython", str(script), str(cfg), *map(str, counts)]


def printed_configs(out: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("config "):]) for line in out.splitlines() if line.startswith("config ")]


def registry(gw: Gateway) -> Registry:
    return Registry(gw.data / "registry.sqlite3")


def wait_reload(gw: Gateway, before: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(gw.log_events("registry_reloaded")) <= before:
        assert time.monotonic() < deadline, "the gateway did not reload its registry"
        time.sleep(0.05)


def rotate(gw: Gateway, *devices: str, grace: float) -> dict[str, bytes]:
    """Registry.rotate (what `iotdtls-provision rotate DEVICE --grace` does); returns when the gateway reloaded.
    {device: new psk}."""
    before = len(gw.log_events("registry_reloaded"))
    with registry(gw) as r:
        keys = {d: r.rotate(d, grace=grace)[1] for d in devices}
    wait_reload(gw, before)
    return keys


def generations(gw: Gateway, device: str) -> list[Credential]:
    with registry(gw) as r:
        return sorted(r.get(device).credentials, key=lambda c: c.generation)


def handshake(port: int, identity: str, psk: bytes) -> Any:
    """One handshake with the device's DTLS client; the client, established or closed with .error."""
    (client,) = handshake_all(main.coaps.dtls, port, [(identity.encode(), psk)], timeout=10)
    return client


def copy_db(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite database (WAL included), over ``dst`` if it exists."""
    with contextlib.closing(sqlite3.connect(src)) as a, contextlib.closing(sqlite3.connect(dst)) as b:
        a.backup(b)


def when(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def is_subsequence(want: list[str], got: list[str]) -> bool:
    it = iter(got)
    return all(any(g == w for g in it) for w in want)


async def _coap(port: int, identity: str, psk: bytes, method: aiocoap.numbers.codes.Code, path: str,
                payload: bytes = b"") -> aiocoap.Message:
    ctx = await client_context({f"coaps://127.0.0.1:{port}/*": {"dtls": {"psk": {"hex": psk.hex()},
                                                                          "client-identity": {"ascii": identity}}}})
    try:
        request = aiocoap.Message(code=method, uri=f"coaps://127.0.0.1:{port}/{path}", payload=payload)
        if payload:
            request.opt.content_format = 60
        return await asyncio.wait_for(ctx.request(request).response, 20)
    finally:
        await ctx.shutdown()


# --------------------------------------------------------------------------------------------------
# one device, the real MicroPython
# --------------------------------------------------------------------------------------------------


@pytest.mark.interop
def test_device_learns_its_new_key_from_the_hint_and_keeps_posting(tmp_path: Path) -> None:
    """A provisioned board posts every 0.25 s; the device is rotated (7-day grace) while it posts. It learns the
    key from the next 2.04, fetches and stores it, and its next reading handshakes with it: no reading is lost,
    the old key is retired at once (not after 7 days) and refused from then on. A second boot of the board reads
    the stored key and uses it directly."""
    need_wasm()
    with gateway(tmp_path) as gw:
        cfg = device_config(gw.provision("board-1"), host="127.0.0.1", port=gw.port, interval=0.25)
        first = json.loads(cfg.read_text())
        old_psk = bytes.fromhex(first["psk"])
        proc = subprocess.Popen(boots(tmp_path, cfg, 24, 3), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=str(ROOT))
        try:
            assert len(wait_rows(gw, 4, timeout=60)) >= 4, "the board did not start posting"
            rotated_at = time.time()
            new_psk = rotate(gw, "board-1", grace=7 * 86400)["board-1"]
            out, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
        lines = out.splitlines()
        assert proc.returncode == 0 and lines.count("exit 0") == 2, out + err
        assert [line for line in lines if line.startswith("key ")] == ["key board-1#2 stored"], out
        hinted_after = lines.index("key board-1#2 stored")  # the "2.04" lines before it: readings on the old key
        assert lines.count("2.04") == 27  # every reading of both boots answered
        # where and how the key is stored: the config file, atomically (no temp file left), the old key kept
        stored, after_reboot = printed_configs(out)
        for kept in (stored, after_reboot):
            kept.pop("session", None)  # the DTLS session kept for resumption (issue 18): new at every handshake
        assert stored == {**first, "identity": "board-1#2", "psk": new_psk.hex(), "old_identity": "board-1",
                          "old_psk": first["psk"]}
        assert after_reboot == stored and "left []" in lines
        # none lost: every reading answered 2.04 is in the spool, once
        envelopes = gw.envelopes()
        assert [(e["device"], e["data"]["seq"]) for e in envelopes] == [("board-1", n) for n in
                                                                         [*range(1, 25), 1, 2, 3]]
        assert len({e["id"] for e in envelopes}) == 27
        # the gateway: one fetch, then at once a handshake with the new key, which retired the old one
        (fetched,) = gw.log_events("key_fetched")
        assert (fetched["device"], fetched["identity"]) == ("board-1", "board-1#2")
        handshakes = gw.log_events("handshake")
        assert [h["device"] for h in handshakes] == ["board-1"] * 3  # old key, new key, new key after the reboot
        assert 0 <= when(handshakes[1]) - when(fetched) < 2.0
        assert gw.log_events("session_ended") == []  # the board closed its old session itself (close_notify)
        old, new = generations(gw, "board-1")
        assert (old.label, new.label) == ("board-1", "board-1#2")
        assert old.first_used_at is not None and old.retired_at is not None and new.retired_at is None
        assert new.first_used_at is not None and rotated_at <= new.first_used_at == old.retired_at
        assert old.not_after is not None and old.not_after > time.time() + 6 * 86400  # retired by use, not by time
        with registry(gw) as r:
            actions = [h.action for h in r.history("board-1")]
        assert is_subsequence(["added", "credential_used", "rotated", "credential_used", "credential_retired"],
                              actions), actions
        # afterwards the old key is refused; the new one works
        refused = handshake(gw.port, "board-1", old_psk)
        assert not refused.established and refused.error == 20  # bad_record_mac
        assert handshake(gw.port, "board-1#2", new_psk).established
        print(f"\nMEASURED one board (WebAssembly MicroPython): {hinted_after - lines.index('2.04')} readings on the "
              f"old key, then the hint; handshake with the new key "
              f"{when(handshakes[1]) - when(fetched):.3f} s after the fetch; 27/27 readings stored")


@pytest.mark.interop
def test_fallback_to_the_old_key_when_the_gateway_lost_the_rotation(tmp_path: Path) -> None:
    """The gateway's registry is restored from a backup taken before the rotation: the board's stored new key is
    unknown there (bad_record_mac). The board handshakes again at once with its old key, for the same reading,
    stores that swap, and posts on."""
    need_wasm()
    gw = Gateway(tmp_path)
    gw.start()
    try:
        cfg = device_config(gw.provision("board-2"), host="127.0.0.1", port=gw.port, interval=0.1)
        first = json.loads(cfg.read_text())
        backup = tmp_path / "registry-backup.sqlite3"
        copy_db(gw.data / "registry.sqlite3", backup)
        new_psk = rotate(gw, "board-2", grace=86400)["board-2"]
        r = subprocess.run(boots(tmp_path, cfg, 3), capture_output=True, text=True, timeout=120, cwd=str(ROOT))
        assert r.returncode == 0 and "key board-2#2 stored" in r.stdout, r.stdout + r.stderr
        (stored,) = printed_configs(r.stdout)
        assert (stored["identity"], stored["psk"]) == ("board-2#2", new_psk.hex())
        cfg.write_text(json.dumps(stored))  # the board's flash, as it was when the gateway lost the rotation
        gw.stop()
        copy_db(backup, gw.data / "registry.sqlite3")
        gw.start()
        r = subprocess.run(boots(tmp_path, cfg, 3, 2), capture_output=True, text=True, timeout=120, cwd=str(ROOT))
        lines = r.stdout.splitlines()
        assert r.returncode == 0 and lines.count("exit 0") == 2, r.stdout + r.stderr
        assert lines[:4] == ["key board-2#2 refused, back to board-2", "2.04", "2.04", "2.04"], r.stdout
        swapped, second_boot = printed_configs(r.stdout)
        for kept in (swapped, second_boot):
            kept.pop("session", None)  # the DTLS session kept for resumption: new at every handshake
        assert swapped == {**first, "old_identity": "board-2#2", "old_psk": new_psk.hex()}
        assert second_boot == swapped and lines.count("2.04") == 5  # the second boot uses the old key directly
        assert [c.label for c in generations(gw, "board-2")] == ["board-2"]
        assert [e["data"]["seq"] for e in gw.envelopes()] == [1, 2, 3, 1, 2, 3, 1, 2]
    finally:
        if gw.proc is not None:
            gw.proc.stop()


# --------------------------------------------------------------------------------------------------
# main.py on CPython: the file on disk, and the exchange on the wire
# --------------------------------------------------------------------------------------------------


def test_cpython_main_stores_the_key_in_its_config_file_and_the_wire(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw:
        # no connection ID: the wire checks below read the content type of each record (a CID hides it)
        cfg = device_config(gw.provision("sensor-1"), host="127.0.0.1", port=gw.port, interval=0.05, cid=False)
        first = json.loads(cfg.read_text())
        old_psk = bytes.fromhex(first["psk"])
        new_psk = rotate(gw, "sensor-1", grace=3600)["sensor-1"]
        # what the gateway sends, decoded by aiocoap over the device's (old) credential
        answer = asyncio.run(_coap(gw.port, "sensor-1", old_psk, aiocoap.POST, "telemetry?k=probe.1",
                                   cbor2.dumps({"probe": 1})))
        assert (answer.code, answer.payload, answer.opt.content_format) == (aiocoap.CHANGED, HINT, 60)
        answer = asyncio.run(_coap(gw.port, "sensor-1", old_psk, aiocoap.GET, "credentials"))
        body = cbor2.loads(answer.payload)
        assert answer.code == aiocoap.CONTENT and answer.opt.content_format == 60
        assert list(body) == ["identity", "psk", "not_before"]
        assert (body["identity"], body["psk"]) == ("sensor-1#2", new_psk) and isinstance(body["not_before"], float)
        assert main.cbor.loads(answer.payload) == body  # the device's decoder
        credentials_bytes = answer.payload
        with UdpRelay(gw.port) as relay:
            device_config(cfg, port=relay.port, interval=0.05)
            r = subprocess.run([sys.executable, str(MAIN), str(cfg), "--count", "4"],
                               capture_output=True, text=True, timeout=60, cwd=str(ROOT))
            time.sleep(0.2)
        # the key line comes as the first reading's exchange ends (its GET included), before its "2.04"
        assert r.returncode == 0 and r.stdout.splitlines() == ["key sensor-1#2 stored", "2.04", "2.04", "2.04",
                                                                "2.04"], r.stdout + r.stderr
        on_disk = json.loads(cfg.read_text())
        assert on_disk.pop("session")  # the DTLS session kept for resumption (issue 18)
        assert on_disk == {**first, "port": relay.port, "identity": "sensor-1#2", "psk": new_psk.hex(),
                           "old_identity": "sensor-1", "old_psk": old_psk.hex()}
        assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
        assert not list(tmp_path.glob("*.tmp"))
        # the wire: POST, 2.04 with the hint, GET, 2.05 with the key, close_notify, then the new handshake
        log = [(way, d) for _, way, d in relay.log]
        close = next(i for i, (way, d) in enumerate(log) if way == "c2s" and d[0] == ALERT)
        tail = [(way, d[0], len(d)) for way, d in log[close - 4:close + 1]]
        assert [(w, t) for w, t, _ in tail] == [("c2s", APP), ("s2c", APP), ("c2s", APP), ("s2c", APP), ("c2s", ALERT)]
        # then the gateway's own close_notify, and the device's ClientHello of the session with the new key
        assert [(way, d[0]) for way, d in log[close + 1:close + 3]] == [("s2c", ALERT), ("c2s", HANDSHAKE)]
        sizes = [n for _, _, n in tail]
        # 2.04: 4-byte header, 4-byte token, Content-Format 60 (2 bytes), 0xff, the 7-byte map
        assert sizes[1] - RECORD_OVERHEAD == 4 + 4 + 2 + 1 + len(HINT)
        # GET: header, token, Uri-Path "credentials" (1 + 11 bytes); 2.05: header, token, Content-Format, 0xff, map
        assert sizes[2] - RECORD_OVERHEAD == 4 + 4 + 12
        assert sizes[3] - RECORD_OVERHEAD == 4 + 4 + 2 + 1 + len(credentials_bytes)
        assert sizes[4] == RECORD_OVERHEAD + 2  # close_notify
        print(f"\nMEASURED rotation on the wire: hint {HINT.hex()} ({len(HINT)} B) in a {sizes[1]} B record; GET "
              f"/credentials {sizes[2]} B; answer {len(credentials_bytes)} B of CBOR "
              f"({credentials_bytes[:31].hex()}...) in a {sizes[3]} B record; close_notify {sizes[4]} B")


def test_load_config_reads_the_temp_file_when_a_fat_rename_was_cut(tmp_path: Path) -> None:
    """On FAT, MicroPython renames over a file by removing it first; a power cut in between leaves only
    config.json.tmp, complete. The next boot reads it (and stores later changes under the real name)."""
    cfg = write_config(tmp_path / "config.json.tmp", host="h", port=1, identity="d#2", psk="00" * 16)
    loaded = main.load_config(str(tmp_path / "config.json"))
    assert loaded["identity"] == "d#2" and loaded["_file"] == str(tmp_path / "config.json")
    assert cfg.exists()


# --------------------------------------------------------------------------------------------------
# 200 devices
# --------------------------------------------------------------------------------------------------


def test_rotate_200_devices_while_they_post(tmp_path: Path) -> None:
    """200 devices post a reading a second each (main.py's session and rotation code, one process); all 200 are
    rotated while they post. 0 failed handshakes, 0 lost acknowledged readings; every device stored its new key in
    its config file and handshakes with it after a reboot; the old keys are refused."""
    n_dev, interval = 200, 1.0
    with gateway(tmp_path) as gw:
        before = len(gw.log_events("registry_reloaded"))
        with registry(gw) as r:
            added = r.add_devices([NewDevice(f"fleet-{i:03d}") for i in range(n_dev)])
        wait_reload(gw, before)
        (tmp_path / "devices").mkdir()
        files = {d.id: write_config(tmp_path / "devices" / f"{d.id}.json", host="127.0.0.1", port=gw.port,
                                    identity=d.id, psk=psk.hex(), interval=interval, ack_timeout=1.0,
                                    retransmit_initial=1.0, handshake_timeout=60, backoff_max=2)
                 for d, psk in added if psk is not None}
        old_keys = {d.id: psk for d, psk in added if psk is not None}
        devices = [FleetDevice(main, name, path, os.urandom) for name, path in files.items()]
        fleet = Fleet(devices)
        try:
            assert fleet.run(lambda: all(len(d.acked) >= 2 for d in devices), 60, ramp=interval), "warm-up"
            warm = {d.name: len(d.acked) for d in devices}
            done: dict[str, float] = {}

            def rotate_all() -> None:
                with registry(gw) as r:
                    t = time.monotonic()
                    for d in devices:
                        r.rotate(d.name, grace=3600)
                    done["registry"] = time.monotonic() - t

            t0, at = time.monotonic(), fleet.now()
            rotator = threading.Thread(target=rotate_all)
            rotator.start()
            rotated = fleet.run(lambda: not rotator.is_alive() and all(
                d.new_at is not None and len(d.acked) >= warm[d.name] + 3 for d in devices), 120)
            elapsed = time.monotonic() - t0
            rotator.join()
            assert rotated, [d.name for d in devices if d.new_at is None][:10]
            fleet.run(lambda: all(d.idle() for d in devices), 30)
        finally:
            fleet.close()
        time.sleep(0.3)  # the last close_notify and commits
        last_new = max(d.new_at or 0 for d in devices) - at
        hs = [d.handshakes() for d in devices]
        completed, failed = sum(h[0] for h in hs), sum(h[1] for h in hs)
        acked = {(d.name, n) for d in devices for n in d.acked}
        envelopes = gw.envelopes()
        stored = [(e["device"], e["data"]["seq"]) for e in envelopes]
        gateway_failures = [line for line in gw.proc.stderr.lines if "session or handshake from" in line] \
            if gw.proc else []
        assert failed == 0, [d.failures() for d in devices if d.failures()][:5]
        # one handshake on the old key and one on the new; more only where main.py resent a request on a new session
        # because the gateway stayed silent for 3 ACK timeouts (a loaded CI machine: a slow fsync or a long pause).
        # Those are counted and bounded; the idempotency key keeps them from storing a reading twice (checked below).
        renewals = sum(d.renewals for d in devices)
        assert renewals <= n_dev // 20, renewals
        odd = [(d.name, d.handshakes(), d.renewals, d.answers[-4:], d.failures()) for d in devices
               if d.handshakes() != (2 + d.renewals, 0)]
        assert completed == 2 * n_dev + renewals and odd == [], odd[:5]
        assert len(gw.log_events("handshake")) == completed and gateway_failures == []
        assert acked <= set(stored), sorted(acked - set(stored))[:10]  # 0 lost acknowledged readings
        assert all(a[1] == "2.04" for d in devices for a in d.answers)
        assert len(stored) == len(set(stored)) == len(acked)  # and none stored twice
        assert [d.lines for d in devices] == [[f"key {d.name}#2 stored"] for d in devices]
        assert len(gw.log_events("key_fetched")) == n_dev
        for d in devices:
            on_disk = json.loads(files[d.name].read_text())
            assert (on_disk["identity"], on_disk["old_identity"], on_disk["old_psk"]) == (
                f"{d.name}#2", d.name, old_keys[d.name].hex())
        with registry(gw) as r:
            for device in r.devices():
                old, new = sorted(device.credentials, key=lambda c: c.generation)
                assert old.retired_at is not None and new.first_used_at is not None and new.retired_at is None
                assert not device.stale(time.time())
        # a reboot: every device reads its config file and handshakes with the new key
        t1 = time.monotonic()
        again = [FleetDevice(main, name, path, os.urandom) for name, path in files.items()]
        for d in again:
            d.limit = 1
        fleet = Fleet(again)
        try:
            assert fleet.run(lambda: all(d.done() for d in again), 60, ramp=0.5)
        finally:
            fleet.close()
        assert all(d.session.identity == f"{d.name}#2".encode() and d.handshakes() == (1 + d.renewals, 0)
                   and d.lines == [] for d in again)
        assert sum(d.renewals for d in again) <= n_dev // 20
        reboot = time.monotonic() - t1
        # the old keys are refused
        t2 = time.monotonic()
        creds = [(k.encode(), v) for k, v in old_keys.items()]
        refused = [c for i in range(0, n_dev, 20) for c in handshake_all(main.coaps.dtls, gw.port, creds[i:i + 20])]
        assert [c.error for c in refused] == [20] * n_dev and not any(c.established for c in refused)
        refusal = time.monotonic() - t2
        print(f"\nMEASURED rotate {n_dev} devices posting every {interval:g} s: registry.rotate x{n_dev} "
              f"{done['registry']:.2f} s; every device on its new key {last_new:.2f} s after the rotation began "
              f"(phase {elapsed:.2f} s); handshakes {completed} completed ({renewals} after a silence), {failed} "
              f"failed; readings {len(acked)} acknowledged, {len(stored)} stored, 0 lost, 0 twice; reboot of {n_dev} "
              f"on the stored keys {reboot:.2f} s; {n_dev} old keys refused (bad_record_mac) in {refusal:.2f} s")


# --------------------------------------------------------------------------------------------------
# a device asleep through the grace period
# --------------------------------------------------------------------------------------------------


@pytest.mark.interop
def test_device_asleep_through_the_grace_period_is_locked_out_and_stale(tmp_path: Path) -> None:
    """Two boards are rotated with a 4 s grace period: the awake one posts during it and moves to its new key; the
    other sleeps through it. Its old key has expired and it never fetched the new one: its handshake is refused,
    and the registry reports it stale (what `iotdtls-provision list --stale` will show), the awake one not."""
    need_wasm()
    grace = 4.0
    with gateway(tmp_path) as gw:
        sleeper = device_config(gw.provision("sleeper"), host="127.0.0.1", port=gw.port, tries=1,
                                handshake_timeout=5)
        awake = device_config(gw.provision("awake"), host="127.0.0.1", port=gw.port, interval=0.2)
        for cfg in (sleeper, awake):  # both in use before the rotation
            assert run_device(cfg, 1, wasm=True).returncode == 0
        t0 = time.time()
        rotate(gw, "sleeper", "awake", grace=grace)
        r = run_device(awake, 3, wasm=True)
        assert r.returncode == 0 and "key awake#2 stored" in r.stdout, r.stdout + r.stderr
        assert time.time() < t0 + grace, "the awake board posted after the grace period: make it longer"
        with registry(gw) as reg:
            assert {d.id: d.stale(time.time()) for d in reg.devices()} == {"awake": False, "sleeper": False}
        time.sleep(max(0.0, t0 + grace + 0.5 - time.time()))
        r = run_device(sleeper, 1, wasm=True)  # it wakes up
        assert r.returncode == 1 and "fatal alert 20 (bad_record_mac)" in r.stdout, r.stdout + r.stderr
        now = time.time()
        with registry(gw) as reg:
            devices = {d.id: d for d in reg.devices()}
        assert {name: d.stale(now) for name, d in devices.items()} == {"awake": False, "sleeper": True}
        assert devices["sleeper"].describe(now)["stale"] is True
        old, new = sorted(devices["sleeper"].credentials, key=lambda c: c.generation)
        assert old.first_used_at is not None and not old.valid_at(now) and old.retired_at is None  # expired
        assert new.first_used_at is None and new.valid_at(now)  # still there for a re-provisioning
        assert [e["device"] for e in gw.envelopes()] == ["sleeper", "awake", "awake", "awake", "awake"]


def test_a_session_on_a_key_whose_grace_period_ended_is_ended(tmp_path: Path) -> None:
    """A device with a session open through the whole grace period, posting nothing in it (its interval is longer),
    is locked out like a sleeping one: the gateway should end that session when its key expires (as it does when a
    key is retired), so that the device's next reading meets the refused handshake, not a 4.03 on a live session."""
    with gateway(tmp_path) as gw:
        before = len(gw.log_events("registry_reloaded"))
        with registry(gw) as r:
            ((_, psk),) = r.add_devices([NewDevice("idle-1")])
        wait_reload(gw, before)
        assert psk is not None
        path = write_config(tmp_path / "idle-1.json", host="127.0.0.1", port=gw.port, identity="idle-1",
                            psk=psk.hex(), interval=3600, ack_timeout=0.5, retransmit_initial=0.5)
        dev = FleetDevice(main, "idle-1", path, os.urandom)
        fleet = Fleet([dev])
        try:
            assert fleet.run(lambda: dev.acked == [1], 10)
            rotate(gw, "idle-1", grace=1.0)
            fleet.run(lambda: False, 2.5)  # idle through the grace period, listening
            dev.next_at = 0  # the next reading
            fleet.run(lambda: len(dev.answers) == 2, 20)
        finally:
            fleet.close()
        assert dev.answers[1][1] != "4.03", dev.answers
        assert gw.log_events("session_ended"), "the gateway did not end the session of the expired key"
