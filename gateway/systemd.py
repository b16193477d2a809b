"""The sd_notify protocol (sd_notify(3)), written here: readiness, status, reload, stop and watchdog pings to systemd.

A service started with ``Type=notify`` gets ``$NOTIFY_SOCKET``: an ``AF_UNIX`` datagram socket, a file path, or an
abstract socket when the value starts with ``@``. Each datagram is one or more ``KEY=value`` lines:

* ``READY=1`` once the service serves (systemd's start job ends: ``systemctl start`` returns, units ordered after
  it start);
* ``STATUS=...`` a one-line status, shown by ``systemctl status``;
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` (CLOCK_MONOTONIC, microseconds) when a reload begins, then ``READY=1``
  when it is done. systemd 252 (Debian 12, Raspberry Pi OS Bookworm) knows ``RELOADING=1`` and ignores
  ``MONOTONIC_USEC``; systemd >= 253 needs both for ``Type=notify-reload``. So the same messages suit both;
* ``STOPPING=1`` when a graceful stop begins;
* ``WATCHDOG=1`` at least once per ``$WATCHDOG_USEC`` (``WatchdogSec=``), else systemd kills the service with
  ``WatchdogSignal=`` (SIGABRT) and, with ``Restart=on-failure``, starts it again. ``$WATCHDOG_PID``, when set,
  names the process meant to ping: any other process (a child that inherited the environment) must not.

The environment is parsed by pure functions (:func:`notify_address`, :func:`watchdog_interval`), messages are
composed by pure functions (:func:`message`, :func:`reloading`), and :class:`Notifier` only sends. Without
``$NOTIFY_SOCKET`` (not started by systemd, or ``Type=simple``) every send is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

log = logging.getLogger("iotdtls_gateway.systemd")

#: Longest STATUS text sent (systemd keeps it in memory; a datagram stays far below the socket's limit).
MAX_STATUS = 200
#: The environment variables of the protocol: unset after reading, so that no child process inherits them.
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def notify_address(value: str | None) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` -> the address for ``sendto``: a path (str), an abstract name (bytes starting with NUL),
    or None when unset, empty or of a kind not supported here (systemd >= 254 also passes ``vsock:`` addresses)."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8", "surrogateescape") if len(value) > 1 else None
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC`` (as sd_watchdog_enabled(3) advises), or
    None when there is no watchdog, when the value is not a positive integer, or when ``$WATCHDOG_PID`` names
    another process."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner is not None and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 2e6


def one_line(text: str) -> str:
    """A value fit for one ``KEY=value`` line: no line breaks or NULs, at most MAX_STATUS characters."""
    flat = " ".join(text.replace("\0", " ").split())
    return flat if len(flat) <= MAX_STATUS else flat[:MAX_STATUS - 3] + "..."


def message(*, ready: bool = False, stopping: bool = False, watchdog: bool = False,
            status: str | None = None) -> bytes:
    """One datagram: the flags given, then ``STATUS=`` (one line)."""
    lines = [name for name, on in (("READY=1", ready), ("STOPPING=1", stopping), ("WATCHDOG=1", watchdog)) if on]
    if status is not None:
        lines.append(f"STATUS={one_line(status)}")
    return "\n".join(lines).encode("utf-8", "replace")


def reloading(monotonic_usec: int, status: str | None = None) -> bytes:
    """``RELOADING=1`` with the time the reload began (``MONOTONIC_USEC``: systemd >= 253 requires it)."""
    lines = ["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}"]
    if status is not None:
        lines.append(f"STATUS={one_line(status)}")
    return "\n".join(lines).encode("utf-8", "replace")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@dataclass(frozen=True)
class NotifyEnv:
    """What the environment says: where to notify (None: nowhere), and the watchdog's ping interval."""

    address: str | bytes | None
    watchdog: float | None

    @classmethod
    def parse(cls, env: Mapping[str, str], pid: int) -> NotifyEnv:
        address = notify_address(env.get("NOTIFY_SOCKET"))
        return cls(address, watchdog_interval(env, pid) if address is not None else None)


class Notifier:
    """Sends notifications to ``address``; a no-op without one. Never raises and never blocks: the socket is
    non-blocking, and a failed send is logged once (systemd went away, or the socket's queue is full)."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._failed = False
        #: Every datagram sent (tests and the daemon's own status lines read the last ones).
        self.sent = 0

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> tuple[Notifier, float | None]:
        """A notifier and the watchdog interval from the process environment, whose protocol variables are then
        removed (children of the service must not notify in its name)."""
        env: MutableMapping[str, str] = os.environ if environ is None else environ
        parsed = NotifyEnv.parse(env, os.getpid())
        for name in NOTIFY_ENV:
            env.pop(name, None)
        return cls(parsed.address), parsed.watchdog

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, datagram: bytes) -> bool:
        """Send one datagram; True if it went out (False also when disabled)."""
        if self.address is None or not datagram:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(datagram, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify systemd at %s: %s", _shown(self.address), exc.strerror or exc)
            return False
        self._failed = False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.send(message(ready=True, status=status))

    def status(self, status: str) -> bool:
        return self.send(message(status=status))

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(message(stopping=True, status=status))

    def watchdog(self) -> bool:
        return self.send(message(watchdog=True))

    def reloading(self, status: str = "reloading the configuration") -> bool:
        return self.send(reloading(monotonic_usec(), status))

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _shown(address: str | bytes) -> str:
    return "@" + address[1:].decode("utf-8", "replace") if isinstance(address, bytes) else address
