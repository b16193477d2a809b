"""AES-CCM (RFC 3610) on a single-block encrypt function, as DTLS uses it (RFC 6655: 12-byte nonce, L = 3)."""


def _xor_in(x, data, i, n):
    for j in range(n):
        x[j] ^= data[i + j]


def _mac(enc, nonce, aad, msg, m):
    ln = 15 - len(nonce)
    b = bytearray(16)
    b[0] = (64 if aad else 0) | ((m - 2) // 2) << 3 | (ln - 1)
    b[1:16 - ln] = nonce
    n = len(msg)
    for k in range(ln):
        b[15 - k] = (n >> (8 * k)) & 0xFF
    x = bytearray(enc(b))
    if aad:
        la = len(aad)
        h = la.to_bytes(2, "big") if la < 0xFF00 else b"\xff\xfe" + la.to_bytes(4, "big")
        for d in (h + aad, msg):
            for i in range(0, len(d), 16):
                _xor_in(x, d, i, min(16, len(d) - i))
                x = bytearray(enc(x))
    else:
        for i in range(0, n, 16):
            _xor_in(x, msg, i, min(16, n - i))
            x = bytearray(enc(x))
    return x


def _ctr(enc, nonce, data):
    # XOR data with S_1, S_2, ...; return (data XOR keystream, S_0)
    ln = 15 - len(nonce)
    a = bytearray(16)
    a[0] = ln - 1
    a[1:16 - ln] = nonce
    s0 = enc(a)
    out = bytearray(data)
    n = len(out)
    for i in range(0, n, 16):
        c = i // 16 + 1
        for k in range(ln):
            a[15 - k] = (c >> (8 * k)) & 0xFF
        s = enc(a)
        for j in range(min(16, n - i)):
            out[i + j] ^= s[j]
    return out, s0


def seal(enc, nonce, aad, plaintext, tag_len=8):
    """Return ciphertext || tag."""
    x = _mac(enc, nonce, aad, plaintext, tag_len)
    out, s0 = _ctr(enc, nonce, plaintext)
    for j in range(tag_len):
        out.append(x[j] ^ s0[j])
    return bytes(out)


def open(enc, nonce, aad, data, tag_len=8):
    """Return the plaintext, or None if ``data`` is too short or its tag does not verify."""
    n = len(data) - tag_len
    if n < 0:
        return None
    pt, s0 = _ctr(enc, nonce, data[:n])
    x = _mac(enc, nonce, aad, pt, tag_len)
    d = 0
    for j in range(tag_len):
        d |= x[j] ^ s0[j] ^ data[n + j]
    return None if d else bytes(pt)
