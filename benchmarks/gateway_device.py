"""A simulated telemetry device for ``benchmarks/bench_gateway.py``: sans-IO, no socket and no clock of its own.

It behaves as ``micropython/main.py`` does with its default timers, so that what the gateway sees in a benchmark is
what a fleet of boards would send:

- a reading is a confirmable ``POST /telemetry`` with Content-Format 60 (a CBOR map) and the idempotency key
  ``k=<boot>.<seq>`` as Uri-Query; a reading that failed is sent again with the same key (the gateway drops the
  duplicate), a new one gets the next ``seq``;
- CoAP retransmission as RFC 7252 section 4.2 (ACK_TIMEOUT 2 s x [1, 1.5], doubling, MAX_RETRANSMIT 4); an empty
  ACK makes it wait for the separate response (3 ACK_TIMEOUTs);
- DTLS (``secure=True``): one session reused for every reading (iotdtls's sans-IO :class:`DTLSConnection`, PSK,
  the device's timers: 2 s initial, 8 s max, 60 s handshake timeout); a new handshake when the session ended
  (close_notify, an alert) or went stale (two retransmissions with not one record heard from the gateway);
- after a failed reading, a back-off of 2 s doubling up to 300 s, +-25 % jitter (``Session.delay`` on the device).

With ``secure=False`` the same readings go over plain CoAP (the bare aiocoap baseline). The owner feeds datagrams
with :meth:`SimDevice.receive`, sends :meth:`SimDevice.datagrams`, calls :meth:`SimDevice.on_timer` at
:meth:`SimDevice.timer`, and hears of each outcome through the ``listener``.
"""

from __future__ import annotations

import hashlib
import random
from typing import Protocol

from iotdtls import DTLSConfiguration, DTLSConnection
from iotdtls.coap import wire
from iotdtls.events import ConnectionTerminated, DataReceived, HandshakeCompleted

ACK_TIMEOUT = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
#: A request retransmitted this often with nothing heard from the gateway: the session is stale, handshake again.
STALE_RETRIES = 2
#: ACK_TIMEOUTs to wait for a separate response after an empty ACK.
SEPARATE_WAIT = 3
BACKOFF_INITIAL = 2.0
BACKOFF_MAX = 300.0
#: The device's DTLS timers (micropython/main.py's defaults).
DTLS_RETRANSMIT_INITIAL = 2.0
DTLS_RETRANSMIT_MAX = 8.0
DTLS_HANDSHAKE_TIMEOUT = 60.0

POST = 2
CHANGED = 0x44  # 2.04
URI_PATH, CONTENT_FORMAT, URI_QUERY = 11, 12, 15
PATH = (URI_PATH, b"telemetry")
CBOR = (CONTENT_FORMAT, bytes([60]))


def device_name(index: int) -> str:
    return f"dev{index}"


def device_psk(index: int) -> bytes:
    """The benchmark's PSK of device ``index`` (derived, so that every process knows it without passing 10,000
    keys around; only for this benchmark)."""
    return hashlib.sha256(b"iotdtls bench_gateway psk\x00" + index.to_bytes(4, "big")).digest()[:16]


def device_address(index: int) -> str:
    """A loopback source address of its own for device ``index`` (127.1.0.1 on): every device is its own network,
    as on a real site, so the gateway's per-network handshake share applies to each device alone."""
    return f"127.{index // 62500 + 1}.{index // 250 % 250 + 1}.{index % 250 + 1}"


def reading(seq: int) -> bytes:
    """The CBOR map {"seq": seq, "temp": 21.5} (encoded by hand: a map of 2, two text keys)."""
    if seq < 24:
        n = bytes([seq])
    elif seq < 256:
        n = bytes([0x18, seq])
    elif seq < 65536:
        n = b"\x19" + seq.to_bytes(2, "big")
    else:
        n = b"\x1a" + seq.to_bytes(4, "big")
    return b"\xa2\x63seq" + n + b"\x64temp\xf9\x4d\x60"  # 21.5 as a half-precision float


class Listener(Protocol):
    def done(self, device: SimDevice, ok: bool, now: float) -> None: ...

    def session_ended(self, device: SimDevice, now: float) -> None: ...


class SimDevice:
    """One device. ``post(now)`` starts a reading; the listener hears ``done(device, ok, now)`` once it is
    answered 2.04 (``ok``) or has failed (the device then sends it again by itself after its back-off, unless
    :meth:`cancel_retry` is called); ``session_ended`` when an idle session ends (close_notify, an alert)."""

    __slots__ = (
        "_config",
        "_deadline",
        "_last_ok",
        "_listener",
        "_mid",
        "_msg",
        "_on_wire",
        "_out",
        "_renewed",
        "_retries",
        "_rng",
        "_rx",
        "_rx0",
        "_sep",
        "_timeout",
        "_token",
        "boot",
        "conn",
        "due_at",
        "empty_acks",
        "failures",
        "fresh",
        "handshakes",
        "index",
        "latency",
        "pending",
        "renewals",
        "retransmissions",
        "retry_at",
        "secure",
        "seq",
        "started",
    )

    def __init__(self, index: int, listener: Listener, rng: random.Random, *, secure: bool = True) -> None:
        self.index = index
        self.secure = secure
        self._listener = listener
        self._rng = rng
        self._config = DTLSConfiguration(
            psk_identity=device_name(index).encode(), psk=device_psk(index), mtu=512,
            retransmit_initial=DTLS_RETRANSMIT_INITIAL, retransmit_max=DTLS_RETRANSMIT_MAX,
            handshake_timeout=DTLS_HANDSHAKE_TIMEOUT, random=rng.randbytes) if secure else None
        self.conn: DTLSConnection | None = None
        self._out: list[bytes] = []
        self.boot = f"{rng.getrandbits(32):08x}"
        self.seq = 0
        self._last_ok = True
        self._mid = rng.getrandbits(16)
        self._token = rng.getrandbits(32)
        self._msg = b""
        self.pending = False  # a reading is being sent (or waits for its back-off: retry_at)
        self._on_wire = False  # the current exchange has been sent (its CoAP timer runs)
        self._sep = False
        self._deadline = 0.0
        self._timeout = 0.0
        self._rx = 0
        self._rx0 = 0
        self.fresh = False
        self._renewed = False
        self.started = 0.0
        self.latency = 0.0
        self.retry_at: float | None = None
        #: when the owner wants the next reading (the owner's business; part of timer())
        self.due_at: float | None = None
        self.failures = 0
        self.handshakes = 0
        self._retries = 0
        #: CoAP retransmissions sent, empty ACKs received, and sessions renewed (stale, or no separate response)
        self.retransmissions = 0
        self.empty_acks = 0
        self.renewals = 0

    # -- the owner's side ----------------------------------------------------------------------------------------
    def post(self, now: float) -> bool:
        """Start a reading (the failed one again, with its key, or the next); False if one is under way."""
        if self.pending:
            return False
        self.retry_at = None
        if self._last_ok:
            self.seq += 1
        self.pending = True
        self.started = now
        self._renewed = False
        self.fresh = False
        if not self.secure:
            self._start_exchange(now)
            return True
        conn = self.conn
        if conn is None or conn.is_closed:
            self._connect(now)
        elif conn.is_established:
            self._start_exchange(now)
        return True

    def cancel_retry(self) -> None:
        """Forget a failed reading waiting for its back-off."""
        if self.retry_at is not None:
            self.retry_at = None
            self.pending = False

    def receive(self, data: bytes, now: float) -> None:
        self._rx += 1
        if not self.secure:
            self._coap(data, now)
            return
        conn = self.conn
        if conn is None:
            return
        conn.receive_datagram(data, now)
        self._drain(conn, now)

    def datagrams(self) -> list[bytes]:
        conn = self.conn
        if conn is not None:
            self._out += conn.datagrams_to_send(0.0)
        out, self._out = self._out, []
        return out

    def timer(self) -> float | None:
        when = self.retry_at
        if self.due_at is not None and (when is None or self.due_at < when):
            when = self.due_at
        if self._on_wire and (when is None or self._deadline < when):
            when = self._deadline
        conn = self.conn
        if conn is not None:
            t = conn.get_timer()
            if t is not None and (when is None or t < when):
                when = t
        return when

    def on_timer(self, now: float) -> None:
        conn = self.conn
        if conn is not None:
            t = conn.get_timer()
            if t is not None and t <= now:
                conn.handle_timer(now)
                self._drain(conn, now)
        if self._on_wire and self._deadline <= now:
            self._exchange_timeout(now)
        if self.retry_at is not None and self.retry_at <= now:
            self.pending = False
            self.post(now)
        if self.due_at is not None and self.due_at <= now:
            self.due_at = None
            if not self.pending:
                self.post(now)

    def network_error(self, now: float) -> None:
        """The socket reported an error (ICMP port unreachable: the gateway is not running): the session is gone
        and the reading under way fails."""
        self.conn = None
        if self.pending and self.retry_at is None:
            self._fail(now)

    def delay(self) -> float:
        """The back-off before a failed reading is sent again."""
        d = min(BACKOFF_INITIAL * 2 ** (self.failures - 1), BACKOFF_MAX) if self.failures else 0.0
        return d * (0.75 + 0.5 * self._rng.random())

    # -- DTLS ----------------------------------------------------------------------------------------------------
    def _connect(self, now: float) -> None:
        assert self._config is not None
        self.conn = conn = DTLSConnection(self._config, validate=False)
        self.handshakes += 1
        self.fresh = True
        conn.connect(now)

    def _drain(self, conn: DTLSConnection, now: float) -> None:
        while (event := conn.next_event()) is not None:
            if isinstance(event, DataReceived):
                self._coap(event.data, now)
            elif isinstance(event, HandshakeCompleted):
                if self.pending and not self._on_wire and self.retry_at is None:
                    self._start_exchange(now)
            elif isinstance(event, ConnectionTerminated):
                self._out += conn.datagrams_to_send(now)
                if self.conn is conn:
                    self.conn = None
                if self.pending and self.retry_at is None:
                    self._fail(now)
                else:
                    self._listener.session_ended(self, now)
                return

    def _renew(self, now: float) -> None:
        """Drop a stale session (close_notify), handshake again, then send the reading anew."""
        conn = self.conn
        if conn is not None:
            conn.close()
            self._out += conn.datagrams_to_send(now)
        self._on_wire = False
        self._renewed = True
        self.renewals += 1
        self._connect(now)

    # -- CoAP ----------------------------------------------------------------------------------------------------
    def _start_exchange(self, now: float) -> None:
        self._mid = (self._mid + 1) & 0xFFFF
        self._token = (self._token + 1) & 0xFFFFFFFF
        query = (URI_QUERY, f"k={self.boot}.{self.seq}".encode())
        self._msg = wire.encode(wire.CON, POST, self._mid, self._token.to_bytes(4, "big"), (PATH, CBOR, query),
                                reading(self.seq))
        self._on_wire = True
        self._sep = False
        self._retries = 0
        self._rx0 = self._rx
        self._timeout = ACK_TIMEOUT * (1 + (ACK_RANDOM_FACTOR - 1) * self._rng.random())
        self._deadline = now + self._timeout
        self._transmit(self._msg)

    def _transmit(self, msg: bytes) -> None:
        if not self.secure:
            self._out.append(msg)
            return
        conn = self.conn
        if conn is not None and conn.is_established:
            conn.send(msg)

    def _exchange_timeout(self, now: float) -> None:
        if self._sep:  # an empty ACK, then no separate response: a new session once, then give up
            if self.secure and not self._renewed:
                self._renew(now)
            else:
                self._fail(now)
            return
        self._retries += 1
        if self.secure and not self.fresh and self._retries >= STALE_RETRIES and self._rx == self._rx0:
            self._renew(now)
            return
        if self._retries > MAX_RETRANSMIT:
            self._fail(now)
            return
        self.retransmissions += 1
        self._timeout *= 2
        self._deadline = now + self._timeout
        self._transmit(self._msg)

    def _coap(self, data: bytes, now: float) -> None:
        header = wire.scan_header(data)
        if header is None:
            return
        if header.mtype == wire.CON and header.code >= 64:  # a separate (or repeated) response: acknowledge it
            self._transmit(wire.encode(wire.ACK, 0, header.mid, b""))
            if self._on_wire and header.token == self._token.to_bytes(4, "big"):
                self._answered(header.code, now)
            return
        if not self._on_wire:
            return
        if header.mtype == wire.ACK and header.mid == self._mid:
            if header.code == 0:
                self.empty_acks += 1
                self._sep = True
                self._deadline = now + SEPARATE_WAIT * ACK_TIMEOUT
            else:
                self._answered(header.code, now)
        elif header.mtype == wire.NON and header.code >= 64 and header.token == self._token.to_bytes(4, "big"):
            self._answered(header.code, now)
        elif header.mtype == wire.RST and header.mid == self._mid:
            self._fail(now)

    def _answered(self, code: int, now: float) -> None:
        self._on_wire = False
        if code != CHANGED:
            self._fail(now)
            return
        self.pending = False
        self._last_ok = True
        self.failures = 0
        self.latency = now - self.started
        self._listener.done(self, True, now)

    def _fail(self, now: float) -> None:
        self._on_wire = False
        self._last_ok = False
        self.failures += 1
        self.retry_at = now + max(self.delay(), 1.0)  # main.py: pause(max(delay, 1)) before the next attempt
        self._listener.done(self, False, now)
