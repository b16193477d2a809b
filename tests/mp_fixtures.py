"""Shared pieces of the MicroPython device-client tests: the telemetry server, credentials, lossy delivery."""

from __future__ import annotations

import contextlib
import json
import random
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
