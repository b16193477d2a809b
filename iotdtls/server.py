"""DTLSServer: the sans-IO server front for many peers on one socket.

A datagram from an address without a connection is answered statelessly: a ClientHello without a valid cookie
gets a HelloVerifyRequest and nothing is stored. Only a ClientHello with a valid cookie creates a
:class:`DTLSConnection`, within the ``max_sessions`` and ``max_handshakes`` limits.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Hashable

from .buffer import Buffer, BufferReadError, Writer
from .config import DTLSConfiguration
from .connection import DTLSConnection
from .constants import DTLS_1_0, ContentType, HandshakeType
from .cookie import CookieJar, hello_without_cookie
from .errors import DTLSError
from .events import Event
from .messages import ClientHello, HelloVerifyRequest, pull_client_hello, push_hello_verify_request
from .reassembly import Fragment, _Partial, message_header, parse_fragments
from .record import MAX_SEQ, encode_plain, split_records

Address = Hashable
MAX_PARTIAL_HELLOS = 64
MAX_HELLO_SEQ = 16


class ConnectionReplaced(DTLSError):
    """The peer started a new handshake from the same address (e.g. after a reboot)."""


class DTLSServer:
    def __init__(self, config: DTLSConfiguration, *, max_sessions: int = 10000, max_handshakes: int = 100) -> None:
        if config.is_client:
            raise ValueError("DTLSServer needs a server configuration (is_client=False)")
        config.validate()
        self._config = config
        self._cookies = CookieJar(config.random(32), config.cookie_lifetime)
        self._dummy_psk_key = config.random(32)
        self.max_sessions = max_sessions
        self.max_handshakes = max_handshakes
        self.connections: dict[Address, DTLSConnection] = {}
        self._out: list[tuple[bytes, Address]] = []
        self._events: deque[tuple[Address, Event]] = deque()
        self._heap: list[tuple[float, int, Address]] = []
        self._armed: dict[Address, float] = {}
        self._counter = itertools.count()
        self._handshaking: set[Address] = set()
        self._partial_hellos: OrderedDict[tuple[Address, int], _Partial] = OrderedDict()
        self.stats = {"hello_verify_sent": 0, "dropped_full": 0, "dropped_invalid": 0}

    @property
    def handshakes_in_progress(self) -> int:
        return len(self._handshaking)

    # -- sans-IO API -----------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        conn = self.connections.get(addr)
        if conn is not None and not self._is_client_hello(data):
            conn.receive_datagram(data, now)
            self._collect(addr, conn)
            return
        self._stateless(data, addr, now, conn)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        heap, armed = self._heap, self._armed
        while heap and armed.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> None:
        heap, armed = self._heap, self._armed
        while heap and heap[0][0] <= now:
            when, _, addr = heapq.heappop(heap)
            if armed.get(addr) != when:
                continue
            del armed[addr]
            conn = self.connections.get(addr)
            if conn is not None:
                conn.handle_timer(now)
                self._collect(addr, conn)

    def next_event(self) -> tuple[Address, Event] | None:
        return self._events.popleft() if self._events else None

    def send(self, addr: Address, data: bytes) -> None:
        conn = self.connections.get(addr)
        if conn is None:
            raise DTLSError("no connection for that address")
        conn.send(data)
        self._collect(addr, conn)

    def close(self, addr: Address) -> None:
        conn = self.connections.get(addr)
        if conn is not None:
            conn.close()
            self._collect(addr, conn)

    # -- internals -------------------------------------------------------------------------------
    def _forget(self, addr: Address) -> None:
        """Drop every trace of the connection at ``addr`` (its timer entry in the heap goes stale)."""
        del self.connections[addr]
        self._armed.pop(addr, None)
        self._handshaking.discard(addr)

    def _collect(self, addr: Address, conn: DTLSConnection) -> None:
        for dgram in conn.datagrams_to_send(0.0):
            self._out.append((dgram, addr))
        while (event := conn.next_event()) is not None:
            self._events.append((addr, event))
        if conn.is_closed:
            if self.connections.get(addr) is conn:
                self._forget(addr)
            return
        if conn.is_handshaking:
            self._handshaking.add(addr)
        else:
            self._handshaking.discard(addr)
        when = conn.get_timer()
        if when is None:
            self._armed.pop(addr, None)
        elif self._armed.get(addr) != when:
            self._armed[addr] = when
            heapq.heappush(self._heap, (when, next(self._counter), addr))
            if len(self._heap) > 4 * len(self._armed) + 64:
                self._heap = [(t, next(self._counter), a) for a, t in self._armed.items()]
                heapq.heapify(self._heap)

    @staticmethod
    def _is_client_hello(data: bytes) -> bool:
        """A plaintext (epoch 0) handshake record that carries a ClientHello (or a fragment of one)."""
        return len(data) >= 25 and data[0] == ContentType.HANDSHAKE and data[3:5] == b"\x00\x00" and \
            data[13] == HandshakeType.CLIENT_HELLO

    def _stateless(self, data: bytes, addr: Address, now: float, existing: DTLSConnection | None) -> None:
        parsed = self._parse_hello(data, addr)
        if parsed is None:
            self.stats["dropped_invalid"] += 1
            return
        hello, body, msg_seq, rec_seq = parsed
        if existing is not None and not existing.is_closed and hello.random == existing.client_random:
            # The hello that created this connection, retransmitted or replayed: the connection decides
            # whether its peer is asking for a retransmission.
            existing.receive_datagram(data, now)
            self._collect(addr, existing)
            return
        if msg_seq > MAX_HELLO_SEQ or rec_seq > MAX_SEQ - (1 << 16):
            # No client starts that high (message_seq counts HelloVerifyRequests); continuing would run our
            # own counters, which start from these values, out of their 16 / 48 bits.
            self.stats["dropped_invalid"] += 1
            return
        addr_bytes = repr(addr).encode()
        bare = hello_without_cookie(body)
        if self._config.cookies and not self._cookies.verify(hello.cookie, addr_bytes, bare, now):
            cookie = self._cookies.make(addr_bytes, bare, now)
            w = Writer()
            push_hello_verify_request(w, HelloVerifyRequest(cookie=cookie, version=DTLS_1_0))
            hvr = w.data()
            payload = message_header(HandshakeType.HELLO_VERIFY_REQUEST, len(hvr), msg_seq) + hvr
            self._out.append((encode_plain(ContentType.HANDSHAKE, rec_seq, payload), addr))
            self.stats["hello_verify_sent"] += 1
            return
        full = existing is None and len(self.connections) >= self.max_sessions
        busy = self.handshakes_in_progress >= self.max_handshakes and addr not in self._handshaking
        if full or busy:
            self.stats["dropped_full"] += 1  # the client retries on its timer
            return
        if existing is not None:
            # A new handshake from a known address (reboot): the valid cookie proves the address, so the
            # old association gives way (RFC 6347 section 4.2.8).
            self._forget(addr)
            if not existing.is_closed:
                existing._terminate(ConnectionReplaced("peer started a new handshake"))
                self._collect(addr, existing)
        conn = DTLSConnection(self._config, peer=addr, validate=False)
        self.connections[addr] = conn
        conn.accept(hello, body, msg_seq, rec_seq, now, self._dummy_psk_key)
        self._collect(addr, conn)

    def _parse_hello(self, data: bytes, addr: Address) -> tuple[ClientHello, bytes, int, int] | None:
        """A whole, well-formed ClientHello from this datagram, or ``None``.

        A ClientHello fragmented over several records (GnuTLS at small MTUs) is collected in a small table
        shared by all peers: at most ``MAX_PARTIAL_HELLOS`` entries of at most ``max_handshake_message``
        bytes, oldest evicted first, so a flood of fragments cannot grow memory.
        """
        for record in split_records(data):
            if record.content_type != ContentType.HANDSHAKE or record.epoch != 0:
                return None
            try:
                for frag in parse_fragments(record.fragment):
                    if frag.msg_type != HandshakeType.CLIENT_HELLO:
                        return None
                    if frag.offset == 0 and len(frag.body) == frag.length:
                        body = frag.body
                    else:
                        body_or_none = self._add_hello_fragment(addr, frag)
                        if body_or_none is None:
                            continue
                        body = body_or_none
                    return pull_client_hello(Buffer(body)), body, frag.message_seq, record.seq
            except (BufferReadError, DTLSError):
                return None
        return None

    def _add_hello_fragment(self, addr: Address, frag: Fragment) -> bytes | None:
        if frag.length > self._config.max_handshake_message or frag.message_seq > MAX_HELLO_SEQ:
            return None
        key = (addr, frag.message_seq)
        part = self._partial_hellos.pop(key, None)
        if part is None or part.length != frag.length:
            part = _Partial(frag.msg_type, frag.length, 0)
        part.add(frag.offset, frag.body)
        if part.complete():
            return bytes(part.buf)
        self._partial_hellos[key] = part
        while len(self._partial_hellos) > MAX_PARTIAL_HELLOS:
            self._partial_hellos.popitem(last=False)
        return None
