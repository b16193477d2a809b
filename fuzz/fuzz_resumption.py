"""Fuzz target (e): what session resumption reads from outside. ``Session.from_bytes`` (a client's saved session,
the plaintext inside a ticket), ``TicketKeys.open`` (a ticket from any ClientHello, at any time),
``TicketKeys.from_bytes`` (the server's key file) and seal -> open round trips.

Input: one mode byte, then: mode 0, a Session encoding; 1, a time byte and a ticket, opened with the keys that
sealed the reference tickets; 2, a ticket key file; 3, a Session encoding that is sealed, opened and corrupted.
Bugs: ``from_bytes`` raising anything but DecodeError, or accepting a second encoding of a session (parse and
write must be inverses), or a ``repr`` that shows the master secret; ``open`` raising, or returning a session for
anything but a ticket it sealed, or another session than it sealed, or one that cannot be resumed then; ``seal``
raising anything but the documented ValueError; a sealed session not coming back from ``open``, or a ticket with
one byte changed still opening.
"""

from __future__ import annotations

import math
from dataclasses import replace

from _harness import FuzzBug, instrumented, main

with instrumented(__name__ == "__main__"):
    from fixed_pki import WALL_TIME
    from helpers import seeded

    from iotdtls import Session, TicketKeys
    from iotdtls.errors import DecodeError
    from iotdtls.resumption import psk_fingerprint

LIFETIME = 7 * 86400.0  # the keys' lifetime: a sealed session's lifetime is capped at it
#: Reference sessions: PSK (server side, with its fingerprint), public key with a name, float times.
SESSIONS = [
    Session(cipher_suite=0xC0A8, master_secret=bytes(range(48)), extended_master_secret=True, identity=b"dev1",
            session_id=b"\x11" * 8, created=WALL_TIME, lifetime=86400.0, psk_fingerprint=psk_fingerprint(b"k" * 16)),
    Session(cipher_suite=0xC0AE, master_secret=bytes(range(1, 49)), extended_master_secret=True,
            identity=b"ni:///sha-256;x", created=WALL_TIME - 10.5, lifetime=LIFETIME * 2, peer_kind=2,
            peer_spki=bytes(91), peer_name="gateway \u00e9"),
    Session(cipher_suite=0xC0A4, master_secret=bytes(48), extended_master_secret=True, identity=b"",
            ticket=b"t" * 40, created=WALL_TIME + 100, lifetime=600.0),
]


def _keys() -> TicketKeys:
    """A fresh copy of the reference keys (``open`` drops expired keys: no input may change the next one's)."""
    return TicketKeys.from_bytes(KEYS_FILE, seeded(4), lifetime=LIFETIME)


def _as_sealed(session: Session) -> Session:
    """What a ticket holds of ``session``: no session ID or ticket, whole seconds, the lifetime capped."""
    return replace(session, session_id=b"", ticket=b"", created=float(math.floor(session.created)),
                   lifetime=float(math.floor(min(session.lifetime, LIFETIME))))


_reference = TicketKeys(seeded(3), lifetime=LIFETIME)
_reference.rotate(WALL_TIME - 3600)
#: Genuine tickets and the session each must open to.
TICKETS = {_reference.seal(s, WALL_TIME): _as_sealed(s) for s in SESSIONS}
KEYS_FILE = _reference.to_bytes()
#: Times an input can open a ticket at (a byte picks one): around the sessions' lives, and beyond.
TIMES = [WALL_TIME, WALL_TIME + 1, WALL_TIME + 599, WALL_TIME + 86399, WALL_TIME + LIFETIME, WALL_TIME - 300,
         WALL_TIME - 400, 0.0, -1.0, 1e300, math.inf, -math.inf, math.nan, 2.0**32, 2.0**53]


def _session(data: bytes) -> None:
    try:
        session = Session.from_bytes(data)
    except DecodeError:
        return
    encoded = session.to_bytes()
    if encoded != data:
        raise FuzzBug("Session.from_bytes accepted an encoding that to_bytes does not write")
    if Session.from_bytes(encoded) != session:
        raise FuzzBug("Session does not survive to_bytes -> from_bytes")
    shown = repr(session) + str(session)
    if session.master_secret.hex() in shown or repr(session.master_secret) in shown:
        raise FuzzBug("a Session's repr shows the master secret")


def _open(data: bytes) -> None:
    if not data:
        return
    now, ticket = TIMES[data[0] % len(TIMES)], data[1:]
    opened = _keys().open(ticket, now)
    if opened is None:
        return
    want = TICKETS.get(ticket)
    if want is None or opened != want:
        raise FuzzBug("TicketKeys.open returned a session for a ticket it did not seal, or another session")
    if not opened.resumable(now):
        raise FuzzBug("TicketKeys.open returned a session that cannot be resumed now")


def _key_file(data: bytes) -> None:
    try:
        keys = TicketKeys.from_bytes(data, seeded(5), lifetime=LIFETIME)
    except DecodeError:
        return
    if len(keys) > keys.max_keys:
        raise FuzzBug("more ticket keys loaded than max_keys")
    TicketKeys.from_bytes(keys.to_bytes(), seeded(5), lifetime=LIFETIME)
    for ticket, want in TICKETS.items():
        opened = keys.open(ticket, WALL_TIME)
        if opened is not None and opened != want:
            raise FuzzBug("keys from a file opened a reference ticket to another session")
    _roundtrip(keys, SESSIONS[0], WALL_TIME, len(data))


def _roundtrip(keys: TicketKeys, session: Session, now: float, salt: int) -> None:
    try:
        ticket = keys.seal(session, now)
    except ValueError:
        if _as_sealed(session).resumable(now):
            raise
        return  # documented: a session that cannot be resumed (in whole seconds) is not sealed
    if keys.open(ticket, now) != _as_sealed(session):
        raise FuzzBug("a sealed session does not come back from open")
    bad = bytearray(ticket)
    pos = (salt * 131 + 7) % len(bad)
    bad[pos] ^= 1 + salt % 255
    if keys.open(bytes(bad), now) is not None:
        raise FuzzBug(f"a ticket with byte {pos} changed still opens")


def _seal(data: bytes) -> None:
    try:
        session = Session.from_bytes(data)
    except DecodeError:
        return
    now = session.created + (data[-1] if data else 0)
    if math.isfinite(now):
        _roundtrip(_keys(), session, now, len(data))


MODES = [_session, _open, _key_file, _seal]


def test_one_input(data: bytes) -> None:
    if data:
        MODES[data[0] % len(MODES)](data[1:])


if __name__ == "__main__":
    main(test_one_input)
