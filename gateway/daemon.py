"""``iotdtls-gateway run`` as a service: signals, systemd notifications, the watchdog, and configuration reloads.

:class:`Daemon` runs around a started :class:`~iotdtls_gateway.service.Gateway` until SIGTERM or SIGINT:

* it tells systemd ``READY=1`` with a ``STATUS`` line (the address, the devices, the spool, the uplink) once the
  gateway serves, and ``STOPPING=1`` when a stop signal arrives, before the graceful stop (see :mod:`.systemd`);
* with a watchdog (``WatchdogSec=``), a task on the event loop sends ``WATCHDOG=1`` every half period: a loop that
  stalls stops the pings, and systemd kills and restarts the service. The same task refreshes the STATUS line;
* SIGHUP reloads the configuration file (``RELOADING=1``, then ``READY=1``): a file with problems is refused, each
  problem logged as one line with the text ``iotdtls-gateway check`` prints, and the gateway goes on with the
  configuration it had; a good file is applied by :meth:`Gateway.reconfigure` (what can change live) and the
  logging is set up again. Reloads run one at a time; signals during one are coalesced into one more.

Test hook: with ``IOTDTLS_GATEWAY_TEST_STALL=SECONDS`` in the environment (and only then), SIGUSR2 blocks the event
loop for that long, as a stuck loop would (tests/test_gateway_systemd.py). It is logged as a warning at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .config import ConfigError, GatewayConfig, load
from .logs import event
from .reload import summary
from .systemd import Notifier

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger("iotdtls_gateway")

STALL_ENV = "IOTDTLS_GATEWAY_TEST_STALL"
#: The STATUS line is refreshed at most this often (seconds), when it changed.
STATUS_EVERY = 10.0
#: The shortest time between two pings, whatever WatchdogSec says (a loop that pings is not otherwise idle).
MIN_PING = 0.01


def stall_seconds(env: Mapping[str, str]) -> float | None:
    """The test hook's stall (seconds, up to 600), or None when the variable is unset or not a positive number."""
    try:
        value = float(env.get(STALL_ENV, ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and 0 < value <= 600 else None


class Daemon:
    """Signals and systemd around a started gateway. ``relog(config)`` sets logging up for a reloaded
    configuration (the command line's ``--log-json`` and ``-v`` win over the file)."""

    def __init__(self, gateway: Gateway, relog: Callable[[GatewayConfig], None], *,
                 notifier: Notifier | None = None, watchdog: float | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.gateway = gateway
        self.relog = relog
        if notifier is None:
            notifier, watchdog = Notifier.from_environment()
        self.notifier = notifier
        #: seconds between WATCHDOG=1 pings (None: no watchdog)
        self.watchdog = watchdog
        self.stall = stall_seconds(os.environ if environ is None else environ)
        self.reloads = 0
        self._stop = asyncio.Event()
        self._reload_wanted = False
        self._reload_task: asyncio.Task[None] | None = None
        self._last_status = ""
        self._refused = ""
        self._serving = False
        self._signals_installed = False
        with contextlib.suppress(RuntimeError):  # made on the loop (the CLI): signals are handled from now on
            self._install_signals(asyncio.get_running_loop())

    # -- status ----------------------------------------------------------------------------------------------
    def status(self) -> str:
        gw = self.gateway
        try:
            host, port = gw.address
        except Exception:  # not serving (any more)
            return "not serving"
        spool = gw.writer.totals.messages if gw.writer is not None else 0
        uplink = f"uplink {gw.uplink.state}" if gw.uplink is not None else "no uplink"
        return (f"serving coaps on {host}:{port}; {len(gw.snapshot.devices)} devices; {spool} messages in the "
                f"spool; {uplink}{self._refused}")

    def failed(self, reason: str) -> None:
        """The gateway could not start: say why in ``systemctl status`` (the exit status says that it failed)."""
        self.notifier.status(f"failed to start: {reason}")

    # -- running ---------------------------------------------------------------------------------------------
    async def serve(self) -> None:
        """Until SIGTERM or SIGINT, after which ``STOPPING=1`` is sent: the caller then stops the gateway."""
        self._install_signals(asyncio.get_running_loop())
        self._serving = True
        self._last_status = self.status()
        self.notifier.ready(self._last_status)
        if self._reload_wanted:  # a SIGHUP while the gateway started
            self.request_reload()
        if self.notifier.enabled:
            log.info("notified systemd: ready%s", f"; watchdog ping every {self.watchdog:g} s" if self.watchdog
                     else "", extra=event("sd_ready", watchdog=self.watchdog))
        heartbeat = asyncio.ensure_future(self._heartbeat()) if self.notifier.enabled else None
        try:
            await self._stop.wait()
        finally:
            self.notifier.stopping("stopping: answering what is in flight, closing sessions")
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
            if self._reload_task is not None:  # a reload in progress completes (its uplink stops with the gateway)
                self._reload_wanted = False
                await asyncio.wait([self._reload_task])

    def stop(self) -> None:
        self._stop.set()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGTERM and SIGINT stop (also while the gateway starts: it then stops once started); SIGHUP reloads
        (one that comes during the start is applied once serving), never the default action, which would end the
        process."""
        if self._signals_installed:
            return
        self._signals_installed = True
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        if self.stall is not None:
            log.warning("test hook %s is set: SIGUSR2 blocks the event loop for %g s", STALL_ENV, self.stall)
            loop.add_signal_handler(signal.SIGUSR2, self._stall_loop)

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        period = max(MIN_PING, self.watchdog) if self.watchdog is not None else STATUS_EVERY
        status_at = loop.time()
        while True:
            if self.watchdog is not None:
                self.notifier.watchdog()
            if loop.time() - status_at >= STATUS_EVERY:
                status_at = loop.time()
                text = self.status()
                if text != self._last_status:
                    self._last_status = text
                    self.notifier.status(text)
            await asyncio.sleep(period)

    def _stall_loop(self) -> None:
        assert self.stall is not None
        log.warning("test hook: blocking the event loop for %g s", self.stall, extra=event("test_stall",
                                                                                           seconds=self.stall))
        time.sleep(self.stall)  # deliberately blocking: this is what the watchdog must catch
        log.warning("test hook: the event loop runs again", extra=event("test_stall_over"))

    # -- reload ----------------------------------------------------------------------------------------------
    def request_reload(self) -> None:
        if self._stop.is_set():
            return
        self._reload_wanted = True
        if not self._serving:
            return  # serve() starts it
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = asyncio.ensure_future(self._reloads())

    async def _reloads(self) -> None:
        while self._reload_wanted and not self._stop.is_set():
            self._reload_wanted = False
            await self.reload()

    async def reload(self) -> bool:
        """Read the configuration file again and apply it; False (and the old configuration kept) if it has
        problems."""
        path = self.gateway.config.path
        self.reloads += 1
        self.notifier.reloading(f"reloading {path}")
        log.info("reloading the configuration from %s", path, extra=event("reload_started", file=str(path)))
        try:
            new = await asyncio.to_thread(load, path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("%s", problem, extra=event("reload_problem", problem=str(problem)))
            return self._refuse(f"{len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''} in {path}")
        except Exception as exc:  # not a ConfigError: still one line, and the service goes on
            return self._refuse(f"{path}: {exc}")
        try:
            plan = await self.gateway.reconfigure(new)
        except Exception as exc:
            log.error("configuration reload failed: %s", exc, exc_info=exc, extra=event("reload_failed"))
            return self._refuse(f"applying it failed: {exc}")
        if plan.touches("log"):
            self.relog(plan.effective)
        lines = summary(plan)
        log.info("%s", lines[0], extra=event("reloaded", applied=list(plan.live), restart=list(plan.restart)))
        if plan.restart:
            log.warning("%s", lines[1], extra=event("restart_needed", keys=list(plan.restart)))
        self._refused = ""
        self._last_status = self.status()
        self.notifier.ready(self._last_status)
        return True

    def _refuse(self, why: str) -> bool:
        log.error("configuration not reloaded (%s): still running with the previous one", why,
                  extra=event("reload_refused", reason=why))
        self._refused = "; last reload refused"
        self._last_status = self.status()
        self.notifier.ready(self._last_status)
        return False
