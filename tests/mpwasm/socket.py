"""`socket` for MicroPython under tests/mpwasm/run.mjs: blocking UDP (IPv4) sockets over Node's dgram.

MicroPython code (not CPython). Every call is a JSON request to the JS module `_mpwasm_net`, which blocks
until the Node main thread answers (see run.mjs). Addresses are (ip, port) tuples, as on the lwIP ports.
Timeouts raise OSError(110) (ETIMEDOUT, as on the lwIP ports; the unix port's recv() raises EAGAIN, 11),
an empty non-blocking socket OSError(11) (EAGAIN).
"""

import json
from binascii import hexlify, unhexlify

import _mpwasm_net

AF_INET = 2
SOCK_STREAM = 1
SOCK_DGRAM = 2
IPPROTO_UDP = 17
SOL_SOCKET = 1
SO_REUSEADDR = 2

_EBADF = 9
_EOPNOTSUPP = 95


def _call(req):
    r = json.loads(_mpwasm_net.call(json.dumps(req)))
    if "err" in r:
        raise OSError(r["err"])
    return r


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    ip = _call({"op": "resolve", "host": host})["ip"]
    return [(AF_INET, SOCK_DGRAM, 0, "", (ip, port))]


class socket:
    def __init__(self, af=AF_INET, type=SOCK_DGRAM, proto=0):
        if af != AF_INET or type != SOCK_DGRAM:
            raise OSError(_EOPNOTSUPP)
        self._id = _call({"op": "socket"})["id"]
        self._timeout = -1  # milliseconds; -1 blocks forever, 0 is non-blocking

    def _op(self, op, **kw):
        if self._id is None:
            raise OSError(_EBADF)
        kw["op"] = op
        kw["id"] = self._id
        return _call(kw)

    def settimeout(self, seconds):
        if seconds is None:
            self._timeout = -1
        elif seconds <= 0:
            self._timeout = 0
        else:
            self._timeout = max(1, int(seconds * 1000 + 0.5))

    def setblocking(self, flag):
        self._timeout = -1 if flag else 0

    def setsockopt(self, level, opt, val):
        self._op("setsockopt", level=level, opt=opt, val=val)

    def bind(self, addr):
        self._op("bind", host=addr[0] or "0.0.0.0", port=addr[1])

    def connect(self, addr):
        self._op("connect", host=addr[0], port=addr[1])

    def getsockname(self):
        r = self._op("getsockname")
        return (r["host"], r["port"])

    def send(self, data):
        return self._op("send", data=hexlify(data).decode())["n"]

    def sendto(self, data, addr):
        return self._op("send", data=hexlify(data).decode(), host=addr[0], port=addr[1])["n"]

    def recvfrom(self, n):
        r = self._op("recv", n=n, timeout=self._timeout)
        return unhexlify(r["data"]), (r["host"], r["port"])

    def recv(self, n):
        return self.recvfrom(n)[0]

    def close(self):
        if self._id is not None:
            _call({"op": "close", "id": self._id})
            self._id = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
