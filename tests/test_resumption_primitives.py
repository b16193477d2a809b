"""Session resumption building blocks (iotdtls/resumption.py): the Session encoding, the server's session-ID
cache and its RFC 5077 ticket keys. Pure: a fake clock, scripted or seeded randomness, no network."""

from __future__ import annotations

import math
import os
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import seeded
from hypothesis import given, settings
from hypothesis import strategies as st

from iotdtls.constants import CertificateType, CipherSuite
from iotdtls.errors import DecodeError
from iotdtls.resumption import (
    MAX_CLOCK_SKEW,
    TICKET_OVERHEAD,
    Session,
    SessionCache,
    TicketKeys,
    psk_fingerprint,
)

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)
MS = bytes(range(48))
T0 = 1_700_000_000.0

# -- byte-exact vectors, written field by field (shared by the parser and the writer) ------------------------

#: A PSK session on the server's session-ID cache: whole-second times, session_id, PSK fingerprint.
PSK_SESSION = Session(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8, MS, True, b"device01", session_id=b"\xaa" * 8,
                      created=T0, lifetime=86400.0, psk_fingerprint=bytes.fromhex("0102030405060708"))
PSK_VECTOR = bytes.fromhex(
    "01"  # version
    "17"  # flags: EMS | whole-second times | session_id | psk_fingerprint
    "c0a8"  # cipher suite
    + MS.hex()
    + "6553f100"  # created 1700000000
    "00015180"  # lifetime 86400
    "0008" + b"device01".hex()  # identity
    + "08" + "aa" * 8  # session_id
    + "0102030405060708"  # psk_fingerprint
)

#: A client's public-key session with a ticket, fractional time (float64 form), no EMS, every peer field.
PK_SESSION = Session(0xC0AE, b"\x42" * 48, False, b"", ticket=b"\x01\x02\x03", created=T0 + 0.5, lifetime=3600.0,
                     peer_kind=CertificateType.RAW_PUBLIC_KEY, peer_spki=b"\x30\x03\x01\x02\x03", peer_name="café")
PK_VECTOR = bytes.fromhex(
    "01" "e8"  # version; flags: ticket | peer_kind | peer_spki | peer_name
    "c0ae" + "42" * 48
    + "41d954fc40200000"  # created 1700000000.5 (float64)
    "40ac200000000000"  # lifetime 3600.0 (float64)
    "0000"  # identity: empty
    "0003010203"  # ticket
    "02"  # peer_kind: RawPublicKey
    "00053003010203"  # peer_spki
    "0005636166c3a9"  # peer_name "café"
)
VECTORS = [(PSK_SESSION, PSK_VECTOR), (PK_SESSION, PK_VECTOR)]


def scripted(*outputs: bytes, then: Callable[[int], bytes] | None = None) -> Callable[[int], bytes]:
    """A random source that returns ``outputs`` in order (each must have the requested length), then ``then``."""
    queue = list(outputs)

    def random(n: int) -> bytes:
        if queue:
            out = queue.pop(0)
            assert len(out) == n, (len(out), n)
            return out
        assert then is not None, "scripted random source ran out"
        return then(n)

    return random


@pytest.mark.parametrize(("session", "vector"), VECTORS, ids=["psk", "pk"])
def test_vectors_write_and_parse(session: Session, vector: bytes) -> None:
    assert session.to_bytes() == vector
    assert Session.from_bytes(vector) == session
    assert Session.from_bytes(bytearray(vector)) == session


@pytest.mark.parametrize(("session", "vector"), VECTORS, ids=["psk", "pk"])
def test_every_truncation_and_a_trailing_byte_are_rejected(session: Session, vector: bytes) -> None:
    for n in range(len(vector)):
        with pytest.raises(DecodeError):
            Session.from_bytes(vector[:n])
    for extra in (b"\x00", b"\xff"):
        with pytest.raises(DecodeError):
            Session.from_bytes(vector + extra)


def _patched(vector: bytes, offset: int, new: bytes) -> bytes:
    return vector[:offset] + new + vector[offset + len(new):]


@pytest.mark.parametrize(("name", "data"), [
    ("version 0", _patched(PSK_VECTOR, 0, b"\x00")),
    ("version 2", _patched(PSK_VECTOR, 0, b"\x02")),
    ("whole seconds in the float64 form", bytes.fromhex("0101c0a8") + MS + struct.pack("!dd", T0, 60.0) + b"\0\0"),
    ("NaN time", bytes.fromhex("0101c0a8") + MS + struct.pack("!dd", math.nan, 60.0) + b"\0\0"),
    ("infinite lifetime", bytes.fromhex("0101c0a8") + MS + struct.pack("!dd", 0.5, math.inf) + b"\0\0"),
    ("negative lifetime", bytes.fromhex("0101c0a8") + MS + struct.pack("!dd", 0.5, -1.0) + b"\0\0"),
    ("empty session_id marked present", bytes.fromhex("0107c0a8") + MS + bytes(8) + b"\0\0\0"),
    ("33-byte session_id", bytes.fromhex("0107c0a8") + MS + bytes(8) + b"\0\0\x21" + bytes(33)),
    ("empty ticket marked present", bytes.fromhex("010bc0a8") + MS + bytes(8) + b"\0\0\0\0"),
    ("empty peer_spki marked present", bytes.fromhex("0143c0a8") + MS + bytes(8) + b"\0\0\0\0"),
    ("peer_name not UTF-8", bytes.fromhex("0183c0a8") + MS + bytes(8) + b"\0\0\0\x01\xff"),
    ("identity longer than the data", bytes.fromhex("0103c0a8") + MS + bytes(8) + b"\0\x09device01"),
    ("empty input", b""),
])
def test_malformed_encodings_are_rejected(name: str, data: bytes) -> None:
    with pytest.raises(DecodeError):
        Session.from_bytes(data)


def test_an_empty_peer_name_differs_from_none() -> None:
    a = replace(PK_SESSION, peer_name="")
    assert Session.from_bytes(a.to_bytes()) == a
    assert a != PK_SESSION and a.to_bytes() != replace(PK_SESSION, peer_name=None).to_bytes()


# -- property tests --------------------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
times = st.one_of(st.integers(0, (1 << 32) - 1).map(float), finite, st.floats(0, 4e9))
sessions = st.builds(
    Session,
    cipher_suite=st.integers(0, 0xFFFF),
    master_secret=st.binary(min_size=48, max_size=48),
    extended_master_secret=st.booleans(),
    identity=st.binary(max_size=80),
    session_id=st.binary(max_size=32),
    ticket=st.binary(max_size=300),
    created=times,
    lifetime=times.map(abs),
    psk_fingerprint=st.sampled_from([b"", b"\x01" * 8]) | st.binary(min_size=8, max_size=8),
    peer_kind=st.none() | st.integers(0, 255),
    peer_spki=st.binary(max_size=100),
    peer_name=st.none() | st.text(max_size=20),
)


@PROPERTY
@given(sessions)
def test_round_trip_property(session: Session) -> None:
    data = session.to_bytes()
    back = Session.from_bytes(data)
    assert back == session
    assert back.to_bytes() == data
    assert hash(back) == hash(session)


@PROPERTY
@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_canonically_or_raise_decode_error(data: bytes) -> None:
    try:
        session = Session.from_bytes(data)
    except DecodeError:
        return
    assert session.to_bytes() == data


@PROPERTY
@given(sessions, st.integers(0, 10_000), st.integers(1, 255))
def test_mutated_encodings_parse_canonically_or_raise_decode_error(session: Session, pos: int, xor: int) -> None:
    data = bytearray(session.to_bytes())
    data[pos % len(data)] ^= xor
    try:
        parsed = Session.from_bytes(bytes(data))
    except DecodeError:
        return
    assert parsed.to_bytes() == bytes(data)


# -- the Session object ----------------------------------------------------------------------------------------

def test_expiry_boundaries_and_clock_skew() -> None:
    s = replace(PSK_SESSION, created=1000.0, lifetime=60.0)
    assert not s.expired(1000.0) and not s.expired(1059.999)
    assert s.expired(1060.0) and s.expired(5000.0)
    assert not s.expired(1000.0 - MAX_CLOCK_SKEW)
    assert s.expired(1000.0 - MAX_CLOCK_SKEW - 0.001)
    assert replace(s, lifetime=0.0).expired(1000.0)
    assert s.resumable(1000.0) and not replace(s, extended_master_secret=False).resumable(1000.0)


def test_psk_fingerprint_binds_the_psk() -> None:
    fp = psk_fingerprint(b"k" * 16)
    assert len(fp) == 8 and fp != psk_fingerprint(b"j" * 16)
    s = replace(PSK_SESSION, psk_fingerprint=fp)
    assert s.matches_psk(b"k" * 16) and not s.matches_psk(b"j" * 16)
    assert not replace(s, psk_fingerprint=b"").matches_psk(b"k" * 16)


@pytest.mark.parametrize("change", [
    {"master_secret": bytes(47)}, {"master_secret": bytes(49)}, {"session_id": bytes(33)},
    {"ticket": bytes(65536)}, {"psk_fingerprint": bytes(4)}, {"cipher_suite": 0x10000}, {"cipher_suite": -1},
    {"peer_kind": 256}, {"lifetime": -1.0}, {"created": math.nan}, {"lifetime": math.inf},
    {"identity": "device01"}, {"peer_name": "\ud800"}, {"identity": bytes(65536)},
])
def test_invalid_fields_are_refused_without_showing_the_secret(change: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        replace(PSK_SESSION, **change)  # type: ignore[arg-type]
    assert MS.hex() not in str(info.value) and repr(MS) not in str(info.value)


def test_equality_compares_the_master_secret() -> None:
    assert replace(PSK_SESSION) == PSK_SESSION
    assert replace(PSK_SESSION, master_secret=bytes(48)) != PSK_SESSION
    assert replace(PSK_SESSION, created=T0 + 1) != PSK_SESSION
    assert PSK_SESSION != PSK_VECTOR


def test_repr_hides_the_master_secret() -> None:
    secret = bytes.fromhex("5ec2e7" * 16)
    fp = psk_fingerprint(b"psk")
    for s in (replace(PSK_SESSION, master_secret=secret, psk_fingerprint=fp),
              replace(PK_SESSION, master_secret=secret)):
        for text in (repr(s), str(s), f"{s}", repr([s])):
            assert secret.hex() not in text.lower() and repr(secret) not in text
            assert fp.hex() not in text
            assert "hidden" in text


# -- SessionCache ---------------------------------------------------------------------------------------------

def cached(sid: bytes, identity: bytes = b"dev", created: float = 0.0, lifetime: float = 1000.0) -> Session:
    return replace(PSK_SESSION, session_id=sid, identity=identity, created=created, lifetime=lifetime)


def test_cache_is_bounded_lru() -> None:
    cache = SessionCache(max_entries=3)
    for i in range(3):
        cache.put(cached(bytes([i]) * 8), now=1.0)
    assert cache.get(b"\x00" * 8, 2.0) is not None  # 0 is now the most recently used
    cache.put(cached(b"\x03" * 8), 3.0)
    assert len(cache) == 3
    assert cache.get(b"\x01" * 8, 4.0) is None  # the least recently used went
    assert all(cache.get(bytes([i]) * 8, 4.0) is not None for i in (0, 2, 3))
    for i in range(100):
        cache.put(cached(i.to_bytes(8, "big")), 5.0)
    assert len(cache) == 3


def test_cache_expiry_with_a_fake_clock() -> None:
    cache = SessionCache(lifetime=50.0)
    cache.put(cached(b"a" * 8, created=100.0, lifetime=1000.0), now=100.0)  # the cache's lifetime ends first
    cache.put(cached(b"b" * 8, created=100.0, lifetime=20.0), now=100.0)  # the session's ends first
    assert cache.get(b"b" * 8, 119.9) is not None
    assert cache.get(b"b" * 8, 120.0) is None and b"b" * 8 not in cache
    assert cache.get(b"a" * 8, 149.9) is not None
    assert cache.get(b"a" * 8, 150.0) is None and len(cache) == 0
    cache.put(cached(b"c" * 8, created=100.0), now=100.0)
    assert cache.get(b"c" * 8, 100.0 - MAX_CLOCK_SKEW - 1) is None  # the clock went back too far
    cache.put(cached(b"d" * 8, created=100.0), now=100.0)
    cache.put(cached(b"e" * 8, created=100.0, lifetime=10.0), now=100.0)
    assert cache.purge_expired(200.0) == 2 and len(cache) == 0


def test_cache_refuses_what_cannot_be_resumed() -> None:
    cache = SessionCache()
    with pytest.raises(ValueError):
        cache.put(cached(b""), 1.0)
    cache.put(replace(cached(b"x" * 8), extended_master_secret=False), 1.0)
    cache.put(cached(b"y" * 8, lifetime=0.0), 1.0)
    cache.put(cached(b"z" * 8, created=0.0, lifetime=10.0), 10.0)
    assert len(cache) == 0
    cache.put(cached(b"w" * 8), 1.0)
    cache.put(replace(cached(b"w" * 8), extended_master_secret=False), 1.0)  # a replacement that cannot resume
    assert cache.get(b"w" * 8, 1.0) is None


def test_cache_purge_by_identity_and_remove() -> None:
    cache = SessionCache()
    for i in range(5):
        cache.put(cached(bytes([i]) * 8, identity=b"revoked" if i % 2 else b"good"), 1.0)
    assert cache.purge_identity(b"revoked") == 2
    assert cache.purge_identity(b"revoked") == 0
    assert len(cache) == 3 and all(cache.get(bytes([i]) * 8, 1.0) for i in (0, 2, 4))
    cache.remove(b"\x00" * 8)
    cache.remove(b"unknown")
    assert len(cache) == 2 and cache.get(b"\x00" * 8, 1.0) is None


def test_new_session_ids_are_unique_despite_collisions() -> None:
    cache = SessionCache()
    cache.put(cached(b"A" * 8), 1.0)
    cache.put(cached(b"B" * 8), 1.0)
    sid = cache.new_session_id(scripted(b"A" * 8, b"B" * 8, b"A" * 8, b"C" * 8))
    assert sid == b"C" * 8
    assert len(cache.new_session_id(seeded(1), length=32)) == 32
    with pytest.raises(RuntimeError):
        cache.new_session_id(lambda n: b"A" * n)
    with pytest.raises(ValueError):
        cache.new_session_id(seeded(1), length=33)
    with pytest.raises(ValueError):
        cache.new_session_id(lambda n: b"short")


# -- TicketKeys -----------------------------------------------------------------------------------------------

def psk_state(created: float = T0, lifetime: float = 86400.0) -> Session:
    return Session(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8, MS, True, b"device01", session_id=b"\x11" * 32,
                   created=created, lifetime=lifetime, psk_fingerprint=psk_fingerprint(b"k" * 16))


def test_seal_and_open() -> None:
    keys = TicketKeys(seeded(7))
    session = psk_state(created=T0 + 0.75)
    ticket = keys.seal(session, T0 + 1)
    # a PSK session with an 8-byte identity: 32 bytes of overhead around a 78-byte state
    assert len(ticket) == 110 == TICKET_OVERHEAD + 78
    opened = keys.open(ticket, T0 + 2)
    assert opened == replace(session, session_id=b"", created=T0)  # no session ID; times in whole seconds
    assert keys.open(bytearray(ticket), T0 + 2) == opened
    assert keys.key_names == [ticket[:4]]


def test_seal_caps_the_lifetime_and_refuses_unresumable_sessions() -> None:
    keys = TicketKeys(seeded(7), rotation=100.0, lifetime=300.0)
    opened = keys.open(keys.seal(psk_state(created=0.0, lifetime=86400.0), 0.0), 1.0)
    assert opened is not None and opened.lifetime == 300.0
    for bad in (replace(psk_state(), extended_master_secret=False), psk_state(lifetime=0.0),
                psk_state(lifetime=0.5), psk_state(created=0.0, lifetime=10.0)):
        with pytest.raises(ValueError):
            keys.seal(bad, T0)
    with pytest.raises(ValueError):
        keys.seal(psk_state(), math.nan)


def test_tampering_with_any_byte_fails() -> None:
    keys = TicketKeys(seeded(3))
    ticket = keys.seal(psk_state(), T0)
    for i in range(len(ticket)):
        for xor in (0x01, 0x80):
            tampered = ticket[:i] + bytes([ticket[i] ^ xor]) + ticket[i + 1:]
            assert keys.open(tampered, T0) is None
    for n in range(len(ticket)):
        assert keys.open(ticket[:n], T0) is None
    assert keys.open(ticket + b"\x00", T0) is None
    assert keys.open(b"\x00" * 70000, T0) is None
    assert keys.open(ticket, T0) is not None


@PROPERTY
@given(st.binary(max_size=300))
def test_open_never_raises(data: bytes) -> None:
    keys = TicketKeys(seeded(3))
    ticket = keys.seal(psk_state(), T0)
    assert keys.open(data, T0) is None
    assert keys.open(ticket[:4] + data, T0) is None
    assert keys.open(ticket, math.nan) is None


def test_wrong_key_fails() -> None:
    ticket = TicketKeys(seeded(1)).seal(psk_state(), T0)
    assert TicketKeys(seeded(2)).open(ticket, T0) is None
    fresh = TicketKeys(seeded(2))
    fresh.rotate(T0)
    assert fresh.open(ticket, T0) is None
    # the same key name with another key: the tag does not verify
    name = ticket[:4]
    impostor = TicketKeys(scripted(name, b"\x99" * 16, then=seeded(5)))
    impostor.rotate(T0)
    assert impostor.key_names == [name]
    assert impostor.open(ticket, T0) is None


def test_ticket_expiry() -> None:
    keys = TicketKeys(seeded(4))
    ticket = keys.seal(psk_state(created=T0, lifetime=3600.0), T0)
    assert keys.open(ticket, T0 + 3599.5) is not None
    assert keys.open(ticket, T0 + 3600.0) is None
    assert keys.open(ticket, T0 - MAX_CLOCK_SKEW - 1) is None


def test_rotation_keeps_old_tickets_until_their_key_is_dropped() -> None:
    keys = TicketKeys(seeded(5), rotation=100.0, lifetime=300.0)
    # created in the future (within the allowed skew), so the session outlives its key: the key's drop decides
    early = keys.seal(psk_state(created=250.0), 0.0)
    late = keys.seal(psk_state(created=250.0), 50.0)  # the same key, last used at 50
    assert early[:4] == late[:4]
    assert keys.seal(psk_state(created=99.0), 99.0)[:4] == early[:4]
    newer = keys.seal(psk_state(created=100.0), 100.0)
    assert newer[:4] != early[:4] and len(keys) == 2
    assert keys.open(early, 200.0) is not None and keys.open(late, 398.9) is not None
    assert early[:4] in keys.key_names
    assert keys.open(early, 399.0) is None  # the first key was last used at 99: dropped at 399
    assert keys.key_names == [newer[:4]]
    assert keys.open(newer, 399.0) is not None


def test_forced_rotation_and_the_key_bound() -> None:
    keys = TicketKeys(seeded(6), rotation=100.0, lifetime=300.0)
    assert keys.max_keys == 5
    first = keys.seal(psk_state(created=0.0), 0.0)
    keys.rotate(10.0)
    second = keys.seal(psk_state(created=10.0), 10.0)
    assert second[:4] != first[:4] and keys.open(first, 11.0) is not None
    for i in range(20):
        keys.rotate(20.0 + i)
        assert len(keys) <= keys.max_keys
    assert len(set(keys.key_names)) == len(keys) == keys.max_keys
    assert keys.open(first, 50.0) is None  # pushed out by the bound


def test_key_names_are_unique() -> None:
    name = b"NAME"
    keys = TicketKeys(scripted(name, b"\x01" * 16, name, name, b"OTHR", b"\x02" * 16))
    keys.rotate(0.0)
    keys.rotate(1.0)
    assert keys.key_names == [name, b"OTHR"]
    stuck = TicketKeys(scripted(name, b"\x01" * 16, then=lambda n: name if n == 4 else bytes(n)))
    stuck.rotate(0.0)
    with pytest.raises(RuntimeError):
        stuck.rotate(1.0)


def test_ticket_keys_repr_hides_the_keys() -> None:
    secret = bytes.fromhex("c0ffee" * 5 + "ab")
    keys = TicketKeys(scripted(b"NAME", secret, then=seeded(1)))
    ticket = keys.seal(replace(psk_state(), master_secret=bytes.fromhex("5ec2e7" * 16)), T0)
    opened = keys.open(ticket, T0)
    for text in (repr(keys), str(keys), repr(keys._keys), repr(opened)):
        assert secret.hex() not in text and "5ec2e7" not in text


# -- persistence ----------------------------------------------------------------------------------------------

def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_persistence_round_trip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "ticket.keys"
    keys = TicketKeys(seeded(8), rotation=100.0, lifetime=300.0)
    t1 = keys.seal(psk_state(created=0.0), 0.0)
    t2 = keys.seal(psk_state(created=150.0), 150.0)
    assert keys.needs_save
    old_umask = os.umask(0)
    try:
        keys.save(path)
    finally:
        os.umask(old_umask)
    assert not keys.needs_save
    assert file_mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["ticket.keys"]  # no temporary file left behind
    loaded = TicketKeys.load(path, seeded(9), rotation=100.0, lifetime=300.0)
    assert loaded.key_names == keys.key_names and not loaded.needs_save
    assert loaded.open(t1, 160.0) == keys.open(t1, 160.0) is not None
    assert loaded.open(t2, 160.0) is not None
    # the loaded keys keep sealing with the current key until its rotation period ends
    assert loaded.seal(psk_state(created=160.0), 160.0)[:4] == t2[:4]
    again = TicketKeys.from_bytes(loaded.to_bytes(), seeded(9), rotation=100.0, lifetime=300.0)
    assert again.key_names == loaded.key_names
    keys.save(path)  # replacing an existing file
    assert file_mode(path) == 0o600


def test_a_restart_assumes_the_last_possible_use(tmp_path: Path) -> None:
    """Tickets sealed after the last save still open after a restart until their key would have been dropped."""
    path = tmp_path / "keys"
    keys = TicketKeys.load_or_create(path, seeded(10), 0.0, rotation=100.0, lifetime=300.0)
    assert path.exists() and file_mode(path) == 0o600 and len(keys) == 1
    unsaved = keys.seal(psk_state(created=90.0), 90.0)  # sealed after the save (the key was last used at 90)
    restarted = TicketKeys.load_or_create(path, seeded(11), 95.0, rotation=100.0, lifetime=300.0)
    assert restarted.key_names == keys.key_names
    assert restarted.open(unsaved, 389.0) is not None
    assert restarted.open(unsaved, 390.0) is None  # the session's own lifetime (capped at 300) ended


def test_load_or_create_refuses_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    keys = TicketKeys.load_or_create(path, seeded(12), 0.0)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(DecodeError):
        TicketKeys.load_or_create(path, seeded(12), 1.0)
    assert path.read_bytes() == data[:-1]  # not replaced
    path.write_bytes(b"\x00" * 100_000)
    with pytest.raises(DecodeError):
        TicketKeys.load(path, seeded(12))
    assert keys.to_bytes() == data


def two_key_file() -> bytes:
    keys = TicketKeys(seeded(13))
    keys.rotate(0.0)
    keys.rotate(1.0)
    return keys.to_bytes()


def test_every_truncation_of_a_key_file_is_rejected() -> None:
    data = two_key_file()
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            TicketKeys.from_bytes(data[:n], seeded(1))
    with pytest.raises(DecodeError):
        TicketKeys.from_bytes(data + b"\x00", seeded(1))


def _corrupted(data: bytes, changes: Iterable[tuple[int, bytes]]) -> bytes:
    out = bytearray(data)
    for offset, new in changes:
        out[offset:offset + len(new)] = new
    return bytes(out)


def test_malformed_key_files_are_rejected() -> None:
    data = two_key_file()
    header = len(b"iotdtls ticket keys\x00")
    key_len = 4 + 16 + 8 + 8 + 6
    first, second = header + 2, header + 2 + key_len
    for bad in (
        _corrupted(data, [(0, b"X")]),  # magic
        _corrupted(data, [(header, b"\x02")]),  # version
        _corrupted(data, [(second, data[first:first + 4])]),  # duplicate name
        _corrupted(data, [(first + 20, struct.pack("!d", math.nan))]),  # started
        _corrupted(data, [(first + 28, struct.pack("!d", math.inf))]),  # last_used
    ):
        with pytest.raises(DecodeError):
            TicketKeys.from_bytes(bad, seeded(1))


def test_a_file_with_more_keys_than_the_bound_keeps_the_newest() -> None:
    keys = TicketKeys(seeded(14), rotation=10.0, lifetime=1000.0)
    for i in range(50):
        keys.rotate(float(i))
    small = TicketKeys.from_bytes(keys.to_bytes(), seeded(1), rotation=100.0, lifetime=200.0)
    assert small.max_keys == 4 and small.key_names == keys.key_names[-4:]


def test_constructor_arguments_are_checked() -> None:
    for kw in ({"rotation": 0.0}, {"lifetime": -1.0}, {"rotation": math.inf}):
        with pytest.raises(ValueError):
            TicketKeys(seeded(1), **kw)
    for args in ((0,), (10, 0.0), (10, math.nan)):
        with pytest.raises(ValueError):
            SessionCache(*args)
