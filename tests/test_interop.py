"""Interop of iotdtls (its command-line tools, as users run them) with OpenSSL, GnuTLS and tinydtls.

Every case checks application data both ways. Peers are real processes (tinydtls runs in-process through
DTLSSocket), started and stopped by the tests; a missing peer skips, or fails with IOTDTLS_REQUIRE_PEERS=1.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import (
    GNUTLS_PSK_PRIORITY,
    PeerProcess,
    TinyDTLSServer,
    free_udp_port,
    gnutls_client,
    gnutls_server,
    openssl_client,
    openssl_server,
    require_gnutls,
    require_openssl,
    require_tinydtls,
    run_peer,
    tinydtls_client,
)

pytestmark = pytest.mark.interop

KEY_HEX = "00112233445566778899aabbccddeeff"
KEY = bytes.fromhex(KEY_HEX)
IDENTITY = "dev1"
GNUTLS_CCM16_PRIORITY = GNUTLS_PSK_PRIORITY.replace("+AES-128-CCM-8", "+AES-128-CCM")


@contextlib.contextmanager
def iotdtls_server(port: int, *extra: str, psk_lines: tuple[str, ...] = (f"{IDENTITY}:{KEY_HEX}",)
                   ) -> Iterator[PeerProcess]:
    with tempfile.TemporaryDirectory(prefix="iotdtls-psk-") as tmp:
        psk_file = Path(tmp) / "psk.txt"
        psk_file.write_text("".join(line + "\n" for line in psk_lines))
        argv = [sys.executable, "-m", "iotdtls.cli.server", "--port", str(port), "--psk-file", str(psk_file),
                "--retransmit-initial", "0.5", *extra]
        with run_peer("iotdtls-server", argv, listen_port=port,
                      handshake_marker=("stderr", "handshake complete")) as peer:
            yield peer


@contextlib.contextmanager
def iotdtls_client(port: int, *extra: str, identity: str = IDENTITY, key_hex: str = KEY_HEX,
                   linger: float = 1.0) -> Iterator[PeerProcess]:
    argv = [sys.executable, "-m", "iotdtls.cli.client", "127.0.0.1", str(port), "--psk-identity", identity,
            "--psk", key_hex, "--linger", str(linger), "--retransmit-initial", "0.5", "--handshake-timeout", "10",
            *extra]
    with run_peer("iotdtls-client", argv) as peer:
        yield peer


def finish_client(client: PeerProcess) -> None:
    client.close_stdin()
    rc = client.wait_exit(timeout=10)
    assert rc == 0, client.transcript()


# -- OpenSSL -----------------------------------------------------------------------------------------------------

def test_iotdtls_client_to_openssl_server() -> None:
    require_openssl()
    port = free_udp_port()
    with openssl_server(port, KEY_HEX) as server, iotdtls_client(port) as client:
        client.write_line("hello from iotdtls")
        server.wait_handshake(timeout=10)
        server.write_line("hello from openssl")
        client.expect_line("hello from openssl")
        finish_client(client)
        server.stop()
        # s_server prints what it received raw: our datagram carries no newline
        assert "hello from iotdtls" in server.stdout.text(), server.transcript()


def test_openssl_client_to_iotdtls_server() -> None:
    require_openssl()
    port = free_udp_port()
    with iotdtls_server(port) as server, openssl_client(port, KEY_HEX, IDENTITY) as client:
        client.wait_handshake(timeout=10)
        for line in ("ping from openssl", "second datagram"):
            client.write_line(line)
            client.expect_line(line)  # echoed: data went both ways
        server.wait_output("identity='dev1', suite=TLS_PSK_WITH_AES_128_CCM_8")


def test_openssl_ccm16_suite_both_roles() -> None:
    require_openssl()
    port = free_udp_port()
    with iotdtls_server(port) as server, openssl_client(port, KEY_HEX, IDENTITY, cipher="PSK-AES128-CCM") as cli:
        cli.wait_handshake(timeout=10)
        cli.write_line("ccm16")
        cli.expect_line("ccm16")
        server.wait_output("suite=TLS_PSK_WITH_AES_128_CCM")
    port = free_udp_port()
    with openssl_server(port, KEY_HEX, cipher="PSK-AES128-CCM") as oserver, iotdtls_client(port) as client:
        client.write_line("ccm16 client")
        oserver.wait_handshake(timeout=10)
        oserver.write_line("back")
        client.expect_line("back")
        finish_client(client)
        oserver.stop()
        assert "ccm16 client" in oserver.stdout.text(), oserver.transcript()


def test_iotdtls_client_wrong_key_against_openssl_ends_in_one_line_timeout() -> None:
    # OpenSSL drops the Finished it cannot decrypt without an alert: our client can only time out.
    require_openssl()
    port = free_udp_port()
    with openssl_server(port, KEY_HEX), iotdtls_client(port, "--handshake-timeout", "3", key_hex="ff" * 16) as client:
        client.close_stdin()
        rc = client.wait_exit(timeout=15)
        assert rc == 1, client.transcript()
        err = [line for line in client.stderr.text().strip().splitlines() if "no answer yet, retrying" not in line]
        assert len(err) == 1 and err[0].startswith("iotdtls-client: timeout"), client.transcript()


# -- GnuTLS ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mtu", [None, 128])
def test_iotdtls_client_to_gnutls_server(mtu: int | None) -> None:
    require_gnutls()
    port = free_udp_port()
    extra = ("--mtu", str(mtu)) if mtu else ()
    with gnutls_server(port, [f"{IDENTITY}:{KEY_HEX}"]), iotdtls_client(port, *extra) as client:
        for line in ("hello gnutls", "x" * 60):
            client.write_line(line)
            client.expect_line(line, timeout=10)  # gnutls-serv --echo sends it back
        finish_client(client)


@pytest.mark.parametrize("mtu", [None, 128])
def test_gnutls_client_to_iotdtls_server(mtu: int | None) -> None:
    require_gnutls()
    port = free_udp_port()
    with iotdtls_server(port) as server, gnutls_client(port, IDENTITY, KEY_HEX, mtu=mtu) as client:
        client.wait_handshake(timeout=10)
        client.write_line("hello from gnutls-cli")
        client.expect_line("hello from gnutls-cli")
        server.wait_output("identity='dev1'")


def test_gnutls_ccm16_suite_both_roles() -> None:
    require_gnutls()
    port = free_udp_port()
    with iotdtls_server(port) as server, gnutls_client(port, IDENTITY, KEY_HEX,
                                                       priority=GNUTLS_CCM16_PRIORITY) as client:
        client.wait_handshake(timeout=10)
        client.write_line("ccm16")
        client.expect_line("ccm16")
        server.wait_output("suite=TLS_PSK_WITH_AES_128_CCM")
    port = free_udp_port()
    with gnutls_server(port, [f"{IDENTITY}:{KEY_HEX}"], priority=GNUTLS_CCM16_PRIORITY), \
            iotdtls_client(port) as client:
        client.write_line("ccm16 to gnutls")
        client.expect_line("ccm16 to gnutls", timeout=10)
        finish_client(client)


def test_gnutls_client_wrong_key_refused_by_iotdtls_server() -> None:
    require_gnutls()
    port = free_udp_port()
    with iotdtls_server(port) as server, gnutls_client(port, IDENTITY, "ff" * 16) as client:
        server.wait_output("handshake failed: bad_record_mac", timeout=10)
        rc = client.wait_exit(timeout=10)
        assert rc != 0, client.transcript()


# -- tinydtls (DTLSSocket) ---------------------------------------------------------------------------------------

def test_iotdtls_client_to_tinydtls_server() -> None:
    require_tinydtls()
    port = free_udp_port()
    with TinyDTLSServer(port, {IDENTITY.encode(): KEY}) as server, iotdtls_client(port) as client:
        client.write_line("hello tinydtls")
        client.expect_line("hello tinydtls", timeout=10)  # echoed by the tinydtls server
        assert server.wait_received(1) == [b"hello tinydtls"]
        finish_client(client)


def test_tinydtls_client_to_iotdtls_server() -> None:
    require_tinydtls()
    port = free_udp_port()
    with iotdtls_server(port) as server, tinydtls_client(port, IDENTITY.encode(), KEY) as client:
        client.connect(timeout=10)
        client.send(b"hello from tinydtls")
        assert client.recv(timeout=5) == b"hello from tinydtls"
        server.wait_output("identity='dev1'")
