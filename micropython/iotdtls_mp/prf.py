"""HMAC-SHA256 and the TLS 1.2 PRF (RFC 5246 section 5), extended master secret (RFC 7627), key block, Finished.

Few allocations (heap): the padded keys are made once per PRF, its label and seed hashed in parts, not joined."""

import hashlib


def _pads(key):
    # RFC 2104: the key XOR ipad, the key XOR opad
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    i = bytearray(64)
    i[:len(key)] = key
    o = bytearray(64)
    for n in range(64):
        o[n] = i[n] ^ 0x5C
        i[n] ^= 0x36
    return i, o


def _mac(k, a, b=b"", c=b""):
    h = hashlib.sha256(k[0])
    h.update(a)
    h.update(b)
    h.update(c)
    a = hashlib.sha256(k[1])
    a.update(h.digest())
    return a.digest()


def hmac_sha256(key, data):
    return _mac(_pads(key), data)


def prf(secret, label, seed, n):
    """P_SHA256(secret, label + seed), truncated to n bytes."""
    k = _pads(secret)
    out = bytearray()
    a = _mac(k, label, seed)  # A(1)
    while True:
        out += _mac(k, a, label, seed)
        if len(out) >= n:
            return bytes(out[:n])
        a = _mac(k, a)


def psk_premaster(psk):
    """RFC 4279 section 2: uint16 N, N zero bytes, uint16 N, the PSK."""
    n = len(psk).to_bytes(2, "big")
    return n + bytes(len(psk)) + n + psk


def ems(pm, sh):
    """The extended master secret (RFC 7627 section 4)."""
    return prf(pm, b"extended master secret", sh, 48)


def key_block(master, cr, sr, n):
    return prf(master, b"key expansion", sr + cr, n)


def finished(master, client, th):
    """The 12-byte verify_data of a Finished message."""
    return prf(master, b"client finished" if client else b"server finished", th, 12)
