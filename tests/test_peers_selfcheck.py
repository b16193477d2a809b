"""Self-check of the real-peer harness (tests/peers.py): the peers talk to each other, no iotdtls code.

If these fail, interop failures elsewhere are about the harness or the machine, not about iotdtls.
"""

from __future__ import annotations

import pytest
from peers import (
    PeerError,
    TinyDTLSServer,
    free_udp_port,
    gnutls_client,
    gnutls_server,
    openssl_client,
    openssl_server,
    require_gnutls,
    require_openssl,
    require_tinydtls,
    tinydtls_client,
    udp_port_bound,
)

pytestmark = pytest.mark.interop

KEY_HEX = "00112233445566778899aabbccddeeff"
KEY = bytes.fromhex(KEY_HEX)
IDENTITY = "dev1"


def test_free_udp_port_is_free_and_unique() -> None:
    ports = {free_udp_port() for _ in range(5)}
    assert len(ports) == 5
    assert not any(udp_port_bound(p) for p in ports)


def test_openssl_client_server_psk_ccm8_both_ways() -> None:
    require_openssl()
    port = free_udp_port()
    with openssl_server(port, KEY_HEX) as server, openssl_client(port, KEY_HEX, IDENTITY) as client:
        client.wait_handshake()
        server.wait_handshake()
        assert "PSK-AES128-CCM8" in server.wait_output("Ciphersuite:")
        client.write_line("hello from s_client")
        server.expect_line("hello from s_client")
        # a line starting with "Q" would quit a non-brief s_server / non-quiet s_client
        server.write_line("Quit? no: hello from s_server")
        client.expect_line("Quit? no: hello from s_server")
        client.write_line("second line")
        server.expect_line("second line")
        assert client.alive() and server.alive()


def test_openssl_wrong_key_never_completes() -> None:
    # OpenSSL (like GnuTLS and tinydtls) silently drops the undecryptable Finished: no alert, a hang.
    require_openssl()
    port = free_udp_port()
    with openssl_server(port, KEY_HEX) as server, openssl_client(port, "ff" * 16, IDENTITY) as client:
        with pytest.raises(PeerError):
            client.wait_handshake(timeout=1.0)
        assert not server.stdout.lines


@pytest.mark.parametrize("mtu", [None, 128])
def test_gnutls_cli_to_gnutls_serv_echo(mtu: int | None) -> None:
    require_gnutls()
    port = free_udp_port()
    with (
        gnutls_server(port, [f"{IDENTITY}:{KEY_HEX}"]) as server,
        gnutls_client(port, IDENTITY, KEY_HEX, mtu=mtu) as client,
    ):
        client.wait_handshake()
        assert any("AES-128-CCM-8" in line for line in client.stdout.info_lines)
        client.write_line("hello gnutls")
        client.expect_line("hello gnutls")
        # gnutls-cli does not split stdin data across records: with --mtu 128 a chunk larger than one
        # record's payload is dropped ("*** Non fatal error: ... too large (EMSGSIZE)" on stderr).
        long_line = "x" * (300 if mtu is None else 64)
        client.write_line(long_line)
        assert client.read_line() == long_line
        assert server.alive()
        if mtu is None:  # EOF on stdin: gnutls-cli closes and exits (takes ~2 s, so only once)
            client.close_stdin()
            assert client.wait_exit() == 0


def test_tinydtls_client_to_tinydtls_server_echo() -> None:
    require_tinydtls()
    port = free_udp_port()
    with (
        TinyDTLSServer(port, {IDENTITY.encode(): KEY}) as server,
        tinydtls_client(port, IDENTITY.encode(), KEY) as client,
    ):
        client.connect()
        client.send(b"hello tinydtls")
        assert client.recv() == b"hello tinydtls", server.describe()
        client.send(b"\x00\x01binary\xff")
        assert client.recv() == b"\x00\x01binary\xff"
        assert server.wait_received(2) == [b"hello tinydtls", b"\x00\x01binary\xff"]
        assert server.connected_count() == 1


def test_tinydtls_wrong_key_does_not_connect() -> None:
    require_tinydtls()
    port = free_udp_port()
    with (
        TinyDTLSServer(port, {IDENTITY.encode(): KEY}) as server,
        tinydtls_client(port, IDENTITY.encode(), b"\xff" * 16) as client,
    ):
        with pytest.raises(PeerError):
            client.connect(timeout=1.0)
        assert server.connected_count() == 0
