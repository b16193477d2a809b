"""The server front under attack, sans-IO (issue 13): replayed hellos cannot end a session, one network cannot hold
the handshake table, the session table stays open to new devices, and the amplification budget. The same
findings against a real ``iotdtls-server`` over UDP are in tests/test_attacks.py."""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Callable
from typing import Any

import pytest
from helpers import KEY, client_config, drain, pk_client_config, pk_server_config, server_config, shuttle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotdtls import (
    ConnectionReplaced,
    ConnectionTerminated,
    DataReceived,
    DTLSConnection,
    DTLSServer,
    HandshakeCompleted,
    HandshakeTimeout,
    ReplacementFailed,
    SessionEvicted,
)
from iotdtls.events import Event
from iotdtls.fairness import HandshakeSlots, SessionTable, network_of
from iotdtls.ratelog import RateLimitedLog
from iotdtls.server import DEFAULT_SERVER_IDLE_TIMEOUT

Addr = tuple[str, int]
FLEET = {b"dev%d" % i: KEY for i in range(200)}


class Lan:
    """Devices at their own addresses around one server front, in virtual time. Server output waits in a
    mailbox per address until ``down``; ``up`` hands a device's datagrams to the server."""

    def __init__(self, server: DTLSServer) -> None:
        self.server = server
        self.now = 0.0
        self.devices: dict[Addr, DTLSConnection] = {}
        self.mail: dict[Addr, list[bytes]] = {}
        self.events: list[tuple[object, Event]] = []
        self.wire: list[tuple[Addr, str, bytes]] = []

    def device(self, addr: Addr, seed: int, config: Any = None) -> DTLSConnection:
        cfg = config or client_config(seed=seed, psk_identity=b"dev%d" % seed)
        conn = self.devices[addr] = DTLSConnection(cfg, peer="server")
        conn.connect(self.now)
        return conn

    def collect(self) -> None:
        for d, a in self.server.datagrams_to_send(self.now):
            self.mail.setdefault(a, []).append(d)  # type: ignore[arg-type]
            self.wire.append((a, "down", d))  # type: ignore[arg-type]
        while (e := self.server.next_event()) is not None:
            self.events.append(e)

    def send_raw(self, addr: Addr, datagram: bytes) -> None:
        self.wire.append((addr, "up", datagram))
        self.server.receive_datagram(datagram, addr, self.now)
        self.collect()

    def up(self, addr: Addr) -> list[bytes]:
        out = self.devices[addr].datagrams_to_send(self.now)
        for d in out:
            self.send_raw(addr, d)
        return out

    def down(self, addr: Addr) -> None:
        self.collect()
        for d in self.mail.pop(addr, []):
            self.devices[addr].receive_datagram(d, self.now)

    def exchange(self, addr: Addr, rounds: int = 6) -> None:
        for _ in range(rounds):
            self.up(addr)
            self.down(addr)

    def establish(self, addr: Addr, seed: int, config: Any = None) -> DTLSConnection:
        conn = self.device(addr, seed, config)
        self.exchange(addr)
        assert conn.is_established, conn.error
        return conn

    def advance(self, until: float, deliver: Callable[[Addr], bool] = lambda a: True) -> None:
        """Fire every timer up to ``until``; server output goes to devices for which ``deliver`` is true."""
        while True:
            timers = [t for t in [self.server.get_timer()] + [c.get_timer() for c in self.devices.values()]
                      if t is not None and t <= until]
            if not timers:
                break
            self.now = max(self.now, min(timers))
            self.server.handle_timer(self.now)
            self.collect()
            for addr, conn in self.devices.items():
                conn.handle_timer(self.now)
                if deliver(addr):
                    self.up(addr)
                    self.down(addr)
        self.now = max(self.now, until)

    def events_of(self, addr: Addr) -> list[Event]:
        return [e for a, e in self.events if a == addr]


def data_flows(lan: Lan, addr: Addr, tag: bytes) -> None:
    """The device at ``addr`` and the server exchange a record each way."""
    lan.events.clear()
    device = lan.devices[addr]
    device.send(b"up " + tag)
    lan.up(addr)
    assert DataReceived(b"up " + tag) in lan.events_of(addr)
    lan.server.send(addr, b"down " + tag)
    lan.down(addr)
    assert DataReceived(b"down " + tag) in drain(device)


# -- finding 1: replayed ClientHellos ----------------------------------------------------------------------


HERE: Addr = ("192.0.2.50", 5684)


def hello_with_cookie(lan: Lan, addr: Addr) -> bytes:
    """The ClientHello carrying a cookie that the device at ``addr`` sent (the second datagram it sent)."""
    return [d for a, way, d in lan.wire if a == addr and way == "up"][1]


def test_replayed_hello_of_an_earlier_client_does_not_end_the_session() -> None:
    lan = Lan(DTLSServer(server_config(psk_store=FLEET)))
    lan.establish(HERE, seed=1)  # client A: handshakes and leaves
    replay = hello_with_cookie(lan, HERE)
    lan.wire.clear()
    lan.establish(HERE, seed=2)  # client B, from the same address (A's session is replaced: a reboot)
    assert lan.server.stats["sessions_replaced"] == lan.server.stats["replacements_started"] == 1
    lan.events.clear()
    lan.send_raw(HERE, replay)  # A's old hello, cookie still valid, from B's address
    assert lan.server.stats["replacements_started"] == 2
    lan.down(HERE)  # the new handshake's flight reaches B, which ignores it
    assert lan.devices[HERE].is_established and lan.events == []
    for i in range(3):
        data_flows(lan, HERE, b"%d" % i)  # B's session carries data both ways meanwhile
    lan.send_raw(HERE, replay)  # replayed again: the same handshake, no second one
    assert lan.server.stats["replacements_started"] == 2
    lan.advance(200.0)  # the new handshake times out; nothing changes for B
    failed = [e for e in lan.events_of(HERE) if isinstance(e, ReplacementFailed)]
    assert len(failed) == 1 and isinstance(failed[0].error, HandshakeTimeout)
    assert not [e for e in lan.events_of(HERE) if isinstance(e, ConnectionTerminated)]
    data_flows(lan, HERE, b"after")
    assert lan.server.stats["replacements_failed"] == 1 and lan.server.stats["sessions_replaced"] == 1


def test_duplicated_hello_of_the_session_itself_is_harmless() -> None:
    lan = Lan(DTLSServer(server_config(psk_store=FLEET)))
    lan.establish(HERE, seed=1)
    own = hello_with_cookie(lan, HERE)
    lan.events.clear()
    for _ in range(5):
        lan.now += 3.0
        lan.send_raw(HERE, own)
    lan.down(HERE)
    assert lan.events == [] and lan.server.stats["replacements_started"] == 0
    data_flows(lan, HERE, b"still")


def test_rebooted_device_replaces_its_session_only_when_its_finished_verifies() -> None:
    lan = Lan(DTLSServer(server_config(psk_store=FLEET)))
    old = lan.establish(HERE, seed=1)
    old_conn = lan.server.connections[HERE]
    lan.events.clear()
    new = DTLSConnection(client_config(seed=7, psk_identity=b"dev1"), peer="server")
    new.connect(lan.now)
    for _ in range(2):  # ClientHello, ClientHello with cookie: the new handshake is under way
        for d in new.datagrams_to_send(lan.now):
            lan.send_raw(HERE, d)
        lan.collect()
        for d in lan.mail.pop(HERE, []):
            new.receive_datagram(d, lan.now)
    assert lan.server.connections[HERE] is old_conn and old_conn.is_established
    # the old session still works both ways (its records authenticate; they never reach the new handshake)
    lan.devices[HERE] = old
    data_flows(lan, HERE, b"old")
    lan.events.clear()
    lan.devices[HERE] = new
    lan.exchange(HERE)
    assert new.is_established
    events = lan.events_of(HERE)
    assert isinstance(events[0], ConnectionTerminated) and isinstance(events[0].error, ConnectionReplaced)
    assert isinstance(events[1], HandshakeCompleted) and events[1].identity == b"dev1"
    assert lan.server.connections[HERE] is not old_conn and old_conn.is_closed
    data_flows(lan, HERE, b"new")


def test_session_that_ends_during_a_new_handshake_hands_the_address_over() -> None:
    lan = Lan(DTLSServer(server_config(psk_store=FLEET)))
    old = lan.establish(HERE, seed=1)
    new = DTLSConnection(client_config(seed=8, psk_identity=b"dev2"), peer="server")
    new.connect(lan.now)
    lan.devices[HERE] = new
    lan.exchange(HERE, rounds=1)  # ClientHello -> HelloVerifyRequest
    lan.up(HERE)  # ClientHello with the cookie: a second handshake beside the session
    assert lan.server.stats["replacements_started"] == 1
    old.close()  # the old session's close_notify arrives meanwhile
    for d in old.datagrams_to_send(lan.now):
        lan.send_raw(HERE, d)
    lan.events.clear()
    lan.down(HERE)
    lan.exchange(HERE)
    assert new.is_established and lan.server.connections[HERE].identity == b"dev2"
    assert [type(e) for e in lan.events_of(HERE)] == [HandshakeCompleted]


# -- finding 2: handshake slots ----------------------------------------------------------------------------


def stall(lan: Lan, addr: Addr, seed: int) -> None:
    """A device that completes the cookie exchange and then goes silent."""
    lan.device(addr, seed)
    lan.exchange(addr, rounds=2)
    del lan.devices[addr]


def test_one_network_cannot_take_more_than_its_share_of_handshakes() -> None:
    server = DTLSServer(server_config(psk_store=FLEET), max_handshakes=8)
    assert server.max_handshakes_per_ip == 2
    lan = Lan(server)
    for port in range(5):
        stall(lan, ("198.51.100.66", 1000 + port), seed=100 + port)
    assert server.handshakes_in_progress == 2 and server.stats["dropped_per_ip"] == 3
    lan.establish(("192.0.2.1", 4000), seed=1)  # another network gets in at once


def test_full_table_evicts_from_the_network_holding_the_most() -> None:
    server = DTLSServer(server_config(psk_store=FLEET), max_handshakes=8, max_handshakes_per_ip=4)
    lan = Lan(server)
    seed = 100
    for net in ("198.51.100.1", "198.51.100.2"):  # two networks fill the table
        for port in range(4):
            stall(lan, (net, 1000 + port), seed)
            seed += 1
    assert server.handshakes_in_progress == 8
    lan.establish(("192.0.2.1", 4000), seed=1)  # a third network takes a slot from one of the biggest
    assert server.stats["handshakes_evicted"] == 1 and server.handshakes_in_progress == 7  # 3 + 4
    stall(lan, ("203.0.113.9", 1), seed=2)  # a free slot
    stall(lan, ("203.0.113.9", 2), seed=3)  # full: the network with 4 gives up one (3 + 3 + 2)
    assert server.stats["handshakes_evicted"] == 2 and server.handshakes_in_progress == 8
    stall(lan, ("203.0.113.9", 3), seed=4)  # its own 2 are not 2 below the biggest (3): refused
    assert server.stats["handshakes_evicted"] == 2 and server.stats["dropped_full"] == 1


def test_attacker_refreshing_half_open_handshakes_does_not_delay_other_networks() -> None:
    """One network refreshes fresh handshakes from 400 ports at 100 datagrams/s for a minute of virtual time;
    a device elsewhere completes in its unloaded time (here: no retransmission at all)."""
    server = DTLSServer(server_config(psk_store=FLEET))
    lan = Lan(server)
    attacker_net = "198.51.100.99"
    seed = 1000
    for step in range(6000):  # 100 per second for 60 s, round-robin over 400 ports
        lan.now = step / 100
        port = 2000 + step % 400
        stall(lan, (attacker_net, port), seed)
        seed += 1
        if step in (1500, 4500):
            device = lan.establish(("192.0.2.7", 5684), seed=7)
            assert device.retransmissions == 0
            del lan.devices[("192.0.2.7", 5684)]
            lan.server.close(("192.0.2.7", 5684))
    assert server.handshakes_in_progress <= server.max_handshakes_per_ip + 1
    assert server.stats["dropped_per_ip"] > 5000


# -- finding 3: the session table --------------------------------------------------------------------------


def test_new_session_of_an_identity_closes_the_older_one_with_close_notify() -> None:
    lan = Lan(DTLSServer(server_config(psk_store=FLEET)))
    first = lan.establish(("192.0.2.1", 1), seed=1, config=client_config(seed=1, psk_identity=b"dev1"))
    lan.establish(("192.0.2.2", 2), seed=2, config=client_config(seed=2, psk_identity=b"dev1"))  # leaked key
    lan.down(("192.0.2.1", 1))
    assert first.is_closed and first.error is None  # an orderly close_notify
    ended = lan.events_of(("192.0.2.1", 1))
    assert isinstance(ended[-1], ConnectionTerminated) and isinstance(ended[-1].error, SessionEvicted)
    assert set(lan.server.connections) == {("192.0.2.2", 2)}
    assert lan.server.stats["sessions_evicted_identity"] == 1


def test_sessions_per_identity_can_be_raised_or_unlimited() -> None:
    for cap in (3, None):
        lan = Lan(DTLSServer(server_config(psk_store=FLEET), max_sessions_per_identity=cap))
        for i in range(3):
            lan.establish(("192.0.2.1", 1 + i), seed=i, config=client_config(seed=i, psk_identity=b"dev1"))
        assert len(lan.server.connections) == 3 and lan.server.stats["sessions_evicted_identity"] == 0


def anonymous(seed: int) -> Any:
    """A raw-public-key client without a key of its own: it authenticates the server, not itself."""
    return pk_client_config(seed=seed, key=None)


def test_anonymous_sessions_are_capped_per_network() -> None:
    lan = Lan(DTLSServer(pk_server_config(), max_anonymous_per_ip=4))
    clients = [lan.establish(("198.51.100.5", 100 + i), seed=i, config=anonymous(i)) for i in range(6)]
    assert len(lan.server.connections) == 4 and lan.server.stats["sessions_evicted_anonymous"] == 2
    for i, c in enumerate(clients):
        lan.down(("198.51.100.5", 100 + i))
        assert c.is_closed == (i < 2)
    lan.establish(("198.51.100.6", 1), seed=50, config=anonymous(50))  # another network is not affected
    assert len(lan.server.connections) == 5


def test_full_table_lets_a_new_device_in_evicting_the_least_recently_active() -> None:
    lan = Lan(DTLSServer(pk_server_config(psk_store=FLEET), max_sessions=6))
    for i in range(4):
        lan.establish((f"198.51.100.{i}", 1), seed=i, config=anonymous(i))
    for i in range(2):
        lan.establish((f"192.0.2.{i}", 1), seed=10 + i, config=client_config(seed=10 + i, psk_identity=b"dev%d" % i))
    data_flows(lan, ("198.51.100.0", 1), b"the oldest anonymous client is active again")
    lan.establish(("192.0.2.9", 1), seed=9, config=client_config(seed=9, psk_identity=b"dev9"))
    # the least recently active anonymous session went, not an authenticated device
    assert ("198.51.100.1", 1) not in lan.server.connections and len(lan.server.connections) == 6
    assert lan.server.stats["sessions_evicted_full"] == 1


def test_anonymous_newcomer_never_displaces_an_authenticated_device() -> None:
    lan = Lan(DTLSServer(pk_server_config(psk_store=FLEET), max_sessions=3))
    for i in range(3):
        lan.establish((f"192.0.2.{i}", 1), seed=i, config=client_config(seed=i, psk_identity=b"dev%d" % i))
    newcomer = lan.device(("198.51.100.1", 1), seed=40, config=anonymous(40))
    lan.exchange(("198.51.100.1", 1))
    assert newcomer.is_closed and newcomer.error is None  # its handshake completed, then close_notify
    assert len(lan.server.connections) == 3 and lan.server.stats["sessions_refused_full"] == 1


def test_authenticated_device_gets_in_when_the_table_is_full_of_authenticated_ones() -> None:
    lan = Lan(DTLSServer(server_config(psk_store=FLEET), max_sessions=3))
    for i in range(3):
        lan.establish((f"192.0.2.{i}", 1), seed=i)
        lan.now += 1.0
    data_flows(lan, ("192.0.2.0", 1), b"alive")
    lan.establish(("192.0.2.9", 1), seed=9)
    assert set(lan.server.connections) == {("192.0.2.0", 1), ("192.0.2.2", 1), ("192.0.2.9", 1)}


def test_server_sessions_idle_out_after_a_day_by_default() -> None:
    for idle, alive_after_two_days in ((None, False), (0, True), (60.0, False)):
        lan = Lan(DTLSServer(server_config(psk_store=FLEET, idle_timeout=idle)))
        device = lan.establish(("192.0.2.1", 1), seed=1)
        lan.advance(DEFAULT_SERVER_IDLE_TIMEOUT - 1)
        assert device.is_established == (idle != 60.0)
        lan.advance(2 * DEFAULT_SERVER_IDLE_TIMEOUT)
        assert device.is_established == alive_after_two_days
        assert bool(lan.server.connections) == alive_after_two_days


def test_evictions_and_refusals_are_logged_once_per_cause_and_minute(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="iotdtls.server")
    server = DTLSServer(server_config(psk_store=FLEET), max_handshakes=4)
    lan = Lan(server)
    for port in range(30):
        lan.now = port * 1.0
        stall(lan, ("198.51.100.66", 1000 + port), seed=100 + port)
    lines = [r.getMessage() for r in caplog.records if "handshakes in progress from 198.51.100.66" in r.getMessage()]
    assert len(lines) == 1 and server.stats["dropped_per_ip"] == 29
    lan.now = 100.0
    stall(lan, ("198.51.100.66", 5000), seed=99)
    lines = [r.getMessage() for r in caplog.records if "handshakes in progress from 198.51.100.66" in r.getMessage()]
    assert len(lines) == 2 and "(28 more since the last report)" in lines[1]
    assert all(KEY.hex() not in r.getMessage() for r in caplog.records)


# -- finding 6: amplification -------------------------------------------------------------------------------


def silent_after_cookie(server: DTLSServer, config: Any) -> tuple[int, int, int]:
    """``(bytes from the client, bytes to it, flights)`` for a client that goes silent after the cookie
    exchange, up to the server's handshake timeout."""
    lan = Lan(server)
    lan.device(HERE, 1, config)
    lan.exchange(HERE, rounds=2)
    del lan.devices[HERE]
    lan.advance(200.0)
    up = sum(len(d) for _, way, d in lan.wire if way == "up")
    down = [d for _, way, d in lan.wire if way == "down"]
    return up, sum(len(d) for d in down), len(down) - 1


@pytest.mark.parametrize("profile", ["psk", "rpk"])
def test_silent_client_gets_at_most_three_times_what_it_sent(profile: str) -> None:
    if profile == "psk":
        server, config = DTLSServer(server_config()), client_config()
    else:
        server, config = DTLSServer(pk_server_config()), pk_client_config()
    up, down, _ = silent_after_cookie(server, config)
    assert down <= 3 * up, (up, down)
    unlimited = DTLSServer(server_config(amplification_factor=None) if profile == "psk" else
                           pk_server_config(amplification_factor=None))
    _, before, flights = silent_after_cookie(unlimited, config)
    assert before > 3 * up and flights > 10  # what the limit prevents: a flight every 8 s for 2 minutes


def test_repeated_hellos_bring_the_flight_back_no_sooner_than_the_timer() -> None:
    lan = Lan(DTLSServer(pk_server_config()))
    device = lan.device(HERE, 1, pk_client_config())
    lan.exchange(HERE, rounds=1)
    (hello,) = device.datagrams_to_send(lan.now)
    lan.send_raw(HERE, hello)
    sent_at = []
    for k in range(200):  # the same hello every 100 ms for 20 s
        lan.now = 0.1 * (k + 1)
        lan.server.handle_timer(lan.now)
        before = len(lan.wire)
        lan.send_raw(HERE, hello)
        if any(way == "down" for _, way, _ in lan.wire[before:]):
            sent_at.append(lan.now)
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert sent_at and min(gaps) >= 2.0 - 1e-9
    up = sum(len(d) for _, way, d in lan.wire if way == "up")
    down = sum(len(d) for _, way, d in lan.wire if way == "down")
    assert down <= 3 * up


def test_server_retransmits_what_it_can_within_the_budget_and_the_client_completes() -> None:
    """A certificate-sized flight (the budget lets one retransmission through only after the client has sent
    more): the first flight is lost, the client's retransmitted hellos raise the budget and it completes."""
    lan = Lan(DTLSServer(pk_server_config(mtu=128)))
    device = lan.device(HERE, 1, pk_client_config(mtu=128))
    lan.exchange(HERE, rounds=1)
    lan.up(HERE)
    lan.collect()
    lan.mail.pop(HERE)  # the whole first flight is lost
    lan.advance(60.0)
    assert device.is_established
    up = sum(len(d) for _, way, d in lan.wire if way == "up")
    down = sum(len(d) for _, way, d in lan.wire if way == "down")
    assert lan.server.connections[HERE].amplification_blocked > 0
    assert down - 67 <= 3 * up  # everything before the server's final flight (CCS + Finished, 67 B)


# -- finding 7: identity timing -------------------------------------------------------------------------------


def final_flight(identity: bytes, key: bytes) -> tuple[DTLSServer, bytes]:
    """A server that has answered a ClientHello, and the client's final flight for ``identity``/``key``."""
    server = DTLSServer(server_config(seed=3))
    client = DTLSConnection(client_config(seed=4, psk_identity=identity, psk=key))
    client.connect(0.0)
    shuttle(client, server, HERE, 0.0, rounds=2)
    (flight,) = client.datagrams_to_send(0.0)
    return server, flight


def calls_while(action: Callable[[], None]) -> list[str]:
    """The Python and C functions called, in order, while ``action`` runs."""
    seen: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            seen.append(frame.f_code.co_qualname)
        elif event == "c_call":
            seen.append(getattr(arg, "__qualname__", repr(arg)))

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return seen


def test_unknown_identity_and_wrong_key_do_the_same_work() -> None:
    """Call for call, the server handles an unknown identity exactly like a known one with a wrong key (both end
    in bad_record_mac). The medians of many timed tries are compared in tests/test_attacks.py."""
    traces = []
    for identity, key in ((b"dev1", b"\x55" * 16), (b"nobody", KEY)):
        server, flight = final_flight(identity, key)
        traces.append(calls_while(lambda s=server, f=flight: s.receive_datagram(f, HERE, 0.1)))  # type: ignore[misc]
        ((reply, _),) = server.datagrams_to_send(0.1)
        assert reply[0] == 21 and reply[-2:] == b"\x02\x14"  # a fatal bad_record_mac alert
    assert len(traces[0]) > 50 and traces[0] == traces[1]


# -- the pure parts ------------------------------------------------------------------------------------------


def test_network_of_groups_ipv6_by_64_and_maps_ipv4() -> None:
    assert network_of(("192.0.2.1", 1)) == network_of(("192.0.2.1", 2)) != network_of(("192.0.2.2", 1))
    assert network_of(("2001:db8:1:2::1", 1)) == network_of(("2001:db8:1:2:ffff::9", 7, 0, 0))
    assert network_of(("2001:db8:1:2::1", 1)) != network_of(("2001:db8:1:3::1", 1))
    assert network_of(("::ffff:192.0.2.1", 5)) == network_of(("192.0.2.1", 9))
    assert network_of("in-memory peer") == "in-memory peer"


def test_handshake_slots_admission_rules() -> None:
    slots: HandshakeSlots[str] = HandshakeSlots(total=4, per_network=3)
    for i, c in enumerate(("a1", "a2", "a3")):
        slots.add(c, "A", float(i), i)
    assert slots.admit("A", lambda c: 0) == (False, None)  # at its own cap
    assert slots.admit("B", lambda c: 0) == (True, None)  # a free slot
    slots.add("b1", "B", 5.0, 5)
    assert slots.admit("C", lambda c: 0) == (True, "a1")  # full: the biggest network gives up its oldest
    assert slots.admit("C", lambda c: {"a1": 2}.get(c, 0)) == (True, "a2")  # ... or its least advanced
    slots.discard("a1")
    slots.add("c1", "C", 6.0, 6)
    assert slots.admit("D", lambda c: 0) == (True, "a2")  # 2, 1, 1: A holds 2 more than D
    slots.discard("a2")
    slots.add("d1", "D", 7.0, 7)
    assert slots.admit("E", lambda c: 0) == (False, None)  # 1, 1, 1, 1: equal shares are not churned
    assert len(slots) == 4 and "a1" not in slots


def test_session_table_order_and_indexes() -> None:
    table: SessionTable[str] = SessionTable()
    table.add("s1", b"dev1", "A")
    table.add("x1", b"", "A")
    table.add("x2", b"", "A")
    table.add("s2", b"dev1", "B")
    assert table.identity_excess(b"dev1", 1) == ["s1"] and table.identity_excess(b"dev1", 2) == []
    table.touch("x1")
    assert table.anonymous_excess("A", 1, keep="x1") == ["x2"]
    assert table.eviction_victim("s2") == "x2"  # the least recently active anonymous session first
    for c in ("x1", "x2"):
        table.discard(c)
    assert table.eviction_victim("s2") == "s1" and table.eviction_victim("s1") == "s2"
    table.add("x3", b"", "C")
    table.discard("x3")
    table.add("x4", b"", "C")
    assert table.eviction_victim("x4") == "x4"  # an anonymous newcomer never displaces a device
    assert len(table) == 3


def test_rate_limited_log_counts_what_it_suppresses(caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimitedLog(logging.getLogger("iotdtls.test"), interval=60.0)
    caplog.set_level(logging.INFO, logger="iotdtls.test")
    for t in range(0, 130):
        log("cause", float(t), logging.WARNING, "refused %s", "x")
        log("other", float(t), logging.INFO, "other")
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("refused x") == 1 and messages.count("other") == 1
    assert "refused x (59 more since the last report)" in messages
    assert len([m for m in messages if m.startswith("refused")]) == 3


# -- robustness: anything at an address with a session and a second handshake ------------------------------


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["garbage", "flip", "replay", "old", "new"]), st.binary(max_size=64),
                          st.integers(0, 10_000)), max_size=12))
def test_anything_sent_beside_a_second_handshake_leaves_the_session_working(
        inputs: list[tuple[str, bytes, int]]) -> None:
    """A session, a second handshake started from its address by a replayed hello, then garbage, bit flips,
    replays of either side's datagrams, and the new handshake's own datagrams in any order: no exception, the
    session carries data afterwards unless the new handshake completed (then that one does)."""
    lan = Lan(DTLSServer(server_config(psk_store=FLEET)))
    lan.establish(HERE, seed=1)
    replay = hello_with_cookie(lan, HERE)
    old_wire = [d for _, _, d in lan.wire]
    lan.establish(HERE, seed=2)
    lan.send_raw(HERE, replay)
    new = DTLSConnection(client_config(seed=9, psk_identity=b"dev9"), peer="server")
    new.connect(lan.now)
    pending = new.datagrams_to_send(lan.now)
    for kind, blob, n in inputs:
        lan.now += 0.05
        if kind == "garbage":
            lan.send_raw(HERE, blob)
        elif kind == "flip" and old_wire:
            d = bytearray(old_wire[n % len(old_wire)])
            d[n % len(d)] ^= 1 << (n % 8)
            lan.send_raw(HERE, bytes(d))
        elif kind == "replay" and old_wire:
            lan.send_raw(HERE, old_wire[n % len(old_wire)])
        elif kind == "old":
            lan.devices[HERE].send(blob or b"x")
            lan.up(HERE)
        else:
            for d in pending:
                lan.send_raw(HERE, d)
            lan.collect()
            for d in lan.mail.pop(HERE, []):
                new.receive_datagram(d, lan.now)
                lan.devices[HERE].receive_datagram(d, lan.now)
            pending = new.datagrams_to_send(lan.now)
    lan.collect()
    current = lan.server.connections.get(HERE)
    assert current is not None and current.is_established
    if current.identity == b"dev9":
        assert new.is_established
    else:
        assert current.identity == b"dev2"
        lan.mail.pop(HERE, None)
        drain(lan.devices[HERE])
        data_flows(lan, HERE, b"after")
