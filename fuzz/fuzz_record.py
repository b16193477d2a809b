"""Fuzz target (a): the record layer. ``split_records`` on any datagram (classic records, and tls12_cid records
of RFC 9146 with a connection ID of 1, 4, 8 or 20 bytes), ``CipherState.unprotect`` / ``open`` on every classic
record it yields and ``open_cid`` on every tls12_cid record, and protect/unprotect and protect_cid/open_cid round
trips (any CID, inner content type and padding) with single-byte corruption.

Input: one mode byte, then the datagram (even modes; bits 1-3 pick the CID length the parser is told) or a
round-trip recipe (odd modes; with bit 7 set a tls12_cid round trip).
Bugs: any exception, a record that does not re-encode to the bytes it came from, a forged record that
authenticates, a round trip that loses data, an authenticated tls12_cid record that does not re-protect to
itself.
"""

from __future__ import annotations

from _harness import FuzzBug, instrumented, main

with instrumented(__name__ == "__main__"):
    from endpoints import established, make_pair
    from helpers import established_pair

    from iotdtls.constants import DTLS_1_0, DTLS_1_2, MAX_CID_LEN, MAX_PLAINTEXT, TLS12_CID, ContentType
    from iotdtls.record import (
        _HDR,
        SEQ_MASK,
        CipherState,
        Record,
        inner_plaintext,
        split_inner_plaintext,
        split_records,
    )

_pairs = [established_pair(), established(make_pair("ticket")), established(make_pair("resume"))]
#: The keys of the deterministic reference sessions: without connection IDs, and with 4-byte CIDs after a full
#: and an abbreviated handshake (their epoch-1 records in the seeds authenticate), plus a CCM (16-byte tag) state.
CIPHERS: list[CipherState] = [
    CipherState(bytes(range(16)), b"\x01\x02\x03\x04", 16),
    *(c for p in _pairs for c in (p.client._write_cipher, p.server_conn._write_cipher) if c is not None),
]


#: The content types of classic records: DTLS 1.2's four and RFC 9853's return_routability_check.
CLASSIC_TYPES = frozenset({20, 21, 22, 23, ContentType.RETURN_ROUTABILITY_CHECK})
#: CID lengths the parser is told (parse mode bits 1-3); -1 and 0: the receiver uses no CID.
CID_LENS = [-1, 4, 1, 8, MAX_CID_LEN, 0, 4, 2]


def _cid_record(rec: Record, raw: bytes) -> None:
    """A tls12_cid record: every cipher's ``open_cid`` either refuses it or yields what re-protects to it."""
    for cipher in CIPHERS:
        inner = cipher.open_cid(rec)
        if inner is None:
            continue
        content_type, content = inner
        ilen = len(rec.fragment) - cipher.overhead
        if content_type == 0 or len(content) >= ilen or ilen > MAX_PLAINTEXT + 1:
            raise FuzzBug("open_cid returned an impossible inner plaintext")
        # AES-CCM is deterministic: padded to exactly its inner length, the same record comes out again.
        if rec.version == DTLS_1_2 and rec.fragment[:8] == rec.epoch_seq.to_bytes(8, "big") and \
                cipher.protect_cid(content_type, rec.epoch_seq, content, rec.cid, ilen, ilen) != raw:
            raise FuzzBug("an authenticated tls12_cid record does not re-protect to itself")


def parse(datagram: bytes, cid_len: int = -1) -> None:
    pos = 0
    for rec in split_records(datagram, cid_len):
        cid_record = rec.content_type == TLS12_CID
        if not (rec.content_type in CLASSIC_TYPES or (cid_record and cid_len > 0)) or \
                rec.version not in (DTLS_1_2, DTLS_1_0):
            raise FuzzBug(f"split_records yielded content type {rec.content_type} version {rec.version:#x}")
        if rec.epoch != rec.epoch_seq >> 48 or rec.seq != rec.epoch_seq & SEQ_MASK:
            raise FuzzBug("epoch / sequence number split wrong")
        if cid_record:
            if len(rec.cid) != cid_len:
                raise FuzzBug(f"a CID of {len(rec.cid)} bytes parsed with cid_len {cid_len}")
            raw = _HDR.pack(rec.content_type, rec.version, rec.epoch_seq, 0)[:11] + rec.cid + \
                len(rec.fragment).to_bytes(2, "big") + rec.fragment
            if datagram[pos : pos + len(raw)] != raw:
                raise FuzzBug("a tls12_cid record does not re-encode to the bytes it was parsed from")
            _cid_record(rec, raw)
            pos += len(raw)
            continue
        if rec.cid:
            raise FuzzBug("a classic record with a CID")
        raw = _HDR.pack(rec.content_type, rec.version, rec.epoch_seq, len(rec.fragment)) + rec.fragment
        if datagram[pos : pos + len(raw)] != raw:
            raise FuzzBug("a record does not re-encode to the bytes it was parsed from")
        for cipher in CIPHERS:
            plain = cipher.unprotect(rec)
            opened = cipher.open(rec.content_type, rec.version, rec.epoch_seq, datagram, pos + 13, pos + len(raw))
            if plain != opened:
                raise FuzzBug("unprotect and open disagree")
            if plain is None:
                continue
            if len(plain) > MAX_PLAINTEXT:
                raise FuzzBug("plaintext above 2^14 accepted")
            # AES-CCM is deterministic: the same record must come out of protect() again.
            if rec.version == DTLS_1_2 and rec.fragment[:8] == rec.epoch_seq.to_bytes(8, "big") and \
                    cipher.protect(rec.content_type, rec.epoch_seq, plain) != raw:
                raise FuzzBug("an authenticated record does not re-protect to itself")
        pos += len(raw)
    if pos > len(datagram):
        raise FuzzBug("records extend past the datagram")


def roundtrip(mode: int, body: bytes) -> None:
    content_type = 20 + (mode >> 1) % 4
    cipher = CIPHERS[(mode >> 3) % len(CIPHERS)]
    epoch_seq = int.from_bytes(body[:8].ljust(8, b"\x00"), "big")
    payload = body[8 : 8 + MAX_PLAINTEXT]
    record = cipher.protect(content_type, epoch_seq, payload)
    recs = list(split_records(record))
    if len(recs) != 1 or cipher.unprotect(recs[0]) != payload:
        raise FuzzBug("protect/unprotect round trip failed")
    # Any single corrupted byte: the record no longer parses, or it does not authenticate.
    pos = (mode * 131 + len(payload) + (body[-1] if body else 0)) % len(record)
    bad = bytearray(record)
    bad[pos] ^= (mode | 1) & 0xFF
    for rec in split_records(bytes(bad)):
        for c in CIPHERS:
            if c.unprotect(rec) is not None:
                raise FuzzBug(f"record with byte {pos} corrupted still authenticates")


def cid_roundtrip(mode: int, body: bytes) -> None:
    """``body``: epoch and sequence number (8 bytes), CID length, padding, inner content type, CID, payload."""
    cipher = CIPHERS[(mode >> 3) % len(CIPHERS)]
    head = body[:11].ljust(11, b"\x00")
    epoch_seq = int.from_bytes(head[:8], "big")
    cid_len = 1 + head[8] % MAX_CID_LEN
    pad_to, content_type = head[9] * 4, head[10] or 23
    cid = body[11 : 11 + cid_len].ljust(cid_len, b"\x00")
    payload = body[11 + cid_len :][:MAX_PLAINTEXT]
    inner = inner_plaintext(payload, content_type, pad_to, MAX_PLAINTEXT)
    longest = max(MAX_PLAINTEXT, len(payload) + 1)  # padding stops at the limit, a longer payload is not padded
    if split_inner_plaintext(inner) != (content_type, payload) or len(inner) > longest or \
            (pad_to > 1 and len(inner) % pad_to and len(inner) != longest):
        raise FuzzBug("DTLSInnerPlaintext round trip or padding wrong")
    record = cipher.protect_cid(content_type, epoch_seq, payload, cid, pad_to)
    recs = list(split_records(record, cid_len))
    if len(recs) != 1 or recs[0].cid != cid or len(record) != 13 + cid_len + len(inner) + cipher.overhead or \
            cipher.open_cid(recs[0]) != (content_type, payload):
        raise FuzzBug("protect_cid/open_cid round trip failed")
    # Any single corrupted byte: the record no longer parses, or nothing authenticates it.
    pos = (mode * 131 + len(payload) + (body[-1] if body else 0)) % len(record)
    bad = bytearray(record)
    bad[pos] ^= (mode | 1) & 0xFF
    for rec in split_records(bytes(bad), cid_len):
        for c in CIPHERS:
            if (c.open_cid(rec) if rec.content_type == TLS12_CID else c.unprotect(rec)) is not None:
                raise FuzzBug(f"tls12_cid record with byte {pos} corrupted still authenticates")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode & 0x81 == 0x81:
        cid_roundtrip(mode, body)
    elif mode & 1:
        roundtrip(mode, body)
    else:
        parse(body, CID_LENS[(mode >> 1) % len(CID_LENS)])


if __name__ == "__main__":
    main(test_one_input)
