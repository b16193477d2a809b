"""The NSS key log lets tshark decrypt iotdtls traffic (a capture written from an in-memory handshake)."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

from helpers import CLIENT_ADDR, Pair
from peers import require_peer

SERVER_PORT = 5684


def _ip_udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    udp = struct.pack(">HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     bytes(map(int, src[0].split("."))), bytes(map(int, dst[0].split("."))))
    checksum = sum(struct.unpack(">10H", ip))
    checksum = (checksum & 0xFFFF) + (checksum >> 16)
    ip = ip[:10] + struct.pack(">H", ~checksum & 0xFFFF) + ip[12:]
    return ip + udp


def write_pcap(path: Path, packets: list[tuple[str, bytes]]) -> None:
    server = ("192.0.2.10", SERVER_PORT)
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))  # LINKTYPE_RAW
        for i, (direction, data) in enumerate(packets):
            src, dst = (CLIENT_ADDR, server) if direction == "c2s" else (server, CLIENT_ADDR)
            frame = _ip_udp(src, dst, data)
            f.write(struct.pack("<IIII", 1000 + i, 0, len(frame), len(frame)) + frame)


def test_tshark_decrypts_with_the_key_log(tmp_path: Path) -> None:
    require_peer("tshark", shutil.which("tshark") is not None)
    keylog = io.StringIO()
    pair = Pair(client_kw={"keylog_file": keylog})
    pair.handshake()
    pair.client.send(b"secret-telemetry-42")
    pair.pump()
    pcap, keys = tmp_path / "dtls.pcap", tmp_path / "keys.txt"
    write_pcap(pcap, pair.wire)
    keys.write_text(keylog.getvalue())
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-o", f"tls.keylog_file:{keys}",
                          "-d", f"udp.port=={SERVER_PORT},dtls", "-x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Decrypted DTLS" in out.stdout, out.stdout[-3000:]
    # the hex dump's ASCII column splits the payload over lines; check the hex bytes instead
    hexdump = "".join(line[6:54].replace(" ", "") for line in out.stdout.splitlines()
                      if len(line) > 6 and line[:4].isalnum())
    assert b"secret-telemetry-42".hex() in hexdump
    # without the key log the payload stays hidden
    plain = subprocess.run(["tshark", "-n", "-r", str(pcap), "-d", f"udp.port=={SERVER_PORT},dtls", "-x"],
                           capture_output=True, text=True, timeout=60)
    assert "Decrypted DTLS" not in plain.stdout
