"""The MicroPython device client (micropython/) on CPython against real DTLS/CoAPs servers.

* ``iotdtls_mp.dtls.Client`` over a real UDP socket (tests/mp_driver.py) against ``openssl s_server`` and
  ``gnutls-serv --echo`` (PSK, TLS_PSK_WITH_AES_128_CCM_8): handshake with the extended master secret, data both
  ways, fragmented flights, wrong key.
* ``micropython/main.py CONFIG --count 3`` as a process against libcoap's ``coap-server-gnutls`` and
  ``coap-server-openssl``: PUT /example_data, POST to paths libcoap does not serve for POST, wrong key.
* Bytes on the wire of the device's handshake against each server (run with ``-s`` to see the "WIRE" lines).

Peer behaviour seen here (OpenSSL 3.0, GnuTLS 3.7.9, libcoap 4.3.1 on Debian 12):

* Every server negotiates the extended master secret (the device requires it).
* ``openssl s_server -mtu`` refuses values below 256 ("MTU too small"); its PSK flight (131 B) fits anyway, so
  fragmentation of the *server's* flight is checked with ``gnutls-serv --mtu 64`` (it fragments ServerHello).
  GnuTLS cannot go lower: at ``--mtu 48`` its 53-byte Finished record does not fit and it never sends it.
* A ClientHello the device fragments (device mtu 64) is reassembled by OpenSSL, but ``gnutls-serv`` (stateless
  cookie check on single datagrams) answers every fragment with a new HelloVerifyRequest: the handshake never
  completes. libcoap's GnuTLS build does the same cookie check. The device needs mtu >= ~96 for GnuTLS servers.
* Wrong key: every server silently drops the device's undecryptable Finished and retransmits its flight (the
  device answers each retransmitted server datagram with its own flight), so the device ends with "timeout".
  libcoap's GnuTLS build gives up after ~5 s with a *plaintext* close_notify: main.py reports "closed by server".
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mp_driver import UdpDriver, UdpRelay, load_dtls
from peers import (
    free_port_pair,
    free_udp_port,
    gnutls_server,
    libcoap_server,
    openssl_server,
    require_gnutls,
    require_libcoap,
    require_openssl,
)

pytestmark = pytest.mark.interop

KEY = bytes(range(16))
WRONG_KEY = bytes(16)
IDENTITY = b"dev1"
LIBCOAP_KEY = "secretPSK0123456"  # libcoap's -k is the key as ASCII text; main.py's config takes its hex
REPO = Path(__file__).resolve().parent.parent
MAIN_PY = REPO / "micropython" / "main.py"
EXT_EMS = 0x17

dtls = load_dtls()


def _rand(seed: int) -> Any:
    r = random.Random(seed)
    return lambda n: bytes(r.getrandbits(8) for _ in range(n))


def device(key: bytes = KEY, mtu: int = 512, handshake_timeout: float = 10, seed: int = 1) -> Any:
    return dtls.Client(IDENTITY, key, _rand(seed), mtu=mtu, retransmit_initial=1.0, retransmit_max=4.0,
                       handshake_timeout=handshake_timeout)


# -- reading the wire ----------------------------------------------------------------------------------------------


def records(datagram: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(content type, epoch, fragment) of each DTLS record in a datagram."""
    pos = 0
    while len(datagram) - pos >= 13:
        n = int.from_bytes(datagram[pos + 11:pos + 13], "big")
        yield datagram[pos], int.from_bytes(datagram[pos + 3:pos + 5], "big"), datagram[pos + 13:pos + 13 + n]
        pos += 13 + n


def handshake_fragments(datagrams: list[bytes]) -> list[tuple[int, int, int, int, bytes]]:
    """(msg_type, length, message_seq, fragment_offset, body) of every plaintext handshake fragment."""
    out = []
    for d in datagrams:
        for t, epoch, frag in records(d):
            pos = 0
            while t == 22 and epoch == 0 and len(frag) - pos >= 12:
                ln = int.from_bytes(frag[pos + 1:pos + 4], "big")
                seq = int.from_bytes(frag[pos + 4:pos + 6], "big")
                off = int.from_bytes(frag[pos + 6:pos + 9], "big")
                fl = int.from_bytes(frag[pos + 9:pos + 12], "big")
                out.append((frag[pos], ln, seq, off, frag[pos + 12:pos + 12 + fl]))
                pos += 12 + fl
    return out


def fragmented(datagrams: list[bytes]) -> bool:
    """True if some handshake message travelled in more than one fragment."""
    return any(len(body) < ln for _, ln, _, _, body in handshake_fragments(datagrams))


def server_hello_extensions(datagrams: list[bytes]) -> list[int]:
    """Extension types of the (reassembled) ServerHello in server-to-client datagrams."""
    body = bytearray()
    for t, ln, _, off, frag in handshake_fragments(datagrams):
        if t == 2:
            if len(body) < ln:
                body.extend(bytes(ln - len(body)))
            body[off:off + len(frag)] = frag
    assert body, "no ServerHello seen"
    i = 35 + body[34] + 3  # version, random, session_id, cipher_suite, compression_method
    end = i + 2 + int.from_bytes(body[i:i + 2], "big")
    i += 2
    types = []
    while i + 4 <= end:
        types.append(int.from_bytes(body[i:i + 2], "big"))
        i += 4 + int.from_bytes(body[i + 2:i + 4], "big")
    return types


def kind(datagram: bytes) -> str:
    types = {t for t, _, _ in records(datagram)}
    if types == {23}:
        return "data"
    if types == {21}:
        return "alert"
    return "handshake"


def wire_line(log: list[tuple[str, bytes]], what: str = "handshake") -> str:
    """ "N datagrams / B bytes (c2s ..., s2c ...)" for the datagrams of one kind; log: (direction, datagram)."""
    parts = []
    total_n = total_b = 0
    for direction in ("c2s", "s2c"):
        sizes = [len(d) for dr, d in log if dr == direction and kind(d) == what]
        total_n += len(sizes)
        total_b += sum(sizes)
        parts.append(f"{direction} {len(sizes)} dg {sum(sizes)} B {sizes}")
    return f"{total_n} datagrams / {total_b} B of UDP payload ({'; '.join(parts)})"


def driver_log(drv: UdpDriver) -> list[tuple[str, bytes]]:
    return [("c2s" if d == "out" else "s2c", data) for d, data in drv.wire.raw]


def s2c(drv: UdpDriver) -> list[bytes]:
    return [data for d, data in drv.wire.raw if d == "in"]


def c2s(drv: UdpDriver) -> list[bytes]:
    return [data for d, data in drv.wire.raw if d == "out"]


# -- 1. the device DTLS client against openssl s_server and gnutls-serv ---------------------------------------------


@pytest.mark.parametrize("mtu", [512, 64])
def test_device_client_openssl_s_server(mtu: int) -> None:
    """Handshake (EMS), data both ways; at mtu 64 the device fragments its ClientHello and key exchange flight."""
    require_openssl()
    port = free_udp_port()
    with openssl_server(port, KEY.hex()) as srv, UdpDriver(device(mtu=mtu), port) as drv:
        t = time.monotonic()
        assert drv.connect(5), f"error {drv.client.error!r}\n{srv.transcript()}"
        took = time.monotonic() - t
        srv.wait_handshake()
        assert "Ciphersuite: PSK-AES128-CCM8" in srv.stderr.text()
        assert EXT_EMS in server_hello_extensions(s2c(drv))
        drv.send(b"hello from the device\n")
        srv.expect_line("hello from the device")
        srv.write_line("hello device")
        assert drv.wait_data(lambda b: b.endswith(b"\n")) == b"hello device\n"
        assert max(len(d) for d in c2s(drv)) <= mtu
        assert fragmented(c2s(drv)) == (mtu < 100)
        print(f"\nWIRE device mtu {mtu} -> openssl s_server: handshake {wire_line(driver_log(drv))} in {took:.3f} s")


@pytest.mark.parametrize(("server_mtu", "mtu"), [(None, 512), (64, 128)])
def test_device_client_gnutls_serv_echo(server_mtu: int | None, mtu: int) -> None:
    """Handshake (EMS), a record echoed back; with --mtu 64 GnuTLS fragments its ServerHello."""
    require_gnutls()
    port = free_udp_port()
    with gnutls_server(port, [f"dev1:{KEY.hex()}"], mtu=server_mtu) as srv, UdpDriver(device(mtu=mtu), port) as drv:
        t = time.monotonic()
        assert drv.connect(5), f"error {drv.client.error!r}\n{srv.transcript()}"
        took = time.monotonic() - t
        assert EXT_EMS in server_hello_extensions(s2c(drv))
        drv.send(b"ping from the device\n")
        assert drv.wait_data(lambda b: b.endswith(b"\n")) == b"ping from the device\n", srv.transcript()
        srv.wait_output("Processing 21 bytes command: ping from the device")
        if server_mtu is not None:
            assert max(len(d) for d in s2c(drv)) <= server_mtu
            assert fragmented(s2c(drv)), "gnutls-serv --mtu 64 was expected to fragment its flight"
        print(f"\nWIRE device mtu {mtu} -> gnutls-serv --mtu {server_mtu}: handshake "
              f"{wire_line(driver_log(drv))} in {took:.3f} s")


def test_gnutls_serv_does_not_take_a_fragmented_client_hello() -> None:
    """Peer limitation, not a device bug: gnutls-serv answers each ClientHello fragment with a HelloVerifyRequest.

    (The same fragments complete against OpenSSL, see test_device_client_openssl_s_server[64].)
    """
    require_gnutls()
    port = free_udp_port()
    with gnutls_server(port, [f"dev1:{KEY.hex()}"]), UdpDriver(device(mtu=64, handshake_timeout=2), port) as drv:
        assert not drv.connect(5)
        assert drv.client.error == "timeout"
        assert fragmented(c2s(drv))
        assert {t for t, *_ in handshake_fragments(s2c(drv))} == {3}  # HelloVerifyRequest only
        print(f"\nWIRE device mtu 64 -> gnutls-serv (fragmented ClientHello, never completes): "
              f"{wire_line(driver_log(drv))}")


@pytest.mark.parametrize("server", ["openssl", "gnutls"])
def test_device_client_wrong_key_ends_with_an_error(server: str) -> None:
    """A wrong PSK: no exception; the client ends closed with an error (the servers stay silent: "timeout")."""
    port = free_udp_port()
    if server == "openssl":
        require_openssl()
        peer = openssl_server(port, KEY.hex())
    else:
        require_gnutls()
        peer = gnutls_server(port, [f"dev1:{KEY.hex()}"])
    with peer as srv, UdpDriver(device(key=WRONG_KEY, handshake_timeout=2), port) as drv:
        t = time.monotonic()
        assert not drv.connect(5)
        took = time.monotonic() - t
        c = drv.client
        assert c.closed and not c.established
        assert c.error is not None, srv.transcript()
        assert c.error == "timeout" or isinstance(c.error, int)
        assert took < 3
        alerts = [f for d in s2c(drv) for t_, _, f in records(d) if t_ == 21]
        flights = sum(1 for d in c2s(drv) if any(t_ == 20 for t_, _, _ in records(d)))
        print(f"\nWRONG KEY device -> {server}: error {c.error!r} after {took:.2f} s; alerts from server {alerts}; "
              f"device sent its key-exchange flight {flights} times; {wire_line(driver_log(drv))}")


# -- 2. main.py against libcoap ---------------------------------------------------------------------------------------


def run_main(tmp_path: Path, port: int, path: str, method: str = "PUT", key: str = LIBCOAP_KEY, count: int = 3,
             handshake_timeout: float = 8) -> subprocess.CompletedProcess[str]:
    cfg = {"host": "127.0.0.1", "port": port, "identity": IDENTITY.decode(), "psk": key.encode().hex(),
           "path": path, "method": method, "interval": 0.2, "tries": 1, "retransmit_initial": 1.0,
           "handshake_timeout": handshake_timeout, "ack_timeout": 1.0}
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(cfg))
    return subprocess.run([sys.executable, str(MAIN_PY), str(cfg_file), "--count", str(count)], cwd=REPO,
                          capture_output=True, text=True, timeout=30, check=False)


def client_hellos(log: list[tuple[str, bytes]]) -> int:
    return sum(1 for t, *_ in handshake_fragments([d for dr, d in log if dr == "c2s"]) if t == 1)


@pytest.mark.parametrize("tls", ["gnutls", "openssl"])
def test_main_py_put_to_libcoap(tls: str, tmp_path: Path) -> None:
    """Three PUTs of CBOR readings to /example_data over one DTLS session: 2.01, then 2.04, 2.04; exit 0."""
    require_libcoap(tls)
    port = free_port_pair()
    with libcoap_server(port, tls, psk_key=LIBCOAP_KEY) as srv, UdpRelay(port + 1) as relay:
        t = time.monotonic()
        p = run_main(tmp_path, relay.port, "example_data")
        took = time.monotonic() - t
        assert p.returncode == 0, f"{p.stdout}{p.stderr}\n{srv.transcript()}"
        assert p.stdout.split() == ["2.01", "2.04", "2.04"], p.stdout + p.stderr
    log = [(dr, d) for _, dr, d in relay.log]
    assert client_hellos(log) == 2  # one handshake (ClientHello, ClientHello with cookie) for all three readings
    print(f"\nWIRE main.py -> coap-server-{tls}: handshake {wire_line(log)}; CoAP {wire_line(log, 'data')}; "
          f"close {wire_line(log, 'alert')}; main.py took {took:.2f} s")


@pytest.mark.parametrize("tls", ["gnutls", "openssl"])
@pytest.mark.parametrize(("path", "code"), [("telemetry", "4.04"), ("example_data", "4.05")])
def test_main_py_post_gets_an_error_answer_from_libcoap(tls: str, path: str, code: str, tmp_path: Path) -> None:
    """POST to a path libcoap does not serve (4.04) or does not take POST on (4.05): still answered, exit 0."""
    require_libcoap(tls)
    port = free_port_pair()
    with libcoap_server(port, tls, psk_key=LIBCOAP_KEY) as srv:
        p = run_main(tmp_path, port + 1, path, method="POST")
        assert p.returncode == 0, f"{p.stdout}{p.stderr}\n{srv.transcript()}"
        assert p.stdout.split() == [code] * 3, p.stdout + p.stderr
    print(f"\nmain.py POST /{path} -> coap-server-{tls}: printed {p.stdout.split()}, exit {p.returncode}")


@pytest.mark.parametrize(("tls", "reason"), [("gnutls", "closed by server"), ("openssl", "handshake timeout")],
                         ids=["gnutls", "openssl"])
def test_main_py_wrong_key_to_libcoap(tls: str, reason: str, tmp_path: Path) -> None:
    """Wrong key: exit 1 with one clear line. libcoap drops the bad Finished silently (no alert); the GnuTLS build
    gives up after ~5 s with a plaintext close_notify, the OpenSSL build keeps retransmitting its flight."""
    require_libcoap(tls)
    port = free_port_pair()
    timeout = 8 if tls == "gnutls" else 2  # let the GnuTLS build's close_notify (~5 s) arrive first
    with libcoap_server(port, tls, psk_key=LIBCOAP_KEY) as srv, UdpRelay(port + 1) as relay:
        t = time.monotonic()
        p = run_main(tmp_path, relay.port, "example_data", key="wrongwrongwrong0", count=1,
                     handshake_timeout=timeout)
        took = time.monotonic() - t
        assert p.returncode == 1, f"{p.stdout}{p.stderr}\n{srv.transcript()}"
        assert p.stdout.strip() == f"error: reading 1 not answered after 1 attempt(s): {reason}", p.stdout + p.stderr
        assert not p.stderr
    alerts = [(epoch, f.hex()) for _, dr, d in relay.log if dr == "s2c" for t_, epoch, f in records(d) if t_ == 21]
    if tls == "gnutls":
        assert alerts == [(0, "0100")]  # close_notify, in the clear
    else:
        assert alerts == []
    log = [(dr, d) for _, dr, d in relay.log]
    print(f"\nWRONG KEY main.py -> coap-server-{tls}: {p.stdout.strip()!r} exit {p.returncode} after {took:.2f} s; "
          f"alerts from server (epoch, bytes) {alerts}; {wire_line(log)}")


# -- 3. bytes on the wire of the device's handshake ---------------------------------------------------------------


@pytest.mark.parametrize("server", ["openssl s_server", "gnutls-serv", "coap-server-gnutls", "coap-server-openssl"])
def test_device_handshake_bytes_on_the_wire(server: str) -> None:
    """The device's PSK handshake (cookie exchange included) through a recording relay; prints a WIRE line."""
    key = KEY
    if server == "openssl s_server":
        require_openssl()
        port = free_udp_port()
        peer, target = openssl_server(port, KEY.hex()), port
    elif server == "gnutls-serv":
        require_gnutls()
        port = free_udp_port()
        peer, target = gnutls_server(port, [f"dev1:{KEY.hex()}"]), port
    else:
        tls = server.rsplit("-", 1)[1]
        require_libcoap(tls)
        port = free_port_pair()
        key = LIBCOAP_KEY.encode()
        peer, target = libcoap_server(port, tls, psk_key=LIBCOAP_KEY), port + 1
    with peer as srv, UdpRelay(target) as relay, UdpDriver(device(key=key), relay.port) as drv:
        t = time.monotonic()
        assert drv.connect(5), f"error {drv.client.error!r}\n{srv.transcript()}"
        took = time.monotonic() - t
        assert EXT_EMS in server_hello_extensions(s2c(drv))
        time.sleep(0.05)  # let the relay log the last datagram
        seen = [(dr, d) for _, dr, d in relay.log]
        for direction in ("c2s", "s2c"):  # the device's own accounting is what crossed the wire
            assert [d for dr, d in seen if dr == direction] == [d for dr, d in driver_log(drv) if dr == direction]
    print(f"\nWIRE device handshake -> {server}: {wire_line(seen)} in {took:.3f} s")
