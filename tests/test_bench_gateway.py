"""``benchmarks/bench_gateway.py``: its simulated device against the sans-IO server with a fake clock (the CoAP
answers written here), and one small run of the whole benchmark against a real gateway and a real mosquitto."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from peers import mosquitto_binary, require_peer

from benchmarks.gateway_device import ACK_TIMEOUT, CHANGED, SimDevice, device_name, device_psk, reading
from iotdtls import DataReceived, DTLSConfiguration, DTLSServer
from iotdtls.coap import wire

ROOT = Path(__file__).resolve().parent.parent
ADDR = ("127.1.1.1", 40000)


class Log:
    """What the device told its owner: (ok, when) per reading, and when an idle session ended."""

    def __init__(self) -> None:
        self.done: list[tuple[bool, float]] = []
        self.ended: list[float] = []


class Net:
    """One SimDevice and a DTLSServer; ``answer`` decides what the server's application sends back."""

    def __init__(self) -> None:
        rng = random.Random(7)
        self.server = DTLSServer(DTLSConfiguration(is_client=False, psk_store={device_name(3).encode(): device_psk(3)},
                                                   random=rng.randbytes))
        self.log = Log()
        self.device = SimDevice(3, self, random.Random(1))
        self.now = 0.0
        self.requests: list[bytes] = []  # CoAP messages the server received
        self.mode = "piggyback"

    # the Listener protocol
    def done(self, device: SimDevice, ok: bool, now: float) -> None:
        self.log.done.append((ok, now))

    def session_ended(self, device: SimDevice, now: float) -> None:
        self.log.ended.append(now)

    def step(self, rounds: int = 10) -> None:
        for _ in range(rounds):
            for datagram in self.device.datagrams():
                self.server.receive_datagram(datagram, ADDR, self.now)
            while (item := self.server.next_event()) is not None:
                if isinstance(item[1], DataReceived):
                    self.requests.append(item[1].data)
                    self.answer(item[1].data)
            for datagram, _ in self.server.datagrams_to_send(self.now):
                self.device.receive(datagram, self.now)

    def answer(self, data: bytes) -> None:
        h = wire.scan_header(data)
        assert h is not None
        if h.mtype != wire.CON or not h.is_request or self.mode == "silent":
            return
        if self.mode == "piggyback":
            self.server.send(ADDR, wire.encode(wire.ACK, CHANGED, h.mid, h.token))
        else:  # an empty ACK, then the response as a CON of its own
            self.server.send(ADDR, wire.encode(wire.ACK, 0, h.mid, b""))
            self.server.send(ADDR, wire.encode(wire.CON, CHANGED, 0x7000, h.token))

    def advance(self, seconds: float, until: Callable[[], bool] = lambda: False) -> None:
        """Fire the device's timers for ``seconds`` of fake time, or until ``until()`` holds."""
        end = self.now + seconds
        while (t := self.device.timer()) is not None and t <= end and not until():
            self.now = max(self.now, t)
            self.device.on_timer(self.now)
            self.step()
        if not until():
            self.now = end


def test_reading_is_cbor() -> None:
    import cbor2

    for seq in (1, 23, 24, 255, 256, 65535, 65536):
        assert cbor2.loads(reading(seq)) == {"seq": seq, "temp": 21.5}


def test_device_handshakes_and_posts_with_its_key() -> None:
    net = Net()
    assert net.device.post(net.now)
    net.step()
    assert net.log.done == [(True, 0.0)] and net.device.handshakes == 1
    request = net.requests[0]
    h = wire.scan_header(request)
    assert h is not None and h.mtype == wire.CON and h.code == 2 and len(h.token) == 4
    assert b"telemetry" in request and f"k={net.device.boot}.1".encode() in request
    assert request.endswith(reading(1))
    assert net.device.post(net.now)
    net.step()
    assert [ok for ok, _ in net.log.done] == [True, True] and net.device.handshakes == 1  # the same session
    assert f"k={net.device.boot}.2".encode() in net.requests[1]


def test_separate_response_is_acknowledged_inside_the_session() -> None:
    net = Net()
    net.mode = "separate"
    net.device.post(net.now)
    net.step()
    assert net.log.done == [(True, 0.0)] and net.device.empty_acks == 1
    ack = wire.scan_header(net.requests[-1])  # the device's ACK of the CON response came through DTLS
    assert ack is not None and ack.mtype == wire.ACK and ack.code == 0 and ack.mid == 0x7000


def test_silence_means_retransmissions_then_a_new_session_then_back_off() -> None:
    net = Net()
    net.device.post(net.now)
    net.step()
    net.mode = "silent"
    net.device.post(net.now)
    net.step()
    net.advance(ACK_TIMEOUT * 1.5 + 0.01)  # one retransmission: the server answers nothing
    assert net.device.retransmissions == 1 and net.device.renewals == 0
    net.advance(ACK_TIMEOUT * 3 + 0.01)  # the second: stale session, a new handshake, the reading sent anew
    assert net.device.renewals == 1 and net.device.handshakes == 2
    net.advance(200, until=lambda: len(net.log.done) == 2)  # the other retransmissions go unanswered too
    assert net.log.done[-1][0] is False and net.device.failures == 1
    assert net.device.retry_at is not None and net.device.retry_at >= net.log.done[-1][1] + 1.0
    seq = net.device.seq
    net.mode = "piggyback"
    net.advance(net.device.retry_at - net.now + 0.01)  # after the back-off: the same reading (same key) again
    assert net.log.done[-1][0] is True and net.device.seq == seq
    assert sum(f"k={net.device.boot}.{seq}".encode() in r for r in net.requests) >= 2


def test_network_error_fails_the_reading_and_backs_off() -> None:
    net = Net()
    net.device.post(net.now)
    net.device.network_error(net.now)
    assert net.log.done == [(False, 0.0)] and net.device.conn is None
    assert net.device.retry_at is not None and 1.0 <= net.device.retry_at <= 2.5


def test_a_small_run_of_the_benchmark(tmp_path: Path) -> None:
    """The whole benchmark with 40 devices and short phases: every figure is there and every device made it."""
    require_peer("mosquitto", mosquitto_binary() is not None)
    out = tmp_path / "figures.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_gateway", "--devices", "40", "--workers", "2",
                        "--concurrency", "10", "--seconds", "1", "--rate", "50", "--rate-seconds", "1",
                        "--storm-interval", "5", "--storm-lead", "0.5", "--storm-max-handshakes", "0",
                        "--drain", "400", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads(out.read_text())
    for key in ("rate_ratio_vs_aiocoap", "acked_per_s", "p99_ms_at_200", "rss_per_session_kb", "storm_s",
                "drain_per_s"):
        assert isinstance(figures[key], float) and figures[key] > 0, key
    gw = figures["gateway"]
    assert gw["sessions"]["connected"] == 40 and gw["throughput"]["failed"] == 0
    assert gw["storm"]["locked_out"] == 0 and gw["storm"]["back"] == 40
    assert figures["drain"]["missing"] == 0 and figures["drain"]["duplicates"] == 0
    assert "| rate_ratio_vs_aiocoap |" in r.stdout and "Drain: 400 messages" in r.stdout
