"""Key rotation on the device side (micropython/iotdtls_mp/coaps.py and main.py), sans-IO on CPython.

The session runs against iotdtls's sans-IO DTLSServer with a small CoAP responder that behaves like the gateway
(gateway/resources.py): the 2.04 of a POST carries the CBOR map {"cred": true} while a newer key waits, GET
/credentials answers {"identity": text, "psk": bytes, "not_before": number} (2.05) or 4.04, and the first
handshake with the new key retires the old one. The real gateway process is in tests/test_rotation.py.
"""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path
from typing import Any

import cbor2
import pytest
from fleet import load_main
from mp_fixtures import deliver_lossy

from iotdtls import DataReceived, DTLSConfiguration, DTLSServer
from iotdtls.events import ConnectionTerminated, HandshakeCompleted

main = load_main()
coaps = main.coaps
coap = main.coap
cbor = main.cbor

ADDR = ("10.0.0.2", 5684)
OLD, NEW = bytes(range(16)), bytes(range(100, 116))
HINT = cbor2.dumps({"cred": True})


def _rand(seed: int):
    r = random.Random(seed)
    return lambda n: bytes(r.getrandbits(8) for _ in range(n))


def _msg(mtype: int, code: int, mid: int, token: bytes = b"", payload: bytes = b"", cf: int | None = None) -> bytes:
    """A CoAP message (with at most a Content-Format option), encoded here, not by the device codec."""
    out = bytes([0x40 | mtype << 4 | len(token), code]) + mid.to_bytes(2, "big") + token
    if cf is not None:
        out += bytes([0xC1, cf])  # option 12, length 1
    return out + (b"\xff" + payload if payload else b"")


class MiniGateway:
    """A DTLSServer + CoAP responder with the gateway's rotation rules, in memory, with a fake clock."""

    def __init__(self, seed: int = 0, loss: float = 0.0) -> None:
        self.keys = {b"dev": OLD}  # the valid identities
        self.newer: tuple[bytes, bytes] | None = None  # a rotation: (identity, key) not used yet
        self.rng = random.Random(seed)
        self.loss = loss
        self.now = 0.0
        self.server = DTLSServer(DTLSConfiguration(is_client=False, psk_store=lambda i: self.keys.get(i),
                                                   random=_rand(seed + 1)))
        self.identity: bytes | None = None  # the current session's
        self.handshakes: list[bytes] = []
        self.failed: list[str] = []
        self.requests: list[tuple[str, str, bytes]] = []  # (identity, "POST telemetry", payload)
        self.stored: list[bytes] = []
        self.closes = 0  # close_notify records from the device
        self.answer_credentials: bytes | None = None  # replaces the /credentials body if set
        self.credentials_code = 69

    def rotate(self, identity: bytes = b"dev#2", key: bytes = NEW) -> None:
        self.keys[identity] = key
        self.newer = (identity, key)

    def _respond(self, data: bytes) -> None:
        m = coap.decode(data)
        if m.code == 0 or m.code >= 64:
            return
        assert self.identity is not None
        what = ("POST " if m.code == coap.POST else "GET ") + m.path()
        self.requests.append((self.identity.decode(), what, m.payload))
        hinted = self.newer is not None and self.identity != self.newer[0]
        if what == "POST telemetry":
            self.stored.append(m.payload)
            self.server.send(ADDR, _msg(2, 68, m.mid, m.token, HINT if hinted else b"", 60 if hinted else None))
        elif what == "GET credentials" and hinted and self.newer is not None:
            body = self.answer_credentials or cbor2.dumps({"identity": self.newer[0].decode(), "psk": self.newer[1],
                                                           "not_before": 1796646066.145921})
            self.server.send(ADDR, _msg(2, self.credentials_code, m.mid, m.token, body, 60))
        else:
            self.server.send(ADDR, _msg(2, 132, m.mid, m.token, b"no new key"))

    def _event(self, ev: Any) -> None:
        if isinstance(ev, HandshakeCompleted):
            self.identity = ev.identity
            self.handshakes.append(ev.identity)
            if self.newer is not None and ev.identity == self.newer[0]:  # first use: the old key is retired
                self.keys = {ev.identity: self.newer[1]}
                self.newer = None
        elif isinstance(ev, ConnectionTerminated):
            if ev.error is None:
                self.closes += 1
            else:
                self.failed.append(type(ev.error).__name__)
        elif isinstance(ev, DataReceived):
            self._respond(ev.data)

    def run(self, s: Any, until) -> None:
        """Deliver datagrams both ways (losing some), fire timers, until until() or the session is idle."""
        for _ in range(100000):
            moved = False
            for d in s.datagrams():
                moved = True
                if self.rng.random() >= self.loss:
                    self.server.receive_datagram(d, ADDR, self.now)
            while (ev := self.server.next_event()) is not None:
                self._event(ev[1])
            back: list[bytes] = []
            deliver_lossy(self.rng, [d for d, _ in self.server.datagrams_to_send(self.now)], back, self.loss, 0.0,
                          False)
            for d in back:
                moved = True
                s.receive(d, self.now)
            if until():
                return
            if moved:
                continue
            times = [t for t in (s.timer(), self.server.get_timer()) if t is not None]
            if not times:
                return
            self.now = max(self.now, min(times))
            s.on_timer(self.now)
            self.server.handle_timer(self.now)
        raise AssertionError("no progress")


def session(**kw: Any) -> Any:
    return coaps.Session(b"dev", OLD, _rand(7), ack_timeout=0.5, retransmit_initial=0.5, cred_path="credentials",
                         **kw)


def post(gw: MiniGateway, s: Any, n: int) -> tuple[str, Any]:
    s.request(gw.now, coap.POST, "telemetry", cbor2.dumps({"seq": n}), coap.CF_CBOR, query=f"k=b.{n}")
    gw.run(s, lambda: not s.busy())
    return s.result


# --------------------------------------------------------------------------------------------------
# the CBOR the device decodes
# --------------------------------------------------------------------------------------------------


def test_device_cbor_decodes_what_the_gateway_sends():
    """cbor.loads already covers the subset /credentials needs: a map with text keys, text, bytes, a float64 (and
    None for a credential without not_before)."""
    body = cbor2.dumps({"identity": "sensor-1#2", "psk": NEW, "not_before": 1796646066.145921})
    assert body[:10].hex() == "a3686964656e74697479"  # map(3), text(8) "identity"
    assert cbor.loads(body) == {"identity": "sensor-1#2", "psk": NEW, "not_before": 1796646066.145921}
    assert cbor.loads(cbor2.dumps({"identity": "x", "psk": NEW, "not_before": None}))["not_before"] is None
    assert cbor.loads(cbor2.dumps({"not_before": 1796646066}))["not_before"] == 1796646066
    assert HINT == b"\xa1\x64cred\xf5"


@pytest.mark.parametrize(("payload", "code", "want"), [
    (HINT, 68, True),
    (cbor2.dumps({"cred": True, "later": [1, 2]}), 68, True),  # more keys may come
    (HINT, 69, True),
    (b"", 68, False),
    (cbor2.dumps({"cred": False}), 68, False),
    (cbor2.dumps({"cred": 1}), 68, False),
    (cbor2.dumps(["cred", True]), 68, False),
    (b"\xa1\x64cre", 68, False),  # truncated
    (b"\xff\xff", 68, False),
    (b"not cbor at all", 68, False),
    (HINT, 132, False),  # a 4.04 with that body
])
def test_hint_recognised_only_as_a_2xx_cbor_map(payload, code, want):
    assert coaps.hint(coap.Message(2, code, 1, b"", [], payload)) is want


@pytest.mark.parametrize(("body", "code", "want"), [
    ({"identity": "d#2", "psk": NEW, "not_before": 1.5}, 69, (b"d#2", NEW)),
    ({"identity": "d#2", "psk": NEW}, 69, (b"d#2", NEW)),
    ({"identity": "d#2", "psk": NEW}, 68, None),  # only a 2.05
    ({"identity": "", "psk": NEW}, 69, None),
    ({"identity": "x" * 129, "psk": NEW}, 69, None),
    ({"identity": "d#2", "psk": NEW[:15]}, 69, None),  # a PSK has 16 to 64 bytes
    ({"identity": "d#2", "psk": bytes(65)}, 69, None),
    ({"identity": "d#2", "psk": NEW.hex()}, 69, None),  # text, not bytes
    ({"identity": b"d#2", "psk": NEW}, 69, None),
    (["d#2", NEW], 69, None),
])
def test_credential_answer_checked(body, code, want):
    assert coaps.credential(coap.Message(2, code, 1, b"", [], cbor2.dumps(body))) == want


def test_hint_and_credential_never_raise_on_garbage():
    """Mutated, truncated and random payloads: hint() and credential() answer False/None, never raise (they run
    inside the session, on whatever the server sends)."""
    rng = random.Random(15)
    seeds = [HINT, cbor2.dumps({"identity": "dev#2", "psk": NEW, "not_before": 1796646066.145921}),
             cbor2.dumps({"identity": "dev#2", "psk": NEW, "not_before": None})]
    for i in range(3000):
        base = bytearray(rng.choice(seeds))
        kind = i % 3
        if kind == 0:
            for _ in range(rng.randrange(1, 4)):
                base[rng.randrange(len(base))] = rng.randrange(256)
        elif kind == 1:
            del base[rng.randrange(1, len(base)):]
        else:
            base = bytearray(rng.randbytes(rng.randrange(1, 40)))
        for code in (68, 69):
            m = coap.Message(2, code, 1, b"", [], bytes(base))
            assert coaps.hint(m) in (True, False)
            got = coaps.credential(m)
            assert got is None or (isinstance(got[0], bytes) and 16 <= len(got[1]) <= 64)


# --------------------------------------------------------------------------------------------------
# the session: hint, fetch, rekey, fallback
# --------------------------------------------------------------------------------------------------


def test_rotation_hint_fetch_rekey_handshake_with_new_key():
    gw = MiniGateway()
    s = session()
    assert post(gw, s, 1)[0] == "ok" and s.offer is None
    gw.rotate()
    ok, m = post(gw, s, 2)
    # the POST's own answer is the result; the GET ran in the same session before the request was over
    assert ok == "ok" and m.code == coap.CHANGED and m.payload == HINT
    assert s.offer == (b"dev#2", NEW) and s.failures == 0 and s.handshakes == 1
    assert [r[:2] for r in gw.requests] == [("dev", "POST telemetry")] * 2 + [("dev", "GET credentials")]
    assert s.identity == b"dev"  # nothing changes before the device stored the key
    s.rekey()
    assert s.offer is None and s.old == (b"dev", OLD) and (s.identity, s.psk) == (b"dev#2", NEW)
    [close_notify] = s.datagrams()
    assert s.conn is None and close_notify[0] == 21  # an alert record
    gw.server.receive_datagram(close_notify, ADDR, gw.now)
    gw.run(s, lambda: False)
    assert gw.closes == 1
    assert post(gw, s, 3)[0] == "ok"
    assert gw.handshakes == [b"dev", b"dev#2"] and gw.requests[-1][:2] == ("dev#2", "POST telemetry")
    assert gw.keys == {b"dev#2": NEW}  # the old key was retired by that handshake
    assert post(gw, s, 4)[1].payload == b""  # no more hint
    assert s.handshakes == 2 and s.swapped is None and gw.failed == []


def test_credentials_path_follows_the_telemetry_prefix():
    cfg = main.load_config_dict({"host": "h", "port": 1, "identity": "d", "psk": "00" * 16, "path": "gw/a/telemetry"})
    assert main.new_session(cfg, os.urandom).cred_path == "gw/a/credentials"
    cfg = main.load_config_dict({"host": "h", "port": 1, "identity": "d", "psk": "00" * 16})
    assert main.new_session(cfg, os.urandom).cred_path == "credentials"


@pytest.mark.parametrize("case", ["404", "garbage", "short key", "2.04"])
def test_no_usable_key_no_offer_and_the_post_stands(case):
    gw = MiniGateway()
    s = session()
    gw.rotate()
    if case == "404":
        gw.credentials_code = 132
    elif case == "garbage":
        gw.answer_credentials = b"\xa3\x01"
    elif case == "short key":
        gw.answer_credentials = cbor2.dumps({"identity": "dev#2", "psk": b"short"})
    else:
        gw.credentials_code = 68
    ok, m = post(gw, s, 1)
    assert ok == "ok" and m.code == coap.CHANGED and s.offer is None and s.failures == 0
    s.rekey()  # nothing to switch to
    assert s.identity == b"dev" and s.old is None
    post(gw, s, 2)  # the next hint fetches again
    assert [r[1] for r in gw.requests].count("GET credentials") == 2


def test_get_unanswered_the_post_still_counts():
    gw = MiniGateway()
    s = session()
    gw.rotate()
    orig = gw._respond

    def no_get(data: bytes) -> None:
        if coap.decode(data).code != coap.GET:
            orig(data)

    gw._respond = no_get
    ok, m = post(gw, s, 1)
    assert ok == "ok" and m.code == coap.CHANGED and s.offer is None and s.failures == 0
    gw._respond = orig
    assert post(gw, s, 2)[0] == "ok" and s.offer == (b"dev#2", NEW)


def test_no_cred_path_no_fetch():
    gw = MiniGateway()
    s = coaps.Session(b"dev", OLD, _rand(3))
    gw.rotate()
    assert post(gw, s, 1)[1].payload == HINT and s.offer is None
    assert [r[1] for r in gw.requests] == ["POST telemetry"]


def test_new_key_refused_falls_back_to_the_old_once():
    """The gateway lost the rotation (restored from a backup): the new key's handshake gets bad_record_mac, the
    session handshakes again at once with the old key, for the same request; ``swapped`` asks the device to store
    that. No second fallback."""
    gw = MiniGateway()
    s = session()
    s.old = (b"dev", OLD)
    s.identity, s.psk = b"dev#2", NEW  # what the device stored; the gateway never had it
    ok, m = post(gw, s, 1)
    assert ok == "ok" and m.code == coap.CHANGED and s.failures == 0
    assert gw.handshakes == [b"dev"] and s.handshakes == 2
    assert (s.identity, s.psk) == (b"dev", OLD) and s.swapped == (b"dev#2", NEW) and s.old is None
    gw.keys = {}  # now both are refused (e.g. revoked)
    s.drop()
    ok, why = post(gw, s, 2)
    assert ok == "error" and "bad_record_mac" in why and s.handshakes == 3  # once: no more fallback


def test_fallback_refused_too_back_to_the_newer_key():
    gw = MiniGateway()
    gw.keys = {}
    s = session()
    s.old = (b"dev", OLD)
    s.identity, s.psk = b"dev#2", NEW
    ok, why = post(gw, s, 1)
    assert ok == "error" and why == "fatal alert 20 (bad_record_mac)" and s.handshakes == 2
    assert (s.identity, s.psk) == (b"dev#2", NEW) and s.old is None and s.swapped is None
    gw.keys = {b"dev#2": NEW}  # e.g. enabled again
    assert post(gw, s, 2)[0] == "ok" and s.swapped is None


def test_no_fallback_for_a_timeout():
    gw = MiniGateway()
    s = coaps.Session(b"dev#2", NEW, _rand(3), retransmit_initial=0.5, handshake_timeout=3, cred_path="credentials")
    s.old = (b"dev", OLD)
    gw.server.receive_datagram = lambda *a: None  # a gateway that is away
    ok, why = post(gw, s, 1)
    assert (ok, why) == ("error", "handshake timeout") and s.handshakes == 1 and s.old == (b"dev", OLD)


@pytest.mark.parametrize("seed", range(8))
def test_rotation_under_loss(seed):
    """20% loss each way: every reading answered 2.04 is one the gateway stored; the device ends on the new key,
    which the gateway then holds alone."""
    gw = MiniGateway(seed=seed, loss=0.2)
    s = session()
    acked = []
    stored_key = None
    for n in range(1, 16):
        if n == 4:
            gw.rotate()
        for _ in range(6):
            ok, m = post(gw, s, n)
            if ok == "ok":
                break
            s.drop()
        if ok == "ok" and m.code == coap.CHANGED:
            acked.append(n)
        if s.offer is not None:
            stored_key = s.offer
            s.rekey()
    assert stored_key == (b"dev#2", NEW) and s.identity == b"dev#2"
    assert gw.keys == {b"dev#2": NEW}
    stored = {cbor2.loads(p)["seq"] for p in gw.stored}
    assert set(acked) <= stored and len(acked) >= 13


# --------------------------------------------------------------------------------------------------
# main.py: storing the key
# --------------------------------------------------------------------------------------------------


def _config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"host": "127.0.0.1", "port": 5684, "identity": "dev", "psk": OLD.hex(),
                                "wifi_ssid": "net", **extra}))
    path.chmod(0o600)
    return main.load_config(str(path))


def test_adopt_stores_new_key_atomically_and_rekeys(tmp_path):
    cfg = _config(tmp_path)
    s = main.new_session(cfg, _rand(1))
    assert main.adopt(cfg, s) is None  # nothing learnt
    s.offer = (b"dev#2", NEW)
    assert main.adopt(cfg, s) == "key dev#2 stored"
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk == {"host": "127.0.0.1", "port": 5684, "identity": "dev#2", "psk": NEW.hex(),
                       "old_identity": "dev", "old_psk": OLD.hex(), "wifi_ssid": "net", "path": "telemetry",
                       "interval": 60}
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # the temp file was renamed
    assert (s.identity, s.psk, s.old, s.offer) == (b"dev#2", NEW, (b"dev", OLD), None)
    assert cfg["psk_bytes"] == NEW and cfg["identity"] == "dev#2"
    # a reboot reads it back: the new key, the old one as the fallback
    again = main.load_config(str(tmp_path / "config.json"))
    s2 = main.new_session(again, _rand(2))
    assert (s2.identity, s2.psk, s2.old) == (b"dev#2", NEW, (b"dev", OLD))


def test_adopt_stores_an_accepted_fallback_as_a_swap(tmp_path):
    cfg = _config(tmp_path, identity="dev#2", psk=NEW.hex(), old_identity="dev", old_psk=OLD.hex())
    s = main.new_session(cfg, _rand(1))
    s.identity, s.psk, s.old, s.swapped = b"dev", OLD, None, (b"dev#2", NEW)  # as after the fallback
    assert main.adopt(cfg, s) == "key dev#2 refused, back to dev"
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert (on_disk["identity"], on_disk["psk"], on_disk["old_identity"], on_disk["old_psk"]) == (
        "dev", OLD.hex(), "dev#2", NEW.hex())
    assert s.swapped is None and s.identity == b"dev"


def test_adopt_not_stored_not_used(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    before = (tmp_path / "config.json").read_text()
    s = main.new_session(cfg, _rand(1))
    s.offer = (b"dev#2", NEW)

    def full(*_a: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(main.json, "dump", full)
    line = main.adopt(cfg, s)
    assert line is not None and line.startswith("key dev#2 not stored")
    assert (s.identity, s.offer, s.old) == (b"dev", None, None) and cfg["identity"] == "dev"
    assert (tmp_path / "config.json").read_text() == before


def test_adopt_without_a_file_keeps_the_key_in_ram():
    cfg = main.load_config_dict({"host": "h", "port": 1, "identity": "dev", "psk": OLD.hex()})
    s = main.new_session(cfg, _rand(1))
    s.offer = (b"dev#2", NEW)
    assert main.adopt(cfg, s) == "key dev#2 stored"
    assert cfg["identity"] == "dev#2" and s.identity == b"dev#2"


def test_config_old_key_checked(tmp_path):
    with pytest.raises(ValueError, match="old_psk is not hex"):
        main.load_config_dict({"host": "h", "port": 1, "identity": "d", "psk": "00", "old_identity": "x",
                               "old_psk": "zz"})
    with pytest.raises(ValueError, match="wrong type for old_identity"):
        main.load_config_dict({"host": "h", "port": 1, "identity": "d", "psk": "00", "old_identity": 5})
