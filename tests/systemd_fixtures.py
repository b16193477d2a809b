"""A fake systemd for the gateway's tests: the ``NOTIFY_SOCKET`` a test binds (a path, or an abstract name), and
``iotdtls-gateway run`` started with the environment systemd would give it (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``).

::

    with NotifySocket() as sd:
        proc = start_gateway(gw, {"NOTIFY_SOCKET": sd.env, "WATCHDOG_USEC": "200000"})
        sd.wait_for(lambda n: n.has("READY"))
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gateway_fixtures import GATEWAY, Gateway
from peers import LineReader, PeerProcess, _live_processes

DEFAULT_TIMEOUT = 20.0


@dataclass(frozen=True)
class Notification:
    """One datagram: when it arrived (time.monotonic()) and its ``KEY=value`` lines."""

    at: float
    text: str

    @property
    def fields(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.text.split("\n") if "=" in line)

    def has(self, key: str, value: str = "1") -> bool:
        return self.fields.get(key) == value


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's; a thread collects what arrives."""

    def __init__(self, *, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: str | None = None
        if abstract:
            name = f"iotdtls-test-notify-{os.getpid()}-{secrets.token_hex(6)}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:  # a short path: sun_path holds 108 bytes
            self._dir = tempfile.mkdtemp(prefix="sd-", dir="/tmp")
            self.env = os.path.join(self._dir, "notify")
            self.sock.bind(self.env)
        self.sock.settimeout(0.05)
        self._lock = threading.Condition()
        self._received: list[Notification] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-systemd", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._received.append(Notification(time.monotonic(), data.decode("utf-8", "replace")))
                self._lock.notify_all()

    @property
    def received(self) -> list[Notification]:
        with self._lock:
            return list(self._received)

    def pings(self) -> list[float]:
        return [n.at for n in self.received if n.has("WATCHDOG")]

    def wait_for(self, predicate: Callable[[Notification], bool], timeout: float = DEFAULT_TIMEOUT,
                 what: str = "the notification", after: int = 0) -> Notification:
        """The first notification from index ``after`` on for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for n in self._received[after:]:
                    if predicate(n):
                        return n
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = "\n".join(repr(n.text) for n in self._received[-20:])
                    raise TimeoutError(f"fake systemd: no {what} within {timeout} s; the last ones:\n{got}")
                self._lock.wait(min(remaining, 0.1))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EnvProcess(PeerProcess):
    """A PeerProcess started with extra environment variables (and without those named in ``unset``)."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], unset: Sequence[str] = (),
                 preexec: Callable[[], None] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.handshake_marker = None
        environ = {k: v for k, v in os.environ.items() if k not in unset}
        environ.update(env)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=environ, preexec_fn=preexec)
        _live_processes.add(self.proc)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.stdout = LineReader(self.proc.stdout, f"{name} stdout")
        self.stderr = LineReader(self.proc.stderr, f"{name} stderr")


def start_gateway(gw: Gateway, env: Mapping[str, str], *, log_json: bool = True,
                  wait: str | None = '"event":"started"', preexec: Callable[[], None] | None = None) -> PeerProcess:
    """``iotdtls-gateway run`` for the fixture's configuration with ``env`` (the systemd variables of the test's
    own environment are dropped first); ``gw.proc`` is set, so the fixture's provisioning and log helpers work."""
    gw.generation += 1
    argv = [*GATEWAY, "run", "--config", str(gw.config), *(["--log-json"] if log_json else [])]
    proc = EnvProcess(f"iotdtls-gateway#{gw.generation}", argv, env,
                      unset=("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "IOTDTLS_GATEWAY_TEST_STALL"),
                      preexec=preexec)
    gw.proc = proc
    if wait is not None:
        proc.wait_output(wait, timeout=DEFAULT_TIMEOUT)
    return proc
