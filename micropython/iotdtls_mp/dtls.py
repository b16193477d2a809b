"""A small sans-IO DTLS 1.2 PSK client: TLS_PSK_WITH_AES_128_CCM_8 (RFC 6655, RFC 7925), extended master secret,
record_size_limit (RFC 8449), Connection ID (RFC 9146), resumption by session ID (RFC 5246) or, with
``tickets=True``, by ticket (RFC 5077).

Feed it datagrams with ``receive(d, now)``, send what ``datagrams()`` returns, call ``on_timer(now)`` at
``timer()``. ``established``, ``closed`` and ``error`` give the state; ``recv()`` the application data;
``state()`` the session to save (resumed by ``Client(..., session=that)``).
"""

import hashlib

from . import aes, ccm, prf

try:
    from micropython import const
except ImportError:  # CPython
    const = int

SUITE = const(0xC0A8)
VER = b"\xfe\xfd"
_HS = const(22)
_CCS = const(20)
_ALERT = const(21)
_APP = const(23)
_CID = const(25)


def _u(b, i, n):
    return int.from_bytes(b[i:i + n], "big")


def _b(v, n):
    return v.to_bytes(n, "big")


def _hdr(t, seq, body):
    n = _b(len(body), 3)
    return bytes([t]) + n + _b(seq, 2) + b"\0\0\0" + n + body


def _cad(c, es, n):
    # RFC 9146 section 5: the additional data of a tls12_cid record
    return b"\xff" * 8 + bytes([25, len(c), 25]) + VER + es + c + _b(n, 2)


class Client:
    # rsl: our record_size_limit (None: not offered); cid: our connection ID (b"": the server sends us no CID;
    # None: no CID extension); tickets: ask for a session ticket (else the server's session cache resumes, by the
    # session ID: a smaller ClientHello); session: what state() returned, to resume
    def __init__(self, identity, psk, rand, mtu=512, retransmit_initial=2.0, retransmit_max=8.0,
                 handshake_timeout=60, rsl=256, cid=b"", tickets=False, session=None):
        self.identity = identity
        self.psk = psk
        self.rand = rand
        self.mtu = mtu
        self.rto0 = retransmit_initial
        self._rtm = retransmit_max
        self._hto = handshake_timeout
        self.established = False
        self.closed = False
        self.error = None  # None, an alert code (int) or "timeout"
        self.data = []
        self.rx = 0  # authenticated records received
        self._out = []
        self._seq = [0, 0]  # next record sequence number per epoch
        self._we = 0
        self._cseq = 0  # our next handshake message_seq
        self._rseq = None  # next server message_seq to process (None until the ServerHello is seen)
        self._fr = {}
        self._fl = []
        self._tr = []  # the handshake messages so far (hashed when needed: no growing copies)
        self._dl = None
        self._keys = None
        self._top = -1  # replay window: highest epoch-1 sequence number seen, and a 64-bit bitmap
        self._win = 0
        self._sh = None
        self._hmin = 0  # server message_seq below this: an old HelloVerifyRequest
        self.rsl = rsl
        self.cid = cid
        self.pcid = None  # the server's CID once negotiated (b"": none): every record we protect carries it
        self._plim = 16384  # the largest plaintext of a protected record the server takes
        self._lim = 0  # our limit, once the server agreed to it
        self._abbr = 0  # an abbreviated (resumed) handshake: 1 + the sends since, until the server confirms
        self._ms = None
        self.tickets = tickets
        self.sid = self.ticket = self._rs = b""  # session ID and ticket; _rs: the session ID offered to resume
        s = session
        if s and len(s) >= 52 and s[0] == 1 and _u(s, 1, 2) == SUITE and len(s) > 51 + s[51]:
            self.sid = s[52:52 + s[51]]
            if tickets:
                self.ticket = s[52 + s[51]:]
            # with a ticket alone: a session ID to see it accepted (RFC 5077 3.4)
            self._rs = self.sid or (self.ticket and rand(32))
            if self._rs:
                self._ms = s[3:51]

    # -- public -----------------------------------------------------------------------------------
    def connect(self, now):
        self._start = self._now = now
        self._cr = self.rand(32)
        self._hello(b"")

    def state(self):
        """The session to save (EMS flag, suite, master secret, session ID, ticket), or None."""
        if self.established and (self.sid or self.ticket):
            return b"\1\xc0\xa8" + self._ms + bytes([len(self.sid)]) + self.sid + self.ticket
        return None

    def room(self):
        """The largest application data send() takes."""
        c = self.pcid
        c = len(c) + 1 if c else 0
        return min(self.mtu - 29 - c, self._plim - (c > 0))

    def datagrams(self):
        out, self._out = self._out, []
        return out

    def timer(self):
        return None if self.closed else self._dl

    def recv(self):
        d, self.data = self.data, []
        return d

    def on_timer(self, now):
        if self.closed or self._dl is None or now < self._dl:
            return
        if now - self._start >= self._hto:
            self._fail("timeout", None)
            return
        self._now = now
        self._rto = min(self._rto * 2, self._rtm)
        self._tx()

    def send(self, data):
        if not self.established or self.closed:
            raise OSError("not connected")
        if len(data) > self.room():
            raise ValueError("larger than mtu")
        if self._abbr and self._fl:
            if self._abbr > 1:  # resumed, unconfirmed, sending again: our Finished too, in case it was lost
                self._tx()
            self._abbr += 1
        self._out.append(self._record(_APP, data))

    def close(self):
        if not self.closed:
            if self.established:
                self._out.append(self._record(_ALERT, b"\1\0"))
            self.closed = True
            self._dl = None

    # -- records ----------------------------------------------------------------------------------
    def _record(self, t, payload, epoch=None):
        e = self._we if epoch is None else epoch
        s = self._seq[e]
        self._seq[e] = s + 1
        es = _b(e, 2) + _b(s, 6)
        c = b""
        if e:
            c = self.pcid or c
            if c:  # RFC 9146: DTLSInnerPlaintext (content, real type, no padding) in a tls12_cid record
                payload += bytes([t])
                t = _CID
                aad = _cad(c, es, len(payload))
            else:
                aad = es + bytes([t]) + VER + _b(len(payload), 2)
            payload = es + ccm.seal(self._keys[0], self._keys[1] + es, aad, payload, 8)
        return bytes([t]) + VER + es + c + _b(len(payload), 2) + payload

    def receive(self, d, now):
        if self.closed:
            return
        self._now = now
        self._old = False
        pos = 0
        while len(d) - pos >= 13 and not self.closed:
            t = d[pos]
            c = b""
            if t == _CID:
                if self.pcid is None:
                    return  # no CID negotiated: the header's length is unknown
                c = self.cid
            h = pos + 13 + len(c)
            n = _u(d, h - 2, 2)
            es = d[pos + 3:pos + 11]
            frag = d[h:h + n]
            if len(frag) < n or d[pos + 11:h - 2] != c:
                return
            v = d[pos + 1:pos + 3]
            pos = h + n
            epoch = _u(es, 0, 2)
            if epoch == 1 and self._keys:
                seq = _u(es, 2, 6)
                if not self._replay(seq, 0) or n < 16:
                    continue
                aad = _cad(c, es, n - 16) if t == _CID else es + bytes([t]) + v + _b(n - 16, 2)
                frag = ccm.open(self._keys[2], self._keys[3] + frag[:8], aad, frag[8:], 8)
                if frag is None:
                    continue
                self._replay(seq, 1)
                self.rx += 1
                if self._lim and len(frag) > self._lim:
                    return self._fail(22, 22)  # record_overflow (RFC 8449)
                if t == _CID:
                    frag = frag.rstrip(b"\0")
                    if not frag:
                        continue
                    t = frag[-1]
                    frag = frag[:-1]
            elif epoch != 0 or self.established or t == _CID:
                continue
            if t == _HS:
                if not self.established:  # no renegotiation
                    self._hsk(frag, epoch)
                elif epoch:
                    self._old = True  # the server's Finished again: it lost our Finished (abbreviated handshake)
            elif t == _ALERT and len(frag) >= 2:
                if frag[1] == 0:
                    self.close()
                elif frag[0] == 2:
                    self.closed = True
                    self.error = frag[1]
                    self._dl = None
            elif t == _APP and epoch == 1 and self.established:
                self.data.append(frag)
                self._fl = []  # the server has our Finished
        if (self._old and self._keys and not self.closed and (not self.established or self._abbr)
                and now - self._sent >= self.rto0 / 4):
            self._tx()  # the server retransmitted: it lost our last flight (once per server flight)

    def _replay(self, seq, mark):
        # the replay window (RFC 6347 4.1.2.6): without mark, True if seq is new; with mark, note seq as seen
        if not mark:
            off = self._top - seq
            return off < 0 or (off < 64 and not (self._win >> off) & 1)
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
        self._dl = None

    def _hello(self, cookie):
        x = b"\0\x17\0\0"  # extended_master_secret
        if self.rsl:
            x += b"\0\x1c\0\2" + _b(self.rsl, 2)
        c = self.cid
        if c is not None:
            x += b"\0\x36" + _b(len(c) + 1, 2) + bytes([len(c)]) + c
        if self.tickets:  # SessionTicket: empty, or the one to resume
            x += b"\0\x23" + _b(len(self.ticket), 2) + self.ticket
        r = self._rs
        body = (VER + self._cr + bytes([len(r)]) + r + bytes([len(cookie)]) + cookie
                + b"\0\4\xc0\xa8\0\xff\1\0" + _b(len(x), 2) + x)  # the suite and the SCSV; no compression
        ch = _hdr(1, self._cseq, body)
        self._tr = [ch]
        self._cseq += 1
        self._fl = [(_HS, 0, ch)]
        self._rto = self.rto0
        self._tx()

    def _tx(self):
        dg = b""
        for t, e, p in self._fl:
            room = self.mtu - (41 if e else 25)  # record header, handshake header, explicit nonce + tag
            parts = [p]
            if t == _HS and len(p) - 12 > room > 0:  # fragment the handshake message (RFC 6347 4.2.3)
                parts = []
                for o in range(0, len(p) - 12, room):
                    f = p[12 + o:12 + o + room]
                    parts.append(p[:6] + _b(o, 3) + _b(len(f), 3) + f)
            for q in parts:
                r = self._record(t, q, e)
                if dg and len(dg) + len(r) > self.mtu:
                    self._out.append(dg)
                    dg = b""
                dg += r
        self._out.append(dg)
        self._sent = self._now
        self._dl = None if self.established else min(self._now + self._rto, self._start + self._hto)

    def _hsk(self, frag, epoch):
        pos = 0
        while len(frag) - pos >= 12:
            t = frag[pos]
            ln = _u(frag, pos + 1, 3)
            seq = _u(frag, pos + 4, 2)
            off = _u(frag, pos + 6, 3)
            fl = _u(frag, pos + 9, 3)
            body = frag[pos + 12:pos + 12 + fl]
            pos += 12 + fl
            if len(body) < fl or off + fl > ln or ln > 2048:
                return
            base = self._rseq
            if base is not None and seq < base:
                self._old = True
                continue
            if (base is None and not self._hmin <= seq <= self._hmin + 4) or (base is not None and seq > base + 4):
                continue
            m = self._fr.get(seq)
            if m is None:
                m = self._fr[seq] = [t, ln, bytearray(ln), [], epoch]
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
            self._pr()
            if self.closed or self.established:
                return

    def _pr(self):
        fr = self._fr
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

    def _hash(self):
        h = hashlib.sha256()
        for m in self._tr:
            h.update(m)
        return h.digest()

    def _key(self, ms):
        kb = prf.key_block(ms, self._cr, self._sh, 40)
        self._keys = (aes.new_ecb(kb[:16]), kb[32:36], aes.new_ecb(kb[16:32]), kb[36:40])
        self._ms = ms

    def _message(self, t, b, epoch):
        full = _hdr(t, self._rseq - 1, b)
        if t == 2 and self._sh is None:
            x = {}
            try:
                n = b[34]
                sid = b[35:35 + n]
                i = 35 + n
                ok = b[:2] == VER and n <= 32 and _u(b, i, 2) == SUITE and b[i + 2] == 0
                j = i + 5
                end = j + _u(b, i + 3, 2) if len(b) > i + 3 else j
                while j + 4 <= end:
                    k = _u(b, j + 2, 2)
                    x[_u(b, j, 2)] = b[j + 4:j + 4 + k]
                    j += 4 + k
            except IndexError:
                ok = False
            if not ok:
                return self._fail(40, 40)
            if 0x17 not in x:
                return self._fail("no_ems", 40)  # also refuses to resume without it (RFC 7627 5.3)
            v = x.get(0x1C)
            if v is not None:
                if len(v) != 2 or _u(v, 0, 2) < 64 or not self.rsl:
                    return self._fail(47, 47)
                self._plim = min(_u(v, 0, 2), 16384)
                self._lim = self.rsl
            v = x.get(0x36)
            if v is not None:
                if self.cid is None or not v or v[0] != len(v) - 1:
                    return self._fail(47, 47)
                self.pcid = v[1:]
            self._sh = b[2:34]
            self._tr.append(full)
            self.sid = sid
            if self._rs and sid == self._rs:  # the server resumes: abbreviated handshake (RFC 5246 7.3)
                self._abbr = 1
                self._key(self._ms)
            else:
                self.ticket = b""
        elif t == 4 and self._keys and not self.established:  # NewSessionTicket (RFC 5077 3.3)
            if len(b) < 6 or len(b) != 6 + _u(b, 4, 2):
                return self._fail(50, 50)
            self.ticket = b[6:]
            self._tr.append(full)
        elif t == 12 and self._sh is not None and not self._keys:
            self._tr.append(full)  # PSK ServerKeyExchange: the identity hint, unused
        elif t == 14 and self._sh is not None and not self._keys:
            self._tr.append(full)
            cke = _hdr(16, self._cseq, _b(len(self.identity), 2) + self.identity)
            self._tr.append(cke)
            h = self._hash()
            self._key(prf.ems(prf.psk_premaster(self.psk), h))
            fin = _hdr(20, self._cseq + 1, prf.finished(self._ms, True, h))
            self._tr.append(fin)
            self._cseq += 2
            self._fl = [(_HS, 0, cke), (_CCS, 0, b"\1"), (_HS, 1, fin)]
            self._we = 1
            self._rto = self.rto0
            self._tx()
        elif t == 20 and epoch == 1 and self._keys:
            want = prf.finished(self._ms, False, self._hash())
            d = len(b) ^ 12
            for i in range(min(12, len(b))):
                d |= want[i] ^ b[i]
            if d:
                return self._fail(51, 51)
            self._fl = []
            if self._abbr:  # our ChangeCipherSpec and Finished, over the server's Finished too
                self._tr.append(full)
                fin = _hdr(20, self._cseq, prf.finished(self._ms, True, self._hash()))
                self._cseq += 1
                self._fl = [(_CCS, 0, b"\1"), (_HS, 1, fin)]
                self._we = 1
            self.established = True
            self._dl = None
            self._fr = {}
            self._tr = []
            if self._fl:
                self._rto = self.rto0
                self._tx()
        else:
            self._fail(10, 10)
