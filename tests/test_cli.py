"""The command-line tools as a user runs them: exit codes, one-line errors, signals, key log."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from peers import free_udp_port, run_peer

KEY_HEX = "00112233445566778899aabbccddeeff"
CLIENT = [sys.executable, "-m", "iotdtls.cli.client"]
SERVER = [sys.executable, "-m", "iotdtls.cli.server"]


def run(argv: list[str], stdin: str = "", timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_client_usage_errors_exit_2(tmp_path: Path) -> None:
    r = run([*CLIENT, "127.0.0.1", "1", "--psk-identity", "dev1"])
    assert r.returncode == 2
    r = run([*CLIENT, "127.0.0.1", "1", "--psk-identity", "dev1", "--psk", "zz"])
    assert r.returncode == 2 and one_line(r.stderr) == "iotdtls-client: --psk must be hexadecimal"
    r = run([*CLIENT, "127.0.0.1", "1", "--psk-identity", "dev1", "--psk", KEY_HEX, "--mtu", "10"])
    assert r.returncode == 2 and "mtu" in one_line(r.stderr)


def test_server_usage_errors_exit_2(tmp_path: Path) -> None:
    r = run([*SERVER, "--port", "1", "--psk-file", str(tmp_path / "missing.txt")])
    assert r.returncode == 2 and one_line(r.stderr).startswith("iotdtls-server: cannot read PSK file")
    bad = tmp_path / "bad.txt"
    bad.write_text("no-colon-here\n")
    r = run([*SERVER, "--port", "1", "--psk-file", str(bad)])
    assert r.returncode == 2 and "expected identity:hexkey" in one_line(r.stderr)


def test_client_timeout_is_one_line_and_exit_1() -> None:
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers (a closed port
        silent.bind(("127.0.0.1", 0))                                # would be refused: tests/test_refused.py)
        r = run([*CLIENT, "127.0.0.1", str(silent.getsockname()[1]), "--psk-identity", "dev1", "--psk", KEY_HEX,
                 "--retransmit-initial", "0.2", "--handshake-timeout", "1.5", "-q"])  # -q: no progress lines
    assert r.returncode == 1
    assert one_line(r.stderr).startswith("iotdtls-client: timeout: handshake did not complete within 1.5 s")
    assert time.monotonic() - start < 10


def test_server_exits_0_on_sigterm_and_sigint(tmp_path: Path) -> None:
    psk = tmp_path / "psk.txt"
    psk.write_text(f"dev1:{KEY_HEX}\n")
    for sig in (signal.SIGTERM, signal.SIGINT):
        port = free_udp_port()
        with run_peer("iotdtls-server", [*SERVER, "--port", str(port), "--psk-file", str(psk)],
                      listen_port=port) as server:
            server.proc.send_signal(sig)
            assert server.wait_exit(timeout=5) == 0, server.transcript()


def test_keylog_lines_for_both_sides(tmp_path: Path) -> None:
    psk = tmp_path / "psk.txt"
    psk.write_text(f"dev1:{KEY_HEX}\n")
    server_log, client_log = tmp_path / "server.keys", tmp_path / "client.keys"
    port = free_udp_port()
    with run_peer("iotdtls-server", [*SERVER, "--port", str(port), "--psk-file", str(psk), "--keylog",
                                     str(server_log)], listen_port=port):
        r = run([*CLIENT, "127.0.0.1", str(port), "--psk-identity", "dev1", "--psk", KEY_HEX, "--linger", "0.3",
                 "--keylog", str(client_log)], stdin="hello\n")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "hello\n"
    line = client_log.read_text()
    assert re.fullmatch(r"CLIENT_RANDOM [0-9a-f]{64} [0-9a-f]{96}\n", line)
    assert server_log.read_text() == line  # both sides derived the same master secret
