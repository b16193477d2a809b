"""A small sans-IO DTLS 1.2 PSK client: TLS_PSK_WITH_AES_128_CCM_8 (RFC 6655, RFC 7925), extended master secret.

Feed it datagrams with ``receive(d, now)``, send what ``datagrams()`` returns, call ``on_timer(now)`` at
``timer()``. ``established``, ``closed`` and ``error`` give the state; ``recv()`` the application data.
"""

import hashlib

from . import aes, ccm, prf

SUITE = 0xC0A8
VER = b"\xfe\xfd"
MAXMSG = 2048
_HS, _CCS, _ALERT, _APP = 22, 20, 21, 23


def _u(b, i, n):
    return int.from_bytes(b[i:i + n], "big")


def _b(v, n):
    return v.to_bytes(n, "big")


def _hdr(t, seq, body):
    n = _b(len(body), 3)
    return bytes([t]) + n + _b(seq, 2) + b"\0\0\0" + n + body


class Client:
    def __init__(self, identity, psk, rand, mtu=512, retransmit_initial=2.0, retransmit_max=8.0,
                 handshake_timeout=60):
        self.identity = identity
        self.psk = psk
        self.rand = rand
        self.mtu = mtu
        self.rto0 = retransmit_initial
        self.rto_max = retransmit_max
        self.hs_timeout = handshake_timeout
        self.established = False
        self.closed = False
        self.error = None  # None, an alert code (int) or "timeout"
        self.data = []
        self.rx = 0  # authenticated records received
        self._out = []
        self._seq = [0, 0]  # next record sequence number per epoch
        self._wepoch = 0
        self._cseq = 0  # our next handshake message_seq
        self._rseq = None  # next server message_seq to process (None until the ServerHello is seen)
        self._frags = {}
        self._flight = []
        self._tr = b""
        self._deadline = None
        self._keys = None
        self._top = -1  # replay window: highest epoch-1 sequence number seen, and a 64-bit bitmap
        self._win = 0
        self._sh = None
        self._hmin = 0  # server message_seq below this: an old HelloVerifyRequest

    # -- public -----------------------------------------------------------------------------------
    def connect(self, now):
        self._start = self._now = now
        self._crandom = self.rand(32)
        self._hello(b"")

    def datagrams(self):
        out, self._out = self._out, []
        return out

    def timer(self):
        return None if self.closed else self._deadline

    def recv(self):
        d, self.data = self.data, []
        return d

    def on_timer(self, now):
        if self.closed or self._deadline is None or now < self._deadline:
            return
        if now - self._start >= self.hs_timeout:
            self._fail("timeout", None)
            return
        self._now = now
        self._rto = min(self._rto * 2, self.rto_max)
        self._send_flight()

    def send(self, data):
        if not self.established or self.closed:
            raise OSError("not connected")
        if len(data) > self.mtu - 29:
            raise ValueError("larger than mtu")
        self._out.append(self._record(_APP, data))

    def close(self):
        if not self.closed:
            if self.established:
                self._out.append(self._record(_ALERT, b"\1\0"))
            self.closed = True
            self._deadline = None

    # -- records ----------------------------------------------------------------------------------
    def _record(self, t, payload, epoch=None):
        e = self._wepoch if epoch is None else epoch
        s = self._seq[e]
        self._seq[e] = s + 1
        es = _b(e, 2) + _b(s, 6)
        if e:
            enc, iv = self._keys[0], self._keys[1]
            aad = es + bytes([t]) + VER + _b(len(payload), 2)
            payload = es + ccm.seal(enc, iv + es, aad, payload, 8)
        return bytes([t]) + VER + es + _b(len(payload), 2) + payload

    def receive(self, d, now):
        if self.closed:
            return
        self._now = now
        self._old = False
        pos = 0
        while len(d) - pos >= 13 and not self.closed:
            t = d[pos]
            n = _u(d, pos + 11, 2)
            es = d[pos + 3:pos + 11]
            frag = d[pos + 13:pos + 13 + n]
            if len(frag) < n:
                return
            pos += 13 + n
            epoch = _u(es, 0, 2)
            if epoch == 1 and self._keys:
                seq = _u(es, 2, 6)
                if not self._fresh(seq) or n < 16:
                    continue
                enc, iv = self._keys[2], self._keys[3]
                aad = es + bytes([t]) + d[pos - 12 - n:pos - 10 - n] + _b(n - 16, 2)
                frag = ccm.open(enc, iv + frag[:8], aad, frag[8:], 8)
                if frag is None:
                    continue
                self._mark(seq)
                self.rx += 1
            elif epoch != 0 or self.established:
                continue
            if t == _HS:
                if not self.established:  # no renegotiation
                    self._handshake(frag, epoch)
            elif t == _ALERT and len(frag) >= 2:
                if frag[1] == 0:
                    self.close()
                elif frag[0] == 2:
                    self.closed = True
                    self.error = frag[1]
                    self._deadline = None
            elif t == _APP and epoch == 1 and self.established:
                self.data.append(frag)
        if self._old and self._keys and not self.closed and not self.established and now - self._sent >= self.rto0 / 4:
            self._send_flight()  # the server retransmitted: it lost our last flight (once per server flight)

    def _fresh(self, seq):
        if seq > self._top:
            return True
        off = self._top - seq
        return off < 64 and not (self._win >> off) & 1

    def _mark(self, seq):
        if seq > self._top:
            sh = seq - self._top
            self._win = ((self._win << sh) | 1) & 0xFFFFFFFFFFFFFFFF if sh < 64 else 1
            self._top = seq
        else:
            self._win |= 1 << (self._top - seq)

    # -- handshake --------------------------------------------------------------------------------
    def _fail(self, err, alert):
        if alert is not None:
            self._out.append(self._record(_ALERT, bytes([2, alert])))
        self.error = err
        self.closed = True
        self._deadline = None

    def _hello(self, cookie):
        suites = _b(SUITE, 2) + b"\0\xff"
        body = (VER + self._crandom + b"\0" + bytes([len(cookie)]) + cookie + _b(len(suites), 2) + suites
                + b"\1\0" + b"\0\4\0\x17\0\0")
        self._tr = _hdr(1, self._cseq, body)
        self._cseq += 1
        self._flight = [(_HS, 0, self._tr)]
        self._rto = self.rto0
        self._send_flight()

    def _send_flight(self):
        dg = b""
        for t, e, p in self._flight:
            room = self.mtu - (41 if e else 25)  # record header, handshake header, explicit nonce + tag
            parts = [p]
            if t == _HS and len(p) - 12 > room > 0:  # fragment the handshake message (RFC 6347 4.2.3)
                parts = [p[:6] + _b(o, 3) + _b(len(p[12 + o:12 + o + room]), 3) + p[12 + o:12 + o + room]
                         for o in range(0, len(p) - 12, room)]
            for q in parts:
                r = self._record(t, q, e)
                if dg and len(dg) + len(r) > self.mtu:
                    self._out.append(dg)
                    dg = b""
                dg += r
        self._out.append(dg)
        self._sent = self._now
        self._deadline = min(self._now + self._rto, self._start + self.hs_timeout)

    def _handshake(self, frag, epoch):
        pos = 0
        while len(frag) - pos >= 12:
            t = frag[pos]
            ln = _u(frag, pos + 1, 3)
            seq = _u(frag, pos + 4, 2)
            off = _u(frag, pos + 6, 3)
            fl = _u(frag, pos + 9, 3)
            body = frag[pos + 12:pos + 12 + fl]
            pos += 12 + fl
            if len(body) < fl or off + fl > ln or ln > MAXMSG:
                return
            base = self._rseq
            if base is not None and seq < base:
                self._old = True
                continue
            if (base is None and not self._hmin <= seq <= self._hmin + 4) or (base is not None and seq > base + 4):
                continue
            m = self._frags.get(seq)
            if m is None:
                m = self._frags[seq] = [t, ln, bytearray(ln), [], epoch]
            if m[0] != t or m[1] != ln or m[4] != epoch:
                continue
            r = m[3]
            if r is None:
                continue  # a duplicate of a complete message
            m[2][off:off + fl] = body
            r.append((off, off + fl))
            r.sort()
            mr = []
            for a, b in r:
                if mr and a <= mr[-1][1]:
                    mr[-1] = (mr[-1][0], max(mr[-1][1], b))
                else:
                    mr.append((a, b))
            m[3] = None if mr == [(0, ln)] else mr
            self._process()
            if self.closed or self.established:
                return

    def _process(self):
        fr = self._frags
        if self._rseq is None:
            for s in list(fr):
                m = fr[s]
                if m[3] is not None:
                    continue
                if m[0] == 3 and self._sh is None:  # HelloVerifyRequest
                    for k in list(fr):
                        if k <= s:
                            del fr[k]
                    self._hmin = s + 1
                    b = m[2]
                    if len(b) < 3 or len(b) < 3 + b[2] or b[2] > 255:
                        return self._fail(47, 47)
                    return self._hello(bytes(b[3:3 + b[2]]))
                if m[0] == 2:
                    self._rseq = s
            if self._rseq is None:
                return
        while True:
            m = fr.get(self._rseq)
            if m is None or m[3] is not None:
                return
            del fr[self._rseq]
            self._rseq += 1
            self._message(m[0], bytes(m[2]), m[4])
            if self.closed or self.established:
                return

    def _message(self, t, b, epoch):
        full = _hdr(t, self._rseq - 1, b)
        if t == 2 and self._sh is None:
            try:
                i = 35 + b[34]
                ok = b[:2] == VER and _u(b, i, 2) == SUITE and b[i + 2] == 0
                ems = False
                j = i + 5
                end = j + _u(b, i + 3, 2) if len(b) > i + 3 else j
                while j + 4 <= end:
                    if _u(b, j, 2) == 0x17:
                        ems = True
                    j += 4 + _u(b, j + 2, 2)
            except IndexError:
                ok = False
            if not ok:
                return self._fail(40, 40)
            if not ems:
                return self._fail("no_ems", 40)
            self._sh = b[2:34]
            self._tr += full
        elif t == 12 and self._sh is not None and not self._keys:
            self._tr += full  # PSK ServerKeyExchange: the identity hint, unused
        elif t == 14 and self._sh is not None and not self._keys:
            self._tr += full
            cke = _hdr(16, self._cseq, _b(len(self.identity), 2) + self.identity)
            self._tr += cke
            h = hashlib.sha256(self._tr).digest()
            ms = prf.ems(prf.psk_premaster(self.psk), h)
            kb = prf.key_block(ms, self._crandom, self._sh, 40)
            self._keys = (aes.new_ecb(kb[:16]), kb[32:36], aes.new_ecb(kb[16:32]), kb[36:40])
            self._ms = ms
            fin = _hdr(20, self._cseq + 1, prf.finished(ms, True, h))
            self._tr += fin
            self._cseq += 2
            self._flight = [(_HS, 0, cke), (_CCS, 0, b"\1"), (_HS, 1, fin)]
            self._wepoch = 1
            self._rto = self.rto0
            self._send_flight()
        elif t == 20 and epoch == 1 and self._keys:
            want = prf.finished(self._ms, False, hashlib.sha256(self._tr).digest())
            d = len(b) ^ 12
            for i in range(min(12, len(b))):
                d |= want[i] ^ b[i]
            if d:
                return self._fail(51, 51)
            self.established = True
            self._deadline = None
            self._frags = {}
            self._tr = b""
        else:
            self._fail(10, 10)
