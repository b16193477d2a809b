# CoAP over the DTLS PSK client, sans-IO: one DTLS session reused across requests, a new handshake after a fatal
# alert, a close_notify, a request that the server stays silent to (see STALE_RETRIES) or a separate response that
# does not come (see SEPARATE_WAIT), and exponential back-off after failures. Feed datagrams with receive(d, now),
# send datagrams(), call on_timer(now) at timer().
# Key rotation (docs/micropython.md): a response carrying the gateway's CBOR {"cred": true} makes the session GET
# the new key (cred_path) at once; the device stores ``offer`` and calls rekey(). A handshake refused with
# bad_record_mac is tried once more with the previous key (``old``); ``swapped`` says that one was accepted.
from . import cbor, coap, dtls

# A request retransmitted this often with not one record heard from the server on an established session: the
# server has probably lost the session (restarted), so handshake again and resend the request.
STALE_RETRIES = 2
# After an empty ACK, wait this many ACK_TIMEOUTs for the separate response, then handshake again and resend the
# request (a gateway that crashed after its empty ACK never answers). A response sent within 1.5 ACK_TIMEOUT of
# the empty ACK still arrives if its first copy is lost (the server retransmits it after ACK_TIMEOUT x [1, 1.5]).
# Either replacement happens once per request; the resent request has the same options (its idempotency key).
SEPARATE_WAIT = 3

ALERTS = {10: "unexpected_message", 20: "bad_record_mac", 40: "handshake_failure", 47: "illegal_parameter",
          51: "decrypt_error", 80: "internal_error", 115: "unknown_psk_identity"}
# Alerts that refuse the credential itself (a PSK server's answer to an unknown identity or a wrong key): the
# handshake is tried once more with the previous credential, if the device kept one.
REFUSED = (20, 115)


def reason(err):
    """A readable reason for a DTLS client error (alert code, "timeout", "no_ems")."""
    if isinstance(err, int):
        return f"fatal alert {err} ({ALERTS.get(err, 'alert')})"
    if err == "no_ems":
        return "server without extended master secret (RFC 7627), refused"
    return "handshake timeout" if err == "timeout" else str(err)


def _cbor(m, kind):
    try:
        d = cbor.loads(m.payload)
    except ValueError:
        return kind()
    return d if isinstance(d, kind) else kind()


def hint(m):
    """True when a 2.xx response carries {"cred": true}: the gateway has a new key for this device."""
    return m.code >> 5 == 2 and bool(m.payload) and _cbor(m, dict).get("cred") is True


def credential(m):
    """(identity, psk), both bytes, from a 2.05 answer to GET /credentials; None if it holds no usable key."""
    d = _cbor(m, dict) if m.code == coap.CONTENT else {}
    i = d.get("identity")
    k = d.get("psk")
    if isinstance(i, str) and isinstance(k, bytes) and 0 < len(i) <= 128 and 16 <= len(k) <= 64:
        return (i.encode(), k)
    return None


class Session:
    """Requests one at a time over a DTLS session to one server.

    After request(): busy() until the response or a failure; then ``result`` is ("ok", coap.Message) or
    ("error", reason). ``failures`` counts consecutive failed requests; delay() is the back-off before the next.
    With ``cred_path``, a response with the rotation hint is followed by a GET of that path before the request is
    done (its own result stands); a key found there is ``offer`` until rekey().
    """

    def __init__(self, identity, psk, rand, mtu=512, ack_timeout=coap.ACK_TIMEOUT, retransmit_initial=2.0,
                 retransmit_max=8.0, handshake_timeout=60, backoff_initial=2.0, backoff_max=300.0, cred_path=None,
                 rsl=256, cid=b"", tickets=False, session=None):
        self.identity = identity
        self.psk = psk
        self.cred_path = cred_path
        self.old = None  # the previous (identity, psk): tried once if the current one is refused
        self.offer = None  # (identity, psk) the gateway handed over, for the device to store, then rekey()
        self.swapped = None  # the refused (identity, psk) once the old one was accepted instead (store the swap)
        self._rf = None  # the credential refused while its fallback's handshake runs
        self._po = None  # the hinted request's result while the GET of the new key runs
        self.rand = rand
        self.mtu = mtu
        self.ack_timeout = ack_timeout
        self._da = (retransmit_initial, retransmit_max, handshake_timeout, rsl, cid, tickets)
        self.saved = session  # the DTLS session to resume (dtls.Client.state()), kept up to date
        self.backoff = (backoff_initial, backoff_max)
        self.conn = None
        self.req = None  # the pending request's Exchange
        self.ex = None  # the Exchange on the wire: the pending one once sent, else the last one
        self.args = None  # the pending request's (code, options, payload, confirmable)
        self._fr = False  # the pending request made the current session
        self._rn = False  # the pending request replaced a session (stale, or no separate response)
        self._rx0 = 0  # records the session had received when the pending request went out
        self.result = None
        self.failures = 0
        self.handshakes = 0
        self._out = []

    def busy(self):
        return self.req is not None

    def request(self, now, code, path, payload=b"", content_format=None, confirmable=True, query=None, opts=None):
        """Send a request: `query` ("k=1&x=2") becomes Uri-Query options, kept when the request is resent on a
        new session; `opts` are more options, [(number, bytes)] (an ETag)."""
        if self.req is not None:
            raise ValueError("busy")
        opts = (opts or []) + coap.uri_path(path)
        if content_format is not None:
            opts += coap.content_format(content_format)
        if query:
            opts += coap.uri_query(query)  # in option order after Uri-Path and Content-Format: no sort
        self.args = (code, opts, payload, confirmable)
        ex = self._exchange()
        if len(ex.msg) > self.mtu - 29:  # record header 13 + explicit nonce 8 + tag 8
            raise ValueError("request too large")
        self.req = ex
        self.ex = None
        self.result = None
        self._fr = False
        self._rn = False
        c = self.conn
        if c is None or c.closed:
            self._connect(now)
        self._step(now)

    def _exchange(self):
        code, opts, payload, con = self.args
        return coap.Exchange(self.rand, code, opts, payload, confirmable=con, ack_timeout=self.ack_timeout,
                             separate_timeout=SEPARATE_WAIT * self.ack_timeout)

    def _renew(self, now):
        """Drop the session, handshake again and send the pending request anew (new message ID and token)."""
        self.drop()
        self.req = self._exchange()
        self._connect(now)
        self._rn = True

    def _connect(self, now):
        self.conn = dtls.Client(self.identity, self.psk, self.rand, self.mtu, *self._da, session=self.saved)
        self.handshakes += 1
        self._fr = True
        self.conn.connect(now)

    def receive(self, d, now):
        if self.conn is not None:
            self.conn.receive(d, now)
            self._step(now)

    def timer(self):
        t = self.conn.timer() if self.conn is not None else None
        e = self.ex.timeout_at() if self.req is not None and self.ex is not None else None
        if t is None or (e is not None and e < t):
            return e
        return t

    def on_timer(self, now):
        c = self.conn
        if c is None:
            return
        c.on_timer(now)
        ex = self.ex
        if self.req is not None and ex is not None and not c.closed:
            sep = ex.state == "sep"
            m = ex.on_timer(now)
            if m is not None and ex.retries >= STALE_RETRIES and c.rx == self._rx0 and not self._fr:
                self._renew(now)  # stale session: handshake again and send the request anew
            elif m is not None:
                c.send(m)
            elif sep and ex.state == "failed":  # an empty ACK, then no separate response within SEPARATE_WAIT
                if self._rn:
                    self.drop()
                    self._done(("error", "no separate response"))
                else:
                    self._renew(now)
        self._step(now)

    def datagrams(self):
        if self.conn is not None:
            self._out += self.conn.datagrams()
        out, self._out = self._out, []
        return out

    def abort(self, why):
        """Give up the pending request (e.g. the socket failed) and drop the session."""
        self.drop()
        if self.req is not None:
            self._done(("error", why))

    def drop(self):
        """Close the session (close_notify if established); the next request handshakes again."""
        if self.conn is not None:
            self.conn.close()
            self._out += self.conn.datagrams()
            self.conn = None
        self.ex = None

    def delay(self):
        """Seconds to wait before the next attempt: 0 after a success, else exponential with +-25% jitter."""
        if not self.failures:
            return 0
        b0, bmax = self.backoff
        d = min(b0 * 2 ** (self.failures - 1), bmax)
        return d * (0.75 + self.rand(1)[0] / 510)

    def rekey(self):
        """Switch to ``offer`` (once the device has stored it): close the session (close_notify), so that the next
        request handshakes with the new credential; the current one becomes the fallback."""
        o = self.offer
        if o is not None:
            self.offer = None
            self.drop()
            self.old = (self.identity, self.psk)
            self.identity, self.psk = o
            self._rf = None
            self.saved = None

    def _done(self, result, now=None):
        p = self._po
        if p is not None:  # the GET of the new key is over: the hinted request's result stands
            self._po = None
            if result[0] == "ok":
                self.offer = credential(result[1])
            result = p
        elif now is not None and self.cred_path and result[0] == "ok" and hint(result[1]):
            self._po = result
            self.args = (coap.GET, coap.uri_path(self.cred_path), b"", True)
            self.req = self._exchange()
            self.ex = None
            self._fr = self._rn = False
            self._step(now)
            return
        self.result = result
        self.req = None  # self.ex stays: it answers repeats of its response
        self.failures = 0 if result[0] == "ok" else self.failures + 1

    def _step(self, now):
        c = self.conn
        if c is None:
            return
        if c.closed:
            self._out += c.datagrams()
            self.conn = None
            if c.error not in (None, "timeout"):
                self.saved = None  # a session that ended with a fatal alert is not resumed (RFC 5246 7.2.2)
            if self.req is not None:
                if not c.established:
                    r = self._rf
                    if r is not None:  # the fallback was not accepted either: back to the newer credential
                        self.identity, self.psk = r
                        self._rf = None
                    elif c.error in REFUSED and self.old is not None:  # once: the previous credential
                        self._rf = (self.identity, self.psk)
                        self.identity, self.psk = self.old
                        self.old = None
                        self._connect(now)
                        return
                self._done(("error", reason(c.error) if c.error is not None else "closed by server"))
            return
        if not c.established:
            return
        if self._rf is not None:  # the fallback credential was accepted
            self.swapped, self._rf = self._rf, None
        ex = self.ex
        if self.req is not None and ex is None:
            self.saved = c.state()
            if len(self.req.msg) > c.room():  # the server's record_size_limit (or the CID) leaves too little room
                return self._done(("error", "request too large"))
            ex = self.ex = self.req
            self._rx0 = c.rx
            c.send(ex.start(now))
        for d in c.recv():  # while idle, the last exchange still ACKs a repeated separate response (RFC 7252 4.5)
            m = ex.on_datagram(d, now) if ex is not None else None
            if m is not None:
                c.send(m)
        if self.req is None:
            return
        if ex.state == "done":
            self._done(("ok", ex.response), now)
        elif ex.state == "failed":
            if ex.error == "timeout":
                self.drop()  # every retransmission went unanswered: the server may have lost the session
            self._done(("error", "no response" if ex.error == "timeout" else "reset by server"))
