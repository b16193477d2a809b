"""Buffer pull/push, record framing, AEAD record protection and the anti-replay window."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from iotdtls.buffer import Buffer, BufferReadError, Writer
from iotdtls.constants import DTLS_1_0, DTLS_1_2, AlertDescription, ContentType
from iotdtls.errors import AlertError, DecodeError
from iotdtls.record import CipherState, Record, encode_plain, split_records
from iotdtls.replay import ReplayWindow

# ---------------------------------------------------------------------------------------------------------
# Buffer / Writer


def test_push_pull_round_trip() -> None:
    w = Writer()
    w.push_uint8(0xAB)
    w.push_uint16(0xBEEF)
    w.push_uint24(0x123456)
    w.push_uint48(0x0102030405FF)
    w.push_bytes(b"xyz")
    w.push_vector(1, b"one")
    w.push_vector(2, b"two!")
    w.push_vector(3, b"")
    with w.push_block(2):
        w.push_uint8(7)
        w.push_vector(1, b"in")
    data = w.data()
    assert data == bytes.fromhex("ab beef 123456 0102030405ff") + b"xyz" + b"\x03one" + b"\x00\x04two!" + \
        b"\x00\x00\x00" + b"\x00\x04\x07\x02in"

    buf = Buffer(data)
    assert buf.pull_uint8() == 0xAB
    assert buf.pull_uint16() == 0xBEEF
    assert buf.pull_uint24() == 0x123456
    assert buf.pull_uint48() == 0x0102030405FF
    assert buf.pull_bytes(3) == b"xyz"
    assert buf.pull_vector(1) == b"one"
    assert buf.pull_vector(2) == b"two!"
    assert buf.pull_vector(3) == b""
    with buf.pull_block(2) as n:
        assert n == 4
        assert buf.pull_uint8() == 7
        assert buf.pull_vector(1) == b"in"
    assert buf.eof()
    assert buf.remaining() == 0
    assert buf.tell() == len(data)


@pytest.mark.parametrize(("reader", "data"), [
    (Buffer.pull_uint8, b""),
    (Buffer.pull_uint16, b"\x01"),
    (Buffer.pull_uint24, b"\x01\x02"),
    (Buffer.pull_uint48, b"\x01" * 5),
    (lambda b: b.pull_bytes(7), b"\x01" * 6),
    (lambda b: b.pull_bytes(-1), b"abc"),
    (lambda b: b.pull_vector(1), b"\x05abc"),
    (lambda b: b.pull_vector(2), b"\x00"),
    (lambda b: b.pull_vector(2), b"\x00\x09\x01"),
    (lambda b: b.pull_vector(3), b""),
])
def test_truncated_input_raises_decode_error(reader: Callable[[Buffer], object], data: bytes) -> None:
    buf = Buffer(data)
    with pytest.raises(BufferReadError) as info:
        reader(buf)
    # A decode_error alert, so the connection answers it with the right description.
    assert isinstance(info.value, DecodeError) and isinstance(info.value, AlertError)
    assert info.value.description == AlertDescription.decode_error


def test_explicit_end_limits_reads() -> None:
    buf = Buffer(b"abcdef", end=2)
    assert buf.pull_bytes(2) == b"ab"
    assert buf.eof()
    with pytest.raises(BufferReadError):
        buf.pull_uint8()


def test_vector_length_bounds() -> None:
    assert Buffer(b"\x02ab").pull_vector(1, 1, 2) == b"ab"
    with pytest.raises(BufferReadError):
        Buffer(b"\x00").pull_vector(1, 1, 2)  # below minimum
    with pytest.raises(BufferReadError):
        Buffer(b"\x03abc").pull_vector(1, 1, 2)  # above maximum
    with pytest.raises(BufferReadError):
        Buffer(b"\x05abc").pull_vector(1)  # announces more than present


def test_pull_block_rejects_trailing_bytes() -> None:
    buf = Buffer(b"\x00\x03abc")
    with pytest.raises(BufferReadError, match="trailing"), buf.pull_block(2):
        buf.pull_bytes(2)  # leaves one byte of the block unread


def test_pull_block_longer_than_data() -> None:
    buf = Buffer(b"\x00\x09abc")
    with pytest.raises(BufferReadError), buf.pull_block(2):
        pass


def test_pull_block_limits_reads_to_the_block() -> None:
    buf = Buffer(b"\x02abcd")
    with pytest.raises(BufferReadError), buf.pull_block(1):
        buf.pull_bytes(3)  # the data has it, the block does not
    # After a block, reads continue up to the outer end.
    buf = Buffer(b"\x02abcd")
    with buf.pull_block(1):
        assert buf.pull_bytes(2) == b"ab"
    assert buf.pull_bytes(2) == b"cd"


def test_writer_rejects_oversized_vectors_and_blocks() -> None:
    w = Writer()
    with pytest.raises(ValueError):
        w.push_vector(1, bytes(256))
    w.push_vector(1, bytes(255))
    w = Writer()
    with pytest.raises(ValueError), w.push_block(1):
        w.push_bytes(bytes(256))


# ---------------------------------------------------------------------------------------------------------
# Record framing


def _rec(ctype: int, epoch_seq: int, payload: bytes, version: int = DTLS_1_2) -> bytes:
    return struct.pack(">BHQH", ctype, version, epoch_seq, len(payload)) + payload


def test_encode_plain_layout() -> None:
    rec = encode_plain(ContentType.HANDSHAKE, (1 << 48) | 0x0A0B0C, b"xyz")
    assert rec == bytes.fromhex("16 fefd 0001 000000 0a0b0c 0003") + b"xyz"


def test_split_records_several_per_datagram() -> None:
    d = _rec(22, 1, b"a") + _rec(20, 2, b"\x01") + _rec(23, (1 << 48) | 7, b"") + _rec(21, 3, b"\x01\x00",
                                                                                         DTLS_1_0)
    recs = list(split_records(d))
    assert [(r.content_type, r.epoch, r.seq, r.fragment) for r in recs] == [
        (22, 0, 1, b"a"), (20, 0, 2, b"\x01"), (23, 1, 7, b""), (21, 0, 3, b"\x01\x00")]
    assert recs[3].version == DTLS_1_0


@pytest.mark.parametrize("cut", range(1, 40))
def test_split_records_truncated(cut: int) -> None:
    good = _rec(22, 1, b"hello") + _rec(23, 2, b"world!")  # 18 + 19 bytes
    recs = list(split_records(good[:cut]))
    # A record is yielded only when it is entirely present; nothing past the cut is invented.
    expected = 0 if cut < 18 else (1 if cut < 37 else 2)
    assert len(recs) == expected
    for r in recs:
        assert r.fragment in (b"hello", b"world!")


@pytest.mark.parametrize("bad", [
    _rec(19, 1, b"x"),  # content type below range
    _rec(24, 1, b"x"),  # content type above range
    _rec(22, 1, b"x", version=0x0303),  # TLS 1.2, not DTLS
    _rec(22, 1, b"x", version=0xFEFC),  # DTLS 1.3 record version
    b"\x16\xfe\xfd" + bytes(8) + b"\xff\xff" + b"short",  # length beyond the datagram
])
def test_split_records_stops_at_garbage(bad: bytes) -> None:
    good = _rec(22, 5, b"ok")
    assert [r.fragment for r in split_records(good + bad + good)] == [b"ok"]
    assert list(split_records(bad + good)) == []


def test_split_records_ignores_short_tail() -> None:
    assert [r.fragment for r in split_records(_rec(22, 0, b"ok") + b"\x16\xfe\xfd")] == [b"ok"]
    assert list(split_records(b"")) == []
    assert list(split_records(bytes(12))) == []


# ---------------------------------------------------------------------------------------------------------
# AEAD protection

KEY = bytes(range(0x10, 0x20))
IV = bytes.fromhex("a0a1a2a3")
EPOCH_SEQ = (1 << 48) | 5
PAYLOAD = b"hello, dtls"

# Computed once from the layout of RFC 6655 / RFC 5246 6.2.3.3 (cross-checked below by hand with AESCCM).
VECTOR_CCM_8 = bytes.fromhex(
    "17fefd0001000000000005001b" "0001000000000005" "4a5292635ffb1fafabeec0" "10a7ee5f2cee6277")
VECTOR_CCM = bytes.fromhex(
    "17fefd00010000000000050023" "0001000000000005" "4a5292635ffb1fafabeec0"
    "8955244ff534f11090a92afa5adbc9e3")


@pytest.mark.parametrize(("tag_len", "vector"), [(8, VECTOR_CCM_8), (16, VECTOR_CCM)])
def test_protect_byte_exact_vector(tag_len: int, vector: bytes) -> None:
    cs = CipherState(KEY, IV, tag_len)
    rec = cs.protect(ContentType.APPLICATION_DATA, EPOCH_SEQ, PAYLOAD)
    assert rec == vector
    assert cs.overhead == 8 + tag_len

    # Independent construction: nonce = fixed IV || epoch || seq; AAD = epoch || seq || type || version || len.
    explicit = EPOCH_SEQ.to_bytes(8, "big")
    assert explicit == bytes.fromhex("0001000000000005")
    nonce = IV + explicit
    aad = explicit + bytes([23]) + b"\xfe\xfd" + len(PAYLOAD).to_bytes(2, "big")
    assert len(aad) == 13
    sealed = AESCCM(KEY, tag_length=tag_len).encrypt(nonce, PAYLOAD, aad)
    header = b"\x17\xfe\xfd" + explicit + (8 + len(sealed)).to_bytes(2, "big")
    assert header + explicit + sealed == vector
    assert len(vector) == 13 + 8 + len(PAYLOAD) + tag_len


@pytest.mark.parametrize("tag_len", [8, 16])
def test_protect_unprotect_round_trip(tag_len: int) -> None:
    cs = CipherState(KEY, IV, tag_len)
    for payload in (b"", b"x", bytes(range(256)) * 4):
        for ctype in (ContentType.APPLICATION_DATA, ContentType.HANDSHAKE, ContentType.ALERT):
            rec = cs.protect(ctype, (1 << 48) | 77, payload)
            (parsed,) = list(split_records(rec))
            assert parsed.epoch == 1 and parsed.seq == 77 and parsed.content_type == ctype
            assert cs.unprotect(parsed) == payload


@pytest.mark.parametrize("tag_len", [8, 16])
def test_unprotect_rejects_any_flipped_bit(tag_len: int) -> None:
    cs = CipherState(KEY, IV, tag_len)
    rec = cs.protect(ContentType.APPLICATION_DATA, EPOCH_SEQ, PAYLOAD)
    for bit in range(len(rec) * 8):
        if bit // 8 in (11, 12):
            continue  # the length field: a changed length no longer frames the record
        tampered = bytearray(rec)
        tampered[bit // 8] ^= 1 << (bit % 8)
        parsed = list(split_records(bytes(tampered)))
        if not parsed:
            continue  # the header no longer parses (type/version): not even a record
        assert cs.unprotect(parsed[0]) is None, f"bit {bit} flipped and the record still authenticated"


def test_unprotect_rejects_header_changes_wrong_key_and_short_fragments() -> None:
    cs = CipherState(KEY, IV, 8)
    rec = next(split_records(cs.protect(ContentType.APPLICATION_DATA, EPOCH_SEQ, PAYLOAD)))
    for ctype, version, epoch_seq in [(22, DTLS_1_2, EPOCH_SEQ), (23, DTLS_1_0, EPOCH_SEQ),
                                      (23, DTLS_1_2, EPOCH_SEQ + 1), (23, DTLS_1_2, (2 << 48) | 5)]:
        assert cs.unprotect(Record(ctype, version, epoch_seq, rec.fragment)) is None
    assert CipherState(bytes(16), IV, 8).unprotect(rec) is None
    assert CipherState(KEY, b"\x00\x00\x00\x00", 8).unprotect(rec) is None
    assert CipherState(KEY, IV, 16).unprotect(rec) is None
    for n in range(16):
        assert cs.unprotect(Record(23, DTLS_1_2, EPOCH_SEQ, rec.fragment[:n])) is None


# ---------------------------------------------------------------------------------------------------------
# Replay window


def test_replay_window_fresh_and_duplicate() -> None:
    w = ReplayWindow()
    assert w.top == -1
    for seq in (0, 1, 5, 3):
        assert w.is_fresh(seq)
        w.mark(seq)
        assert not w.is_fresh(seq)
    assert w.top == 5
    assert w.is_fresh(2) and w.is_fresh(4) and w.is_fresh(6) and w.is_fresh(1 << 47)
    for seq in (0, 1, 3, 5):
        assert not w.is_fresh(seq)


def test_replay_window_too_old() -> None:
    w = ReplayWindow(64)
    w.mark(100)
    assert w.is_fresh(37)  # 100 - 37 = 63: the oldest slot of the window
    assert not w.is_fresh(36)  # 64 behind: outside the window, rejected as too old
    assert not w.is_fresh(0)


@pytest.mark.parametrize("size", [1, 8, 32, 64, 128])
def test_replay_window_size_configurable(size: int) -> None:
    w = ReplayWindow(size)
    w.mark(1000)
    assert w.is_fresh(1000 - size + 1) == (size > 1)
    assert not w.is_fresh(1000 - size)
    # Mark everything inside the window in descending order: each is fresh exactly once.
    for seq in range(999, 1000 - size, -1):
        assert w.is_fresh(seq)
        w.mark(seq)
        assert not w.is_fresh(seq)
    assert not any(w.is_fresh(s) for s in range(1000 - size - 3, 1001))


def test_replay_window_jump_bigger_than_window() -> None:
    w = ReplayWindow(16)
    for seq in range(10):
        w.mark(seq)
    w.mark(1000)  # jump far beyond the window: the old bitmap is gone
    assert w.top == 1000
    assert not w.is_fresh(1000)
    assert w.is_fresh(999) and w.is_fresh(985)
    assert not w.is_fresh(984) and not w.is_fresh(9)
    w.mark(1016)  # jump of exactly the window size
    assert not w.is_fresh(1000)  # now too old (16 behind)
    assert w.is_fresh(1001) and not w.is_fresh(1016)


def test_replay_window_shift_within_window_keeps_history() -> None:
    w = ReplayWindow(64)
    w.mark(10)
    w.mark(12)
    w.mark(50)  # shift by 38: 10 and 12 stay in the window and stay marked
    assert not w.is_fresh(10) and not w.is_fresh(12) and w.is_fresh(11)
    w.mark(73)  # 10 falls out (63 behind: still inside), 12 at 61
    assert not w.is_fresh(10) and not w.is_fresh(12)
    w.mark(74)  # 10 is 64 behind: too old
    assert not w.is_fresh(10) and w.is_fresh(11)


def test_replay_window_rejects_empty_size() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(0)
