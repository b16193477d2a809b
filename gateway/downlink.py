"""Downlink: what the cloud sends to devices. Per-device configuration at ``/config`` and commands at ``/commands``.

- **Configuration.** The document stored with ``iotdtls-provision set-config`` is served by ``GET /config`` as
  CBOR with its ETag; a GET carrying that ETag gets 2.03 Valid (RFC 7252 §5.10.6.2, CoAP's If-None-Match). The
  resource is observable: an observer is notified within a second of a change (the registry reload).
- **Commands.** The uplink hands over each command published to ``devices/{device}/commands``; it is stored in the
  device's durable queue (:mod:`.command_store`) before the broker gets its PUBACK. ``GET /commands`` (observable)
  returns the waiting commands as a CBOR array; ``POST /commands`` with ``{"id", "status", "result"}`` reports a
  result, which is committed to the spool (published to the result topic) before its 2.04. Expired commands, and
  commands for unknown or revoked devices, are reported on the result topic too.
- **Hints.** A sleepy device that wakes, posts and sleeps learns what waits from the 2.04 of its POST: a CBOR map
  ``{"cfg": true}`` (its configuration changed since it was last served) and/or ``{"cmd": N}`` (N commands wait),
  next to the ``{"cred": true}`` of a key rotation. Nothing waits: an empty 2.04.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.resource as resource
import cbor2
from aiocoap.numbers.codes import Code

from .command_store import CommandStore
from .commands import Command, Rejected, parse_command, parse_result, result_envelope
from .config import CommandsConfig
from .devices import Snapshot, config_etag
from .envelope import PayloadError, decode_payload
from .logs import event
from .resources import device_of
from .spool import Message, Refused, SpoolError, SpoolFull
from .spool_writer import SpoolWriter

log = logging.getLogger("iotdtls_gateway.downlink")
#: Commands sent to a device in one response, and the most bytes of CBOR they may take.
BATCH = 4
BATCH_BYTES = 400
#: Finished commands are forgotten this often (seconds).
PURGE_INTERVAL = 3600.0


class DownlinkUnavailable(Exception):
    """A report could not be stored now (the spool is full or failing); the caller retries."""


class Downlink:
    """The downlink's state and rules; the resources below and the uplink call it. ``stats`` counts commands:
    received (from the broker), delivered (sent to their device, first time), results (reported by devices),
    expired, undeliverable, rejected, and pending (waiting now)."""

    def __init__(self, path: Path, config: CommandsConfig, snapshot: Callable[[], Snapshot], writer: SpoolWriter,
                 *, clock: Callable[[], float] = time.time,
                 random: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.path = path
        self.config = config
        self._snapshot = snapshot
        self._writer = writer
        self._clock = clock
        self._random = random
        self._store: CommandStore | None = None
        self._lock = asyncio.Lock()  # one store operation at a time, each in a worker thread
        self._counts: dict[str, int] = {}
        self._served: dict[str, bytes] = {}
        self._last_purge = float("-inf")
        self.stats: dict[str, int] = dict.fromkeys(
            ("received", "delivered", "results", "expired", "undeliverable", "rejected", "pending"), 0)
        self.config_resource = ConfigResource(self)
        self.commands_resource = CommandsResource(self)

    async def start(self) -> None:
        self._store = await asyncio.to_thread(CommandStore, self.path, max_per_device=self.config.max_per_device)
        pending = await self._run(lambda s: s.counts())
        self._counts = dict(pending.counts)
        self._served = await self._run(lambda s: s.served())
        self.stats["pending"] = sum(self._counts.values())

    def reconfigure(self, config: CommandsConfig) -> None:
        """New TTLs and bounds ([commands] on a reload), for the commands that arrive from now on."""
        self.config = config
        if self._store is not None:
            self._store.max_per_device = config.max_per_device  # read by add(), which runs under the lock

    async def close(self) -> None:
        if self._store is not None:
            async with self._lock:
                store, self._store = self._store, None
                await asyncio.to_thread(store.close)

    async def _run(self, op: Callable[[CommandStore], Any]) -> Any:
        async with self._lock:
            store = self._store
            if store is None:
                raise DownlinkUnavailable("the downlink is closed")
            return await asyncio.to_thread(op, store)

    def _new_id(self) -> str:
        return "g-" + self._random(8).hex()

    # -- hints ---------------------------------------------------------------------------------------
    def hints(self, device: str) -> dict[str, Any]:
        """What the 2.04 of ``device``'s POST tells it: ``cfg`` and ``cmd`` (empty: nothing waits)."""
        out: dict[str, Any] = {}
        dev = self._snapshot().devices.get(device)
        if dev is not None and dev.config is not None and self._served.get(device) != config_etag(dev.config):
            out["cfg"] = True
        n = self._counts.get(device, 0)
        if n:
            out["cmd"] = n
        return out

    def served(self, device: str, etag: bytes) -> None:
        """``device`` was sent (or validated) the configuration of ``etag``: recorded in the background."""
        if self._served.get(device) == etag:
            return
        self._served[device] = etag
        now = self._clock()
        _background(self._run(lambda s: s.set_served(device, etag, now)), "recording a served configuration")

    def config_changed(self, old: Snapshot, new: Snapshot) -> None:
        """After a registry reload: notify the observers of the devices whose configuration changed."""
        for device_id, dev in new.devices.items():
            before = old.devices.get(device_id)
            if (before.config if before else None) != dev.config:
                self.config_resource.notify(device_id)

    # -- commands from the cloud -------------------------------------------------------------------------------
    async def on_command(self, device: str, payload: bytes) -> None:
        """One command from the broker: queued, or reported. Returns once durable (the uplink then acks it)."""
        now = self._clock()
        self.stats["received"] += 1
        dev = self._snapshot().devices.get(device)
        parsed = parse_command(device, payload, now, self.config, self._new_id)
        if isinstance(parsed, Rejected):
            self.stats["rejected"] += 1
            await self._report(device, parsed.id, "rejected", now, reason=parsed.reason)
            return
        if dev is None or not dev.enabled:
            self.stats["undeliverable"] += 1
            await self._report(device, parsed.id, "undeliverable", now,
                               reason="unknown device" if dev is None else "device revoked")
            return
        outcome = await self._run(lambda s: s.add(parsed))
        if outcome == "full":
            self.stats["rejected"] += 1
            await self._report(device, parsed.id, "rejected", now,
                               reason=f"{self.config.max_per_device} commands already wait for this device")
        elif outcome == "queued":
            self._counts[device] = self._counts.get(device, 0) + 1
            self.stats["pending"] += 1
            log.info("command %s %s queued for %s", parsed.id, parsed.name, device,
                     extra=event("command_queued", device=device, id=parsed.id, command=parsed.name))
            self.commands_resource.notify(device)

    async def _report(self, device: str, command_id: str, status: str, now: float, *, result: Any = None,
                      reason: str | None = None, delivered: bool | None = None, from_device: bool = False) -> bool:
        """Commit a result to the spool (the uplink publishes it to the result topic); False if it was reported
        already (the first final status of a command wins)."""
        body = result_envelope(device, command_id, status, now, result=result, reason=reason, delivered=delivered)
        message = Message(device, command_id, f"cmd:{command_id}", now, body, kind="result", from_device=from_device)
        try:
            stored = await self._writer.append(message)
        except (SpoolFull, SpoolError) as exc:
            raise DownlinkUnavailable(str(exc)) from exc
        if status not in ("ok", "error"):
            log.info("command %s for %s: %s%s", command_id, device, status, f" ({reason})" if reason else "",
                     extra=event("command_" + status, device=device, id=command_id, reason=reason))
        return not stored.duplicate

    async def take(self, device: str) -> list[Command]:
        """The commands waiting for ``device``, to send it now (marked delivered)."""
        now = self._clock()
        waiting: list[Command] = await self._run(lambda s: s.pending(device, now, BATCH))
        batch: list[Command] = []
        size = 1
        for command in waiting:
            size += len(cbor2.dumps(command.for_device()))
            if batch and size > BATCH_BYTES:
                break
            batch.append(command)
        fresh = [c.id for c in batch if c.delivered_at is None]
        if fresh:
            self.stats["delivered"] += len(fresh)
            await self._run(lambda s: s.mark_delivered(device, fresh, now))
        return batch

    async def result(self, device: str, command_id: str, status: str, result: Any) -> bool:
        """A device reports a command's result: committed, then the command is finished. False: no such
        command (never queued for this device, or forgotten)."""
        found = await self._run(lambda s: s.get(device, command_id))
        if found is None:
            return False
        now = self._clock()
        try:
            if await self._report(device, command_id, status, now, result=result, from_device=True):
                self.stats["results"] += 1
        except DownlinkUnavailable:
            raise
        if not found[1]:
            await self._finish(device, command_id, now)
        return True

    async def _finish(self, device: str, command_id: str, now: float) -> None:
        await self._run(lambda s: s.finish(device, command_id, now))
        n = self._counts.get(device, 0)
        if n > 0:
            self.stats["pending"] -= 1
            if n == 1:
                del self._counts[device]
            else:
                self._counts[device] = n - 1

    # -- time passes -------------------------------------------------------------------------------------------
    async def sweep(self) -> None:
        """Report the commands whose TTL ended, and those of devices revoked or removed since; forget old ones."""
        now = self._clock()
        due: list[Command] = await self._run(lambda s: s.due(now))
        snapshot = self._snapshot()
        orphaned = [d for d in self._counts if not snapshot.enabled(d)]
        if orphaned:
            due += [c for c in await self._run(lambda s: s.waiting_for(set(orphaned))) if c.expires_at > now]
        for command in due:
            dev = snapshot.devices.get(command.device)
            if command.expires_at <= now:
                self.stats["expired"] += 1
                await self._report(command.device, command.id, "expired", now, delivered=command.delivered_at
                                   is not None, reason=f"no result within its ttl of "
                                   f"{command.expires_at - command.received_at:g} s")
            else:
                self.stats["undeliverable"] += 1
                await self._report(command.device, command.id, "undeliverable", now,
                                   reason="unknown device" if dev is None else "device revoked")
            await self._finish(command.device, command.id, now)
        if now - self._last_purge >= PURGE_INTERVAL:
            self._last_purge = now
            await self._run(lambda s: s.purge(now))


def _background(coro: Any, what: str) -> None:
    task = asyncio.ensure_future(coro)
    _TASKS.add(task)

    def done(t: asyncio.Future[Any]) -> None:
        _TASKS.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.warning("%s failed: %s", what, t.exception())

    task.add_done_callback(done)


_TASKS: set[asyncio.Future[Any]] = set()


class _PerDevice(resource.ObservableResource):  # type: ignore[misc]
    """An observable resource whose observers are notified per device (the device of their DTLS session)."""

    def __init__(self, downlink: Downlink) -> None:
        super().__init__()
        self.downlink = downlink
        self._by_device: dict[str, set[Any]] = {}

    def device(self, request: Any) -> str | None:
        dl = self.downlink
        return device_of(request.remote, dl._snapshot(), dl._clock())

    async def add_observation(self, request: Any, serverobservation: Any) -> None:
        device = self.device(request)
        if device is None:
            return  # not accepted: the response goes out without Observe
        observers = self._by_device.setdefault(device, set())
        observers.add(serverobservation)

        def cancel() -> None:
            observers.discard(serverobservation)
            if not observers:
                self._by_device.pop(device, None)

        serverobservation.accept(cancel)

    @property
    def observers(self) -> int:
        return sum(len(v) for v in self._by_device.values())

    def notify(self, device: str) -> None:
        for observation in list(self._by_device.get(device, ())):
            observation.trigger()


class ConfigResource(_PerDevice):
    """``GET /config``: the device's configuration document (CBOR, with its ETag); 2.03 when the request carries
    the current ETag; 4.04 when it has none. Observable."""

    async def render_get(self, request: Any) -> aiocoap.Message:
        device = self.device(request)
        if device is None:
            return aiocoap.Message(code=Code.FORBIDDEN, payload=b"not an enabled device")
        dev = self.downlink._snapshot().devices.get(device)
        if dev is None or dev.config is None:
            return aiocoap.Message(code=Code.NOT_FOUND, payload=b"no configuration")
        etag = config_etag(dev.config)
        self.downlink.served(device, etag)
        if etag in (request.opt.etags or ()):
            return aiocoap.Message(code=Code.VALID, etag=etag)
        return aiocoap.Message(code=Code.CONTENT, payload=cbor2.dumps(dev.config), content_format=60, etag=etag)


class CommandsResource(_PerDevice):
    """``GET /commands``: the commands waiting for the device, a CBOR array of ``{"id", "name", "args"}``
    (empty: ``[]``), observable. ``POST /commands``: a result, CBOR ``{"id", "status": "ok"|"error", "result"}``:
    2.04 once committed, 4.04 for an unknown command id, 4.00 for a malformed result."""

    async def needs_blockwise_assembly(self, request: Any) -> bool:
        return True

    async def render_get(self, request: Any) -> aiocoap.Message:
        device = self.device(request)
        if device is None:
            return aiocoap.Message(code=Code.FORBIDDEN, payload=b"not an enabled device")
        try:
            batch = await self.downlink.take(device)
        except DownlinkUnavailable:
            return aiocoap.Message(code=Code.SERVICE_UNAVAILABLE, max_age=5, payload=b"downlink unavailable")
        return aiocoap.Message(code=Code.CONTENT, payload=cbor2.dumps([c.for_device() for c in batch]),
                               content_format=60)

    async def render_post(self, request: Any) -> aiocoap.Message:
        device = self.device(request)
        if device is None:
            return aiocoap.Message(code=Code.FORBIDDEN, payload=b"not an enabled device")
        if request.opt.content_format != 60:
            return aiocoap.Message(code=Code.UNSUPPORTED_CONTENT_FORMAT, payload=b"a result is CBOR (60)")
        try:
            doc = decode_payload(60, request.payload, max_size=self.downlink.config.max_bytes * 2)
        except PayloadError as exc:
            code = Code.REQUEST_ENTITY_TOO_LARGE if exc.code == "4.13" else Code.BAD_REQUEST
            return aiocoap.Message(code=code, payload=exc.diagnostic.encode())
        parsed = parse_result(doc)
        if isinstance(parsed, str):
            return aiocoap.Message(code=Code.BAD_REQUEST, payload=parsed.encode())
        try:
            known = await self.downlink.result(device, *parsed)
        except DownlinkUnavailable:
            return aiocoap.Message(code=Code.SERVICE_UNAVAILABLE, max_age=30, payload=b"spool full, retry later")
        except Refused:
            return aiocoap.Message(code=Code.FORBIDDEN, payload=b"not an enabled device")
        if not known:
            return aiocoap.Message(code=Code.NOT_FOUND, payload=b"no such command")
        hints = self.downlink.hints(device)
        if hints:
            return aiocoap.Message(code=Code.CHANGED, payload=cbor2.dumps(hints), content_format=60)
        return aiocoap.Message(code=Code.CHANGED)
