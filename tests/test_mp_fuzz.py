"""Hostile input to the device client (micropython/): every mutated, truncated, spliced or random datagram ends in
a drop, an alert or a clean error, never in an exception out of the sans-IO core (seeded, deterministic)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from mp_shim import MP_DIR, import_device

from benchmarks.bench_mp import drand, record_transcript
from iotdtls import DTLSConfiguration, DTLSServer

coaps = import_device("coaps")
coap = import_device("coap")
PSK = bytes(range(16))


@pytest.fixture(scope="module")
def transcript(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The server's datagrams of a handshake + one POST, for the device's deterministic randomness."""
    import json

    path: Path = tmp_path_factory.mktemp("mpfuzz") / "t.json"
    if str(MP_DIR) not in sys.path:
        sys.path.insert(0, str(MP_DIR))
    record_transcript(path)
    return [bytes.fromhex(d) for d in json.loads(path.read_text())["server"]]


def _session():
    s = coaps.Session(b"dev1", PSK, drand(b"iotdtls-bench"))
    s.request(0, coap.POST, "telemetry", bytes(64), coap.CF_CBOR)
    s.datagrams()
    return s


def _mutate(rng: random.Random, d: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(d)
    kind = rng.randrange(6)
    if kind == 0 and b:  # flip bits
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        del b[rng.randrange(len(b) + 1):]
    elif kind == 2 and b:  # overwrite a byte with an extreme value (lengths!)
        b[rng.randrange(len(b))] = rng.choice((0, 1, 0x7F, 0x80, 0xFE, 0xFF))
    elif kind == 3:  # splice with another datagram
        o = rng.choice(pool)
        b = b[:rng.randrange(len(b) + 1)] + o[rng.randrange(len(o) + 1):]
    elif kind == 4:  # insert random bytes
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 40))
    else:  # random datagram
        b = bytearray(rng.randbytes(rng.randint(0, 300)))
    return bytes(b)


def test_mutated_server_datagrams(transcript: list[bytes]) -> None:
    rng = random.Random(6)
    outcomes: dict[str, int] = {}
    for _ in range(3000):
        s = _session()
        now = 0.0
        for d in transcript:
            feed = [_mutate(rng, d, transcript) if rng.random() < 0.4 else d]
            if rng.random() < 0.2:
                feed.append(_mutate(rng, d, transcript))
            for x in feed:
                s.receive(x, now)
                s.datagrams()
            now += 0.01
            if not s.busy():
                break
        while s.busy() and now < 400:  # let the timers run out
            t = s.timer()
            if t is None:
                break
            now = max(now, t)
            s.on_timer(now)
            s.datagrams()
        key = "pending" if s.busy() else s.result[0] if s.result[0] == "ok" else s.result[1]
        outcomes[key] = outcomes.get(key, 0) + 1
    print("\noutcomes of 3,000 mutated handshakes:", outcomes)
    assert outcomes.get("ok", 0) > 100  # some runs still complete (the unmutated copy got through)
    assert "pending" not in outcomes


def test_random_datagrams_in_every_state(transcript: list[bytes]) -> None:
    rng = random.Random(7)
    for stage in range(len(transcript) + 1):
        for _ in range(300):
            s = _session()
            for d in transcript[:stage]:
                s.receive(d, 0)
                s.datagrams()
            for _ in range(5):
                s.receive(rng.randbytes(rng.randint(0, 200)), 0)
                # a well-formed record header with random contents, in both epochs
                body = rng.randbytes(rng.randint(0, 120))
                hdr = bytes([rng.choice((20, 21, 22, 23, 24)), 0xFE, 0xFD, 0, rng.randint(0, 1)])
                s.receive(hdr + rng.randbytes(6) + len(body).to_bytes(2, "big") + body, 0)
                s.datagrams()


def test_hostile_application_data_after_handshake() -> None:
    """Valid records carrying garbage CoAP: the request stays pending or ends cleanly; no exception."""
    rng = random.Random(8)
    for _ in range(200):
        server = DTLSServer(DTLSConfiguration(is_client=False, psk_store={b"dev1": PSK}, random=drand(b"s")))
        s = coaps.Session(b"dev1", PSK, drand(b"c"))
        s.request(0, coap.POST, "telemetry", b"x", coap.CF_CBOR)
        addr = ("192.0.2.1", 5684)
        established = False
        for _ in range(20):
            for d in s.datagrams():
                server.receive_datagram(d, addr, 0)
            while server.next_event() is not None:
                established = True
            for d, _a in server.datagrams_to_send(0):
                s.receive(d, 0)
            if established and s.conn is not None and s.conn.established:
                break
        assert s.conn is not None and s.conn.established
        for _ in range(10):
            server.send(addr, rng.randbytes(rng.randint(0, 100)))
            for d, _a in server.datagrams_to_send(0):
                s.receive(d, 0)
                s.datagrams()
        assert s.busy() or s.result is not None
