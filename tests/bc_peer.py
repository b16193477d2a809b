"""Bouncy Castle 1.80 as a real RFC 9146 Connection ID peer (tests/bcpeer/BcPeer.java), on 127.0.0.1.

The jars come from `tests/bcpeer/install.sh` (Debian 13's libbc*-java, GUIDE section 7) in ``$IOTDTLS_BC_DIR``
(default /opt/iotdtls-ci/bc); Java 17 (java, javac) from Debian. BcPeer.java is compiled once per source version into
a cache folder under the temporary directory. Tests call `require_bouncycastle()` (or use `bc_classpath()`, which
calls it): the test skips when Java or the jars are missing, and fails with IOTDTLS_REQUIRE_PEERS=1 (CI)::

    port = free_udp_port()
    with bc_server(port, KEY_HEX, cid=6) as server:
        result = run_bc_client(port, KEY_HEX, cid=0, send="hello", count=2)
        assert result.received == ["hello", "hello"]
        assert server.handshake().cid_in == result.handshake.cid_out

`--cid N` is the length of the CID a side asks its peer to send (0: an empty one, None/-1: no extension). In the
HANDSHAKE line, ``cid_in`` is the CID this side receives (the one it asked for) and ``cid_out`` the one it sends.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from peers import LOCALHOST, PeerError, PeerProcess, require_peer

BC_DIR_ENV = "IOTDTLS_BC_DIR"
DEFAULT_BC_DIR = Path("/opt/iotdtls-ci/bc")
JAR_NAMES = ("bcprov", "bcutil", "bctls")
SOURCE = Path(__file__).resolve().parent / "bcpeer" / "BcPeer.java"
INSTALL_SCRIPT = Path(__file__).resolve().parent / "bcpeer" / "install.sh"
PEER_NAME = "bouncycastle (Bouncy Castle 1.80 + Java 17: tests/bcpeer/install.sh)"
# A JVM for a short-lived test peer: quick start, little CPU (2 cores are shared by many).
JVM_OPTIONS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss512k", "-Xmx128m")
START_TIMEOUT = 15.0  # a JVM start on a busy machine


# --------------------------------------------------------------------------------------------------
# Availability and compilation
# --------------------------------------------------------------------------------------------------


def bc_dir() -> Path:
    return Path(os.environ.get(BC_DIR_ENV) or DEFAULT_BC_DIR)


def bc_jars() -> list[Path] | None:
    """The three jars in install order, or None when one is missing."""
    jars = [bc_dir() / "jars" / f"{name}.jar" for name in JAR_NAMES]
    return jars if all(jar.is_file() for jar in jars) else None


def have_bouncycastle() -> bool:
    return shutil.which("java") is not None and shutil.which("javac") is not None and bc_jars() is not None


def require_bouncycastle() -> None:
    require_peer(PEER_NAME, have_bouncycastle())


_compile_lock = threading.Lock()
_classpath: str | None = None


def _cache_root() -> Path:
    return Path(tempfile.gettempdir()) / f"iotdtls-bcpeer-{os.getuid()}"


def _source_key(jars: Sequence[Path]) -> str:
    digest = hashlib.sha256(SOURCE.read_bytes())
    for jar in jars:
        stat = jar.stat()
        digest.update(f"{jar}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def bc_classpath() -> str:
    """`jars:classdir` for `java -cp`, compiling BcPeer.java on first use; skips/fails like require_peer."""
    global _classpath
    require_bouncycastle()
    with _compile_lock:
        if _classpath is not None:
            return _classpath
        jars = bc_jars()
        assert jars is not None
        jar_path = os.pathsep.join(str(jar) for jar in jars)
        classes = _cache_root() / _source_key(jars)
        if not (classes / "BcPeer.class").is_file():
            _cache_root().mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix="build-", dir=_cache_root()))
            proc = subprocess.run(
                ["javac", "-nowarn", "-Xlint:-path", "-d", str(staging), "-cp", jar_path, str(SOURCE)],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                raise PeerError(f"javac BcPeer.java failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
            try:
                staging.rename(classes)
            except OSError:  # another process compiled the same source first
                shutil.rmtree(staging, ignore_errors=True)
        _classpath = f"{jar_path}{os.pathsep}{classes}"
        return _classpath


def bc_command(role: str, args: Sequence[str]) -> list[str]:
    return ["java", *JVM_OPTIONS, "-cp", bc_classpath(), "BcPeer", role, *args]


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def parse_cid(text: str) -> bytes | None:
    """A CID as BcPeer prints it: hex (possibly empty), or "none" when no CID was negotiated."""
    return None if text == "none" else bytes.fromhex(text)


def cid_arg(length: int | None) -> str:
    return "-1" if length is None else str(length)


@dataclass(frozen=True)
class BcHandshake:
    """The CIDs of a finished handshake, from BcPeer's side."""

    cid_in: bytes | None  # the CID BcPeer receives (it asked for it)
    cid_out: bytes | None  # the CID BcPeer sends (its peer asked for it)

    @classmethod
    def parse(cls, line: str) -> BcHandshake:
        fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
        try:
            return cls(parse_cid(fields["cid_in"]), parse_cid(fields["cid_out"]))
        except (KeyError, ValueError) as exc:
            raise PeerError(f"cannot parse BcPeer's handshake line {line!r}: {exc!r}") from None


def _payload(line: str, kind: str) -> str | None:
    if line == kind:
        return ""
    if line.startswith(kind + " "):
        return line[len(kind) + 1 :]
    return None


class BcServer:
    """A running `BcPeer server` (see `bc_server`): events are read from its stdout in order."""

    def __init__(self, proc: PeerProcess, port: int) -> None:
        self.proc = proc
        self.port = port
        self._handshake: BcHandshake | None = None

    def next_event(self, kind: str, timeout: float = 10.0) -> str:
        """The payload of the next stdout line of `kind` (HANDSHAKE, RECV, CLOSED ...); others are skipped."""
        while True:
            line = self.proc.read_line(timeout)
            payload = _payload(line, kind)
            if payload is not None:
                return payload
            if kind != "HANDSHAKE" and _payload(line, "HANDSHAKE") is not None:
                self._handshake = BcHandshake.parse(line)

    def handshake(self, timeout: float = 10.0) -> BcHandshake:
        if self._handshake is None:
            self._handshake = BcHandshake.parse("HANDSHAKE " + self.next_event("HANDSHAKE", timeout))
        return self._handshake

    def recv(self, timeout: float = 10.0) -> str:
        """The next application record the server received (and echoed, with echo=True)."""
        return self.next_event("RECV", timeout)

    def lines(self, kind: str) -> list[str]:
        """Payloads of every stdout line of `kind` so far (read or not)."""
        return [p for p in (_payload(line, kind) for line in list(self.proc.stdout.lines)) if p is not None]

    def client_address(self, timeout: float = 10.0) -> str:
        """The client's "ip:port" when the handshake completed."""
        self.handshake(timeout)
        self.proc.wait_output("CLIENT ", "stdout", timeout)
        return self.lines("CLIENT")[0]

    def peer_updates(self) -> list[str]:
        """The addresses ("ip:port") the server moved its replies to after the handshake."""
        return self.lines("PEER")

    def wait_closed(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit (it does after close_notify); returns its exit status."""
        return self.proc.wait_exit(timeout)

    def transcript(self) -> str:
        return self.proc.transcript()


@contextlib.contextmanager
def bc_server(
    port: int,
    psk_hex: str,
    cid: int | None,
    *,
    identity: str = "dev1",
    echo: bool = True,
    peer_update: str = "cid",
    timeout: int = 20,
    keylog: Path | None = None,
) -> Iterator[BcServer]:
    """`BcPeer server` on 127.0.0.1:port, ready (READY printed) when entered, stopped on exit.

    It accepts one handshake, asking the client for a CID of `cid` bytes (None: no extension); with `echo` it sends
    every application record back. After the handshake only an authenticated, newest record carrying a CID moves
    its reply address (peer_update="cid", RFC 9146 section 6); "latest" follows every datagram. It exits 0 after
    close_notify, 1 on an error, and after `timeout` seconds in any case.
    """
    args = ["--port", str(port), "--identity", identity, "--psk", psk_hex, "--cid", cid_arg(cid),
            "--peer-update", peer_update, "--timeout", str(timeout)]  # fmt: skip
    if echo:
        args.append("--echo")
    if keylog is not None:
        args += ["--keylog", str(keylog)]
    proc = PeerProcess("BcPeer server", bc_command("server", args))
    try:
        line = proc.read_line(START_TIMEOUT)
        if _payload(line, "READY") != str(port):
            raise proc.fail(f"BcPeer server: expected 'READY {port}', got {line!r}")
        yield BcServer(proc, port)
    finally:
        proc.stop()


@dataclass
class BcClientResult:
    """What one `BcPeer client` run printed."""

    argv: list[str]
    returncode: int
    stdout: list[str]
    stderr: str

    def lines(self, kind: str) -> list[str]:
        return [p for p in (_payload(line, kind) for line in self.stdout) if p is not None]

    @property
    def handshake(self) -> BcHandshake | None:
        found = self.lines("HANDSHAKE")
        return BcHandshake.parse("HANDSHAKE " + found[0]) if found else None

    @property
    def received(self) -> list[str]:
        return self.lines("RECV")

    @property
    def local_port(self) -> int | None:
        found = self.lines("LOCAL")
        return int(found[0]) if found else None

    @property
    def rebinds(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for payload in self.lines("REBIND"):
            old, new = payload.split()
            out.append((int(old), int(new)))
        return out

    def transcript(self) -> str:
        out = "\n".join(self.stdout)
        return f"--- BcPeer client (returncode {self.returncode}) ---\nargv: {' '.join(self.argv)}\n" \
               f"--- stdout ---\n{out}\n--- stderr ---\n{self.stderr}"

    def check(self) -> BcClientResult:
        """Raise PeerError with the transcript unless the run exited 0."""
        if self.returncode != 0:
            raise PeerError(f"BcPeer client failed\n{self.transcript()}")
        return self


def run_bc_client(
    port: int,
    psk_hex: str,
    cid: int | None,
    send: str,
    *,
    count: int = 1,
    rebind_after: int | None = None,
    identity: str = "dev1",
    host: str = LOCALHOST,
    wait_ms: int = 5000,
    timeout: int = 20,
    keylog: Path | None = None,
) -> BcClientResult:
    """Run `BcPeer client` to the end: handshake, `count` x (send `send`, read the echo), close_notify.

    With `rebind_after` = M it continues the same session from a new source port after M messages. Blocking: from
    asyncio code, call it through `asyncio.to_thread`. Never raises for the peer's failure; see `.check()`.
    """
    args = ["--host", host, "--port", str(port), "--identity", identity, "--psk", psk_hex, "--cid", cid_arg(cid),
            "--send", send, "--count", str(count), "--wait-ms", str(wait_ms), "--timeout", str(timeout)]  # fmt: skip
    if rebind_after is not None:
        args += ["--rebind-after", str(rebind_after)]
    if keylog is not None:
        args += ["--keylog", str(keylog)]
    argv = bc_command("client", args)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + START_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise PeerError(f"BcPeer client did not exit within {timeout + START_TIMEOUT:.0f}s\n{out}") from None
    return BcClientResult(argv, proc.returncode, proc.stdout.splitlines(), proc.stderr)


__all__ = [
    "BC_DIR_ENV",
    "INSTALL_SCRIPT",
    "BcClientResult",
    "BcHandshake",
    "BcServer",
    "bc_classpath",
    "bc_dir",
    "bc_jars",
    "bc_server",
    "have_bouncycastle",
    "parse_cid",
    "require_bouncycastle",
    "run_bc_client",
]
