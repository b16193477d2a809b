"""Single-block AES encryption for CCM: firmware cryptolib (ECB) or a pure-Python AES-128 fallback.

``ops`` counts block encryptions, for footprint reports.
"""

try:
    import cryptolib
except ImportError:
    cryptolib = None

ops = 0
_SBOX = None


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
    # FIPS-197 5.2, Nk = 4, Nr = 10: 44 words as 176 bytes
    s = _SBOX
    w = bytearray(key)
    rc = 1
    for i in range(4, 44):
        t = w[-4:]
        if i % 4 == 0:
            t = bytearray((s[t[1]] ^ rc, s[t[2]], s[t[3]], s[t[0]]))
            rc = _xt(rc)
        p = len(w) - 16
        w.extend(bytes(t[j] ^ w[p + j] for j in range(4)))
    return bytes(w)


class _Soft:
    def __init__(self, key):
        global _SBOX
        if len(key) != 16:
            raise ValueError("AES-128 key")
        if _SBOX is None:
            _SBOX = _sbox()
        self.rk = _expand(key)

    def encrypt(self, block):
        s = _SBOX
        rk = self.rk
        st = bytearray(16)
        for i in range(16):
            st[i] = block[i] ^ rk[i]
        for r in range(1, 11):
            # SubBytes + ShiftRows: byte (row i, column c) comes from column c + i
            t = bytearray(16)
            for c in range(4):
                for i in range(4):
                    t[4 * c + i] = s[st[(4 * (c + i) + i) & 15]]
            if r < 10:
                # MixColumns
                for c in range(0, 16, 4):
                    a0, a1, a2, a3 = t[c], t[c + 1], t[c + 2], t[c + 3]
                    e = a0 ^ a1 ^ a2 ^ a3
                    t[c] = a0 ^ e ^ _xt(a0 ^ a1)
                    t[c + 1] = a1 ^ e ^ _xt(a1 ^ a2)
                    t[c + 2] = a2 ^ e ^ _xt(a2 ^ a3)
                    t[c + 3] = a3 ^ e ^ _xt(a3 ^ a0)
            k = 16 * r
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
