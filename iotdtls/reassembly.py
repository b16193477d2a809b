"""Handshake fragments: parsing, reassembly in any order with bounded memory, and flight packing.

A record may carry several handshake fragments; a message may be split over many records and datagrams.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from .constants import HANDSHAKE_HEADER_LEN, RECORD_HEADER_LEN, ContentType
from .errors import DecodeError, IllegalParameter

_HS = struct.Struct(">B3sH3s3s")


@dataclass(slots=True)
class Fragment:
    msg_type: int
    length: int
    message_seq: int
    offset: int
    body: bytes


def parse_fragments(payload: bytes) -> list[Fragment]:
    """All handshake fragments in one record payload; any inconsistency is a ``decode_error``."""
    out: list[Fragment] = []
    pos = 0
    end = len(payload)
    while pos < end:
        if end - pos < HANDSHAKE_HEADER_LEN:
            raise DecodeError("truncated handshake header")
        msg_type, length_b, seq, off_b, flen_b = _HS.unpack_from(payload, pos)
        length = int.from_bytes(length_b, "big")
        offset = int.from_bytes(off_b, "big")
        flen = int.from_bytes(flen_b, "big")
        pos += HANDSHAKE_HEADER_LEN
        if pos + flen > end or offset + flen > length:
            raise DecodeError("handshake fragment exceeds its record or message")
        out.append(Fragment(msg_type, length, seq, offset, payload[pos : pos + flen]))
        pos += flen
    return out


def message_header(msg_type: int, length: int, seq: int, offset: int = 0, flen: int | None = None) -> bytes:
    return _HS.pack(msg_type, length.to_bytes(3, "big"), seq, offset.to_bytes(3, "big"),
                    (length if flen is None else flen).to_bytes(3, "big"))


class _Partial:
    """A message being reassembled: its bytes and a bitmask of the offsets received (one bit per byte), so
    bookkeeping stays within length/8 bytes however the sender slices the message."""

    __slots__ = ("buf", "epoch", "filled", "have", "length", "msg_type")

    def __init__(self, msg_type: int, length: int, epoch: int) -> None:
        self.msg_type = msg_type
        self.length = length
        self.epoch = epoch
        self.buf = bytearray(length)
        self.have = 0
        self.filled = 0

    def add(self, offset: int, body: bytes) -> None:
        n = len(body)
        if not n:
            return
        self.buf[offset : offset + n] = body
        self.have |= ((1 << n) - 1) << offset
        self.filled = self.have.bit_count()

    def complete(self) -> bool:
        return self.filled == self.length


class _Whole:
    """A message that arrived unfragmented: no copy, no range bookkeeping."""

    __slots__ = ("buf", "epoch", "length", "msg_type")

    def __init__(self, msg_type: int, body: bytes, epoch: int) -> None:
        self.msg_type = msg_type
        self.length = len(body)
        self.epoch = epoch
        self.buf = body

    def complete(self) -> bool:
        return True

    def add(self, offset: int, body: bytes) -> None:
        pass


class Reassembler:
    """Collects fragments for ``next_seq`` and a few messages ahead of it; nothing else is stored."""

    #: The longest flight is a server's ECDHE flight with client authentication: five messages, which a peer may
    #: send in a single record; one more slot tolerates a stray retransmitted fragment.
    def __init__(self, max_message_len: int, max_ahead: int = 6) -> None:
        self.next_seq = 0
        self._max_len = max_message_len
        self._max_ahead = max_ahead
        self._parts: dict[int, _Partial | _Whole] = {}

    def add(self, frag: Fragment, epoch: int) -> None:
        """Store a fragment of a current or future message (callers filter out old ones)."""
        seq = frag.message_seq
        if seq >= self.next_seq + self._max_ahead:
            return  # too far ahead: the peer will retransmit it
        if frag.length > self._max_len:
            raise IllegalParameter(f"handshake message of {frag.length} bytes exceeds the limit")
        part = self._parts.get(seq)
        if part is None:
            if frag.offset == 0 and len(frag.body) == frag.length:
                self._parts[seq] = _Whole(frag.msg_type, frag.body, epoch)
                return
            part = self._parts[seq] = _Partial(frag.msg_type, frag.length, epoch)
        elif part.msg_type != frag.msg_type or part.length != frag.length or part.epoch != epoch:
            raise IllegalParameter("fragments of one message disagree")
        if not part.complete():
            part.add(frag.offset, frag.body)

    def pop(self) -> tuple[int, bytes, int] | None:
        """The next complete message as ``(msg_type, body, epoch)``, in message_seq order."""
        part = self._parts.get(self.next_seq)
        if part is None or not part.complete():
            return None
        del self._parts[self.next_seq]
        self.next_seq += 1
        return part.msg_type, bytes(part.buf), part.epoch

    def clear(self) -> None:
        self._parts.clear()


@dataclass(slots=True)
class OutMessage:
    """One element of a flight: a handshake message (``msg_type`` >= 0) or a ChangeCipherSpec (-1)."""

    epoch: int
    msg_type: int
    message_seq: int = 0
    body: bytes = b""


CCS = -1
MIN_FRAGMENT = 16


def pack_flight(messages: list[OutMessage], mtu: int, overhead: Callable[[int], int],
                write_record: Callable[[int, int, bytes], bytes], coalesce: bool = True) -> list[bytes]:
    """Fragment a flight to the datagram budget ``mtu`` and pack it into as few datagrams as possible.

    ``overhead(epoch)`` is the per-record protection overhead beyond the 13-byte header;
    ``write_record(epoch, content_type, payload)`` assigns a sequence number and returns the record.
    With ``coalesce``, consecutive handshake messages of one epoch share a record.
    """
    if not coalesce:
        # Fast path: the whole flight fits one datagram without fragmenting (every PSK flight at 512 bytes).
        size = 0
        for msg in messages:
            size += RECORD_HEADER_LEN + overhead(msg.epoch) + \
                (1 if msg.msg_type == CCS else HANDSHAKE_HEADER_LEN + len(msg.body))
        if size <= mtu:
            out: list[bytes] = []
            for msg in messages:
                if msg.msg_type == CCS:
                    out.append(write_record(msg.epoch, ContentType.CHANGE_CIPHER_SPEC, b"\x01"))
                else:
                    out.append(write_record(msg.epoch, ContentType.HANDSHAKE,
                                            message_header(msg.msg_type, len(msg.body), msg.message_seq) + msg.body))
            return [b"".join(out)]
    datagrams: list[bytes] = []
    dgram = bytearray()
    pending = bytearray()
    pending_epoch = -1

    def flush_record() -> None:
        nonlocal pending, pending_epoch
        if pending_epoch >= 0:
            dgram.extend(write_record(pending_epoch, ContentType.HANDSHAKE, bytes(pending)))
        pending = bytearray()
        pending_epoch = -1

    def flush_datagram() -> None:
        nonlocal dgram
        flush_record()
        if dgram:
            datagrams.append(bytes(dgram))
        dgram = bytearray()

    for msg in messages:
        rec_cost = RECORD_HEADER_LEN + overhead(msg.epoch)
        if msg.msg_type == CCS:
            flush_record()
            if len(dgram) + rec_cost + 1 > mtu:
                flush_datagram()
            dgram.extend(write_record(msg.epoch, ContentType.CHANGE_CIPHER_SPEC, b"\x01"))
            continue
        body = msg.body
        total = len(body)
        off = 0
        first = True
        while first or off < total:
            if pending_epoch not in (-1, msg.epoch):
                flush_record()
            used = len(dgram) + rec_cost + (len(pending) if pending_epoch >= 0 else 0)
            avail = mtu - used - HANDSHAKE_HEADER_LEN
            want = min(total - off, MIN_FRAGMENT)
            if avail < max(want, 0) or avail < 0:
                if not dgram and pending_epoch < 0:
                    raise ValueError("datagram budget too small for one handshake fragment")
                flush_datagram()
                continue
            chunk = body[off : off + avail]
            pending.extend(message_header(msg.msg_type, total, msg.message_seq, off, len(chunk)))
            pending.extend(chunk)
            pending_epoch = msg.epoch
            off += len(chunk)
            first = False
            if not coalesce:
                flush_record()
    flush_datagram()
    return datagrams
