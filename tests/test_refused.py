"""Issue 17 item 1: a closed port ends a DTLS handshake (and a CoAPs request) in seconds with "connection refused
by HOST:PORT (nothing listening?)", not after the 120 s handshake timeout; one stray ICMP does not; a handshake
being retried says so on stderr unless -q.

Linux reports ICMP port unreachable on a connected UDP socket; the clients count it once per transmission
(iotdtls/aio/liveness.py). The command-line tests run the real console scripts against real closed ports on
127.0.0.1 and ::1, and real servers (iotdtls.aio.serve in a thread, iotdtls-coap-server killed with SIGKILL).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiocoap
import pytest
from aiocoap import resource
from helpers import client_config, server_config
from peers import free_udp_port, require_peer, run_peer

import iotdtls
from iotdtls import ConnectionRefused, DTLSConfiguration, DTLSConnection, DTLSError, HandshakeTimeout
from iotdtls.aio import ServerSession, connect, serve
from iotdtls.aio import client as aio_client
from iotdtls.aio.liveness import HandshakeProgress, RefusalCounter, host_port, planned_attempts
from iotdtls.coap import client as coap_client
from iotdtls.coap import client_context, server_context

REPO = Path(__file__).resolve().parent.parent
KEY_HEX = bytes(range(16)).hex()  # helpers.KEY, identity dev1
COAP_PSK = "secretPSK0123456"
LIMIT = 5.0  # seconds from start to the error line, default timers (the first retransmission is at 2 s)


def tool(script: str, module: str) -> list[str]:
    path = shutil.which(script)
    return [path] if path else [sys.executable, "-m", module]


CLIENT = tool("iotdtls-client", "iotdtls.cli.client")
COAP_CLIENT = tool("iotdtls-coap-client", "iotdtls.cli.coap_client")
COAP_SERVER = tool("iotdtls-coap-server", "iotdtls.cli.coap_server")


@pytest.fixture(autouse=True)
def this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The console scripts import the package of this checkout, wherever the editable install points."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(params=["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def loopback(request: pytest.FixtureRequest) -> str:
    host: str = request.param
    if ":" in host:
        require_peer("IPv6 loopback (::1)", have_ipv6())
    return host


def closed_port(host: str) -> int:
    """A UDP port on ``host`` with nothing bound to it: the kernel answers ICMP port unreachable."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A bound UDP port that never answers (no ICMP either): the handshake can only time out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def refused_text(host: str, port: int) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"connection refused by {where} (nothing listening?)"


def refused_line(prog: str, host: str, port: int) -> str:
    return f"{prog}: {refused_text(host, port)}"


def run(argv: list[str], stdin: str = "", timeout: float = 30) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - start


def accepts_quiet(argv: list[str]) -> bool:
    r = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=30)
    return r.returncode == 0 and " -q" in r.stdout


# -- the bookkeeping, with plain numbers ----------------------------------------------------------------------


def test_one_refusal_is_not_enough() -> None:
    c = RefusalCounter(min_gap=1.0)
    c.sent()
    assert not c.refused(0.0)
    assert c.pending
    assert not c.refused(0.001)  # the same transmission reported twice (two datagrams of one flight)
    c.sent()  # a retransmission
    assert not c.pending
    assert not c.refused(0.5)  # too soon after the first: two back-to-back sends are one burst
    assert c.refused(1.0)


def test_an_answer_clears_the_refusals() -> None:
    c = RefusalCounter(min_gap=0.5)
    c.sent()
    assert not c.refused(0.0)
    c.heard()  # the server came up
    assert not c.pending
    c.sent()
    assert not c.refused(2.0)  # a first refusal again
    c.sent()
    assert c.refused(4.0)
    with pytest.raises(ValueError):
        RefusalCounter(min_gap=-1)


def test_planned_attempts_and_the_progress_line() -> None:
    assert planned_attempts(DTLSConfiguration()) == 17  # 0, 2, 6, 14, 22, ... 118 s within 120 s
    fast = DTLSConfiguration(retransmit_initial=0.2, retransmit_max=0.4, handshake_timeout=1.5)
    assert planned_attempts(fast) == 5  # 0, 0.2, 0.6, 1.0, 1.4
    assert host_port("::1", 5684) == "[::1]:5684" and host_port("gw.local", 5684) == "gw.local:5684"

    lines: list[str] = []
    config = client_config(retransmit_initial=0.2, retransmit_max=0.4, handshake_timeout=1.5)
    conn = DTLSConnection(config)
    progress = HandshakeProgress("127.0.0.1", 5684, config, lines.append)
    conn.connect(0.0)
    progress.check(conn)
    assert lines == []  # the first transmission is not a retry
    while (when := conn.get_timer()) is not None:
        conn.handle_timer(when)
        progress.check(conn)
        progress.check(conn)  # once per retransmission, however often asked
    assert lines == [f"handshake with 127.0.0.1:5684: no answer yet, retrying ({n}/5)" for n in range(2, 6)]
    assert isinstance(conn.error, HandshakeTimeout)

    quiet: list[str] = []
    conn = DTLSConnection(config)
    progress = HandshakeProgress("::1", 1, config, quiet.append)
    conn.connect(0.0)
    conn.handle_timer(conn.get_timer() or 0.0)
    progress.check(conn, quiet=True)  # the last transmission was refused: the next one decides
    conn.handle_timer(conn.get_timer() or 0.0)
    progress.check(conn)
    assert quiet == ["handshake with [::1]:1: no answer yet, retrying (3/5)"]


def test_the_exception_is_typed() -> None:
    exc = iotdtls.ConnectionRefused("127.0.0.1", 5684)
    assert isinstance(exc, DTLSError) and isinstance(exc, ConnectionRefusedError) and isinstance(exc, OSError)
    assert str(exc) == "connection refused by 127.0.0.1:5684 (nothing listening?)"
    assert exc.errno == 111 and (exc.host, exc.port) == ("127.0.0.1", 5684)
    assert str(ConnectionRefused("::1", 1)) == "connection refused by [::1]:1 (nothing listening?)"


# -- the asyncio API ---------------------------------------------------------------------------------------------


def test_connect_raises_connection_refused(loopback: str) -> None:
    port = closed_port(loopback)
    progress: list[str] = []

    async def main() -> float:
        start = time.monotonic()
        with pytest.raises(ConnectionRefused) as info:
            await connect(loopback, port, client_config(), on_progress=progress.append)  # default timers
        assert str(info.value) == refused_text(loopback, port)
        assert (info.value.host, info.value.port) == (loopback, port)
        return time.monotonic() - start

    elapsed = asyncio.run(main())
    print(f"connect() to a closed port on {loopback}: refused after {elapsed:.2f} s")
    assert 1.0 < elapsed < LIMIT  # after the first retransmission (2 s), not at the first ICMP
    assert progress == []  # a refused retransmission is not "no answer yet"


def test_one_stray_icmp_does_not_end_the_handshake(monkeypatch: pytest.MonkeyPatch) -> None:
    refusals: list[Exception] = []
    original = aio_client.ClientSession.error_received

    def watched(self: aio_client.ClientSession, exc: Exception) -> None:
        refusals.append(exc)
        original(self, exc)

    monkeypatch.setattr(aio_client.ClientSession, "error_received", watched)
    port = closed_port("127.0.0.1")

    async def main() -> None:
        timers = {"retransmit_initial": 0.5, "retransmit_max": 1.0}
        attempt = asyncio.ensure_future(connect("127.0.0.1", port, client_config(**timers)))  # type: ignore[arg-type]
        deadline = time.monotonic() + 5
        while not refusals:  # the first ClientHello was refused...
            assert time.monotonic() < deadline and not attempt.done()
            await asyncio.sleep(0.01)
        async with await serve("127.0.0.1", port, server_config(**timers)) as server:  # type: ignore[arg-type]  # ...then the server starts
            session = await asyncio.wait_for(attempt, 10)
            try:
                await session.send(b"still here")
                peer = await asyncio.wait_for(anext(aiter(server)), 5)
                assert await asyncio.wait_for(peer.recv(), 5) == b"still here"
            finally:
                await session.close()

    asyncio.run(main())
    assert len(refusals) == 1 and isinstance(refusals[0], ConnectionRefusedError)


# -- iotdtls-client --------------------------------------------------------------------------------------------


def test_client_refused_port_one_line_fast(loopback: str) -> None:
    port = closed_port(loopback)
    r, elapsed = run([*CLIENT, loopback, str(port), "--psk-identity", "dev1", "--psk", KEY_HEX], stdin="hello\n")
    print(f"iotdtls-client to a closed port on {loopback}: exit {r.returncode} after {elapsed:.2f} s")
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [refused_line("iotdtls-client", loopback, port)], r.stderr
    assert r.stdout == ""
    assert elapsed < LIMIT


class LateServer:
    """An iotdtls.aio echo server on 127.0.0.1:``port``, in a thread of its own, bound only on :meth:`start`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._thread.start()
        assert self.ready.wait(10), "the echo server did not start"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    async def _serve(self) -> None:
        async def echo(session: ServerSession) -> None:
            while True:
                try:
                    await session.send(await session.recv())
                except DTLSError:
                    return

        server = await serve("127.0.0.1", self.port, server_config(), echo)
        self.ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.02)
        server.close()
        await server.wait_closed()


def test_client_survives_one_stray_icmp() -> None:
    """The server binds only after the client's first ClientHello was refused (seen in the client's -v log);
    the retransmission one second later reaches it."""
    server = LateServer(closed_port("127.0.0.1"))
    proc = subprocess.Popen([*CLIENT, "127.0.0.1", str(server.port), "--psk-identity", "dev1", "--psk", KEY_HEX,
                             "--retransmit-initial", "1", "-v"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    refused_once = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "port unreachable" in line:
                refused_once.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("hello\n")
        proc.stdin.close()
        assert refused_once.wait(15), "".join(lines)
        server.start()
        proc.wait(30)
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        server.stop()
    transcript = "".join(lines)
    assert proc.returncode == 0, transcript
    assert out == "hello\n", transcript
    assert "connection refused" not in transcript


def test_client_progress_lines_unless_quiet(black_hole: int) -> None:
    argv = [*CLIENT, "127.0.0.1", str(black_hole), "--psk-identity", "dev1", "--psk", KEY_HEX,
            "--retransmit-initial", "0.2", "--retransmit-max", "0.4", "--handshake-timeout", "1.5"]
    r, _ = run(argv)
    lines = r.stderr.splitlines()
    assert r.returncode == 1
    assert lines[:-1] == [f"iotdtls-client: handshake with 127.0.0.1:{black_hole}: no answer yet, retrying ({n}/5)"
                          for n in range(2, 6)], r.stderr
    assert lines[-1].startswith("iotdtls-client: timeout: handshake did not complete within 1.5 s")
    if not accepts_quiet(CLIENT):
        pytest.skip("iotdtls-client has no -q yet")
    r, _ = run([*argv, "-q"])
    assert r.returncode == 1 and "retrying" not in r.stderr, r.stderr


# -- CoAP over DTLS: the aiocoap transport and iotdtls-coap-client ------------------------------------------------


@pytest.fixture
def coap_credentials(tmp_path: Path) -> Path:
    path = tmp_path / "client.json"
    entry = {"dtls": {"psk": {"ascii": COAP_PSK}, "client-identity": {"ascii": "dev1"}}}
    path.write_text(json.dumps({"coaps://*": entry}))
    return path


def test_coap_request_fails_with_the_refusal(loopback: str, coap_credentials: Path) -> None:
    port = closed_port(loopback)
    uri = f"coaps://[{loopback}]:{port}/whoami" if ":" in loopback else f"coaps://{loopback}:{port}/whoami"

    async def main() -> float:
        ctx = await client_context(str(coap_credentials))
        try:
            start = time.monotonic()
            with pytest.raises(aiocoap.error.NetworkError) as info:
                await asyncio.wait_for(ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response, 30)
            assert isinstance(info.value.__cause__, ConnectionRefused)
            assert str(info.value) == str(info.value.__cause__) == refused_text(loopback, port)
            return time.monotonic() - start
        finally:
            await ctx.shutdown()

    elapsed = asyncio.run(main())
    print(f"coaps:// request to a closed port on {loopback}: refused after {elapsed:.2f} s")
    assert elapsed < LIMIT


class Hello(resource.Resource):  # type: ignore[misc]
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=b"hello")


def test_coap_request_survives_one_stray_icmp(monkeypatch: pytest.MonkeyPatch, coap_credentials: Path) -> None:
    refusals: list[Exception] = []
    original = coap_client.ClientSession.error_received

    def watched(self: coap_client.ClientSession, exc: Exception) -> None:
        refusals.append(exc)
        original(self, exc)

    monkeypatch.setattr(coap_client.ClientSession, "error_received", watched)
    port = closed_port("127.0.0.1")
    site = resource.Site()
    site.add_resource(["hello"], Hello())
    server_creds = {":dev1": {"dtls": {"psk": {"ascii": COAP_PSK}, "client-identity": {"ascii": "dev1"}}}}

    async def main() -> None:
        timers = DTLSConfiguration(retransmit_initial=0.5, retransmit_max=1.0)
        ctx = await client_context(str(coap_credentials), config=timers)
        try:
            request = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=f"coaps://127.0.0.1:{port}/hello"))
            deadline = time.monotonic() + 5
            while not refusals:  # the first ClientHello was refused...
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            server = await server_context(site, ("127.0.0.1", port), server_creds)  # ...then the server starts
            try:
                response = await asyncio.wait_for(request.response, 20)
                assert response.payload == b"hello"
            finally:
                await server.shutdown()
        finally:
            await ctx.shutdown()

    asyncio.run(main())
    assert len(refusals) == 1 and isinstance(refusals[0], ConnectionRefusedError)


def test_coap_established_session_fails_fast_when_the_server_dies(tmp_path: Path, coap_credentials: Path) -> None:
    (tmp_path / "server.json").write_text(json.dumps(
        {":dev1": {"dtls": {"psk": {"ascii": COAP_PSK}, "client-identity": {"ascii": "dev1"}}}}))
    port = free_udp_port()
    argv = [*COAP_SERVER, "--bind", f"127.0.0.1:{port}", "--credentials", str(tmp_path / "server.json")]
    uri = f"coaps://127.0.0.1:{port}/whoami"
    with run_peer("iotdtls-coap-server", argv, listen_port=port) as server:

        async def main() -> float:
            ctx = await client_context(str(coap_credentials))
            try:
                first = await asyncio.wait_for(ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response, 20)
                assert first.code.is_successful(), first
                session, established = first.remote, first.remote.connection
                server.proc.send_signal(signal.SIGKILL)  # a power cut: no close_notify
                await asyncio.to_thread(server.proc.wait, 10)
                start = time.monotonic()
                with pytest.raises(aiocoap.error.NetworkError) as info:
                    await asyncio.wait_for(ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response, 30)
                assert isinstance(info.value.__cause__, ConnectionRefused), info.value
                assert str(info.value) == f"connection refused by 127.0.0.1:{port} (nothing listening?)"
                assert session.connection is established and established.is_closed  # no new handshake started
                return time.monotonic() - start
            finally:
                await ctx.shutdown()

        elapsed = asyncio.run(main())
    print(f"coaps:// request over a session whose server died: refused after {elapsed:.2f} s")
    assert 1.0 < elapsed < LIMIT  # at the CoAP retransmission (2-3 s), not at the first ICMP


def test_coap_client_refused_port_one_line_fast(loopback: str, coap_credentials: Path) -> None:
    port = closed_port(loopback)
    uri = f"coaps://[{loopback}]:{port}/whoami" if ":" in loopback else f"coaps://{loopback}:{port}/whoami"
    r, elapsed = run([*COAP_CLIENT, "--credentials", str(coap_credentials), uri])
    print(f"iotdtls-coap-client to a closed port on {loopback}: exit {r.returncode} after {elapsed:.2f} s")
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [refused_line("iotdtls-coap-client", loopback, port)], r.stderr
    assert elapsed < LIMIT


def test_coap_client_progress_lines_unless_quiet(black_hole: int, coap_credentials: Path) -> None:
    argv = [*COAP_CLIENT, "--credentials", str(coap_credentials), "--timeout", "2.5",
            f"coaps://127.0.0.1:{black_hole}/whoami"]
    r, _ = run(argv)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"iotdtls-coap-client: handshake with 127.0.0.1:{black_hole}: no answer yet, retrying (2/17)",
        "iotdtls-coap-client: timeout: no response within 2.5 s"], r.stderr
    if not accepts_quiet(COAP_CLIENT):
        pytest.skip("iotdtls-coap-client has no -q yet")
    r, _ = run([*argv, "-q"])
    assert r.returncode == 1 and "retrying" not in r.stderr, r.stderr
