"""Shared pieces of the MicroPython device-client tests: the telemetry server, credentials, lossy delivery."""

from __future__ import annotations

import contextlib
import json
import random
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from peers import LOCALHOST, PeerProcess, run_peer

REPO = Path(__file__).resolve().parent.parent
KEY_HEX = "000102030405060708090a0b0c0d0e0f"


def write_credentials(tmp_path: Path, identity: str = "dev1", key_hex: str = KEY_HEX) -> Path:
    """An aiocoap credentials file with one PSK entry ":identity" for iotdtls-coap-server."""
    path = tmp_path / "credentials.json"
    entry = {"dtls": {"psk": {"hex": key_hex}, "client-identity": {"ascii": identity}}}
    path.write_text(json.dumps({":" + identity: entry}))
    return path


@contextlib.contextmanager
def telemetry_server(port: int, creds: Path, *extra: str) -> Iterator[PeerProcess]:
    """`iotdtls-coap-server -v` on 127.0.0.1:port: one JSON line per /telemetry reading on stdout, sessions on
    stderr ("DTLS session with ...")."""
    argv = [sys.executable, "-m", "iotdtls.cli.coap_server", "--bind", f"{LOCALHOST}:{port}",
            "--credentials", str(creds), "-v", *extra]  # fmt: skip
    with run_peer("iotdtls-coap-server", argv, listen_port=port, cwd=str(REPO)) as peer:
        yield peer


@contextlib.contextmanager
def key_server(port: int, creds: Path, *extra: str, hang: int = 0) -> Iterator[PeerProcess]:
    """`iotdtls-coap-server -v` with a recording /telemetry (tests/mp_query_server.py): one JSON line per request
    on stdout with its Uri-Query ("query"), MID, token and reading; the first `hang` requests get an empty ACK and
    never a response."""
    argv = [sys.executable, str(REPO / "tests" / "mp_query_server.py"), "--hang", str(hang),
            "--bind", f"{LOCALHOST}:{port}", "--credentials", str(creds), "-v", *extra]  # fmt: skip
    with run_peer("iotdtls-coap-server (recording)", argv, listen_port=port, cwd=str(REPO)) as peer:
        yield peer


KEY_RE = re.compile(r"k=([0-9a-f]{8})\.([1-9][0-9]*)")


def parse_key(query: list[str]) -> tuple[str, int]:
    """(boot, seq) of a request's only Uri-Query option, which must be the idempotency key k=<boot>.<seq>."""
    assert len(query) == 1, query
    m = KEY_RE.fullmatch(query[0])
    assert m is not None, query
    return m.group(1), int(m.group(2))


def key_lines(server: PeerProcess, n: int, timeout: float = 5.0) -> list[dict[str, object]]:
    """The next `n` JSON lines of a key_server (one per /telemetry request it got)."""
    return [json.loads(server.read_line(timeout)) for _ in range(n)]


def bounded_wait_on_wire(log: list[tuple[float, str, bytes]]) -> tuple[float, int, float]:
    """A UdpRelay log (seconds, "c2s"/"s2c", datagram) of a device whose request got an empty ACK and then nothing:
    (seconds from the empty ACK, the server's first application record, to the device's close_notify of that
    session, CoAP records the device sent on that session, seconds from the close_notify to the next ClientHello)."""
    app, alert, handshake = 23, 21, 22
    t_ack = next(t for t, way, d in log if way == "s2c" and d[0] == app)
    t_close = next(t for t, way, d in log if way == "c2s" and d[0] == alert)
    sent = sum(1 for t, way, d in log if way == "c2s" and d[0] == app and t < t_close)
    t_hello = next(t for t, way, d in log if way == "c2s" and d[0] == handshake and t >= t_close)
    return t_close - t_ack, sent, t_hello - t_close


def deliver_lossy(rng: random.Random, items: list[bytes], out: list[bytes], loss: float, dup: float,
                  shuffle: bool) -> None:
    """Append `items` to `out`, each lost with probability `loss` or duplicated with `dup`; then maybe shuffle."""
    for d in items:
        if rng.random() < loss:
            continue
        out.append(d)
        if rng.random() < dup:
            out.append(d)
    if shuffle:
        rng.shuffle(out)
