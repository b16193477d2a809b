# Runs INSIDE MicroPython (tests/mpwasm/run.mjs --path micropython tests/mp_cid_device.py PORT MODE [ARG]), started
# by tests/test_mp_cid_resume.py: the device DTLS client (iotdtls_mp.dtls) on real UDP sockets.
# MODE "full": a full handshake (CID offered, record_size_limit 256), 3 messages, then a new socket (a new source
# port, as after a NAT rebinding) and 3 more on the same session. MODE "resume" ARG=session hex: a new Client from
# the saved session (a reboot), one message. MODE "limit" ARG=size: one message of that size. "full-tickets" and
# "resume-tickets": the same with tickets=True (a session ticket asked for and resumed with). Prints one JSON line.
import json
import socket
import sys
import time
from binascii import hexlify, unhexlify

from iotdtls_mp import dtls

try:
    from os import urandom
except ImportError:
    import random

    def urandom(n):
        return bytes(random.getrandbits(8) for _ in range(n))


ADDR = socket.getaddrinfo("127.0.0.1", int(sys.argv[1]))[0][-1]
T0 = time.ticks_ms()


def now():
    return time.ticks_diff(time.ticks_ms(), T0) / 1000


class Link:
    def __init__(self, client):
        self.c = client
        self.sock = None
        self.wire = [0, 0, 0, 0]  # datagrams out, bytes out, datagrams in, bytes in
        self.got = []
        self.rebind()

    def rebind(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(ADDR)

    def pump(self, done, timeout=10.0):
        c = self.c
        end = now() + timeout
        while True:
            for d in c.datagrams():
                self.sock.send(d)
                self.wire[0] += 1
                self.wire[1] += len(d)
            self.got += c.recv()
            if done():
                return True
            n = now()
            t = c.timer()
            if n >= end:
                return False
            if t is not None and t <= n:
                c.on_timer(n)
                continue
            self.sock.settimeout(max(0.01, min(end, t if t is not None else end) - n))
            try:
                d = self.sock.recv(2048)
            except OSError:
                continue
            self.wire[2] += 1
            self.wire[3] += len(d)
            c.receive(d, now())

    def handshake(self):
        self.c.connect(now())
        ok = self.pump(lambda: self.c.established or self.c.closed)
        w, self.wire = self.wire, [0, 0, 0, 0]
        return ok and self.c.established, w

    def echo(self, msg):
        self.c.send(msg)
        return self.pump(lambda: msg in self.got, 5.0)


def main():
    mode = sys.argv[2]
    out = {"mode": mode}
    tickets = mode.endswith("-tickets")
    mode = mode.split("-")[0]
    if mode == "resume":
        c = dtls.Client(b"dev1", bytes(range(16)), urandom, tickets=tickets, session=unhexlify(sys.argv[3]))
    else:
        c = dtls.Client(b"dev1", bytes(range(16)), urandom, tickets=tickets)
    link = Link(c)
    out["established"], out["handshake_wire"] = link.handshake()
    out["error"] = c.error
    out["abbreviated"] = c._abbr
    out["peer_cid"] = str(hexlify(c.pcid), "ascii") if c.pcid is not None else None
    out["server_limit"] = c._plim
    if mode == "limit":
        try:
            out["sent"] = link.echo(b"x" * int(sys.argv[3]))
        except ValueError as e:
            out["sent"] = str(e)
        out["room"] = c.room()
    else:
        ok = [link.echo(b"m%d" % i) for i in range(1, 4)]
        if mode == "full":
            link.rebind()  # a new source port, the same session
            ok += [link.echo(b"m%d" % i) for i in range(4, 7)]
        out["echoed"] = ok
        out["data_wire"] = link.wire
    s = c.state()
    out["session"] = str(hexlify(s), "ascii") if s else None
    out["closed"] = c.closed
    print(json.dumps(out))


main()
