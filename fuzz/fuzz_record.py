"""Fuzz target (a): the record layer. ``split_records`` on any datagram, ``CipherState.unprotect`` / ``open``
on every record it yields, and protect/unprotect round trips with single-byte corruption.

Input: one mode byte, then the datagram (even modes) or a round-trip recipe (odd modes).
Bugs: any exception, a record that does not re-encode to the bytes it came from, a forged record that
authenticates, a round trip that loses data.
"""

from __future__ import annotations

from _harness import FuzzBug, instrumented, main

with instrumented(__name__ == "__main__"):
    from helpers import established_pair

    from iotdtls.constants import DTLS_1_0, DTLS_1_2, MAX_PLAINTEXT
    from iotdtls.record import _HDR, SEQ_MASK, CipherState, split_records

_pair = established_pair()
assert _pair.client._write_cipher is not None and _pair.server_conn._write_cipher is not None
#: The keys of the deterministic reference session (its epoch-1 records in the seeds authenticate), plus a
#: CCM (16-byte tag) state.
CIPHERS: list[CipherState] = [
    _pair.client._write_cipher,
    _pair.server_conn._write_cipher,
    CipherState(bytes(range(16)), b"\x01\x02\x03\x04", 16),
]


def parse(datagram: bytes) -> None:
    pos = 0
    for rec in split_records(datagram):
        if not 20 <= rec.content_type <= 23 or rec.version not in (DTLS_1_2, DTLS_1_0):
            raise FuzzBug(f"split_records yielded content type {rec.content_type} version {rec.version:#x}")
        if rec.epoch != rec.epoch_seq >> 48 or rec.seq != rec.epoch_seq & SEQ_MASK:
            raise FuzzBug("epoch / sequence number split wrong")
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


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode & 1:
        roundtrip(mode, body)
    else:
        parse(body)


if __name__ == "__main__":
    main(test_one_input)
