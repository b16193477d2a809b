"""The MQTT uplink: drains the spool to a broker, in order, and deletes each message only after its PUBACK.

:class:`MqttUplink` reads the spool through a connection of its own (in a worker thread: the event loop never
touches the disk), oldest first, and publishes each row's body (the JSON envelope) to the topic of its device with
QoS 1. At most ``inflight`` publishes await their PUBACK at once; an acknowledged message is deleted through the
spool writer, in batches. When the spool is drained it waits for the writer's ``new_messages`` event.

Ordering and duplicates: rows are published in ``seq`` order on one connection, so each device's messages reach
the broker in order. A connection that drops takes its unacknowledged publishes with it; the next connection
publishes them again first (oldest first), then continues. A message may so be published twice, which QoS 1
allows: consumers drop duplicates by the envelope's ``id``. What was never acknowledged is never deleted, so a
crash of the gateway loses nothing either: the next start publishes the spool again from its oldest row.

Availability: the broker holds a retained ``online`` on ``status_topic`` while the uplink is connected. The last
will (``offline``, retained, QoS 1) replaces it when the connection dies without a DISCONNECT (crash, power cut,
network loss); :meth:`MqttUplink.stop`, or cancelling :meth:`MqttUplink.run`, publishes ``offline`` itself before a
clean DISCONNECT.

aiomqtt specifics this module relies on (aiomqtt 2.x on paho-mqtt 2.x):

* ``Client.publish(..., qos=1)`` hands the message to paho at once (before its first ``await``) and then waits
  for paho's ``on_publish``, which for QoS 1 is the PUBACK. Publishes started as tasks in ``seq`` order reach
  paho, and the socket, in that order (asyncio runs ready tasks first in, first out).
* When the connection drops, aiomqtt never confirms the pending publishes: they would wait for their timeout.
  A watcher task iterating ``client.messages`` (which raises ``MqttError`` on the disconnect) ends the
  connection's task group, which cancels them; their rows stay in the spool and in ``_unacked``. A PUBACK that
  does not come within ``ACK_TIMEOUT`` ends the connection the same way.
* A fresh ``Client`` is made for every connection: a reused paho client would resend the last connection's
  unacknowledged messages by itself on reconnect (``_messages_reconnect_reset``), twice with the uplink's own.
* TLS 1.3: a broker that requires a client certificate refuses a missing one after the handshake; aiomqtt does
  not see that alert while it waits for the CONNACK, so such an attempt ends after ``CONNECT_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypedDict

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.client import error_string as mqtt_error_string

from ..config import MqttConfig
from ..logs import event
from ..spool import Row, SpoolError, SpoolStore
from ..spool_writer import SpoolWriter

State = Literal["connecting", "online", "offline"]

ONLINE = b"online"
OFFLINE = b"offline"
#: Seconds to wait for the CONNACK, for the status publishes and for a clean DISCONNECT.
CONNECT_TIMEOUT = 10.0
#: On stop(), how long the publishes in flight get to be acknowledged (what is not stays in the spool).
STOP_GRACE = 2.0
#: A PUBACK that takes longer than this (or twice the keepalive, if longer) means a broken connection.
ACK_TIMEOUT = 30.0
#: Largest number of rows read from the spool at once.
READ_BATCH_MAX = 512
#: Commands received and waiting to be stored. The broker sends at most its in-flight window of unacknowledged QoS 1
#: messages (mosquitto: 20, EMQX: 32), and the gateway acknowledges a command only once stored, so this is never
#: reached with a broker that keeps a window; a command over it is dropped by aiomqtt unacknowledged, and the broker
#: sends it again on the next connection.
COMMAND_QUEUE = 1024


def command_filter(template: str) -> str:
    """The subscription of a command topic template: its ``{device}`` level becomes ``+``."""
    return "/".join("+" if level == "{device}" else level for level in template.split("/"))


def device_of_topic(template: str, topic: str) -> str | None:
    """The device a topic of ``template`` names (None when the topic does not fit the template)."""
    levels, parts = template.split("/"), topic.split("/")
    if len(levels) != len(parts):
        return None
    device = None
    for level, part in zip(levels, parts, strict=True):
        if level == "{device}":
            device = part
        elif level != part:
            return None
    return device or None


class UplinkStats(TypedDict):
    published: int  # PUBLISH packets handed to the client (republishes after a reconnect included)
    acknowledged: int  # PUBACKs received
    deleted: int  # messages deleted from the spool after their PUBACK
    reconnects: int  # connection attempts after the first
    last_error: str | None  # why the last connection failed or ended
    in_flight: int  # publishes awaiting their PUBACK now
    max_in_flight: int  # the most that ever awaited their PUBACK at once (never above config.inflight)
    online_since: float | None  # clock() when the current connection came up; None while offline


def backoff_delay(attempt: int, low: float, high: float, rnd: Callable[[float, float], float]) -> float:
    """Delay before reconnect number ``attempt`` (0 = first retry): ``low * 2**attempt`` capped at ``high``, with
    jitter drawn by ``rnd(a, b)`` from its upper half, and never outside [low, high]."""
    base = min(high, low * 2.0 ** min(attempt, 60))
    return min(high, max(low, rnd(max(low, base / 2), base)))


def broker_name(config: MqttConfig) -> str:
    """``mqtt[s]://host:port``, with no user name or password (the url may carry them)."""
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"{'mqtts' if config.tls else 'mqtt'}://{host}:{config.port}"


def describe(exc: BaseException) -> str:
    """One line saying why a connection failed or ended (never a credential: the exceptions carry none)."""
    if isinstance(exc, BaseExceptionGroup):  # the task group of a connection: the watcher's word first
        leaves = _leaves(exc)
        return describe(next((e for e in leaves if isinstance(e, _ConnectionDown)), leaves[0]))
    if isinstance(exc, aiomqtt.MqttCodeError):
        rc = exc.rc
        if rc is None:
            text = str(exc)
        elif isinstance(rc, int):
            text = f"{mqtt_error_string(rc)} (code {rc})"
        else:
            text = f"{rc} (code {rc.value})"
        return f"the broker refused the connection: {text}" if isinstance(exc, MqttConnectError) else text
    if isinstance(exc, aiomqtt.MqttError) and exc.__cause__ is not None:
        return f"{exc}: {describe(exc.__cause__)}"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (aiomqtt.MqttError, SpoolError, _ConnectionDown, _ConnectFailed)):
        return text
    return f"{type(exc).__name__}: {text}"


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out += _leaves(e) if isinstance(e, BaseExceptionGroup) else [e]
    return out


class _ConnectionDown(Exception):
    """The connection ended (the watcher saw the disconnect)."""


class _ConnectFailed(Exception):
    """No connection: the TCP or TLS connection failed, or no CONNACK came."""


def _expected(exc: BaseException) -> bool:
    """A failure of the network, the broker or the spool (anything else is a bug, logged with its traceback)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_expected(e) for e in exc.exceptions)
    return isinstance(exc, (aiomqtt.MqttError, SpoolError, sqlite3.Error, _ConnectionDown, _ConnectFailed, OSError))


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the exception of a future nobody may await any more as retrieved (it surfaces where it is awaited)."""
    if not future.cancelled():
        future.exception()


class MqttUplink:
    """Drains the spool at ``spool_path`` (written by ``writer``) to the broker of ``config``.

    ``run()`` connects, drains and reconnects until cancelled or until ``stop()`` (an uplink runs once);
    ``state`` and ``stats`` report on it. ``clock`` (wall time) only stamps ``stats["online_since"]``.
    """

    def __init__(self, config: MqttConfig, writer: SpoolWriter, spool_path: Path, *,
                 log: logging.Logger | None = None, clock: Callable[[], float] = time.time,
                 on_command: Callable[[str, bytes], Awaitable[None]] | None = None) -> None:
        self.config = config
        #: Called with (device, payload) for each message on the command topic; the message is acknowledged to the
        #: broker (PUBACK) only once this returns: the command is stored. If it raises, the connection is ended and
        #: the broker delivers the command again on the next one (the session is persistent).
        self.on_command = on_command if config.command_topic else None
        self._command_topic = config.command_topic.replace("{client_id}", config.client_id)
        #: Set before stop() when the command topic changes: the persistent session would keep the old
        #: subscription, so the connection unsubscribes it before its DISCONNECT.
        self.unsubscribe_at_stop = False
        #: Called with the seconds each publish waited for its PUBACK (the metrics' publish latency).
        self.on_ack: Callable[[float], None] | None = None
        self._writer = writer
        self._spool_path = Path(spool_path)
        self._log = log or logging.getLogger("iotdtls_gateway.uplink")
        self._clock = clock
        self._random = random.Random()
        self._state: State = "connecting"
        self.stats: UplinkStats = {"published": 0, "acknowledged": 0, "deleted": 0, "reconnects": 0,
                                   "last_error": None, "in_flight": 0, "max_in_flight": 0, "online_since": None}
        self.status_topic = config.status_topic.format(client_id=config.client_id)
        self._ack_timeout = max(ACK_TIMEOUT, 2.0 * config.keepalive)
        self._read_batch = max(64, min(READ_BATCH_MAX, 4 * config.inflight))
        self._store: SpoolStore | None = None
        self._reading: asyncio.Future[list[Row]] | None = None
        #: The highest seq taken from the spool: every row up to it was acknowledged or is in ``_unacked``.
        self._cursor = 0
        #: Taken from the spool and not acknowledged, in seq order: the next connection publishes them first.
        self._unacked: dict[int, Row] = {}
        self._publishing: set[asyncio.Task[None]] = set()
        self._to_delete: list[int] = []
        self._delete_wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running = False
        self._came_online = False
        self._finished = asyncio.Event()
        self._offline_logged = False

    # -- reporting -----------------------------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """"connecting" (before the first CONNACK, and during every attempt), "online" or "offline"."""
        return self._state

    @property
    def unacknowledged(self) -> int:
        """Messages taken from the spool and not acknowledged yet (they stay in the spool)."""
        return len(self._unacked)

    def _went_online(self) -> None:
        self._state = "online"
        self._came_online = True
        self.stats["online_since"] = self._clock()
        self._offline_logged = False
        name = broker_name(self.config)
        self._log.info("uplink online: %s", name, extra=event("uplink_online", broker=name))

    def _went_offline(self, reason: str, delay: float) -> None:
        """One line per change of state: the attempts that fail while offline are logged at debug level only
        (``stats["last_error"]`` has the latest reason)."""
        self._state = "offline"
        self.stats["online_since"] = None
        self.stats["last_error"] = reason
        if self._offline_logged:
            self._log.debug("uplink still offline: %s; retrying in %.1f s", reason, delay)
            return
        self._offline_logged = True
        self._log.warning("uplink offline: %s; retrying in %.1f s", reason, delay,
                          extra=event("uplink_offline", reason=reason, retry_in=round(delay, 1)))

    # -- lifecycle -----------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, drain, reconnect with back-off. Returns after :meth:`stop`; cancelling it stops it too (it
        publishes ``offline`` and disconnects, then raises CancelledError)."""
        if self._running:
            raise RuntimeError("MqttUplink.run() is already running")
        self._running = True
        self._finished.clear()
        deleter: asyncio.Task[None] | None = None
        try:
            deleter = asyncio.create_task(self._delete_loop(), name="mqtt-uplink-deletes")
            attempt = 0
            while not self._stopping.is_set():
                self._state = "connecting"
                self._came_online = False
                try:
                    if self._store is None:  # its own connection to the file, for reading only
                        self._store = await asyncio.to_thread(SpoolStore, self._spool_path, self._writer.limits)
                    await self._connection()
                    break  # stop()
                except Exception as exc:
                    reason = describe(exc)
                    if not _expected(exc):
                        self._log.error("uplink: unexpected error: %s", reason, exc_info=exc)
                if self._came_online:
                    attempt = 0
                delay = backoff_delay(attempt, self.config.reconnect_min, self.config.reconnect_max,
                                      self._random.uniform)
                attempt += 1
                self._went_offline(reason, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if not self._stopping.is_set():
                    self.stats["reconnects"] += 1
        finally:
            self._state = "offline"
            self.stats["online_since"] = None
            self.stats["in_flight"] = 0
            if deleter is not None:
                deleter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await deleter
            try:
                await self._flush_deletes()
            except (SpoolError, RuntimeError) as exc:
                self._log.error("uplink: %d delivered messages could not be deleted from the spool (%s): they will "
                                "be published again", len(self._to_delete), exc)
            if self._reading is not None:  # a read cancelled with its task still runs in its thread
                await asyncio.wait([self._reading])
            if self._store is not None:
                store, self._store = self._store, None
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(store.close)
            self._running = False
            self._finished.set()

    async def stop(self) -> None:
        """Stop gracefully: no new publishes, a short grace for those in flight, ``offline`` published (retained),
        DISCONNECT, acknowledged messages deleted. What is not acknowledged stays in the spool."""
        if self._stopping.is_set() and not self._running:
            return
        self._stopping.set()
        if self._running:
            await self._finished.wait()
        self._state = "offline"
        self._log.info("uplink stopped: %d acknowledged, %d not acknowledged stay in the spool",
                       self.stats["acknowledged"], len(self._unacked),
                       extra=event("uplink_stopped", acknowledged=self.stats["acknowledged"],
                                   unacknowledged=len(self._unacked)))

    # -- one connection ------------------------------------------------------------------------------------------
    def _client(self) -> aiomqtt.Client:
        c = self.config
        tls = None
        if c.tls:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(c.ca_file) if c.ca_file else None,
                certfile=str(c.cert_file) if c.cert_file else None,
                keyfile=str(c.key_file) if c.key_file else None)
        # A persistent session when the gateway takes commands: the broker keeps the subscription and the commands
        # published while the gateway is away. (The spool, not the session, makes the uplink at-least-once.)
        client = aiomqtt.Client(
            c.host, c.port, username=c.username, password=c.password, identifier=c.client_id,
            will=aiomqtt.Will(self.status_topic, OFFLINE, qos=1, retain=True),
            clean_session=self.on_command is None, max_queued_incoming_messages=COMMAND_QUEUE,
            keepalive=c.keepalive, timeout=CONNECT_TIMEOUT, tls_params=tls,
            # paho's own window one above ours, so that the status publish on stop() is never queued behind it
            max_inflight_messages=c.inflight + 1)
        client.pending_calls_threshold = c.inflight + 2  # aiomqtt warns above this many pending calls
        if self.on_command is not None:
            client._client.manual_ack_set(True)  # PUBACK once stored, not on arrival
        return client

    async def _connection(self) -> None:
        """One connection (a fresh client: paho must not resend the last one's messages on its own). Returns
        after stop(); raises when it fails or ends."""
        client = self._client()
        async with contextlib.AsyncExitStack() as stack:
            connect = asyncio.ensure_future(stack.enter_async_context(client))
            if not await _first(connect, self._stopping.wait()):
                return  # stop() while connecting (up to CONNECT_TIMEOUT): not worth waiting for
            try:
                connect.result()
            except MqttConnectError:
                raise
            except aiomqtt.MqttError as exc:  # aiomqtt's texts: "Operation timed out", or the OSError's
                if str(exc) == "Operation timed out":
                    raise _ConnectFailed(f"no CONNACK within {CONNECT_TIMEOUT:g} s") from None
                raise _ConnectFailed(f"cannot connect: {exc}") from None
            if self._stopping.is_set():
                return
            try:
                await client.publish(self.status_topic, ONLINE, qos=1, retain=True, timeout=CONNECT_TIMEOUT)
                if self.on_command is not None:
                    await client.subscribe(command_filter(self._command_topic), qos=1, timeout=CONNECT_TIMEOUT)
                self._went_online()
                window = asyncio.Semaphore(self.config.inflight)
                async with asyncio.TaskGroup() as tasks:
                    watcher = tasks.create_task(self._watch(client))
                    await self._pump(client, tasks, window)
                    watcher.cancel()
                    for task in self._publishing:  # not acknowledged within the grace: they stay in the spool
                        task.cancel()
            except asyncio.CancelledError:
                if self._came_online:  # cancelled without stop(): say so, as the will cannot (DISCONNECT drops it)
                    with contextlib.suppress(Exception):
                        await client.publish(self.status_topic, OFFLINE, qos=1, retain=True, timeout=STOP_GRACE)
                raise
            finally:
                self.stats["in_flight"] = 0
            if self.unsubscribe_at_stop and self.on_command is not None:
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.unsubscribe(command_filter(self._command_topic), timeout=CONNECT_TIMEOUT)
            await client.publish(self.status_topic, OFFLINE, qos=1, retain=True, timeout=CONNECT_TIMEOUT)
            self._state = "offline"
        # leaving the client's context sent DISCONNECT: the broker dropped the will; "offline" is retained already

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Takes the commands, one at a time, each acknowledged once stored; ends with an exception when the
        connection drops."""
        try:
            async for message in client.messages:
                await self._command(client, message)
        except aiomqtt.MqttError as exc:  # "Disconnected during message iteration", from the reason
            cause = exc.__cause__
            rc = getattr(cause, "rc", None)
            if cause is None or getattr(rc, "value", None) == 128:  # paho's MQTT_ERR_CONN_LOST, as a reason code
                raise _ConnectionDown("connection lost") from exc
            raise _ConnectionDown(f"connection lost: {describe(cause)}") from exc
        raise _ConnectionDown("connection lost")

    async def _command(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        handler = self.on_command
        if handler is None:
            return
        device = device_of_topic(self._command_topic, message.topic.value)
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
        if device is None:  # a subscription of an earlier configuration, kept by the broker's session
            self._log.warning("message on %s ignored: not a command topic (%s)", message.topic.value,
                              self.config.command_topic)
        else:
            try:
                await handler(device, payload)
            except Exception as exc:  # not stored: not acknowledged; the broker sends it again on the next connection
                raise _ConnectionDown(f"a command could not be stored: {describe(exc)}") from exc
        if message.qos > 0:
            client._client.ack(message.mid, message.qos)

    async def _pump(self, client: aiomqtt.Client, tasks: asyncio.TaskGroup, window: asyncio.Semaphore) -> None:
        """Publish, oldest first: what the last connection left unacknowledged, then the spool after the cursor;
        wait for new messages when drained. Returns on stop(), once the publishes in flight are acknowledged or
        the grace is over."""
        store = self._store
        assert store is not None
        for row in list(self._unacked.values()):
            if self._stopping.is_set():
                break
            await self._send(client, tasks, window, row)
        new_messages = self._writer.new_messages
        while not self._stopping.is_set():
            new_messages.clear()
            self._reading = asyncio.ensure_future(asyncio.to_thread(store.read, self._cursor, self._read_batch))
            self._reading.add_done_callback(_retrieve)
            rows = await asyncio.shield(self._reading)
            if not rows:
                await _first(new_messages.wait(), self._stopping.wait())
                continue
            for row in rows:
                if self._stopping.is_set():
                    break
                await self._send(client, tasks, window, row)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_GRACE
        while self._publishing and loop.time() < deadline:
            await asyncio.wait(list(self._publishing), timeout=deadline - loop.time())

    async def _send(self, client: aiomqtt.Client, tasks: asyncio.TaskGroup, window: asyncio.Semaphore,
                    row: Row) -> None:
        await window.acquire()
        self._unacked[row.seq] = row  # (a row left from the last connection keeps its place)
        self._cursor = max(self._cursor, row.seq)
        s = self.stats
        s["in_flight"] += 1
        s["max_in_flight"] = max(s["max_in_flight"], s["in_flight"])
        s["published"] += 1
        task = tasks.create_task(self._publish(client, window, row))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, client: aiomqtt.Client, window: asyncio.Semaphore, row: Row) -> None:
        # client.publish hands the message to paho before its first await: tasks started in order publish in order
        topic = self.config.result_topic if row.kind == "result" else self.config.topic
        started = time.monotonic()
        try:
            await client.publish(topic.format(device=row.device, client_id=self.config.client_id), row.body,
                                 qos=self.config.qos, timeout=self._ack_timeout)
        finally:
            window.release()
            self.stats["in_flight"] -= 1
        self.stats["acknowledged"] += 1
        if self.on_ack is not None:
            self.on_ack(time.monotonic() - started)
        if self._unacked.pop(row.seq, None) is not None:
            self._to_delete.append(row.seq)
            self._delete_wakeup.set()

    # -- deleting what was acknowledged ------------------------------------------------------------------------
    async def _delete_loop(self) -> None:
        while True:
            await self._delete_wakeup.wait()
            self._delete_wakeup.clear()
            try:
                await self._flush_deletes()
            except SpoolError as exc:
                self._log.error("uplink: cannot delete delivered messages from the spool: %s; retrying", exc,
                                extra=event("uplink_spool_error", error=str(exc)))
                await asyncio.sleep(1.0)
                self._delete_wakeup.set()

    async def _flush_deletes(self) -> None:
        """Delete the acknowledged messages, a batch per writer commit; on failure they are kept to retry."""
        while self._to_delete:
            seqs, self._to_delete = self._to_delete, []
            try:
                removed = await self._writer.delete(seqs)
            except BaseException:
                self._to_delete[:0] = seqs
                raise
            self.stats["deleted"] += min(removed, len(seqs))


async def _first(first: Awaitable[Any], *others: Awaitable[Any]) -> bool:
    """Wait until one of the awaitables is done, cancel the others; True if ``first`` finished (its result or
    exception is then in the future that :func:`asyncio.ensure_future` made of it, if the caller kept one)."""
    tasks = [asyncio.ensure_future(a) for a in (first, *others)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
    return tasks[0].done() and not tasks[0].cancelled()
