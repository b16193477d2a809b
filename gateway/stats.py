"""The gateway's own counters and per-device activity, for the metrics endpoint and the status page.

A functional core: no asyncio, no sockets, the clock passed in. The service calls it from the event loop (one
thread), so nothing here locks. The hot path (a stored reading, a handshake) costs a few dict and integer
operations; everything else is read at scrape time. Counted elsewhere and only read by :mod:`.figures`: the
telemetry resource's answers (``TelemetryResource.stats``), the DTLS server's refusals and evictions
(``DTLSServer.stats``), the spool's totals and the uplink's publishes.

Everything is bounded: the handshake counters by the suites the server can negotiate, the per-device activity by
the registry (:meth:`GatewayStats.prune` drops devices that left it), the open-session addresses by
``max_addresses``, the chart by its 60 one-minute buckets.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass

from iotdtls.constants import CipherSuite

#: Minutes of the messages-per-minute chart.
RING_MINUTES = 60
#: Upper bounds (seconds) of the publish latency histogram's buckets (+Inf is implied).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DAY = 86400


def suite_name(suite: int) -> str:
    """``TLS_PSK_WITH_AES_128_CCM_8`` for a suite iotdtls knows, ``0xC0A8`` otherwise."""
    try:
        return CipherSuite(suite).name
    except ValueError:
        return f"0x{suite:04X}"


class MinuteRing:
    """Counts per wall-clock minute over the last ``minutes`` minutes: a fixed ring of buckets, each stamped
    with its minute so that a bucket left from an hour ago reads as zero."""

    def __init__(self, minutes: int = RING_MINUTES) -> None:
        self.minutes = minutes
        self._stamp = [-1] * minutes
        self._count = [0] * minutes

    def add(self, now: float, n: int = 1) -> None:
        minute = int(now // 60)
        slot = minute % self.minutes
        if self._stamp[slot] != minute:
            self._stamp[slot] = minute
            self._count[slot] = 0
        self._count[slot] += n

    def series(self, now: float) -> list[int]:
        """The counts of the last ``minutes`` minutes, oldest first; the last is the current (partial) minute."""
        current = int(now // 60)
        out = []
        for minute in range(current - self.minutes + 1, current + 1):
            slot = minute % self.minutes
            out.append(self._count[slot] if self._stamp[slot] == minute else 0)
        return out


class LatencyHistogram:
    """A Prometheus-style histogram with fixed buckets: counts per bucket (not cumulative), sum and count."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        if not seconds >= 0:  # NaN or negative (a clock step): not a latency
            return
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, cumulative count), ..., ("+Inf", count)]`` as Prometheus exposes them."""
        out, total = [], 0
        for bound, n in zip((*[f"{b:g}" for b in self.bounds], "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float | None:
        """An upper bound of the ``q`` quantile (the bound of the bucket it falls in); None without data or when it
        falls above the last bound."""
        if self.count == 0:
            return None
        rank, total = q * self.count, 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            total += n
            if total >= rank:
                return bound
        return None


@dataclass
class DeviceActivity:
    #: wall time of the device's last handshake or stored reading
    last_seen: float
    #: readings stored (new or recognised resends) on ``day`` (days since the epoch, UTC)
    today: int = 0
    day: int = 0


class GatewayStats:
    """Counters the gateway keeps itself: handshakes, revocations, per-device activity, messages per minute,
    publish latency."""

    def __init__(self, clock: Callable[[], float] = time.time, *, max_addresses: int = 1 << 20) -> None:
        self._clock = clock
        self.started_at = clock()
        #: (outcome, suite) -> handshakes; outcome "ok" (full), "resumed" (abbreviated) or "failed", suite
        #: "unknown" for a failed one
        self.handshakes: dict[tuple[str, str], int] = {}
        #: sessions that moved to a new address (RFC 9146 connection ID)
        self.address_changes = 0
        #: sessions the gateway ended, by reason: "revoked" (the device was revoked) or "key_invalid" (its key
        #: was retired by a rotation or its grace period is over)
        self.revocations: dict[str, int] = {"revoked": 0, "key_invalid": 0}
        self.devices: dict[str, DeviceActivity] = {}
        self.per_minute = MinuteRing()
        self.publish_latency = LatencyHistogram()
        # addresses with an established session, to tell a failed handshake from a session that ended
        self._open: set[Hashable] = set()
        self._max_addresses = max_addresses

    def now(self) -> float:
        return self._clock()

    # -- handshakes and sessions -------------------------------------------------------------------
    def handshake_completed(self, addr: Hashable, suite: int, device: str | None, resumed: bool = False) -> None:
        key = ("resumed" if resumed else "ok", suite_name(suite))
        self.handshakes[key] = self.handshakes.get(key, 0) + 1
        if len(self._open) >= self._max_addresses:
            self._open.clear()  # out of step with the server (it never is): forget, at worst a miscount
        self._open.add(addr)
        if device is not None:
            self._seen(device, self._clock())

    def address_changed(self, previous: Hashable, addr: Hashable) -> None:
        """A session with a connection ID moved to a new address (RFC 9146)."""
        self.address_changes += 1
        if previous in self._open:
            self._open.discard(previous)
            self._open.add(addr)

    def connection_ended(self, addr: Hashable, failed: bool) -> None:
        """A DTLS association ended: an established session (not counted here), or a handshake, which counts as
        failed when it ended with an error."""
        if addr in self._open:
            self._open.discard(addr)
        elif failed:
            self.handshake_failed()

    def handshake_failed(self) -> None:
        key = ("failed", "unknown")
        self.handshakes[key] = self.handshakes.get(key, 0) + 1

    def session_revoked(self, reason: str) -> None:
        self.revocations[reason] = self.revocations.get(reason, 0) + 1

    def handshake_totals(self) -> dict[str, int]:
        out = {"ok": 0, "resumed": 0, "failed": 0}
        for (outcome, _), n in self.handshakes.items():
            out[outcome] = out.get(outcome, 0) + n
        return out

    # -- readings ----------------------------------------------------------------------------------
    def reading_stored(self, device: str) -> None:
        """A reading was acknowledged (committed, or recognised as a resend)."""
        now = self._clock()
        self.per_minute.add(now)
        activity = self._seen(device, now)
        day = int(now // DAY)
        if activity.day != day:
            activity.day, activity.today = day, 0
        activity.today += 1

    def _seen(self, device: str, now: float) -> DeviceActivity:
        activity = self.devices.get(device)
        if activity is None:
            activity = self.devices[device] = DeviceActivity(last_seen=now, day=int(now // DAY))
        else:
            activity.last_seen = now
        return activity

    def messages_today(self, device: str, now: float) -> int:
        """Readings of ``device`` since the last UTC midnight."""
        activity = self.devices.get(device)
        if activity is None or activity.day != int(now // DAY):
            return 0
        return activity.today

    def prune(self, known: Collection[str]) -> None:
        """Forget the activity of devices that are no longer in the registry."""
        for device in [d for d in self.devices if d not in known]:
            del self.devices[device]
