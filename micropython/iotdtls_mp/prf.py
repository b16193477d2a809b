"""HMAC-SHA256 and the TLS 1.2 PRF (RFC 5246 section 5), extended master secret (RFC 7627), key block, Finished."""

import hashlib


def hmac_sha256(key, data):
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    k = bytearray(64)
    k[:len(key)] = key
    for i in range(64):
        k[i] ^= 0x36  # ipad
    h = hashlib.sha256(k)
    h.update(data)
    d = h.digest()
    for i in range(64):
        k[i] ^= 0x6A  # 0x36 ^ 0x5C: ipad -> opad
    h = hashlib.sha256(k)
    h.update(d)
    return h.digest()


def prf(secret, label, seed, n):
    """P_SHA256(secret, label + seed), truncated to n bytes."""
    seed = label + seed
    out = b""
    a = seed
    while len(out) < n:
        a = hmac_sha256(secret, a)
        out += hmac_sha256(secret, a + seed)
    return out[:n]


def psk_premaster(psk):
    """RFC 4279 section 2: uint16 N, N zero bytes, uint16 N, the PSK."""
    n = len(psk).to_bytes(2, "big")
    return n + bytes(len(psk)) + n + psk


def ems(premaster, session_hash):
    """The extended master secret (RFC 7627 section 4)."""
    return prf(premaster, b"extended master secret", session_hash, 48)


def key_block(master, client_random, server_random, n):
    return prf(master, b"key expansion", server_random + client_random, n)


def finished(master, is_client, transcript_hash):
    """The 12-byte verify_data of a Finished message."""
    label = b"client finished" if is_client else b"server finished"
    return prf(master, label, transcript_hash, 12)
