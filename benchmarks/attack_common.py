"""Building blocks shared by the attack harness (``python -m benchmarks.attacks``) and ``tests/test_attacks.py``.

* :class:`Timers`: the server's (and our clients') retransmission and handshake timers, scaled for quick runs.
* :class:`ServerCommand` / :class:`ServerProcess`: a real ``iotdtls-server`` process, optionally from another
  copy of the code (``IOTDTLS_ATTACK_PYTHONPATH``, ``IOTDTLS_ATTACK_PYTHON``), with its log and socket counters.
* Minimal DTLS record parsing (:func:`handshake_types`, :func:`plain_alerts`, :func:`client_hello_cookie`) that
  does not depend on iotdtls internals, so the harness reads the wire of any version of the server.

Credentials are in ``attack_credentials.py``, the multiplexed sans-IO clients in ``attack_fleet.py``.
Addresses: all of 127/8 reaches the loopback interface on Linux, so 127.0.0.x models distinct hosts.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.ports import free_port, udp_bound
from iotdtls import DTLSConfiguration

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_IP = "127.0.0.1"
PSK_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
WRONG_KEY = bytes.fromhex("ffeeddccbbaa99887766554433221100")
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; missing from Python 3.11's socket module

# Content and handshake types (RFC 6347), spelled out so the parsing below needs no iotdtls internals.
CT_CCS, CT_ALERT, CT_HANDSHAKE, CT_APPDATA = 20, 21, 22, 23
HT_CLIENT_HELLO, HT_SERVER_HELLO, HT_HELLO_VERIFY_REQUEST = 1, 2, 3


# ------------------------------------------------------------------------------------------------
# Timers
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timers:
    """Retransmission and handshake timers of the server (and of our clients); :meth:`scaled` divides the defaults."""

    initial: float = 2.0
    maximum: float = 8.0
    handshake: float = 120.0

    @classmethod
    def scaled(cls, factor: float) -> Timers:
        """The defaults divided by ``factor`` (1: the real defaults)."""
        d = cls()
        return cls(d.initial / factor, d.maximum / factor, d.handshake / factor)

    @property
    def is_default(self) -> bool:
        return self == Timers()

    def server_args(self) -> list[str]:
        """Flags for iotdtls-server; none at the defaults, so the real defaults are what is measured."""
        if self.is_default:
            return []
        return ["--retransmit-initial", f"{self.initial:g}", "--retransmit-max", f"{self.maximum:g}",
                "--handshake-timeout", f"{self.handshake:g}"]

    def client(self, config: DTLSConfiguration, handshake: float | None = None) -> DTLSConfiguration:
        """``config`` with these timers (and an optional own handshake budget)."""
        config.retransmit_initial = self.initial
        config.retransmit_max = self.maximum
        config.handshake_timeout = self.handshake if handshake is None else handshake
        return config


# ------------------------------------------------------------------------------------------------
# The server process
# ------------------------------------------------------------------------------------------------


@dataclass
class ServerCommand:
    """How to start ``iotdtls-server``: which Python, which copy of the code, which extra flags.

    ``pythonpath`` (env ``IOTDTLS_ATTACK_PYTHONPATH``) is a directory holding the ``iotdtls`` package to run, e.g.
    a ``git worktree`` of an older commit; the server then also runs with that directory as its working
    directory, so ``python -m`` cannot pick up another copy. ``extra_args`` (env ``IOTDTLS_ATTACK_SERVER_ARGS``,
    split on spaces) are appended to every server command line: flags only newer servers know.
    """

    python: str = sys.executable
    pythonpath: str | None = None
    extra_args: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> ServerCommand:
        extra = os.environ.get("IOTDTLS_ATTACK_SERVER_ARGS", "").split()
        return cls(os.environ.get("IOTDTLS_ATTACK_PYTHON") or sys.executable,
                   os.environ.get("IOTDTLS_ATTACK_PYTHONPATH") or None, extra)

    @property
    def cwd(self) -> str:
        return self.pythonpath or str(REPO_ROOT)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.pythonpath, env.get("PYTHONPATH")) if p)
        return env

    def argv(self, args: Iterable[str]) -> list[str]:
        return [self.python, "-m", "iotdtls.cli.server", *args, *self.extra_args]

    def code_location(self) -> str:
        """Where the server's ``iotdtls`` package is imported from, and the commit there (if a git checkout)."""
        out = subprocess.run([self.python, "-c", "import iotdtls; print(iotdtls.__file__)"], cwd=self.cwd,
                             env=self.env(), capture_output=True, text=True, timeout=30)
        where = out.stdout.strip() if out.returncode == 0 else f"? ({self.python} could not import iotdtls)"
        rev = subprocess.run(["git", "-C", self.cwd, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", self.cwd, "status", "--porcelain", "--", "iotdtls"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{where} (commit {rev or '?'}{', iotdtls/ modified' if dirty else ''})"


class ServerProcess:
    """A running ``iotdtls-server``; its stderr lines are collected in ``log``."""

    def __init__(self, command: ServerCommand, args: list[str], *, host: str = SERVER_IP,
                 port: int | None = None, ready_timeout: float = 15.0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.argv = command.argv(["--host", host, "--port", str(self.port), *args])
        self.log: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(self.argv, cwd=command.cwd, env=command.env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + ready_timeout
        while not (udp_bound(self.port) and any("listening" in line for line in self.lines())):
            if self.proc.poll() is not None:
                self._reader.join(1.0)
                raise RuntimeError(f"iotdtls-server exited with {self.proc.returncode}: {' '.join(self.argv)}\n"
                                   + "\n".join(self.lines()))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"iotdtls-server not ready within {ready_timeout} s:\n" + "\n".join(self.lines()))
            time.sleep(0.02)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            with self._lock:
                self.log.append(raw.decode(errors="replace").rstrip("\n"))

    def lines(self) -> list[str]:
        with self._lock:
            return list(self.log)

    def grep(self, pattern: str) -> list[str]:
        rx = re.compile(pattern, re.IGNORECASE)
        return [line for line in self.lines() if rx.search(line)]

    def socket_drops(self) -> int:
        """Datagrams the kernel dropped at the server's socket (the ``drops`` column of /proc/net/udp)."""
        suffix = f":{self.port:04X}"
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            f = line.split()
            if len(f) > 12 and f[1].endswith(suffix):
                return int(f[-1])
        return -1

    def receive_buffer(self) -> int | None:
        """The server socket's receive buffer limit in bytes (``rb`` from ``ss -m``), if ``ss`` is available."""
        try:
            out = subprocess.run(["ss", "-uanm", "sport", "=", f":{self.port}"], capture_output=True, text=True,
                                 timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        m = re.search(r"\brb(\d+)", out)
        return int(m.group(1)) if m else None

    def rss_kb(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2.0)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------
# Sockets and wire parsing
# ------------------------------------------------------------------------------------------------


def udp_socket(ip: str = "127.0.0.1", port: int = 0, rcvbuf: int | None = None, blocking: bool = False
               ) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((ip, port))
    sock.setblocking(blocking)
    return sock


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft limit on open files toward ``wanted`` (up to the hard limit); return the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


_HDR = struct.Struct(">BHQH")


def records(datagram: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """``(content_type, epoch, seq, fragment)`` of each record of a datagram."""
    pos = 0
    while len(datagram) - pos >= 13:
        ctype, _version, epoch_seq, length = _HDR.unpack_from(datagram, pos)
        pos += 13
        if pos + length > len(datagram):
            return
        yield ctype, epoch_seq >> 48, epoch_seq & ((1 << 48) - 1), datagram[pos:pos + length]
        pos += length


def handshake_fragments(datagram: bytes) -> list[tuple[int, int, int]]:
    """``(msg_type, message_seq, fragment_offset)`` of each plaintext (epoch 0) handshake fragment."""
    out = []
    for ctype, epoch, _seq, frag in records(datagram):
        if ctype != CT_HANDSHAKE or epoch != 0:
            continue
        pos = 0
        while len(frag) - pos >= 12:
            msg_type = frag[pos]
            message_seq = int.from_bytes(frag[pos + 4:pos + 6], "big")
            offset = int.from_bytes(frag[pos + 6:pos + 9], "big")
            flen = int.from_bytes(frag[pos + 9:pos + 12], "big")
            out.append((msg_type, message_seq, offset))
            pos += 12 + flen
    return out


def handshake_types(datagram: bytes) -> list[int]:
    return [t for t, _, _ in handshake_fragments(datagram)]


def is_hello_verify_request(datagram: bytes) -> bool:
    return HT_HELLO_VERIFY_REQUEST in handshake_types(datagram)


def starts_flight(datagram: bytes) -> bool:
    """The datagram carries the start of a ServerHello: one (re)transmission of the server's first flight."""
    return any(t == HT_SERVER_HELLO and off == 0 for t, _, off in handshake_fragments(datagram))


def plain_alerts(datagram: bytes) -> list[tuple[int, int]]:
    """``(level, description)`` of each plaintext (epoch 0) alert."""
    return [(f[0], f[1]) for ct, ep, _, f in records(datagram) if ct == CT_ALERT and ep == 0 and len(f) == 2]


def client_hello_cookie(datagram: bytes) -> bytes | None:
    """The cookie of an unfragmented plaintext ClientHello, or None if the datagram is not one."""
    for ctype, epoch, _seq, frag in records(datagram):
        if ctype != CT_HANDSHAKE or epoch != 0 or len(frag) < 12 + 35 or frag[0] != HT_CLIENT_HELLO:
            continue
        body = frag[12:]
        sid_len = body[34]
        if len(body) < 36 + sid_len:
            return None
        clen = body[35 + sid_len]
        return body[36 + sid_len:36 + sid_len + clen]
    return None


def with_record_seq(datagram: bytes, seq: int) -> bytes:
    """A one-record datagram with its 48-bit record sequence number replaced (a retransmission's header)."""
    ctype, version, epoch_seq, length = _HDR.unpack_from(datagram)
    return _HDR.pack(ctype, version, (epoch_seq >> 48 << 48) | seq, length) + datagram[13:]


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    if not n:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
