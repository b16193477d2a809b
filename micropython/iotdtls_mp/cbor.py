# Minimal CBOR (RFC 8949) for telemetry: dict, list/tuple, int (64-bit), float, str, bytes, bool, None.
# MicroPython >= 1.22 compatible. Indefinite lengths, tags and other simple values are rejected.
import struct

MAX_DEPTH = 16


def _head(out, major, n):
    m = major << 5
    if n < 24:
        out.append(m | n)
        return
    for k in range(4):  # 1, 2, 4 or 8 bytes (additional information 24 to 27)
        if n >> (8 << k) == 0:
            out.append(m | 24 + k)
            out.extend(n.to_bytes(1 << k, "big"))
            return
    raise ValueError("int too large")


def _enc(out, x, depth):
    if depth > MAX_DEPTH:
        raise ValueError("too deep")
    if x is None:
        out.append(0xF6)
    elif x is True:
        out.append(0xF5)
    elif x is False:
        out.append(0xF4)
    elif isinstance(x, int):
        if x >= 0:
            _head(out, 0, x)
        else:
            _head(out, 1, -1 - x)
    elif isinstance(x, float):
        s = b""
        if -3.4e38 < x < 3.4e38 or x * 0 != x * 0:
            s = struct.pack(">f", x)
        if s and struct.unpack(">f", s)[0] == x:
            out.append(0xFA)
            out.extend(s)
        else:
            out.append(0xFB)
            out.extend(struct.pack(">d", x))
    elif isinstance(x, str):
        b = x.encode()
        _head(out, 3, len(b))
        out.extend(b)
    elif isinstance(x, (bytes, bytearray)):
        _head(out, 2, len(x))
        out.extend(x)
    elif isinstance(x, (list, tuple)):
        _head(out, 4, len(x))
        for v in x:
            _enc(out, v, depth + 1)
    elif isinstance(x, dict):
        _head(out, 5, len(x))
        for k in x:
            _enc(out, k, depth + 1)
            _enc(out, x[k], depth + 1)
    else:
        raise ValueError("unsupported type")


def dumps(obj) -> bytes:
    out = bytearray()
    _enc(out, obj, 0)
    return bytes(out)


def _half(h):
    e = (h >> 10) & 0x1F
    f = h & 0x3FF
    if e == 0:
        v = f * 2.0 ** -24
    elif e == 31:
        v = float("nan") if f else float("inf")
    else:
        v = (1024 + f) * 2.0 ** (e - 25)
    return -v if h & 0x8000 else v


class _Dec:
    def __init__(self, data):
        self.d = data
        self.p = 0

    def skip(self, n):
        p = self.p
        if p + n > len(self.d):
            raise ValueError("truncated")
        self.p = p + n
        return p

    def take(self, n):
        p = self.skip(n)
        return self.d[p : p + n]

    def num(self, fmt, n):
        return struct.unpack_from(fmt, self.d, self.skip(n))[0]

    def arg(self, ai):
        if ai < 24:
            return ai
        if ai > 27:
            raise ValueError("bad length")
        n = 1 << ai - 24
        return int.from_bytes(self.take(n), "big")

    def item(self, depth):
        if depth > MAX_DEPTH:
            raise ValueError("too deep")
        ib = self.d[self.skip(1)]
        mt = ib >> 5
        ai = ib & 31
        if mt == 7:
            if ai == 20:
                return False
            if ai == 21:
                return True
            if ai == 22:
                return None
            if ai == 25:
                return _half(self.num(">H", 2))
            if ai == 26:
                return self.num(">f", 4)
            if ai == 27:
                return self.num(">d", 8)
            raise ValueError("unsupported simple")
        n = self.arg(ai)
        if mt == 0:
            return n
        if mt == 1:
            return -1 - n
        if mt == 2:
            return self.take(n)
        if mt == 3:
            try:
                return str(self.take(n), "utf-8")
            except UnicodeError:
                raise ValueError("bad utf-8") from None
        if mt == 4:
            if n > len(self.d) - self.p:
                raise ValueError("truncated")
            a = []
            for _ in range(n):
                a.append(self.item(depth + 1))
            return a
        if mt == 5:
            if 2 * n > len(self.d) - self.p:
                raise ValueError("truncated")
            m = {}
            for _ in range(n):
                k = self.item(depth + 1)
                if isinstance(k, (list, dict)):
                    raise ValueError("bad key")
                m[k] = self.item(depth + 1)
            return m
        raise ValueError("tags unsupported")


def loads(data):
    d = _Dec(data if isinstance(data, bytes) else bytes(data))
    obj = d.item(0)
    if d.p != len(d.d):
        raise ValueError("trailing bytes")
    return obj
