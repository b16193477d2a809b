"""The public-key side of the command-line tools, no real peers: iotdtls-keygen, usage errors of --key/--cert/
--trust-key/--ca/--require-client-auth, and iotdtls-client <-> iotdtls-server with raw public keys."""

from __future__ import annotations

import contextlib
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import p256_key
from peers import PeerProcess, datagram_sizes, free_udp_port, netem_proxy, run_peer
from pki import issue, make_ca

from iotdtls.keys import (
    fingerprint,
    load_private_key,
    load_public_key,
    ni_uri,
    parse_fingerprint,
    private_key_pem,
    public_key_pem,
    spki_der,
)

KEY_HEX = "00112233445566778899aabbccddeeff"
KEYGEN = [sys.executable, "-m", "iotdtls.cli.keygen"]
CLIENT = [sys.executable, "-m", "iotdtls.cli.client"]
SERVER = [sys.executable, "-m", "iotdtls.cli.server"]
ECDHE_CCM8 = "suite=TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8"


def run(argv: list[str], stdin: str = "", timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def report_lines(spki: bytes) -> list[str]:
    """What iotdtls-keygen prints for a key, computed with iotdtls.keys."""
    digest = fingerprint(spki)
    return [f"sha-256: {digest.hex()}", f"ni:      {ni_uri(digest)}"]


# -- iotdtls-keygen ------------------------------------------------------------------------------------------------

def test_keygen_writes_0600_key_and_pub_and_prints_its_fingerprints(tmp_path: Path) -> None:
    key_path = tmp_path / "device.key"
    r = run([*KEYGEN, str(key_path)])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = load_private_key(key_path.read_bytes())
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    pub = load_public_key((tmp_path / "device.pub").read_bytes())
    assert spki_der(pub) == spki_der(key)
    lines = r.stdout.splitlines()
    assert lines[-2:] == report_lines(spki_der(key)), r.stdout
    hex_digest, ni = lines[-2].split()[1], lines[-1].split()[1]
    assert parse_fingerprint(hex_digest) == parse_fingerprint(ni) == fingerprint(spki_der(key))
    assert f"{key_path}" in r.stdout and "0600" in r.stdout


def test_keygen_public_option_names_the_public_key_file(tmp_path: Path) -> None:
    r = run([*KEYGEN, str(tmp_path / "a.pem"), "--public", str(tmp_path / "elsewhere.spki")])
    assert r.returncode == 0, r.stderr
    key = load_private_key((tmp_path / "a.pem").read_bytes())
    assert spki_der(load_public_key((tmp_path / "elsewhere.spki").read_bytes())) == spki_der(key)
    assert not (tmp_path / "a.pub").exists()


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    key_path, pub_path = tmp_path / "k.key", tmp_path / "k.pub"
    assert run([*KEYGEN, str(key_path)]).returncode == 0
    before = key_path.read_bytes(), pub_path.read_bytes()
    r = run([*KEYGEN, str(key_path)])
    assert r.returncode == 1 and r.stdout == ""
    assert one_line(r.stderr) == f"iotdtls-keygen: {key_path} exists (use --force to overwrite)"
    assert (key_path.read_bytes(), pub_path.read_bytes()) == before
    key_path.unlink()  # an existing public key alone is not overwritten either
    r = run([*KEYGEN, str(key_path)])
    assert r.returncode == 1 and one_line(r.stderr) == f"iotdtls-keygen: {pub_path} exists (use --force to overwrite)"
    assert not key_path.exists() and pub_path.read_bytes() == before[1]
    r = run([*KEYGEN, "--force", str(key_path)])
    assert r.returncode == 0, r.stderr
    key = load_private_key(key_path.read_bytes())
    assert pub_path.read_bytes() != before[1] and spki_der(load_public_key(pub_path.read_bytes())) == spki_der(key)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_keygen_show_private_key_public_key_and_certificate(tmp_path: Path) -> None:
    key_path = tmp_path / "dev.key"
    assert run([*KEYGEN, str(key_path)]).returncode == 0
    key = load_private_key(key_path.read_bytes())
    issue(make_ca(), "dev", key).write(tmp_path, "devcert")  # devcert.crt carries the same key
    expected = "\n".join(report_lines(spki_der(key))) + "\n"
    for path in (key_path, tmp_path / "dev.pub", tmp_path / "devcert.crt"):
        r = run([*KEYGEN, "--show", str(path)])
        assert (r.returncode, r.stdout, r.stderr) == (0, expected, ""), path
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    for path in (garbage, tmp_path / "missing.key"):
        r = run([*KEYGEN, "--show", str(path)])
        assert r.returncode == 1 and r.stdout == ""
        assert one_line(r.stderr).startswith(f"iotdtls-keygen: {path}"), r.stderr


# -- usage errors: one line, exit 2 ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """server/client raw keys (.key/.pub), an X.509 pair xserver/xclient of ca, junk and a P-384 key, a PSK file."""
    from cryptography.hazmat.primitives.asymmetric import ec

    out = tmp_path_factory.mktemp("pk-cli")
    for name in ("server", "client"):
        key = p256_key(f"cli-{name}")
        (out / f"{name}.key").write_bytes(private_key_pem(key))
        (out / f"{name}.pub").write_bytes(public_key_pem(key))
    ca = make_ca()
    ca.write(out, "ca")
    issue(ca, "server").write(out, "xserver")
    issue(ca, "client").write(out, "xclient")
    (out / "garbage.key").write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    (out / "empty.key").write_bytes(b"")
    (out / "p384.key").write_bytes(private_key_pem(ec.generate_private_key(ec.SECP384R1())))
    (out / "psk.txt").write_text(f"dev1:{KEY_HEX}\n")
    return out


def usage_error(tool: str, argv: list[str]) -> str:
    """Run `tool` with `argv`; assert exit 2 and a single "tool: ..." stderr line, and return that line."""
    r = run(argv)
    assert r.returncode == 2, (argv, r.stderr)
    line = one_line(r.stderr)
    assert line.startswith(f"{tool}: "), line
    return line


SERVER_ERRORS = {
    "missing-key": (["--key", "{d}/missing.key"], "cannot read key file {d}/missing.key"),
    "garbage-key": (["--key", "{d}/garbage.key"], "key file {d}/garbage.key: not a PEM/DER private key"),
    "empty-key": (["--key", "{d}/empty.key"], "key file {d}/empty.key: not a PEM/DER private key"),
    "p384-key": (["--key", "{d}/p384.key"], "not a P-256 (secp256r1) key"),
    "key-is-a-directory": (["--key", "{d}"], "cannot read key file"),
    "cert-without-key": (["--psk-file", "{d}/psk.txt", "--cert", "{d}/xserver.crt"], "--cert needs --key"),
    "cert-not-matching-key": (["--key", "{d}/server.key", "--cert", "{d}/xserver.crt"],
                              "{d}/xserver.crt: the certificate does not match the key in {d}/server.key"),
    "bad-fingerprint": (["--key", "{d}/server.key", "--trust-key", "abcd"],
                        "abcd: neither a readable key file nor a SHA-256 fingerprint"),
    "bad-ni": (["--key", "{d}/server.key", "--trust-key", "ni:///sha-256;short"], "neither a readable key file"),
    "63-hex-digits": (["--key", "{d}/server.key", "--trust-key", "a" * 63], "nor a SHA-256 fingerprint"),
    "garbage-trust-key-file": (["--key", "{d}/server.key", "--trust-key", "{d}/garbage.key"],
                               "{d}/garbage.key: not a PEM/DER public key"),
    "garbage-ca": (["--key", "{d}/server.key", "--ca", "{d}/garbage.key"],
                   "CA file {d}/garbage.key: not a PEM certificate chain"),
    "missing-ca": (["--key", "{d}/server.key", "--ca", "{d}/missing.crt"], "cannot read CA file"),
    "require-auth-without-trust": (["--key", "{d}/server.key", "--require-client-auth"],
                                   "--require-client-auth needs --trust-key or --ca"),
    "no-credentials": ([], "give --psk-file, --key, or both"),
}


@pytest.mark.parametrize("case", SERVER_ERRORS)
def test_server_public_key_usage_errors(files: Path, case: str) -> None:
    args, expected = SERVER_ERRORS[case]
    line = usage_error("iotdtls-server", [*SERVER, "--port", "1", *(a.format(d=files) for a in args)])
    assert expected.format(d=files) in line, line


CLIENT_ERRORS = {
    "no-psk-no-trust": ([], "give --psk-identity and --psk, or --trust-key/--ca"),
    "key-but-no-trust": (["--key", "{d}/client.key"], "give --psk-identity and --psk, or --trust-key/--ca"),
    "missing-key": (["--trust-key", "{d}/server.pub", "--key", "{d}/missing.key"], "cannot read key file"),
    "garbage-key": (["--trust-key", "{d}/server.pub", "--key", "{d}/garbage.key"], "not a PEM/DER private key"),
    "cert-without-key": (["--ca", "{d}/ca.crt", "--cert", "{d}/xclient.crt"], "--cert needs --key"),
    "cert-not-matching-key": (["--ca", "{d}/ca.crt", "--key", "{d}/client.key", "--cert", "{d}/xclient.crt"],
                              "the certificate does not match the key"),
    "bad-fingerprint": (["--trust-key", "zz"], "zz: neither a readable key file nor a SHA-256 fingerprint"),
    "garbage-trust-key-file": (["--trust-key", "{d}/garbage.key"], "{d}/garbage.key: not a PEM/DER public key"),
}


@pytest.mark.parametrize("case", CLIENT_ERRORS)
def test_client_public_key_usage_errors(files: Path, case: str) -> None:
    args, expected = CLIENT_ERRORS[case]
    line = usage_error("iotdtls-client", [*CLIENT, "127.0.0.1", "1", *(a.format(d=files) for a in args)])
    assert expected.format(d=files) in line, line


# -- iotdtls-client <-> iotdtls-server with raw public keys ------------------------------------------------------

def pin(files: Path, name: str, form: str) -> str:
    """`name`'s public key as a --trust-key argument of the given form."""
    digest = fingerprint(spki_der(load_public_key((files / f"{name}.pub").read_bytes())))
    return {
        "file": str(files / f"{name}.pub"),
        "hex": digest.hex(),
        "colon-hex": "sha-256:" + ":".join(f"{b:02X}" for b in digest),
        "ni": ni_uri(digest),
    }[form]


@contextlib.contextmanager
def server(port: int, *args: str) -> Iterator[PeerProcess]:
    argv = [*SERVER, "--port", str(port), "--retransmit-initial", "0.5", *args]
    with run_peer("iotdtls-server", argv, listen_port=port) as peer:
        yield peer


def client(port: int, *args: str, lines: tuple[str, ...] = ("hello",)) -> subprocess.CompletedProcess[str]:
    """Run iotdtls-client to completion with `lines` on stdin; assert they all came back (echo)."""
    r = run([*CLIENT, "127.0.0.1", str(port), "--linger", "0.5", "--retransmit-initial", "0.5",
             "--handshake-timeout", "10", *args], stdin="".join(f"{line}\n" for line in lines))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.splitlines() == list(lines)
    return r


@pytest.mark.parametrize("form", ["file", "hex", "colon-hex", "ni"])
def test_rpk_pair_with_trust_key_as(files: Path, form: str) -> None:
    port = free_udp_port()
    with server(port, "--key", str(files / "server.key"), "--trust-key", pin(files, "client", form),
                "--require-client-auth") as srv:
        client(port, "--key", str(files / "client.key"), "--trust-key", pin(files, "server", form))
        client_ni = pin(files, "client", "ni")
        srv.wait_output(f"handshake complete, identity='{client_ni}', {ECDHE_CCM8}")


def test_rpk_pair_at_mtu_256(files: Path) -> None:
    port, front = free_udp_port(), free_udp_port()
    with server(port, "--key", str(files / "server.key"), "--trust-key", pin(files, "client", "ni"),
                "--require-client-auth", "--mtu", "256") as srv, netem_proxy(front, port, "--mtu", "256") as netem:
        client(front, "--key", str(files / "client.key"), "--trust-key", pin(files, "server", "hex"),
               "--mtu", "256", lines=("small", "m" * 200))
        srv.wait_output(f"identity='{pin(files, 'client', 'ni')}', {ECDHE_CCM8}")
    for direction in ("c2s", "s2c"):  # the proxy drops (and logs TOO BIG) anything over 256 bytes
        sizes = datagram_sizes(netem, direction)
        assert sizes and all(fate.startswith("delivered") for _, fate in sizes), netem.transcript()
        assert max(size for size, _ in sizes) <= 256, netem.transcript()


def test_server_with_psk_and_key_serves_psk_and_rpk_clients(files: Path) -> None:
    port = free_udp_port()
    with server(port, "--psk-file", str(files / "psk.txt"), "--key", str(files / "server.key"),
                "--trust-key", str(files / "client.pub")) as srv:
        client(port, "--psk-identity", "dev1", "--psk", KEY_HEX, lines=("psk client",))
        srv.wait_output("identity='dev1', suite=TLS_PSK_WITH_AES_128_CCM_8")
        client(port, "--key", str(files / "client.key"), "--trust-key", str(files / "server.pub"),
               lines=("rpk client",))
        srv.wait_output(f"identity='{pin(files, 'client', 'ni')}', {ECDHE_CCM8}")
        # without --require-client-auth a client without a key of its own is served, anonymously
        client(port, "--trust-key", str(files / "server.pub"), lines=("anonymous client",))
        srv.wait_output(f"identity='', {ECDHE_CCM8}")
        assert "Traceback" not in srv.stderr.text()
