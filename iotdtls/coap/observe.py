"""Observers of the CoAPs server (RFC 7641), bounded.

* At most ``max_per_session`` observations per session; a registration beyond that is served as a plain
  response without Observe (RFC 7641 section 4.1 allows the server to decline).
* Non-confirmable notifications are confirmable at least every ``con_every`` notifications and every
  ``con_interval`` seconds (RFC 7641 section 4.5: at least every 24 hours), so an observer that went away is
  noticed: an unacknowledged confirmable notification ends its observations.
* While a confirmable notification is outstanding, newer notifications of that observation are held, each
  replacing the one before (section 4.5.2: only the newest state matters); the last one goes out when the
  outstanding one is acknowledged.

The registry holds the bookkeeping only; the glue in :mod:`iotdtls.coap.manager` sends. No asyncio, no sockets:
``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

P = TypeVar("P")

#: RFC 7641 section 4.5: a notification is sent confirmable at least every 24 hours.
CON_INTERVAL = 24 * 3600.0
#: ... and here also every this many notifications (Californium's NOTIFICATION_CHECK_INTERVAL_COUNT).
CON_EVERY = 100


class Observation(Generic[P]):
    """One observer: the registration's token, how it registered, and its confirmable-notification state."""

    __slots__ = ("confirmable", "established", "in_flight", "last_con", "pending", "since_con", "token")

    def __init__(self, token: bytes, confirmable: bool, now: float) -> None:
        self.token = token
        #: registered with a confirmable request: aiocoap then sends every notification confirmable
        self.confirmable = confirmable
        #: the first response (with Observe) went out; later responses with Observe are notifications
        self.established = False
        self.last_con = now
        self.since_con = 0
        #: message ID of the confirmable notification awaiting its ACK
        self.in_flight: int | None = None
        #: the newest notification held back while one is in flight
        self.pending: P | None = None


class ObserverRegistry(Generic[P]):
    """Observations per session; ``P`` is whatever the glue holds back as a pending notification."""

    def __init__(self, *, max_per_session: int, con_every: int = CON_EVERY,
                 con_interval: float = CON_INTERVAL) -> None:
        self.max_per_session = max_per_session
        self.con_every = con_every
        self.con_interval = con_interval
        self._sessions: dict[Hashable, dict[bytes, Observation[P]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def session_count(self, session: Hashable) -> int:
        return len(self._sessions.get(session, ()))

    def reserve(self, session: Hashable, token: bytes, confirmable: bool, now: float,
                live: Callable[[bytes], bool]) -> bool:
        """A registration (Observe: 0) arrived: take a place for it, or False if the session has no room.

        ``live(token)`` tells whether an observation is still running (the glue asks aiocoap); ended ones free
        their place here. A registration with the token of a running one replaces it."""
        observations = self._sessions.setdefault(session, {})
        if token not in observations and len(observations) >= self.max_per_session:
            for other in [t for t in observations if not live(t)]:
                del observations[other]
                self._count -= 1
            if len(observations) >= self.max_per_session:
                return False
        if token not in observations:
            self._count += 1
        observations[token] = Observation(token, confirmable, now)
        return True

    def get(self, session: Hashable, token: bytes) -> Observation[P] | None:
        observations = self._sessions.get(session)
        return observations.get(token) if observations is not None else None

    def drop(self, session: Hashable, token: bytes) -> Observation[P] | None:
        observations = self._sessions.get(session)
        if observations is None:
            return None
        found = observations.pop(token, None)
        if found is not None:
            self._count -= 1
        if not observations:
            del self._sessions[session]
        return found

    def drop_session(self, session: Hashable) -> int:
        """Forget a session's observations (its DTLS session ended, or it did not acknowledge); how many."""
        observations = self._sessions.pop(session, None)
        if not observations:
            return 0
        self._count -= len(observations)
        return len(observations)

    def confirmable_due(self, observation: Observation[P], now: float) -> bool:
        """Whether the next notification must be confirmable to keep the every-N / every-interval promise."""
        return observation.since_con + 1 >= self.con_every or now - observation.last_con >= self.con_interval

    @staticmethod
    def sent(observation: Observation[P], confirmable: bool, now: float) -> None:
        """Count a notification that goes out now."""
        if confirmable:
            observation.since_con = 0
            observation.last_con = now
        else:
            observation.since_con += 1

    @staticmethod
    def hold(observation: Observation[P], notification: P) -> bool:
        """Keep ``notification`` until the one in flight is acknowledged; True if it replaced a held one."""
        replaced = observation.pending is not None
        observation.pending = notification
        return replaced

    def acknowledged(self, session: Hashable, mid: int) -> Observation[P] | None:
        """The observation whose confirmable notification ``mid`` was acknowledged (its in-flight mark cleared),
        or None if ``mid`` was something else."""
        for observation in self._sessions.get(session, {}).values():
            if observation.in_flight == mid:
                observation.in_flight = None
                return observation
        return None
