# Minimal CoAP (RFC 7252) message codec and a sans-IO confirmable exchange. MicroPython >= 1.22.
# Times are seconds (int or float) supplied by the caller; randomness comes from an injected rand(n) -> bytes.
import struct

CON = 0
NON = 1
ACK = 2
RST = 3

EMPTY = 0
GET = 1
POST = 2
PUT = 3
VALID = 67
CHANGED = 68
CONTENT = 69

ETAG = 4
URI_PATH = 11
CONTENT_FORMAT = 12
URI_QUERY = 15

CF_CBOR = 60

ACK_TIMEOUT = 2
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4


def code_str(code: int) -> str:
    return f"{code >> 5}.{code & 31:02d}"


def uint_opt(v: int) -> bytes:
    n = 0
    t = v
    while t:
        n += 1
        t >>= 8
    return v.to_bytes(n, "big") if n else b""


def opt_uint(b) -> int:
    return int.from_bytes(b, "big") if b else 0


def uri_path(path: str) -> list:
    return [(URI_PATH, s.encode()) for s in path.split("/") if s]


def uri_query(query: str) -> list:
    """Uri-Query options (repeatable, in order) from "a=1&b=2"."""
    if query and "&" not in query:  # one option (the idempotency key): no split
        return [(URI_QUERY, query.encode())]
    return [(URI_QUERY, s.encode()) for s in query.split("&") if s]


def content_format(cf: int) -> list:
    return [(CONTENT_FORMAT, uint_opt(cf))]


def _nibble(n):
    return n if n < 13 else 13 if n < 269 else 14


def _ext(out, n):
    """Append the extended form of an option delta or length n (RFC 7252 3.1), if it needs one."""
    if n < 13:
        return
    if n < 269:
        out.append(n - 13)
    elif n < 65805:
        n -= 269
        out.append(n >> 8)
        out.append(n & 255)
    else:
        raise ValueError("option too large")


def _ordered(options):
    """options by number; out of order: sorted, repeated options kept in their order (MicroPython's sort is not
    stable: sorting "a/b" by number alone can send "b/a")."""
    last = 0
    for num, _ in options:
        if num < last:
            return [options[i] for i in sorted(range(len(options)), key=lambda i: (options[i][0], i))]
        last = num
    return options


def encode(mtype: int, code: int, mid: int, token: bytes = b"", options=(), payload: bytes = b"") -> bytes:
    if len(token) > 8:
        raise ValueError("token too long")
    out = bytearray(struct.pack(">BBH", 0x40 | (mtype << 4) | len(token), code, mid & 0xFFFF))
    out.extend(token)
    last = 0
    for num, val in _ordered(options):  # no allocation per option
        d = num - last
        n = len(val)
        out.append(_nibble(d) << 4 | _nibble(n))
        _ext(out, d)
        _ext(out, n)
        out.extend(val)
        last = num
    if payload:
        out.append(0xFF)
        out.extend(payload)
    return bytes(out)


class Message:
    def __init__(self, mtype, code, mid, token=b"", options=None, payload=b""):
        self.type = mtype
        self.code = code
        self.mid = mid
        self.token = token
        self.options = options if options is not None else []
        self.payload = payload

    def opt(self, num):
        return [v for n, v in self.options if n == num]

    def path(self) -> str:
        return "/".join(str(v, "utf-8") for v in self.opt(URI_PATH))


def decode(data) -> Message:
    n = len(data)
    b0 = data[0] if n > 3 else 0
    p = 4 + (b0 & 15)
    if b0 >> 6 != 1 or b0 & 15 > 8 or p > n or (data[1] == 0 and n != 4):
        raise ValueError("malformed")
    token = bytes(data[4:p])
    opts = []
    num = 0
    payload = b""
    while p < n:
        b = data[p]
        p += 1
        if b == 0xFF:
            if p == n:
                raise ValueError("malformed")
            payload = bytes(data[p:])
            break
        v = [b >> 4, b & 15]
        for i in (0, 1):
            k = v[i] - 12  # 13: one more byte, 14: two, 15: reserved
            if k > 0:
                if k > 2 or p + k > n:
                    raise ValueError("malformed")
                v[i] = int.from_bytes(data[p:p + k], "big") + (13 if k == 1 else 269)
                p += k
        num += v[0]
        if p + v[1] > n:
            raise ValueError("malformed")
        opts.append((num, bytes(data[p:p + v[1]])))
        p += v[1]
    return Message(b0 >> 4 & 3, data[1], data[2] << 8 | data[3], token, opts, payload)


class Exchange:
    """One request: CON (retransmitted per RFC 7252 4.2) or NON, waiting for its response.

    state: "wait" (no ACK yet), "sep" (empty ACK seen, awaiting separate response), "done", "failed".
    On "done", .response is the response Message; on "failed", .error is "timeout" or "reset".
    """

    def __init__(self, rand, code, options=(), payload=b"", mid=None, token=None, confirmable=True,
                 token_len=4, separate_timeout=93, non_timeout=93, ack_timeout=ACK_TIMEOUT):
        self.mid = (mid if mid is not None else opt_uint(rand(2))) & 0xFFFF
        self.token = token if token is not None else bytes(rand(token_len))
        self.con = confirmable
        self.msg = encode(CON if confirmable else NON, code, self.mid, self.token, options, payload)
        r = opt_uint(rand(2)) / 65535
        self.timeout = ack_timeout * (1 + (ACK_RANDOM_FACTOR - 1) * r)
        self._st = separate_timeout
        self.non_timeout = non_timeout
        self.retries = 0
        self.state = "new"
        self.deadline = None
        self.response = None
        self.error = None

    def start(self, now) -> bytes:
        self.state = "wait"
        self.deadline = now + (self.timeout if self.con else self.non_timeout)
        return self.msg

    def timeout_at(self):
        return None if self.state in ("done", "failed") else self.deadline

    def on_timer(self, now):
        if self.deadline is None or self.state in ("done", "failed") or now < self.deadline:
            return None
        if self.state == "wait" and self.con and self.retries < MAX_RETRANSMIT:
            self.retries += 1
            self.timeout *= 2
            self.deadline += self.timeout
            return self.msg
        self.state = "failed"
        self.error = "timeout"
        return None

    def _fin(self, m):
        self.state = "done"
        self.response = m

    def on_datagram(self, data, now):
        try:
            m = decode(data)
        except ValueError:
            return None
        t = m.type
        if t in (ACK, RST):
            if m.mid != self.mid or self.state != "wait" or not self.con:
                return None
            if t == RST:
                self.state = "failed"
                self.error = "reset"
            elif m.code == EMPTY:
                self.state = "sep"
                self.deadline = now + self._st
            elif m.token == self.token:
                self._fin(m)
            return None
        if m.code < 64 or m.token != self.token:
            return None
        if self.state in ("wait", "sep"):
            self._fin(m)
        elif not (self.response is not None and self.response.mid == m.mid and self.response.type == t):
            return None
        if t == CON:
            return encode(ACK, EMPTY, m.mid)
        return None
