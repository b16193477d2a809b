"""Connection ID (RFC 9146) records for the state-table tests: what a peer sends a connection in epoch 1 (a
``tls12_cid`` record carrying the connection's CID once it asked for one, a classic record otherwise), forged
``tls12_cid`` records, and the records a connection sent, opened whatever their format."""

from __future__ import annotations

import struct

from iotdtls import DTLSConnection
from iotdtls.constants import DTLS_1_2, ContentType
from iotdtls.record import CipherState, split_records

TLS12_CID = int(ContentType.TLS12_CID)
#: The CID put in tls12_cid records sent to a connection that has none (they must never parse).
STRANGER_CID = b"\x5a\x5a\x5a\x5a"


def peer_cipher(conn: DTLSConnection) -> CipherState:
    """The cipher state of the records ``conn`` reads in epoch 1, i.e. its peer's write keys."""
    cipher = conn._read_cipher or conn._next_read_cipher
    assert cipher is not None
    return cipher


def other_cid(cid: bytes) -> bytes:
    """A CID of the same length that differs in every byte (the connection's own when it has none)."""
    return bytes(b ^ 0xA5 for b in cid) if cid else STRANGER_CID


def header_len(cid: bytes) -> int:
    """Bytes before the fragment: 13 for a classic record, 13 + the CID's length for a tls12_cid record."""
    return 13 + len(cid)


def seal(conn: DTLSConnection, content_type: int, epoch_seq: int, payload: bytes, *, cid: bytes | None = None,
         classic: bool = False) -> bytes:
    """A record protected with the keys ``conn`` reads, as its peer sends it: ``tls12_cid`` with ``conn``'s CID
    when it uses one (``cid`` overrides the CID, ``classic`` forces the classic format)."""
    cipher = peer_cipher(conn)
    own = conn._cid if cid is None else cid
    if own and not classic:
        return cipher.protect_cid(content_type, epoch_seq, payload, own)
    return cipher.protect(content_type, epoch_seq, payload)


def seal_without_type(conn: DTLSConnection, epoch_seq: int, length: int, cid: bytes) -> bytes:
    """A tls12_cid record whose DTLSInnerPlaintext is ``length`` zero bytes, so it has no content type, protected
    with the keys ``conn`` reads. ``protect_cid`` always appends a type, so the record is built here, with the
    additional data of RFC 9146 section 5: eight 0xff bytes, tls12_cid, the CID length, tls12_cid, the version,
    epoch and sequence number, the CID and the length of the inner plaintext."""
    cipher = peer_cipher(conn)
    inner = bytes(max(length, 1))
    head = struct.pack(">BHQ", TLS12_CID, DTLS_1_2, epoch_seq)
    aad = b"\xff" * 8 + bytes((TLS12_CID, len(cid))) + head + cid + len(inner).to_bytes(2, "big")
    nonce = cipher._iv + epoch_seq.to_bytes(8, "big")  # RFC 6655: fixed IV, then the explicit nonce
    sealed = cipher._aead.encrypt(nonce, inner, aad)
    return head + cid + (len(inner) + cipher.overhead).to_bytes(2, "big") + epoch_seq.to_bytes(8, "big") + sealed


def plain_cid_record(cid: bytes, epoch_seq: int, fragment: bytes) -> bytes:
    """A tls12_cid record header with an unprotected fragment (what no peer may send in epoch 0)."""
    return bytes((TLS12_CID,)) + DTLS_1_2.to_bytes(2, "big") + epoch_seq.to_bytes(8, "big") + cid + \
        len(fragment).to_bytes(2, "big") + fragment


def records_sent(conn: DTLSConnection, datagrams: list[bytes]) -> list[tuple[int, int, bytes | None]]:
    """``(real content type, epoch, payload)`` of every record ``conn`` sent; a protected record is opened with
    its write keys (``None`` as payload when it does not open)."""
    out: list[tuple[int, int, bytes | None]] = []
    cipher = conn._write_cipher
    for d in datagrams:
        for rec in split_records(d, len(conn._peer_cid) or -1):
            if rec.epoch == 0:
                out.append((rec.content_type, 0, rec.fragment))
            elif rec.content_type == TLS12_CID:
                inner = cipher.open_cid(rec) if cipher is not None else None
                out.append((inner[0], rec.epoch, inner[1]) if inner is not None else (TLS12_CID, rec.epoch, None))
            else:
                out.append((rec.content_type, rec.epoch, cipher.unprotect(rec) if cipher is not None else None))
    return out


def raw_records(datagram: bytes, cid_len: int = 0) -> list[bytes]:
    """The records of a datagram as the exact byte slices they occupy, tls12_cid records with a CID of
    ``cid_len`` bytes included."""
    out = []
    pos = 0
    while len(datagram) - pos >= 13:
        hdr = 13 + cid_len if datagram[pos] == TLS12_CID else 13
        if len(datagram) - pos < hdr:
            break
        end = pos + hdr + int.from_bytes(datagram[pos + hdr - 2 : pos + hdr], "big")
        if end > len(datagram):
            break
        out.append(datagram[pos:end])
        pos = end
    return out
