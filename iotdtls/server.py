"""DTLSServer: the sans-IO server front for many peers on one socket.

A datagram from an address without a connection is answered statelessly: a ClientHello without a valid cookie
gets a HelloVerifyRequest and nothing is stored. Only a ClientHello with a valid cookie creates a
:class:`DTLSConnection`, within the handshake limits (in total and per source network, see
:mod:`iotdtls.fairness`).

A valid ClientHello from the address of an established session (a rebooted device, or a replayed hello) starts a
second handshake next to the session. The session carries data both ways until the new handshake's Finished
verifies; only then is it replaced. If the new handshake fails, the session goes on unchanged.

When a handshake completes, the session table is kept fair: older sessions of the same identity beyond
``max_sessions_per_identity`` and anonymous sessions of the same network beyond ``max_anonymous_per_ip`` are
closed, and a full table evicts its least recently active session (anonymous ones first). Every eviction and
refusal is counted in :attr:`DTLSServer.stats` and logged, rate limited, on the ``iotdtls.server`` logger.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import replace

from .buffer import Buffer, BufferReadError, Writer
from .cid_routes import CidRoutes
from .config import DTLSConfiguration
from .connection import DTLSConnection
from .constants import DTLS_1_0, ContentType, ExtensionType, HandshakeType
from .cookie import COOKIE_LEN, CookieJar, hello_without_cookie
from .errors import AlertError, DTLSError
from .events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    HandshakeCompleted,
    PeerAddressChanged,
    ReplacementFailed,
)
from .fairness import HandshakeSlots, SessionTable, network_of
from .handshake import State
from .logs import identity_text, where
from .messages import (
    ClientHello,
    HelloVerifyRequest,
    find_extension,
    pull_client_hello,
    push_hello_verify_request,
)
from .ratelog import RateLimitedLog
from .reassembly import Fragment, _Partial, message_header, parse_fragments
from .record import MAX_SEQ, encode_plain, split_records
from .resumption import SessionCache, TicketKeys
from .server_context import ServerContext

Address = Hashable
MAX_PARTIAL_HELLOS = 64
MAX_HELLO_SEQ = 16
#: A HelloVerifyRequest datagram: record header, handshake header, version, cookie length and cookie.
HELLO_VERIFY_LEN = 13 + 12 + 2 + 1 + COOKIE_LEN
#: Idle timeout of server sessions when the configuration leaves it at ``None``: long enough that a device
#: reporting once a day keeps its session (no handshake per report), short enough that the state of devices
#: that vanished is released within a day. A full table evicts its least recently active session anyway.
DEFAULT_SERVER_IDLE_TIMEOUT = 24 * 3600.0

_PROGRESS = {State.SERVER_WAIT_CKE: 0, State.SERVER_WAIT_CLIENT_CERTIFICATE: 0, State.SERVER_WAIT_CKE_AUTH: 1,
             State.SERVER_WAIT_CERTIFICATE_VERIFY: 2, State.SERVER_WAIT_FINISHED: 3}
_HANDSHAKE = int(ContentType.HANDSHAKE)
_TLS12_CID = bytes((ContentType.TLS12_CID,))
_CLIENT_HELLO = int(HandshakeType.CLIENT_HELLO)
_STATS = ("hello_verify_sent", "dropped_full", "dropped_per_ip", "dropped_invalid", "dropped_oversize",
          "dropped_unknown_cid", "cid_exhausted", "address_changes", "path_challenges", "handshakes_evicted",
          "replacements_started", "replacements_failed", "sessions_replaced", "sessions_evicted_identity",
          "sessions_evicted_anonymous", "sessions_evicted_full", "sessions_refused_full")


class SessionEvicted(DTLSError):
    """The server ended this connection to make room for another, or because a newer one took its place."""


class ConnectionReplaced(SessionEvicted):
    """A new handshake from the same address (e.g. after a reboot) completed and took this session's place."""


def server_configuration(config: DTLSConfiguration) -> DTLSConfiguration:
    """The configuration a server front works with: a copy whose ``idle_timeout`` ``None`` means
    :data:`DEFAULT_SERVER_IDLE_TIMEOUT` and ``0`` means never."""
    if config.idle_timeout is None:
        return replace(config, idle_timeout=DEFAULT_SERVER_IDLE_TIMEOUT)
    if config.idle_timeout == 0:
        return replace(config, idle_timeout=None)
    return replace(config)


class DTLSServer:
    """Sans-IO DTLS server for many peers. Limits (each ``None`` where it may be switched off):

    - ``max_sessions``: established sessions; when a new one completes beyond it, the least recently active
      session is closed (anonymous sessions first; an anonymous newcomer never displaces an authenticated one).
    - ``max_handshakes``: handshakes in progress; ``max_handshakes_per_ip`` (default a quarter of them) per
      source network (IPv4 address or IPv6 /64).
    - ``max_sessions_per_identity`` (default 1): a new session of a PSK identity or public key closes the
      oldest ones beyond this, with close_notify, once its Finished verified.
    - ``max_anonymous_per_ip`` (default 4): sessions of clients that authenticated with nothing (public-key
      suites without client authentication), per source network.
    - ``max_datagram``: datagrams longer than this are dropped before parsing or decryption.
    """

    def __init__(self, config: DTLSConfiguration, *, max_sessions: int = 10000, max_handshakes: int = 100,
                 max_handshakes_per_ip: int | None = None, max_sessions_per_identity: int | None = 1,
                 max_anonymous_per_ip: int | None = 4, max_datagram: int | None = None,
                 session_cache: int = 1000, ticket_keys: TicketKeys | None = None) -> None:
        if config.is_client:
            raise ValueError("DTLSServer needs a server configuration (is_client=False)")
        config.validate()
        for name, value in (("max_sessions", max_sessions), ("max_handshakes", max_handshakes),
                            ("max_handshakes_per_ip", max_handshakes_per_ip),
                            ("max_sessions_per_identity", max_sessions_per_identity),
                            ("max_anonymous_per_ip", max_anonymous_per_ip), ("max_datagram", max_datagram)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        if session_cache < 0:
            raise ValueError("session_cache must not be negative (0: no session IDs)")
        self._config = server_configuration(config)
        self._cookies = CookieJar(config.random(32), config.cookie_lifetime)
        self._dummy_psk_key = config.random(32)
        self.max_sessions = max_sessions
        self.max_sessions_per_identity = max_sessions_per_identity
        self.max_anonymous_per_ip = max_anonymous_per_ip
        #: Datagrams longer than this are dropped before any parsing or decryption (None: no limit beyond the
        #: record layer's own 2^14 + 2048 bytes per record).
        self.max_datagram = max_datagram
        #: The current association of each address: an established session or a handshake.
        self.connections: dict[Address, DTLSConnection] = {}
        #: Counters: what was refused, evicted or replaced, and why.
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        #: Connections by the connection ID (RFC 9146) their peer puts in its records; RFC 9853 challenges.
        self._cids = CidRoutes(self._config.cid_length or 0, config.random, self.stats)
        #: Resumption: the session-ID cache (``None``: no session IDs) and the ticket keys (``None``: no tickets).
        self.session_cache = SessionCache(session_cache, config.session_lifetime) if session_cache else None
        self.ticket_keys = ticket_keys
        self._context = ServerContext(self.session_cache, ticket_keys, self._cids.new_cid)
        #: RFC 6347 4.2.1 lets a server skip the cookie exchange for a ClientHello that resumes a session it
        #: knows: 127 bytes and one round trip less. Off by default: session IDs and tickets travel in clear,
        #: so a replayed ClientHello from spoofed addresses would get handshake slots and a reply (1.8 times
        #: its size) without proving its address.
        self.resume_without_cookie = False
        #: A second handshake from the address of an established session, until its Finished verifies.
        self._successors: dict[Address, DTLSConnection] = {}
        self._slots: HandshakeSlots[DTLSConnection] = HandshakeSlots(
            max_handshakes, max_handshakes_per_ip or max(1, max_handshakes // 4))
        self._sessions: SessionTable[DTLSConnection] = SessionTable()
        self._out: list[tuple[bytes, Address]] = []
        self._events: deque[tuple[Address, Event]] = deque()
        # Timers, lazily: one heap entry per (address, successor?) at its earliest deadline; a later deadline
        # (an idle timeout moved by traffic) is re-armed only when the earlier entry fires.
        self._heap: list[tuple[float, int, Address, bool]] = []
        self._armed: dict[tuple[Address, bool], float] = {}
        self._counter = itertools.count()
        self._partial_hellos: OrderedDict[tuple[Address, int], _Partial] = OrderedDict()
        self._debug = logging.getLogger("iotdtls.server")
        self._log = RateLimitedLog(self._debug)

    @property
    def config(self) -> DTLSConfiguration:
        return self._config

    @property
    def max_handshakes(self) -> int:
        return self._slots.total

    @property
    def max_handshakes_per_ip(self) -> int:
        return self._slots.per_network

    @property
    def handshakes_in_progress(self) -> int:
        return len(self._slots)

    @property
    def sessions(self) -> int:
        """Established sessions."""
        return len(self._sessions)

    # -- sans-IO API -----------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if self.max_datagram is not None and len(data) > self.max_datagram:
            self.stats["dropped_oversize"] += 1
            return
        if self._cids.length and data[:1] == _TLS12_CID:
            self._route_by_cid(data, addr, now)
            return
        conn = self.connections.get(addr)
        if conn is not None and not self._is_client_hello(data):
            successor = self._successors.get(addr) if self._successors else None
            if successor is None:
                conn.receive_datagram(data, now)
                self._collect(conn, now)
            else:
                self._route_beside_successor(data, now, conn, successor)
            return
        self._stateless(data, addr, now, conn)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        heap, armed = self._heap, self._armed
        while heap and armed.get((heap[0][2], heap[0][3])) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> None:
        heap, armed = self._heap, self._armed
        while heap and heap[0][0] <= now:
            when, _, addr, second = heapq.heappop(heap)
            if armed.get((addr, second)) != when:
                continue
            del armed[(addr, second)]
            conn = (self._successors if second else self.connections).get(addr)
            if conn is not None:
                conn.handle_timer(now)
                self._collect(conn, now)

    def next_event(self) -> tuple[Address, Event] | None:
        return self._events.popleft() if self._events else None

    def send(self, addr: Address, data: bytes) -> None:
        conn = self.connections.get(addr)
        if conn is None:
            raise DTLSError("no connection for that address")
        conn.send(data)
        self._collect(conn, 0.0)

    def close(self, addr: Address, error: AlertError | None = None) -> None:
        """Close the session (or handshake) at ``addr``, and any second handshake beside it: with close_notify,
        or with ``error``'s fatal alert (e.g. ``access_denied`` for a device revoked while connected)."""
        for table in (self._successors, self.connections):
            conn = table.get(addr)
            if conn is not None:
                if error is None:
                    conn.close()
                else:
                    conn.fail(error)
                self._collect(conn, 0.0)

    def forget_sessions(self, identity: bytes) -> int:
        """Revocation: drop the cached sessions of ``identity`` so that it cannot resume them; returns how many.
        Tickets need nothing: a server resumes one only while its identity still has the same key."""
        return self.session_cache.purge_identity(identity) if self.session_cache is not None else 0

    def close_all(self) -> None:
        for addr in list(self.connections) + list(self._successors):
            self.close(addr)

    # -- internals: routing ----------------------------------------------------------------------
    @staticmethod
    def _is_client_hello(data: bytes) -> bool:
        """A plaintext (epoch 0) handshake record that carries a ClientHello (or a fragment of one)."""
        return len(data) >= 25 and data[0] == _HANDSHAKE and data[3:5] == b"\x00\x00" and \
            data[13] == _CLIENT_HELLO

    def _route_by_cid(self, data: bytes, addr: Address, now: float) -> None:
        """A tls12_cid record: to the connection that owns the CID, wherever it comes from. An authenticated
        record newer than any before from another address moves the session there (RFC 9146 section 6), or with
        RFC 9853 gets that address challenged first; a replayed or older record, or one that does not
        authenticate, moves nothing."""
        conn = self._cids.lookup(data)
        if conn is None:
            return
        if conn.peer == addr or not conn.is_established or self.connections.get(conn.peer) is not conn:
            conn.receive_datagram(data, now)
            self._collect(conn, now)
            return
        top = conn.read_window_state()[0]
        conn.receive_datagram(data, now)
        if conn.take_path_response():
            if self._cids.answered(conn, addr, now) and not conn.is_closed:
                self._move(conn, addr, now)  # RFC 9853: the new address answered our challenge
        elif conn.read_window_state()[0] > top and not conn.is_closed:
            if conn._rrc_on:
                record = self._cids.challenge(conn, addr, now)
                if record is not None:
                    self._out.append((record, addr))  # the session keeps sending to its validated address
            else:
                self._move(conn, addr, now)
        self._collect(conn, now)

    def _move(self, conn: DTLSConnection, new: Address, now: float) -> None:
        old = conn.peer
        while (occupant := self._successors.get(new) or self.connections.get(new)) is not None:
            # the previous user of the address (a NAT gave it to this device) is unreachable there now
            if occupant.is_closed:
                self._forget(occupant)
            else:
                self._drop_handshake(occupant, now, SessionEvicted("its address was taken by a moving session"))
        del self.connections[old]
        self._armed.pop((old, False), None)
        successor = self._successors.pop(old, None)
        if successor is not None:  # a handshake beside the session stays at the old address, on its own now
            self.connections[old] = successor
            when = self._armed.pop((old, True), None)
            if when is not None:
                self._armed[(old, False)] = when
                heapq.heappush(self._heap, (when, next(self._counter), old, False))
        conn.peer = new
        self.connections[new] = conn
        self.stats["address_changes"] += 1
        if self._debug.getEffectiveLevel() <= logging.DEBUG:
            self._debug.debug("server: session %s (%s) moved to %s", _where(old), _identity_text(conn), _where(new))
        self._events.append((new, PeerAddressChanged(old)))

    def _route_beside_successor(self, data: bytes, now: float, conn: DTLSConnection,
                                successor: DTLSConnection) -> None:
        """An established session and a new handshake share the address. Epoch-0 records belong to the
        handshake; a protected datagram goes to the session, and to the handshake only if the session did not
        authenticate any of it (the new client's Finished, or data that overtook it)."""
        if data[3:5] == b"\x00\x00" or not conn.is_established:
            successor.receive_datagram(data, now)
            self._collect(successor, now)
            return
        before = conn.read_window_state()
        conn.receive_datagram(data, now)
        authenticated = conn.read_window_state() != before
        self._collect(conn, now)
        if not authenticated and self._successors.get(conn.peer) is successor:
            successor.receive_datagram(data, now)
            self._collect(successor, now)

    def _stateless(self, data: bytes, addr: Address, now: float, existing: DTLSConnection | None) -> None:
        parsed = self._parse_hello(data, addr)
        if parsed is None:
            self.stats["dropped_invalid"] += 1
            return
        hello, body, msg_seq, rec_seq = parsed
        successor = self._successors.get(addr)
        for known in (existing, successor):
            if known is not None and not known.is_closed and hello.random == known.client_random:
                # A hello that created one of these connections, retransmitted or replayed: the connection
                # decides whether its peer is asking for a retransmission (no faster than its timer).
                known.receive_datagram(data, now)
                self._collect(known, now)
                return
        if msg_seq > MAX_HELLO_SEQ or rec_seq > MAX_SEQ - (1 << 16):
            # No client starts that high (message_seq counts HelloVerifyRequests); continuing would run our
            # own counters, which start from these values, out of their 16 / 48 bits.
            self.stats["dropped_invalid"] += 1
            return
        addr_bytes = repr(addr).encode()
        bare = hello_without_cookie(body)
        verified = not self._config.cookies or self._cookies.verify(hello.cookie, addr_bytes, bare, now)
        if not verified and self.resume_without_cookie and self._offers_known_session(hello):
            verified = True  # RFC 6347 4.2.1: a server MAY skip the cookie exchange when a session is resumed
        if not verified:
            cookie = self._cookies.make(addr_bytes, bare, now)
            w = Writer()
            push_hello_verify_request(w, HelloVerifyRequest(cookie=cookie, version=DTLS_1_0))
            hvr = w.data()
            payload = message_header(HandshakeType.HELLO_VERIFY_REQUEST, len(hvr), msg_seq) + hvr
            self._out.append((encode_plain(ContentType.HANDSHAKE, rec_seq, payload), addr))
            self.stats["hello_verify_sent"] += 1
            if self._debug.getEffectiveLevel() <= logging.DEBUG:
                self._debug.debug("server (%s): received ClientHello (seq %d%s): sent HelloVerifyRequest",
                                  _where(addr), msg_seq, ", stale or invalid cookie" if hello.cookie else "")
            return
        beside = existing is not None and existing.is_established
        # The handshake this one replaces at the same address gives its slot back first.
        replaced = successor if beside else existing
        if replaced is not None:
            self._drop_handshake(replaced, now, ConnectionReplaced("a newer handshake from the same address"))
        if not self._take_slot(addr, now):
            return
        conn = DTLSConnection(self._config, peer=addr, validate=False)
        if beside:
            self._successors[addr] = conn
            self.stats["replacements_started"] += 1
        else:
            self.connections[addr] = conn
        self._slots.add(conn, network_of(addr), now, next(self._counter))
        # The amplification budget starts from this exchange: this hello and the one the cookie answered, and
        # the HelloVerifyRequest already sent.
        received = 2 * len(data) - len(hello.cookie) if hello.cookie else len(data)
        sent = HELLO_VERIFY_LEN if self._config.cookies and hello.cookie else 0
        conn.accept(hello, body, msg_seq, rec_seq, now, self._dummy_psk_key, received=received, sent=sent,
                    context=self._context)
        if not conn.is_closed:
            self._cids.add(conn)
        self._collect(conn, now)

    def _offers_known_session(self, hello: ClientHello) -> bool:
        """The ClientHello offers a session this front holds (a cached session ID or a ticket that opens);
        whether it may be resumed is the connection's decision."""
        if not hello.session_id:
            return False
        if self.session_cache is not None and hello.session_id in self.session_cache:
            return True
        ticket = find_extension(hello.extensions, ExtensionType.SESSION_TICKET)
        return ticket is not None and self.ticket_keys is not None and \
            self.ticket_keys.open(ticket, self._config.wall_time()) is not None

    def _take_slot(self, addr: Address, now: float) -> bool:
        network = network_of(addr)
        admitted, victim = self._slots.admit(network, lambda c: _PROGRESS.get(c.state, 3))
        if not admitted:
            self.stats["dropped_full"] += 1  # the client retries on its timer
            if self._slots.count(network) >= self._slots.per_network:
                self.stats["dropped_per_ip"] += 1
                self._log("handshakes_per_ip", now, logging.WARNING,
                          "%d handshakes in progress from %s, its limit: new handshake from %s dropped, it will "
                          "retry", self._slots.count(network), _network_text(network), _where(addr))
            else:
                self._log("handshakes_full", now, logging.WARNING,
                          "handshake table full (%d in progress): new handshake from %s dropped, it will retry",
                          len(self._slots), _where(addr))
            return False
        if victim is not None:
            self.stats["handshakes_evicted"] += 1
            self._log("handshake_evicted", now, logging.WARNING,
                      "handshake table full: handshake from %s evicted for one from %s (%d in progress from %s)",
                      _where(victim.peer), _where(addr), self._slots.count(network_of(victim.peer)),
                      _network_text(network_of(victim.peer)))
            self._drop_handshake(victim, now, SessionEvicted("handshake slot given to a fairer share"))
        return True

    def _drop_handshake(self, conn: DTLSConnection, now: float, error: Exception) -> None:
        """End a handshake without a word to its peer (a reply could amplify)."""
        if not conn.is_closed:
            conn.abort(error)
        self._collect(conn, now)

    # -- internals: bookkeeping ------------------------------------------------------------------
    def _forget(self, conn: DTLSConnection) -> None:
        """Drop every trace of ``conn`` (its timer entry in the heap goes stale)."""
        addr = conn.peer
        second = self._successors.get(addr) is conn
        table = self._successors if second else self.connections
        if table.get(addr) is conn:
            del table[addr]
            self._armed.pop((addr, second), None)
            successor = None if second else self._successors.pop(addr, None)
            if successor is not None:
                # The session ended while a new handshake from its address was under way: the handshake is now
                # the address's only association, and completes or fails as a plain one.
                self.connections[addr] = successor
                when = self._armed.pop((addr, True), None)
                if when is not None:
                    self._armed[(addr, False)] = when
                    heapq.heappush(self._heap, (when, next(self._counter), addr, False))
        self._slots.discard(conn)
        self._sessions.discard(conn)
        self._cids.discard(conn)

    def _collect(self, conn: DTLSConnection, now: float) -> None:
        addr = conn.peer
        for dgram in conn.datagrams_to_send(now):
            self._out.append((dgram, addr))
        second = self._successors.get(addr) is conn
        if second:
            self._collect_successor(conn, addr, now)
            return
        completed = False
        active = False
        events = self._events
        while (event := conn.next_event()) is not None:
            if isinstance(event, DataReceived):
                active = True
            elif isinstance(event, HandshakeCompleted):
                completed = True
            events.append((addr, event))
        if conn.is_closed:
            if self.connections.get(addr) is conn or conn in self._slots or conn in self._sessions:
                self._forget(conn)
            return
        if completed:
            self._established(conn, addr, now)
        elif active:
            self._sessions.touch(conn)
        self._arm(conn, addr, False)

    def _collect_successor(self, conn: DTLSConnection, addr: Address, now: float) -> None:
        events = []
        while (event := conn.next_event()) is not None:
            events.append(event)
        if conn.is_closed:
            self._forget(conn)
            if not any(isinstance(e, HandshakeCompleted) for e in events):
                error = next((e.error for e in events if isinstance(e, ConnectionTerminated)), None)
                self.stats["replacements_failed"] += 1
                self._events.append((addr, ReplacementFailed(error)))
                return
        if not any(isinstance(e, HandshakeCompleted) for e in events):
            self._arm(conn, addr, True)
            return  # nothing a consumer of the session at this address should see yet
        # The new handshake's Finished verified: it takes the address over.
        del self._successors[addr]
        self._armed.pop((addr, True), None)
        old = self.connections.get(addr)
        if old is not None:
            if not old.is_closed:
                old.abort(ConnectionReplaced("the peer completed a new handshake from the same address"))
                self.stats["sessions_replaced"] += 1
            self._collect(old, now)
        self.connections[addr] = conn
        self._events.extend((addr, e) for e in events)
        if conn.is_closed:
            self._forget(conn)
            return
        self._established(conn, addr, now)
        self._arm(conn, addr, False)

    def _established(self, conn: DTLSConnection, addr: Address, now: float) -> None:
        """A handshake completed: it leaves the handshake table and joins the session table, fairly."""
        self._slots.discard(conn)
        network = network_of(addr)
        identity = conn.identity
        self._sessions.add(conn, identity, network)
        victims: list[tuple[DTLSConnection, str, str]] = []
        if identity and self.max_sessions_per_identity is not None:
            victims += [(c, "sessions_evicted_identity", "replaced by a newer session of the same identity")
                        for c in self._sessions.identity_excess(identity, self.max_sessions_per_identity)]
        elif not identity and self.max_anonymous_per_ip is not None:
            victims += [(c, "sessions_evicted_anonymous", "too many anonymous sessions from its network")
                        for c in self._sessions.anonymous_excess(network, self.max_anonymous_per_ip, conn)]
        for loser, stat, reason in victims:
            self._evict(loser, stat, reason, now)
        while len(self._sessions) > self.max_sessions:
            victim = self._sessions.eviction_victim(conn)
            if victim is None:
                break
            if victim is conn:
                self._evict(conn, "sessions_refused_full", "session table full of authenticated sessions", now)
                break
            self._evict(victim, "sessions_evicted_full", "session table full: least recently active", now)

    def _evict(self, conn: DTLSConnection, stat: str, reason: str, now: float) -> None:
        self.stats[stat] += 1
        self._log(stat, now, logging.WARNING, "session %s (%s) closed: %s", _where(conn.peer), _identity_text(conn),
                  reason)
        conn.close(SessionEvicted(reason))
        self._collect(conn, now)

    def _arm(self, conn: DTLSConnection, addr: Address, second: bool) -> None:
        when = conn.get_timer()
        key = (addr, second)
        armed = self._armed.get(key)
        if when is None:
            if armed is not None:
                del self._armed[key]
            return
        if armed is not None and armed <= when:
            return  # an earlier entry is armed: it re-arms this one when it fires
        self._armed[key] = when
        heapq.heappush(self._heap, (when, next(self._counter), addr, second))
        if len(self._heap) > 4 * len(self._armed) + 64:
            self._heap = [(t, next(self._counter), a, s) for (a, s), t in self._armed.items()]
            heapq.heapify(self._heap)

    # -- internals: ClientHello parsing ----------------------------------------------------------
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


_where = where


def _identity_text(conn: DTLSConnection) -> str:
    return identity_text(conn.identity)


def _network_text(network: Hashable) -> str:
    if isinstance(network, tuple) and len(network) == 2 and network[0] == "v6":
        prefix = int(network[1]).to_bytes(8, "big").hex()
        return ":".join(prefix[i : i + 4] for i in range(0, 16, 4)) + "::/64"
    return str(network)
