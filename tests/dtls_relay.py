"""A UDP relay on 127.0.0.1 that forwards datagrams unchanged and logs every DTLS record header it sees.

Interop tests put it between a real peer and iotdtls to check record sizes on the wire without a capture
(no privileges needed)::

    with RecordRelay(server_port) as relay:          # clients connect to relay.port
        ...
    assert max(r.plaintext_len for r in relay.protected("s2c")) <= 512

Each client address gets its own upstream socket, so a peer that reconnects from a new port (gnutls-cli
--resume) also reaches the server from a new address. Only classic DTLS 1.2 record headers are parsed (13
bytes: type, version, epoch, sequence number, length); a datagram whose records do not add up is counted in
`malformed`, and a tls12_cid record (type 25) ends the parsing of its datagram.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

LOCALHOST = "127.0.0.1"
HEADER_LEN = 13
CONTENT_ALERT = 21
CONTENT_HANDSHAKE = 22
CONTENT_APPLICATION_DATA = 23
CONTENT_TLS12_CID = 25
#: close() forwards what is still queued for at most this long (seconds).
DRAIN_LIMIT = 1.0
#: Explicit nonce (8) and tag (8) of an AES-CCM-8 record: the plaintext is the fragment less this.
CCM_8_EXPANSION = 16


@dataclass(frozen=True)
class RecordInfo:
    direction: str  # "c2s" (towards the target) or "s2c"
    content_type: int
    epoch: int
    length: int  # the record's fragment length: the ciphertext for a protected record
    handshake_type: int | None  # first handshake message in an epoch-0 handshake record, else None
    fragment: bytes = field(default=b"", repr=False)  # kept for epoch-0 handshake records only
    connection: int = -1  # RecordRelay: the client address's index, in the order they first sent

    @property
    def plaintext_len(self) -> int:
        """The plaintext length of a protected AES-CCM-8 record (epoch > 0)."""
        return self.length - CCM_8_EXPANSION if self.epoch else self.length


def parse_records(direction: str, datagram: bytes) -> tuple[list[RecordInfo], bool]:
    """The records of one datagram, and whether it parsed cleanly."""
    out: list[RecordInfo] = []
    pos = 0
    while pos < len(datagram):
        if len(datagram) - pos < HEADER_LEN:
            return out, False
        ctype = datagram[pos]
        if ctype == CONTENT_TLS12_CID:
            return out, True
        epoch = int.from_bytes(datagram[pos + 3:pos + 5], "big")
        length = int.from_bytes(datagram[pos + 11:pos + 13], "big")
        end = pos + HEADER_LEN + length
        if end > len(datagram):
            return out, False
        hs_type, fragment = None, b""
        if ctype == CONTENT_HANDSHAKE and epoch == 0 and length:
            fragment = datagram[pos + HEADER_LEN:end]
            hs_type = fragment[0]
        out.append(RecordInfo(direction, ctype, epoch, length, hs_type, fragment))
        pos = end
    return out, True


CLIENT_HELLO = 1
SERVER_HELLO = 2
EXT_RECORD_SIZE_LIMIT = 28
EXT_SESSION_TICKET = 35


def hello_extensions(record: RecordInfo) -> dict[int, bytes] | None:
    """The extensions of an unfragmented ClientHello or ServerHello carried by `record` (type -> data), or None
    when the record holds no such message. Hand-rolled from RFC 6347 section 4.2.2 and RFC 5246 section 7.4.1."""
    frag = record.fragment
    if record.handshake_type not in (CLIENT_HELLO, SERVER_HELLO) or len(frag) < 12:
        return None
    body_len = int.from_bytes(frag[1:4], "big")
    if int.from_bytes(frag[6:9], "big") != 0 or int.from_bytes(frag[9:12], "big") != body_len:
        return None  # a fragment of a larger message
    body = frag[12:12 + body_len]
    pos = 2 + 32  # version, random
    pos += 1 + body[pos]  # session_id
    if record.handshake_type == CLIENT_HELLO:
        pos += 1 + body[pos]  # cookie
        pos += 2 + int.from_bytes(body[pos:pos + 2], "big")  # cipher_suites
        pos += 1 + body[pos]  # compression_methods
    else:
        pos += 2 + 1  # cipher_suite, compression_method
    exts: dict[int, bytes] = {}
    if pos + 2 > len(body):
        return exts
    end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
    pos += 2
    while pos + 4 <= end:
        ext_type = int.from_bytes(body[pos:pos + 2], "big")
        ext_len = int.from_bytes(body[pos + 2:pos + 4], "big")
        exts[ext_type] = body[pos + 4:pos + 4 + ext_len]
        pos += 4 + ext_len
    return exts


def record_size_limits(records: list[RecordInfo], handshake_type: int) -> list[int | None]:
    """The record_size_limit of every ClientHello (or ServerHello) in `records`, None where it has none."""
    out: list[int | None] = []
    for record in records:
        exts = hello_extensions(record) if record.handshake_type == handshake_type else None
        if exts is not None:
            data = exts.get(EXT_RECORD_SIZE_LIMIT)
            out.append(int.from_bytes(data, "big") if data is not None else None)
    return out


#: drop(connection, direction, records) -> True to drop that datagram; `connection` counts client addresses
#: from 0 in the order they first sent, `records` are the datagram's records.
DropRule = Callable[[int, str, list[RecordInfo]], bool]


def drop_once(connection: int, direction: str, content_type: int) -> DropRule:
    """A rule that drops the first datagram of `connection` going in `direction` with a record of `content_type`
    (e.g. 20, ChangeCipherSpec: the datagram with a final flight)."""
    state = {"done": False}

    def rule(conn: int, where: str, records: list[RecordInfo]) -> bool:
        if state["done"] or conn != connection or where != direction:
            return False
        if any(r.content_type == content_type for r in records):
            state["done"] = True
            return True
        return False

    return rule


class RecordRelay:
    """Forwards 127.0.0.1:`port` <-> 127.0.0.1:`target_port` in a daemon thread; `records` logs what passed,
    and `drop` (a DropRule) can drop chosen datagrams (logged in `dropped`, not in `records`)."""

    def __init__(self, target_port: int, listen_port: int = 0, *, drop: DropRule | None = None) -> None:
        self.target = (LOCALHOST, target_port)
        self._drop = drop
        self.dropped: list[tuple[int, str, list[RecordInfo]]] = []
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._listen.bind((LOCALHOST, listen_port))
        self.port: int = self._listen.getsockname()[1]
        self._upstream: dict[tuple[str, int], socket.socket] = {}  # client address -> its socket to the target
        self._client_of: dict[socket.socket, tuple[str, int]] = {}
        self.records: list[RecordInfo] = []
        self.datagrams = 0
        #: (client address, direction, UDP payload bytes, "data"/"alert"/"handshake") of every datagram
        self.sizes: list[tuple[tuple[str, int], str, int, str]] = []
        self.malformed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"RecordRelay:{self.port}", daemon=True)
        self._thread.start()

    def _log(self, client: tuple[str, int], direction: str, datagram: bytes) -> bool:
        """Log a datagram; False when the drop rule drops it."""
        records, clean = parse_records(direction, datagram)
        connection = list(self._upstream).index(client)
        records = [replace(r, connection=connection) for r in records]
        if self._drop is not None and self._drop(connection, direction, records):
            with self._lock:
                self.dropped.append((connection, direction, records))
            return False
        with self._lock:
            self.datagrams += 1
            types = {r.content_type for r in records}
            kind = "data" if CONTENT_APPLICATION_DATA in types else "alert" if types == {CONTENT_ALERT} else "handshake"
            self.sizes.append((client, direction, len(datagram), kind))
            self.records.extend(records)
            self.malformed += not clean
        return True

    def _run(self) -> None:
        drain_until: float | None = None
        while True:
            socks = [self._listen, *self._client_of]
            try:
                ready, _, _ = select.select(socks, [], [], 0.05)
            except (OSError, ValueError):
                return
            if self._stop.is_set():  # close(): forward what is still queued (a client's last datagrams), then end
                now = time.monotonic()
                drain_until = drain_until if drain_until is not None else now + DRAIN_LIMIT
                if not ready or now > drain_until:
                    return
            for sock in ready:
                try:
                    data, addr = sock.recvfrom(65535)
                except OSError:  # ICMP port unreachable from an earlier send, or closed
                    continue
                if sock is self._listen:
                    up = self._upstream.get(addr)
                    if up is None:
                        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        up.bind((LOCALHOST, 0))
                        self._upstream[addr] = up
                        self._client_of[up] = addr
                    if self._log(addr, "c2s", data):
                        with contextlib.suppress(OSError):
                            up.sendto(data, self.target)
                else:
                    client = self._client_of[sock]
                    if self._log(client, "s2c", data):
                        with contextlib.suppress(OSError):
                            self._listen.sendto(data, client)

    def snapshot(self) -> list[RecordInfo]:
        with self._lock:
            return list(self.records)

    def connection_records(self) -> list[list[RecordInfo]]:
        """The records of each connection (client address), in the order the connections began."""
        out: list[list[RecordInfo]] = []
        for record in self.snapshot():
            while len(out) <= record.connection:
                out.append([])
            out[record.connection].append(record)
        return out

    def handshake_cost(self) -> list[tuple[int, int]]:
        """(datagrams, UDP payload bytes) of each connection's handshake, one per client address in order: its
        handshake datagrams, both ways, up to its first application data (alert-only datagrams left out)."""
        cost: dict[tuple[str, int], list[int]] = {}
        done: set[tuple[str, int]] = set()
        with self._lock:
            sizes = list(self.sizes)
        for client, _, n, kind in sizes:
            entry = cost.setdefault(client, [0, 0])
            if kind == "data":
                done.add(client)
            elif kind == "handshake" and client not in done:
                entry[0] += 1
                entry[1] += n
        return [(count, size) for count, size in cost.values()]

    def protected(self, direction: str, content_type: int = CONTENT_APPLICATION_DATA) -> list[RecordInfo]:
        """The protected (epoch > 0) records of `content_type` that went in `direction`."""
        return [r for r in self.snapshot() if r.direction == direction and r.epoch > 0
                and r.content_type == content_type]

    def describe(self) -> str:
        rows = [f"{r.direction} type={r.content_type} epoch={r.epoch} len={r.length}" for r in self.snapshot()]
        return f"relay :{self.port} -> :{self.target[1]}, {self.datagrams} datagrams, {self.malformed} malformed\n" \
            + "\n".join(rows)

    def close(self) -> None:
        """Forward what is already queued (a peer may have sent its last datagrams just now), then stop."""
        self._stop.set()
        self._thread.join(DRAIN_LIMIT + 1.0)
        for sock in (self._listen, *self._client_of):
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> RecordRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
