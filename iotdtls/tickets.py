"""RFC 5077 session tickets (iotdtls.resumption gathers the public names): :class:`TicketKeys`, the server's
rotating AES-128-GCM keys that seal a :class:`~iotdtls.sessions.Session` into a ticket, saved atomically (0600).
Sans-IO but for :meth:`TicketKeys.save` and :meth:`TicketKeys.load`: time and randomness are arguments."""

from __future__ import annotations

import math
import os
from dataclasses import replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .buffer import Buffer, Writer
from .errors import DecodeError
from .secret_files import read_bounded, write_secret_file
from .sessions import _F64, Random, Session

TICKET_KEY_NAME_LEN = 4
TICKET_NONCE_LEN = 12
TICKET_TAG_LEN = 16
TICKET_KEY_LEN = 16
#: key_name + nonce + GCM tag around the session state
TICKET_OVERHEAD = TICKET_KEY_NAME_LEN + TICKET_NONCE_LEN + TICKET_TAG_LEN
MAX_TICKET_LEN = 0xFFFF
#: NIST SP 800-38D allows 2**32 random 96-bit nonces per key; a key is retired well before.
MAX_SEALS_PER_KEY = 1 << 30
_KEYS_MAGIC = b"iotdtls ticket keys\x00"
_KEYS_VERSION = 1
_MAX_KEYS_FILE = 64 * 1024


class _TicketKey:
    __slots__ = ("aead", "last_used", "name", "sealed", "secret", "started")

    def __init__(self, name: bytes, secret: bytes, started: float, last_used: float, sealed: int = 0) -> None:
        self.name = name
        self.secret = secret
        self.aead = AESGCM(secret)
        self.started = started  # when it became the encryption key
        self.last_used = last_used  # its last use for encryption (started until then)
        self.sealed = sealed  # tickets it has sealed

    def __repr__(self) -> str:
        return f"_TicketKey(name={self.name.hex()}, started={self.started!r}, last_used={self.last_used!r})"


def _check_time(now: float) -> None:
    if not math.isfinite(now):
        raise ValueError("now must be a finite number of seconds")


class TicketKeys:
    """Server: RFC 5077 ticket protection with rotating keys.

    The newest key seals new tickets for ``rotation`` seconds (or until it has sealed
    :data:`MAX_SEALS_PER_KEY`); afterwards it only opens them, until ``lifetime`` seconds after its last use for
    sealing, when it is dropped. A ticket is ``key_name (4) || nonce (12) || AES-128-GCM(Session.to_bytes())``
    with its 16-byte tag, the key_name as associated data. A sealed session's lifetime is capped at ``lifetime``
    and its times are rounded down to whole seconds (the compact encoding), so a ticket expires no later than
    its key is dropped. At most :attr:`max_keys` keys live: a forced :meth:`rotate` beyond that drops the oldest.

    ``needs_save`` is set when a key was added or dropped since the last :meth:`save` or load: a server that
    persists its keys saves then, so that a restart still opens the tickets it issued.
    """

    def __init__(self, random: Random, *, rotation: float = 86400.0, lifetime: float = 7 * 86400.0) -> None:
        for name, value in (("rotation", rotation), ("lifetime", lifetime)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds")
        self._random = random
        self._rotation = float(rotation)
        self._lifetime = float(lifetime)
        self._keys: list[_TicketKey] = []  # oldest first; the last one seals while in its rotation period
        self._by_name: dict[bytes, _TicketKey] = {}
        self.max_keys = math.ceil(lifetime / rotation) + 2
        self.needs_save = False

    @property
    def rotation(self) -> float:
        return self._rotation

    @property
    def lifetime(self) -> float:
        return self._lifetime

    @property
    def key_names(self) -> list[bytes]:
        """Names of the live keys, oldest first (they are public: every ticket starts with one)."""
        return [k.name for k in self._keys]

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        names = ", ".join(k.name.hex() for k in self._keys)
        return f"TicketKeys(keys=[{names}], rotation={self._rotation!r}, lifetime={self._lifetime!r})"

    def _drop(self, key: _TicketKey) -> None:
        self._keys.remove(key)
        del self._by_name[key.name]
        self.needs_save = True

    def _expire(self, now: float) -> None:
        for key in [k for k in self._keys if now >= k.last_used + self._lifetime]:
            self._drop(key)

    def _add(self, key: _TicketKey) -> None:
        self._keys.append(key)
        self._by_name[key.name] = key
        while len(self._keys) > self.max_keys:
            self._drop(self._keys[0])
        self.needs_save = True

    def _random_bytes(self, n: int) -> bytes:
        value = self._random(n)
        if len(value) != n:
            raise ValueError("random source returned the wrong number of bytes")
        return bytes(value)

    def rotate(self, now: float) -> None:
        """Make a new key the sealing key from ``now`` on (the old ones keep opening their tickets)."""
        _check_time(now)
        self._expire(now)
        for _ in range(16):
            name = self._random_bytes(TICKET_KEY_NAME_LEN)
            if name not in self._by_name:
                break
        else:
            raise RuntimeError("random source keeps repeating ticket key names")
        self._add(_TicketKey(name, self._random_bytes(TICKET_KEY_LEN), now, now))

    def _sealing_key(self, now: float) -> _TicketKey:
        self._expire(now)
        if self._keys:
            key = self._keys[-1]
            if now < key.started + self._rotation and key.sealed < MAX_SEALS_PER_KEY:
                return key
        self.rotate(now)
        return self._keys[-1]

    def seal(self, session: Session, now: float) -> bytes:
        """A ticket holding ``session`` (without its session_id and ticket). Raises ValueError for a session that
        cannot be resumed (no extended master secret, lifetime under a second, expired)."""
        _check_time(now)
        state = replace(session, session_id=b"", ticket=b"", created=float(math.floor(session.created)),
                        lifetime=float(math.floor(min(session.lifetime, self._lifetime))))
        if not state.resumable(now):
            raise ValueError("only an unexpired extended-master-secret session with a lifetime can be sealed")
        key = self._sealing_key(now)
        nonce = self._random_bytes(TICKET_NONCE_LEN)
        key.sealed += 1
        key.last_used = max(key.last_used, now)
        return key.name + nonce + key.aead.encrypt(nonce, state.to_bytes(), key.name)

    def open(self, ticket: bytes, now: float) -> Session | None:
        """The session in ``ticket``, or None (unknown or dropped key, bad tag, malformed, expired, not EMS).
        Never raises on bad input."""
        try:
            data = bytes(ticket)
            if not TICKET_OVERHEAD < len(data) <= MAX_TICKET_LEN or not math.isfinite(now):
                return None
            self._expire(now)
            key = self._by_name.get(data[:TICKET_KEY_NAME_LEN])
            if key is None:
                return None
            nonce_end = TICKET_KEY_NAME_LEN + TICKET_NONCE_LEN
            state = key.aead.decrypt(data[TICKET_KEY_NAME_LEN:nonce_end], data[nonce_end:], key.name)
            session = Session.from_bytes(state)
        except (InvalidTag, DecodeError, TypeError, ValueError):
            return None
        return session if session.resumable(now) else None

    # -- persistence ------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        w = Writer()
        w.push_bytes(_KEYS_MAGIC)
        w.push_uint8(_KEYS_VERSION)
        w.push_uint8(len(self._keys))
        for k in self._keys:
            w.push_bytes(k.name + k.secret + _F64.pack(k.started) + _F64.pack(k.last_used))
            w.push_uint48(min(k.sealed, (1 << 48) - 1))
        return w.data()

    @classmethod
    def from_bytes(cls, data: bytes, random: Random, *, rotation: float = 86400.0,
                   lifetime: float = 7 * 86400.0) -> TicketKeys:
        """Keys saved by :meth:`to_bytes`; raises :class:`~iotdtls.errors.DecodeError` on malformed data.

        A restarted server cannot know whether a key sealed tickets after it was saved, so each key counts as
        last used at the end of its sealing period (when its successor started, or ``rotation`` after its own
        start): it lives at most ``rotation`` longer than it would have, and never shorter."""
        keys = cls(random, rotation=rotation, lifetime=lifetime)
        buf = Buffer(bytes(data))
        if buf.pull_bytes(len(_KEYS_MAGIC)) != _KEYS_MAGIC:
            raise DecodeError("not a ticket key file")
        if buf.pull_uint8() != _KEYS_VERSION:
            raise DecodeError("unknown ticket key file version")
        loaded: list[_TicketKey] = []
        for _ in range(buf.pull_uint8()):
            name = buf.pull_bytes(TICKET_KEY_NAME_LEN)
            secret = buf.pull_bytes(TICKET_KEY_LEN)
            started, last_used = (_F64.unpack(buf.pull_bytes(8))[0] for _ in range(2))
            sealed = buf.pull_uint48()
            if not (math.isfinite(started) and math.isfinite(last_used)):
                raise DecodeError("ticket key times must be finite")
            if any(name == k.name for k in loaded):
                raise DecodeError("duplicate ticket key name")
            loaded.append(_TicketKey(name, secret, started, last_used, sealed))
        if not buf.eof():
            raise DecodeError("trailing bytes after the ticket keys")
        for k, successor in zip(loaded, [*loaded[1:], None], strict=False):  # a file with no key loads empty
            end = k.started + keys._rotation
            if successor is not None:
                end = min(end, successor.started)
            k.last_used = max(k.last_used, end)
        for k in loaded[-keys.max_keys:]:
            keys._add(k)
        keys.needs_save = False
        return keys

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the keys to ``path`` atomically (temporary file, fsync, rename), readable by the owner only."""
        write_secret_file(path, self.to_bytes())
        self.needs_save = False

    @classmethod
    def load(cls, path: str | os.PathLike[str], random: Random, *, rotation: float = 86400.0,
             lifetime: float = 7 * 86400.0) -> TicketKeys:
        """Keys saved by :meth:`save`: OSError when unreadable, DecodeError when malformed."""
        data = read_bounded(path, _MAX_KEYS_FILE, "ticket key file")
        return cls.from_bytes(data, random, rotation=rotation, lifetime=lifetime)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str], random: Random, now: float, *,
                       rotation: float = 86400.0, lifetime: float = 7 * 86400.0) -> TicketKeys:
        """:meth:`load`, or when there is no file yet, new keys with a first key made at ``now``, saved to
        ``path``. A file that exists but is malformed raises (keys are not silently thrown away)."""
        try:
            return cls.load(path, random, rotation=rotation, lifetime=lifetime)
        except FileNotFoundError:
            pass
        keys = cls(random, rotation=rotation, lifetime=lifetime)
        keys.rotate(now)
        keys.save(path)
        return keys
