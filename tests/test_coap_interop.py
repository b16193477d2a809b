"""Interop of iotdtls's CoAPs transport with libcoap 4.3.1 (GnuTLS and OpenSSL builds) and aiocoap's tinydtls.

Our side runs as the real tools, ``iotdtls-coap-server`` / ``iotdtls-coap-client`` (``python -m``), the peers as
real processes (tests/peers.py). One PSK server and one raw-public-key server are shared per module; a failed
handshake is checked against our server's ``-v`` log ("DTLS session with HOST:PORT, identity ..." is written
once per completed handshake).

Peer behaviour seen here (libcoap 4.3.1, GnuTLS 3.7.9, OpenSSL 3.0, aiocoap 0.4.17 + DTLSSocket):

* coap-client exits 0 when the handshake fails; it logs (to stdout) "Alert '20': Bad record MAC" (GnuTLS) or
  "alert bad record mac" (OpenSSL) and "cannot send CoAP pdu". We answer a wrong key and an unknown identity
  alike with bad_record_mac (RFC 4279 section 2 allows it, so identities cannot be probed).
* coap-server given a Finished it cannot decrypt (wrong key) drops it without an alert ("Discarded message[...]
  due to invalid decryption"); the GnuTLS build sends a plaintext close_notify ~5 s later, the OpenSSL build
  just retransmits its flight. Our client can only time out (or report the close).
* coap-server's /example_data answers the last block of a blockwise PUT with 2.01 *without* a Block1 option;
  aiocoap logs "Block1 option completely ignored by server" and goes on (the data is stored complete).
* Raw public keys: only the GnuTLS build. Neither coap-client nor coap-server can pin the peer's key (they
  accept any); the OpenSSL build logs "RPK Support not available in OpenSSL" - coap-client-openssl -M exits
  255 ("cannot create client session"), coap-server-openssl -M starts and then fails each handshake with a
  handshake_failure alert ("no shared cipher").
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from peers import (
    LOCALHOST,
    LibcoapRun,
    PeerProcess,
    free_port_pair,
    free_udp_port,
    libcoap_server,
    require_libcoap,
    require_tinydtls,
    run_libcoap_client,
    run_peer,
)

from iotdtls.keys import fingerprint, generate_private_key, ni_uri, private_key_pem, public_key_pem, spki_der

pytestmark = pytest.mark.interop

PSK = "secretPSK0123456"  # libcoap's -k takes the key as ASCII text
IDENTITY = "dev1"
TLS_BUILDS = ["gnutls", "openssl"]
OBSERVE_INTERVAL = 0.3
TIMESTAMP = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SESSION_LINE = re.compile(r"DTLS session with 127\.0\.0\.1:(\d+), identity (b'[^']*')")


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def psk_entry(identity: str = IDENTITY, key: str = PSK) -> dict[str, Any]:
    return {"dtls": {"psk": {"ascii": key}, "client-identity": {"ascii": identity}}}


# -- our tools ---------------------------------------------------------------------------------------------------


@dataclass
class CoapServer:
    """A running iotdtls-coap-server (-v) on 127.0.0.1:port."""

    peer: PeerProcess
    port: int

    @property
    def uri(self) -> str:
        return f"coaps://{LOCALHOST}:{self.port}"

    def sessions(self) -> list[tuple[int, str]]:
        """(client port, identity repr) of every completed handshake logged so far."""
        return [(int(m[1]), m[2]) for m in SESSION_LINE.finditer(self.peer.stderr.text())]

    def wait_sessions(self, count: int, timeout: float = 5.0) -> list[tuple[int, str]]:
        deadline = time.monotonic() + timeout
        while len(found := self.sessions()) < count:
            if time.monotonic() > deadline:
                raise self.peer.fail(f"expected {count} completed sessions in the log, found {len(found)}")
            time.sleep(0.02)
        return found


@contextlib.contextmanager
def iotdtls_coap_server(credentials: Path, *extra: str) -> Iterator[CoapServer]:
    port = free_udp_port()
    argv = [sys.executable, "-m", "iotdtls.cli.coap_server", "--bind", f"{LOCALHOST}:{port}",
            "--credentials", str(credentials), "--observe-interval", str(OBSERVE_INTERVAL), "-v", *extra]
    with run_peer("iotdtls-coap-server", argv) as peer:
        peer.wait_udp_listening(port, timeout=20)  # importing aiocoap takes a moment on a busy machine
        peer.wait_output("serving coaps://")
        yield CoapServer(peer, port)


def coap_client(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[bytes]:
    """Run iotdtls-coap-client with ARGS to completion."""
    argv = [sys.executable, "-m", "iotdtls.cli.coap_client", "--timeout", str(timeout), *args]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 20, check=False)


def client_transcript(result: subprocess.CompletedProcess[bytes]) -> str:
    return (f"argv: {' '.join(map(str, result.args))}\nreturncode {result.returncode}\n"
            f"--- stdout ---\n{result.stdout!r}\n--- stderr ---\n{result.stderr.decode(errors='replace')}")


@pytest.fixture(scope="module")
def psk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoapServer]:
    creds = write_json(tmp_path_factory.mktemp("coap-psk") / "server.json",
                       {":dev1": psk_entry(), ":dev2": psk_entry("dev2", "anotherPSK987654")})
    with iotdtls_coap_server(creds) as server:
        yield server


# -- libcoap clients -> iotdtls-coap-server (PSK) ----------------------------------------------------------------


def libcoap_psk(tls: str, uri: str, *args: str, identity: str = IDENTITY, key: str = PSK, wait: int = 10
                ) -> LibcoapRun:
    require_libcoap(tls)
    return run_libcoap_client(tls, uri, *args, identity=identity, key=key, wait=wait)


@pytest.mark.parametrize("tls", TLS_BUILDS)
def test_libcoap_client_echo_and_whoami(psk_server: CoapServer, tls: str) -> None:
    run = libcoap_psk(tls, f"{psk_server.uri}/echo", "-m", "post", "-e", f"hello from libcoap-{tls}")
    assert run.returncode == 0 and run.payload == f"hello from libcoap-{tls}".encode(), run.transcript()
    run = libcoap_psk(tls, f"{psk_server.uri}/whoami")
    assert run.returncode == 0 and run.payload == b"dev1 (:dev1)", run.transcript()
    run = libcoap_psk(tls, f"{psk_server.uri}/whoami", identity="dev2", key="anotherPSK987654")
    assert run.returncode == 0 and run.payload == b"dev2 (:dev2)", run.transcript()


@pytest.mark.parametrize("tls", TLS_BUILDS)
def test_libcoap_client_blockwise_post_at_64_byte_blocks(psk_server: CoapServer, tls: str,
                                                         tmp_path: Path) -> None:
    data = os.urandom(3000)
    source = tmp_path / "in.bin"
    source.write_bytes(data)
    run = libcoap_psk(tls, f"{psk_server.uri}/echo", "-m", "post", "-b", "64", "-f", str(source), "-v", "6")
    assert run.returncode == 0, run.transcript()
    assert run.payload == data, run.transcript()
    # libcoap sent 64-byte Block1 blocks 0..46 (-v 6 logs its first request and our answer to the last one:
    # 2.05 with "Block2:0/M/256, Block1:46/_/64"); we chose the Block2 size ourselves (libcoap asked for none)
    assert re.search(r"c:POST .*\bBlock1:0/M/64\b", run.output), run.transcript()
    assert re.search(r"c:2\.05 .*\bBlock1:46/_/64\b", run.output), run.transcript()


@pytest.mark.parametrize("tls", TLS_BUILDS)
@pytest.mark.parametrize(("identity", "key"), [(IDENTITY, "wrongwrongwrong0"), ("nobody", PSK)],
                         ids=["wrong-key", "unknown-identity"])
def test_libcoap_client_bad_psk_refused(psk_server: CoapServer, tls: str, identity: str, key: str) -> None:
    before = len(psk_server.sessions())
    bad = libcoap_psk(tls, f"{psk_server.uri}/echo", "-m", "post", "-e", "must not arrive",
                      identity=identity, key=key)
    # libcoap exits 0 even now: its log and the missing payload tell
    assert "bad record mac" in bad.output.lower(), bad.transcript()
    assert "cannot send CoAP pdu" in bad.output, bad.transcript()
    assert bad.payload is None, bad.transcript()
    ports = re.findall(rf"127\.0\.0\.1:(\d+) <-> 127\.0\.0\.1:{psk_server.port}\b", bad.output)
    assert ports, bad.transcript()
    # a good request afterwards: its session is logged, the refused one never was
    good = libcoap_psk(tls, f"{psk_server.uri}/whoami")
    assert good.payload == b"dev1 (:dev1)", good.transcript()
    sessions = psk_server.wait_sessions(before + 1)
    assert len(sessions) == before + 1, psk_server.peer.transcript()
    assert int(ports[0]) not in {port for port, _ in sessions}, psk_server.peer.transcript()
    assert psk_server.peer.alive()


@pytest.mark.parametrize("tls", TLS_BUILDS)
def test_libcoap_client_observes_time(psk_server: CoapServer, tls: str) -> None:
    run = libcoap_psk(tls, f"{psk_server.uri}/time", "-s", "3", "-w", "-v", "6")
    assert run.returncode == 0 and run.payload is not None, run.transcript()
    lines = run.payload.splitlines()
    assert all(TIMESTAMP.match(line) for line in lines), run.transcript()
    # the registration response (Observe:0) and at least 3 notifications with distinct sequence numbers
    observe_numbers = set(re.findall(r"c:2\.05 .*\[ Observe:(\d+)", run.output))
    assert len(observe_numbers) >= 4 and len(lines) >= 4, run.transcript()


# -- iotdtls-coap-client ------------------------------------------------------------------------------------------


def test_iotdtls_client_observes_time(psk_server: CoapServer, tmp_path: Path) -> None:
    creds = write_json(tmp_path / "client.json", {f"{psk_server.uri}/*": psk_entry()})
    started = time.monotonic()
    result = coap_client("--credentials", str(creds), "--observe", "--observe-count", "3", f"{psk_server.uri}/time")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, client_transcript(result)
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all(TIMESTAMP.match(line) for line in lines), client_transcript(result)
    assert elapsed >= 3 * OBSERVE_INTERVAL - 0.05, f"3 notifications in {elapsed:.2f} s"  # sent by the timer


@pytest.fixture(params=TLS_BUILDS)
def libcoap_psk_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """A coap-server-* with PSK; yields its coaps:// base URI."""
    tls: str = request.param
    require_libcoap(tls)
    port = free_port_pair()
    with libcoap_server(port, tls, psk_key=PSK):
        yield f"coaps://{LOCALHOST}:{port + 1}"


def test_iotdtls_client_to_libcoap_server(libcoap_psk_server: str, tmp_path: Path) -> None:
    uri = libcoap_psk_server
    creds = str(write_json(tmp_path / "client.json", {f"{uri}/*": psk_entry()}))
    core = coap_client("--credentials", creds, f"{uri}/.well-known/core")
    assert core.returncode == 0, client_transcript(core)
    assert b"</time>" in core.stdout and b"</example_data>" in core.stdout, client_transcript(core)
    put = coap_client("--credentials", creds, "-m", "PUT", "--payload", "hello from iotdtls", f"{uri}/example_data")
    assert put.returncode == 0, client_transcript(put)
    get = coap_client("--credentials", creds, f"{uri}/example_data")
    assert get.returncode == 0 and get.stdout == b"hello from iotdtls\n", client_transcript(get)


def test_iotdtls_client_session_file_with_libcoap_server(libcoap_psk_server: str, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    """iotdtls-coap-client --session twice: coap-server-openssl resumes the session (OpenSSL's server session
    cache); coap-server-gnutls keeps no sessions (libcoap sets up no GnuTLS session store or ticket key), so the
    second run says so and makes a full handshake. Both answer."""
    uri = libcoap_psk_server
    creds = str(write_json(tmp_path / "client.json", {f"{uri}/*": psk_entry()}))
    session = str(tmp_path / "session.bin")
    said = []
    for _ in range(2):
        r = coap_client("--credentials", creds, "--session", session, f"{uri}/time")
        assert r.returncode == 0 and r.stdout.strip(), client_transcript(r)
        said.append(r.stderr.decode().strip())
    assert said[0] == "iotdtls-coap-client: full handshake"
    resumed = "iotdtls-coap-client: session resumed (abbreviated handshake)"
    refused = "iotdtls-coap-client: full handshake: the server did not resume the saved session"
    tls = request.node.callspec.params["libcoap_psk_server"]
    assert said[1] == (resumed if tls == "openssl" else refused), said


def test_iotdtls_client_blockwise_to_libcoap_server(libcoap_psk_server: str, tmp_path: Path) -> None:
    # --mtu 256 leaves room for 128-byte blocks: 3,000 bytes go as 24 Block1 blocks and come back as 24 Block2
    uri = libcoap_psk_server
    creds = str(write_json(tmp_path / "client.json", {f"{uri}/*": psk_entry()}))
    data = os.urandom(1500).hex().encode()
    (tmp_path / "big.txt").write_bytes(data)
    put = coap_client("--credentials", creds, "--mtu", "256", "-m", "PUT", "--payload", f"@{tmp_path / 'big.txt'}",
                      f"{uri}/example_data")
    assert put.returncode == 0, client_transcript(put)
    get = coap_client("--credentials", creds, "--mtu", "256", f"{uri}/example_data")
    assert get.returncode == 0 and get.stdout == data + b"\n", client_transcript(get)


def test_iotdtls_client_identity_selects_key_on_libcoap_server(tmp_path: Path) -> None:
    """coap-server -i: identity dev1 gets its own key (the default -k is another), so our identity is used."""
    port = free_port_pair()
    uri = f"coaps://{LOCALHOST}:{port + 1}"
    ids = tmp_path / "ids.txt"
    ids.write_text(f"CoAP,{IDENTITY},{PSK}\n")  # hint_to_match,identity_to_match,use_key
    for tls in TLS_BUILDS:
        require_libcoap(tls)
        with libcoap_server(port, tls, psk_key="otherDefaultKey0", extra=["-i", str(ids)]) as server:
            good = coap_client("--credentials", str(write_json(tmp_path / "dev1.json", {f"{uri}/*": psk_entry()})),
                               f"{uri}/")
            assert good.returncode == 0 and b"libcoap" in good.stdout, client_transcript(good)
            # another identity with dev1's key: libcoap uses the default key, cannot decrypt our Finished and
            # drops it silently. The GnuTLS build sends a plaintext alert after ~5 s, the OpenSSL build nothing
            # (it retransmits its flight); so we give up after 3 s either way.
            creds = write_json(tmp_path / "dev9.json", {f"{uri}/*": psk_entry("dev9")})
            bad = coap_client("--credentials", str(creds), f"{uri}/", timeout=3)
            assert bad.returncode == 1 and bad.stdout == b"", client_transcript(bad)
            lines = [line for line in bad.stderr.decode().splitlines() if "no answer yet, retrying" not in line]
            assert lines == ["iotdtls-coap-client: timeout: no response within 3 s"], client_transcript(bad)
            if tls == "gnutls":
                server.wait_output("due to invalid decryption", "stdout")  # "Discarded message[...] due to ..."


# -- aiocoap's own tinydtls client -> iotdtls-coap-server ---------------------------------------------------------


def test_aiocoap_tinydtls_client_to_iotdtls_server(psk_server: CoapServer, tmp_path: Path) -> None:
    require_tinydtls()
    creds = str(write_json(tmp_path / "aiocoap.json", {f"{psk_server.uri}/*": psk_entry()}))
    env = dict(os.environ, AIOCOAP_CLIENT_TRANSPORT="tinydtls")  # nothing but aiocoap's tinydtls transport

    def aiocoap_client(*args: str) -> subprocess.CompletedProcess[bytes]:
        argv = [sys.executable, "-m", "aiocoap.cli.client", "-vv", "--credentials", creds, *args]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False, env=env)

    before = len(psk_server.sessions())
    whoami = aiocoap_client(f"{psk_server.uri}/whoami")
    assert whoami.returncode == 0 and whoami.stdout.strip() == b"dev1 (:dev1)", client_transcript(whoami)
    assert b"No DTLS connection active" in whoami.stderr, client_transcript(whoami)  # tinydtls transport's log
    echo = aiocoap_client("-m", "POST", "--payload", "hello from tinydtls", f"{psk_server.uri}/echo")
    assert echo.returncode == 0 and echo.stdout.strip() == b"hello from tinydtls", client_transcript(echo)
    sessions = psk_server.wait_sessions(before + 2)
    assert [identity for _, identity in sessions[before:]] == ["b'dev1'", "b'dev1'"], psk_server.peer.transcript()


# -- raw public keys (libcoap's GnuTLS build) ---------------------------------------------------------------------


@dataclass(frozen=True)
class KeyFiles:
    key: Path  # PKCS#8 PEM, our tools' private-key
    pub: Path  # SPKI PEM, a pin
    rpk: Path  # key + pub in one PEM: libcoap's -M file
    ni: str  # ni:///sha-256;... of the public key


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyFiles]:
    folder = tmp_path_factory.mktemp("coap-rpk")
    out: dict[str, KeyFiles] = {}
    for name in ("server", "client", "stranger"):
        key = generate_private_key()
        files = KeyFiles(folder / f"{name}.key", folder / f"{name}.pub", folder / f"{name}.rpk.pem",
                         ni_uri(fingerprint(spki_der(key))))
        files.key.write_bytes(private_key_pem(key))
        files.pub.write_bytes(public_key_pem(key))
        files.rpk.write_bytes(private_key_pem(key) + public_key_pem(key))
        out[name] = files
    return out


@pytest.fixture(scope="module")
def rpk_server(keys: dict[str, KeyFiles], tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoapServer]:
    creds = write_json(tmp_path_factory.mktemp("coap-rpk-server") / "server.json", {
        "coaps://*": {"iotdtls-rpk": {"private-key": str(keys["server"].key)}},
        ":sensor": {"iotdtls-rpk": {"peer-keys": [keys["client"].ni]}},
    })
    with iotdtls_coap_server(creds, "--require-client-auth") as server:
        yield server


def test_libcoap_gnutls_rpk_client_to_iotdtls_server(rpk_server: CoapServer, keys: dict[str, KeyFiles]) -> None:
    require_libcoap("gnutls")
    before = len(rpk_server.sessions())
    whoami = run_libcoap_client("gnutls", f"{rpk_server.uri}/whoami", rpk_file=keys["client"].rpk)
    assert whoami.returncode == 0 and whoami.payload is not None, whoami.transcript()
    assert whoami.payload.endswith(b"(:sensor)"), whoami.transcript()  # the trusted key's entry is the claim
    echo = run_libcoap_client("gnutls", f"{rpk_server.uri}/echo", "-m", "post", "-e", "rpk echo",
                              rpk_file=keys["client"].rpk)
    assert echo.returncode == 0 and echo.payload == b"rpk echo", echo.transcript()
    # a key we do not trust: bad_certificate, no payload, no session
    stranger = run_libcoap_client("gnutls", f"{rpk_server.uri}/whoami", rpk_file=keys["stranger"].rpk)
    assert "Alert '42': Certificate is bad" in stranger.output, stranger.transcript()
    assert stranger.payload is None, stranger.transcript()
    sessions = rpk_server.wait_sessions(before + 2)
    assert len(sessions) == before + 2, rpk_server.peer.transcript()


def test_iotdtls_rpk_client_to_libcoap_gnutls_server(keys: dict[str, KeyFiles], tmp_path: Path) -> None:
    require_libcoap("gnutls")
    port = free_port_pair()
    uri = f"coaps://{LOCALHOST}:{port + 1}"

    def creds(pin: Path) -> str:
        entry = {"iotdtls-rpk": {"private-key": str(keys["client"].key), "peer-keys": [str(pin)]}}
        return str(write_json(tmp_path / f"client-{pin.stem}.json", {f"{uri}/*": entry}))

    with libcoap_server(port, "gnutls", rpk_file=keys["server"].rpk):
        core = coap_client("--credentials", creds(keys["server"].pub), f"{uri}/.well-known/core")
        assert core.returncode == 0 and b"</example_data>" in core.stdout, client_transcript(core)
        put = coap_client("--credentials", creds(keys["server"].pub), "-m", "PUT", "--payload", "rpk data",
                          f"{uri}/example_data")
        assert put.returncode == 0, client_transcript(put)
        get = coap_client("--credentials", creds(keys["server"].pub), f"{uri}/example_data")
        assert get.returncode == 0 and get.stdout == b"rpk data\n", client_transcript(get)
        # we pin: the same server under a pin for another key is refused, in one line
        wrong = coap_client("--credentials", creds(keys["stranger"].pub), f"{uri}/.well-known/core")
        assert wrong.returncode == 1 and wrong.stdout == b"", client_transcript(wrong)
        assert wrong.stderr.decode().splitlines() == [
            "iotdtls-coap-client: handshake failed: bad_certificate (raw public key is not trusted)"
        ], client_transcript(wrong)


def test_libcoap_openssl_build_cannot_do_rpk(rpk_server: CoapServer, keys: dict[str, KeyFiles],
                                             tmp_path: Path) -> None:
    """Documents the limitation: libcoap 4.3.1's OpenSSL build has no raw public keys in either role."""
    require_libcoap("openssl")
    before = len(rpk_server.sessions())
    run = run_libcoap_client("openssl", f"{rpk_server.uri}/whoami", rpk_file=keys["client"].rpk)
    assert "RPK Support not available in OpenSSL" in run.output, (
        "libcoap's OpenSSL build may do raw public keys now: extend the RPK tests to it\n" + run.transcript())
    assert run.returncode != 0 and run.payload is None, run.transcript()
    port = free_port_pair()
    uri = f"coaps://{LOCALHOST}:{port + 1}"
    entry = {"iotdtls-rpk": {"private-key": str(keys["client"].key), "peer-keys": [str(keys["server"].pub)]}}
    creds = str(write_json(tmp_path / "client.json", {f"{uri}/*": entry}))
    with libcoap_server(port, "openssl", rpk_file=keys["server"].rpk) as server:
        result = coap_client("--credentials", creds, f"{uri}/.well-known/core")
        assert result.returncode == 1 and result.stdout == b"", client_transcript(result)
        assert b"handshake_failure" in result.stderr, client_transcript(result)
        server.wait_output("RPK Support not available in OpenSSL", "stdout")
    assert len(rpk_server.sessions()) == before, rpk_server.peer.transcript()
