"""A real mosquitto broker for the gateway's MQTT tests, a subscriber that collects what arrives, and a TCP proxy
that watches (and can hold) the PUBACKs between the uplink and the broker.

::

    with Broker(tmp_path / "broker") as broker, Subscriber(broker.port, ["devices/#"]) as sub:
        ...                                   # publish to mqtt://127.0.0.1:{broker.port}
        sub.wait_for(lambda got: len(got) >= 10)
        broker.stop(); broker.start()         # an outage (same port, same config)

The broker listens on 127.0.0.1 only, on a free port, with a generated configuration: ``allow_anonymous true`` and
``persistence false`` by default. Options add a TLS listener (a server certificate from :mod:`pki`), users from
``mosquitto_passwd``, a listener that requires client certificates, and persistence (so that a subscriber's
persistent session outlives a restart). Running as root, mosquitto would switch to the ``mosquitto`` user and no
longer read the test's files: the configuration then says ``user root``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peers import LOCALHOST, mosquitto_binary

DEFAULT_TIMEOUT = 10.0


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_tcp_port() -> int:
    """A TCP port free on 127.0.0.1, below the kernel's ephemeral range when it can be. A broker restarted on its
    port during an outage must find it free: a port from the ephemeral range can meanwhile be the source port of
    some connection, even of a client's own reconnect attempt to it (a TCP self-connect), and the restart then
    fails with "Address already in use"."""
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, low) if low > 11000 else 0
        if port in _HANDED_OUT:  # never the same port twice in one test run (a broker's listeners, two brokers)
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOCALHOST, port))
            except OSError:
                continue
            found: int = sock.getsockname()[1]
            _HANDED_OUT.add(found)
            return found
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        any_port: int = sock.getsockname()[1]
        return any_port


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOCALHOST, port)) == 0


@dataclass
class TlsFiles:
    """The CA, the broker's certificate and key, and a client certificate and key, all signed by the CA."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1/localhost (made with ``cryptography``, see tests/pki.py)."""
    from pki import issue, make_ca

    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca("iotdtls mqtt test CA")
    _, ca_crt = ca.write(directory, "ca")
    key, crt = issue(ca, "mosquitto").write(directory, "broker")
    client_key, client_crt = issue(ca, "gateway").write(directory, "client")
    return TlsFiles(ca=ca_crt, cert=crt, key=key, client_cert=client_crt, client_key=client_key)


class Broker:
    """mosquitto on 127.0.0.1: ``port`` (plain, anonymous), and with ``tls`` also ``tls_port`` (users from
    ``users`` if given, else anonymous) and, with ``client_certs``, ``mtls_port`` (client certificate required)."""

    def __init__(self, directory: Path, *, tls: TlsFiles | None = None, users: dict[str, str] | None = None,
                 client_certs: bool = False, persistence: bool = False) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed")
        self.binary = binary
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        self.tls_port = free_tcp_port() if tls else None
        self.mtls_port = free_tcp_port() if tls and client_certs else None
        self.log_path = directory / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        password_file = self._password_file(users) if users else None
        lines = [*(["user root"] if os.geteuid() == 0 else []), "per_listener_settings true",
                 "log_type error", "log_type warning", "log_type notice", "log_type information",
                 "connection_messages true", "log_timestamp_format %H:%M:%S"]
        if persistence:
            lines += ["persistence true", f"persistence_location {directory}/", "autosave_interval 0"]
        else:
            lines += ["persistence false"]
        # a subscriber that falls behind must not lose messages (mosquitto drops above 1000 queued by default)
        lines += ["max_queued_messages 0"]
        lines += [f"listener {self.port} {LOCALHOST}", "allow_anonymous true"]
        for port, require_cert in ((self.tls_port, False), (self.mtls_port, True)):
            if port is None or tls is None:
                continue
            lines += [f"listener {port} {LOCALHOST}", f"certfile {tls.cert}", f"keyfile {tls.key}"]
            if require_cert:
                lines += [f"cafile {tls.ca}", "require_certificate true"]
            if password_file is not None:
                lines += ["allow_anonymous false", f"password_file {password_file}"]
            else:
                lines += ["allow_anonymous true"]
        self.config_path = directory / "mosquitto.conf"
        self.config_path.write_text("\n".join(lines) + "\n")

    def _password_file(self, users: dict[str, str]) -> Path:
        path = self.directory / "passwords"
        for i, (user, password) in enumerate(users.items()):
            argv = ["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(path), user, password]
            subprocess.run(argv, check=True, capture_output=True, timeout=DEFAULT_TIMEOUT)
        path.chmod(0o600)
        return path

    def url(self, scheme: str = "mqtt") -> str:
        port = {"mqtt": self.port, "mqtts": self.tls_port}[scheme]
        return f"{scheme}://{LOCALHOST}:{port}"

    # -- the process ------------------------------------------------------------------------------------------
    def start(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Start the broker and wait until every listener accepts connections."""
        if self.alive():
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 (the broker keeps writing to it)
        try:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.config_path)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        ports = [p for p in (self.port, self.tls_port, self.mtls_port) if p is not None]
        deadline = time.monotonic() + timeout
        while not all(_listening(p) for p in ports):
            if not self.alive():
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not listen on {ports} within {timeout} s:\n{self.log()}")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """SIGTERM (with persistence, mosquitto saves its database), then wait."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- a subscriber ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float = field(default_factory=time.monotonic)


class Subscriber:
    """A paho-mqtt client in its own thread, subscribed with QoS 1 to ``topics``, collecting what arrives.

    ``persistent`` uses a persistent session (clean_session=False): with a broker that has persistence on, what is
    published while the subscriber is away (a broker restart) is kept for it. paho reconnects by itself.
    """

    def __init__(self, port: int, topics: Iterable[str], *, client_id: str | None = None,
                 persistent: bool = False) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.port = port
        self.topics = list(topics)
        self.received: list[Received] = []
        self._cond = threading.Condition()
        self.connects = 0
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                   client_id=client_id or f"test-sub-{os.getpid()}-{id(self)}",
                                   clean_session=not persistent)
        self._client.reconnect_delay_set(1, 1)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._subscribed = threading.Event()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            self.connects += 1
            client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._cond:
            self.received.append(Received(message.topic, bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._client.connect(LOCALHOST, self.port, keepalive=5)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"the subscriber could not subscribe on port {self.port}")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.received)

    def on(self, topic_prefix: str) -> list[Received]:
        return [r for r in self.snapshot() if r.topic.startswith(topic_prefix)]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = DEFAULT_TIMEOUT,
                 what: str = "the expected messages") -> list[Received]:
        """Wait (in this thread) until ``predicate(received)`` holds; TimeoutError otherwise. The predicate runs on
        a copy, at most every 20 ms, so that paho's thread is never kept waiting."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.snapshot()
            if predicate(got):
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"subscriber: no {what} within {timeout} s ({len(got)} received)")
            with self._cond:
                if len(self.received) == len(got):
                    self._cond.wait(0.1)
            time.sleep(0.02)

    async def until(self, predicate: Callable[[list[Received]], bool], timeout: float = DEFAULT_TIMEOUT,
                    what: str = "the expected messages") -> list[Received]:
        """``wait_for`` for a test running an event loop (polls, so that the loop keeps running)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.snapshot()
            if predicate(got):
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"subscriber: no {what} within {timeout} s ({len(got)} received)")
            await asyncio.sleep(0.05)

    def __enter__(self) -> Subscriber:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fetch_retained(port: int, topic: str, timeout: float = 1.0) -> bytes | None:
    """The message the broker retains on ``topic`` (a fresh connection and subscription), or None after
    ``timeout``."""
    client_id = f"test-retained-{os.getpid()}-{time.monotonic_ns()}"
    with Subscriber(port, [topic], client_id=client_id) as sub, contextlib.suppress(TimeoutError):
        got = sub.wait_for(lambda r: any(m.retain for m in r), timeout=timeout, what="retained message")
        return next(m.payload for m in got if m.retain)
    return None


# -- a proxy that watches PUBLISH / PUBACK ----------------------------------------------------------------------


class MqttProxy:
    """A TCP proxy (run on the test's event loop) between MQTT clients and the broker on ``upstream``.

    It parses the packets both ways: ``outstanding`` holds the packet ids of the clients' QoS 1/2 PUBLISHes that
    have not had their PUBACK forwarded back, and ``max_outstanding`` the largest it ever was. ``hold()`` stops
    forwarding anything from the broker to the clients (PUBACKs included) until ``release()``; ``drop()`` cuts
    the connections.
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.outstanding: set[int] = set()
        self.max_outstanding = 0
        self.publishes = 0
        self.pubacks = 0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> MqttProxy:
        self._server = await asyncio.start_server(self._handle, LOCALHOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            w.close()
        self._open.set()

    def drop(self) -> None:
        """Cut every connection now (both sides see a reset, as when the network fails)."""
        for w in list(self._conns):
            w.transport.abort()
        self.outstanding.clear()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection(LOCALHOST, self.upstream)
        except OSError:
            client_w.close()
            return
        self._conns.update((client_w, broker_w))
        try:
            up = asyncio.ensure_future(self._pipe(client_r, broker_w, from_client=True))
            down = asyncio.ensure_future(self._pipe(broker_r, client_w, from_client=False))
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
            up.cancel()
            down.cancel()
        finally:
            for w in (client_w, broker_w):
                self._conns.discard(w)
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = await reader.readexactly(1)
                length, mult, raw_len = 0, 1, b""
                while True:
                    b = await reader.readexactly(1)
                    raw_len += b
                    length += (b[0] & 0x7F) * mult
                    mult *= 128
                    if not b[0] & 0x80:
                        break
                body = await reader.readexactly(length)
                kind = header[0] >> 4
                if from_client and kind == 3 and (header[0] >> 1) & 3:  # PUBLISH with QoS 1 or 2
                    topic_len = int.from_bytes(body[:2], "big")
                    mid = int.from_bytes(body[2 + topic_len:4 + topic_len], "big")
                    self.publishes += 1
                    self.outstanding.add(mid)
                    self.max_outstanding = max(self.max_outstanding, len(self.outstanding))
                elif not from_client:
                    await self._open.wait()
                    if kind == 4:  # PUBACK
                        self.pubacks += 1
                        self.outstanding.discard(int.from_bytes(body[:2], "big"))
                writer.write(header + raw_len + body)
                await writer.drain()
