"""What the iotdtls-provision commands share: one-line errors (exit 2 for usage, 1 for failure), keys read from
files or stdin (never from the command line), files that hold secrets (0600, put in place only once the registry
has committed), durations, times, the device's ``config.json``, and the progress of long batches."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import string
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

from iotdtls.cli.runtime import is_quiet
from iotdtls.keys import write_secret_file

from ..devices import Credential, Device
from ..registry import Registry

PROG = "iotdtls-provision"
#: Batches at least this long show their progress (a bar on a terminal, plain lines otherwise).
PROGRESS_MIN = 1000
#: A printable key (libcoap before 4.3.5 takes ``-k`` as text): 22 letters and digits, 130 bits.
PRINTABLE_LENGTH = 22
_PRINTABLE = string.ascii_letters + string.digits
_HEX_KEY = re.compile(r"(?:0[xX])?[0-9A-Fa-f]{32,}")
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)([smhdw]))+|(\d+(?:\.\d+)?)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class CliError(Exception):
    """An error the command reports in one line (never with a secret in it)."""

    status = 1


class UsageError(CliError):
    """The request cannot be done as asked: bad arguments, bad input rows, an unknown device (exit 2)."""

    status = 2


class Failure(CliError):
    """The request was fine but could not be carried out: a file or the registry (exit 1)."""

    status = 1


def fail(message: str, status: int) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(status)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the usage and then the error)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        fail(f"{command + ': ' if command else ''}{message} (see --help)", 2)


class RefuseOnCommandLine(argparse.Action):
    """An option that would put a key on the command line (shell history, ``ps``): refused, never echoed."""

    def __init__(self, option_strings: list[str], dest: str, instead: str = "", **kw: Any) -> None:
        self.instead = instead
        super().__init__(option_strings, dest, nargs=None, help=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        fail(f"{option_string}: keys given on the command line are refused (they stay in the shell history and "
             f"show in ps); use {self.instead}", 2)


@dataclass
class Context:
    """An open registry and what the gateway's configuration says about reaching it."""

    registry: Registry
    #: The CoAPs address of the gateway (None with --registry).
    bind: tuple[str, int] | None = None
    #: The gateway's private key file ([coaps] key_file), for raw-public-key devices.
    gateway_key: Path | None = None


# -- keys from files ---------------------------------------------------------------------------------------------
def looks_like_key(text: str) -> bool:
    return bool(_HEX_KEY.fullmatch(text.strip()))


def read_key_text(path: str, option: str) -> str:
    """The text of a key file, or of stdin for ``-``. A value that is a key itself is refused without being echoed
    (the error message would show it)."""
    if path == "-":
        if sys.stdin.isatty():
            print(f"{PROG}: reading the key for {option} from stdin (hex, then end of input)", file=sys.stderr)
        return sys.stdin.read()
    if looks_like_key(path) and not os.path.exists(path):
        raise UsageError(f"{option}: that is a key, not a file: keys given on the command line are refused; put "
                         "it in a file (written 0600), or give - and pipe it in")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise UsageError(f"{option} {path}: not text (the key is written in hex)") from None
    except OSError as exc:
        raise Failure(f"{option}: cannot read {path}: {exc.strerror}") from None


def parse_hex(text: str) -> bytes | None:
    """Hex digits (whitespace and a leading 0x ignored) as bytes; None if they are not hex."""
    t = "".join(text.split())
    if t[:2] in ("0x", "0X"):
        t = t[2:]
    if not t or len(t) % 2 or not all(c in string.hexdigits for c in t):
        return None
    return bytes.fromhex(t)


def read_hex_key(path: str, option: str, *, min_bytes: int, max_bytes: int | None = None) -> bytes:
    key = parse_hex(read_key_text(path, option))
    where = "stdin" if path == "-" else path
    if key is None:
        raise UsageError(f"{option} {where}: the key is not hex digits")
    if len(key) < min_bytes or (max_bytes is not None and len(key) > max_bytes):
        span = f"{min_bytes} to {max_bytes}" if max_bytes is not None else f"at least {min_bytes}"
        raise UsageError(f"{option} {where}: the key has {len(key)} bytes, not {span}")
    return key


def printable_key() -> bytes:
    """A random key of letters and digits that never starts with ``0x`` (libcoap 4.3.5+ reads that as hex)."""
    while True:
        key = "".join(secrets.choice(_PRINTABLE) for _ in range(PRINTABLE_LENGTH))
        if not key.lower().startswith("0x"):
            return key.encode()


# -- files that hold secrets -------------------------------------------------------------------------------------
class SecretFiles:
    """Files holding keys, written 0600 under temporary names next to their place, and renamed into place by
    :meth:`commit` once the registry has committed (or removed by :meth:`abort`): a failed write adds no device,
    a failed add leaves no file and replaces none."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def add(self, path: str | Path, data: bytes) -> None:
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            write_secret_file(tmp, data)
        except OSError as exc:
            raise Failure(f"cannot write {target}: {exc.strerror}") from None
        self._staged.append((tmp, target))

    def commit(self) -> None:
        for tmp, target in self._staged:
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise Failure(f"the registry has the change, but {target} could not be put in place "
                              f"({exc.strerror}): it is in {tmp}") from None
        self._staged = []

    def abort(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged = []

    @contextmanager
    def transaction(self) -> Iterator[SecretFiles]:
        """``with files.transaction():`` stage files and change the registry; commit on success."""
        try:
            yield self
        except BaseException:
            self.abort()
            raise
        self.commit()


def write_secret(out: str | None, text: str, *, show_secret: bool, what: str,
                 file_hint: str = "--out FILE") -> str | None:
    """Write ``text`` (which holds a key) to ``out`` at 0600, or print it with ``--show-secret``. Returns the file
    written, or None when printed."""
    if out is None or out == "-":
        if not show_secret:
            raise UsageError(f"{what} holds keys: write it to a file ({file_hint}, 0600), or print it with "
                             "--show-secret")
        sys.stdout.write(text)
        return None
    try:
        write_secret_file(out, text.encode())
    except OSError as exc:
        raise Failure(f"cannot write {out}: {exc.strerror}") from None
    return out


# -- values ------------------------------------------------------------------------------------------------------
def parse_duration(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``90s``, ``1w``, ``1d12h`` or plain seconds; more than 0."""
    t = text.strip()
    if not _DURATION.fullmatch(t):
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: a number with s, m, h, d or w (7d, 12h, 30m, "
                                         "90s, 1d12h), or seconds")
    parts = _DURATION_PART.findall(t)
    seconds = sum(float(n) * _UNITS[u] for n, u in parts) if parts else float(t)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: more than 0 (the device needs its old key to "
                                         "fetch the new one)")
    return seconds


def parse_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (1-65535)")
    return port


def parse_interval(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad interval {text!r}: seconds") from None
    if not 0 <= value <= 1e9:
        raise argparse.ArgumentTypeError(f"bad interval {text!r}: 0 to 1e9 seconds")
    return int(value) if value == int(value) else value


def iso(t: float | None) -> str | None:
    """A time as ``2026-12-07T10:56:01Z`` (UTC)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# -- devices -----------------------------------------------------------------------------------------------------
def describe(device: Device, now: float) -> dict[str, Any]:
    """What may be shown of a device: everything but its keys. A credential shows its generation when it is not
    the first, and when it was first used and retired once it was."""
    creds = []
    for c in device.credentials:
        item: dict[str, Any] = {"kind": c.kind, "identity": c.label, "not_before": c.not_before,
                                "not_after": c.not_after}
        if c.generation != 1:
            item["generation"] = c.generation
        if c.first_used_at is not None:
            item["first_used_at"] = c.first_used_at
        if c.retired_at is not None:
            item["retired_at"] = c.retired_at
        creds.append(item)
    return {"device": device.id, "state": device.state, "metadata": device.metadata, "credentials": creds,
            "created_at": device.created_at, "stale": device.stale(now)}


def device_psk(device: Device) -> Credential:
    """The PSK a device should use: its newest generation (after ``rotate``, the new key)."""
    cred = device.newest("psk")
    if cred is None or cred.secret is None:
        raise UsageError(f"device {device.id!r} is registered by its raw public key: it has no PSK (its own private "
                         "key is its credential)")
    return cred


def gateway_address(ctx: Context, host: str | None, port: int | None) -> tuple[str, int]:
    """Where the device reaches the gateway: --host/--port, else the configuration's [coaps] bind."""
    bind_host = ctx.bind[0] if ctx.bind and ctx.bind[0] not in ("0.0.0.0", "::", "") else None
    host = host or bind_host
    if host is None:
        why = "the gateway binds a wildcard address" if ctx.bind else "--registry gives no gateway address"
        raise UsageError(f"the device config needs --host: {why}")
    port = port or (ctx.bind[1] if ctx.bind else 5684)
    if not port:
        raise UsageError("the device config needs --port: the gateway binds port 0 (any free port)")
    return host, port


@dataclass(frozen=True)
class DeviceSettings:
    """What goes into a device's config.json besides its key."""

    host: str
    port: int
    interval: float | int = 60
    wifi_ssid: str | None = None
    wifi_password: str | None = None


def device_config(identity: str, psk: bytes, settings: DeviceSettings) -> dict[str, Any]:
    """The config.json that micropython/main.py reads."""
    cfg: dict[str, Any] = {"host": settings.host, "port": settings.port, "identity": identity, "psk": psk.hex(),
                           "path": "telemetry", "interval": settings.interval}
    if settings.wifi_ssid is not None:
        cfg["wifi_ssid"] = settings.wifi_ssid
        cfg["wifi_password"] = settings.wifi_password or ""
    return cfg


def add_device_options(p: argparse.ArgumentParser) -> None:
    """--host, --port, --interval, --wifi-ssid, --wifi-password-file: the device config's settings."""
    p.add_argument("--host", help="the gateway's address for the device (default: the [coaps] bind address)")
    p.add_argument("--port", type=parse_port, help="the gateway's port for the device (default: the [coaps] port)")
    p.add_argument("--interval", type=parse_interval, default=60, metavar="SECONDS",
                   help="seconds between readings (default 60)")
    p.add_argument("--wifi-ssid", metavar="SSID", help="Wi-Fi network of a board (ESP32, Pico W)")
    p.add_argument("--wifi-password-file", metavar="FILE|-", help="a file holding the Wi-Fi password (or -: stdin)")
    p.add_argument("--wifi-password", action=RefuseOnCommandLine, instead="--wifi-password-file FILE (or - for "
                   "stdin)")


def device_settings(ctx: Context, args: argparse.Namespace) -> DeviceSettings:
    host, port = gateway_address(ctx, args.host, args.port)
    password = None
    if args.wifi_password_file is not None:
        if args.wifi_ssid is None:
            raise UsageError("--wifi-password-file needs --wifi-ssid")
        password = read_key_text(args.wifi_password_file, "--wifi-password-file").rstrip("\r\n")
    return DeviceSettings(host, port, args.interval, args.wifi_ssid, password)


# -- progress ----------------------------------------------------------------------------------------------------
class Progress:
    """The progress of a long batch on stderr: a tqdm bar on a terminal, a plain line every 10% otherwise, nothing
    for a batch shorter than :data:`PROGRESS_MIN`."""

    def __init__(self, what: str, total: int, unit: str, stream: TextIO | None = None) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._next_line = max(1, total // 10)
        self._bar: Any = None
        self.enabled = total >= PROGRESS_MIN and not is_quiet()  # -q: no progress
        if self.enabled and self.stream.isatty():
            from tqdm import tqdm  # type: ignore[import-untyped]

            try:
                size = os.get_terminal_size(self.stream.fileno())
                known = size.columns > 0 and size.lines > 0
            except (OSError, ValueError):
                known = False
            # a terminal that reports no size (a bare pty): tqdm would hide the bar; 80x24 then
            self._bar = tqdm(total=total, desc=what, unit=f" {unit}", file=self.stream, mininterval=0.2,
                             dynamic_ncols=known, ncols=None if known else 80, nrows=None if known else 24)

    def update(self, done: int) -> None:
        """``done`` of ``total`` are done."""
        if not self.enabled or done <= self.done:
            return
        if self._bar is not None:
            self._bar.update(done - self.done)
        elif done >= self._next_line or done == self.total:
            print(f"{self.what}: {done} of {self.total} {self.unit}s ({100 * done // self.total}%)",
                  file=self.stream, flush=True)
            step = max(1, self.total // 10)
            self._next_line = (done // step + 1) * step
        self.done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
