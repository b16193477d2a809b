"""A hostile CoAPs client and its attacks, shared by ``tests/test_coap_bounds.py`` and
``benchmarks/bench_coap_hostile.py``.

:class:`RawCoapsClient` is one authenticated DTLS session (a sans-IO :class:`iotdtls.DTLSConnection` over a
connected UDP socket) that sends CoAP messages built byte by byte here, so it can send what no CoAP library
would, and reads what comes back. CoAP encoding and parsing are written out below rather than taken from
``iotdtls.coap``, so the attacks run unchanged against any version of the server (``--server-tree``) and
against plain CoAP servers (``plain=True``: the same CoAP bytes in UDP datagrams, no DTLS).

Each attack (:data:`ATTACKS`) runs for ``seconds`` at full speed from one session: it keeps a window of
requests in flight, sending the next as soon as an answer arrives or after ``WINDOW_WAIT`` without one, and
returns what it sent and received.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from iotdtls import DTLSConfiguration, DTLSConnection
from iotdtls.events import ConnectionTerminated, DataReceived, HandshakeCompleted

PSK = b"secretPSK0123456"
CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST = 1, 2
IF_MATCH, OBSERVE, URI_PATH, CONTENT_FORMAT, URI_QUERY, BLOCK2, BLOCK1, SIZE1 = 1, 6, 11, 12, 15, 23, 27, 60
WINDOW = 16
WINDOW_WAIT = 0.02


def code_text(code: int) -> str:
    return f"{code >> 5}.{code & 31:02d}"


def uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _ext(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    return 14, (value - 269).to_bytes(2, "big")


def coap(mtype: int, code: int, mid: int, token: bytes = b"", options: Iterable[tuple[int, bytes]] = (),
         payload: bytes = b"") -> bytes:
    """A CoAP message (RFC 7252 section 3); options in any order, sorted here."""
    out = bytearray((0x40 | mtype << 4 | len(token), code, mid >> 8 & 0xFF, mid & 0xFF)) + token
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        d, dx = _ext(number - last)
        n, nx = _ext(len(value))
        out += bytes([d << 4 | n]) + dx + nx + value
        last = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def path(*segments: str) -> list[tuple[int, bytes]]:
    return [(URI_PATH, s.encode()) for s in segments]


def block(num: int, more: bool, szx: int) -> bytes:
    return uint(num << 4 | (8 if more else 0) | szx)


@dataclass
class Reply:
    """A CoAP message the server sent."""

    mtype: int
    code: int
    mid: int
    token: bytes
    options: list[tuple[int, bytes]]
    payload: bytes

    def option(self, number: int) -> bytes | None:
        return next((v for n, v in self.options if n == number), None)

    def uint_option(self, number: int) -> int | None:
        value = self.option(number)
        return int.from_bytes(value, "big") if value is not None else None


def parse(data: bytes) -> Reply | None:
    """The message in ``data``, or None if it is not well-formed CoAP."""
    if len(data) < 4 or data[0] >> 6 != 1 or data[0] & 15 > 8:
        return None
    tkl = data[0] & 15
    pos, number, options = 4 + tkl, 0, []
    while pos < len(data) and data[pos] != 0xFF:
        first = data[pos]
        pos += 1
        values = []
        for nibble in (first >> 4, first & 15):
            if nibble == 13:
                values.append(data[pos] + 13)
                pos += 1
            elif nibble == 14:
                values.append(int.from_bytes(data[pos:pos + 2], "big") + 269)
                pos += 2
            elif nibble == 15:
                return None
            else:
                values.append(nibble)
        number += values[0]
        options.append((number, data[pos:pos + values[1]]))
        pos += values[1]
    payload = data[pos + 1:] if pos < len(data) else b""
    return Reply((data[0] >> 4) & 3, data[1], int.from_bytes(data[2:4], "big"), data[4:4 + tkl], options, payload)


class RawCoapsClient:
    """One DTLS session (or, with ``plain``, none) to ``host:port`` sending raw CoAP messages."""

    def __init__(self, port: int, *, identity: bytes = b"dev1", psk: bytes = PSK, mtu: int = 1500,
                 host: str = "127.0.0.1", plain: bool = False) -> None:
        self.plain = plain
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.connect((host, port))
        self.sock.setblocking(False)
        self.conn = DTLSConnection(DTLSConfiguration(psk_identity=identity, psk=psk, mtu=mtu), peer=(host, port))
        self.bytes_sent = 0
        self.datagrams_sent = 0
        self.datagrams_received = 0
        self.closed = False
        self._mid = int.from_bytes(os.urandom(2), "big")
        self._token = 0

    def next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def next_token(self) -> bytes:
        self._token += 1
        return self._token.to_bytes(4, "big")

    def _flush(self, now: float) -> None:
        for datagram in self.conn.datagrams_to_send(now):
            self._sendto(datagram)

    def _sendto(self, datagram: bytes) -> None:
        try:
            self.sock.send(datagram)
        except (BlockingIOError, ConnectionRefusedError):
            return  # a full socket buffer drops it, as the network would
        self.bytes_sent += len(datagram)
        self.datagrams_sent += 1

    def handshake(self, timeout: float = 10.0) -> None:
        if self.plain:
            return
        now = time.monotonic()
        deadline = now + timeout
        self.conn.connect(now)
        self._flush(now)
        while not self.conn.is_established:
            if time.monotonic() > deadline:
                raise TimeoutError("DTLS handshake did not complete")
            self.receive(0.05)
            now = time.monotonic()
            timer = self.conn.get_timer()
            if timer is not None and timer <= now:
                self.conn.handle_timer(now)
                self._flush(now)
        self.bytes_sent = self.datagrams_sent = 0  # count the attack, not the handshake

    def send(self, message: bytes) -> None:
        if self.plain:
            self._sendto(message)
            return
        self.conn.send(message)
        self._flush(time.monotonic())

    def send_datagram(self, data: bytes) -> None:
        self._sendto(data)

    def receive(self, timeout: float = 0.0) -> list[Reply]:
        """CoAP messages that arrived within ``timeout`` (all that are waiting, after the first)."""
        out: list[Reply] = []
        ready, _w, _x = select.select([self.sock], [], [], timeout)
        if not ready:
            return out
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, ConnectionRefusedError):
                break
            self.datagrams_received += 1
            if self.plain:
                reply = parse(data)
                if reply is not None:
                    out.append(reply)
                continue
            now = time.monotonic()
            self.conn.receive_datagram(data, now)
            while (event := self.conn.next_event()) is not None:
                if isinstance(event, DataReceived):
                    reply = parse(event.data)
                    if reply is not None:
                        out.append(reply)
                elif isinstance(event, ConnectionTerminated):
                    self.closed = True
                elif isinstance(event, HandshakeCompleted):
                    pass
            self._flush(now)
        return out

    def request(self, message: bytes, timeout: float = 3.0) -> Reply:
        """Send ``message`` and wait for the reply with its message ID (or token)."""
        mid, token = int.from_bytes(message[2:4], "big"), message[4:4 + (message[0] & 15)]
        self.send(message)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for reply in self.receive(0.05):
                if reply.mid == mid or (reply.token == token and reply.code):
                    return reply
        raise TimeoutError(f"no reply to message ID {mid}")

    def ack(self, reply: Reply) -> None:
        self.send(coap(ACK, 0, reply.mid))

    def close(self) -> None:
        if not self.plain and self.conn.is_established:
            self.conn.close()
            self._flush(time.monotonic())
        self.sock.close()


# -- the attacks --------------------------------------------------------------------------------------------------


@dataclass
class AttackResult:
    name: str
    seconds: float
    requests: int = 0
    replies: int = 0
    bytes_sent: int = 0
    datagrams_sent: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    notes: dict[str, float] = field(default_factory=dict)


def _windowed(client: RawCoapsClient, seconds: float, make: Callable[[int], bytes], result: AttackResult,
              on_reply: Callable[[Reply], None] | None = None, window: int = WINDOW) -> None:
    """Send ``make(i)`` for i = 0, 1, ... for ``seconds``, with up to ``window`` unanswered at a time."""
    end = time.monotonic() + seconds
    outstanding = 0
    last_progress = time.monotonic()
    while time.monotonic() < end:
        while outstanding < window:
            client.send(make(result.requests))
            result.requests += 1
            outstanding += 1
        replies = client.receive(WINDOW_WAIT)
        for reply in replies:
            key = code_text(reply.code)
            result.codes[key] = result.codes.get(key, 0) + 1
            if on_reply is not None:
                on_reply(reply)
        answered = sum(1 for r in replies if r.code)
        result.replies += answered
        outstanding = max(0, outstanding - answered)
        if answered:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress >= WINDOW_WAIT:
            outstanding = 0  # nothing came back in time: lost or dropped, go on
            last_progress = time.monotonic()


def option_bomb(client: RawCoapsClient, seconds: float, options: int = 1000) -> AttackResult:
    """Confirmable GETs of /whoami with ``options`` empty If-Match options each, every one a new message ID."""
    result = AttackResult("option bomb", seconds)
    bomb = [(IF_MATCH, b"")] * options + path("whoami")
    _windowed(client, seconds, lambda _i: coap(CON, GET, client.next_mid(), client.next_token(), bomb), result)
    return _finish(client, result)


def dedup_flood(client: RawCoapsClient, seconds: float) -> AttackResult:
    """Ordinary confirmable GETs of /whoami, every one a new message ID: each fills the deduplication cache."""
    result = AttackResult("dedup flood", seconds)
    _windowed(client, seconds, lambda _i: coap(CON, GET, client.next_mid(), client.next_token(), path("whoami")),
              result)
    return _finish(client, result)


def oversized_records(client: RawCoapsClient, seconds: float, size: int = 16000) -> AttackResult:
    """Confirmable POSTs to /echo of ``size``-byte payloads, each in one record (the client's mtu allows it)."""
    result = AttackResult("oversized records", seconds)
    body = os.urandom(size)
    _windowed(client, seconds, lambda _i: coap(CON, POST, client.next_mid(), client.next_token(), path("echo"), body),
              result)
    return _finish(client, result)


def endless_uploads(client: RawCoapsClient, seconds: float, blocks_each: int = 4) -> AttackResult:
    """Block1 uploads to /echo?n=N (a new query string each), ``blocks_each`` 1024-byte blocks, never finished."""
    result = AttackResult("endless Block1 uploads", seconds)
    body = os.urandom(1024)

    def make(i: int) -> bytes:
        upload, num = divmod(i, blocks_each)
        options = [*path("echo"), (URI_QUERY, b"n=%d" % upload), (BLOCK1, block(num, True, 6))]
        return coap(CON, POST, client.next_mid(), client.next_token(), options, body)

    _windowed(client, seconds, make, result)
    return _finish(client, result)


def endless_blocks(client: RawCoapsClient, seconds: float) -> AttackResult:
    """One Block1 upload to /echo that never ends: blocks 0, 1, 2, ... of 1024 bytes, one at a time; notes the
    round trip of the first and the last 100 blocks (``first_ms``, ``last_ms``)."""
    result = AttackResult("endless Block1 blocks", seconds)
    body = os.urandom(1024)
    times: list[float] = []
    end = time.monotonic() + seconds
    num = 0
    while time.monotonic() < end:
        options = [*path("echo"), (BLOCK1, block(num, True, 6))]
        start = time.monotonic()
        try:
            reply = client.request(coap(CON, POST, client.next_mid(), client.next_token(), options, body), 2.0)
        except TimeoutError:
            break
        times.append(time.monotonic() - start)
        result.requests += 1
        result.replies += 1
        key = code_text(reply.code)
        result.codes[key] = result.codes.get(key, 0) + 1
        num = num + 1 if reply.code == 0x5F else 0  # 2.31 Continue: next block; anything else: start again
    if len(times) >= 200:
        result.notes["first_ms"] = sum(times[:100]) / 100 * 1000
        result.notes["last_ms"] = sum(times[-100:]) / 100 * 1000
    result.notes["blocks"] = len(times)
    return _finish(client, result)


def deaf_observers(client: RawCoapsClient, seconds: float, confirmable: bool = True,
                   resource: str = "time") -> AttackResult:
    """Observe registrations of /time (a new token each) as fast as they are answered, never acknowledging a
    notification. Notes the notifications (messages with Observe) that came in the last second
    (``last_second_notifications``), after the registrations stopped."""
    result = AttackResult(f"deaf observers ({'CON' if confirmable else 'NON'})", seconds)
    mtype = CON if confirmable else NON
    _windowed(client, seconds - 1.0,
              lambda _i: coap(mtype, GET, client.next_mid(), client.next_token(), [(OBSERVE, b""), *path(resource)]),
              result)
    notes = 0
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        notes += sum(1 for reply in client.receive(0.05) if reply.option(OBSERVE) is not None)  # read, never ACK
    result.notes["last_second_notifications"] = notes
    return _finish(client, result)


def _finish(client: RawCoapsClient, result: AttackResult) -> AttackResult:
    result.bytes_sent = client.bytes_sent
    result.datagrams_sent = client.datagrams_sent
    return result


ATTACKS: dict[str, Callable[[RawCoapsClient, float], AttackResult]] = {
    "option_bomb": option_bomb, "dedup_flood": dedup_flood, "oversized_records": oversized_records,
    "endless_uploads": endless_uploads, "endless_blocks": endless_blocks, "deaf_observers": deaf_observers,
}


def rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")
