"""The MicroPython DTLS client (micropython/iotdtls_mp/dtls.py) on CPython against iotdtls's sans-IO server."""

from __future__ import annotations

import random
import sys

import pytest
from mp_fixtures import deliver_lossy
from mp_shim import import_device

from iotdtls import DataReceived, DTLSConfiguration, DTLSServer

KEY = bytes(range(16))
ADDR = ("10.0.0.2", 5684)


def _load(cryptolib: bool = True):
    for name in ("iotdtls_mp.dtls", "iotdtls_mp.aes", "iotdtls_mp.ccm", "iotdtls_mp.prf"):
        sys.modules.pop(name, None)
    import_device("aes", cryptolib=cryptolib)
    return import_device("dtls", cryptolib=cryptolib)


dtls = _load()


def _rand(seed: int):
    r = random.Random(seed)
    return lambda n: bytes(r.getrandbits(8) for _ in range(n))


class Net:
    """Client and server joined in memory, with a fake clock, loss, duplication and reordering."""

    def __init__(self, seed=0, loss=0.0, server_mtu=512, psk=KEY, dup=0.0, reorder=False, client=None, server=None,
                 identity=b"dev1", **kw):
        self.rng = random.Random(seed)
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.now = 0.0
        self.server = DTLSServer(DTLSConfiguration(is_client=False, psk_store={b"dev1": KEY}, mtu=server_mtu,
                                                   random=_rand(seed + 1000), **(server or {})))
        self.client = client or dtls.Client(identity, psk, _rand(seed), **kw)
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.server_data: list[bytes] = []

    def _lossy(self, items, out, shuffle):
        deliver_lossy(self.rng, items, out, self.loss, self.dup, shuffle)

    def pump(self):
        """Carry datagrams until both sides are quiet."""
        for _ in range(1000):
            self._lossy(self.client.datagrams(), self.to_server, False)
            self._lossy([d for d, _ in self.server.datagrams_to_send(self.now)], self.to_client, self.reorder)
            if not self.to_server and not self.to_client:
                return
            while self.to_server:
                self.server.receive_datagram(self.to_server.pop(0), ADDR, self.now)
            while self.to_client:
                self.client.receive(self.to_client.pop(0), self.now)
            while (ev := self.server.next_event()) is not None:
                if isinstance(ev[1], DataReceived):
                    self.server_data.append(ev[1].data)

    def run(self, limit=600.0):
        self.client.connect(self.now)
        self.pump()
        while not self.client.established and not self.client.closed and self.now < limit:
            times = [t for t in (self.client.timer(), self.server.get_timer()) if t is not None]
            if not times:
                break
            self.now = max(self.now, min(times))
            self.client.on_timer(self.now)
            self.server.handle_timer(self.now)
            self.pump()
        return self.client


def _exchange(net):
    c = net.client
    c.send(b"hello server")
    net.pump()
    assert net.server_data == [b"hello server"]
    net.server.send(ADDR, b"hello device")
    net.pump()
    assert c.recv() == [b"hello device"]


def test_handshake_and_data():
    net = Net()
    c = net.run()
    assert c.established and c.error is None
    assert net.now == 0.0  # no retransmission needed
    _exchange(net)


def test_server_mtu_128_fragmented_flights():
    net = Net(server_mtu=128)
    c = net.run()
    assert c.established
    _exchange(net)


@pytest.mark.parametrize("server_mtu", [512, 128])
def test_reorder_and_duplicates(server_mtu):
    for seed in range(30):
        net = Net(seed=seed, dup=0.5, reorder=True, server_mtu=server_mtu)
        c = net.run()
        assert c.established, seed
        _exchange(net)


def test_loss_30_percent_200_seeds():
    retransmitted = 0
    for seed in range(200):
        net = Net(seed=seed, loss=0.3, server_mtu=128 if seed % 2 else 512, handshake_timeout=600,
                  retransmit_max=8.0)
        c = net.run(limit=2000.0)
        assert c.established, (seed, c.error)
        retransmitted += net.now > 0
    assert retransmitted > 100  # the loss really hit the handshakes


class SizedNet(Net):
    """Net that records the size of every datagram the client sends."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.sizes: list[int] = []
        inner = self.client.datagrams

        def recorded():
            out = inner()
            self.sizes += [len(d) for d in out]
            return out

        self.client.datagrams = recorded


@pytest.mark.parametrize("mtu", [64, 80, 100, 128])
def test_client_flights_fragmented_below_mtu(mtu):
    # a ClientHello with the server's 32-byte cookie is ~140 bytes: it must be split into handshake fragments
    net = SizedNet(server_mtu=max(mtu, 64), mtu=mtu, identity=b"device-with-a-long-identity-0123456789")
    assert net.server._config.psk_store is not None
    net.server._config.psk_store[b"device-with-a-long-identity-0123456789"] = KEY
    c = net.run()
    assert c.established, c.error
    assert net.now == 0.0
    assert max(net.sizes) <= mtu
    assert len(net.sizes) > 3  # the hello with the cookie took more than one datagram
    _exchange(net)


def test_client_fragments_survive_loss_and_reorder():
    for seed in range(60):
        net = SizedNet(seed=seed, loss=0.2, dup=0.2, reorder=True, server_mtu=80, mtu=80, handshake_timeout=600)
        c = net.run(limit=2000.0)
        assert c.established, (seed, c.error)
        assert max(net.sizes) <= 80


def test_wrong_psk_fails_cleanly():
    net = Net(psk=b"\x01" * 16, handshake_timeout=20)
    c = net.run()
    assert not c.established and c.closed
    assert c.error == 20  # the server's bad_record_mac alert
    with pytest.raises(OSError):
        c.send(b"x")


def test_send_larger_than_mtu_refused():
    net = Net()
    c = net.run()
    with pytest.raises(ValueError):
        c.send(bytes(512 - 28))
    c.send(bytes(512 - 29))
    [d] = c.datagrams()
    assert len(d) == 512


def test_unknown_identity_fails_cleanly():
    c = Net(identity=b"nobody").run()
    assert c.closed and not c.established and c.error == 20


@pytest.mark.parametrize("server", [{"cookies": False}, {"psk_identity_hint": b"gateway"},
                                    {"coalesce_records": True}])
def test_server_variants(server):
    net = Net(server=server, dup=0.3, reorder=True, loss=0.2, seed=3)
    c = net.run()
    assert c.established
    net.loss = 0.0
    _exchange(net)


def test_server_without_ems_rejected():
    c = Net(server={"extended_master_secret": False}).run()
    assert c.closed and not c.established and c.error == "no_ems"


def test_fatal_alert_during_handshake():
    c = dtls.Client(b"dev1", KEY, _rand(2))
    c.connect(0.0)
    c.receive(bytes([21]) + b"\xfe\xfd" + bytes(8) + b"\x00\x02\x02\x28", 0.0)  # fatal handshake_failure
    assert c.closed and c.error == 40 and c.timer() is None


def test_plaintext_alert_after_handshake_ignored():
    net = Net()
    c = net.run()
    net.server.send(ADDR, b"x")
    [d] = [d for d, _ in net.server.datagrams_to_send(0.0)]
    # an unauthenticated (epoch 0) alert after the handshake is dropped
    c.receive(bytes([21]) + b"\xfe\xfd" + bytes(8) + b"\x00\x02\x02\x28", 0.0)
    assert not c.closed
    c.receive(d, 0.0)
    assert c.recv() == [b"x"]


def test_replay_window_64():
    net = Net()
    net.run()
    for i in range(70):
        net.server.send(ADDR, b"%d" % i)
    ds = [d for d, _ in net.server.datagrams_to_send(0.0)]
    assert len(ds) == 70
    net.client.receive(ds[-1], 0.0)
    for d in ds[:-1]:
        net.client.receive(d, 0.0)
    got = net.client.recv()
    assert got[0] == b"69" and len(got) == 64  # 63 more still inside the window; the 6 oldest are too old
    assert got[1:] == [b"%d" % i for i in range(6, 69)]


def test_handshake_timeout_without_server():
    c = dtls.Client(b"dev1", KEY, _rand(1), retransmit_initial=1.0, retransmit_max=4.0, handshake_timeout=10)
    c.connect(0.0)
    sent = [len(c.datagrams())]
    now, deadlines = 0.0, []
    while c.timer() is not None:
        now = c.timer()
        deadlines.append(now)
        c.on_timer(now)
        sent.append(len(c.datagrams()))
    assert deadlines == [1.0, 3.0, 7.0, 10.0]  # doubling, capped at retransmit_max and at handshake_timeout
    assert sent == [1, 1, 1, 1, 0]
    assert c.closed and c.error == "timeout"


def test_replayed_record_dropped():
    net = Net()
    net.run()
    net.server.send(ADDR, b"once")
    [d] = [d for d, _ in net.server.datagrams_to_send(0.0)]
    net.client.receive(d, 0.0)
    net.client.receive(d, 0.0)
    assert net.client.recv() == [b"once"]
    # an older record inside the window is still accepted once
    net.server.send(ADDR, b"a")
    net.server.send(ADDR, b"b")
    da, db = [d for d, _ in net.server.datagrams_to_send(0.0)]
    net.client.receive(db, 0.0)
    net.client.receive(da, 0.0)
    net.client.receive(da, 0.0)
    assert net.client.recv() == [b"b", b"a"]


def test_tampered_record_dropped():
    net = Net()
    net.run()
    net.server.send(ADDR, b"secret")
    [d] = [d for d, _ in net.server.datagrams_to_send(0.0)]
    bad = d[:-1] + bytes([d[-1] ^ 1])
    net.client.receive(bad, 0.0)
    assert net.client.recv() == [] and not net.client.closed
    net.client.receive(d, 0.0)
    assert net.client.recv() == [b"secret"]


def test_close_notify_from_client():
    net = Net()
    net.run()
    net.client.close()
    net.pump()
    assert net.client.closed and net.client.error is None
    assert ADDR not in net.server.connections


def test_close_notify_from_server():
    net = Net()
    net.run()
    net.server.close(ADDR)
    net.pump()
    assert net.client.closed and net.client.error is None


def test_server_hello_without_ems_rejected():
    c = dtls.Client(b"dev1", KEY, _rand(2))
    c.connect(0.0)
    c.datagrams()
    body = b"\xfe\xfd" + bytes(32) + b"\x00" + b"\xc0\xa8\x00"  # no extensions
    hs = bytes([2]) + len(body).to_bytes(3, "big") + b"\x00\x00" + bytes(3) + len(body).to_bytes(3, "big") + body
    rec = bytes([22]) + b"\xfe\xfd" + bytes(8) + len(hs).to_bytes(2, "big") + hs
    c.receive(rec, 0.0)
    assert c.closed and c.error == "no_ems"
    assert c.datagrams()  # a fatal handshake_failure alert


def test_pure_python_aes():
    mod = _load(cryptolib=False)
    try:
        for seed in range(10):
            net = Net(seed=seed, loss=0.3 if seed else 0.0, client=mod.Client(b"dev1", KEY, _rand(seed),
                                                                               handshake_timeout=600))
            c = net.run(limit=2000.0)
            assert c.established, seed
            net.loss = 0.0
            _exchange(net)
        assert mod.aes.cryptolib is None
    finally:
        _load()
