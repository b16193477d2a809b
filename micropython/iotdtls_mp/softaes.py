"""Pure-Python AES-128 (FIPS-197), encryption only: the fallback of aes.py on ports without ``cryptolib``.

Imported only there, so that a board with ``cryptolib`` holds neither this code nor its tables in RAM."""

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


# SubBytes + ShiftRows: state byte j = 4c + i of the result comes from byte _SR[j] = 4(c + i) + i (mod 16)
_SR = b"\0\5\x0a\x0f\4\x09\x0e\3\x08\x0d\2\7\x0c\1\6\x0b"


class Soft:
    def __init__(self, key):
        global _SBOX, _XT
        if len(key) != 16:
            raise ValueError("AES-128 key")
        if _SBOX is None:
            _SBOX = _sbox()
            _XT = bytearray(256)
            for a in range(256):
                _XT[a] = _xt(a) & 0xFF
        self.rk = _expand(key)
        self.st = bytearray(16)
        self.t = bytearray(16)

    def encrypt(self, block):
        s = _SBOX  # one name at a time: a tuple assignment allocates in MicroPython
        x = _XT
        sr = _SR
        rk = self.rk
        st = self.st
        t = self.t
        for i in range(16):
            st[i] = block[i] ^ rk[i]
        for k in range(16, 176, 16):
            for j in range(16):
                t[j] = s[st[sr[j]]]
            if k < 160:  # MixColumns
                for c in range(0, 16, 4):
                    a0 = t[c]
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
