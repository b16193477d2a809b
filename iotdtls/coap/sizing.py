"""Fitting CoAP messages into one DTLS record."""

from __future__ import annotations

#: Bytes a CoAP message needs besides its payload, generously: 4-byte header, 8-byte token, options
#: (Uri-Path, Content-Format, Block1/Block2, Size1/2, Observe, ETag) and the payload marker.
COAP_OVERHEAD = 64


def block_size_exp(max_record_payload: int) -> int:
    """The largest RFC 7959 block size exponent (SZX 0..6: 16..1024 bytes) whose blocks fit one record."""
    szx = 6
    while szx > 0 and (1 << (szx + 4)) + COAP_OVERHEAD > max_record_payload:
        szx -= 1
    return szx


#: Record header (13) plus the largest AEAD expansion of the profile (8-byte nonce + 16-byte CCM tag).
RECORD_OVERHEAD = 13 + 24


def block_size_exp_for_mtu(mtu: int) -> int:
    return block_size_exp(mtu - RECORD_OVERHEAD)
