"""Single-block AES encryption for CCM: firmware cryptolib (ECB) or a pure-Python AES-128 fallback.

``ops`` counts block encryptions, for footprint reports.
"""

try:
    import cryptolib
except ImportError:
    cryptolib = None

ops = 0
_SBOX = None
_XT = None


def _xt(a):
    # multiply by x in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1
    a <<= 1
    return a ^ 0x11B if a & 0x100 else a


def _sbox():
    # FIPS-197 5.1.1: multiplicative inverse (via powers of the generator 3), then the affine map
    exp = bytearray(256)
    log = bytearray(256)
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x ^= _xt(x)
    s = bytearray(256)
    for a in range(256):
        b = exp[(255 - log[a]) % 255] if a else 0
        r = b
        for _ in range(4):
            b = ((b << 1) | (b >> 7)) & 0xFF
            r ^= b
        s[a] = r ^ 0x63
    return bytes(s)


def _expand(key):
    # FIPS-197 5.2, Nk = 4, Nr = 10: 44 words as 176 bytes, built in place (no garbage)
    s = _SBOX
    w = bytearray(176)
    w[:16] = key
    rc = 1
    for i in range(16, 176, 4):
        a = w[i - 4]
        b = w[i - 3]
        c = w[i - 2]
        d = w[i - 1]
        if i % 16 == 0:
            e = a
            a = s[b] ^ rc
            b = s[c]
            c = s[d]
            d = s[e]
            rc = _xt(rc)
        w[i] = a ^ w[i - 16]
        w[i + 1] = b ^ w[i - 15]
        w[i + 2] = c ^ w[i - 14]
        w[i + 3] = d ^ w[i - 13]
    return bytes(w)


# SubBytes + ShiftRows: state byte j of the result comes from byte _SR[j] (column c + row i of the input)
_SR = bytes((4 * (c + i) + i) & 15 for c in range(4) for i in range(4))


class _Soft:
    def __init__(self, key):
        global _SBOX, _XT
        if len(key) != 16:
            raise ValueError("AES-128 key")
        if _SBOX is None:
            _SBOX = _sbox()
            _XT = bytes(_xt(a) & 0xFF for a in range(256))
        self.rk = _expand(key)
        self.st = bytearray(16)
        self.t = bytearray(16)

    def encrypt(self, block):
        s, x, sr, rk, st, t = _SBOX, _XT, _SR, self.rk, self.st, self.t
        for i in range(16):
            st[i] = block[i] ^ rk[i]
        for k in range(16, 176, 16):
            for j in range(16):
                t[j] = s[st[sr[j]]]
            if k < 160:  # MixColumns
                for c in range(0, 16, 4):
                    a0 = t[c]  # one name at a time: a 4-tuple assignment allocates in MicroPython
                    a1 = t[c + 1]
                    a2 = t[c + 2]
                    a3 = t[c + 3]
                    e = a0 ^ a1 ^ a2 ^ a3
                    t[c] = a0 ^ e ^ x[a0 ^ a1]
                    t[c + 1] = a1 ^ e ^ x[a1 ^ a2]
                    t[c + 2] = a2 ^ e ^ x[a2 ^ a3]
                    t[c + 3] = a3 ^ e ^ x[a3 ^ a0]
            for i in range(16):
                st[i] = t[i] ^ rk[k + i]
        return bytes(st)


def new_ecb(key, soft=False):
    """Return a function encrypting one 16-byte block under ``key``."""
    c = cryptolib.aes(bytes(key), 1) if cryptolib is not None and not soft else _Soft(key)
    e = c.encrypt

    def enc(block):
        global ops
        ops += 1
        return e(block)

    return enc
