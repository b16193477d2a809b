"""DTLS 1.2 record layer (RFC 6347 section 4.1): headers, several records per datagram, AEAD protection.

The AEAD follows RFC 6655 / RFC 5246 section 6.2.3.3: nonce = 4-byte fixed IV || 8-byte explicit nonce, where
the explicit nonce is the record's epoch and sequence number; additional data = epoch || sequence number ||
type || version || plaintext length (13 bytes).

Connection ID (RFC 9146): once a CID is negotiated for a direction, protected records travel as ``tls12_cid``
(content type 25) with the CID after the sequence number. Their fragment encrypts a DTLSInnerPlaintext: the content,
its real content type and optional zero padding. The additional data is RFC 9146 section 5's: eight 0xff bytes,
25, the CID length, 25, version, epoch, sequence number, the CID and the length of the inner plaintext.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from .constants import DTLS_1_0, DTLS_1_2, MAX_CID_LEN, MAX_PLAINTEXT, TLS12_CID

_HDR = struct.Struct(">BHQH")  # type, version, epoch<<48 | seq, length
_AAD = struct.Struct(">QBHH")
_NONCE = struct.Struct(">IQ")  # 4-byte fixed IV, 8-byte explicit nonce
_HDR_NONCE = struct.Struct(">BHQHQ")  # header followed by the explicit nonce (= epoch and sequence number)
SEQ_MASK = (1 << 48) - 1
MAX_RECORD = MAX_PLAINTEXT + 2048  # RFC 5246 section 6.2.3: the largest protected fragment
MAX_SEQ = SEQ_MASK
_RRC = 27  # RFC 9853 return_routability_check: protected, in epochs >= 1 only
_CID_AAD_HEAD = b"\xff" * 8 + bytes((TLS12_CID,))
_CID_TAIL = struct.Struct(">BHQ")  # tls12_cid, version, epoch<<48 | seq (the AAD after the CID length)


class Record:
    """One parsed record header and its (still protected) fragment."""

    __slots__ = ("cid", "content_type", "epoch", "epoch_seq", "fragment", "seq", "version")

    def __init__(self, content_type: int, version: int, epoch_seq: int, fragment: bytes, cid: bytes = b"") -> None:
        self.content_type = content_type
        self.version = version
        self.epoch_seq = epoch_seq
        self.epoch = epoch_seq >> 48
        self.seq = epoch_seq & SEQ_MASK
        self.fragment = fragment
        #: The connection ID of a ``tls12_cid`` record (empty for the other content types).
        self.cid = cid


def split_records(datagram: bytes, cid_len: int = -1) -> Iterator[Record]:
    """Yield the records of a datagram. Parsing stops at the first malformed header (RFC 6347 4.1.2.7:
    invalid records are discarded; a broken length leaves no reliable way to find the next one).

    ``cid_len`` is the length of the connection ID this endpoint receives (RFC 9146): the CID's length is not on
    the wire, so ``tls12_cid`` records are parsed only when it is at least 1."""
    pos = 0
    end = len(datagram)
    unpack = _HDR.unpack_from
    while end - pos >= 13:
        ctype, version, epoch_seq, length = unpack(datagram, pos)
        if version not in (DTLS_1_2, DTLS_1_0):
            return
        if ctype == TLS12_CID and cid_len > 0:
            start = pos + 11 + cid_len
            if end - start < 2:
                return
            cid = datagram[pos + 11 : start]
            length = int.from_bytes(datagram[start : start + 2], "big")
            pos = start + 2
            if pos + length > end or length > MAX_RECORD:
                return
            yield Record(ctype, version, epoch_seq, datagram[pos : pos + length], cid)
            pos += length
            continue
        pos += 13
        if pos + length > end or length > MAX_RECORD or not (20 <= ctype <= 23 or ctype == _RRC):
            return
        yield Record(ctype, version, epoch_seq, datagram[pos : pos + length])
        pos += length


def cid_of(datagram: bytes, cid_len: int) -> bytes | None:
    """The connection ID of a datagram whose first record is a ``tls12_cid`` record, else ``None``."""
    if len(datagram) < 13 + cid_len or datagram[0] != TLS12_CID or not 0 < cid_len <= MAX_CID_LEN:
        return None
    return datagram[11 : 11 + cid_len]


def inner_plaintext(payload: bytes, content_type: int, pad_to: int, limit: int) -> bytes:
    """RFC 9146 DTLSInnerPlaintext: the content, its real type, then zeros up to a multiple of ``pad_to`` bytes
    (0 or 1: no padding), never beyond ``limit`` bytes."""
    size = len(payload) + 1
    if pad_to > 1:
        size = min(-(-size // pad_to) * pad_to, max(limit, size))
    return payload + bytes((content_type,)) + bytes(size - len(payload) - 1)


def split_inner_plaintext(inner: bytes) -> tuple[int, bytes] | None:
    """Real content type and content of a DTLSInnerPlaintext; ``None`` when it is all zeros (no type)."""
    end = len(inner.rstrip(b"\0"))
    if end == 0:
        return None
    return inner[end - 1], inner[: end - 1]


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

    def protect_cid(self, content_type: int, epoch_seq: int, payload: bytes, cid: bytes, pad_to: int = 0,
                    limit: int = MAX_PLAINTEXT) -> bytes:
        """A ``tls12_cid`` record (RFC 9146) carrying ``payload`` of ``content_type`` to a peer whose CID is ``cid``."""
        inner = inner_plaintext(payload, content_type, pad_to, limit)
        ilen = len(inner)
        aad = _CID_AAD_HEAD + bytes((len(cid),)) + _CID_TAIL.pack(TLS12_CID, DTLS_1_2, epoch_seq) + cid + \
            ilen.to_bytes(2, "big")
        sealed = self._aead.encrypt(_NONCE.pack(self._iv_int, epoch_seq), inner, aad)
        return _CID_TAIL.pack(TLS12_CID, DTLS_1_2, epoch_seq) + cid + (ilen + self.overhead).to_bytes(2, "big") + \
            epoch_seq.to_bytes(8, "big") + sealed

    def open_cid(self, record: Record) -> tuple[int, bytes] | None:
        """Real content type and content of a ``tls12_cid`` record; ``None`` when it does not authenticate. An
        authentic inner plaintext with no content type (all zeros) gives type 0, which the caller refuses with
        unexpected_message (RFC 9146 section 4, RFC 8446 section 5.4)."""
        frag = record.fragment
        ilen = len(frag) - self.overhead
        if ilen < 1 or ilen > MAX_PLAINTEXT + 1:
            return None
        cid = record.cid
        aad = _CID_AAD_HEAD + bytes((len(cid),)) + _CID_TAIL.pack(TLS12_CID, record.version, record.epoch_seq) + \
            cid + ilen.to_bytes(2, "big")
        try:
            inner = self._aead.decrypt(self._iv + frag[:8], frag[8:], aad)
        except InvalidTag:
            return None
        return split_inner_plaintext(inner) or (0, b"")

    def unprotect(self, record: Record) -> bytes | None:
        """The plaintext of a parsed record, or ``None`` when it does not authenticate."""
        frag = record.fragment
        return self.open(record.content_type, record.version, record.epoch_seq, frag, 0, len(frag))
