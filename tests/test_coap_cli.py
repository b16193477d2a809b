"""iotdtls-coap-server and iotdtls-coap-client as a user runs them: payloads, exit codes, one-line errors, signals."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiocoap
import pytest
from peers import PeerProcess, free_udp_port, run_peer

from iotdtls.coap import client_context

PSK = "secretPSK0123456"


def tool(script: str, module: str) -> list[str]:
    path = shutil.which(script)
    return [path] if path else [sys.executable, "-m", module]


CLIENT = tool("iotdtls-coap-client", "iotdtls.cli.coap_client")
SERVER = tool("iotdtls-coap-server", "iotdtls.cli.coap_server")


def psk_entry(key: str = PSK) -> dict[str, object]:
    return {"dtls": {"psk": {"ascii": key}, "client-identity": {"ascii": "dev1"}}}


def run(argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, timeout=timeout)


def one_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, stderr.decode()
    assert "Traceback" not in lines[0]
    return lines[0]


@dataclass
class Setup:
    port: int
    good: Path
    bad: Path
    server: PeerProcess

    def uri(self, path: str) -> str:
        return f"coaps://127.0.0.1:{self.port}/{path}"

    def client(self, *args: str, creds: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        return run([*CLIENT, "--credentials", str(creds or self.good), *args])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    d = tmp_path_factory.mktemp("coapcli")
    (d / "server.json").write_text(json.dumps({":dev1": psk_entry()}))
    (d / "good.json").write_text(json.dumps({"coaps://*": psk_entry()}))
    (d / "bad.json").write_text(json.dumps({"coaps://*": psk_entry("wrongPSK01234567")}))
    port = free_udp_port()
    argv = [*SERVER, "--bind", f"127.0.0.1:{port}", "--credentials", str(d / "server.json"),
            "--observe-interval", "0.2", "-v"]
    with run_peer("iotdtls-coap-server", argv, listen_port=port) as server:
        yield Setup(port, d / "good.json", d / "bad.json", server)
        assert server.alive(), server.transcript()


def test_echo_keeps_payload_and_content_format(setup: Setup) -> None:
    r = setup.client("-m", "post", "--payload", '{"a": 1}', "--content-format", "application/json", setup.uri("echo"))
    assert (r.returncode, r.stdout, r.stderr) == (0, b'{"a": 1}\n', b"")
    r = setup.client("-m", "PUT", "--payload", "x", "--content-format", "0", setup.uri("echo"))
    assert (r.returncode, r.stdout) == (0, b"x\n")

    async def main() -> None:  # the content format itself, which the tool does not print
        ctx = await client_context(str(setup.good))
        try:
            for cf in (0, 50, 60):
                msg = aiocoap.Message(code=aiocoap.POST, uri=setup.uri("echo"), payload=b"p", content_format=cf)
                response = await asyncio.wait_for(ctx.request(msg).response, 10)
                assert (response.code, response.payload, response.opt.content_format) == (aiocoap.CONTENT, b"p", cf)
        finally:
            await ctx.shutdown()

    asyncio.run(main())


def test_whoami_and_well_known_core(setup: Setup) -> None:
    r = setup.client(setup.uri("whoami"))
    assert (r.returncode, r.stdout) == (0, b"dev1 (:dev1)\n")
    r = setup.client(setup.uri(".well-known/core"))
    assert r.returncode == 0
    assert {"</time>", "</echo>", "</whoami>"} <= {link.split(";")[0] for link in r.stdout.decode().split(",")}


def test_payload_from_file_blockwise_at_small_mtu(setup: Setup, tmp_path: Path) -> None:
    body = b"".join(b"line %04d of a file sent blockwise\n" % i for i in range(90))
    assert len(body) > 3000
    (tmp_path / "big.txt").write_bytes(body)
    r = setup.client("-m", "POST", "--payload", f"@{tmp_path / 'big.txt'}", "--mtu", "128", setup.uri("echo"))
    assert (r.returncode, r.stdout) == (0, body)
    r = setup.client("-m", "POST", "--payload", f"@{tmp_path / 'missing.txt'}", setup.uri("echo"))
    assert r.returncode == 2
    assert one_line(r.stderr).startswith(f"iotdtls-coap-client: cannot read payload file {tmp_path / 'missing.txt'}")


def test_observe_count(setup: Setup) -> None:
    r = setup.client("--observe", "--observe-count", "3", setup.uri("time"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 4  # the response, then 3 notifications
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line) for line in lines)


def test_not_found_exit_1_one_line(setup: Setup) -> None:
    r = setup.client(setup.uri("nowhere"))
    assert (r.returncode, r.stdout) == (1, b"")
    assert one_line(r.stderr) == "iotdtls-coap-client: 4.04 Not Found"
    r = setup.client("-m", "DELETE", setup.uri("echo"))
    assert r.returncode == 1  # the server's diagnostic payload follows the code
    assert one_line(r.stderr).startswith("iotdtls-coap-client: 4.05 Method Not Allowed: ")


def test_wrong_key_exit_1_one_line(setup: Setup) -> None:
    r = setup.client(setup.uri("whoami"), creds=setup.bad)
    assert (r.returncode, r.stdout) == (1, b"")
    assert one_line(r.stderr) == ("iotdtls-coap-client: server sent alert: bad_record_mac (the server rejected our "
                                  "key: wrong PSK or unknown identity)")


def test_client_usage_errors_exit_2(setup: Setup, tmp_path: Path) -> None:
    cases = [
        (["coaps://[zz/echo"], "iotdtls-coap-client: coaps://[zz/echo: "),
        (["not-a-uri"], "iotdtls-coap-client: not-a-uri: "),
        (["-m", "FROB", setup.uri("echo")], "iotdtls-coap-client: unknown method 'FROB'"),
        (["--content-format", "foo/bar", "-m", "POST", setup.uri("echo")], "unknown content format 'foo/bar'"),
    ]
    for args, prefix in cases:
        r = setup.client(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert prefix in one_line(r.stderr)
    missing = tmp_path / "missing.json"
    r = run([*CLIENT, "--credentials", str(missing), setup.uri("whoami")])
    assert r.returncode == 2
    assert one_line(r.stderr).startswith(f"iotdtls-coap-client: cannot read credentials {missing}")
    r = run([*CLIENT, setup.uri("whoami")])  # no credentials at all for a coaps:// URI
    assert r.returncode == 1 and "No suitable credentials" in one_line(r.stderr)


def test_server_usage_errors_exit_2(setup: Setup, tmp_path: Path) -> None:
    creds = str(tmp_path / "server.json")
    Path(creds).write_text(json.dumps({":dev1": psk_entry()}))
    cases = [
        (["--bind", "127.0.0.1:99999", "--credentials", creds], "iotdtls-coap-server: --bind 127.0.0.1:99999: "),
        (["--bind", "no.such.host.invalid:5684", "--credentials", creds], "iotdtls-coap-server: cannot bind "),
        (["--bind", f"127.0.0.1:{setup.port}", "--credentials", creds], "Address already in use"),
        (["--bind", "127.0.0.1:0", "--credentials", str(tmp_path / "nope.json")], "cannot read credentials"),
    ]
    for args, needle in cases:
        r = run([*SERVER, *args])
        assert r.returncode == 2, (args, r.stderr)
        assert needle in one_line(r.stderr)


def sigterm_with_live_observer(tmp_path: Path) -> tuple[PeerProcess, PeerProcess]:
    """Serve, observe /time until a notification arrived, SIGTERM the server; both processes have exited."""
    (tmp_path / "server.json").write_text(json.dumps({":dev1": psk_entry()}))
    (tmp_path / "client.json").write_text(json.dumps({"coaps://*": psk_entry()}))
    port = free_udp_port()
    argv = [*SERVER, "--bind", f"127.0.0.1:{port}", "--credentials", str(tmp_path / "server.json"),
            "--observe-interval", "0.1"]
    with run_peer("iotdtls-coap-server", argv, listen_port=port) as server:
        observer = PeerProcess("observer", [*CLIENT, "--credentials", str(tmp_path / "client.json"), "--observe",
                                            f"coaps://127.0.0.1:{port}/time"])
        try:
            observer.read_line()
            observer.read_line()  # a notification: the session is live
            server.proc.send_signal(signal.SIGTERM)
            server.wait_exit(timeout=5)
            observer.wait_exit(timeout=10)
        finally:
            observer.stop()
    return server, observer


def test_server_exits_0_on_sigterm_with_a_live_observer(tmp_path: Path) -> None:
    server, observer = sigterm_with_live_observer(tmp_path)
    assert server.returncode == 0, server.transcript()
    assert "Traceback" not in server.stderr.text()
    assert server.stderr.text().startswith("iotdtls-coap-server: serving coaps://127.0.0.1:")
    # the observer hears the close_notify: exit 1 with one line
    assert observer.returncode == 1, observer.transcript()
    line = one_line(observer.stderr.text().encode())
    assert line.startswith("iotdtls-coap-client: ") and line.endswith("the server closed the DTLS session")


def test_server_sigterm_prints_nothing_but_the_banner(tmp_path: Path) -> None:
    server, _ = sigterm_with_live_observer(tmp_path)
    assert server.stderr.text().strip().splitlines() == [server.stderr.text().strip().splitlines()[0]]
