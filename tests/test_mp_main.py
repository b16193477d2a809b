"""The device firmware entry point (micropython/main.py) run by CPython: as a real process with real UDP sockets
against ``iotdtls.cli.coap_server`` (and through ``iotdtls.cli.netem``), and imported in-process for its helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cbor2
import pytest
from mp_driver import UdpRelay
from mp_fixtures import (
    KEY_HEX,
    bounded_wait_on_wire,
    key_lines,
    key_server,
    parse_key,
    telemetry_server,
    write_credentials,
)
from peers import LOCALHOST, PeerProcess, free_udp_port, netem_proxy

REPO = Path(__file__).resolve().parent.parent
MP_DIR = REPO / "micropython"
MAIN = MP_DIR / "main.py"
WRONG_HEX = "0f0e0d0c0b0a09080706050403020100"


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    return write_credentials(tmp_path)




def config(tmp_path: Path, port: int, **extra: object) -> Path:
    cfg = {"host": LOCALHOST, "port": port, "identity": "dev1", "psk": KEY_HEX, "interval": 0}
    cfg.update(extra)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def run_main(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(MAIN), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO))


def readings(server: PeerProcess, n: int, timeout: float = 5.0) -> list[dict[str, object]]:
    return [json.loads(server.read_line(timeout)) for _ in range(n)]


def sessions(server: PeerProcess) -> int:
    return server.stderr.text().count("DTLS session with")


# --------------------------------------------------------------------------------------------------
# main.py as a process against the real CoAPs server
# --------------------------------------------------------------------------------------------------


@pytest.mark.interop
def test_count_3_one_session(tmp_path, creds):
    port = free_udp_port()
    with telemetry_server(port, creds) as server:
        p = run_main(str(config(tmp_path, port)), "--count", "3")
        assert p.returncode == 0, p
        assert p.stdout.splitlines() == ["2.04", "2.04", "2.04"]
        got = readings(server, 3)
        assert [r["from"] for r in got] == ["dev1"] * 3
        assert [r["reading"]["seq"] for r in got] == [1, 2, 3]  # type: ignore[index]
        assert all(isinstance(r["reading"]["uptime"], int) for r in got)  # type: ignore[index]
        server.stop()
        assert sessions(server) == 1, server.transcript()


@pytest.mark.interop
def test_echo_path_and_put(tmp_path, creds):
    port = free_udp_port()
    with telemetry_server(port, creds):
        p = run_main(str(config(tmp_path, port, path="echo", method="PUT")), "--count", "2")
        assert (p.returncode, p.stdout.splitlines()) == (0, ["2.05", "2.05"]), p


@pytest.mark.interop
def test_wrong_psk(tmp_path, creds):
    port = free_udp_port()
    with telemetry_server(port, creds) as server:
        cfg = config(tmp_path, port, psk=WRONG_HEX, tries=2, backoff_max=0.2, handshake_timeout=5,
                     retransmit_initial=0.5)
        t0 = time.monotonic()
        p = run_main(str(cfg), "--count", "3")
        elapsed = time.monotonic() - t0
        assert p.returncode == 1, p
        assert p.stdout.splitlines() == [
            "error: reading 1 not answered after 2 attempt(s): fatal alert 20 (bad_record_mac)"], p
        assert p.stderr == ""
        assert elapsed < 5
        server.stop()
        assert sessions(server) == 0 and server.stdout.lines == []


@pytest.mark.interop
def test_nobody_listening(tmp_path):
    # the device's socket is connected, so Linux reports the ICMP port unreachable: a clear error at once
    port = free_udp_port()  # nothing is bound there
    cfg = config(tmp_path, port, handshake_timeout=2, retransmit_initial=0.5, tries=2, backoff_max=0.2)
    t0 = time.monotonic()
    p = run_main(str(cfg), "--count", "1")
    elapsed = time.monotonic() - t0
    assert p.returncode == 1, p
    assert p.stdout.splitlines() == [
        "error: reading 1 not answered after 2 attempt(s): network error 111 (connection refused)"]
    assert elapsed < 1.5


@pytest.mark.interop
def test_silent_server_handshake_timeout(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:  # bound, reads nothing, answers nothing
        sink.bind((LOCALHOST, 0))
        cfg = config(tmp_path, sink.getsockname()[1], handshake_timeout=2, retransmit_initial=0.5, tries=1)
        t0 = time.monotonic()
        p = run_main(str(cfg), "--count", "1")
        elapsed = time.monotonic() - t0
    assert p.returncode == 1, p
    assert p.stdout.splitlines() == ["error: reading 1 not answered after 1 attempt(s): handshake timeout"]
    assert 2.0 <= elapsed < 4.0


@pytest.mark.interop
@pytest.mark.parametrize("how", ["kill", "term"])
def test_server_restart_between_readings(tmp_path, creds, how, capsys):
    """The gateway restarts between readings 1 and 2: killed (its sessions vanish silently, so the device finds out
    only when reading 2 goes unanswered) or terminated (it may say close_notify first)."""
    port = free_udp_port()
    interval, ack_timeout = 2.0, 0.1  # the interval leaves time to start the new server
    cfg = config(tmp_path, port, interval=interval, ack_timeout=ack_timeout, backoff_max=0.2,
                 retransmit_initial=0.5, handshake_timeout=10, tries=3)
    with telemetry_server(port, creds) as first:
        dev = PeerProcess("main.py", [sys.executable, str(MAIN), str(cfg), "--count", "3"], cwd=str(REPO))
        try:
            assert dev.read_line(10) == "2.04"
            t1 = time.monotonic()
            assert readings(first, 1)[0]["reading"]["seq"] == 1  # type: ignore[index]
            if how == "kill":
                first.proc.kill()
            first.stop()
            with telemetry_server(port, creds) as second:
                restarted = time.monotonic() - t1
                assert restarted < interval, "the new server must be up before reading 2"
                assert dev.read_line(15) == "2.04"
                t2 = time.monotonic()
                assert dev.read_line(10) == "2.04"
                assert dev.wait_exit(10) == 0, dev.transcript()
                got = readings(second, 2)
                assert [r["reading"]["seq"] for r in got] == [2, 3]  # type: ignore[index]
                second.stop()
                assert sessions(second) == 1, second.transcript()
        finally:
            dev.stop()
    recovery = t2 - t1 - interval
    with capsys.disabled():
        print(f"\n[restart by {how}] reading 2 answered {recovery:.2f} s after it was due "
              f"(ack_timeout {ack_timeout}: a session silent through the CON and one retransmission is "
              f"replaced at the 2nd, 3 x ack_timeout x [1, 1.5] = {3 * ack_timeout:.1f}..{4.5 * ack_timeout:.2f} s)")
    if how == "kill":
        assert 3 * ack_timeout * 0.95 <= recovery < 4.5 * ack_timeout + 1.5
    else:  # the server's close_notify ends the session at once; the reading still waits for its interval
        assert -0.05 <= recovery < 4.5 * ack_timeout + 1.5


@pytest.mark.interop
def test_loss_30_percent_through_netem(tmp_path, creds, capsys):
    port, proxy_port = free_udp_port(), free_udp_port()
    # a reading whose 5 transmissions all go unanswered (p ~ 0.51^5) costs 31 x 0.15 x [1, 1.5] s, then a retry
    cfg = config(tmp_path, proxy_port, ack_timeout=0.15, retransmit_initial=0.3, handshake_timeout=10,
                 backoff_max=0.3, tries=5)
    with (telemetry_server(port, creds) as server,
          netem_proxy(proxy_port, port, "--loss", "0.3", "--seed", "7") as netem):
        t0 = time.monotonic()
        p = run_main(str(cfg), "--count", "5", timeout=40)
        elapsed = time.monotonic() - t0
        assert p.returncode == 0, (p, netem.transcript())
        assert p.stdout.splitlines() == ["2.04"] * 5
        server.stop()
        seqs = [json.loads(line)["reading"]["seq"] for line in server.stdout.lines]
        assert set(seqs) == {1, 2, 3, 4, 5}
        netem.stop()
        lost = netem.stderr.text().count("LOST")
        assert lost > 0, netem.transcript()
        with capsys.disabled():
            print(f"\n[netem 30% loss] 5 readings answered in {elapsed:.1f} s, {lost} datagrams lost, "
                  f"{sessions(server)} DTLS session(s)")


# --------------------------------------------------------------------------------------------------
# the idempotency key, and the bounded wait for a separate response (tests/mp_query_server.py records the keys)
# --------------------------------------------------------------------------------------------------

SEPARATE_WAIT = 3  # coaps.SEPARATE_WAIT
ACK_T = 0.5  # the device's ack_timeout in these tests: the wait for a separate response is bounded at 1.5 s


@pytest.mark.interop
def test_key_per_reading_and_per_boot(tmp_path, creds):
    port = free_udp_port()
    with key_server(port, creds) as server:
        boots = []
        for _ in range(2):  # two boots of the device
            p = run_main(str(config(tmp_path, port)), "--count", "3")
            assert (p.returncode, p.stdout.splitlines()) == (0, ["2.04"] * 3), p
            got = key_lines(server, 3)
            keys = [parse_key(m["query"]) for m in got]  # type: ignore[arg-type]
            assert [seq for _, seq in keys] == [m["reading"]["seq"] for m in got] == [1, 2, 3]  # type: ignore[index]
            assert len({boot for boot, _ in keys}) == 1
            boots.append(keys[0][0])
        assert boots[0] != boots[1]


@pytest.mark.interop
def test_key_false_sends_no_query(tmp_path, creds):
    port = free_udp_port()
    with key_server(port, creds) as server:
        p = run_main(str(config(tmp_path, port, key=False)), "--count", "2")
        assert (p.returncode, p.stdout.splitlines()) == (0, ["2.04"] * 2), p
        assert [m["query"] for m in key_lines(server, 2)] == [[], []]


@pytest.mark.interop
def test_no_separate_response_session_replaced_same_key(tmp_path, creds, capsys):
    """The server answers reading 1 with an empty ACK and never with the response: SEPARATE_WAIT x ack_timeout after
    the empty ACK the device closes the session, handshakes again and resends reading 1 with the same key and
    payload, which the same server answers; reading 2 has the next key. One attempt each (tries 1)."""
    port = free_udp_port()
    with key_server(port, creds, hang=1) as server, UdpRelay(port) as relay:
        cfg = config(tmp_path, relay.port, ack_timeout=ACK_T, tries=1)
        t0 = time.monotonic()
        p = run_main(str(cfg), "--count", "2")
        took = time.monotonic() - t0
        assert (p.returncode, p.stdout.splitlines()) == (0, ["2.04"] * 2), (p, server.transcript())
        got = key_lines(server, 3)
        server.stop()
        assert sessions(server) == 2, server.transcript()
    assert [m["hang"] for m in got] == [True, False, False]
    keys = [parse_key(m["query"]) for m in got]  # type: ignore[arg-type]
    assert keys[0] == keys[1] and keys[2] == (keys[0][0], 2)
    assert got[0]["reading"] == got[1]["reading"]  # the same reading, resent
    assert got[0]["token"] != got[1]["token"] and got[0]["mid"] != got[1]["mid"]
    waited, sent, to_hello = bounded_wait_on_wire(relay.log)
    assert sent == 1  # no retransmission after the empty ACK
    assert SEPARATE_WAIT * ACK_T - 0.05 <= waited < SEPARATE_WAIT * ACK_T + 0.5
    assert to_hello < 0.1
    with capsys.disabled():
        print(f"\n[empty ACK, no response] session replaced {waited:.2f} s after the empty ACK (bound "
              f"{SEPARATE_WAIT} x {ACK_T} s); --count 2 took {took:.2f} s")


@pytest.mark.interop
def test_gateway_crash_after_empty_ack(tmp_path, creds, capsys):
    """The gateway sends the empty ACK for reading 1, then is killed (-9) and started again: the device replaces
    the session at the bound and the new gateway gets reading 1 with the key the first one saw."""
    port = free_udp_port()
    with UdpRelay(port) as relay:
        cfg = config(tmp_path, relay.port, ack_timeout=ACK_T, tries=1)
        with key_server(port, creds, hang=1) as first:
            dev = PeerProcess("main.py", [sys.executable, str(MAIN), str(cfg), "--count", "2"], cwd=str(REPO))
            try:
                [m1] = key_lines(first, 1, timeout=10)
                deadline = time.monotonic() + 2
                while not any(way == "s2c" and d[0] == 23 for _, way, d in relay.log):  # the empty ACK
                    assert time.monotonic() < deadline, first.transcript()
                    time.sleep(0.01)
                first.proc.kill()
                first.stop()
                t_down = time.monotonic()
                with key_server(port, creds) as second:
                    restart = time.monotonic() - t_down
                    assert dev.read_line(10) == "2.04"
                    assert dev.read_line(10) == "2.04"
                    assert dev.wait_exit(10) == 0, dev.transcript()
                    m2, m3 = key_lines(second, 2)
            finally:
                dev.stop()
    assert m1["hang"] and not m2["hang"]
    assert parse_key(m2["query"]) == parse_key(m1["query"]) and m2["reading"] == m1["reading"]  # type: ignore
    assert parse_key(m3["query"])[1] == 2  # type: ignore[arg-type]
    waited, sent, _ = bounded_wait_on_wire(relay.log)
    assert sent == 1 and SEPARATE_WAIT * ACK_T - 0.05 <= waited < SEPARATE_WAIT * ACK_T + 0.5
    with capsys.disabled():
        print(f"\n[crash after the empty ACK] gateway back after {restart:.2f} s; the device replaced the session "
              f"{waited:.2f} s after the empty ACK and resent reading 1 with its key")


# --------------------------------------------------------------------------------------------------
# configuration and usage errors: exit 2 and one line
# --------------------------------------------------------------------------------------------------


def _bad_configs(tmp_path: Path) -> dict[str, Path]:
    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    good = {"host": LOCALHOST, "port": 9, "identity": "dev1", "psk": KEY_HEX}
    return {
        "missing file": tmp_path / "nope.json",
        "not json": write("a.json", "{host: 1"),
        "missing psk": write("b.json", json.dumps({k: v for k, v in good.items() if k != "psk"})),
        "missing host": write("c.json", json.dumps({k: v for k, v in good.items() if k != "host"})),
        "psk not hex": write("d.json", json.dumps({**good, "psk": "zz"})),
        "empty psk": write("e.json", json.dumps({**good, "psk": ""})),
        "psk a number": write("f.json", json.dumps({**good, "psk": 5})),
        "a list": write("g.json", "[1, 2]"),
        "a number": write("h.json", "5"),
    }


@pytest.mark.parametrize("case", ["missing file", "not json", "missing psk", "missing host", "psk not hex",
                                  "empty psk", "psk a number", "a list", "a number"])
def test_bad_config_exit_2(tmp_path, case):
    path = _bad_configs(tmp_path)[case]
    p = run_main(str(path), "--count", "1")
    assert p.returncode == 2, p
    lines = p.stdout.splitlines()
    want = "error: cannot read config file " if case == "missing file" else "error: bad config file "
    assert len(lines) == 1 and lines[0].startswith(want + str(path)), p
    assert p.stderr == ""
    if case.startswith("missing ") and case != "missing file":
        assert lines[0].endswith(": " + case)


def test_identity_not_a_string_exit_2(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"host": LOCALHOST, "port": 9, "identity": 5, "psk": KEY_HEX}))
    p = run_main(str(path), "--count", "1")
    assert p.returncode == 2 and len(p.stdout.splitlines()) == 1 and p.stderr == "", p


@pytest.mark.parametrize("args", [["--count"], ["--count", "x"], ["--count", "1.5"]])
def test_bad_count_exit_2(tmp_path, args):
    cfg = config(tmp_path, 9)
    p = run_main(str(cfg), *args)
    assert p.returncode == 2, p
    assert p.stdout.splitlines() == ["usage: main.py [CONFIG.json] [--count N]"] and p.stderr == ""


def test_count_0_posts_nothing(tmp_path):
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCALHOST, port))
        p = run_main(str(config(tmp_path, port)), "--count", "0")
        sock.settimeout(0.1)
        with pytest.raises(TimeoutError):
            sock.recvfrom(2048)
    assert (p.returncode, p.stdout) == (0, "")


# --------------------------------------------------------------------------------------------------
# main.py imported in-process
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mp_main():
    if str(MP_DIR) not in sys.path:
        sys.path.insert(0, str(MP_DIR))
    spec = importlib.util.spec_from_file_location("mp_device_main", MAIN)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_load_config(mp_main, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"host": "gw", "port": 5684, "identity": "dev1", "psk": KEY_HEX}))
    cfg = mp_main.load_config(str(path))
    assert cfg["psk_bytes"] == bytes(range(16))
    assert cfg["path"] == "telemetry" and cfg["interval"] == 60
    path.write_text(json.dumps({"host": "gw", "port": 1, "identity": "d", "psk": "00ff", "path": "t/x",
                                "interval": 5}))
    cfg = mp_main.load_config(str(path))
    assert (cfg["psk_bytes"], cfg["path"], cfg["interval"]) == (b"\x00\xff", "t/x", 5)
    for missing in ("host", "port", "identity", "psk"):
        d = {"host": "gw", "port": 1, "identity": "d", "psk": "00"}
        del d[missing]
        path.write_text(json.dumps(d))
        with pytest.raises(ValueError, match="missing " + missing):
            mp_main.load_config(str(path))
    path.write_text(json.dumps({"host": "gw", "port": 1, "identity": "d", "psk": ""}))
    with pytest.raises(ValueError, match="empty psk"):
        mp_main.load_config(str(path))
    path.write_text(json.dumps({"host": "gw", "port": 1, "identity": "d", "psk": "0"}))
    with pytest.raises(ValueError):  # binascii.Error: odd length
        mp_main.load_config(str(path))
    with pytest.raises(OSError):
        mp_main.load_config(str(tmp_path / "nope.json"))


def test_reading(mp_main, monkeypatch):
    r = cbor2.loads(mp_main.reading(7, 12.9))
    assert r == {"uptime": 12, "seq": 7}
    assert isinstance(r["uptime"], int)
    big = cbor2.loads(mp_main.reading(70000, 10**6 + 0.5))
    assert big == {"uptime": 10**6, "seq": 70000}
    monkeypatch.setattr(mp_main, "sensor", lambda: 21.5)
    raw = mp_main.reading(1, 0)
    assert raw[0] == 0xA3  # a definite-length map of 3
    assert cbor2.loads(raw) == {"uptime": 0, "seq": 1, "temp": 21.5}


def test_sensor_none_on_cpython(mp_main):
    assert mp_main.sensor() is None


def test_clock_rebase(mp_main, monkeypatch):
    ticks = [1000]
    monkeypatch.setattr(mp_main, "ticks_ms", lambda: ticks[0])
    clock = mp_main.Clock()
    assert clock() == 0
    ticks[0] += 2500
    assert clock() == 2.5
    assert clock.rebase() == 2.5
    assert clock() == 0
    ticks[0] += 40
    assert clock() == 0.04


def test_clock_real_time(mp_main):
    clock = mp_main.Clock()
    time.sleep(0.02)
    assert 0.015 <= clock() < 1
    assert clock.rebase() >= 0.015 and clock() < 0.015


def test_timed_out(mp_main):
    t = mp_main._timed_out
    assert t(TimeoutError("timed out"))  # CPython's socket timeout
    assert t(OSError("timed out"))
    assert t(OSError(11, "EAGAIN"))  # MicroPython: EAGAIN, ETIMEDOUT (110, and 116 on some ports)
    assert t(OSError(110))
    assert t(OSError(116))
    assert not t(OSError(111, "ECONNREFUSED"))
    assert not t(OSError(101))
    assert not t(OSError())
    assert not t(ValueError("timed out"))


def test_timed_out_on_a_real_socket(mp_main):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCALHOST, 0))
        sock.settimeout(0.01)
        with pytest.raises(OSError) as info:
            sock.recvfrom(16)
    assert mp_main._timed_out(info.value)


def test_run_count_out_lines(mp_main, monkeypatch):
    """run_count's loop with a stand-in Device: tries, back-off pauses, interval pauses and the lines."""

    class Msg:
        code = 68

    script = [("error", "no response"), ("ok", Msg()), ("ok", Msg())]
    pauses: list[float] = []

    class FakeSession:
        def delay(self):
            return 1.5

    class FakeDevice:
        def __init__(self, cfg, out=print):
            self.session = FakeSession()
            self.closed = False
            self.reboot = False

        def post(self, n):
            return script.pop(0)

        def pause(self, s):
            pauses.append(s)

        def close(self):
            self.closed = True

    monkeypatch.setattr(mp_main, "Device", FakeDevice)
    out: list[str] = []
    assert mp_main.run_count({"interval": 9, "tries": 2}, 2, out=out.append) == 0
    assert out == ["2.04", "2.04"] and pauses == [1.5, 9]
    script[:] = [("error", "handshake timeout")] * 2
    out.clear()
    assert mp_main.run_count({"interval": 9, "tries": 2}, 1, out=out.append) == 1
    assert out == ["error: reading 1 not answered after 2 attempt(s): handshake timeout"]


def test_run_forever_board_loop(mp_main, monkeypatch):
    """The board loop: a line per reading, interval after a success, back-off (at least 1 s) after a failure, and
    a crash restarts the loop with a new Device after 10 s instead of ending it."""

    class Msg:
        code = 68

    script: list[object] = [("ok", Msg()), ("error", "no response"), RuntimeError("boom"), ("ok", Msg())]
    pauses: list[float] = []
    made: list[object] = []
    slept: list[float] = []

    class FakeSession:
        def delay(self):
            return 0.25

    class FakeDevice:
        def __init__(self, cfg, out=print):
            self.session = FakeSession()
            self.closed = False
            self.reboot = False
            made.append(self)

        def post(self, n):
            step = script.pop(0)
            if isinstance(step, Exception):
                raise step
            return step

        def pause(self, s):
            pauses.append(s)

        def close(self):
            self.closed = True

    monkeypatch.setattr(mp_main, "Device", FakeDevice)
    monkeypatch.setattr(mp_main.time, "sleep", slept.append)
    out: list[str] = []
    mp_main.run_forever({"interval": 7}, out=out.append, limit=4)
    assert out == ["1 2.04", "2 no response", "3 crashed: RuntimeError('boom'); restarting the loop", "4 2.04"]
    assert pauses == [7, 1, 7] and slept == [10]
    assert len(made) == 2 and made[0].closed


def test_tickets_only_when_configured(mp_main):
    """Session tickets (RFC 5077) only with "tickets": true; by default the session ID resumes (a smaller hello)."""
    cfg = mp_main.load_config_dict({"host": "127.0.0.1", "port": 9, "identity": "d", "psk": "00"})
    for want in (False, True):
        if want:
            cfg["tickets"] = True
        s = mp_main.new_session(cfg, os.urandom)
        s._connect(0)
        assert s.conn.tickets is want and s.conn.pcid is None and s.conn.cid == b""  # CID offered by default


def test_network_error_text(mp_main):
    assert mp_main.network_error(OSError(111)) == "network error 111 (connection refused)"
    assert mp_main.network_error(OSError(-2)) == "network error -2 (unknown host)"
    assert mp_main.network_error(OSError(5)) == "network error 5"
    assert mp_main.network_error(OSError()).startswith("network error ")


def test_uptime_survives_tick_wraparound(mp_main, monkeypatch):
    # MicroPython's ticks_ms wraps at 2**30 ms (~12.4 days); ticks_diff is modular
    period = 1 << 30
    now = [period - 5_000]
    monkeypatch.setattr(mp_main, "ticks_ms", lambda: now[0] % period)
    monkeypatch.setattr(mp_main, "ticks_diff", lambda a, b: ((a - b + period // 2) % period) - period // 2)
    dev = mp_main.Device(mp_main.load_config_dict({"host": "127.0.0.1", "port": 9, "identity": "d", "psk": "00"}))
    seen = []
    for _ in range(40):  # 40 readings a day apart: more than three wraps
        now[0] += 86_400_000
        seen.append(dev.uptime())
    assert seen == [86_400 * (i + 1) for i in range(40)]


@pytest.mark.parametrize("bad", [{"port": 0}, {"port": 70000}, {"mtu": 40}, {"tries": 0}, {"interval": -1},
                                 {"ack_timeout": 0}, {"method": "GET"}, {"mtu": True}, {"key": 0},
                                 {"key": "false"}, {"tickets": 1}, {"cid": "no"}])
def test_config_ranges(mp_main, bad):
    cfg = {"host": "h", "port": 5684, "identity": "d", "psk": "00", **bad}
    with pytest.raises(ValueError):
        mp_main.load_config_dict(cfg)


def _cfg(mp_main, **extra):
    return mp_main.load_config_dict({"host": "127.0.0.1", "port": 9, "identity": "d", "psk": "00", **extra})


def test_key_format(mp_main):
    dev = mp_main.Device(_cfg(mp_main), rand=lambda n: bytes.fromhex("01abcdef" * 8)[:n])
    assert dev.boot == "01abcdef"
    assert [dev.key(n) for n in (1, 42, 4294967296)] == ["k=01abcdef.1", "k=01abcdef.42", "k=01abcdef.4294967296"]
    assert mp_main.Device(_cfg(mp_main, key=True)).key(3).startswith("k=")
    assert mp_main.Device(_cfg(mp_main, key=False)).key(3) is None


def test_boot_id_per_device(mp_main):
    boots = {mp_main.Device(_cfg(mp_main)).boot for _ in range(20)}  # os.urandom: 32 bits each
    assert len(boots) == 20 and all(len(b) == 8 and b == b.lower() and int(b, 16) >= 0 for b in boots)


def test_resent_reading_same_payload_and_key(mp_main, monkeypatch):
    """post(n) again (run_count's next attempt) sends the same reading: the payload measured the first time, the
    same key; post(n + 1) a new reading."""
    sent = []

    class FakeSession:
        result = ("ok", None)
        offer = swapped = None  # no key rotation
        saved = None  # no DTLS session to store

        def request(self, now, code, path, payload, cf, query=None):
            sent.append((payload, query))

        def timer(self):
            return None

    dev = mp_main.Device(_cfg(mp_main))
    dev.session = FakeSession()
    monkeypatch.setattr(dev, "_open", lambda: None)
    monkeypatch.setattr(dev, "_flush", lambda: None)
    monkeypatch.setattr(dev, "wait", lambda until: None)
    uptimes = iter([5, 70, 200])
    monkeypatch.setattr(dev, "uptime", lambda: next(uptimes))
    for n in (1, 1, 2):
        dev.post(n)
    assert [cbor2.loads(p) for p, _ in sent] == [{"uptime": 5, "seq": 1}, {"uptime": 5, "seq": 1},
                                                 {"uptime": 70, "seq": 2}]
    assert [q for _, q in sent] == [dev.key(1), dev.key(1), dev.key(2)]
