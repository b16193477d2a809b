"""Handshakes between the client connection and the server front: suites, extensions, failures, loss,
reordering, fragmentation, timers, limits and session replacement. Deterministic: fake clock, seeded
randomness, loss = a datagram not delivered."""

from __future__ import annotations

import io
import re

import pytest
from helpers import (
    CLIENT_ADDR,
    IDENTITY,
    KEY,
    Pair,
    client_config,
    drain,
    drain_server,
    established_pair,
    half_steps,
    handshake_record,
    plain_alerts,
    raw_records,
    record_types,
    run_until,
    server_config,
    split_messages,
    to_client,
    to_server,
)

from iotdtls import (
    AlertDescription,
    CipherSuite,
    ConnectionClosed,
    ConnectionReplaced,
    ConnectionTerminated,
    DataReceived,
    DTLSConnection,
    DTLSServer,
    HandshakeCompleted,
    HandshakeTimeout,
    RemoteAlert,
)
from iotdtls.constants import AlertLevel, ContentType, HandshakeType
from iotdtls.errors import AlertError, HandshakeFailure
from iotdtls.events import AlertReceived, Event
from iotdtls.handshake import State
from iotdtls.reassembly import OutMessage, message_header, pack_flight, parse_fragments
from iotdtls.record import encode_plain, split_records

CCM_8 = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
CCM = CipherSuite.TLS_PSK_WITH_AES_128_CCM


def terminated(events: list[Event]) -> list[Exception | None]:
    return [e.error for e in events if isinstance(e, ConnectionTerminated)]


def server_events(pair: Pair) -> list[Event]:
    return [e for _, e in drain_server(pair.server)]


def message_types(datagram: bytes) -> list[int]:
    return [f.msg_type for r in split_records(datagram) if r.epoch == 0 and r.content_type == 22
            for f in parse_fragments(r.fragment)]


# ---------------------------------------------------------------------------------------------------------
# Complete handshakes


@pytest.mark.parametrize("suite", [CCM_8, CCM])
@pytest.mark.parametrize("hint", [None, b"iot-hint"])
def test_full_handshake(suite: int, hint: bytes | None) -> None:
    pair = Pair(client_kw={"cipher_suites": [suite]}, server_kw={"psk_identity_hint": hint})
    pair.handshake()
    expected = HandshakeCompleted(suite, IDENTITY, True)
    assert drain(pair.client) == [expected]
    assert drain_server(pair.server) == [(CLIENT_ADDR, expected)]
    assert pair.client.is_established and pair.server_conn.is_established
    assert pair.client.cipher_suite == suite == pair.server_conn.cipher_suite
    assert pair.server_conn.identity == IDENTITY
    server_flight = [d for direction, d in pair.wire if direction == "s2c"][1]
    expected_types = [HandshakeType.SERVER_HELLO, HandshakeType.SERVER_KEY_EXCHANGE,
                      HandshakeType.SERVER_HELLO_DONE] if hint else [HandshakeType.SERVER_HELLO,
                                                                     HandshakeType.SERVER_HELLO_DONE]
    assert message_types(server_flight) == expected_types
    if hint:
        assert pair.client._identity_hint == hint

    # Data both ways, the record overhead follows the suite's tag length.
    pair.client.send(b"temperature=21.5")
    (up,) = pair.c2s()
    assert len(up) == 13 + 8 + len(b"temperature=21.5") + (8 if suite == CCM_8 else 16)
    to_server(pair, [up])
    assert drain_server(pair.server) == [(CLIENT_ADDR, DataReceived(b"temperature=21.5"))]
    pair.server.send(CLIENT_ADDR, b"ack")
    to_client(pair, pair.s2c())
    assert drain(pair.client) == [DataReceived(b"ack")]


def test_server_suite_preference_wins() -> None:
    pair = Pair(client_kw={"cipher_suites": [CCM_8, CCM]}, server_kw={"cipher_suites": [CCM, CCM_8]})
    pair.handshake()
    assert pair.client.cipher_suite == CCM == pair.server_conn.cipher_suite


def test_no_common_suite_is_handshake_failure() -> None:
    pair = Pair(client_kw={"cipher_suites": [CCM]}, server_kw={"cipher_suites": [CCM_8]})
    pair.handshake()
    (server_err,) = terminated(server_events(pair))
    (client_err,) = terminated(drain(pair.client))
    assert isinstance(server_err, HandshakeFailure)
    assert isinstance(client_err, RemoteAlert) and client_err.description == AlertDescription.handshake_failure
    assert pair.server.connections == {}


def test_handshake_without_cookies_takes_four_datagrams() -> None:
    pair = Pair(server_kw={"cookies": False})
    pair.handshake()
    assert pair.client.is_established
    assert [direction for direction, _ in pair.wire] == ["c2s", "s2c", "c2s", "s2c"]


# ---------------------------------------------------------------------------------------------------------
# Extended master secret


@pytest.mark.parametrize(("client_ems", "server_ems", "expected"), [
    (True, True, True), (False, True, False), (True, False, False), (False, False, False)])
def test_extended_master_secret_negotiation(client_ems: bool, server_ems: bool, expected: bool) -> None:
    pair = Pair(client_kw={"extended_master_secret": client_ems},
                server_kw={"extended_master_secret": server_ems})
    pair.handshake()
    assert drain(pair.client) == [HandshakeCompleted(CCM_8, IDENTITY, expected)]
    assert server_events(pair) == [HandshakeCompleted(CCM_8, IDENTITY, expected)]


def test_ems_required_by_server_but_client_without() -> None:
    pair = Pair(client_kw={"extended_master_secret": False},
                server_kw={"require_extended_master_secret": True})
    pair.handshake()
    (server_err,) = terminated(server_events(pair))
    (client_err,) = terminated(drain(pair.client))
    assert isinstance(server_err, HandshakeFailure) and not server_err.remote
    assert isinstance(client_err, RemoteAlert) and client_err.description == AlertDescription.handshake_failure
    assert pair.server.connections == {}


def test_ems_required_by_client_but_server_without() -> None:
    pair = Pair(client_kw={"require_extended_master_secret": True},
                server_kw={"extended_master_secret": False})
    pair.handshake()
    (client_err,) = terminated(drain(pair.client))
    (server_err,) = terminated(server_events(pair))
    assert isinstance(client_err, HandshakeFailure) and not client_err.remote
    assert isinstance(server_err, RemoteAlert) and server_err.description == AlertDescription.handshake_failure


# ---------------------------------------------------------------------------------------------------------
# Wrong key and unknown identity are indistinguishable


def _failed_handshake(identity: bytes, key: bytes) -> tuple[Pair, Exception | None, Exception | None]:
    pair = Pair(client_kw={"psk_identity": identity, "psk": key})
    pair.handshake()  # no timers: the failure must come from the first exchange, fast
    (client_err,) = terminated(drain(pair.client))
    (server_err,) = terminated(server_events(pair))
    return pair, client_err, server_err


def test_wrong_key_and_unknown_identity_fail_the_same_way() -> None:
    wrong_key, ck, sk = _failed_handshake(IDENTITY, bytes(16))
    unknown, cu, su = _failed_handshake(b"dev9", KEY)  # same length as "dev1": same wire sizes
    for client_err, server_err in ((ck, sk), (cu, su)):
        assert isinstance(client_err, AlertError) and isinstance(server_err, AlertError)
        assert client_err.remote and not server_err.remote
        assert client_err.description == server_err.description
    assert type(ck) is type(cu) and type(sk) is type(su)
    assert isinstance(ck, AlertError) and isinstance(cu, AlertError)
    assert ck.description == cu.description
    assert ck.description in (AlertDescription.bad_record_mac, AlertDescription.decrypt_error,
                              AlertDescription.handshake_failure)
    assert [(d, len(x)) for d, x in wrong_key.wire] == [(d, len(x)) for d, x in unknown.wire]
    assert plain_alerts([x for _, x in wrong_key.wire]) == plain_alerts([x for _, x in unknown.wire]) == [
        (AlertLevel.FATAL, ck.description)]
    assert wrong_key.server.connections == {} and unknown.server.connections == {}


def test_psk_store_callable() -> None:
    pair = Pair(server_kw={"psk_store": lambda ident: KEY if ident == IDENTITY else None})
    pair.handshake()
    assert pair.client.is_established


# ---------------------------------------------------------------------------------------------------------
# Application data, close_notify


def test_several_records_per_datagram() -> None:
    pair = established_pair()
    pair.client.send(b"one")
    pair.client.send(b"two")
    first, second = pair.c2s()
    to_server(pair, [first + second])
    assert server_events(pair) == [DataReceived(b"one"), DataReceived(b"two")]
    pair.server.send(CLIENT_ADDR, b"three")
    pair.server.send(CLIENT_ADDR, b"four")
    to_client(pair, [b"".join(pair.s2c())])
    assert drain(pair.client) == [DataReceived(b"three"), DataReceived(b"four")]


def test_max_payload_enforced() -> None:
    pair = established_pair()
    assert pair.client.max_payload == 512 - 13 - 16
    pair.client.send(bytes(pair.client.max_payload))
    with pytest.raises(ValueError):
        pair.client.send(bytes(pair.client.max_payload + 1))


def test_close_notify_from_client() -> None:
    pair = established_pair()
    pair.client.close()
    assert drain(pair.client) == [ConnectionTerminated(None)]
    assert pair.client.is_closed
    (alert,) = pair.c2s()
    assert record_types(alert) == [(ContentType.ALERT, 1)]
    to_server(pair, [alert])
    assert server_events(pair) == [ConnectionTerminated(None)]
    assert pair.server.connections == {}
    (reply,) = pair.s2c()  # the server answers with its own close_notify
    assert record_types(reply) == [(ContentType.ALERT, 1)]
    to_client(pair, [reply])
    assert drain(pair.client) == []
    with pytest.raises(ConnectionClosed):
        pair.client.send(b"late")
    pair.client.close()  # idempotent
    assert pair.c2s() == []


def test_close_notify_from_server() -> None:
    pair = established_pair()
    conn = pair.server_conn
    pair.server.close(CLIENT_ADDR)
    assert server_events(pair) == [ConnectionTerminated(None)]
    assert conn.is_closed and pair.server.connections == {}
    to_client(pair, pair.s2c())
    assert drain(pair.client) == [ConnectionTerminated(None)]
    (reply,) = pair.c2s()
    assert record_types(reply) == [(ContentType.ALERT, 1)]
    to_server(pair, [reply])  # no connection any more: silently dropped, no state created
    assert server_events(pair) == [] and pair.server.connections == {} and pair.s2c() == []


# ---------------------------------------------------------------------------------------------------------
# Wire size, fragmentation, reordering


@pytest.mark.parametrize(("coalesce", "cache", "sizes"), [
    # the default: one record per handshake message (tinydtls needs it), and an 8-byte session ID in the
    # ServerHello for resumption (docs/sleepy-devices.md)
    (False, 1000, [77, 44, 93, 107, 98, 67]),
    (True, 1000, [77, 44, 93, 94, 98, 67]),  # ServerHello and ServerHelloDone share a record
    (False, 0, [77, 44, 93, 99, 98, 67]),  # no session cache: no session ID
])
def test_wire_size_with_cookie_and_ems(coalesce: bool, cache: int, sizes: list[int]) -> None:
    pair = Pair(client_kw={"coalesce_records": coalesce}, server_kw={"coalesce_records": coalesce},
                session_cache=cache)
    pair.handshake()
    assert pair.client.is_established and pair.client._use_ems
    assert [d for d, _ in pair.wire] == ["c2s", "s2c", "c2s", "s2c", "c2s", "s2c"]
    assert [len(d) for _, d in pair.wire] == sizes
    # tinydtls needs 478 bytes in 10 datagrams; the session ID that makes resumption possible costs 8 more
    assert sum(sizes) <= 478 + (8 if cache else 0)
    assert len(sizes) == 6


@pytest.mark.parametrize("mtu", [128, 64])
def test_fragmentation_at_small_mtu(mtu: int) -> None:
    pair = Pair(client_kw={"mtu": mtu}, server_kw={"mtu": mtu})
    pair.handshake()
    assert pair.client.is_established and pair.server_conn.is_established
    assert all(len(d) <= mtu for _, d in pair.wire)
    if mtu == 64:  # 96-byte ClientHello and 86-byte ServerHello flight: fragmented
        offsets = [f.offset for _, d in pair.wire for r in split_records(d) if r.epoch == 0 and
                   r.content_type == 22 for f in parse_fragments(r.fragment)]
        assert any(offsets)
        assert len(pair.wire) > 6
    pair.client.send(bytes(pair.client.max_payload))
    (d,) = pair.c2s()
    assert len(d) == mtu


@pytest.mark.parametrize("coalesce", [False, True])
@pytest.mark.parametrize(("mtu", "hint"), [
    (64, None), (80, None), (100, None), (128, None), (64, b"h" * 20), (128, b"h" * 60), (200, b"h" * 200),
    (512, b"h" * 200),
])
def test_no_datagram_exceeds_the_mtu(mtu: int, hint: bytes | None, coalesce: bool) -> None:
    pair = Pair(client_kw={"mtu": mtu, "coalesce_records": coalesce},
                server_kw={"mtu": mtu, "psk_identity_hint": hint, "coalesce_records": coalesce})
    pair.handshake()
    assert pair.client.is_established
    assert max(len(d) for _, d in pair.wire) <= mtu


def test_pack_flight_coalesced_records_respect_the_budget() -> None:
    # Regression: the packer once forgot the open record's header when coalescing a second message into it.
    seqs = iter(range(100))

    def write(epoch: int, ctype: int, payload: bytes) -> bytes:
        return encode_plain(ctype, next(seqs), payload)

    flight = [OutMessage(0, HandshakeType.SERVER_HELLO, 1, bytes(49)),
              OutMessage(0, HandshakeType.SERVER_HELLO_DONE, 2, b"")]
    for mtu in (64, 80, 100, 128):
        datagrams = pack_flight(flight, mtu, lambda epoch: 0, write, coalesce=True)
        assert max(len(d) for d in datagrams) <= mtu


def test_pack_flight_uncoalesced_respects_the_budget() -> None:
    seqs = iter(range(100))

    def write(epoch: int, ctype: int, payload: bytes) -> bytes:
        return encode_plain(ctype, next(seqs), payload)

    flight = [OutMessage(0, HandshakeType.SERVER_HELLO, 1, bytes(49)),
              OutMessage(0, HandshakeType.SERVER_KEY_EXCHANGE, 2, bytes(62)),
              OutMessage(0, HandshakeType.SERVER_HELLO_DONE, 3, b"")]
    for mtu in (64, 80, 100, 128):
        datagrams = pack_flight(flight, mtu, lambda epoch: 0, write, coalesce=False)
        assert max(len(d) for d in datagrams) <= mtu


@pytest.mark.parametrize("mtu", [64, 128])
def test_out_of_order_fragments_reassembled(mtu: int) -> None:
    # A long hint makes the server flight span several datagrams even at 128 bytes; uncoalesced records keep
    # every datagram within the budget.
    pair = Pair(client_kw={"mtu": mtu, "coalesce_records": False},
                server_kw={"mtu": mtu, "psk_identity_hint": b"h" * 100, "coalesce_records": False})
    pair.client.connect(pair.now)
    for step in range(6):
        if step % 2 == 0:
            to_server(pair, pair.c2s()[::-1])
        else:
            out = pair.s2c()
            if step == 3:
                assert len(out) >= 2
            to_client(pair, out[::-1])  # every server flight delivered in reverse
    assert pair.client.is_established and pair.server_conn.is_established
    assert max(len(d) for _, d in pair.wire) <= mtu


def test_fragments_split_per_message_in_any_order() -> None:
    # Every handshake fragment in its own datagram, the server flight shuffled.
    pair = Pair(client_kw={"mtu": 64}, server_kw={"mtu": 64, "psk_identity_hint": b"hint"})
    pair.client.connect(pair.now)
    half_steps(pair, 3)
    pieces = [p for i, d in enumerate(pair.s2c()) for p in split_messages(d, 20 + 10 * i)]
    assert len(pieces) >= 4
    order = [2, 0, 3, 1, *range(4, len(pieces))]
    to_client(pair, [pieces[i] for i in order])
    assert pair.client.state is State.CLIENT_WAIT_FINISHED
    half_steps(pair, 2)
    assert pair.client.is_established


# ---------------------------------------------------------------------------------------------------------
# Loss and retransmission


def test_lost_final_server_flight_recovered() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 5)
    assert pair.server_conn.is_established and pair.client.state is State.CLIENT_WAIT_FINISHED
    lost = pair.s2c()
    assert lost
    assert pair.client.get_timer() == 2.0
    pair.now = 2.0
    pair.client.handle_timer(pair.now)
    retransmitted = pair.c2s()
    assert retransmitted
    to_server(pair, retransmitted)  # the server answers the repeated client flight with its last flight
    replies = pair.s2c()
    assert replies
    assert [t for d in replies for t in record_types(d)] == [(ContentType.CHANGE_CIPHER_SPEC, 0),
                                                            (ContentType.HANDSHAKE, 1)]
    to_client(pair, replies)
    assert pair.client.is_established
    assert drain(pair.client) == [HandshakeCompleted(CCM_8, IDENTITY, True)]
    assert server_events(pair) == [HandshakeCompleted(CCM_8, IDENTITY, True)]  # once
    assert pair.client.retransmissions == 1 and pair.server_conn.retransmissions == 1
    assert pair.client.get_timer() is None


def test_lost_client_final_flight_recovered() -> None:
    pair = Pair(client_kw={"retransmit_initial": 5.0})  # the server's 2 s timer fires first
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    assert pair.client.state is State.CLIENT_WAIT_FINISHED
    assert pair.c2s()  # lost
    assert pair.server.get_timer() == 2.0
    pair.now = 2.0
    pair.server.handle_timer(pair.now)
    to_client(pair, pair.s2c())  # the repeated server flight makes the client repeat its final flight
    assert pair.client.retransmissions == 1
    pair.pump()
    assert pair.client.is_established and pair.server_conn.is_established
    assert pair.server_conn.retransmissions == 1


@pytest.mark.parametrize("lost_index", range(6))
def test_any_single_lost_datagram_is_recovered(lost_index: int) -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    for step in range(6):
        out = pair.c2s() if step % 2 == 0 else pair.s2c()
        assert len(out) == 1
        if step == lost_index:
            break  # lost: only the timers can move the handshake on
        (to_server if step % 2 == 0 else to_client)(pair, out)
    run_until(pair, 30.0)
    assert pair.client.is_established and pair.server_conn.is_established
    assert len(drain(pair.client)) == 1 and len(server_events(pair)) == 1


def test_retransmission_backoff_and_handshake_timeout() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    fired = []
    while (t := pair.client.get_timer()) is not None:
        pair.now = t
        pair.client.handle_timer(t)
        if pair.c2s():
            fired.append(t)
    # 2 s doubling up to the 8 s cap, within the 120 s budget
    assert fired == [2.0, 6.0, 14.0] + [14.0 + 8.0 * i for i in range(1, 14)]
    assert pair.now == 120.0
    (err,) = terminated(drain(pair.client))
    assert isinstance(err, HandshakeTimeout)
    assert pair.client.is_closed and pair.client.get_timer() is None


def test_server_handshake_timeout_frees_the_connection() -> None:
    pair = Pair(server_kw={"handshake_timeout": 10.0})
    pair.client.connect(pair.now)
    half_steps(pair, 3)
    assert len(pair.server.connections) == 1
    run_until(pair, 20.0, deliver=False)
    (err,) = terminated(server_events(pair))
    assert isinstance(err, HandshakeTimeout)
    assert pair.server.connections == {} and pair.server.get_timer() is None


# ---------------------------------------------------------------------------------------------------------
# Key log


def test_keylog_line_format() -> None:
    client_log, server_log = io.StringIO(), io.StringIO()
    pair = Pair(client_kw={"keylog_file": client_log}, server_kw={"keylog_file": server_log})
    pair.handshake()
    line = client_log.getvalue()
    assert re.fullmatch(r"CLIENT_RANDOM [0-9a-f]{64} [0-9a-f]{96}\n", line)
    assert line == server_log.getvalue()
    assert line.split()[1] == pair.client.client_random.hex()


# ---------------------------------------------------------------------------------------------------------
# Reordering around the ChangeCipherSpec


@pytest.mark.parametrize("order", [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])
def test_client_final_flight_records_in_any_order(order: tuple[int, int, int]) -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    (final,) = pair.c2s()
    records = list(split_records(final))
    assert [(r.content_type, r.epoch) for r in records] == [(22, 0), (20, 0), (22, 1)]
    raw = raw_records(final)
    assert b"".join(raw) == final
    to_server(pair, [raw[i] for i in order])  # epoch-1 Finished before the CCS is held back, then used
    assert pair.server_conn.is_established
    to_client(pair, pair.s2c())
    assert pair.client.is_established


def test_server_finished_before_its_ccs_is_buffered() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 5)
    (final,) = pair.s2c()
    ccs_len = 13 + 1
    ccs, fin = final[:ccs_len], final[ccs_len:]
    assert record_types(ccs) == [(20, 0)] and record_types(fin) == [(22, 1)]
    to_client(pair, [fin])
    assert pair.client.state is State.CLIENT_WAIT_FINISHED and drain(pair.client) == []
    to_client(pair, [ccs])
    assert drain(pair.client) == [HandshakeCompleted(CCM_8, IDENTITY, True)]


def test_app_data_overtaking_server_finished_delivered_after_completion() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 5)
    final = pair.s2c()
    pair.server.send(CLIENT_ADDR, b"early bird")
    early = pair.s2c()
    to_client(pair, early + final)
    assert drain(pair.client) == [HandshakeCompleted(CCM_8, IDENTITY, True), DataReceived(b"early bird")]


def test_reordered_app_records_delivered_once_duplicates_dropped() -> None:
    pair = established_pair()
    for i in range(10):
        pair.client.send(b"m%d" % i)
    dgrams = pair.c2s()
    order = [3, 1, 0, 2, 9, 3, 5, 4, 1, 8, 7, 6, 9, 0, 2]
    to_server(pair, [dgrams[i] for i in order])
    got = [e.data for e in server_events(pair) if isinstance(e, DataReceived)]
    assert got == [b"m%d" % i for i in dict.fromkeys(order)]
    to_server(pair, dgrams)  # a full replay: nothing new
    assert server_events(pair) == []
    assert pair.server_conn.is_established


def test_records_older_than_the_window_dropped() -> None:
    pair = established_pair(server_kw={"replay_window": 64})
    for i in range(70):
        pair.client.send(b"%d" % i)
    dgrams = pair.c2s()  # epoch-1 sequence numbers 1..70 (the Finished used 0)
    to_server(pair, [dgrams[69], dgrams[0], dgrams[5], dgrams[6], dgrams[68]])
    got = [e.data for e in server_events(pair) if isinstance(e, DataReceived)]
    assert got == [b"69", b"6", b"68"]  # 0 and 5 are 64 or more behind 70


# ---------------------------------------------------------------------------------------------------------
# Server front: reboot, cookies, limits, renegotiation


def test_client_reboot_gets_a_fresh_handshake() -> None:
    pair = established_pair()
    old = pair.server_conn
    pair.client = DTLSConnection(client_config(seed=99), peer="server")
    pair.client.connect(pair.now)
    half_steps(pair, 2)  # ClientHello without cookie: the old session is untouched
    assert pair.server_conn is old and old.is_established
    assert server_events(pair) == []
    pair.pump()
    assert pair.client.is_established
    events = server_events(pair)
    assert len(events) == 2
    assert isinstance(events[0], ConnectionTerminated) and isinstance(events[0].error, ConnectionReplaced)
    assert events[1] == HandshakeCompleted(CCM_8, IDENTITY, True)
    assert old.is_closed and pair.server_conn is not old and pair.server_conn.is_established
    pair.client.send(b"after reboot")
    pair.pump()
    assert server_events(pair) == [DataReceived(b"after reboot")]


def test_client_hello_without_cookie_creates_no_state() -> None:
    server = DTLSServer(server_config())
    hello = client_hello_datagram(seed=5)
    for i in range(1000):
        server.receive_datagram(hello, ("198.51.100.7", 1000 + i), 0.0)
    assert server.connections == {}
    out = server.datagrams_to_send(0.0)
    assert len(out) == 1000 and len({addr for _, addr in out}) == 1000
    assert all(message_types(d) == [HandshakeType.HELLO_VERIFY_REQUEST] for d, _ in out)
    assert server.stats["hello_verify_sent"] == 1000
    assert server.get_timer() is None and server.next_event() is None


def client_hello_datagram(seed: int, cookie: bytes = b"") -> bytes:
    client = DTLSConnection(client_config(seed=seed))
    client.connect(0.0)
    (dgram,) = client.datagrams_to_send(0.0)
    if not cookie:
        return dgram
    rec = next(split_records(dgram))
    (frag,) = parse_fragments(rec.fragment)
    body = frag.body[:35] + bytes([len(cookie)]) + cookie + frag.body[36:]
    return handshake_record(HandshakeType.CLIENT_HELLO, body, 1, 1)


def test_client_hello_with_invalid_cookie_creates_no_state() -> None:
    server = DTLSServer(server_config())
    for i in range(100):
        server.receive_datagram(client_hello_datagram(seed=5, cookie=bytes([i]) * 16), ("198.51.100.7", i), 0.0)
    assert server.connections == {}
    assert len(server.datagrams_to_send(0.0)) == 100


class Net:
    """Several clients at their own addresses around one server; server output waits in per-address
    mailboxes until ``down`` delivers it (or is lost when a mailbox is cleared)."""

    def __init__(self, server: DTLSServer) -> None:
        self.server = server
        self.now = 0.0
        self.clients: dict[tuple[str, int], DTLSConnection] = {}
        self.mail: dict[tuple[str, int], list[bytes]] = {}

    def connect(self, addr: tuple[str, int], seed: int) -> DTLSConnection:
        """A device of its own identity ``dev<seed>`` (see ``FLEET``)."""
        client = self.clients[addr] = DTLSConnection(client_config(seed=seed, psk_identity=b"dev%d" % seed))
        client.connect(self.now)
        return client

    def _collect(self) -> None:
        for d, a in self.server.datagrams_to_send(self.now):
            self.mail.setdefault(a, []).append(d)  # type: ignore[arg-type]

    def up(self, addr: tuple[str, int]) -> None:
        for d in self.clients[addr].datagrams_to_send(self.now):
            self.server.receive_datagram(d, addr, self.now)
        self._collect()

    def down(self, addr: tuple[str, int]) -> None:
        self._collect()
        for d in self.mail.pop(addr, []):
            self.clients[addr].receive_datagram(d, self.now)

    def steps(self, addr: tuple[str, int], n: int) -> None:
        for i in range(n):
            (self.up if i % 2 == 0 else self.down)(addr)

    def fire(self, addr: tuple[str, int], now: float) -> None:
        self.now = now
        self.clients[addr].handle_timer(now)


A1, A2, A3 = ("203.0.113.1", 1), ("203.0.113.2", 2), ("203.0.113.3", 3)
FLEET = {b"dev%d" % seed: KEY for seed in range(100)}


def test_max_handshakes_limit_drops_new_clients() -> None:
    net = Net(DTLSServer(server_config(psk_store=FLEET), max_handshakes=2))
    for seed, addr in ((11, A1), (12, A2), (13, A3)):
        net.connect(addr, seed)
    net.steps(A1, 3)
    net.steps(A2, 3)
    assert net.server.handshakes_in_progress == 2
    net.steps(A3, 4)  # gets its cookie, but the ClientHello with it is dropped: no state, no answer
    assert set(net.server.connections) == {A1, A2}
    assert net.server.stats["dropped_full"] == 1
    assert net.clients[A3].state is State.CLIENT_WAIT_HELLO and A3 not in net.mail
    net.steps(A1, 4)  # A1 finishes: a handshake slot frees up
    assert net.clients[A1].is_established and net.server.handshakes_in_progress == 1
    net.fire(A3, 2.0)  # A3 retransmits its ClientHello and now gets in
    net.steps(A3, 4)
    assert net.clients[A3].is_established
    assert set(net.server.connections) == {A1, A2, A3}


def test_full_session_table_evicts_the_least_recently_active_session() -> None:
    net = Net(DTLSServer(server_config(psk_store=FLEET), max_sessions=2))
    for seed, addr in ((11, A1), (12, A2)):
        net.connect(addr, seed)
        net.steps(addr, 6)
    net.clients[A1].send(b"A1 is alive")  # A1 is now the more recently active session
    net.up(A1)
    net.connect(A3, 13)
    net.steps(A3, 6)  # a new device always gets in: the least recently active session (A2) makes room
    assert net.clients[A3].is_established and set(net.server.connections) == {A1, A3}
    net.down(A2)
    assert net.clients[A2].is_closed and net.clients[A2].error is None  # told with close_notify
    assert net.server.stats["sessions_evicted_full"] == 1 and net.server.stats["dropped_full"] == 0


def _renegotiation_hello(pair: Pair, message_seq: int) -> bytes:
    """An epoch-1 ClientHello from the established client, protected with its keys."""
    body = client_hello_datagram(seed=77)[13 + 12:]
    payload = message_header(HandshakeType.CLIENT_HELLO, len(body), message_seq) + body
    return pair.client._write_record(1, ContentType.HANDSHAKE, payload)


def _check_renegotiation_refused(pair: Pair, message_seq: int) -> None:
    to_server(pair, [_renegotiation_hello(pair, message_seq)])
    replies = pair.s2c()
    assert [record_types(d) for d in replies] == [[(ContentType.ALERT, 1)]]
    to_client(pair, replies)
    assert drain(pair.client) == [AlertReceived(AlertLevel.WARNING, AlertDescription.no_renegotiation)]
    assert server_events(pair) == []
    assert pair.server_conn.is_established and pair.client.is_established
    pair.client.send(b"still here")
    pair.pump()
    assert server_events(pair) == [DataReceived(b"still here")]


def test_renegotiation_refused_with_no_renegotiation_warning() -> None:
    pair = established_pair()
    _check_renegotiation_refused(pair, pair.client._send_seq)  # message_seq continuing the handshake's


def test_renegotiation_hello_with_message_seq_zero_refused() -> None:
    pair = established_pair()
    pair.now = 5.0
    _check_renegotiation_refused(pair, 0)


# Regression: _on_handshake once stored every fragment in the reassembler, also retransmitted and refused ones;
# they stayed there for good, and a second hello with the same message_seq but another length was fatal.


def test_renegotiation_refused_repeatedly_keeps_the_session() -> None:
    pair = established_pair()
    for seed in (77, 78):
        body = client_hello_datagram(seed=seed)[13 + 12:]
        if seed == 78:  # a different hello: one more (unknown) extension, 4 bytes longer
            ext_len = int.from_bytes(body[-6:-4], "big")
            body = body[:-6] + (ext_len + 4).to_bytes(2, "big") + body[-4:] + b"\xaa\xaa\x00\x00"
        payload = message_header(HandshakeType.CLIENT_HELLO, len(body), 0) + body
        to_server(pair, [pair.client._write_record(1, ContentType.HANDSHAKE, payload)])
        assert server_events(pair) == []
        to_client(pair, pair.s2c())
        assert drain(pair.client) == [AlertReceived(AlertLevel.WARNING, AlertDescription.no_renegotiation)]
    assert pair.server_conn.is_established


def test_reassembler_keeps_nothing_of_processed_messages() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 5)
    pair.s2c()  # the server's final flight is lost: the client repeats its flight
    pair.now = 2.0
    pair.client.handle_timer(pair.now)
    pair.pump()
    assert pair.client.is_established
    assert pair.server_conn._reasm._parts == {} and pair.client._reasm._parts == {}


def test_reassembler_emptied_when_the_handshake_completes() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    half_steps(pair, 3)
    to_server(pair, [handshake_record(HandshakeType.CLIENT_KEY_EXCHANGE, b"\x00\x04dev1", 4, record_seq=40)])
    pair.pump()
    assert pair.client.is_established and pair.server_conn.is_established
    assert pair.server_conn._reasm._parts == {}


def test_hello_request_from_server_refused_by_client() -> None:
    pair = established_pair()
    conn = pair.server_conn
    seq = conn._send_seq
    rec = conn._write_record(1, ContentType.HANDSHAKE, message_header(HandshakeType.HELLO_REQUEST, 0, seq))
    to_client(pair, [rec])
    replies = pair.c2s()
    assert [record_types(d) for d in replies] == [[(ContentType.ALERT, 1)]]
    to_server(pair, replies)
    assert server_events(pair) == [AlertReceived(AlertLevel.WARNING, AlertDescription.no_renegotiation)]
    assert pair.client.is_established and conn.is_established and drain(pair.client) == []


# A stale record of the previous session (or any injected garbage) must be dropped (RFC 6347 4.1.2.7), not
# taken for a Finished that fails authentication.


def test_reboot_with_stale_server_record_in_flight() -> None:
    pair = established_pair()
    pair.server.send(CLIENT_ADDR, b"for the old session")
    stale = pair.s2c()
    pair.client = DTLSConnection(client_config(seed=99), peer="server")  # the client reboots
    pair.client.connect(pair.now)
    to_client(pair, stale)  # arrives late, during the new handshake
    pair.pump()
    assert pair.client.is_established and pair.server_conn.is_established


def test_reboot_with_stale_client_record_in_flight() -> None:
    pair = established_pair()
    pair.client.send(b"from the old session")
    stale = pair.c2s()
    pair.client = DTLSConnection(client_config(seed=99), peer="server")
    pair.client.connect(pair.now)
    half_steps(pair, 3)  # the new session is being set up on the server
    to_server(pair, stale)  # the old session's record, delayed in the network
    pair.pump()
    assert pair.client.is_established and pair.server_conn.is_established


def test_stale_record_after_the_handshake_dropped_silently() -> None:
    old = established_pair()
    old.server.send(CLIENT_ADDR, b"old")
    stale = old.s2c()
    pair = established_pair(client_kw={"seed": 99})
    to_client(pair, stale)
    assert drain(pair.client) == [] and pair.client.is_established and pair.c2s() == []
