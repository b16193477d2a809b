"""AES-CCM (RFC 3610) on a single-block encrypt function, as DTLS uses it (RFC 6655: 12-byte nonce, L = 3).

Few allocations (heap): one block buffer updated in place, the output made once. Returns bytearrays."""


def _mac(enc, nonce, aad, msg, m):
    ln = 15 - len(nonce)
    b = bytearray(16)
    b[0] = (64 if aad else 0) | (m - 2) << 2 | (ln - 1)
    b[1:16 - ln] = nonce
    n = len(msg)
    for k in range(ln):
        b[15 - k] = n >> 8 * k & 255
    x = enc(b)
    n = len(aad)
    if n:
        aad = (n.to_bytes(2, "big") if n < 0xFF00 else b"\xff\xfe" + n.to_bytes(4, "big")) + aad
    for d in (aad, msg):
        n = len(d)
        for i in range(0, n, 16):
            for j in range(16):
                b[j] = x[j] ^ d[i + j] if i + j < n else x[j]
            x = enc(b)
    return x


def _ctr(enc, nonce, data, n, t):
    # data[:n] XOR S_1, S_2, ... in a new bytearray of n + t bytes; and S_0
    ln = 15 - len(nonce)
    a = bytearray(16)
    a[0] = ln - 1
    a[1:16 - ln] = nonce
    s0 = enc(a)
    out = bytearray(n + t)
    for i in range(0, n, 16):
        c = i // 16 + 1
        for k in range(ln):
            a[15 - k] = c >> 8 * k & 255
        s = enc(a)
        for j in range(min(16, n - i)):
            out[i + j] = data[i + j] ^ s[j]
    return out, s0


def seal(enc, nonce, aad, pt, tag_len=8):
    """Return ciphertext || tag."""
    x = _mac(enc, nonce, aad, pt, tag_len)
    n = len(pt)
    out, s0 = _ctr(enc, nonce, pt, n, tag_len)
    for j in range(tag_len):
        out[n + j] = x[j] ^ s0[j]
    return out


def open(enc, nonce, aad, data, tag_len=8):
    """Return the pt, or None if ``data`` is too short or its tag does not verify."""
    n = len(data) - tag_len
    if n < 0:
        return None
    pt, s0 = _ctr(enc, nonce, data, n, 0)
    x = _mac(enc, nonce, aad, pt, tag_len)
    d = 0
    for j in range(tag_len):
        d |= x[j] ^ s0[j] ^ data[n + j]
    return None if d else pt
