"""Many MicroPython device clients in one CPython process, over real UDP sockets, for the fleet tests.

Each device is what ``micropython/main.py`` runs, minus the blocking socket loop: the session comes from
``main.new_session(cfg)`` (the credential, the fallback, the rotation path), readings from ``main.reading`` with the
idempotency key ``k=<boot>.<seq>``, and after every request ``main.adopt(cfg, session)`` stores a key the gateway
handed over in the device's own config file (atomically, as on a board) and switches the session to it. So the
rotation logic under test is main.py's own code; only the loop is different: one ``selectors`` loop drives
every device's sans-IO ``coaps.Session`` (send ``datagrams()``, feed ``receive()``, call ``on_timer()`` at
``timer()``), the way ``main.Device.wait`` drives one.

A device posts reading 1, 2, 3 ... every ``interval`` seconds; a failed reading is posted again (same payload and
key) after the session's back-off, like ``main.py --count``. Every DTLS handshake a device starts is recorded, so
a test can count the handshakes that never completed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import selectors
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from mp_shim import MP_DIR, import_device

MAIN = MP_DIR / "main.py"
_MODULES = ("coaps", "coap", "cbor", "dtls", "aes", "ccm", "prf")


def load_main() -> ModuleType:
    """micropython/main.py as a module, on freshly imported device modules with the cryptolib (AES) shim."""
    for name in _MODULES:
        sys.modules.pop("iotdtls_mp." + name, None)
    for name in reversed(_MODULES):
        import_device(name)
    spec = importlib.util.spec_from_file_location("mp_fleet_main", MAIN)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_config(path: Path, **cfg: Any) -> Path:
    """A device's config.json, 0600 like the provisioning tool writes it."""
    path.write_text(json.dumps(cfg))
    path.chmod(0o600)
    return path


class FleetDevice:
    """One device: its config (read from its file), its session, its UDP socket and what it saw."""

    def __init__(self, main: ModuleType, name: str, cfg_file: Path, rand: Callable[[int], bytes],
                 bind: str = "127.0.0.1") -> None:
        self.main = main
        self.name = name
        self.cfg = main.load_config(str(cfg_file))
        self.session = main.new_session(self.cfg, rand)
        self.boot = rand(4).hex()
        self.clients: list[Any] = []  # every dtls.Client the session made (one per handshake)
        orig = self.session._connect

        def connect(now: float) -> None:
            orig(now)
            self.clients.append(self.session.conn)

        self.session._connect = connect
        self.renewals = 0  # requests resent on a new session (main.py's stale-session and separate-response rules)
        renew = self.session._renew

        def renew_counted(now: float) -> None:
            self.renewals += 1
            renew(now)

        self.session._renew = renew_counted
        ai = socket.getaddrinfo(self.cfg["host"], self.cfg["port"], 0, socket.SOCK_DGRAM)[0]
        self.sock = socket.socket(ai[0], socket.SOCK_DGRAM)
        self.sock.bind((bind, 0))
        self.sock.connect(ai[-1])
        self.sock.setblocking(False)
        self.n = 0  # the reading in flight or last posted
        self.payload = b""
        self.next_at = 0.0  # when the next attempt starts (fleet clock)
        self.acked: list[int] = []  # readings answered 2.04
        self.answers: list[tuple[int, str]] = []  # (reading, CoAP code or error) of every attempt
        self.lines: list[str] = []  # what main.adopt reported ("key ... stored")
        self.hint_at: float | None = None  # when the device stored a new key (fleet clock)
        self.first_identity = self.session.identity
        self.new_at: float | None = None  # when a reading was first answered 2.04 under another identity
        self.limit: int | None = None  # stop after this many acknowledged readings
        self.up = time.monotonic()

    # -- as main.Device.post, without blocking -------------------------------------------------------
    def start(self, now: float) -> None:
        m = self.main
        if not self.answers or self.answers[-1][1] == "2.04":  # a new reading; a failed one is resent as it was
            self.n += 1
            self.payload = m.reading(self.n, time.monotonic() - self.up)
        s = self.session
        s.request(now, m.coap.PUT if self.cfg.get("method") == "PUT" else m.coap.POST, self.cfg["path"],
                  self.payload, m.coap.CF_CBOR, query=f"k={self.boot}.{self.n}")
        self.flush()
        self.check(now)

    def check(self, now: float) -> None:
        """After any event: if the request is over, record its answer, store any new key, schedule the next."""
        s = self.session
        if s.busy() or s.result is None:
            return
        ok, r = s.result
        code = self.main.coap.code_str(r.code) if ok == "ok" else r
        self.answers.append((self.n, code))
        if code == "2.04":
            self.acked.append(self.n)
            if self.new_at is None and s.identity != self.first_identity:
                self.new_at = now
        line = self.main.adopt(self.cfg, s)
        if line:
            self.lines.append(line)
            if line.endswith(" stored"):
                self.hint_at = now
        self.flush()  # the close_notify of a rekey
        s.result = None
        self.next_at = now + (self.cfg["interval"] if ok == "ok" else max(s.delay(), 0.05))

    def flush(self) -> None:
        for d in self.session.datagrams():
            with contextlib.suppress(OSError):  # a refused send (nobody listening): the timers retransmit
                self.sock.send(d)

    def idle(self) -> bool:
        return not self.session.busy()

    def done(self) -> bool:
        return self.limit is not None and len(self.acked) >= self.limit and self.idle()

    def close(self) -> None:
        self.session.drop()
        self.flush()
        self.sock.close()

    # -- figures -------------------------------------------------------------------------------------
    def handshakes(self) -> tuple[int, int]:
        """(handshakes completed, handshakes that ended without completing)."""
        ok = sum(1 for c in self.clients if c.established)
        failed = sum(1 for c in self.clients if not c.established and c.closed)
        return ok, failed

    def failures(self) -> list[str]:
        """Why handshakes failed: the dtls.Client errors (alert codes, "timeout", None for dropped)."""
        return [repr(c.error) for c in self.clients if not c.established and c.closed]


class Fleet:
    """Devices driven by one selector loop."""

    def __init__(self, devices: list[FleetDevice]) -> None:
        self.devices = devices
        self.t0 = time.monotonic()
        self.sel = selectors.DefaultSelector()
        for d in devices:
            self.sel.register(d.sock, selectors.EVENT_READ, d)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def run(self, until: Callable[[], bool], timeout: float, ramp: float = 0.0) -> bool:
        """Drive every device until ``until()`` or ``timeout`` seconds; devices that reached their ``limit``
        post no more. ``ramp``: the first readings start spread over this many seconds."""
        end = self.now() + timeout
        if ramp:
            for i, d in enumerate(self.devices):
                d.next_at = max(d.next_at, self.now() + ramp * i / len(self.devices))
        while True:
            now = self.now()
            if until():
                return True
            if now >= end:
                return False
            wake = end
            for d in self.devices:
                s = d.session
                t = s.timer()
                if t is not None and t <= now:
                    s.on_timer(now)
                    d.flush()
                    d.check(now)
                    t = s.timer()
                if d.idle() and not (d.limit is not None and len(d.acked) >= d.limit):
                    if d.next_at <= now:
                        d.start(now)
                        t = s.timer()
                    else:
                        wake = min(wake, d.next_at)
                if t is not None:
                    wake = min(wake, t)
            for key, _ in self.sel.select(max(0.0, wake - self.now())):
                d = key.data
                while True:
                    try:
                        data = d.sock.recv(4096)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:  # ICMP unreachable on a connected socket
                        break
                    now = self.now()
                    d.session.receive(data, now)
                    d.flush()
                    d.check(now)

    def close(self) -> None:
        for d in self.devices:
            self.sel.unregister(d.sock)
            d.close()
        self.sel.close()


def seeded_rand(seed: int) -> Callable[[int], bytes]:
    """Reproducible randomness per device where a test wants it; os.urandom otherwise."""
    if seed < 0:
        return os.urandom
    r = random.Random(seed)
    return lambda n: bytes(r.getrandbits(8) for _ in range(n))


def handshake_all(dtls: ModuleType, port: int, creds: list[tuple[bytes, bytes]], timeout: float = 30.0,
                  host: str = "127.0.0.1") -> list[Any]:
    """One DTLS handshake (the device's ``dtls.Client``) per (identity, psk), all at once, each from its own UDP
    socket; returns the clients: established, or closed with ``error`` (an alert code, "timeout")."""
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    clients = []
    for identity, psk in creds:
        c = dtls.Client(identity, psk, os.urandom, retransmit_initial=0.5, handshake_timeout=timeout)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((host, port))
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, c)
        c.connect(0.0)
        clients.append((c, sock))
    try:
        while True:
            now = time.monotonic() - t0
            wake = timeout
            for c, sock in clients:
                c.on_timer(now)
                for d in c.datagrams():
                    sock.send(d)
                t = c.timer()
                if not (c.established or c.closed) and t is not None:
                    wake = min(wake, t)
            if all(c.established or c.closed for c, _ in clients) or now >= timeout:
                break
            for key, _ in sel.select(max(0.0, wake - now)):
                c = key.data
                try:
                    data = key.fileobj.recv(4096)
                except OSError:
                    continue
                c.receive(data, time.monotonic() - t0)
        for c, sock in clients:
            c.close()  # close_notify for the established ones
            for d in c.datagrams():
                sock.send(d)
    finally:
        for _, sock in clients:
            sel.unregister(sock)
            sock.close()
        sel.close()
    return [c for c, _ in clients]
