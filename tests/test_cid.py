"""Connection ID (RFC 9146), sans-IO: negotiation, the tls12_cid record format, routing by CID in the server front,
address changes (only by an authenticated record newer than any before), replays, collisions, padding, and
record_size_limit (RFC 8449)."""

from __future__ import annotations

import random
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from helpers import (
    CLIENT_ADDR,
    Pair,
    client_config,
    drain,
    drain_server,
    established_pair,
    seeded,
    server_config,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from iotdtls import DTLSConfiguration, DTLSConnection, DTLSServer
from iotdtls.buffer import Buffer
from iotdtls.constants import ContentType, ExtensionType
from iotdtls.errors import RecordOverflow
from iotdtls.events import DataReceived, PeerAddressChanged
from iotdtls.messages import find_extension, pull_client_hello
from iotdtls.record import CipherState, Record, inner_plaintext, split_inner_plaintext, split_records

NEW_ADDR = ("198.51.100.7", 40000)
OTHER_ADDR = ("198.51.100.8", 40001)


def cid_pair(client_cid: int | None = 0, server_cid: int | None = 6, **kw: object) -> Pair:
    pair = established_pair({"cid_length": client_cid, **kw}, {"cid_length": server_cid})
    return pair


def send_from(pair: Pair, data: bytes, addr: object) -> list[tuple[object, object]]:
    pair.client.send(data)
    for d in pair.c2s():
        pair.server.receive_datagram(d, addr, pair.now)
    return drain_server(pair.server)


@pytest.mark.parametrize(("client_cid", "server_cid"), [(0, 6), (4, 4), (6, 0), (20, 1), (None, 6), (4, None)])
def test_negotiation(client_cid: int | None, server_cid: int | None) -> None:
    pair = cid_pair(client_cid, server_cid)
    c, s = pair.client, pair.server_conn
    if client_cid is None or server_cid is None:
        assert c.connection_id is None and s.connection_id is None and c.peer_connection_id is None
        return
    assert len(c.connection_id or b"") == client_cid and len(s.connection_id or b"") == server_cid
    assert c.peer_connection_id == s.connection_id and s.peer_connection_id == c.connection_id
    # data both ways, in the record format each direction negotiated
    c.send(b"up")
    up = pair.c2s()
    assert up[0][0] == (ContentType.TLS12_CID if server_cid else ContentType.APPLICATION_DATA)
    for d in up:
        pair.server.receive_datagram(d, CLIENT_ADDR, 1.0)
    assert drain_server(pair.server) == [(CLIENT_ADDR, DataReceived(b"up"))]
    pair.server.send(CLIENT_ADDR, b"down")
    down = pair.s2c()
    assert down[0][0] == (ContentType.TLS12_CID if client_cid else ContentType.APPLICATION_DATA)
    for d in down:
        c.receive_datagram(d, 1.0)
    assert drain(c) == [DataReceived(b"down")]


def test_cid_record_layout_and_sizes() -> None:
    pair = cid_pair(0, 6)
    pair.client.send(b"x" * 10)
    (record,) = pair.c2s()
    cid = pair.server_conn.connection_id
    assert cid is not None
    # type, version, epoch, sequence number, CID, length, explicit nonce, ciphertext (10 + 1 type byte), tag
    assert record[0] == 25 and record[1:3] == b"\xfe\xfd" and record[3:5] == b"\x00\x01"
    assert record[11:17] == cid
    assert struct.unpack(">H", record[17:19])[0] == 8 + 11 + 8 == len(record) - 19
    assert len(record) == 13 + 6 + 8 + 10 + 1 + 8  # 29 bytes of overhead + the CID + the content type


def test_additional_data_is_rfc9146_section_5() -> None:
    """Decrypt a record with the AEAD and the additional data written out by hand from the RFC."""
    key, iv = bytes(range(16)), b"\x01\x02\x03\x04"
    cipher = CipherState(key, iv, 8)
    cid = b"\xaa\xbb\xcc"
    epoch_seq = (1 << 48) | 5
    record = cipher.protect_cid(ContentType.APPLICATION_DATA, epoch_seq, b"hello", cid)
    inner = b"hello" + bytes((ContentType.APPLICATION_DATA,))
    aad = b"\xff" * 8 + b"\x19" + b"\x03" + b"\x19" + b"\xfe\xfd" + b"\x00\x01" + (5).to_bytes(6, "big") + cid + \
        len(inner).to_bytes(2, "big")
    nonce = iv + epoch_seq.to_bytes(8, "big")
    header = 13 + len(cid)
    assert record[header : header + 8] == epoch_seq.to_bytes(8, "big")
    assert AESCCM(key, tag_length=8).decrypt(nonce, record[header + 8 :], aad) == inner
    (parsed,) = split_records(record, len(cid))
    assert cipher.open_cid(parsed) == (ContentType.APPLICATION_DATA, b"hello")


def test_split_records_needs_the_cid_length() -> None:
    cipher = CipherState(bytes(16), bytes(4), 8)
    record = cipher.protect_cid(ContentType.APPLICATION_DATA, 1 << 48, b"a", b"1234")
    assert list(split_records(record)) == []  # without a CID of our own, tls12_cid never parses
    (parsed,) = split_records(record, 4)
    assert parsed.cid == b"1234"
    assert list(split_records(record[:16], 4)) == []  # truncated inside the header: dropped
    assert list(split_records(record[:-1], 4)) == []  # length beyond the datagram


def test_tampered_cid_or_header_does_not_authenticate() -> None:
    cipher = CipherState(bytes(16), bytes(4), 8)
    record = bytearray(cipher.protect_cid(ContentType.APPLICATION_DATA, 1 << 48, b"data", b"12"))
    for i in (1, 4, 10, 11, 12):  # version, epoch, sequence number, CID bytes
        bad = bytearray(record)
        bad[i] ^= 1
        parsed = list(split_records(bytes(bad), 2))
        assert not parsed or cipher.open_cid(parsed[0]) is None, i


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=300), content_type=st.integers(20, 23), pad_to=st.integers(0, 64),
       limit=st.integers(64, 512))
def test_inner_plaintext_padding_properties(payload: bytes, content_type: int, pad_to: int, limit: int) -> None:
    inner = inner_plaintext(payload, content_type, pad_to, limit)
    assert split_inner_plaintext(inner) == (content_type, payload)  # the real type and content come back
    size = len(payload) + 1
    if pad_to > 1 and size <= limit:
        assert len(inner) % pad_to == 0 or len(inner) == limit  # a size class, capped at the record limit
        assert len(inner) < size + pad_to
        assert len(inner) <= max(limit, size)
    elif pad_to <= 1:
        assert len(inner) == size
    assert inner[size:] == bytes(len(inner) - size)  # padding is zeros


def test_all_zero_inner_plaintext_has_no_type() -> None:
    assert split_inner_plaintext(bytes(8)) is None


def test_padding_hides_lengths_on_the_wire() -> None:
    pair = cid_pair(0, 6, cid_padding=32)
    sizes = set()
    for n in (1, 5, 17, 30):
        pair.client.send(b"x" * n)
        sizes |= {len(d) for d in pair.c2s()}
    assert len(sizes) == 1  # all of them in one 32-byte size class
    pair.client.send(b"x" * 40)
    for d in pair.c2s():
        pair.server.receive_datagram(d, CLIENT_ADDR, 1.0)
    assert drain_server(pair.server)[-1] == (CLIENT_ADDR, DataReceived(b"x" * 40))


def test_address_change_moves_the_session() -> None:
    pair = cid_pair()
    events = send_from(pair, b"one", NEW_ADDR)
    assert events == [(NEW_ADDR, PeerAddressChanged(CLIENT_ADDR)), (NEW_ADDR, DataReceived(b"one"))]
    assert list(pair.server.connections) == [NEW_ADDR] and pair.server.stats["address_changes"] == 1
    pair.server.send(NEW_ADDR, b"reply")
    assert [a for _, a in pair.server.datagrams_to_send(1.0)] == [NEW_ADDR]
    # and back again, and on: each change is one event
    assert send_from(pair, b"two", CLIENT_ADDR)[0] == (CLIENT_ADDR, PeerAddressChanged(NEW_ADDR))


def test_replayed_record_from_a_new_address_moves_nothing() -> None:
    pair = cid_pair()
    pair.client.send(b"old")
    (old,) = pair.c2s()
    pair.server.receive_datagram(old, CLIENT_ADDR, 1.0)
    drain_server(pair.server)
    pair.server.receive_datagram(old, NEW_ADDR, 2.0)  # an attacker replays it from elsewhere
    assert drain_server(pair.server) == [] and list(pair.server.connections) == [CLIENT_ADDR]


def test_older_unseen_record_from_a_new_address_is_delivered_but_moves_nothing() -> None:
    """A record that authenticates but is not newer than the newest seen (reordering, or an attacker holding
    back a captured record) is delivered, but the session stays where it is (RFC 9146 section 6)."""
    pair = cid_pair()
    pair.client.send(b"first")
    pair.client.send(b"second")
    first, second = pair.c2s()
    pair.server.receive_datagram(second, CLIENT_ADDR, 1.0)
    drain_server(pair.server)
    pair.server.receive_datagram(first, NEW_ADDR, 1.5)
    assert drain_server(pair.server) == [(CLIENT_ADDR, DataReceived(b"first"))]
    assert list(pair.server.connections) == [CLIENT_ADDR]


def test_forged_record_with_a_live_cid_moves_nothing() -> None:
    pair = cid_pair()
    cid = pair.server_conn.connection_id
    assert cid is not None
    forged = CipherState(bytes(16), bytes(4), 8).protect_cid(ContentType.APPLICATION_DATA, (1 << 48) | 99,
                                                             b"evil", cid)
    pair.server.receive_datagram(forged, NEW_ADDR, 1.0)
    assert drain_server(pair.server) == [] and list(pair.server.connections) == [CLIENT_ADDR]
    assert pair.server_conn.is_established


def test_unknown_cid_is_dropped_and_counted() -> None:
    pair = cid_pair()
    pair.client.send(b"x")
    (record,) = pair.c2s()
    bad = bytearray(record)
    bad[11] ^= 0xFF
    pair.server.receive_datagram(bytes(bad), NEW_ADDR, 1.0)
    assert drain_server(pair.server) == [] and pair.server.stats["dropped_unknown_cid"] == 1


def test_reordered_records_across_a_move() -> None:
    pair = cid_pair()
    for i in range(5):
        pair.client.send(b"m%d" % i)
    datagrams = pair.c2s()
    order = [0, 2, 1, 4, 3]
    addrs = [CLIENT_ADDR, NEW_ADDR, CLIENT_ADDR, OTHER_ADDR, NEW_ADDR]
    got = []
    for i, addr in zip(order, addrs, strict=True):
        pair.server.receive_datagram(datagrams[i], addr, 1.0)
        got += drain_server(pair.server)
    assert [e.data for _, e in got if isinstance(e, DataReceived)] == [b"m0", b"m2", b"m1", b"m4", b"m3"]
    # moves happened only for records newer than any before: m2 (to NEW_ADDR) and m4 (to OTHER_ADDR)
    assert [(a, e.previous) for a, e in got if isinstance(e, PeerAddressChanged)] == \
        [(NEW_ADDR, CLIENT_ADDR), (OTHER_ADDR, NEW_ADDR)]
    assert list(pair.server.connections) == [OTHER_ADDR]


def test_move_onto_an_address_in_use_evicts_its_stale_session() -> None:
    """A NAT gave device A the address device B's session used: B's session is unreachable there now and goes;
    A's session takes the address."""
    front = DTLSServer(_server_config(cid_length=4, psk_store={b"dev1": bytes(16), b"dev2": bytes(16)}))
    a = _handshake_on(front, CLIENT_ADDR, seed=1, identity=b"dev1")
    b = _handshake_on(front, NEW_ADDR, seed=3, identity=b"dev2")
    client_a = a.peer  # the server-side connection; drive the client through the helper's client instead
    assert client_a == CLIENT_ADDR
    drain_server(front)
    record = _CLIENTS[b"dev1"]
    record.send(b"from a new address")
    for d in record.datagrams_to_send(1.0):
        front.receive_datagram(d, NEW_ADDR, 1.0)
    events = drain_server(front)
    assert (NEW_ADDR, PeerAddressChanged(CLIENT_ADDR)) in events
    assert front.connections == {NEW_ADDR: a} and b.is_closed


def test_cid_collisions_are_avoided() -> None:
    """A generator that keeps returning the same bytes: the second connection must not share the CID."""
    values = iter([b"\x07"] * 20)
    server_rng = seeded(2)

    def rng(n: int) -> bytes:
        return next(values) if n == 1 else server_rng(n)

    config = _server_config(cid_length=1)
    config.random = rng
    front = DTLSServer(config)
    first = _handshake_on(front, ("192.0.2.1", 1), seed=1)
    second = _handshake_on(front, ("192.0.2.2", 2), seed=3)
    assert first.connection_id == b"\x07"
    assert second.connection_id is None  # no unique CID to be had: this session goes without one
    assert front.stats["cid_exhausted"] == 1


def test_cids_are_unique_and_random_among_many_sessions() -> None:
    front = DTLSServer(_server_config(cid_length=2), max_sessions_per_identity=None)
    cids = {_handshake_on(front, (f"192.0.2.{i % 250}", 1000 + i), seed=10 + i).connection_id
            for i in range(60)}
    assert len(cids) == 60


def test_fresh_client_hello_from_an_address_a_cid_session_used_gets_a_fresh_handshake() -> None:
    pair = cid_pair()
    send_from(pair, b"moved", NEW_ADDR)  # the session now lives at NEW_ADDR
    again = Pair({"cid_length": 0}, {})
    again.server = pair.server
    again.client.connect(5.0)
    for _ in range(6):
        for d in again.c2s():
            pair.server.receive_datagram(d, CLIENT_ADDR, 5.0)
        for d in [d for d, a in pair.server.datagrams_to_send(5.0) if a == CLIENT_ADDR]:
            again.client.receive_datagram(d, 5.0)
    assert again.client.is_established
    # same identity: the older session was closed once the new one's Finished verified
    assert CLIENT_ADDR in pair.server.connections and NEW_ADDR not in pair.server.connections


def test_record_size_limit_both_ways() -> None:
    pair = established_pair({"record_size_limit": 64}, {"record_size_limit": 100})
    c, s = pair.client, pair.server_conn
    assert c.record_size_limit == 100 and s.record_size_limit == 64
    assert s.max_payload == 64 and c.max_payload == 100
    with pytest.raises(ValueError):
        s.send(b"x" * 65)
    s.send(b"x" * 64)
    for d in s.datagrams_to_send(1.0):
        c.receive_datagram(d, 1.0)
    assert drain(c) == [DataReceived(b"x" * 64)]


def test_record_over_our_limit_is_record_overflow() -> None:
    pair = established_pair({"record_size_limit": 64}, {})
    s = pair.server_conn
    s._peer_record_limit = 1000  # a peer that ignores our limit
    s._max_payload = 1000
    s.send(b"y" * 200)
    for d in s.datagrams_to_send(1.0):
        pair.client.receive_datagram(d, 1.0)
    assert pair.client.is_closed and isinstance(pair.client.error, RecordOverflow)


def test_client_hello_extensions_on_the_wire() -> None:
    pair = Pair({"cid_length": 0, "record_size_limit": 256}, {})
    pair.client.connect(0.0)
    (hello,) = pair.c2s()
    body = hello[13 + 12 :]
    exts = pull_client_hello(_buffer(body)).extensions
    assert find_extension(exts, ExtensionType.CONNECTION_ID) == b"\x00"
    assert find_extension(exts, ExtensionType.RECORD_SIZE_LIMIT) == b"\x01\x00"


def _buffer(data: bytes) -> Buffer:
    return Buffer(data)


def _server_config(**kw: object) -> DTLSConfiguration:
    return server_config(**kw)


_CLIENTS: dict[bytes, DTLSConnection] = {}


def _handshake_on(front: DTLSServer, addr: tuple[str, int], seed: int, identity: bytes = b"dev1") -> DTLSConnection:
    psk = bytes(16) if identity == b"dev2" or front.config.lookup_psk(identity) == bytes(16) else None
    kw: dict[str, object] = {"psk_identity": identity} if psk is None else {"psk_identity": identity, "psk": psk}
    client = DTLSConnection(client_config(seed=seed, cid_length=0, **kw), peer="server")
    _CLIENTS[identity] = client
    client.connect(0.0)
    for _ in range(8):
        for d in client.datagrams_to_send(0.0):
            front.receive_datagram(d, addr, 0.0)
        for d in [d for d, a in front.datagrams_to_send(0.0) if a == addr]:
            client.receive_datagram(d, 0.0)
    assert client.is_established
    return front.connections[addr]


def test_random_records_never_raise() -> None:
    rng = random.Random(7)
    pair = cid_pair()
    for _ in range(300):
        junk = bytes([25, 0xFE, 0xFD]) + rng.randbytes(rng.randrange(0, 80))
        pair.server.receive_datagram(junk, (f"203.0.113.{rng.randrange(256)}", rng.randrange(65536)), 1.0)
        for record in split_records(junk, 6):
            assert isinstance(record, Record)
    assert pair.server_conn.is_established


# -- RFC 9853 return routability check ------------------------------------------------------------------------


def rrc_pair() -> Pair:
    return established_pair({"cid_length": 0, "return_routability_check": True},
                            {"cid_length": 6, "return_routability_check": True})


def test_rrc_is_negotiated_only_with_both_sides_and_a_cid() -> None:
    assert rrc_pair().server_conn._rrc_on
    assert not established_pair({"cid_length": 0, "return_routability_check": True},
                                {"cid_length": 6}).server_conn._rrc_on
    assert not established_pair({"cid_length": 0}, {"cid_length": 6, "return_routability_check": True}).client._rrc_on


def test_rrc_moves_only_after_the_new_address_answers() -> None:
    pair = rrc_pair()
    events = send_from(pair, b"moved?", NEW_ADDR)
    assert events == [(CLIENT_ADDR, DataReceived(b"moved?"))]  # delivered, but the session stays
    assert list(pair.server.connections) == [CLIENT_ADDR]
    (challenge, to), = pair.server.datagrams_to_send(1.0)
    assert to == NEW_ADDR and pair.server.stats["path_challenges"] == 1
    pair.client.receive_datagram(challenge, 1.0)  # the device is really there: it answers
    for d in pair.c2s():
        pair.server.receive_datagram(d, NEW_ADDR, 1.1)
    assert drain_server(pair.server) == [(NEW_ADDR, PeerAddressChanged(CLIENT_ADDR))]
    assert list(pair.server.connections) == [NEW_ADDR]


def test_rrc_unanswered_challenge_moves_nothing() -> None:
    """An off-path attacker races a copy of a fresh record from its own address. The challenge goes there,
    nobody who holds the keys answers, and the session stays."""
    pair = rrc_pair()
    pair.client.send(b"genuine")
    (record,) = pair.c2s()
    pair.server.receive_datagram(record, NEW_ADDR, 1.0)  # the attacker's copy wins the race
    pair.server.receive_datagram(record, CLIENT_ADDR, 1.0)  # the genuine one is now a duplicate
    drain_server(pair.server)
    assert [a for _, a in pair.server.datagrams_to_send(1.0)] == [NEW_ADDR]  # the challenge, to the attacker
    assert list(pair.server.connections) == [CLIENT_ADDR]
    # the answer only counts from the challenged address, and only in time
    pair.client.send(b"later")
    send_from(pair, b"later", CLIENT_ADDR)
    assert list(pair.server.connections) == [CLIENT_ADDR]


def test_rrc_answer_from_another_address_or_too_late_moves_nothing() -> None:
    pair = rrc_pair()
    send_from(pair, b"x", NEW_ADDR)
    (challenge, _), = pair.server.datagrams_to_send(1.0)
    pair.client.receive_datagram(challenge, 1.0)
    for d in pair.c2s():
        pair.server.receive_datagram(d, OTHER_ADDR, 1.1)  # answered from elsewhere
    assert list(pair.server.connections) == [CLIENT_ADDR]
    send_from(pair, b"y", NEW_ADDR)
    (challenge, _), = [(d, a) for d, a in pair.server.datagrams_to_send(2.0) if a == NEW_ADDR]
    pair.client.receive_datagram(challenge, 2.0)
    for d in pair.c2s():
        pair.server.receive_datagram(d, NEW_ADDR, 60.0)  # long after the challenge timed out
    assert list(pair.server.connections) == [CLIENT_ADDR]


def test_rrc_message_without_negotiation_is_unexpected() -> None:
    pair = cid_pair()
    conn = pair.server_conn
    record = pair.client._write_record(1, ContentType.RETURN_ROUTABILITY_CHECK, bytes(9))
    pair.server.receive_datagram(record, CLIENT_ADDR, 1.0)
    assert conn.is_closed and CLIENT_ADDR not in pair.server.connections


def test_rrc_unknown_type_is_ignored_and_bad_length_is_decode_error() -> None:
    pair = rrc_pair()
    record = pair.client._write_record(1, ContentType.RETURN_ROUTABILITY_CHECK, b"\x07" + bytes(8))
    pair.server.receive_datagram(record, CLIENT_ADDR, 1.0)
    assert pair.server_conn.is_established
    record = pair.client._write_record(1, ContentType.RETURN_ROUTABILITY_CHECK, b"\x00" + bytes(3))
    conn = pair.server_conn
    pair.server.receive_datagram(record, CLIENT_ADDR, 1.0)
    assert conn.is_closed
