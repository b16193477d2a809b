"""Real DTLS peers (OpenSSL, GnuTLS, tinydtls) for interop tests, all on 127.0.0.1.

Every peer is started from a context manager that waits until it is ready and always stops it
(terminate, then kill) on exit, with its output kept for assertion messages::

    port = free_udp_port()
    with openssl_server(port, KEY_HEX) as server, openssl_client(port, KEY_HEX, "dev1") as client:
        client.write_line("ping")
        assert server.read_line() == "ping"

Output conventions (so that ``read_line()`` returns received application data only):

* ``openssl s_server`` runs with ``-brief``: received data goes raw to stdout, the handshake summary
  ("Protocol version: ...", "Ciphersuite: ...") to stderr, and the single-letter stdin commands
  (a chunk starting with ``Q``/``q`` quits without ``-brief``!) are disabled.
* ``openssl s_client`` runs with ``-quiet -brief``: data to stdout, "CONNECTION ESTABLISHED" to stderr;
  ``-quiet`` implies ``-ign_eof`` and disables the Q/R/k commands.
* ``gnutls-cli`` prints its handshake report on stdout and then "- Simple Client Mode:" and one blank
  line; everything before that is kept as info (``info_lines``), everything after is data.
  ("*** ..." error/alert lines printed later by gnutls-cli do land in the data stream.)
* ``gnutls-serv --echo`` echoes every record back; it logs "*** Processing N bytes command: ..." on
  stderr and listens on 0.0.0.0 *and* :: (it has no listen-address option).
* tinydtls runs in-process through DTLSSocket (see ``TinyDTLSServer`` / ``TinyDTLSClient``).

Readiness of UDP servers is detected by polling ``/proc/net/udp`` for the bound port (no probe
packet is sent, nothing is bound by us), while checking that the process is still alive.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from benchmarks.ports import free_port
from benchmarks.ports import udp_bound as udp_port_bound

LOCALHOST = "127.0.0.1"
DEFAULT_TIMEOUT = 5.0

# GnuTLS priority string for DTLS 1.2 + PSK + AES-128-CCM-8 only (GUIDE section 3).
GNUTLS_PSK_PRIORITY = "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-CIPHER-ALL:+AES-128-CCM-8:-KX-ALL:+PSK"
OPENSSL_PSK_CIPHER = "PSK-AES128-CCM8"
# ECDHE-ECDSA + AES-128-CCM-8 with raw public keys (RFC 7250) in both directions, no PSK (GUIDE section 3).
GNUTLS_RPK_PRIORITY = (
    "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-CIPHER-ALL:+AES-128-CCM-8:-KX-ALL:+ECDHE-ECDSA:+CTYPE-CLI-RAWPK:+CTYPE-SRV-RAWPK"
)
OPENSSL_ECDSA_CIPHER = "ECDHE-ECDSA-AES128-CCM8"

PathLike = str | os.PathLike[str]

REQUIRE_PEERS_ENV = "IOTDTLS_REQUIRE_PEERS"


# --------------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------------


def require_peer(name: str, available: bool) -> None:
    """Skip the test if the peer is missing, or fail it when IOTDTLS_REQUIRE_PEERS=1 (CI)."""
    if available:
        return
    message = f"peer {name!r} is not available on this machine"
    if os.environ.get(REQUIRE_PEERS_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_PEERS_ENV}=1)", pytrace=False)
    pytest.skip(message)


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def have_gnutls() -> bool:
    return shutil.which("gnutls-cli") is not None and shutil.which("gnutls-serv") is not None


def have_tinydtls() -> bool:
    try:
        return importlib.util.find_spec("DTLSSocket") is not None
    except (ImportError, ValueError):
        return False


def have_libcoap() -> bool:
    return shutil.which("coap-client-gnutls") is not None or shutil.which("coap-client-openssl") is not None


def have_libcoap_build(tls: str) -> bool:
    """True if libcoap's ``coap-client-TLS`` and ``coap-server-TLS`` (tls: "gnutls", "openssl") are installed."""
    return shutil.which(f"coap-client-{tls}") is not None and shutil.which(f"coap-server-{tls}") is not None


def have_tshark() -> bool:
    return shutil.which("tshark") is not None


def mosquitto_binary() -> str | None:
    """Debian's broker, /usr/sbin/mosquitto, which is not on a normal user's PATH."""
    found = shutil.which("mosquitto")
    if found is None and os.access("/usr/sbin/mosquitto", os.X_OK):
        found = "/usr/sbin/mosquitto"
    return found


def have_mosquitto() -> bool:
    """The broker and its mosquitto_passwd (package ``mosquitto``), and the paho client the tests subscribe with."""
    return (mosquitto_binary() is not None and shutil.which("mosquitto_passwd") is not None
            and importlib.util.find_spec("paho") is not None)


def require_openssl() -> None:
    require_peer("openssl", have_openssl())


def require_gnutls() -> None:
    require_peer("gnutls (gnutls-cli/gnutls-serv)", have_gnutls())


def require_tinydtls() -> None:
    require_peer("tinydtls (pip DTLSSocket)", have_tinydtls())


def require_mosquitto() -> None:
    require_peer("mosquitto (Debian packages mosquitto and mosquitto-clients; pip paho-mqtt)", have_mosquitto())


def require_libcoap(tls: str | None = None) -> None:
    """libcoap's command-line tools: any build, or both tools of one build (tls: "gnutls", "openssl")."""
    if tls is None:
        require_peer("libcoap (coap-client-gnutls/coap-client-openssl)", have_libcoap())
    else:
        require_peer(f"libcoap {tls} build (coap-client-{tls}/coap-server-{tls})", have_libcoap_build(tls))


# --------------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------------

_handed_out_ports: set[int] = set()
_ports_lock = threading.Lock()


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that is free right now (never the same one twice per process)."""
    with _ports_lock:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((LOCALHOST, 0))
                port: int = sock.getsockname()[1]
            if port not in _handed_out_ports:
                _handed_out_ports.add(port)
                return port
    raise RuntimeError("could not find a free UDP port")


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((LOCALHOST, port))
            except OSError:
                return False
    return True


def free_port_pair() -> int:
    """A port N such that N and N+1 are free right now for UDP *and* TCP on 127.0.0.1.

    For libcoap's ``coap-server-* -p N``, which binds UDP and TCP on N (coap, coap+tcp) and on N+1 (coaps,
    coaps+tcp). Neither port is handed out again by `free_udp_port` in this process.
    """
    with _ports_lock:
        for _ in range(100):
            base = free_port(LOCALHOST)
            if base >= 65535 or base in _handed_out_ports or base + 1 in _handed_out_ports:
                continue
            if _port_free(base) and _port_free(base + 1):
                _handed_out_ports.update((base, base + 1))
                return base
    raise RuntimeError("could not find two adjacent free ports")


def _can_check_ports() -> bool:
    return Path("/proc/net/udp").exists()


# --------------------------------------------------------------------------------------------------
# Non-blocking line reader
# --------------------------------------------------------------------------------------------------


class PeerError(AssertionError):
    """A peer misbehaved (timeout, early exit); the message carries the peer's transcript."""


class LineReader:
    """Reads lines from a binary stream in a daemon thread; `readline(timeout)` never blocks forever.

    Every line is kept in `lines` (for diagnostics). Lines accepted by `is_data` are also queued for
    `readline`; the others only go to `info_lines`. `is_data` is called in the reader thread, in order.
    """

    def __init__(
        self,
        stream: IO[bytes],
        name: str = "",
        is_data: Callable[[str], bool] | None = None,
    ) -> None:
        self.name = name
        self.lines: list[str] = []
        self.info_lines: list[str] = []
        self._is_data = is_data
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cond = threading.Condition()
        self.eof = False
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name=f"LineReader-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for raw in iter(self._stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                data = self._is_data(line) if self._is_data is not None else True
                with self._cond:
                    self.lines.append(line)
                    if not data:
                        self.info_lines.append(line)
                    self._cond.notify_all()
                if data:
                    self._queue.put(line)
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self.eof = True
                self._cond.notify_all()
            self._queue.put(None)

    def readline(self, timeout: float = DEFAULT_TIMEOUT) -> str | None:
        """Next data line without its newline; None at EOF. Raises TimeoutError after `timeout` s."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no line on {self.name} within {timeout:.1f}s") from None
        if line is None:
            self._queue.put(None)  # keep reporting EOF
        return line

    def drain(self) -> list[str]:
        """All data lines queued right now, without waiting."""
        out: list[str] = []
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return out
            if line is None:
                self._queue.put(None)
                return out
            out.append(line)

    def wait_for(self, needle: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Wait until any line (data or info) contains `needle`; return it. TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        checked = 0
        with self._cond:
            while True:
                for line in self.lines[checked:]:
                    if needle in line:
                        return line
                checked = len(self.lines)
                remaining = deadline - time.monotonic()
                if self.eof:
                    raise TimeoutError(f"{self.name} closed without a line containing {needle!r}")
                if remaining <= 0:
                    raise TimeoutError(f"no line containing {needle!r} on {self.name} within {timeout:.1f}s")
                self._cond.wait(remaining)

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def join(self, timeout: float = 1.0) -> None:
        self._thread.join(timeout)


# --------------------------------------------------------------------------------------------------
# Subprocess peers
# --------------------------------------------------------------------------------------------------

_live_processes: set[subprocess.Popen[bytes]] = set()


def _kill_leftovers() -> None:
    for proc in list(_live_processes):
        with contextlib.suppress(OSError):
            proc.kill()


atexit.register(_kill_leftovers)


class PeerProcess:
    """A peer subprocess with piped stdin/stdout/stderr.

    `read_line()` returns the next line of received application data (see the module docstring for
    how each tool is set up so that stdout carries only data), `write_line()` sends a line to the
    peer's stdin (which the tool sends to its DTLS peer), `transcript()` gives everything for
    assertion messages.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        handshake_marker: tuple[str, str] | None = None,
        stdout_is_data: Callable[[str], bool] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.handshake_marker = handshake_marker
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
        )
        _live_processes.add(self.proc)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.stdout = LineReader(self.proc.stdout, f"{name} stdout", stdout_is_data)
        self.stderr = LineReader(self.proc.stderr, f"{name} stderr")

    # -- state ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def transcript(self) -> str:
        rc = self.proc.poll()
        return (
            f"--- {self.name} (pid {self.proc.pid}, returncode {rc}) ---\n"
            f"argv: {' '.join(self.argv)}\n"
            f"--- stdout ---\n{self.stdout.text()}\n"
            f"--- stderr ---\n{self.stderr.text()}\n"
        )

    def fail(self, message: str) -> PeerError:
        return PeerError(f"{message}\n{self.transcript()}")

    # -- I/O ---------------------------------------------------------------------------------------

    def write(self, data: bytes | str) -> None:
        """Write raw bytes/text to the peer's stdin and flush."""
        if isinstance(data, str):
            data = data.encode()
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(data)
            stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise self.fail(f"cannot write to {self.name}: {exc!r}") from exc

    def write_line(self, line: bytes | str) -> None:
        """Send one line (a newline is appended) through the peer."""
        if isinstance(line, str):
            line = line.encode()
        self.write(line + b"\n")

    def read_line(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Next line of received data (newline stripped); PeerError on timeout or EOF."""
        try:
            line = self.stdout.readline(timeout)
        except TimeoutError as exc:
            raise self.fail(str(exc)) from None
        if line is None:
            self.proc.poll()
            raise self.fail(f"{self.name} closed stdout (exited?) before sending a line")
        return line

    def expect_line(self, expected: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Read one data line and assert it equals `expected`."""
        line = self.read_line(timeout)
        if line != expected:
            raise self.fail(f"{self.name}: expected line {expected!r}, got {line!r}")

    def wait_output(self, needle: str, stream: str = "stderr", timeout: float = DEFAULT_TIMEOUT) -> str:
        """Wait for a line containing `needle` on "stdout" or "stderr" (data or info lines)."""
        reader = self.stderr if stream == "stderr" else self.stdout
        try:
            return reader.wait_for(needle, timeout)
        except TimeoutError as exc:
            raise self.fail(str(exc)) from None

    def wait_handshake(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait for the tool's 'handshake completed' output (not available for gnutls-serv)."""
        if self.handshake_marker is None:
            raise NotImplementedError(f"{self.name} prints no handshake-completed marker")
        stream, needle = self.handshake_marker
        self.wait_output(needle, stream, timeout)

    def close_stdin(self) -> None:
        """EOF on stdin (gnutls-cli then closes the connection; s_client -quiet ignores it)."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self.fail(f"{self.name} did not exit within {timeout:.1f}s") from None

    # -- lifecycle ---------------------------------------------------------------------------------

    def wait_udp_listening(self, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Block until the process has bound UDP `port`; PeerError if it exits or times out."""
        deadline = time.monotonic() + timeout
        if not _can_check_ports():  # pragma: no cover - not Linux
            time.sleep(0.3)
            if not self.alive():
                raise self.fail(f"{self.name} exited during start-up")
            return
        while True:
            if not self.alive():
                self.stdout.join(0.5)
                self.stderr.join(0.5)
                raise self.fail(f"{self.name} exited during start-up")
            if udp_port_bound(port):
                return
            if time.monotonic() > deadline:
                raise self.fail(f"{self.name} did not bind UDP port {port} within {timeout:.1f}s")
            time.sleep(0.02)

    def stop(self, grace: float = 2.0) -> int:
        """Terminate (SIGTERM), then kill after `grace` seconds; returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    self.proc.kill()
                self.proc.wait(grace)
        self.close_stdin()
        self.stdout.join()
        self.stderr.join()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        _live_processes.discard(self.proc)
        rc = self.proc.returncode
        assert rc is not None
        return rc

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<PeerProcess {self.name} pid={self.proc.pid} rc={self.proc.poll()}>"


@contextlib.contextmanager
def run_peer(
    name: str,
    argv: Sequence[str],
    *,
    listen_port: int | None = None,
    **kwargs: Any,
) -> Iterator[PeerProcess]:
    """Start `argv` as a PeerProcess, wait until it has bound UDP `listen_port` (servers), stop on exit."""
    peer = PeerProcess(name, argv, **kwargs)
    try:
        if listen_port is not None:
            peer.wait_udp_listening(listen_port)
        yield peer
    finally:
        peer.stop()


# -- OpenSSL ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def openssl_server(
    port: int,
    psk_hex: str = "",
    cipher: str = OPENSSL_PSK_CIPHER,
    extra: Sequence[str] = (),
    *,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    ca_file: PathLike | None = None,
) -> Iterator[PeerProcess]:
    """`openssl s_server -dtls1_2 -nocert -psk` on 127.0.0.1:port, ready when the port is bound.

    read_line(): data received from the client; write_line(): send to the connected client.
    wait_handshake(): waits for "Ciphersuite:" on stderr. After a client leaves, it accepts the next
    (also after a failed handshake).

    X.509: `cert`/`key` (PEM) replace -nocert (pass cipher=OPENSSL_ECDSA_CIPHER); `ca_file` adds
    `-Verify 1 -CAfile`: a client certificate is required and must chain to it (stderr then shows
    "Peer certificate: CN = ..." and "Verification: OK").
    """
    creds: list[str] = []
    if cert is None:
        creds.append("-nocert")
    else:
        creds += ["-cert", os.fspath(cert), "-key", os.fspath(key if key is not None else cert)]
    if psk_hex:
        creds += ["-psk", psk_hex]
    if ca_file is not None:
        creds += ["-Verify", "1", "-CAfile", os.fspath(ca_file)]
    argv = [
        "openssl", "s_server", "-dtls1_2", "-accept", f"{LOCALHOST}:{port}", *creds,
        "-cipher", cipher, "-brief", *extra,
    ]  # fmt: skip
    with run_peer("openssl s_server", argv, listen_port=port, handshake_marker=("stderr", "Ciphersuite:")) as peer:
        yield peer


@contextlib.contextmanager
def openssl_client(
    port: int,
    psk_hex: str = "",
    identity: str = "dev1",
    cipher: str = OPENSSL_PSK_CIPHER,
    extra: Sequence[str] = (),
    *,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    ca_file: PathLike | None = None,
) -> Iterator[PeerProcess]:
    """`openssl s_client -dtls1_2 -psk ... -quiet -brief` to 127.0.0.1:port.

    write_line(): send to the server; read_line(): data from the server.
    wait_handshake(): waits for "CONNECTION ESTABLISHED" on stderr.

    X.509: `cert`/`key` present a client certificate; `ca_file` adds `-CAfile ... -verify_return_error`
    (the server certificate must chain to it). Without `psk_hex` no PSK is configured.
    """
    creds: list[str] = []
    if psk_hex:
        creds += ["-psk", psk_hex, "-psk_identity", identity]
    if cert is not None:
        creds += ["-cert", os.fspath(cert), "-key", os.fspath(key if key is not None else cert)]
    if ca_file is not None:
        creds += ["-CAfile", os.fspath(ca_file), "-verify_return_error"]
    argv = [
        "openssl", "s_client", "-dtls1_2", "-connect", f"{LOCALHOST}:{port}",
        *creds, "-cipher", cipher, "-quiet", "-brief", *extra,
    ]  # fmt: skip
    with run_peer("openssl s_client", argv, handshake_marker=("stderr", "CONNECTION ESTABLISHED")) as peer:
        yield peer


# -- GnuTLS ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def gnutls_server(
    port: int,
    psk_file_lines: Sequence[str] = (),
    priority: str = GNUTLS_PSK_PRIORITY,
    extra: Sequence[str] = (),
    *,
    rawpk_key: PathLike | None = None,
    rawpk_pub: PathLike | None = None,
    require_client_cert: bool = False,
    mtu: int | None = None,
) -> Iterator[PeerProcess]:
    """`gnutls-serv --udp --echo --pskpasswd FILE` on port `port` (binds 0.0.0.0 and ::).

    psk_file_lines: "identity:hexkey" lines for the psk file (written to a temporary directory).
    It echoes each received record; stderr logs "*** Processing N bytes command: ...".

    Raw public keys: `rawpk_key`/`rawpk_pub` (PEM private key / SPKI), with priority=GNUTLS_RPK_PRIORITY;
    `require_client_cert` asks for and requires a client key (gnutls-serv cannot pin it: it only checks
    that one was sent and signed). `mtu` sets --mtu.

    Careful (GnuTLS 3.7.9): when a handshake fails *on its side* without an alert from the peer (e.g.
    "No certificate was found." under --require-client-cert), gnutls-serv sends no alert, then spins at
    100% CPU printing "Waiting for connection..." forever and serves nobody else. A fatal alert
    *received* from the client does not trigger this. Use it for one such failure at most, and briefly.
    """
    with tempfile.TemporaryDirectory(prefix="iotdtls-gnutls-") as tmp:
        argv = ["gnutls-serv", "--udp", "-p", str(port), "--echo", "--priority", priority]
        if psk_file_lines:
            psk_file = Path(tmp) / "psk.txt"
            psk_file.write_text("".join(f"{line}\n" for line in psk_file_lines))
            argv += ["--pskpasswd", str(psk_file)]
        if rawpk_key is not None:
            argv += ["--rawpkkeyfile", os.fspath(rawpk_key), "--rawpkfile", os.fspath(rawpk_pub or rawpk_key)]
        if require_client_cert:
            argv.append("--require-client-cert")
        if mtu is not None:
            argv += ["--mtu", str(mtu)]
        argv += list(extra)
        with run_peer("gnutls-serv", argv, listen_port=port, cwd=tmp) as peer:
            yield peer


GNUTLS_CLI_DATA_MARKER = "- Simple Client Mode:"


class _GnutlsCliFilter:
    """Stdout lines of gnutls-cli are info until "- Simple Client Mode:" plus one blank line."""

    def __init__(self) -> None:
        self.state = 0  # 0: info, 1: marker seen (skip one blank line), 2: data

    def __call__(self, line: str) -> bool:
        if self.state == 2:
            return True
        if self.state == 1:
            self.state = 2
            return line != ""
        if line.strip() == GNUTLS_CLI_DATA_MARKER:
            self.state = 1
        return False


@contextlib.contextmanager
def gnutls_client(
    port: int,
    identity: str = "dev1",
    psk_hex: str = "",
    mtu: int | None = None,
    priority: str = GNUTLS_PSK_PRIORITY,
    extra: Sequence[str] = (),
    *,
    rawpk_key: PathLike | None = None,
    rawpk_pub: PathLike | None = None,
    insecure: bool = False,
) -> Iterator[PeerProcess]:
    """`gnutls-cli --udp -p PORT 127.0.0.1 --pskusername ID --pskkey HEX [--mtu N]`.

    write_line(): send; read_line(): data from the server (the handshake report is in
    stdout.info_lines). wait_handshake(): waits for "- Handshake was completed" on stdout.
    close_stdin() makes gnutls-cli close the connection and exit.

    Raw public keys: identity="", priority=GNUTLS_RPK_PRIORITY, `rawpk_key`/`rawpk_pub` (PEM private key /
    SPKI) as the client's own key, and insecure=True: gnutls-cli has no way to pin a server's raw key
    (only --tofu), so it reports "PKI verification of server certificate failed" and goes on.
    """
    argv = ["gnutls-cli", "--udp", "-p", str(port), LOCALHOST, "--priority", priority]
    if identity:
        argv += ["--pskusername", identity]
    if psk_hex:
        argv += ["--pskkey", psk_hex]
    if rawpk_key is not None:
        argv += ["--rawpkkeyfile", os.fspath(rawpk_key), "--rawpkfile", os.fspath(rawpk_pub or rawpk_key)]
    if insecure:
        argv.append("--insecure")
    if mtu is not None:
        argv += ["--mtu", str(mtu)]
    argv += list(extra)
    # stdbuf: gnutls-cli's report uses stdio, which is block-buffered on a pipe.
    if shutil.which("stdbuf"):
        argv = ["stdbuf", "-oL", *argv]
    with run_peer(
        "gnutls-cli",
        argv,
        handshake_marker=("stdout", "- Handshake was completed"),
        stdout_is_data=_GnutlsCliFilter(),
    ) as peer:
        yield peer


# -- libcoap (coap-client-* / coap-server-*, libcoap 4.3.1) ---------------------------------------------------
#
# Quirks seen with libcoap 4.3.1 on Debian 12 (both the GnuTLS and the OpenSSL build):
# * coap-client logs (WARN/ERR lines) go to *stdout*, where the payload also goes without -o; the helper
#   below always passes -o FILE so that payload and log are apart.
# * coap-client exits 0 even when the DTLS handshake fails ("cannot send CoAP pdu"); assert on its output.
# * -k KEY is the PSK as ASCII text, not hex. coap-server -k accepts any client identity with that key.
# * coap-server -p N binds UDP+TCP on N and N+1 (CoAPs on N+1): use free_port_pair().
# * Raw public keys (-M FILE: PKCS#8 "PRIVATE KEY" + "PUBLIC KEY" PEM in one file, or SEC1) work in the GnuTLS
#   build only; neither side pins the peer's key (there is no option for it).


@dataclass
class LibcoapRun:
    """One finished coap-client run."""

    argv: list[str]
    returncode: int
    output: str  # stdout + stderr: libcoap's log lines
    payload: bytes | None  # what -o FILE received; None if libcoap never wrote the file

    def transcript(self, limit: int = 6000) -> str:
        """For assertion messages: argv, return code, the output and the payload (each cut to `limit` chars)."""
        output = self.output if len(self.output) <= limit else "[...]" + self.output[-limit:]
        payload = repr(self.payload)
        payload = payload if len(payload) <= limit else payload[:limit] + "[...]"
        return (f"--- {self.argv[0]} (returncode {self.returncode}) ---\nargv: {' '.join(self.argv)}\n"
                f"--- output ---\n{output}\n--- payload ---\n{payload}\n")


def run_libcoap_client(
    tls: str,
    uri: str,
    *args: str,
    identity: str | None = None,
    key: str | None = None,
    rpk_file: PathLike | None = None,
    wait: int = 10,
) -> LibcoapRun:
    """Run ``coap-client-TLS [-u identity] [-k key] [-M rpk_file] -B wait -o FILE ARGS URI`` to completion.

    `tls` is "gnutls" or "openssl"; `args` are further options (``-m post -e TEXT``, ``-b 64 -f FILE``,
    ``-s 3 -w``, ``-v 6``); the received payload (all notifications with -s) is returned from -o FILE.
    PeerError if it does not exit within `wait` + 10 s (it is killed then).
    """
    argv = [f"coap-client-{tls}", "-B", str(wait)]
    if identity is not None:
        argv += ["-u", identity]
    if key is not None:
        argv += ["-k", key]
    if rpk_file is not None:
        argv += ["-M", os.fspath(rpk_file)]
    with tempfile.TemporaryDirectory(prefix="iotdtls-libcoap-") as tmp:
        out = Path(tmp) / "payload"
        argv += ["-o", str(out), *args, uri]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=wait + 10, check=False)
        except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it
            text = (exc.output or b"").decode("utf-8", "replace")
            raise PeerError(f"{argv[0]} did not exit within {wait + 10}s\nargv: {' '.join(argv)}\n{text}") from None
        payload = out.read_bytes() if out.exists() else None
    return LibcoapRun(argv, proc.returncode, proc.stdout.decode("utf-8", "replace"), payload)


@contextlib.contextmanager
def libcoap_server(
    port: int,
    tls: str = "gnutls",
    *,
    psk_key: str | None = None,
    rpk_file: PathLike | None = None,
    verbosity: int | None = None,
    extra: Sequence[str] = (),
) -> Iterator[PeerProcess]:
    """``coap-server-TLS -A 127.0.0.1 -p port [-k psk_key] [-M rpk_file]``: CoAPs on ``port + 1``.

    Ready when UDP port+1 is bound. Get `port` from free_port_pair(). Its default resources include
    /.well-known/core, / (a banner), /time (observable, every second), /async and /example_data (PUT then
    GET; blockwise with libcoap's own block handling).
    """
    argv = [f"coap-server-{tls}", "-A", LOCALHOST, "-p", str(port)]
    if psk_key is not None:
        argv += ["-k", psk_key]
    if rpk_file is not None:
        argv += ["-M", os.fspath(rpk_file)]
    if verbosity is not None:
        argv += ["-v", str(verbosity)]
    argv += list(extra)
    with run_peer(f"coap-server-{tls}", argv, listen_port=port + 1) as peer:
        yield peer


# -- iotdtls-netem (our UDP impairment proxy, used here as a datagram-size recorder) --------------------


@contextlib.contextmanager
def netem_proxy(listen_port: int, target_port: int, *args: str) -> Iterator[PeerProcess]:
    """`iotdtls-netem --listen 127.0.0.1:listen_port --target 127.0.0.1:target_port -v ARGS`.

    With -v every datagram is logged on stderr as "<t>s c2s|s2c <client> <N> B  delivered|LOST|TOO BIG";
    `datagram_sizes()` parses those lines. Counters are printed when it is stopped (SIGTERM).
    """
    argv = [sys.executable, "-m", "iotdtls.cli.netem", "--listen", f"{LOCALHOST}:{listen_port}",
            "--target", f"{LOCALHOST}:{target_port}", "-v", *args]  # fmt: skip
    with run_peer("iotdtls-netem", argv, listen_port=listen_port) as peer:
        yield peer


def datagram_sizes(netem: PeerProcess, direction: str) -> list[tuple[int, str]]:
    """(size, fate) of every datagram `netem_proxy` logged in `direction` ("c2s" or "s2c")."""
    out: list[tuple[int, str]] = []
    for line in netem.stderr.text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == direction and fields[4] == "B":
            out.append((int(fields[3]), " ".join(fields[5:])))
    return out


# --------------------------------------------------------------------------------------------------
# tinydtls (in-process, through pip DTLSSocket)
# --------------------------------------------------------------------------------------------------
#
# DTLSSocket.dtls API (Cython, DTLSSocket/dtls.pyx):
#   DTLS(read=cb(addr, data) -> int, write=cb(addr, data) -> int, event=cb(level, code),
#        pskId=bytes, pskStore={identity: key})
#   .connect(ip6, port) -> Connection (a Session; starts the client handshake, calls write)
#   .handleMessageAddr(ip6, port, datagram) -> int (0 ok; may call read/write/event)
#   .write(session, data) -> int,  .close(session) (close_notify),  .resetPeer(session)
#   .checkRetransmit() -> next deadline in ms ticks (0: nothing pending); retransmits what is due
#   Session(ip6, port)
# Quirks: sessions are always AF_INET6 - addresses reach the callbacks as "::ffff:127.0.0.1";
# pskId is stored as a bare char* (keep the bytes object alive, no NUL bytes); an event
# (0, 0x1DE) means connected, level 2 is a fatal alert with the alert description as code.
# The context is not thread-safe: each object below touches its context from one thread only.

DTLS_EVENT_CONNECT = 0x1DC
DTLS_EVENT_CONNECTED = 0x1DE
DTLS_EVENT_RENEGOTIATE = 0x1DF
DTLS_ALERT_LEVEL_FATAL = 2
DTLS_ALERT_CLOSE_NOTIFY = 0

_V4_MAPPED_PREFIX = "::ffff:"


def _to_v6(ip: str) -> str:
    return ip if ":" in ip else _V4_MAPPED_PREFIX + ip


def _to_v4(ip6: str) -> str:
    if ip6.lower().startswith(_V4_MAPPED_PREFIX):
        return ip6[len(_V4_MAPPED_PREFIX) :]
    return ip6


def _dtls_module() -> Any:
    from DTLSSocket import dtls  # imported lazily: optional dependency

    return dtls


class _TinyDTLSEndpoint:
    """UDP socket on 127.0.0.1 + one tinydtls context; the datagram plumbing shared by both roles."""

    def __init__(self, identity: bytes, psk_store: Mapping[bytes, bytes], log_level: int | None) -> None:
        dtls = _dtls_module()
        self._dtls_mod = dtls
        if log_level is None:
            log_level = dtls.DTLS_LOG_EMERG
        dtls.setLogLevel(log_level)
        self._identity = bytes(identity)  # kept alive: DTLS.pskId is a bare char* into it
        self._psk_store = {bytes(k): bytes(v) for k, v in psk_store.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.events: list[tuple[int, int]] = []
        self.errors: list[str] = []
        self.datagrams_in = 0
        self.datagrams_out = 0
        self._app_data: list[tuple[tuple[str, int], bytes]] = []
        self.ctx: Any = dtls.DTLS(
            read=self._on_read,
            write=self._on_write,
            event=self._on_event,
            pskId=self._identity,
            pskStore=self._psk_store,
        )

    # tinydtls callbacks (run inside ctx.* calls, on the owning thread)
    def _on_read(self, addr: tuple[str, int], data: bytes) -> int:
        self._app_data.append(((_to_v4(addr[0]), addr[1]), bytes(data)))
        return len(data)

    def _on_write(self, addr: tuple[str, int], data: bytes) -> int:
        ip = _to_v4(addr[0])
        if ip != LOCALHOST:  # never send anywhere but loopback
            self.errors.append(f"refused to send to {addr!r}")
            return -1
        try:
            sent = self.sock.sendto(data, (ip, addr[1]))
        except OSError as exc:
            self.errors.append(f"sendto {addr!r}: {exc!r}")
            return -1
        self.datagrams_out += 1
        return sent

    def _on_event(self, level: int, code: int) -> None:
        self.events.append((level, code))

    def _pump(self, wait: float) -> None:
        """Wait up to `wait` s for datagrams, feed them all to tinydtls, run its retransmit timer."""
        try:
            ready, _, _ = select.select([self.sock], [], [], max(wait, 0.0))
        except (OSError, ValueError):
            return
        if ready:
            while True:
                try:
                    data, (ip, port) = self.sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except ConnectionRefusedError:  # ICMP port unreachable from an earlier send
                    self.errors.append("ICMP port unreachable")
                    continue
                except OSError as exc:
                    self.errors.append(f"recvfrom: {exc!r}")
                    break
                self.datagrams_in += 1
                ret = self.ctx.handleMessageAddr(_to_v6(ip), port, data)
                if ret != 0:
                    self.errors.append(f"handleMessage({ip}:{port}) returned {ret}")
        self.ctx.checkRetransmit()

    def fatal_alerts(self) -> list[int]:
        return [code for level, code in self.events if level == DTLS_ALERT_LEVEL_FATAL]

    def describe(self) -> str:
        return (
            f"events={[(lvl, hex(code)) for lvl, code in self.events]} errors={self.errors} "
            f"datagrams in/out={self.datagrams_in}/{self.datagrams_out}"
        )


class TinyDTLSServer:
    """A tinydtls PSK echo server on 127.0.0.1:port, run by a background thread.

    Ready as soon as the constructor returns (the socket is bound there). Use as a context manager
    or call `stop()`. `received` lists (addr, data) of every application record; `events` the
    tinydtls (level, code) events; `echo=False` makes it a sink.
    """

    def __init__(
        self,
        port: int,
        psk_store: Mapping[bytes, bytes],
        *,
        echo: bool = True,
        log_level: int | None = None,
    ) -> None:
        self.port = port
        self.echo = echo
        self._ep = _TinyDTLSEndpoint(b"tinydtls-server", psk_store, log_level)
        self._ep.sock.bind((LOCALHOST, port))
        self.received: list[tuple[tuple[str, int], bytes]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"TinyDTLSServer:{port}", daemon=True)
        self.crashed: BaseException | None = None
        self._thread.start()

    @property
    def events(self) -> list[tuple[int, int]]:
        return list(self._ep.events)

    @property
    def errors(self) -> list[str]:
        return list(self._ep.errors)

    def connected_count(self) -> int:
        return sum(1 for e in self._ep.events if e == (0, DTLS_EVENT_CONNECTED))

    def _run(self) -> None:
        ep = self._ep
        dtls = ep._dtls_mod
        try:
            while not self._stop.is_set():
                ep._pump(0.05)
                pending, ep._app_data = ep._app_data, []
                for addr, data in pending:
                    with self._lock:
                        self.received.append((addr, data))
                    if self.echo:
                        ep.ctx.write(dtls.Session(_to_v6(addr[0]), addr[1]), data)
        except BaseException as exc:  # surfaced by stop()/describe()
            self.crashed = exc

    def wait_received(self, count: int = 1, timeout: float = DEFAULT_TIMEOUT) -> list[bytes]:
        """Wait until at least `count` records have arrived; return their payloads."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.received) >= count:
                    return [data for _, data in self.received]
            if time.monotonic() > deadline or self.crashed is not None:
                raise PeerError(f"tinydtls server got {len(self.received)}/{count} records; {self.describe()}")
            time.sleep(0.01)

    def describe(self) -> str:
        return f"tinydtls server :{self.port} crashed={self.crashed!r} {self._ep.describe()}"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        with contextlib.suppress(OSError):
            self._ep.sock.close()

    def __enter__(self) -> TinyDTLSServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TinyDTLSClient:
    """A tinydtls PSK client to 127.0.0.1:port. Single-threaded: all work happens inside the calls.

    `connect()` runs the handshake (send() does it implicitly), `send()` writes one record,
    `recv(timeout)` returns the next application record, `close()` sends close_notify and closes.
    """

    def __init__(
        self,
        port: int,
        identity: bytes,
        key: bytes,
        *,
        log_level: int | None = None,
    ) -> None:
        self.port = port
        self._ep = _TinyDTLSEndpoint(identity, {bytes(identity): bytes(key)}, log_level)
        self._ep.sock.bind((LOCALHOST, 0))
        self._session: Any = None
        self.connected = False
        self._inbox: list[bytes] = []

    @property
    def events(self) -> list[tuple[int, int]]:
        return list(self._ep.events)

    def describe(self) -> str:
        return f"tinydtls client -> :{self.port} connected={self.connected} {self._ep.describe()}"

    def _step(self, wait: float) -> None:
        self._ep._pump(wait)
        for _, data in self._ep._app_data:
            self._inbox.append(data)
        self._ep._app_data.clear()
        if not self.connected and (0, DTLS_EVENT_CONNECTED) in self._ep.events:
            self.connected = True
        if self._ep.fatal_alerts():
            raise PeerError(f"tinydtls client got a fatal alert; {self.describe()}")

    def connect(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Run the handshake (no-op when connected); PeerError on timeout or fatal alert."""
        if self.connected:
            return
        if self._session is None:
            self._session = self._ep.ctx.connect(_to_v6(LOCALHOST), self.port)
            if self._session is None:
                raise PeerError(f"tinydtls connect() failed; {self.describe()}")
        deadline = time.monotonic() + timeout
        while not self.connected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerError(f"tinydtls handshake did not finish within {timeout:.1f}s; {self.describe()}")
            self._step(min(remaining, 0.05))

    def send(self, data: bytes, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.connect(timeout)
        ret = self._ep.ctx.write(self._session, bytes(data))
        if ret < 0:
            raise PeerError(f"tinydtls write returned {ret}; {self.describe()}")

    def recv(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Next application record from the server; PeerError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self._inbox:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerError(f"tinydtls client received nothing within {timeout:.1f}s; {self.describe()}")
            self._step(min(remaining, 0.05))
        return self._inbox.pop(0)

    def close(self) -> None:
        if self._session is not None and self.connected:
            with contextlib.suppress(Exception):
                self._ep.ctx.close(self._session)  # sends close_notify
                self._ep._pump(0.0)
        if self._session is not None:
            with contextlib.suppress(Exception):
                self._ep.ctx.resetPeer(self._session)
        self._session = None
        self.connected = False
        with contextlib.suppress(OSError):
            self._ep.sock.close()

    def __enter__(self) -> TinyDTLSClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tinydtls_client(port: int, identity: bytes, key: bytes, *, log_level: int | None = None) -> TinyDTLSClient:
    """A TinyDTLSClient (not yet connected; usable as a context manager)."""
    return TinyDTLSClient(port, identity, key, log_level=log_level)


__all__ = [
    "DEFAULT_TIMEOUT",
    "GNUTLS_PSK_PRIORITY",
    "GNUTLS_RPK_PRIORITY",
    "LOCALHOST",
    "OPENSSL_ECDSA_CIPHER",
    "OPENSSL_PSK_CIPHER",
    "LibcoapRun",
    "LineReader",
    "PeerError",
    "PeerProcess",
    "TinyDTLSClient",
    "TinyDTLSServer",
    "datagram_sizes",
    "free_port_pair",
    "free_udp_port",
    "gnutls_client",
    "gnutls_server",
    "have_gnutls",
    "have_libcoap",
    "have_libcoap_build",
    "have_mosquitto",
    "have_openssl",
    "have_tinydtls",
    "have_tshark",
    "libcoap_server",
    "mosquitto_binary",
    "netem_proxy",
    "openssl_client",
    "openssl_server",
    "require_gnutls",
    "require_libcoap",
    "require_mosquitto",
    "require_openssl",
    "require_peer",
    "require_tinydtls",
    "run_libcoap_client",
    "run_peer",
    "tinydtls_client",
    "udp_port_bound",
]
