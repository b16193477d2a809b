"""A UDP relay between one client and one server that impairs datagrams and reports each one.

Used by the demo to show a handshake flight by flight, and to show it surviving loss, duplication and
reordering. It is :class:`iotdtls.netem.NetemProxy` (the engine behind ``iotdtls-netem``) with one client.
"""

from __future__ import annotations

from collections.abc import Callable

from ..netem import DEFAULT_MAX_DELAY, Address, Direction, Impairment, LinkProfile, NetemProxy

Observer = Callable[[str, bytes, bool], None]  # direction ("c2s"/"s2c"), datagram, dropped
#: direction, datagram, delays of the copies delivered (empty: dropped; two: duplicated)
Tracer = Callable[[Direction, bytes, list[float]], None]


class LossyRelay(NetemProxy):
    """Listens on the address :meth:`start` returns and forwards the client's datagrams to ``target`` and the
    replies back. Each way, a datagram is lost with probability ``loss``, duplicated with probability ``dup``
    and held back by up to ``max_delay`` seconds with probability ``reorder``; seeded, so a run can be
    repeated. ``observer`` sees (direction, datagram, dropped), ``tracer`` (direction, datagram, delays)."""

    def __init__(self, target: tuple[str, int], loss: float = 0.0, seed: int = 0,
                 observer: Observer | None = None, *, dup: float = 0.0, reorder: float = 0.0,
                 max_delay: float = DEFAULT_MAX_DELAY, tracer: Tracer | None = None) -> None:
        profile = LinkProfile(loss=loss, dup=dup, reorder=reorder, max_delay=max_delay)
        self.loss = loss

        def observe(direction: Direction, _client: Address, data: bytes, delays: list[float]) -> None:
            if observer is not None:
                observer(direction, data, not delays)
            if tracer is not None:
                tracer(direction, data, delays)

        super().__init__(target, Impairment(profile, profile, seed), max_clients=1, observer=observe)
