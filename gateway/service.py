"""The gateway service: wires the registry, the spool, the CoAPs server and the MQTT uplink, and stops gracefully.

Data flows one way: a device's POST is decoded and authorised by :mod:`.resources`, committed by the spool
writer (:mod:`.spool_writer`), acknowledged, and drained to the broker by the uplink (:mod:`.uplink.mqtt`), which
deletes each message after its PUBACK. The registry is read through an in-memory snapshot, reloaded within a
second of any change (``PRAGMA data_version``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiocoap.resource as resource

from iotdtls import AlertDescription, AlertError, DTLSConfiguration, TrustStore
from iotdtls.coap import server_context, server_transport
from iotdtls.errors import DecodeError
from iotdtls.events import ConnectionTerminated, Event, HandshakeCompleted, PeerAddressChanged, ReplacementFailed
from iotdtls.keys import KeyFileError, load_private_key
from iotdtls.ratelog import RateLimitedLog
from iotdtls.resumption import TicketKeys
from iotdtls.secret_files import write_secret_file
from iotdtls.trust import PeerCredential

from .config import GatewayConfig
from .downlink import Downlink
from .files import ensure_data_dir
from .logs import event
from .registry import Registry, Snapshot
from .reload import ReloadPlan, spool_limits
from .reload import plan as reload_plan
from .resources import CredentialsResource, TelemetryResource, device_of, session_credential
from .site import Site
from .spool import Message, SpoolLimits
from .spool_writer import SpoolWriter
from .stats import GatewayStats

#: A ticket key seals new tickets for a day; it opens them for the session lifetime after that.
TICKET_KEY_ROTATION = 86400.0

if TYPE_CHECKING:
    from iotdtls.coap.server import IotdtlsServerTransport

    from .status_server import StatusServer

log = logging.getLogger("iotdtls_gateway")
REGISTRY_POLL = 1.0
#: Spool use (fraction of max_bytes) at which a warning is logged, once per crossing.
PRESSURE_LEVELS = (0.5, 0.8, 0.95)
#: How long a graceful stop waits for requests in progress.
DRAIN_TIMEOUT = 5.0


class StartError(Exception):
    """The gateway cannot start (data dir, registry, spool, key file or socket); one line."""


class Gateway:
    def __init__(self, config: GatewayConfig, *, clock: Callable[[], float] = time.time,
                 on_stored: Callable[[str, str, bool], None] | None = None) -> None:
        self.config = config
        self._clock = clock
        #: called with (device, message id, duplicate?) once a reading is committed (or recognised as a resend)
        self.on_stored = on_stored
        self.registry: Registry | None = None
        self.snapshot = Snapshot([], -1)
        self.writer: SpoolWriter | None = None
        self.telemetry: TelemetryResource | None = None
        self.uplink: Any = None
        self._uplink_task: asyncio.Task[None] | None = None
        self._ctx: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pressure = 0
        self._ratelog = RateLimitedLog(log)
        # the spool's commit gate (in the writer thread): its own registry connection, and the revoked devices as
        # of the registry version it last saw
        self._gate_registry: Registry | None = None
        self._gate_version = -1
        self._gate_revoked: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        #: configuration and commands for devices (None until started)
        self.downlink: Downlink | None = None
        #: The keys that seal session tickets (None: no tickets), kept in the data dir.
        self.ticket_keys: TicketKeys | None = None
        #: when the next key of the snapshot expires (the watch loop ends its sessions then)
        self._next_expiry = float("inf")
        #: counters and per-device activity for the metrics server (which runs when [metrics] is configured)
        self.stats = GatewayStats(clock)
        self.metrics_server: StatusServer | None = None

    # -- start ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        try:
            ensure_data_dir(cfg.data_dir)
            self.registry = await asyncio.to_thread(Registry, cfg.registry_path)
            self.snapshot = await asyncio.to_thread(self.registry.snapshot)
            self._gate_registry = await asyncio.to_thread(Registry, cfg.registry_path)
            s = cfg.spool
            self.writer = SpoolWriter(cfg.spool_path, SpoolLimits(max_bytes=s.max_bytes, max_age=s.max_age,
                                                                  dedup_window=s.dedup_window,
                                                                  dedup_max_keys=s.dedup_max_keys,
                                                                  retry_after=s.retry_after),
                                      commit_window=s.commit_window, clock=self._clock, gate=self._gate)
            await self.writer.start()
            dtls = self._dtls_config()
            self.ticket_keys = await asyncio.to_thread(self._load_ticket_keys, dtls)
        except StartError:
            await self._close_stores()
            raise
        except Exception as exc:  # DataDirError, RegistryError, SpoolError: one line each
            await self._close_stores()
            raise StartError(str(exc)) from None
        self._end_invalid_sessions()  # the first snapshot's expiries
        self.downlink = Downlink(cfg.downlink_path, cfg.commands, lambda: self.snapshot, self.writer,
                                 clock=self._clock)
        try:
            await self.downlink.start()
        except Exception as exc:  # CommandStoreError: one line
            self.downlink = None
            await self._close_stores()
            raise StartError(str(exc)) from None
        self.telemetry = TelemetryResource(lambda: self.snapshot, self.writer, max_body=cfg.coaps.max_body,
                                           clock=self._clock, on_stored=self._stored, hints=self.downlink.hints)
        site = Site()  # aiocoap's, without a deep copy of every request (site.py)
        site.add_resource([".well-known", "core"], resource.WKCResource(site.get_resources_as_linkheader))
        site.add_resource(["telemetry"], self.telemetry)
        site.add_resource(["credentials"], CredentialsResource(lambda: self.snapshot, self._clock,
                                                               on_fetched=self._key_fetched))
        site.add_resource(["config"], self.downlink.config_resource)
        site.add_resource(["commands"], self.downlink.commands_resource)
        c = cfg.coaps
        try:
            self._ctx = await server_context(
                site, bind=(c.host, c.port), config=dtls, max_sessions=c.max_sessions,
                max_handshakes=c.max_handshakes, max_sessions_per_identity=c.max_sessions_per_identity or None,
                max_upload_bytes=max(c.max_body, 1024), loggername="iotdtls_gateway.coap",
                session_cache=c.session_cache, ticket_keys=self.ticket_keys)
        except OSError as exc:
            await self._close_stores()
            raise StartError(f"cannot serve coaps on {c.host}:{c.port}: {exc.strerror or exc}") from None
        server_transport(self._ctx).on_event = self._dtls_event
        self._tasks.append(asyncio.ensure_future(self._watch()))
        self._start_uplink()
        await self._start_metrics()
        host, port = self.address
        log.info("serving coaps://%s:%d: %d devices in the registry, spool %s (%d messages waiting), %s",
                 host, port, len(self.snapshot.devices), cfg.spool_path, self.writer.totals.messages,
                 f"uplink {cfg.mqtt.url}" if cfg.mqtt else "no uplink: messages stay in the spool",  # no password
                 extra=event("started", bind=f"{host}:{port}", devices=len(self.snapshot.devices)))

    def _start_uplink(self) -> None:
        """The MQTT uplink of the current configuration, if it has [mqtt]: made here, at the start and on a reload
        that changes [mqtt], so that both wire it alike."""
        cfg = self.config
        if cfg.mqtt is None or self.writer is None:
            return
        from .uplink.mqtt import MqttUplink

        self.uplink = MqttUplink(cfg.mqtt, self.writer, cfg.spool_path, log=logging.getLogger(
            "iotdtls_gateway.uplink"), on_command=self.downlink.on_command if self.downlink else None)
        self.uplink.on_ack = self.stats.publish_latency.observe
        self._uplink_task = asyncio.ensure_future(self.uplink.run())
        self._tasks.append(self._uplink_task)

    async def _start_metrics(self) -> None:
        """The metrics server ([metrics] bind): /metrics, /healthz, the status page, /status.json."""
        m = self.config.metrics
        if m is None:
            return
        from .status_server import StatusServer

        server = StatusServer(self, m.host, m.port)
        try:
            await server.start()
        except OSError as exc:
            await self.stop()
            why = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's own text repeats the address
            raise StartError(f"cannot serve metrics on {m.host}:{m.port}: {why}") from None
        self.metrics_server = server

    def _load_ticket_keys(self, dtls: DTLSConfiguration) -> TicketKeys | None:
        """The keys sealing session tickets, from the data dir (made there, 0600, at the first start)."""
        c = self.config.coaps
        if not c.session_tickets or c.session_lifetime < 1:
            return None
        path = self.config.ticket_keys_path
        try:
            return TicketKeys.load_or_create(path, dtls.random, dtls.wall_time(), rotation=TICKET_KEY_ROTATION,
                                             lifetime=max(c.session_lifetime, TICKET_KEY_ROTATION))
        except OSError as exc:
            raise StartError(f"ticket keys {path}: {exc.strerror}") from None
        except (DecodeError, ValueError):
            raise StartError(f"ticket keys {path}: not a ticket key file (move it away to start with new keys: "
                             "devices then make one full handshake)") from None

    async def _save_ticket_keys(self) -> None:
        """A ticket key was added (rotation) or retired: keep the file in step, off the event loop."""
        keys = self.ticket_keys
        if keys is None or not keys.needs_save:
            return
        data = keys.to_bytes()
        keys.needs_save = False
        try:
            await asyncio.to_thread(write_secret_file, self.config.ticket_keys_path, data)
        except OSError as exc:
            keys.needs_save = True
            self._ratelog("ticket_keys", self._clock(), logging.WARNING, "cannot save the ticket keys: %s",
                          exc.strerror)

    def _dtls_config(self) -> DTLSConfiguration:
        c = self.config.coaps
        key = None
        if c.key_file is not None:
            try:
                key = load_private_key(c.key_file.read_bytes())
            except OSError as exc:
                raise StartError(f"coaps.key_file {c.key_file}: {exc.strerror}") from None
            except KeyFileError as exc:
                raise StartError(f"coaps.key_file {c.key_file}: {exc}") from None
        return DTLSConfiguration(
            is_client=False, psk_store=self._psk, private_key=key,
            trust=TrustStore(callback=self._judge) if key is not None else None, require_client_auth=key is not None,
            mtu=c.mtu, retransmit_initial=c.retransmit_initial, retransmit_max=c.retransmit_max,
            handshake_timeout=c.handshake_timeout, idle_timeout=c.idle_timeout,
            cid_length=c.cid_length or None, session_tickets=c.session_tickets, session_lifetime=c.session_lifetime,
            return_routability_check=c.return_routability_check)

    def _stored(self, device: str, msg_id: str, duplicate: bool) -> None:
        self.stats.reading_stored(device)
        log.debug("reading from %s %s: %s", device, "recognised as a resend" if duplicate else "committed", msg_id,
                  extra=event("reading", device=device, id=msg_id, duplicate=duplicate))
        if self.on_stored is not None:
            self.on_stored(device, msg_id, duplicate)

    def _gate(self, messages: list[Message]) -> list[str | None]:
        """In the writer thread, right before a commit: refuse the messages of devices revoked by now."""
        registry = self._gate_registry
        if registry is not None:
            version = registry.data_version()
            if version != self._gate_version:
                self._gate_revoked = registry.revoked()
                self._gate_version = version
        revoked = self._gate_revoked
        return ["revoked" if m.from_device and m.device in revoked else None for m in messages]

    def _key_fetched(self, device: str, identity: str) -> None:
        log.info("device %s fetched its new key %s", device, identity,
                 extra=event("key_fetched", device=device, identity=identity))

    def _psk(self, identity: bytes) -> bytes | None:
        return self.snapshot.psk(identity, self._clock())

    def _judge(self, cred: PeerCredential) -> str | None:
        return self.snapshot.device_for_key(cred.fingerprint, self._clock())

    @property
    def address(self) -> tuple[str, int]:
        addr: tuple[str, int] = server_transport(self._ctx).address
        return addr

    @property
    def transport(self) -> IotdtlsServerTransport | None:
        """The CoAPs server's transport while serving (None before the start and after the stop)."""
        return server_transport(self._ctx) if self._ctx is not None else None

    # -- while running -------------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Reload the registry snapshot when the file changed; log spool pressure as it crosses levels."""
        registry = self.registry
        assert registry is not None and self.writer is not None
        version = self.snapshot.version
        while True:
            await asyncio.sleep(REGISTRY_POLL)
            try:
                now_version = await asyncio.to_thread(registry.data_version)
                if now_version != version:
                    old = self.snapshot
                    await self._reload()
                    version = self.snapshot.version
                    if self.downlink is not None:
                        self.downlink.config_changed(old, self.snapshot)
                elif self._clock() >= self._next_expiry:
                    self._end_invalid_sessions()  # a key's grace period ended: its sessions end with it
                self._check_pressure()
                await self._save_ticket_keys()
                if self.downlink is not None:
                    await self.downlink.sweep()
            except Exception as exc:  # a locked or busy file: the next second; the watch must never stop
                self._ratelog("registry_watch", self._clock(), logging.WARNING, "registry check failed: %s", exc)

    async def _reload(self) -> None:
        """A new snapshot of the registry; sessions of devices revoked since, or that authenticated with a key
        that is no longer valid (retired by a rotation), end at once with a fatal access_denied alert."""
        assert self.registry is not None
        self.snapshot = await asyncio.to_thread(self.registry.snapshot)
        log.info("registry reloaded: %d devices", len(self.snapshot.devices),
                 extra=event("registry_reloaded", devices=len(self.snapshot.devices)))
        self._end_invalid_sessions()

    def _end_invalid_sessions(self) -> None:
        """End the sessions whose device is revoked or whose key is no longer valid (retired, or its grace period
        over); note when the next key of the snapshot expires, to check again then."""
        now = self._clock()
        expiries = [c.not_after for d in self.snapshot.devices.values() for c in d.credentials
                    if c.not_after is not None and c.not_after > now]
        self._next_expiry = min(expiries, default=float("inf"))
        self.stats.prune(self.snapshot.devices)
        if self._ctx is None:
            return
        transport = server_transport(self._ctx)
        for remote in transport.sessions():
            found = session_credential(remote, self.snapshot)
            device = self.snapshot.devices.get(found[0]) if found is not None else None
            if found is not None and device is not None and device.enabled and found[1].valid_at(now):
                continue
            name = found[0] if found is not None else "?"
            why = "revoked" if device is None or not device.enabled else "its key is no longer valid"
            log.info("session of device %s from %s ended: %s", name, remote.hostinfo, why,
                     extra=event("session_ended", device=name, addr=remote.hostinfo, reason=why))
            self.stats.session_revoked("revoked" if why == "revoked" else "key_invalid")
            transport.end_session(remote, AlertError(why, description=AlertDescription.access_denied))
            # nor may it resume: its cached sessions go (a ticket is refused anyway, its key being invalid)
            transport.core.forget_sessions(remote.identity)

    def _first_use(self, kind: str, identity: bytes) -> None:
        """A device authenticated with a credential for the first time: record it (a rotation completes: the
        older keys are retired), in the background, then reload."""
        async def mark() -> None:
            assert self.registry is not None
            try:
                retired = await asyncio.to_thread(self.registry.mark_used, kind, identity)
            except Exception as exc:  # a busy registry: the next handshake tries again
                self._ratelog("mark_used", self._clock(), logging.WARNING, "could not record a key's use: %s", exc)
                return
            if retired:
                await self._reload()

        task = asyncio.ensure_future(mark())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _check_pressure(self) -> None:
        assert self.writer is not None
        totals, limit = self.writer.totals, self.config.spool.max_bytes
        level = sum(1 for p in PRESSURE_LEVELS if totals.bytes >= p * limit)
        if level != self._pressure:
            rising = level > self._pressure
            self._pressure = level
            log.log(logging.WARNING if rising else logging.INFO,
                    "spool at %.0f%% of %d bytes (%d messages)", 100 * totals.bytes / limit, limit, totals.messages,
                    extra=event("spool_pressure", bytes=totals.bytes, max_bytes=limit, messages=totals.messages))

    def _dtls_event(self, addr: Any, ev: Event) -> None:
        where = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        if isinstance(ev, HandshakeCompleted):
            device = self._device_of_session(ev)
            self.stats.handshake_completed(addr, ev.cipher_suite, device, resumed=ev.resumed)
            log.info("handshake: device %s from %s (%s%s)", device or "?", where, "key" if ev.peer else "psk",
                     ", resumed" if ev.resumed else "",
                     extra=event("handshake", device=device, addr=where, credential="key" if ev.peer else "psk",
                                 resumed=ev.resumed))
            kind, identity = ("rpk", ev.peer.fingerprint) if ev.peer is not None else ("psk", ev.identity)
            found = self.snapshot.credential(kind, identity)
            if found is not None and found[1].first_used_at is None:
                self.snapshot.note_used(kind, identity, self._clock())
                self._first_use(kind, identity)
        elif isinstance(ev, PeerAddressChanged):
            self.stats.address_changed(ev.previous, addr)
            log.debug("session from %s moved to %s", ev.previous, where,
                      extra=event("address_changed", addr=where))
        elif isinstance(ev, ConnectionTerminated):
            self.stats.connection_ended(addr, failed=ev.error is not None)
        elif isinstance(ev, ReplacementFailed):
            self.stats.handshake_failed()
        if isinstance(ev, ConnectionTerminated | ReplacementFailed) and ev.error is not None:
            # An unknown identity and a wrong key end alike (bad_record_mac); the text says nothing else.
            self._ratelog("handshake_failed", self._clock(), logging.WARNING, "session or handshake from %s ended: %s",
                          where, ev.error)

    def _device_of_session(self, ev: HandshakeCompleted) -> str | None:
        class _Remote:
            identity = ev.identity
            peer = ev.peer
        return device_of(_Remote, self.snapshot, self._clock())

    # -- reload (SIGHUP) -----------------------------------------------------------------------------
    async def reconfigure(self, new: GatewayConfig) -> ReloadPlan:
        """Apply a configuration read again from its file (and valid): the spool's bounds from the writer's next
        commit; a new uplink when [mqtt] changed (the old one stops gracefully: what the broker has not
        acknowledged stays in the spool, and the new one publishes it first); the registry reloaded at once. No
        session is touched. A changed key that needs a restart keeps its old value (the plan names it). Logging is
        the caller's: the command line may override the file's [log]."""
        p = reload_plan(self.config, new)
        self.config = p.effective
        if p.touches("spool") and self.writer is not None:
            self.writer.set_limits(spool_limits(self.config), self.config.spool.commit_window)
        if p.touches("commands") and self.downlink is not None:
            self.downlink.reconfigure(self.config.commands)
        if p.touches("mqtt"):
            old, task = self.uplink, self._uplink_task
            self.uplink = self._uplink_task = None
            if old is not None:
                if self.config.mqtt is None or old.config.command_topic != self.config.mqtt.command_topic:
                    old.unsubscribe_at_stop = True  # the session is persistent: its subscription would stay
                await old.stop()
            if task is not None:
                await asyncio.wait([task])
                if not task.cancelled() and task.exception() is not None:
                    log.warning("the previous uplink ended with an error: %s", task.exception())
                self._tasks.remove(task)
            self._start_uplink()
        if self.registry is not None:
            before = self.snapshot
            try:
                await self._reload()
            except Exception as exc:  # a busy file: the watch loop reloads it within a second anyway
                log.warning("registry reload failed: %s", exc)
            else:
                if self.downlink is not None:
                    self.downlink.config_changed(before, self.snapshot)
        return p

    # -- stop ----------------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop accepting, answer what is in flight, close every session with close_notify, commit what is
        queued, disconnect from the broker."""
        if self.metrics_server is not None:
            await self.metrics_server.close()
            self.metrics_server = None
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.telemetry is not None and self.telemetry.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._ctx is not None:
            with contextlib.suppress(Exception):
                await self._ctx.shutdown()
            self._ctx = None
        if self.uplink is not None:  # first: publishes in flight get a moment for their PUBACK, then "offline"
            with contextlib.suppress(Exception):
                await self.uplink.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks = []
        await self._close_stores()
        log.info("stopped", extra=event("stopped"))

    async def _close_stores(self) -> None:
        for task in list(self._background):
            with contextlib.suppress(BaseException):
                await task
        if self.downlink is not None:
            await self.downlink.close()
        if self.writer is not None:
            await self.writer.close()
        for registry in (self.registry, self._gate_registry):
            if registry is not None:
                registry.close()
        self.registry = self._gate_registry = None
