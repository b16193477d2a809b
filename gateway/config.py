"""The gateway's TOML configuration as frozen dataclasses.

:func:`load` reads a file and returns a :class:`GatewayConfig`, or raises :class:`ConfigError` carrying one
:class:`Problem` per mistake (file, key, what is wrong), so ``iotdtls-gateway check`` can print them all at once.
Defaults suit a Raspberry Pi: they are the values a key takes when it is absent, documented in docs/gateway.md.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

T = TypeVar("T")

DEFAULT_DATA_DIR = "/var/lib/iotdtls-gateway"
#: The fields of the topic templates: the device's id, and the gateway's MQTT client id (one per site).
TOPIC_FIELDS = frozenset({"device", "client_id"})


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}" if self.key else f"{self.file}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason, one line each."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass(frozen=True)
class CoapsConfig:
    host: str = "0.0.0.0"
    port: int = 5684
    #: Datagram budget of the gateway's DTLS flights and CoAP blocks (iotdtls's default suits 6LoWPAN paths).
    mtu: int = 512
    max_sessions: int = 10000
    #: Handshakes in progress (a quarter per source network). 1,000: a fleet of 10,000 that reconnects at once
    #: after a restart is back within ~20 s (100: ~70 s; docs/benchmarks.md); the worst case is a few MB.
    max_handshakes: int = 1000
    max_sessions_per_identity: int = 1
    handshake_timeout: float = 120.0
    idle_timeout: float = 86400.0
    retransmit_initial: float = 2.0
    retransmit_max: float = 8.0
    #: Largest telemetry body (bytes); a larger one gets 4.13.
    max_body: int = 16384
    #: The gateway's own private key (PEM/DER), presented as a raw public key to devices that use one; the
    #: devices' keys are pinned in the registry. Without it only PSK devices are served.
    key_file: Path | None = None
    #: RFC 9146 connection ID the gateway asks devices that offer one to put in their records (bytes; 0: none),
    #: so that a device's session survives a new address or source port (NAT rebinding, sleep).
    cid_length: int = 4
    #: RFC 9853: before a session moves, challenge the new address (for devices that offer it).
    return_routability_check: bool = False
    #: Session resumption: RFC 5077 tickets for devices that ask (sealed with keys kept in the data dir, so they
    #: survive a restart) and how long a session may be resumed; plus a session-ID cache of this many entries.
    session_tickets: bool = True
    session_lifetime: float = 86400.0
    session_cache: int = 10000


@dataclass(frozen=True)
class SpoolConfig:
    #: Bounds of the spool; when either is reached, confirmable POSTs get 5.03 with Max-Age (nothing is dropped).
    max_bytes: int = 256 * 1024 * 1024
    max_age: float = 7 * 86400.0
    #: Group commit: how long the writer waits for more messages before one fsync-ed commit.
    commit_window: float = 0.005
    #: How long an idempotency key is remembered for deduplication, and how many keys at most.
    dedup_window: float = 86400.0
    dedup_max_keys: int = 1_000_000
    #: Max-Age (seconds) of a 5.03 when the spool is full.
    retry_after: int = 30


@dataclass(frozen=True)
class MqttConfig:
    url: str
    host: str
    port: int
    tls: bool
    topic: str = "devices/{device}/telemetry"
    qos: int = 1
    client_id: str = "iotdtls-gateway"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = 30
    #: QoS 1 publishes awaiting their PUBACK at once.
    inflight: int = 32
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    #: Retained "online" / "offline" (the latter as the last will): the broker tells consumers whether the
    #: gateway is up.
    status_topic: str = "gateways/{client_id}/status"
    #: Commands for devices: the gateway subscribes to this template with {device} as "+" (QoS 1, persistent
    #: session); empty: no commands. Results (and expiries) are published to ``result_topic``.
    command_topic: str = "devices/{device}/commands"
    result_topic: str = "devices/{device}/commands/result"


@dataclass(frozen=True)
class CommandsConfig:
    #: A command's time to live when it names none, and the most it may name (seconds).
    ttl: float = 3600.0
    max_ttl: float = 7 * 86400.0
    #: Commands waiting per device; one more is reported "rejected" on the result topic.
    max_per_device: int = 16
    #: Largest command (JSON bytes on the MQTT topic); it must reach the device in one CoAP message.
    max_bytes: int = 512


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"
    level: str = "info"


@dataclass(frozen=True)
class MetricsConfig:
    """The metrics server (/metrics, /healthz, the status page at /, /status.json); off without [metrics]."""

    host: str = "127.0.0.1"
    port: int = 9464


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    data_dir: Path
    coaps: CoapsConfig
    spool: SpoolConfig
    mqtt: MqttConfig | None
    log: LogConfig
    commands: CommandsConfig = CommandsConfig()
    metrics: MetricsConfig | None = None

    @property
    def registry_path(self) -> Path:
        return self.data_dir / "registry.sqlite3"

    @property
    def spool_path(self) -> Path:
        return self.data_dir / "spool.sqlite3"

    @property
    def ticket_keys_path(self) -> Path:
        """The keys that seal session tickets (0600): a restart keeps them, so devices resume."""
        return self.data_dir / "ticket-keys.bin"

    @property
    def downlink_path(self) -> Path:
        """The commands waiting for devices, and which configuration each was served."""
        return self.data_dir / "downlink.sqlite3"


class _Reader:
    """Reads typed keys from one TOML table, collecting problems instead of stopping at the first."""

    def __init__(self, file: str, table: dict[str, Any], prefix: str, problems: list[Problem]) -> None:
        self.file, self.table, self.prefix, self.problems = file, table, prefix, problems
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def problem(self, name: str, message: str) -> None:
        self.problems.append(Problem(self.file, self.key(name), message))

    def get(self, name: str, kind: type[T] | tuple[type, ...], default: T, what: str,
            check: Callable[[Any], str | None] | None = None) -> T:
        self.used.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            self.problem(name, f"expected {what}, got {_describe(value)}")
            return default
        if check is not None and (message := check(value)) is not None:
            self.problem(name, message)
            return default
        return value  # type: ignore[return-value]

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        return self.get(name, int, default, "an integer", _in_range(lo, hi))

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        return float(self.get(name, (int, float), default, "a number", _in_range(lo, hi)))

    def boolean(self, name: str, default: bool) -> bool:
        return self.get(name, bool, default, "true or false")

    def text(self, name: str, default: str, check: Callable[[Any], str | None] | None = None) -> str:
        return self.get(name, str, default, "a string", check)

    def path(self, name: str, base: Path) -> Path | None:
        value = self.get(name, str, "", "a file path", _non_empty)
        return (base / value) if value else None

    def unknown(self) -> None:
        for name in self.table:
            if name not in self.used:
                self.problem(name, "unknown key")


def _describe(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _in_range(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        return None if lo <= value <= hi else f"must be between {lo:g} and {hi:g}, got {value:g}"
    return check


def _non_empty(value: Any) -> str | None:
    return None if value else "must not be empty"


def _host_port(value: str, lowest: int = 1) -> tuple[str, int] | str:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port), or a problem; ``lowest=0`` allows port 0 (any free one)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%a-zA-Z]+)\]:(\d+)|([^:\[\]]+):(\d+)", value)
    if not m:
        return "expected HOST:PORT (an IPv6 address in brackets: [::]:5684)"
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not lowest <= int(port) < 65536:
        return f"port {port} is out of range ({lowest}-65535)"
    return host, int(port)


def _topic_template(fields: frozenset[str]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        names = re.findall(r"{([^{}]*)}", value)
        unknown = [n for n in names if n not in fields]
        if unknown:
            return f"unknown field {{{unknown[0]}}} (known: {', '.join('{' + f + '}' for f in sorted(fields))})"
        if "+" in value or "#" in value:
            return "a topic to publish to cannot contain the wildcards + or #"
        if not value or "\0" in value:
            return "must be a non-empty topic"
        return None
    return check


def load(path: str | Path) -> GatewayConfig:
    """Read and check ``path``; raises ConfigError (every problem) or returns the configuration."""
    path = Path(path)
    file = str(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError([Problem(file, "", f"cannot read: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(file, "", f"not valid TOML: {exc}")]) from None
    return parse(raw, path)


def parse(raw: dict[str, Any], path: Path) -> GatewayConfig:
    file = str(path)
    base = path.parent
    problems: list[Problem] = []
    top = _Reader(file, raw, "", problems)
    data_dir = base / top.text("data_dir", DEFAULT_DATA_DIR, _non_empty)
    tables: dict[str, dict[str, Any]] = {}
    for name in ("coaps", "spool", "mqtt", "log", "commands", "metrics"):
        top.used.add(name)
        value = raw.get(name, {})
        if not isinstance(value, dict):
            top.problem(name, f"expected a table [{name}], got {_describe(value)}")
            value = {}
        tables[name] = value
    top.unknown()
    coaps = _coaps(_Reader(file, tables["coaps"], "coaps.", problems), base)
    spool = _spool(_Reader(file, tables["spool"], "spool.", problems))
    mqtt = _mqtt(_Reader(file, tables["mqtt"], "mqtt.", problems), base) if "mqtt" in raw else None
    log = _log(_Reader(file, tables["log"], "log.", problems))
    commands = _commands(_Reader(file, tables["commands"], "commands.", problems))
    metrics = _metrics(_Reader(file, tables["metrics"], "metrics.", problems)) if "metrics" in raw else None
    if problems:
        raise ConfigError(problems)
    return GatewayConfig(path=path, data_dir=data_dir, coaps=coaps, spool=spool, mqtt=mqtt, log=log,
                         commands=commands, metrics=metrics)


def _coaps(r: _Reader, base: Path) -> CoapsConfig:
    d = CoapsConfig()
    bind = r.text("bind", f"{d.host}:{d.port}", _non_empty)
    parsed = _host_port(bind, lowest=0)  # 0: the kernel picks a port, logged in the "serving coaps://" line
    if isinstance(parsed, str):
        r.problem("bind", parsed)
        parsed = (d.host, d.port)
    retransmit_initial = r.number("retransmit_initial", d.retransmit_initial, 0.05, 60)
    out = CoapsConfig(
        host=parsed[0], port=parsed[1],
        mtu=r.integer("mtu", d.mtu, 64, 65507),
        max_sessions=r.integer("max_sessions", d.max_sessions, 1, 10_000_000),
        max_handshakes=r.integer("max_handshakes", d.max_handshakes, 1, 100_000),
        max_sessions_per_identity=r.integer("max_sessions_per_identity", d.max_sessions_per_identity, 0, 1000),
        handshake_timeout=r.number("handshake_timeout", d.handshake_timeout, 1, 3600),
        idle_timeout=r.number("idle_timeout", d.idle_timeout, 0, 365 * 86400),
        retransmit_initial=retransmit_initial,
        retransmit_max=r.number("retransmit_max", d.retransmit_max, retransmit_initial, 600),
        max_body=r.integer("max_body", d.max_body, 16, 1 << 20),
        key_file=r.path("key_file", base),
        cid_length=r.integer("cid_length", d.cid_length, 0, 20),
        return_routability_check=r.boolean("return_routability_check", d.return_routability_check),
        session_tickets=r.boolean("session_tickets", d.session_tickets),
        session_lifetime=r.number("session_lifetime", d.session_lifetime, 0, 30 * 86400),
        session_cache=r.integer("session_cache", d.session_cache, 0, 10_000_000),
    )
    r.unknown()
    return out


def _spool(r: _Reader) -> SpoolConfig:
    d = SpoolConfig()
    out = SpoolConfig(
        max_bytes=r.integer("max_bytes", d.max_bytes, 64 * 1024, 1 << 50),
        max_age=r.number("max_age", d.max_age, 60, 10 * 365 * 86400),
        commit_window=r.number("commit_window", d.commit_window, 0, 1),
        dedup_window=r.number("dedup_window", d.dedup_window, 0, 365 * 86400),
        dedup_max_keys=r.integer("dedup_max_keys", d.dedup_max_keys, 1, 1 << 40),
        retry_after=r.integer("retry_after", d.retry_after, 1, 86400),
    )
    r.unknown()
    return out


def _mqtt(r: _Reader, base: Path) -> MqttConfig | None:
    url = r.text("url", "", _non_empty)
    host, port, tls, user, password = "", 0, False, None, None
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            r.problem("url", f"scheme must be mqtt:// or mqtts://, got {parts.scheme or 'none'}")
        elif not parts.hostname:
            r.problem("url", "no host")
        elif parts.path not in ("", "/") or parts.query or parts.fragment:
            r.problem("url", "expected mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT] with nothing after the port")
        else:
            tls = parts.scheme == "mqtts"
            host = parts.hostname
            # the url is kept (and shown, logged) without the credentials it may carry
            url = f"{parts.scheme}://{'[' + host + ']' if ':' in host else host}" + (
                f":{parts.port}" if parts.port else "")
            try:
                port = parts.port or (8883 if tls else 1883)
            except ValueError:
                r.problem("url", "port out of range")
            user = unquote(parts.username) if parts.username else None
            password = unquote(parts.password) if parts.password else None
    elif "url" not in r.table:
        r.problem("url", "missing (the broker, e.g. mqtt://broker.example:1883)")
    d = MqttConfig(url="", host="", port=0, tls=False)
    username = r.text("username", user or "") or user
    password_file = r.path("password_file", base)
    if "password" in r.table:
        password = r.text("password", "")
    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            r.problem("password_file", f"cannot read {password_file}: {exc.strerror}")
    ca_file, cert_file, key_file = r.path("ca_file", base), r.path("cert_file", base), r.path("key_file", base)
    for name, value in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if value is not None and not value.is_file():
            r.problem(name, f"no such file: {value}")
    if (cert_file is None) != (key_file is None):
        r.problem("cert_file" if cert_file is None else "key_file", "cert_file and key_file go together")
    if (ca_file or cert_file) and not tls and url:
        r.problem("url", "TLS options are set but the url is mqtt:// (use mqtts://)")
    reconnect_min = r.number("reconnect_min", d.reconnect_min, 0.1, 3600)
    out = MqttConfig(
        url=url, host=host, port=port, tls=tls,
        topic=r.text("topic", d.topic, _topic_template(TOPIC_FIELDS)),
        qos=r.integer("qos", d.qos, 1, 2),
        client_id=r.text("client_id", d.client_id, _non_empty),
        username=username or None, password=password,
        ca_file=ca_file, cert_file=cert_file, key_file=key_file,
        keepalive=r.integer("keepalive", d.keepalive, 5, 3600),
        inflight=r.integer("inflight", d.inflight, 1, 1024),
        reconnect_min=reconnect_min,
        reconnect_max=r.number("reconnect_max", d.reconnect_max, reconnect_min, 86400),
        status_topic=r.text("status_topic", d.status_topic, _topic_template(frozenset({"client_id"}))),
        command_topic=r.text("command_topic", d.command_topic, _filter_template),
        result_topic=r.text("result_topic", d.result_topic, _topic_template(TOPIC_FIELDS)),
    )
    r.unknown()
    return out


def _filter_template(value: Any) -> str | None:
    """A topic to subscribe to: empty (no commands), or {device} as one whole level and exactly once."""
    if value == "":
        return None
    problem = _topic_template(TOPIC_FIELDS)(value)
    if problem is not None:
        return problem
    levels = value.replace("{client_id}", "x").split("/")
    if levels.count("{device}") != 1 or sum("{" in level for level in levels) != 1:
        return "must contain {device} once, as a whole topic level (devices/{device}/commands)"
    return None


def _commands(r: _Reader) -> CommandsConfig:
    d = CommandsConfig()
    max_ttl = r.number("max_ttl", d.max_ttl, 1, 365 * 86400)
    out = CommandsConfig(
        ttl=r.number("ttl", d.ttl, 1, max_ttl),
        max_ttl=max_ttl,
        max_per_device=r.integer("max_per_device", d.max_per_device, 1, 10_000),
        max_bytes=r.integer("max_bytes", d.max_bytes, 16, 4096),
    )
    r.unknown()
    return out


def _metrics(r: _Reader) -> MetricsConfig:
    d = MetricsConfig()
    parsed = _host_port(r.text("bind", f"{d.host}:{d.port}", _non_empty))
    if isinstance(parsed, str):
        r.problem("bind", parsed)
        parsed = (d.host, d.port)
    r.unknown()
    return MetricsConfig(host=parsed[0], port=parsed[1])


def _log(r: _Reader) -> LogConfig:
    d = LogConfig()
    out = LogConfig(
        format=r.text("format", d.format, lambda v: None if v in ("text", "json") else "must be text or json"),
        level=r.text("level", d.level, lambda v: None if v in ("debug", "info", "warning", "error")
                     else "must be debug, info, warning or error"),
    )
    r.unknown()
    return out
