"""The MicroPython CoAPs session (micropython/iotdtls_mp/coaps.py) on CPython against iotdtls's sans-IO DTLSServer
and a small CoAP responder, with a fake clock and seeded loss, duplication and reordering."""

from __future__ import annotations

import random
import struct
import sys
import warnings

import aiocoap
import cbor2
import pytest
from mp_fixtures import deliver_lossy
from mp_shim import import_device

from iotdtls import DataReceived, DTLSConfiguration, DTLSServer

KEY = bytes(range(16))
ADDR = ("10.0.0.2", 5684)
APP, ALERT = 23, 21
_MODULES = ("coaps", "coap", "dtls", "aes", "ccm", "prf")


def _load(cryptolib: bool = True):
    """Fresh iotdtls_mp modules (so coaps -> dtls -> aes use the chosen AES path); returns coaps.

    Each is imported by its full name, in dependency order: ``from . import dtls`` would otherwise pick up the
    stale submodule attribute left on the package.
    """
    for name in _MODULES:
        sys.modules.pop("iotdtls_mp." + name, None)
    for name in reversed(_MODULES):
        mod = import_device(name, cryptolib=cryptolib)
    return mod


coaps = _load()
coap = coaps.coap
ACK_TIMEOUT = coap.ACK_TIMEOUT
MAX_RETRANSMIT = coap.MAX_RETRANSMIT


def _rand(seed: int):
    r = random.Random(seed)
    return lambda n: bytes(r.getrandbits(8) for _ in range(n))


def _msg(mtype: int, code: int, mid: int, token: bytes = b"", payload: bytes = b"") -> bytes:
    """A CoAP message without options, encoded here (independently of the device codec)."""
    out = struct.pack(">BBH", 0x40 | mtype << 4 | len(token), code, mid) + token
    return out + (b"\xff" + payload if payload else b"")


class Net:
    """A coaps.Session and a DTLSServer + CoAP responder joined in memory (fake clock, loss, dup, reorder).

    ``mode`` is what the responder does with a request: "piggyback" (ACK 2.04), "separate" (empty ACK, then a
    CON 2.05 ``sep_delay`` seconds later), "separate-never" (empty ACK, then nothing), "separate-once" (that for the
    first request, then "piggyback"), "rst", "silent" (nothing) or "close" (the server closes the DTLS session).
    """

    def __init__(self, seed=0, loss=0.0, dup=0.0, reorder=False, server_mtu=512, psk=KEY, identity=b"dev1",
                 mod=None, mode="piggyback", **kw):
        self.seed = seed
        self.rng = random.Random(seed)
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.server_mtu = server_mtu
        self.now = 0.0
        self.mode = mode
        self.sep_delay = 1.0
        self.session = (mod or coaps).Session(identity, psk, _rand(seed), **kw)
        self.server = self.new_server()
        self.requests: list[aiocoap.Message] = []  # every CoAP message the server got (decoded)
        self.raw: list[bytes] = []  # the same, as the bytes the server got
        self.sent: list[tuple[float, bytes]] = []  # every datagram the client sent, with its time
        self.server_sent: list[bytes] = []
        self.pending: list[tuple[float, bytes]] = []  # separate responses the server will send later
        self.seps = 0
        self.up = True  # False: the server is down (drops everything)

    def new_server(self) -> DTLSServer:
        self.seed += 7919
        cfg = DTLSConfiguration(is_client=False, psk_store={b"dev1": KEY}, mtu=self.server_mtu,
                                random=_rand(self.seed))
        return DTLSServer(cfg)

    def _lossy(self, items, out, shuffle):
        deliver_lossy(self.rng, items, out, self.loss, self.dup, shuffle)

    def _respond(self, data: bytes) -> None:
        m = aiocoap.Message.decode(data)
        self.requests.append(m)
        self.raw.append(data)
        if m.code == aiocoap.EMPTY or not m.code.is_request():
            return  # an ACK of our separate response
        if self.mode == "separate-once":
            self.mode = "piggyback"
            self.server.send(ADDR, _msg(2, 0, m.mid))
        elif self.mode == "separate-never":
            self.server.send(ADDR, _msg(2, 0, m.mid))
        elif self.mode == "piggyback":
            self.server.send(ADDR, _msg(2, 68, m.mid, m.token))
        elif self.mode == "separate":
            self.server.send(ADDR, _msg(2, 0, m.mid))
            self.seps += 1
            self.pending.append((self.now + self.sep_delay, _msg(0, 69, 0x7000 + self.seps, m.token, b"later")))
        elif self.mode == "separate-lost-ack":
            if len(self.requests) == 1:  # the first transmission: its empty ACK "is lost"
                self.pending.append((self.now + 1.9, _msg(0, 69, 0x7001, m.token, b"later")))
            else:
                self.server.send(ADDR, _msg(2, 0, m.mid))
        elif self.mode == "rst":
            self.server.send(ADDR, _msg(3, 0, m.mid))
        elif self.mode == "close":
            self.server.close(ADDR)

    def pump(self) -> None:
        to_server: list[bytes] = []
        to_client: list[bytes] = []
        for _ in range(1000):
            out = self.session.datagrams()
            self.sent += [(self.now, d) for d in out]
            self._lossy(out, to_server, False)
            back = [d for d, _ in self.server.datagrams_to_send(self.now)]
            self.server_sent += back
            self._lossy(back, to_client, self.reorder)
            if not to_server and not to_client:
                return
            while to_server:
                d = to_server.pop(0)
                if self.up:
                    self.server.receive_datagram(d, ADDR, self.now)
            while to_client:
                self.session.receive(to_client.pop(0), self.now)
            while (ev := self.server.next_event()) is not None:
                if isinstance(ev[1], DataReceived):
                    self._respond(ev[1].data)
        raise AssertionError("datagram storm")

    def step(self) -> None:
        due = [t for t, _ in self.pending]
        times = [t for t in (self.session.timer(), self.server.get_timer(), *due) if t is not None]
        assert times, "busy but no timer"
        self.now = max(self.now, min(times))
        for item in [p for p in self.pending if p[0] <= self.now]:
            self.pending.remove(item)
            if ADDR in self.server.connections:
                self.server.send(ADDR, item[1])
        self.session.on_timer(self.now)
        self.server.handle_timer(self.now)
        self.pump()

    def request(self, path="telemetry", payload=b"\xa1\x63seq\x01", code=None, cf=60, limit=5000.0, **kw):
        s = self.session
        s.request(self.now, coap.POST if code is None else code, path, payload, cf, **kw)
        self.pump()
        while s.busy():
            self.step()
            assert self.now < limit, "request never finished"
        return s.result

    def idle(self, until: float) -> None:
        """Let time pass (the session is idle), delivering due separate responses and server timers."""
        while True:
            times = [t for t in (self.session.timer(), self.server.get_timer(), *[t for t, _ in self.pending])
                     if t is not None and t <= until]
            if not times:
                self.now = max(self.now, until)
                return
            self.step()

    def app_sent(self) -> list[float]:
        return [t for t, d in self.sent if d[0] == APP]


def test_request_ok_piggybacked():
    net = Net()
    payload = cbor2.dumps({"uptime": 5, "seq": 1})
    ok, m = net.request("sensors/t1", payload)
    assert ok == "ok" and m.code == coap.CHANGED and coap.code_str(m.code) == "2.04"
    assert m.type == coap.ACK
    [req] = net.requests
    assert req.mtype == aiocoap.CON and req.code == aiocoap.POST
    assert req.opt.uri_path == ("sensors", "t1")
    assert int(req.opt.content_format) == 60
    assert cbor2.loads(req.payload) == {"uptime": 5, "seq": 1}
    s = net.session
    assert s.handshakes == 1 and s.failures == 0 and s.delay() == 0 and not s.busy()
    assert net.now == 0.0  # no retransmission was needed


def test_put_non_and_no_content_format():
    net = Net()
    ok, _ = net.request("a", b"x", code=coap.PUT, cf=None)
    assert ok == "ok"
    assert net.requests[0].code == aiocoap.PUT and net.requests[0].opt.content_format is None


def test_five_requests_one_handshake():
    net = Net()
    for i in range(5):
        ok, m = net.request(payload=cbor2.dumps({"seq": i}))
        assert ok == "ok" and m.code == coap.CHANGED
    assert net.session.handshakes == 1
    assert [cbor2.loads(r.payload)["seq"] for r in net.requests] == list(range(5))
    assert len({r.mid for r in net.requests}) == 5 and len({r.token for r in net.requests}) == 5


def test_server_state_lost_then_rehandshake():
    # a restarted gateway drops the client's records silently (RFC 6347 4.1.2.1): after STALE_RETRIES
    # retransmissions with not one record heard, the session handshakes again and the same request goes out anew
    net = Net()
    assert net.request()[0] == "ok"
    net.server = net.new_server()
    net.sent.clear()
    t0 = net.now = 10.0
    ok, m = net.request()
    assert ok == "ok" and m.code == coap.CHANGED
    s = net.session
    assert s.handshakes == 2 and s.failures == 0
    times = net.app_sent()
    assert len(times) == 1 + coaps.STALE_RETRIES  # the CON and 1 retransmission on the old session, 1 on the new
    assert times[0] == t0
    t = times[1] - times[0]
    assert ACK_TIMEOUT <= t <= ACK_TIMEOUT * 1.5
    assert times[2] == pytest.approx(t0 + 3 * t)  # instead of the 2nd retransmission: new handshake + request
    alerts = [d for _, d in net.sent if d[0] == ALERT]
    assert len(alerts) == 1  # the stale session's close_notify


def test_server_alive_but_silent_gets_one_rehandshake_then_no_response():
    net = Net(mode="silent")
    assert net.session.handshakes == 0
    net.sent.clear()
    assert net.request() == ("error", "no response")
    s = net.session
    # the first request made the session (fresh): no re-handshake; all 1 + MAX_RETRANSMIT transmissions
    assert s.handshakes == 1 and len(net.app_sent()) == 1 + MAX_RETRANSMIT
    net.mode = "piggyback"
    assert net.request()[0] == "ok"
    net.mode = "silent"
    net.sent.clear()
    assert net.request() == ("error", "no response")
    # on an established session: STALE_RETRIES transmissions, a new handshake, then the full CON sequence
    assert s.handshakes == 3
    assert len(net.app_sent()) == coaps.STALE_RETRIES + 1 + MAX_RETRANSMIT


def test_no_rehandshake_when_the_server_is_heard():
    # the server's empty ACK (a separate response pending) is a record heard: no stale-session re-handshake
    net = Net(mode="separate")
    assert net.request()[0] == "ok"
    assert net.request()[0] == "ok"
    assert net.session.handshakes == 1


@pytest.mark.parametrize("ack_timeout", [0.3, 1.0])
def test_ack_timeout_setting(ack_timeout):
    net = Net(ack_timeout=ack_timeout, handshake_timeout=20)
    assert net.request()[0] == "ok"
    net.up = False
    net.sent.clear()
    t0 = net.now
    assert net.request() == ("error", "handshake timeout")  # the server is gone: the new handshake times out
    times = net.app_sent()
    assert len(times) == coaps.STALE_RETRIES
    assert ack_timeout <= times[1] - times[0] <= ack_timeout * 1.5
    assert net.now - t0 == pytest.approx(3 * (times[1] - times[0]) + 20)


def test_wrong_psk():
    net = Net(psk=b"\x01" * 16)
    assert net.request() == ("error", "fatal alert 20 (bad_record_mac)")
    s = net.session
    assert s.failures == 1 and s.conn is None and not s.busy() and not net.requests


def test_unknown_identity():
    net = Net(identity=b"nobody")
    assert net.request() == ("error", "fatal alert 20 (bad_record_mac)")
    assert net.session.failures == 1 and not net.requests


def test_delay_backoff_and_reset():
    net = Net(psk=b"\x01" * 16, backoff_max=40.0)
    s = net.session
    for n in range(1, 9):
        assert net.request()[0] == "error"
        assert s.failures == n
        base = min(2.0 * 2 ** (n - 1), 40.0)
        for _ in range(20):
            assert base * 0.75 <= s.delay() <= base * 1.25
    assert s.handshakes == 8
    s.psk = KEY  # the key is fixed: the next attempt succeeds and the back-off is over
    assert net.request()[0] == "ok"
    assert s.failures == 0 and s.delay() == 0


def test_delay_jitter_spread():
    s = coaps.Session(b"dev1", KEY, _rand(5))
    s.failures = 1
    ds = [s.delay() for _ in range(500)]
    assert min(ds) >= 1.5 and max(ds) <= 2.5
    assert min(ds) < 1.6 and max(ds) > 2.4  # the jitter really spans +-25%
    s.failures = 30
    assert all(225.0 <= s.delay() <= 375.0 for _ in range(50))  # capped at backoff_max (300)


def test_server_close_notify_then_rehandshake():
    net = Net()
    assert net.request()[0] == "ok"
    net.server.close(ADDR)
    net.pump()
    s = net.session
    assert s.conn is None and not s.busy() and s.failures == 0
    ok, _ = net.request()
    assert ok == "ok" and s.handshakes == 2


def test_server_closes_during_request():
    net = Net(mode="close")
    assert net.request() == ("error", "closed by server")
    s = net.session
    assert s.conn is None and s.failures == 1
    net.mode = "piggyback"
    assert net.request()[0] == "ok" and s.handshakes == 2


def test_rst_keeps_session():
    net = Net(mode="rst")
    assert net.request() == ("error", "reset by server")
    s = net.session
    assert s.failures == 1 and s.conn is not None and s.conn.established
    net.mode = "piggyback"
    assert net.request()[0] == "ok"
    assert s.handshakes == 1 and s.failures == 0


def test_separate_response_acked():
    net = Net(mode="separate")
    ok, m = net.request()
    assert ok == "ok" and m.code == coap.CONTENT and m.type == coap.CON and m.payload == b"later"
    assert net.now == 1.0  # the separate response came one second later
    [_, ack] = net.requests
    assert ack.mtype == aiocoap.ACK and ack.code == aiocoap.EMPTY and ack.mid == 0x7001
    net.mode = "piggyback"
    assert net.request()[0] == "ok" and net.session.handshakes == 1


def test_separate_response_retransmission_acked_again():
    net = Net(mode="separate")
    ok, m = net.request()
    assert ok == "ok"
    req = net.requests[0]
    # the server retransmits its CON (our ACK was lost): it must be ACKed again, the session stays idle
    net.server.send(ADDR, _msg(0, 69, 0x7001, req.token, b"later"))
    net.pump()
    assert len(net.requests) == 3 and net.requests[2].mtype == aiocoap.ACK and net.requests[2].mid == 0x7001
    assert not net.session.busy() and net.session.result == ("ok", m)


def test_separate_response_after_lost_empty_ack():
    # the server's empty ACK is lost: the client retransmits its CON (same MID) after 0.5-0.75 s, gets the empty ACK,
    # then waits for the separate response past its ACK timeout (up to SEPARATE_WAIT x 0.5 s after the empty ACK)
    net = Net(mode="separate-lost-ack", ack_timeout=0.5)
    ok, m = net.request()
    assert ok == "ok" and m.payload == b"later" and net.now == 1.9 and net.session.handshakes == 1
    cons = [r for r in net.requests if r.mtype == aiocoap.CON]
    acks = [r for r in net.requests if r.mtype == aiocoap.ACK]
    assert len(cons) == 2 and cons[0].mid == cons[1].mid and cons[0].token == cons[1].token
    assert len(acks) == 1 and acks[0].mid == 0x7001


# --------------------------------------------------------------------------------------------------
# the idempotency key (a Uri-Query option) and the bounded wait for a separate response
# --------------------------------------------------------------------------------------------------

KEY_Q = "k=0123abcd.7"
SEP_BOUND = coaps.SEPARATE_WAIT * ACK_TIMEOUT


def _aio_request(m: aiocoap.Message, query: tuple[str, ...], payload: bytes) -> bytes:
    """The request as aiocoap encodes it (CON POST /telemetry, Content-Format 60, `query`), with m's MID and token."""
    want = aiocoap.Message(code=aiocoap.POST, uri_path=("telemetry",), content_format=60, uri_query=query,
                           payload=payload)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setting mtype, mid and token is deprecated in aiocoap
        want.mtype, want.mid, want.token = aiocoap.CON, m.mid, m.token
        return want.encode()


@pytest.mark.parametrize("query", ["k=0123abcd.1", "k=0123abcd.100", "k=ffffffff.4294967295", "k=00000000.9&x=y"])
def test_query_on_the_wire_as_aiocoap_encodes_it(query):
    net = Net()
    payload = cbor2.dumps({"uptime": 5, "seq": 1})
    assert net.request(payload=payload, query=query)[0] == "ok"
    [m] = net.requests
    assert m.opt.uri_query == tuple(query.split("&"))
    assert m.opt.uri_path == ("telemetry",) and int(m.opt.content_format) == 60
    assert net.raw[0] == _aio_request(m, m.opt.uri_query, payload)  # byte-exact, options in order


def test_no_query_no_option():
    net = Net()
    assert net.request(query=None)[0] == "ok" and net.request(query="")[0] == "ok"
    assert [r.opt.uri_query for r in net.requests] == [(), ()]


def test_same_key_new_mid_and_token_after_a_stale_session_is_replaced():
    net = Net()
    assert net.request(query="k=0123abcd.1")[0] == "ok"
    net.server = net.new_server()  # the gateway restarted: the session is gone
    s = net.session
    s.request(net.now, coap.POST, "telemetry", b"\xa1\x63seq\x02", 60, query="k=0123abcd.2")
    first = (s.req.mid, s.req.token)
    net.pump()
    while s.busy():
        net.step()
    assert s.result[0] == "ok" and s.handshakes == 2
    m = net.requests[-1]  # only the resend reached the new server
    assert m.opt.uri_query == ("k=0123abcd.2",) and m.payload == b"\xa1\x63seq\x02"
    assert m.mid != first[0] and m.token != first[1]


def _empty_ack_then(net: Net, query: str = KEY_Q) -> tuple[float, aiocoap.Message]:
    """Send a request whose CON the server answers with an empty ACK only; (time of the empty ACK, the request)."""
    s = net.session
    s.request(net.now, coap.POST, "telemetry", b"\xa1\x63seq\x07", 60, query=query)
    net.pump()
    while not (net.requests and s.ex is not None and s.ex.state == "sep"):
        net.step()
    return net.now, net.requests[-1]


@pytest.mark.parametrize("established", [False, True], ids=["fresh-session", "established-session"])
@pytest.mark.parametrize("ack_timeout", [2.0, 0.3])
def test_separate_wait_bounded_after_a_crash(established, ack_timeout):
    """The gateway sends an empty ACK, then crashes (and comes back without the session): after SEPARATE_WAIT x
    ack_timeout the device handshakes again and resends the request, with the same key and payload."""
    net = Net(ack_timeout=ack_timeout)
    if established:
        assert net.request()[0] == "ok"
        net.now = 10.0
    net.mode = "separate-never"
    t_ack, first = _empty_ack_then(net)
    net.server = net.new_server()  # the crash; the new gateway answers
    net.mode = "piggyback"
    net.sent.clear()
    s = net.session
    while s.busy():
        net.step()
    assert s.result[0] == "ok" and s.result[1].code == coap.CHANGED
    assert s.handshakes == 2 and s.failures == 0
    # nothing goes out between the empty ACK and the bound (no CoAP retransmission after an empty ACK); then the
    # close_notify of the stale session and the new ClientHello, at the bound
    assert net.sent[0][0] == pytest.approx(t_ack + coaps.SEPARATE_WAIT * ack_timeout)
    assert [d[0] for _, d in net.sent[:2]] == [ALERT, 22]
    again = net.requests[-1]
    assert again.opt.uri_query == first.opt.uri_query == (KEY_Q,)
    assert again.payload == first.payload and (again.mid, again.token) != (first.mid, first.token)
    assert net.raw[-1] == _aio_request(again, (KEY_Q,), first.payload)


def test_separate_wait_bounded_server_alive():
    """The same server sends an empty ACK and never the response (it lost the request): the session is replaced at
    the bound and the same server answers the resent request on the new session."""
    net = Net(mode="separate-once")
    t0 = net.now
    ok, m = net.request(query=KEY_Q)
    assert ok == "ok" and m.code == coap.CHANGED
    assert net.now == pytest.approx(t0 + SEP_BOUND) and net.session.handshakes == 2
    cons = [r for r in net.requests if r.mtype == aiocoap.CON]
    assert [r.opt.uri_query for r in cons] == [(KEY_Q,)] * 2 and cons[0].token != cons[1].token
    assert net.request(query="k=0123abcd.8")[0] == "ok" and net.session.handshakes == 2  # the new session stays


@pytest.mark.parametrize(("delay", "handshakes"), [(SEP_BOUND - 0.01, 1), (SEP_BOUND + 0.01, 2)])
def test_separate_response_just_within_or_after_the_bound(delay, handshakes):
    net = Net(mode="separate")
    net.sep_delay = delay
    s = net.session
    s.request(0.0, coap.POST, "telemetry", b"\xa1\x63seq\x07", 60, query=KEY_Q)
    net.pump()
    net.sep_delay = 1.0  # for the resent request, if any
    while s.busy():
        net.step()
    ok, m = s.result
    assert ok == "ok" and m.payload == b"later" and s.handshakes == handshakes
    if handshakes == 1:
        assert net.now == pytest.approx(delay)
    else:  # too late: the session was replaced at the bound, the resent request answered 1 s later on the new one
        assert net.now == pytest.approx(SEP_BOUND + 1.0)
        assert [r.opt.uri_query for r in net.requests if r.mtype == aiocoap.CON] == [(KEY_Q,)] * 2


def test_no_separate_response_twice_then_error():
    """Empty ACKs and never a response, on the first session and the replaced one: the request ends after two
    bounds (not MAX_TRANSMIT_WAIT, 93 s), the session is dropped, the next request handshakes again."""
    net = Net()
    assert net.request()[0] == "ok"
    net.mode = "separate-never"
    net.sent.clear()
    t0 = net.now = 10.0
    assert net.request(query=KEY_Q) == ("error", "no separate response")
    s = net.session
    assert net.now == pytest.approx(t0 + 2 * SEP_BOUND)
    assert s.handshakes == 2 and s.failures == 1 and s.conn is None and s.timer() is None
    cons = [r for r in net.requests if r.mtype == aiocoap.CON]
    assert [r.opt.uri_query for r in cons[1:]] == [(KEY_Q,)] * 2
    assert len(net.app_sent()) == 2  # one CON per session: no retransmission after an empty ACK
    net.mode = "piggyback"
    assert net.request()[0] == "ok" and s.handshakes == 3


def test_stale_then_no_separate_response_replaces_once():
    """A request that replaced a stale session, then gets an empty ACK and nothing: no second replacement."""
    net = Net()
    assert net.request()[0] == "ok"
    net.server = net.new_server()
    net.mode = "separate-never"
    assert net.request(query=KEY_Q) == ("error", "no separate response")
    assert net.session.handshakes == 2


def test_separate_wait_under_loss():
    """30% loss each way with separate responses: the bound replaces some sessions, every request still ends."""
    ok = total = 0
    for seed in range(60):
        net = Net(seed=seed, loss=0.3, dup=0.1, reorder=True, mode="separate", handshake_timeout=300)
        for i in range(3):
            r = net.request(payload=cbor2.dumps({"seq": i}), query=f"k=0123abcd.{i}")
            total += 1
            ok += r[0] == "ok"
            if r[0] == "error":
                net.idle(net.now + net.session.delay())
        assert {q for r in net.requests if r.mtype == aiocoap.CON for q in r.opt.uri_query} <= {
            f"k=0123abcd.{i}" for i in range(3)}
    assert ok / total > 0.8, (ok, total)


def test_request_while_busy():
    net = Net(mode="silent")
    s = net.session
    s.request(0.0, coap.POST, "telemetry", b"\x01", 60)
    net.pump()
    assert s.busy()
    with pytest.raises(ValueError):
        s.request(0.0, coap.POST, "telemetry", b"\x02", 60)
    assert s.busy()


def test_abort():
    net = Net(mode="silent")
    s = net.session
    s.request(0.0, coap.POST, "telemetry", b"\x01", 60)
    net.pump()
    assert s.busy() and s.conn.established
    s.abort("network error 101")
    assert s.result == ("error", "network error 101")
    assert not s.busy() and s.conn is None and s.timer() is None and s.failures == 1
    out = s.datagrams()
    assert [d[0] for d in out] == [ALERT]  # close_notify for the dropped session
    s.abort("again")  # nothing pending: no new result
    assert s.result == ("error", "network error 101")
    net.mode = "piggyback"
    assert net.request()[0] == "ok" and s.handshakes == 2


def test_abort_during_handshake():
    s = coaps.Session(b"dev1", KEY, _rand(1))
    s.request(0.0, coap.POST, "t", b"\x01", 60)
    assert [d[0] for d in s.datagrams()] == [22]  # the ClientHello
    s.abort("network error 113")
    assert s.result == ("error", "network error 113") and s.datagrams() == []  # no close_notify before keys


def test_handshake_timeout():
    net = Net(retransmit_initial=1.0, handshake_timeout=10)
    net.up = False
    assert net.request() == ("error", "handshake timeout")
    assert net.now == 10.0
    s = net.session
    assert s.failures == 1 and s.conn is None and s.timer() is None
    assert [t for t, _ in net.sent] == [0.0, 1.0, 3.0, 7.0]
    net.up = True
    assert net.request()[0] == "ok"


def _lossy_run(seed, mtu, requests=3, mod=None):
    net = Net(seed=seed, loss=0.3, dup=0.1, reorder=True, server_mtu=mtu, mtu=mtu, mod=mod,
              handshake_timeout=300, retransmit_max=8.0)
    results = []
    for i in range(requests):
        # a reading padded so that the record nearly fills a 128-byte datagram
        payload = cbor2.dumps({"seq": i, "uptime": 60 * i, "pad": bytes(40)})
        r = net.request(payload=payload)
        assert isinstance(r, tuple) and len(r) == 2 and r[0] in ("ok", "error"), r
        if r[0] == "ok":
            assert r[1].code == coap.CHANGED
        else:
            assert isinstance(r[1], str) and r[1], r
            net.idle(net.now + net.session.delay())
        results.append(r)
    assert max(len(d) for _, d in net.sent) <= mtu and max(len(d) for d in net.server_sent) <= mtu
    return net, results


@pytest.mark.parametrize("mtu", [512, 128])
def test_loss_30_percent_200_seeds(mtu, capsys):
    ok = total = hs = 0
    errors: dict[str, int] = {}
    for seed in range(200):
        net, results = _lossy_run(seed, mtu)
        total += len(results)
        hs += net.session.handshakes
        for r in results:
            if r[0] == "ok":
                ok += 1
            else:
                errors[r[1]] = errors.get(r[1], 0) + 1
    rate = ok / total
    with capsys.disabled():
        print(f"\n[mtu {mtu}] 30% loss each way, 10% dup, reordering: {ok}/{total} requests ok ({rate:.1%}), "
              f"{hs} handshakes, errors {errors}")
    assert rate > 0.9


def test_pure_python_aes_smoke():
    mod = _load(cryptolib=False)
    try:
        assert mod.dtls.aes.cryptolib is None
        net = Net(mod=mod)
        for _ in range(3):
            assert net.request()[0] == "ok"
        assert net.session.handshakes == 1
        for seed in range(3):
            _, results = _lossy_run(seed, 128, requests=2, mod=mod)
            assert ("ok" in [r[0] for r in results])
    finally:
        _load()


@pytest.mark.parametrize("established", [False, True])
def test_request_larger_than_mtu_fails_cleanly(established):
    net = Net(mtu=128, server_mtu=128)
    s = net.session
    if established:
        assert net.request()[0] == "ok"
    try:
        s.request(net.now, coap.POST, "telemetry", bytes(100), 60)
    except ValueError:
        assert not s.busy()  # refused up front: acceptable
    else:
        net.pump()  # must not raise
        while s.busy():
            net.step()
        assert s.result[0] == "error"
    assert not s.busy()
    assert net.request()[0] == "ok"


def test_cryptolib_path_in_use():
    assert coaps.dtls.aes.cryptolib is not None


def test_reason_strings():
    assert coaps.reason(20) == "fatal alert 20 (bad_record_mac)"
    assert coaps.reason(115) == "fatal alert 115 (unknown_psk_identity)"
    assert coaps.reason(99) == "fatal alert 99 (alert)"
    assert coaps.reason("timeout") == "handshake timeout"
    assert coaps.reason("no_ems") == "server without extended master secret (RFC 7627), refused"
