"""DTLS 1.2 record layer (RFC 6347 section 4.1): headers, several records per datagram, AEAD protection.

The AEAD follows RFC 6655 / RFC 5246 section 6.2.3.3: nonce = 4-byte fixed IV || 8-byte explicit nonce, where
the explicit nonce is the record's epoch and sequence number; additional data = epoch || sequence number ||
type || version || plaintext length (13 bytes).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from .constants import DTLS_1_0, DTLS_1_2, MAX_PLAINTEXT

_HDR = struct.Struct(">BHQH")  # type, version, epoch<<48 | seq, length
_AAD = struct.Struct(">QBHH")
_NONCE = struct.Struct(">IQ")  # 4-byte fixed IV, 8-byte explicit nonce
_HDR_NONCE = struct.Struct(">BHQHQ")  # header followed by the explicit nonce (= epoch and sequence number)
SEQ_MASK = (1 << 48) - 1
MAX_RECORD = MAX_PLAINTEXT + 2048  # RFC 5246 section 6.2.3: the largest protected fragment
MAX_SEQ = SEQ_MASK


class Record:
    """One parsed record header and its (still protected) fragment."""

    __slots__ = ("content_type", "epoch", "epoch_seq", "fragment", "seq", "version")

    def __init__(self, content_type: int, version: int, epoch_seq: int, fragment: bytes) -> None:
        self.content_type = content_type
        self.version = version
        self.epoch_seq = epoch_seq
        self.epoch = epoch_seq >> 48
        self.seq = epoch_seq & SEQ_MASK
        self.fragment = fragment


def split_records(datagram: bytes) -> Iterator[Record]:
    """Yield the records of a datagram. Parsing stops at the first malformed header (RFC 6347 4.1.2.7:
    invalid records are discarded; a broken length leaves no reliable way to find the next one)."""
    pos = 0
    end = len(datagram)
    unpack = _HDR.unpack_from
    while end - pos >= 13:
        ctype, version, epoch_seq, length = unpack(datagram, pos)
        pos += 13
        if pos + length > end or length > MAX_RECORD or version not in (DTLS_1_2, DTLS_1_0) or not 20 <= ctype <= 23:
            return
        yield Record(ctype, version, epoch_seq, datagram[pos : pos + length])
        pos += length


def encode_plain(content_type: int, epoch_seq: int, payload: bytes) -> bytes:
    return _HDR.pack(content_type, DTLS_1_2, epoch_seq, len(payload)) + payload


class CipherState:
    """AEAD protection for one direction of one epoch."""

    __slots__ = ("_aead", "_iv", "_iv_int", "overhead")

    def __init__(self, key: bytes, iv: bytes, tag_len: int) -> None:
        self._aead = AESCCM(key, tag_length=tag_len)
        self._iv = iv
        self._iv_int = int.from_bytes(iv, "big")
        self.overhead = 8 + tag_len

    def protect(self, content_type: int, epoch_seq: int, payload: bytes) -> bytes:
        """The whole record: header, explicit nonce, ciphertext and tag."""
        plen = len(payload)
        sealed = self._aead.encrypt(_NONCE.pack(self._iv_int, epoch_seq), payload,
                               _AAD.pack(epoch_seq, content_type, DTLS_1_2, plen))
        return _HDR_NONCE.pack(content_type, DTLS_1_2, epoch_seq, plen + self.overhead, epoch_seq) + sealed

    def open(self, content_type: int, version: int, epoch_seq: int, data: bytes, start: int,
             end: int) -> bytes | None:
        """Decrypt the record fragment ``data[start:end]``; ``None`` when it does not authenticate."""
        plen = end - start - self.overhead
        if plen < 0 or plen > MAX_PLAINTEXT:
            return None
        # The explicit nonce is taken from the record as sent; RFC 6655 makes it the sequence number.
        try:
            return self._aead.decrypt(self._iv + data[start : start + 8], data[start + 8 : end],
                                 _AAD.pack(epoch_seq, content_type, version, plen))
        except InvalidTag:
            return None

    def unprotect(self, record: Record) -> bytes | None:
        """The plaintext of a parsed record, or ``None`` when it does not authenticate."""
        frag = record.fragment
        return self.open(record.content_type, record.version, record.epoch_seq, frag, 0, len(frag))
