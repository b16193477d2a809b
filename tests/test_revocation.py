"""Revocation takes effect at once on a running gateway: the device's live session ends with an alert within
1 s, nothing it sends after ``iotdtls-provision revoke`` returned is stored, new handshakes are refused, another
device's session is untouched, and ``enable`` undoes it. Real gateway process, real UDP, the real provisioning
tool."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import cbor2
from gateway_fixtures import PROVISION, gateway

from benchmarks.hostile_coap import CON, RawCoapsClient, coap, path

TELEMETRY = [*path("telemetry"), (12, bytes([60]))]


class Poster(threading.Thread):
    """One device posting readings (seq 1, 2, ...) as fast as they are answered, over one DTLS session; records
    when each was sent and what came back, and when the session ended."""

    def __init__(self, port: int, cfg: Path) -> None:
        super().__init__(daemon=True)
        c = json.loads(cfg.read_text())
        self.client = RawCoapsClient(port, identity=c["identity"].encode(), psk=bytes.fromhex(c["psk"]))
        self.client.handshake()
        self.sent: dict[int, float] = {}
        self.codes: dict[int, int] = {}
        self.ended_at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        seq = 0
        while not self.stop.is_set() and not self.client.closed:
            seq += 1
            body = cbor2.dumps({"seq": seq})
            message = coap(CON, 0x02, self.client.next_mid(), self.client.next_token(),
                           [*path("telemetry"), (12, bytes([60])), (15, f"k=t.{seq}".encode())], body)
            self.sent[seq] = time.monotonic()
            with contextlib.suppress(TimeoutError):
                self.codes[seq] = self.client.request(message, timeout=0.25).code
            if self.client.closed and self.ended_at is None:
                self.ended_at = time.monotonic()
            time.sleep(0.01)


def test_revoke_ends_the_session_at_once_and_nothing_after_it_is_stored(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw:
        a, b = gw.provision("dev-a"), gw.provision("dev-b")
        posters = {"dev-a": Poster(gw.port, a), "dev-b": Poster(gw.port, b)}
        for p in posters.values():
            p.start()
        time.sleep(1.5)
        r = subprocess.run([*PROVISION, "--config", str(gw.config), "revoke", "dev-a"], capture_output=True,
                           text=True, timeout=30)
        revoked_at = time.monotonic()
        assert r.returncode == 0, r.stderr
        time.sleep(2.5)
        for p in posters.values():
            p.stop.set()
            p.join(10)
        pa, pb = posters["dev-a"], posters["dev-b"]
        # the session ended within 1 s (a fatal access_denied alert), and nothing sent after revoke returned
        # reached the spool
        assert pa.client.closed and pa.ended_at is not None
        assert pa.ended_at - revoked_at <= 1.2, pa.ended_at - revoked_at
        stored_a = {e["data"]["seq"] for e in gw.envelopes() if e["device"] == "dev-a"}
        after = {seq for seq, t in pa.sent.items() if t > revoked_at}
        assert after and not stored_a & after, sorted(stored_a & after)
        acked = {seq for seq, code in pa.codes.items() if code == 0x44}
        assert acked <= stored_a  # and nothing acknowledged was lost
        # the other device's session went on: no new handshake, readings before and after
        assert not pb.client.closed
        times_b = [t for seq, t in pb.sent.items() if pb.codes.get(seq) == 0x44]
        assert min(times_b) < revoked_at < max(times_b)
        assert [h["device"] for h in gw.log_events("handshake")].count("dev-b") == 1
        ended = gw.log_events("session_ended")
        assert [(e["device"], e["reason"]) for e in ended] == [("dev-a", "revoked")]
        print(f"\nMEASURED revoke: session ended {1000 * (pa.ended_at - revoked_at):.0f} ms after the command "
              f"returned; {len(after)} readings sent after it, 0 stored; dev-b {len(times_b)} readings, "
              "1 session")
        # new handshakes are refused; enable undoes it
        refused = RawCoapsClient(gw.port, identity=b"dev-a", psk=bytes.fromhex(json.loads(a.read_text())["psk"]))
        try:
            refused.handshake(timeout=3.0)
            handshake_ok = True
        except Exception:
            handshake_ok = False
        assert not handshake_ok
        assert gw.provision_cmd("enable", "dev-a").returncode == 0
        back = RawCoapsClient(gw.port, identity=b"dev-a", psk=bytes.fromhex(json.loads(a.read_text())["psk"]))
        back.handshake()
        body = cbor2.dumps({"seq": 10_000})
        answer = back.request(coap(CON, 0x02, back.next_mid(), back.next_token(), TELEMETRY, body))
        assert answer.code == 0x44
        back.close()


def test_revoke_of_an_unknown_device_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text('data_dir = "data"\n[coaps]\nbind = "127.0.0.1:5684"\n')
    r = subprocess.run([sys.executable, "-m", "iotdtls_gateway.cli.provision", "--config", str(config), "revoke",
                        "nobody"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1 and "nobody" in r.stderr
