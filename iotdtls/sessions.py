"""What DTLS 1.2 session resumption keeps (iotdtls.resumption gathers the public names): :class:`Session`, what
both ends keep of a completed handshake, with a versioned binary encoding, and :class:`SessionCache`, the server's
session-ID cache (RFC 5246 section 7.3), bounded (LRU by count), whose entries expire. Sans-IO: time (``now``,
wall-clock seconds since the epoch) is an argument.

Encoding of a :class:`Session` (version 1), every integer big-endian::

    version        uint8 = 1
    flags          uint8: 0x01 extended master secret, 0x02 times as uint32 seconds (else float64),
                   0x04 session_id, 0x08 ticket, 0x10 psk_fingerprint, 0x20 peer_kind, 0x40 peer_spki,
                   0x80 peer_name present
    cipher_suite   uint16
    master_secret  48 bytes
    created        uint32 or float64
    lifetime       uint32 or float64
    identity       uint16 length + bytes
    [session_id    uint8 length (1..32) + bytes]
    [ticket        uint16 length (1..65535) + bytes]
    [psk_fingerprint  8 bytes]
    [peer_kind     uint8]
    [peer_spki     uint16 length (1..65535) + bytes]
    [peer_name     uint16 length + UTF-8]

Each session has exactly one encoding (whole-second times in range always use the uint32 form, an empty
optional field is left out): the parser rejects anything else, so parsing and writing are inverses.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .buffer import Buffer, Writer
from .errors import DecodeError

Random = Callable[[int], bytes]

SESSION_FORMAT_VERSION = 1
MASTER_SECRET_LEN = 48
PSK_FINGERPRINT_LEN = 8
MAX_SESSION_ID_LEN = 32
#: A session established up to this many seconds "in the future" (a clock stepped back) still resumes.
MAX_CLOCK_SKEW = 300.0

_EMS, _INT_TIMES, _SID, _TICKET, _PSKFP, _KIND, _SPKI, _NAME = (1 << i for i in range(8))
_U32 = 1 << 32
_F64 = struct.Struct("!d")


def psk_fingerprint(psk: bytes) -> bytes:
    """8 bytes that bind a session to the PSK it was made with (a resumption after a PSK change is refused)."""
    return hashlib.sha256(b"iotdtls resumption psk" + psk).digest()[:PSK_FINGERPRINT_LEN]


def _check_vector(name: str, value: object, maximum: int) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes")
    if len(value) > maximum:
        raise ValueError(f"{name} longer than {maximum} bytes")


def _whole_seconds(created: float, lifetime: float) -> bool:
    return all(float(t).is_integer() and 0 <= t < _U32 for t in (created, lifetime))


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class Session:
    """What both sides keep of a completed handshake to resume it."""

    cipher_suite: int
    master_secret: bytes  # 48 bytes
    extended_master_secret: bool  # only EMS sessions are ever resumed
    identity: bytes  # PSK identity, or the peer's public-key identity (UTF-8), may be empty
    session_id: bytes = b""  # 0..32 bytes
    ticket: bytes = b""  # client side: the opaque RFC 5077 ticket (0..65535 bytes)
    created: float = 0.0  # wall-clock seconds when the session was established
    lifetime: float = 0.0  # seconds it may be resumed for (0: do not resume)
    psk_fingerprint: bytes = b""  # server side: 8 bytes binding the session to the PSK it was made with
    peer_kind: int | None = None  # public-key sessions: CertificateType of the peer credential
    peer_spki: bytes = b""  # public-key sessions: the peer's DER SubjectPublicKeyInfo
    peer_name: str | None = None  # public-key sessions: the trust callback's name for the peer

    def __post_init__(self) -> None:
        if not isinstance(self.cipher_suite, int) or not 0 <= self.cipher_suite <= 0xFFFF:
            raise ValueError("cipher_suite must be a uint16")
        if not isinstance(self.master_secret, bytes) or len(self.master_secret) != MASTER_SECRET_LEN:
            raise ValueError(f"master_secret must be {MASTER_SECRET_LEN} bytes")
        if not isinstance(self.extended_master_secret, bool):
            raise TypeError("extended_master_secret must be a bool")
        _check_vector("identity", self.identity, 0xFFFF)
        _check_vector("session_id", self.session_id, MAX_SESSION_ID_LEN)
        _check_vector("ticket", self.ticket, 0xFFFF)
        _check_vector("psk_fingerprint", self.psk_fingerprint, PSK_FINGERPRINT_LEN)
        if len(self.psk_fingerprint) not in (0, PSK_FINGERPRINT_LEN):
            raise ValueError(f"psk_fingerprint must be empty or {PSK_FINGERPRINT_LEN} bytes")
        if self.peer_kind is not None and (not isinstance(self.peer_kind, int) or not 0 <= self.peer_kind <= 0xFF):
            raise ValueError("peer_kind must be None or a uint8")
        _check_vector("peer_spki", self.peer_spki, 0xFFFF)
        if self.peer_name is not None:
            if not isinstance(self.peer_name, str):
                raise TypeError("peer_name must be None or a str")
            if len(self.peer_name.encode("utf-8")) > 0xFFFF:  # UnicodeEncodeError is a ValueError
                raise ValueError("peer_name longer than 65535 bytes of UTF-8")
        for name in ("created", "lifetime"):
            t = getattr(self, name)
            if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
                raise ValueError(f"{name} must be a finite number")
        if self.lifetime < 0:
            raise ValueError("lifetime must not be negative")

    def expired(self, now: float) -> bool:
        """True when the session may no longer be resumed at ``now`` (also when ``now`` lies more than
        :data:`MAX_CLOCK_SKEW` seconds before ``created``)."""
        return now >= self.created + self.lifetime or now < self.created - MAX_CLOCK_SKEW

    def resumable(self, now: float) -> bool:
        """An EMS session that has not expired at ``now``."""
        return self.extended_master_secret and not self.expired(now)

    def matches_psk(self, psk: bytes) -> bool:
        """Whether this (server-side) session was made with ``psk`` (constant-time)."""
        return len(self.psk_fingerprint) == PSK_FINGERPRINT_LEN and hmac.compare_digest(
            self.psk_fingerprint, psk_fingerprint(psk))

    # -- comparison and display (the master secret is compared in constant time and never shown) ---------
    def _public(self) -> tuple[object, ...]:
        return (self.cipher_suite, self.extended_master_secret, self.identity, self.session_id, self.ticket,
                self.created, self.lifetime, self.psk_fingerprint, self.peer_kind, self.peer_spki, self.peer_name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Session):
            return NotImplemented
        same_secret = hmac.compare_digest(self.master_secret, other.master_secret)
        return same_secret and self._public() == other._public()

    def __hash__(self) -> int:
        return hash(self._public())

    def __repr__(self) -> str:
        parts = [f"cipher_suite=0x{self.cipher_suite:04X}", "master_secret=<hidden>",
                 f"extended_master_secret={self.extended_master_secret}", f"identity={self.identity!r}",
                 f"session_id={self.session_id.hex()!r}", f"ticket=<{len(self.ticket)} bytes>",
                 f"created={self.created!r}", f"lifetime={self.lifetime!r}",
                 f"psk_fingerprint=<{len(self.psk_fingerprint)} bytes>"]
        if self.peer_kind is not None or self.peer_spki or self.peer_name is not None:
            parts += [f"peer_kind={self.peer_kind!r}", f"peer_spki=<{len(self.peer_spki)} bytes>",
                      f"peer_name={self.peer_name!r}"]
        return f"Session({', '.join(parts)})"

    __str__ = __repr__

    # -- encoding ---------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        whole = _whole_seconds(self.created, self.lifetime)
        flags = ((_EMS if self.extended_master_secret else 0) | (_INT_TIMES if whole else 0)
                 | (_SID if self.session_id else 0) | (_TICKET if self.ticket else 0)
                 | (_PSKFP if self.psk_fingerprint else 0) | (_KIND if self.peer_kind is not None else 0)
                 | (_SPKI if self.peer_spki else 0) | (_NAME if self.peer_name is not None else 0))
        w = Writer()
        w.push_uint8(SESSION_FORMAT_VERSION)
        w.push_uint8(flags)
        w.push_uint16(self.cipher_suite)
        w.push_bytes(self.master_secret)
        for t in (self.created, self.lifetime):
            w.push_bytes(int(t).to_bytes(4, "big") if whole else _F64.pack(float(t)))
        w.push_vector(2, self.identity)
        if self.session_id:
            w.push_vector(1, self.session_id)
        if self.ticket:
            w.push_vector(2, self.ticket)
        w.push_bytes(self.psk_fingerprint)
        if self.peer_kind is not None:
            w.push_uint8(self.peer_kind)
        if self.peer_spki:
            w.push_vector(2, self.peer_spki)
        if self.peer_name is not None:
            w.push_vector(2, self.peer_name.encode("utf-8"))
        return w.data()

    @classmethod
    def from_bytes(cls, data: bytes) -> Session:
        """Parse :meth:`to_bytes` output; raises :class:`~iotdtls.errors.DecodeError` on any other input."""
        buf = Buffer(bytes(data))
        if buf.pull_uint8() != SESSION_FORMAT_VERSION:
            raise DecodeError("unknown session encoding version")
        flags = buf.pull_uint8()
        suite = buf.pull_uint16()
        master_secret = buf.pull_bytes(MASTER_SECRET_LEN)
        times = [float(int.from_bytes(buf.pull_bytes(4), "big")) if flags & _INT_TIMES
                 else _F64.unpack(buf.pull_bytes(8))[0] for _ in range(2)]
        created, lifetime = times
        if not flags & _INT_TIMES and all(math.isfinite(t) for t in times) and _whole_seconds(created, lifetime):
            raise DecodeError("whole-second times in the float64 form")
        identity = buf.pull_vector(2)
        session_id = buf.pull_vector(1, 1, MAX_SESSION_ID_LEN) if flags & _SID else b""
        ticket = buf.pull_vector(2, 1) if flags & _TICKET else b""
        fingerprint = buf.pull_bytes(PSK_FINGERPRINT_LEN) if flags & _PSKFP else b""
        peer_kind = buf.pull_uint8() if flags & _KIND else None
        peer_spki = buf.pull_vector(2, 1) if flags & _SPKI else b""
        peer_name = None
        if flags & _NAME:
            try:
                peer_name = buf.pull_vector(2).decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError("peer_name is not UTF-8") from None
        if not buf.eof():
            raise DecodeError("trailing bytes after the session")
        try:
            return cls(suite, master_secret, bool(flags & _EMS), identity, session_id, ticket, created, lifetime,
                       fingerprint, peer_kind, peer_spki, peer_name)
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"invalid session: {exc}") from None


class SessionCache:
    """Server: bounded session-ID cache (LRU by count), entries expire; purge by identity (revocation).

    An entry expires with its session (:meth:`Session.expired`) or ``lifetime`` seconds after it was put,
    whichever comes first. Expired entries are dropped when looked up, by :meth:`purge_expired`, or as the least
    recently used ones when the cache is full.
    """

    def __init__(self, max_entries: int = 1000, lifetime: float = 86400.0) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not (math.isfinite(lifetime) and lifetime > 0):
            raise ValueError("lifetime must be a positive number of seconds")
        self._max = max_entries
        self._lifetime = lifetime
        self._entries: OrderedDict[bytes, tuple[Session, float]] = OrderedDict()

    @property
    def max_entries(self) -> int:
        return self._max

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._entries

    def __repr__(self) -> str:
        return f"SessionCache({len(self._entries)} of {self._max} entries, lifetime={self._lifetime!r})"

    def new_session_id(self, random: Random, length: int = 8) -> bytes:
        """A random session ID of ``length`` bytes (1..32) that is not in the cache."""
        if not 1 <= length <= MAX_SESSION_ID_LEN:
            raise ValueError(f"session ID length must be 1..{MAX_SESSION_ID_LEN}")
        for _ in range(16):
            sid = random(length)
            if len(sid) != length:
                raise ValueError("random source returned the wrong number of bytes")
            if sid not in self._entries:
                return bytes(sid)
        raise RuntimeError("random source keeps repeating session IDs")

    def put(self, session: Session, now: float) -> None:
        """Store ``session`` under its (non-empty) ``session_id``, replacing an entry with the same ID. A session
        that cannot be resumed at ``now`` (no extended master secret, no lifetime, expired) is not stored."""
        sid = session.session_id
        if not sid:
            raise ValueError("a cached session needs a session_id")
        self._entries.pop(sid, None)
        if not session.resumable(now):
            return
        self._entries[sid] = (session, now)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def _live(self, entry: tuple[Session, float], now: float) -> bool:
        session, stored = entry
        return session.resumable(now) and stored - MAX_CLOCK_SKEW <= now < stored + self._lifetime

    def get(self, session_id: bytes, now: float) -> Session | None:
        """The session with that ID, or None when unknown or expired (an expired entry is dropped)."""
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if not self._live(entry, now):
            del self._entries[session_id]
            return None
        self._entries.move_to_end(session_id)
        return entry[0]

    def remove(self, session_id: bytes) -> None:
        self._entries.pop(session_id, None)

    def purge_identity(self, identity: bytes) -> int:
        """Drop every session of ``identity`` (a revoked PSK identity or peer); returns how many."""
        doomed = [sid for sid, (s, _) in self._entries.items() if s.identity == identity]
        for sid in doomed:
            del self._entries[sid]
        return len(doomed)

    def purge_expired(self, now: float) -> int:
        """Drop every entry expired at ``now``; returns how many."""
        doomed = [sid for sid, entry in self._entries.items() if not self._live(entry, now)]
        for sid in doomed:
            del self._entries[sid]
        return len(doomed)
