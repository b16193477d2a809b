"""Interop of iotdtls's ECDHE-ECDSA suites (raw public keys and X.509) with GnuTLS and OpenSSL.

Our side runs as the real command-line tools (``iotdtls-server`` / ``iotdtls-client``), the peers as real
processes (tests/peers.py). Every positive case authenticates both ends and sends data both ways. Key files and
a test PKI (tests/pki.py) are written once per module to a temporary directory.

Peer behaviour seen on Debian 12 (GnuTLS 3.7.9, OpenSSL 3.0) and relied on or avoided here:

* gnutls-cli cannot pin a server's raw public key (only TOFU), so it runs with --insecure and prints
  "PKI verification of server certificate failed..."; our side does the pinning.
* gnutls-cli without a raw key of its own, asked for one, sends a user_canceled alert instead of an empty
  Certificate ("Could not find a suitable key to send to server").
* gnutls-serv --require-client-cert, given an empty client Certificate, fails with "No certificate was found."
  *without sending an alert*, then spins at full CPU printing "Waiting for connection..." and serves nobody
  (see peers.gnutls_server); so no test makes gnutls-serv fail on its own side. A fatal alert it *receives*
  (our bad_certificate) leaves it healthy.
* openssl s_server keeps accepting new clients after a failed handshake; s_client exits 1 on a fatal alert.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import p256_key
from peers import (
    GNUTLS_RPK_PRIORITY,
    OPENSSL_ECDSA_CIPHER,
    PeerProcess,
    datagram_sizes,
    free_udp_port,
    gnutls_client,
    gnutls_server,
    netem_proxy,
    openssl_client,
    openssl_server,
    require_gnutls,
    require_openssl,
    run_peer,
)
from pki import issue, make_ca

from iotdtls.keys import fingerprint, load_public_key, ni_uri, private_key_pem, public_key_pem, spki_der

pytestmark = pytest.mark.interop

SUITE_CCM8 = "suite=TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8"
SUITE_CCM16 = "suite=TLS_ECDHE_ECDSA_WITH_AES_128_CCM"
MTU = 256


@dataclass(frozen=True)
class Creds:
    """Key files in one directory: ``NAME.key`` (PKCS#8 PEM), ``NAME.pub`` (SPKI PEM), ``NAME.crt`` (X.509)."""

    dir: Path

    def key(self, name: str) -> str:
        return str(self.dir / f"{name}.key")

    def pub(self, name: str) -> str:
        return str(self.dir / f"{name}.pub")

    def crt(self, name: str) -> str:
        return str(self.dir / f"{name}.crt")

    def ni(self, name: str) -> str:
        return ni_uri(fingerprint(spki_der(load_public_key(Path(self.pub(name)).read_bytes()))))


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Creds:
    out = tmp_path_factory.mktemp("pk-interop")
    # raw public keys: "server" and "client" pin each other, nobody pins "stranger"
    for name in ("server", "client", "stranger"):
        key = p256_key(f"interop-{name}")
        (out / f"{name}.key").write_bytes(private_key_pem(key))
        (out / f"{name}.pub").write_bytes(public_key_pem(key))
    # X.509: leaves of "ca"; "rogue" from another CA; "misnamed" of "ca" but with SAN example.com only
    ca, other_ca = make_ca(), make_ca("another test CA")
    ca.write(out, "ca")
    issue(ca, "server").write(out, "xserver")
    issue(ca, "client").write(out, "xclient")
    issue(other_ca, "rogue").write(out, "rogue")
    issue(ca, "misnamed", names=("example.com",)).write(out, "misnamed")
    return Creds(out)


@contextlib.contextmanager
def iotdtls_server(port: int, *args: str) -> Iterator[PeerProcess]:
    argv = [sys.executable, "-m", "iotdtls.cli.server", "--port", str(port), "--retransmit-initial", "0.5", *args]
    with run_peer("iotdtls-server", argv, listen_port=port,
                  handshake_marker=("stderr", "handshake complete")) as peer:
        yield peer


@contextlib.contextmanager
def iotdtls_client(port: int, *args: str, linger: float = 1.0) -> Iterator[PeerProcess]:
    argv = [sys.executable, "-m", "iotdtls.cli.client", "127.0.0.1", str(port), "--linger", str(linger),
            "--retransmit-initial", "0.5", "--handshake-timeout", "10", *args]
    with run_peer("iotdtls-client", argv) as peer:
        yield peer


def finish_client(client: PeerProcess) -> None:
    client.close_stdin()
    rc = client.wait_exit(timeout=10)
    assert rc == 0, client.transcript()


def refused(client: PeerProcess, alert: str) -> str:
    """Our client exits 1 with exactly one stderr line naming `alert` and no traceback; returns the line."""
    client.close_stdin()
    rc = client.wait_exit(timeout=15)
    client.stop()  # joins the output readers
    lines = client.stderr.text().strip().splitlines()
    assert rc == 1 and len(lines) == 1 and alert in lines[0], client.transcript()
    assert lines[0].startswith("iotdtls-client: handshake failed: "), client.transcript()
    assert "Traceback" not in client.stderr.text()
    return lines[0]


def assert_fits(netem: PeerProcess, mtu: int) -> None:
    """Every datagram either way went through the size-checking proxy and none was over `mtu`."""
    for direction in ("c2s", "s2c"):
        sizes = datagram_sizes(netem, direction)
        assert sizes, netem.transcript()
        assert all(fate.startswith("delivered") for _, fate in sizes), netem.transcript()
        assert max(size for size, _ in sizes) <= mtu, netem.transcript()


# -- GnuTLS, raw public keys, mutual authentication, MTU 256 -------------------------------------------------------

def gnutls_rpk_client(creds: Creds, port: int, name: str = "client") -> AbstractContextManager[PeerProcess]:
    """gnutls-cli presenting raw key `name`, at MTU 256 (it cannot pin the server's key: --insecure)."""
    return gnutls_client(port, identity="", mtu=MTU, priority=GNUTLS_RPK_PRIORITY, rawpk_key=creds.key(name),
                         rawpk_pub=creds.pub(name), insecure=True)


def rpk_server_args(creds: Creds) -> tuple[str, ...]:
    return ("--key", creds.key("server"), "--trust-key", creds.pub("client"), "--require-client-auth",
            "--mtu", str(MTU))


def test_gnutls_cli_rpk_to_iotdtls_server_mutual_mtu256(creds: Creds) -> None:
    require_gnutls()
    port, front = free_udp_port(), free_udp_port()
    with iotdtls_server(port, *rpk_server_args(creds)) as server, \
            netem_proxy(front, port, "--mtu", str(MTU)) as netem, \
            gnutls_rpk_client(creds, front) as client:
        client.wait_handshake(timeout=10)
        report = client.stdout.info_lines
        assert "- Certificate type: Raw Public Key" in report, client.transcript()
        assert any(line.startswith("- Description: (DTLS1.2-Raw Public Key)-(ECDHE-SECP256R1)-(ECDSA-SHA256)-"
                                   "(AES-128-CCM-8)") for line in report), client.transcript()
        assert "- Successfully sent 1 certificate(s) to server." in report, client.transcript()
        for line in ("hello over raw public keys", "y" * 180):
            client.write_line(line)
            client.expect_line(line, timeout=10)  # echoed by iotdtls-server
        server.wait_output(f"identity='{creds.ni('client')}', {SUITE_CCM8}")
        client.close_stdin()
        assert client.wait_exit(timeout=10) == 0, client.transcript()
    assert_fits(netem, MTU)


def test_iotdtls_client_rpk_to_gnutls_serv_mutual_mtu256(creds: Creds) -> None:
    # gnutls-serv --require-client-cert cannot pin our key, but refuses a handshake without one (and checks the
    # CertificateVerify signature), so completing shows we sent our raw key; our client pins the server's.
    require_gnutls()
    port, front = free_udp_port(), free_udp_port()
    with gnutls_server(port, priority=GNUTLS_RPK_PRIORITY, rawpk_key=creds.key("server"),
                       rawpk_pub=creds.pub("server"), require_client_cert=True, mtu=MTU) as gserv, \
            netem_proxy(front, port, "--mtu", str(MTU)) as netem, \
            iotdtls_client(front, "--key", creds.key("client"), "--trust-key", creds.pub("server"),
                           "--mtu", str(MTU)) as client:
        for line in ("hello gnutls-serv over raw public keys", "z" * 180):
            client.write_line(line)
            client.expect_line(line, timeout=10)  # gnutls-serv --echo sends it back
        # its log shows what it echoed (the byte count it prints is capped at 128; the echo itself is complete)
        gserv.wait_output("*** Processing 38 bytes command: hello gnutls-serv over raw public keys")
        finish_client(client)
    assert_fits(netem, MTU)


# -- OpenSSL, X.509 ----------------------------------------------------------------------------------------------

def x509_server_args(creds: Creds) -> tuple[str, ...]:
    return ("--cert", creds.crt("xserver"), "--key", creds.key("xserver"), "--ca", creds.crt("ca"),
            "--require-client-auth")


def x509_client_args(creds: Creds) -> tuple[str, ...]:
    return "--cert", creds.crt("xclient"), "--key", creds.key("xclient"), "--ca", creds.crt("ca")


def test_openssl_s_client_x509_to_iotdtls_server_mutual(creds: Creds) -> None:
    require_openssl()
    port = free_udp_port()
    with iotdtls_server(port, *x509_server_args(creds)) as server, \
            openssl_client(port, cipher=OPENSSL_ECDSA_CIPHER, cert=creds.crt("xclient"), key=creds.key("xclient"),
                           ca_file=creds.crt("ca")) as client:
        client.wait_handshake(timeout=10)
        for needle in ("Ciphersuite: ECDHE-ECDSA-AES128-CCM8", "Peer certificate: CN = server", "Verification: OK"):
            client.wait_output(needle)
        for line in ("ping over x509", "second datagram"):
            client.write_line(line)
            client.expect_line(line)  # echoed
        server.wait_output(f"identity='CN=client', {SUITE_CCM8}")


def test_iotdtls_client_x509_to_openssl_s_server_mutual(creds: Creds) -> None:
    require_openssl()
    port = free_udp_port()
    with openssl_server(port, cipher=OPENSSL_ECDSA_CIPHER, cert=creds.crt("xserver"), key=creds.key("xserver"),
                        ca_file=creds.crt("ca")) as server, \
            iotdtls_client(port, *x509_client_args(creds)) as client:
        client.write_line("hello from iotdtls over x509")
        server.wait_handshake(timeout=10)
        server.wait_output("Peer certificate: CN = client")  # -Verify 1: s_server checked our chain
        server.wait_output("Verification: OK")
        server.write_line("hello from openssl")
        client.expect_line("hello from openssl")
        finish_client(client)
        server.stop()
        assert "hello from iotdtls over x509" in server.stdout.text(), server.transcript()


def test_openssl_x509_ccm16_suite_both_roles(creds: Creds) -> None:
    require_openssl()
    cipher = "ECDHE-ECDSA-AES128-CCM"
    port = free_udp_port()
    with iotdtls_server(port, *x509_server_args(creds)) as server, \
            openssl_client(port, cipher=cipher, cert=creds.crt("xclient"), key=creds.key("xclient"),
                           ca_file=creds.crt("ca")) as client:
        client.wait_handshake(timeout=10)
        client.write_line("ccm16")
        client.expect_line("ccm16")
        line = server.wait_output(SUITE_CCM16)
        assert line.endswith(f"identity='CN=client', {SUITE_CCM16}"), server.transcript()  # not ..._CCM_8
    port = free_udp_port()
    with openssl_server(port, cipher=cipher, cert=creds.crt("xserver"), key=creds.key("xserver"),
                        ca_file=creds.crt("ca")) as oserver, \
            iotdtls_client(port, *x509_client_args(creds)) as client:
        client.write_line("ccm16 client")
        oserver.wait_handshake(timeout=10)
        assert oserver.wait_output("Ciphersuite:") == f"Ciphersuite: {cipher}", oserver.transcript()
        oserver.write_line("back")
        client.expect_line("back")
        finish_client(client)
        oserver.stop()
        assert "ccm16 client" in oserver.stdout.text(), oserver.transcript()


# -- refusals ----------------------------------------------------------------------------------------------------

def test_iotdtls_client_refuses_unpinned_gnutls_server(creds: Creds) -> None:
    require_gnutls()
    port = free_udp_port()
    with gnutls_server(port, priority=GNUTLS_RPK_PRIORITY, rawpk_key=creds.key("stranger"),
                       rawpk_pub=creds.pub("stranger"), require_client_cert=True) as gserv, \
            iotdtls_client(port, "--key", creds.key("client"), "--trust-key", creds.pub("server")) as client:
        line = refused(client, "bad_certificate")
        assert line == "iotdtls-client: handshake failed: bad_certificate (raw public key is not trusted)"
        gserv.wait_output("Error in handshake(): A TLS fatal alert has been received.")
        assert client.stdout.text() == ""


def test_iotdtls_server_refuses_unpinned_gnutls_client_then_serves_good_one(creds: Creds) -> None:
    require_gnutls()
    port = free_udp_port()
    with iotdtls_server(port, *rpk_server_args(creds)) as server:
        with gnutls_rpk_client(creds, port, "stranger") as bad:
            rc = bad.wait_exit(timeout=10)
            assert rc != 0, bad.transcript()
            bad.wait_output("*** Received alert [42]: Certificate is bad", stream="stdout")
            assert "- Handshake was completed" not in bad.stdout.text(), bad.transcript()
        server.wait_output("handshake failed: bad_certificate (raw public key is not trusted)")
        assert server.alive(), server.transcript()
        with gnutls_rpk_client(creds, port) as good:
            good.wait_handshake(timeout=10)
            good.write_line("still serving")
            good.expect_line("still serving")
        server.wait_output(f"identity='{creds.ni('client')}', {SUITE_CCM8}")
        assert "Traceback" not in server.stderr.text(), server.transcript()


def test_iotdtls_server_requiring_auth_refuses_openssl_client_without_certificate(creds: Creds) -> None:
    require_openssl()
    port = free_udp_port()
    with iotdtls_server(port, *x509_server_args(creds)) as server:
        with openssl_client(port, cipher=OPENSSL_ECDSA_CIPHER, ca_file=creds.crt("ca")) as anonymous:
            rc = anonymous.wait_exit(timeout=10)
            assert rc != 0, anonymous.transcript()
            anonymous.wait_output("alert handshake failure")  # "... SSL alert number 40"
        server.wait_output("handshake failed: handshake_failure (client presented no certificate)")
        with openssl_client(port, cipher=OPENSSL_ECDSA_CIPHER, cert=creds.crt("xclient"), key=creds.key("xclient"),
                            ca_file=creds.crt("ca")) as good:
            good.wait_handshake(timeout=10)
            good.write_line("with a certificate")
            good.expect_line("with a certificate")


@pytest.mark.parametrize(("cert", "name", "alert", "openssl_sees"), [
    ("rogue", (), "unknown_ca", "alert unknown ca"),  # issued by another CA
    # our CA, SAN 127.0.0.1 + localhost, but we ask for another name
    ("xserver", ("--server-name", "iot.example"), "bad_certificate", "alert bad certificate"),
    # our CA, SAN example.com only, and the name defaults to the host argument 127.0.0.1
    ("misnamed", (), "bad_certificate", "alert bad certificate"),
], ids=["other-ca", "server-name-not-in-san", "host-not-in-san"])
def test_iotdtls_client_with_ca_refuses_openssl_server(creds: Creds, cert: str, name: tuple[str, ...], alert: str,
                                                        openssl_sees: str) -> None:
    require_openssl()
    port = free_udp_port()
    with openssl_server(port, cipher=OPENSSL_ECDSA_CIPHER, cert=creds.crt(cert), key=creds.key(cert),
                        ca_file=creds.crt("ca")) as server:
        with iotdtls_client(port, *x509_client_args(creds), *name) as client:
            line = refused(client, alert)
        if alert == "bad_certificate":
            expected = name[1] if name else "127.0.0.1"
            assert line.endswith(f"(certificate is not valid for {expected})"), line
        server.wait_output(openssl_sees)
        if cert == "misnamed":  # the same certificate is fine when we ask for the name it carries
            with iotdtls_client(port, *x509_client_args(creds), "--server-name", "example.com") as client:
                client.write_line("right name")
                server.wait_handshake(timeout=10)
                server.write_line("ok")
                client.expect_line("ok")
                finish_client(client)


# -- certificate-type fallback (RFC 7250 negotiation against peers that speak only one type) -----------------------

def test_iotdtls_client_pinning_a_key_accepts_openssl_x509_server(creds: Creds) -> None:
    # OpenSSL 3.0 has no RFC 7250: it ignores our server_certificate_type [raw key, X.509] and sends its
    # certificate; a pinned leaf key authenticates it without any CA.
    require_openssl()
    port = free_udp_port()
    with openssl_server(port, cipher=OPENSSL_ECDSA_CIPHER, cert=creds.crt("xserver"), key=creds.key("xserver")) \
            as server, iotdtls_client(port, "--trust-key", creds.crt("xserver")) as client:
        client.write_line("pinned x509 leaf")
        server.wait_handshake(timeout=10)
        server.write_line("ok")
        client.expect_line("ok")
        finish_client(client)
        server.stop()
        assert "pinned x509 leaf" in server.stdout.text(), server.transcript()


def test_iotdtls_server_with_raw_key_only_refuses_x509_only_openssl_client(creds: Creds) -> None:
    # s_client offers no server_certificate_type, so only X.509 will do, and this server has only a raw key
    require_openssl()
    port = free_udp_port()
    with iotdtls_server(port, "--key", creds.key("server")) as server:
        with openssl_client(port, cipher=OPENSSL_ECDSA_CIPHER) as client:
            assert client.wait_exit(timeout=10) != 0, client.transcript()
            client.wait_output("alert unsupported certificate")
        server.wait_output("handshake failed: unsupported_certificate")


# GNUTLS_RPK_PRIORITY adds raw keys to GnuTLS's default X.509; -CTYPE-ALL first leaves raw keys alone
RPK_ONLY_PRIORITY = GNUTLS_RPK_PRIORITY.replace("+CTYPE-CLI-RAWPK", "-CTYPE-ALL:+CTYPE-CLI-RAWPK")


def test_iotdtls_server_with_certificate_presents_raw_key_to_rpk_only_gnutls_client(creds: Creds) -> None:
    # the server has an X.509 chain (its first choice), but this gnutls-cli accepts only a raw public key
    require_gnutls()
    port = free_udp_port()
    with iotdtls_server(port, "--key", creds.key("xserver"), "--cert", creds.crt("xserver"),
                        "--trust-key", creds.pub("client"), "--require-client-auth") as server, \
            gnutls_client(port, identity="", priority=RPK_ONLY_PRIORITY, rawpk_key=creds.key("client"),
                          rawpk_pub=creds.pub("client"), insecure=True) as client:
        client.wait_handshake(timeout=10)
        assert "- Certificate type: Raw Public Key" in client.stdout.info_lines, client.transcript()
        client.write_line("raw key from a certificate holder")
        client.expect_line("raw key from a certificate holder")
        server.wait_output(f"identity='{creds.ni('client')}', {SUITE_CCM8}")
