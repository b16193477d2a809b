"""Issue 17, items 2 (-v/-vv/-q), 3 (one line instead of a traceback) and 6 (--version, defaults in --help, ready
lines with the bound port) for every command-line tool, run as a user runs them: real processes, real sockets."""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import PeerProcess

ROOT = Path(__file__).resolve().parent.parent
#: tool -> its module (run as ``python -m MODULE``: the module the console script calls)
TOOLS = {
    "iotdtls-server": "iotdtls.cli.server",
    "iotdtls-client": "iotdtls.cli.client",
    "iotdtls-demo": "iotdtls.cli.demo",
    "iotdtls-netem": "iotdtls.cli.netem",
    "iotdtls-keygen": "iotdtls.cli.keygen",
    "iotdtls-coap-client": "iotdtls.cli.coap_client",
    "iotdtls-coap-server": "iotdtls.cli.coap_server",
    "iotdtls-gateway": "iotdtls_gateway.cli.gateway",
    "iotdtls-provision": "iotdtls_gateway.cli.provision",
}
#: A printable key, so that a leak of the raw bytes shows in text output as well as one of its hex.
PSK = b"correct-horse-battery-staple"
IDENTITY = "ux-device"


def tool(name: str) -> list[str]:
    return [sys.executable, "-m", TOOLS[name]]


def run(argv: list[str], stdin: str = "", timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))


def no_traceback_one_line(r: subprocess.CompletedProcess[str], prog: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"{prog}: "), lines[0]
    return lines[0]


# -- --version ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TOOLS))
def test_version(name: str) -> None:
    from importlib.metadata import version

    r = run([*tool(name), "--version"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{name} {version('iotdtls')}"


# -- every option's default in its help ------------------------------------------------------------------------
def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


def renderings(default: Any) -> set[str]:
    out = {str(default)}
    if isinstance(default, float):
        out.add(f"{default:g}")
    return out


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_help_states_every_default(name: str) -> None:
    module = importlib.import_module(TOOLS[name])
    missing = []
    for parser in parsers(module.build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            default = action.default
            if not action.option_strings or action.help in (None, argparse.SUPPRESS):
                continue
            if default is None or default is False or default == argparse.SUPPRESS:
                continue
            if isinstance(default, (list, tuple, dict, set)) and not default:
                continue
            text = formatter._expand_help(action)
            if "default" not in text.lower() or not any(r in text for r in renderings(default)):
                missing.append(f"{parser.prog} {'/'.join(action.option_strings)} (default {default!r}): {text!r}")
    assert not missing, "\n".join(missing)


def test_server_help_names_its_default_port() -> None:
    r = run([*tool("iotdtls-server"), "--help"])
    assert r.returncode == 0 and "5684" in r.stdout, r.stdout


# -- bad input: one line, exit 2 ---------------------------------------------------------------------------------
PSK_ARGS = ["--psk-identity", IDENTITY, "--psk", PSK.hex()]
BAD_INPUT = [
    ("iotdtls-client", ["127.0.0.1", "70000", *PSK_ARGS], "port from 1 to 65535"),
    ("iotdtls-client", ["127.0.0.1", "0", *PSK_ARGS], "port from 1 to 65535"),
    ("iotdtls-client", ["127.0.0.1", "http", *PSK_ARGS], "port from 1 to 65535"),
    ("iotdtls-client", ["127.0.0.1", "5684", *PSK_ARGS, "--handshake-timeout", "-1"], "--handshake-timeout"),
    ("iotdtls-client", ["127.0.0.1", "5684", *PSK_ARGS, "--handshake-timeout", "nan"], "--handshake-timeout"),
    ("iotdtls-client", ["127.0.0.1", "5684", *PSK_ARGS, "--retransmit-initial", "0"], "--retransmit-initial"),
    ("iotdtls-client", ["127.0.0.1", "5684", *PSK_ARGS, "--mtu", "10"], "from 64 to 65535"),
    ("iotdtls-client", ["127.0.0.1", "5684", *PSK_ARGS, "--linger", "-1"], "--linger"),
    ("iotdtls-client", ["127.0.0.1", "5684", *PSK_ARGS, "--no-such-option"], "unrecognized arguments"),
    ("iotdtls-server", ["--port", "70000", "--psk-file", "x"], "port from 0 to 65535"),
    ("iotdtls-server", ["--port", "-1", "--psk-file", "x"], "port from 0 to 65535"),
    ("iotdtls-server", ["--psk-file", "x", "--max-sessions", "0"], "--max-sessions"),
    ("iotdtls-server", ["--psk-file", "x", "--handshake-timeout", "0"], "--handshake-timeout"),
    ("iotdtls-demo", ["--mtu", "10"], "from 64 to 65535"),
    ("iotdtls-demo", ["--loss", "1.5"], "--loss"),
    ("iotdtls-demo", ["--dup", "-0.1"], "--dup"),
    ("iotdtls-demo", ["--reorder", "inf"], "--reorder"),
    ("iotdtls-demo", ["--max-delay", "0"], "--max-delay"),
    ("iotdtls-demo", ["--retransmit-initial", "-1"], "--retransmit-initial"),
    ("iotdtls-demo", ["--messages", "-1"], "--messages"),
    ("iotdtls-netem", ["--listen", "127.0.0.1:70000", "--target", "127.0.0.1:2"], "port out of range"),
    ("iotdtls-netem", ["--listen", "127.0.0.1:1", "--target", "127.0.0.1:2", "--idle-timeout", "0"],
     "--idle-timeout"),
    ("iotdtls-netem", ["--listen", "127.0.0.1:1", "--target", "127.0.0.1:2", "--loss", "2"], "probability"),
    ("iotdtls-keygen", ["k.pem", "--no-such-option"], "unrecognized arguments"),
    ("iotdtls-coap-client", ["http://127.0.0.1/time"], "unsupported scheme http: use coap:// or coaps://"),
    ("iotdtls-coap-client", ["127.0.0.1/time"], "use coap://HOST/PATH or coaps://HOST/PATH"),
    ("iotdtls-coap-client", ["--timeout", "0", "coaps://127.0.0.1/time"], "--timeout"),
    ("iotdtls-coap-client", ["--observe-count", "-1", "coaps://127.0.0.1/time"], "--observe-count"),
    ("iotdtls-coap-client", ["--mtu", "10", "coaps://127.0.0.1/time"], "from 64 to 65535"),
    ("iotdtls-coap-server", ["--credentials", "x.json", "--bind", "127.0.0.1:70000"], "--bind"),
    ("iotdtls-coap-server", ["--credentials", "x.json", "--observe-interval", "0"], "--observe-interval"),
    ("iotdtls-coap-server", ["--credentials", "x.json", "--max-options", "0"], "--max-options"),
    ("iotdtls-coap-server", ["--credentials", "x.json", "--mtu", "63"], "from 64 to 65535"),
    ("iotdtls-gateway", ["run"], "--config"),
    ("iotdtls-gateway", ["demo", "--devices", "0"], "--devices 1-50"),
    ("iotdtls-gateway", ["run", "--config", "x.toml", "-v", "-q"], "not allowed with argument"),
    ("iotdtls-gateway", ["no-such-command"], "invalid choice"),
    ("iotdtls-provision", ["--registry", "r.sqlite3", "add", "--count", "0"], "--count"),
    ("iotdtls-provision", ["--registry", "r.sqlite3", "-v", "-q", "list"], "not allowed with argument"),
]


@pytest.mark.parametrize(("name", "args", "needle"), BAD_INPUT,
                         ids=[f"{n}:{' '.join(a)}"[:60] for n, a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(name: str, args: list[str], needle: str, tmp_path: Path) -> None:
    r = subprocess.run([*tool(name), *args], capture_output=True, text=True, timeout=30, cwd=str(tmp_path),
                       env=_env())
    assert r.returncode == 2, (r.returncode, r.stderr)
    line = no_traceback_one_line(r, name)
    assert needle in line, line


def test_coap_client_http_scheme_message_exactly() -> None:
    r = run([*tool("iotdtls-coap-client"), "http://example.org/"])
    assert (r.returncode, r.stderr) == (2, "iotdtls-coap-client: unsupported scheme http: use coap:// or coaps://\n")


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# -- a closed stdout ---------------------------------------------------------------------------------------------
def test_demo_into_head_exits_at_once_and_quietly() -> None:
    cmd = f"{sys.executable} -m iotdtls.cli.demo --loss 0.2 | head -1; echo \"status ${{PIPESTATUS[0]}}\" >&2"
    start = time.monotonic()
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    took = time.monotonic() - start
    assert r.stdout.startswith("iotdtls demo: server 127.0.0.1:") and r.stdout.count("\n") == 1, r.stdout
    assert r.stderr.strip() in ("status 141", "status 0"), r.stderr  # no traceback, no BrokenPipeError
    assert took < 10, took


def test_keygen_into_closed_stdout_is_quiet(tmp_path: Path) -> None:
    cmd = f"{sys.executable} -m iotdtls.cli.keygen {tmp_path / 'k.pem'} | true"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30, cwd=str(ROOT))
    assert r.stderr == "", r.stderr


# -- ready lines, --port 0, -v, -q -------------------------------------------------------------------------------
READY = re.compile(r"^iotdtls-server: listening on udp 127\.0\.0\.1:(\d+)$", re.M)


def start_server(tmp_path: Path, *extra: str) -> tuple[PeerProcess, int]:
    psk_file = tmp_path / "psk.txt"
    psk_file.write_text(f"{IDENTITY}:{PSK.hex()}\n")
    server = PeerProcess("iotdtls-server", [*tool("iotdtls-server"), "--port", "0", "--psk-file", str(psk_file),
                                            *extra])
    line = server.wait_output("listening on udp", timeout=30)
    match = READY.search(line)
    assert match, line
    return server, int(match.group(1))


def test_server_port_0_ready_line_names_the_real_port_and_verbose_logs_no_key(tmp_path: Path) -> None:
    server, port = start_server(tmp_path, "-vv")
    try:
        assert port != 0
        r = run([*tool("iotdtls-client"), "127.0.0.1", str(port), *PSK_ARGS, "-vv", "--linger", "0.5"],
                stdin="hello\n")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "hello\n"
        handshake = [line for line in r.stderr.splitlines() if "iotdtls.handshake" in line]
        assert handshake, r.stderr  # handshake steps at -vv (the library's iotdtls.handshake logger)
        assert any("ClientHello" in line for line in handshake), r.stderr
    finally:
        server.stop()
    for text in (r.stdout + r.stderr, server.stdout.text() + server.stderr.text()):
        assert PSK.hex() not in text.lower() and PSK.decode() not in text, text
        assert "Traceback" not in text


def test_client_info_level_and_default_level(tmp_path: Path) -> None:
    server, port = start_server(tmp_path)
    try:
        r = run([*tool("iotdtls-client"), "127.0.0.1", str(port), *PSK_ARGS, "-v", "--linger", "0.2"],
                stdin="x\n")
        assert r.returncode == 0, r.stderr
        assert "debug" not in r.stderr and PSK.hex() not in r.stderr, r.stderr
        quiet = run([*tool("iotdtls-client"), "127.0.0.1", str(port), *PSK_ARGS, "--linger", "0.2"], stdin="x\n")
        assert (quiet.returncode, quiet.stderr) == (0, ""), quiet.stderr
    finally:
        server.stop()


def test_server_quiet_prints_no_ready_line(tmp_path: Path) -> None:
    psk_file = tmp_path / "psk.txt"
    psk_file.write_text(f"{IDENTITY}:{PSK.hex()}\n")
    server = PeerProcess("iotdtls-server", [*tool("iotdtls-server"), "--port", "0", "--psk-file", str(psk_file),
                                            "-q"])
    try:
        time.sleep(1.5)
        assert server.alive(), server.transcript()
    finally:
        server.stop()
    assert server.stderr.text() == "", server.stderr.text()


def test_coap_server_port_0_ready_line_and_a_client_gets_through(tmp_path: Path) -> None:
    import json

    key = PSK.decode()
    (tmp_path / "server.json").write_text(json.dumps({f":{IDENTITY}": {"dtls": {
        "psk": {"ascii": key}, "client-identity": {"ascii": IDENTITY}}}}))
    (tmp_path / "client.json").write_text(json.dumps({"coaps://*": {"dtls": {
        "psk": {"ascii": key}, "client-identity": {"ascii": IDENTITY}}}}))
    server = PeerProcess("iotdtls-coap-server", [*tool("iotdtls-coap-server"), "--bind", "127.0.0.1:0",
                                                 "--credentials", str(tmp_path / "server.json")])
    try:
        line = server.wait_output("serving coaps://", timeout=30)
        match = re.search(r"iotdtls-coap-server: serving coaps://127\.0\.0\.1:(\d+)$", line.strip())
        assert match and int(match.group(1)) not in (0, 5684), line
        r = run([*tool("iotdtls-coap-client"), "--credentials", str(tmp_path / "client.json"), "-q",
                 f"coaps://127.0.0.1:{match.group(1)}/whoami"])
        assert r.returncode == 0 and IDENTITY in r.stdout, r.stderr
    finally:
        server.stop()


def write_gateway_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n\n[coaps]\nbind = "127.0.0.1:{port}"\n')
    return config


def test_gateway_port_0_ready_line_names_the_bound_port(tmp_path: Path) -> None:
    from peers import udp_port_bound

    gateway = PeerProcess("iotdtls-gateway", [*tool("iotdtls-gateway"), "run", "--config",
                                              str(write_gateway_config(tmp_path, 0))])
    try:
        line = gateway.wait_output("serving coaps://", timeout=60)
        match = re.search(r" info +serving coaps://127\.0\.0\.1:(\d+): ", line)
        assert match and int(match.group(1)) != 0, line
        assert udp_port_bound(int(match.group(1)))
    finally:
        gateway.stop(grace=10)
    assert "Traceback" not in gateway.stderr.text()


def test_gateway_quiet_logs_nothing_when_all_goes_well(tmp_path: Path) -> None:
    from peers import free_udp_port

    port = free_udp_port()
    gateway = PeerProcess("iotdtls-gateway", [*tool("iotdtls-gateway"), "run", "-q", "--config",
                                              str(write_gateway_config(tmp_path, port))])
    try:
        gateway.wait_udp_listening(port, timeout=60)
    finally:
        assert gateway.stop(grace=10) == 0
    assert gateway.stderr.text() == "", gateway.stderr.text()


def test_log_lines_mask_registered_keys() -> None:
    """Defence in depth: should a key ever reach a log line, the tools' formatter masks it (hex or raw)."""
    import logging

    from iotdtls.cli.runtime import ToolFormatter, register_secrets

    key = b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a"
    register_secrets([key, PSK])
    formatter = ToolFormatter("probe", detailed=True)
    for message, leaked in ((f"got {key.hex()}", key.hex()), (f"got ab{key.hex().upper()}cd", key.hex().upper()),
                            (f"raw {PSK.decode()}!", PSK.decode()), (f"hex {PSK.hex()}", PSK.hex())):
        record = logging.LogRecord("iotdtls.test", logging.DEBUG, __file__, 1, message, None, None)
        line = formatter.format(record)
        assert leaked not in line and "<secret>" in line, line
        assert line.startswith("probe: debug iotdtls.test: ")
    record = logging.LogRecord("iotdtls.test", logging.INFO, __file__, 1, "fingerprint %s", ("ab" * 32,), None)
    assert "ab" * 32 in formatter.format(record)  # other hex stays
