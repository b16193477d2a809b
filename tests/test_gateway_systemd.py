"""systemd: the notify protocol (gateway/systemd.py) against a fake NOTIFY_SOCKET, with the real ``iotdtls-gateway
run`` process: READY=1 once serving, WATCHDOG=1 pings from the event loop (a stalled loop stops them), STOPPING=1
on SIGTERM; the unit file (``systemd-analyze verify`` and ``security``), and the provisioning guidance for its
DynamicUser state directory."""

from __future__ import annotations

import ctypes
import importlib.resources
import itertools
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from gateway_fixtures import PROVISION, Gateway, device_config, run_device
from iotdtls_gateway.config import DEFAULT_DATA_DIR
from iotdtls_gateway.daemon import STALL_ENV, stall_seconds
from iotdtls_gateway.systemd import (
    MAX_STATUS,
    Notifier,
    NotifyEnv,
    message,
    notify_address,
    one_line,
    reloading,
    watchdog_interval,
)
from peers import require_peer, udp_port_bound
from systemd_fixtures import NotifySocket, start_gateway

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "gateway" / "iotdtls-gateway.service"
WATCHDOG_USEC = 200_000  # a ping every 0.1 s


# -- the protocol, pure ------------------------------------------------------------------------------------------
def test_notify_address_path_abstract_and_none() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@sd-notify-1") == b"\0sd-notify-1"
    assert notify_address(None) is None
    assert notify_address("") is None
    assert notify_address("@") is None
    assert notify_address("relative/path") is None
    assert notify_address("vsock:2:1234") is None  # systemd >= 254 in a VM: not supported here, so a no-op


def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid_only() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "42"}, 42) == 0.1
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "41"}, 42) is None  # meant for another
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "x"}, 42) is None
    for bad in ("", "0", "-5", "1.5", "abc", " 100"):
        assert watchdog_interval({"WATCHDOG_USEC": bad}, 42) is None, bad
    assert watchdog_interval({}, 42) is None
    # no socket, no watchdog: nothing to ping
    assert NotifyEnv.parse({"WATCHDOG_USEC": "200000"}, 42) == NotifyEnv(None, None)
    assert NotifyEnv.parse({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "200000"}, 42) == NotifyEnv(b"\0x", 0.1)


def test_messages() -> None:
    assert message(ready=True, status="serving") == b"READY=1\nSTATUS=serving"
    assert message(stopping=True) == b"STOPPING=1"
    assert message(watchdog=True) == b"WATCHDOG=1"
    assert message(status="two\nlines\0and\ttabs") == b"STATUS=two lines and tabs"
    assert message() == b""
    assert reloading(123456789) == b"RELOADING=1\nMONOTONIC_USEC=123456789"
    assert reloading(5, "reloading x").split(b"\n")[2] == b"STATUS=reloading x"
    long = one_line("x" * 1000)
    assert len(long) == MAX_STATUS and long.endswith("...")


def test_stall_hook_needs_its_variable() -> None:
    assert stall_seconds({}) is None
    assert stall_seconds({STALL_ENV: ""}) is None
    assert stall_seconds({STALL_ENV: "nan"}) is None
    assert stall_seconds({STALL_ENV: "0"}) is None
    assert stall_seconds({STALL_ENV: "1e9"}) is None
    assert stall_seconds({STALL_ENV: "1"}) == 1.0
    assert stall_seconds({STALL_ENV: "1.5"}) == 1.5


# -- the sender, in process ----------------------------------------------------------------------------------------
def test_notifier_without_socket_is_a_no_op() -> None:
    n = Notifier(None)
    assert not n.enabled
    assert n.ready("x") is False and n.watchdog() is False and n.sent == 0


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notifier_sends_datagrams(abstract: bool) -> None:
    with NotifySocket(abstract=abstract) as sd:
        env = {"NOTIFY_SOCKET": sd.env, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid()), "OTHER": "1"}
        n, interval = Notifier.from_environment(env)
        assert interval == 0.5
        assert env == {"OTHER": "1"}  # children of the service do not inherit the protocol's variables
        assert n.ready("serving on 127.0.0.1:5684") and n.watchdog() and n.reloading() and n.stopping()
        sd.wait_for(lambda x: x.has("STOPPING"))
        got = [x.fields for x in sd.received]
        assert got[0] == {"READY": "1", "STATUS": "serving on 127.0.0.1:5684"}
        assert got[1] == {"WATCHDOG": "1"}
        assert got[2]["RELOADING"] == "1" and int(got[2]["MONOTONIC_USEC"]) > 0
        assert got[3]["STOPPING"] == "1"
        n.close()


def test_notifier_to_a_missing_socket_fails_quietly(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier("/nonexistent/notify")
    assert n.ready("x") is False
    assert n.watchdog() is False
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1  # once, not per ping


# -- the real gateway process --------------------------------------------------------------------------------------
def _first(sd: NotifySocket, key: str) -> int:
    return next(i for i, n in enumerate(sd.received) if n.has(key))


def test_ready_after_the_port_serves_then_watchdog_pings_then_stopping(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    cfg = device_config(gw.provision("sd-dev"), host="127.0.0.1", port=gw.port)
    with NotifySocket() as sd:
        proc = start_gateway(gw, {"NOTIFY_SOCKET": sd.env, "WATCHDOG_USEC": str(WATCHDOG_USEC)}, wait=None)
        try:
            ready = sd.wait_for(lambda n: n.has("READY"), what="READY=1")
            assert udp_port_bound(gw.port), "READY=1 before the CoAPs socket was bound"
            status = ready.fields["STATUS"]
            assert f"127.0.0.1:{gw.port}" in status and "1 devices" in status, status
            assert not any(n.has("WATCHDOG") for n in sd.received[:_first(sd, "READY")])  # pings only once ready
            r = run_device(cfg, 1)  # the port answers: a handshake and a reading
            assert r.returncode == 0 and r.stdout.split() == ["2.04"], r.stdout + r.stderr
            start = time.monotonic()
            sd.wait_for(lambda n: n.has("WATCHDOG") and n.at > start + 1.5, what="pings for 1.5 s")
            pings = [t for t in sd.pings() if t >= ready.at]
            gaps = [b - a for a, b in itertools.pairwise(pings)]
            median = statistics.median(gaps)
            assert 0.07 <= median <= 0.2, f"pings every {median:.3f} s, expected 0.1 (WATCHDOG_USEC/2)"
            before = len(sd.received)
            os.kill(proc.pid, signal.SIGTERM)
            stopping = sd.wait_for(lambda n: n.has("STOPPING"), after=before, what="STOPPING=1")
            assert proc.wait_exit(30) == 0
            assert all(t < stopping.at for t in sd.pings()), "WATCHDOG=1 after STOPPING=1"
            assert "test hook" not in proc.stderr.text()  # the stall hook is off without its variable
        finally:
            proc.stop()


def test_a_stalled_event_loop_stops_the_pings(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    stall = 1.5
    with NotifySocket(abstract=True) as sd:
        proc = start_gateway(gw, {"NOTIFY_SOCKET": sd.env, "WATCHDOG_USEC": str(WATCHDOG_USEC),
                                  STALL_ENV: str(stall)})
        try:
            ready = sd.wait_for(lambda n: n.has("READY"), what="READY=1")
            sd.wait_for(lambda n: n.has("WATCHDOG") and n.at > ready.at + 0.5, what="pings")
            signalled = time.monotonic()
            os.kill(proc.pid, signal.SIGUSR2)
            proc.wait_output('"event":"test_stall_over"', timeout=30)
            over = time.monotonic()
            sd.wait_for(lambda n: n.has("WATCHDOG") and n.at > over + 0.5, what="pings after the stall")
            pings = sd.pings()
            gaps = sorted(((b - a, a, b) for a, b in itertools.pairwise(pings)), reverse=True)
            longest, last_before, first_after = gaps[0]
            assert longest >= stall - 0.1, f"the longest gap between pings is {longest:.2f} s"
            assert last_before >= signalled - 0.5 and first_after <= over + 0.5
            assert not [t for t in pings if last_before < t < first_after]
            assert len([t for t in pings if t > first_after]) >= 4  # and they resume at their rate
            others = [g for g, _, _ in gaps[1:]]
            assert statistics.median(others) <= 0.2
            proc.stop()
            assert proc.returncode == 0
        finally:
            proc.stop()


def test_watchdog_abort_shows_where_the_loop_was_stuck(tmp_path: Path) -> None:
    """What systemd does when the pings stop (WatchdogSignal=SIGABRT): with the unit's PYTHONFAULTHANDLER=1 the
    journal gets the Python stack of every thread, the stuck loop's included."""
    gw = Gateway(tmp_path)
    proc = start_gateway(gw, {STALL_ENV: "30", "PYTHONFAULTHANDLER": "1"})
    try:
        os.kill(proc.pid, signal.SIGUSR2)
        proc.wait_output('"event":"test_stall"', timeout=30)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGABRT)
        assert proc.wait_exit(30) == -signal.SIGABRT
        proc.stderr.join(5)
        text = proc.stderr.text()
        assert "Fatal Python error: Aborted" in text and "_stall_loop" in text, text[-3000:]
    finally:
        proc.stop()


def _mdwe() -> None:
    """In the child: what MemoryDenyWriteExecute=yes enforces (PR_SET_MDWE, Linux >= 6.3) and NoNewPrivileges."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(65, 1, 0, 0, 0) != 0:  # NO_NEW_PRIVS, MDWE_REFUSE_EXEC_GAIN
        raise OSError(ctypes.get_errno(), "prctl")


def test_gateway_runs_without_writable_executable_memory(tmp_path: Path) -> None:
    """The unit sets MemoryDenyWriteExecute=yes: the gateway (CPython, cryptography, sqlite3, aiocoap) must not need
    a writable and executable mapping. The kernel's PR_SET_MDWE enforces the same rule on a process here."""
    probe = subprocess.run([sys.executable, "-c", "import ctypes, sys; sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, "
                            "0) != 0)"], timeout=30)
    if probe.returncode != 0:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3)")
    gw = Gateway(tmp_path)
    cfg = device_config(gw.provision("wx-dev"), host="127.0.0.1", port=gw.port)
    proc = start_gateway(gw, {}, preexec=_mdwe)
    try:
        r = run_device(cfg, 2)
        assert r.returncode == 0 and r.stdout.split() == ["2.04"] * 2, r.stdout + r.stderr + proc.stderr.text()
        assert Path(f"/proc/{proc.pid}/status").read_text().count("NoNewPrivs:\t1") == 1
        proc.stop()
        assert proc.returncode == 0, proc.transcript()
    finally:
        proc.stop()


# -- the unit file -------------------------------------------------------------------------------------------------
def _unit() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_file_settings() -> None:
    u = _unit()
    one = {k: v[-1] for k, v in u.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"].endswith("/iotdtls-gateway run --config /etc/iotdtls-gateway/gateway.toml")
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["WatchdogSec"] == "30" and one["Restart"] == "on-failure"
    assert one["DynamicUser"] == "yes" and one["StateDirectory"] == "iotdtls-gateway"
    assert "/var/lib/" + one["StateDirectory"] == DEFAULT_DATA_DIR  # the configuration's default is the state dir
    assert one["ConfigurationDirectory"] == "iotdtls-gateway" and one["UMask"] == "0077"
    assert one["CapabilityBoundingSet"] == "" and one["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "NoNewPrivileges",
                "MemoryDenyWriteExecute", "LockPersonality", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectKernelLogs", "ProtectControlGroups", "RestrictNamespaces"):
        assert one[key] in ("yes", "strict"), key
    assert u["SystemCallFilter"][0] == "@system-service" and "LimitNOFILE" in one


def test_unit_file_ships_as_package_data() -> None:
    with open(ROOT / "pyproject.toml", "rb") as f:
        data = tomllib.load(f)["tool"]["setuptools"]["package-data"]["iotdtls_gateway"]
    assert "iotdtls-gateway.service" in data
    assert importlib.resources.files("iotdtls_gateway").joinpath("iotdtls-gateway.service").is_file()


def _verifiable_unit(directory: Path) -> Path:
    """The unit with ExecStart pointing at this machine's iotdtls-gateway (systemd-analyze checks that it exists)."""
    exe = shutil.which("iotdtls-gateway")
    if exe is None:
        exe = str(directory / "iotdtls-gateway")
        Path(exe).write_text(f"#!/bin/sh\nexec {sys.executable} -m iotdtls_gateway \"$@\"\n")
        os.chmod(exe, 0o755)
    text = UNIT.read_text()
    rewritten = re.sub(r"^ExecStart=\S+/iotdtls-gateway ", f"ExecStart={exe} ", text, flags=re.M)
    assert rewritten != text
    unit = directory / "iotdtls-gateway.service"
    unit.write_text(rewritten)
    return unit


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    require_peer("systemd-analyze (Debian package systemd)", found is not None)
    assert found is not None
    return found


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    unit = _verifiable_unit(tmp_path)
    r = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    about_us = [line for line in (r.stdout + r.stderr).splitlines() if "iotdtls" in line]
    assert r.returncode == 0 and not about_us, r.stdout + r.stderr


def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    """``systemd-analyze security --offline`` scores the sandbox from 0 (locked down) to 10; the unit is 1.2 with
    systemd 252. The threshold (out of 100) fails the command above 2.0."""
    analyze = _systemd_analyze()
    unit = _verifiable_unit(tmp_path)
    r = subprocess.run([analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=120)
    if "--offline" in r.stderr and "unrecognized" in r.stderr:  # systemd < 250
        pytest.skip("systemd-analyze security has no --offline before systemd 250")
    level = re.search(r"Overall exposure level for iotdtls-gateway.service: (\d+\.\d+)", r.stdout)
    assert r.returncode == 0 and level is not None and float(level.group(1)) <= 2.0, r.stdout[-2000:] + r.stderr


# -- provisioning against the service's state directory ------------------------------------------------------------
def _owners(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_uid, p.stat().st_gid) for p in [directory, *directory.iterdir()]}


@pytest.mark.skipif(os.geteuid() != 0, reason="the guidance is for root (sudo); chown needs root")
def test_provision_as_root_keeps_the_service_users_files(tmp_path: Path) -> None:
    """docs/gateway.md: the admin runs ``sudo iotdtls-provision`` against the registry of the service's DynamicUser.
    SQLite, run as root, gives the -wal and -shm files it creates the database file's owner, so nothing in the state
    directory becomes root's (systemd does not chown it again: its top directory is already the service's)."""
    service_uid = 61234  # a DynamicUser uid (61184-65519)
    gw = Gateway(tmp_path)
    gw.provision("first")
    for path in [gw.data, *gw.data.iterdir()]:
        os.chown(path, service_uid, service_uid)

    def provision(device: str) -> None:
        r = subprocess.run([*PROVISION, "--config", str(gw.config), "add", device], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr

    provision("while-stopped")
    owners = _owners(gw.data)
    assert set(owners.values()) == {(service_uid, service_uid)}, owners
    # while the service runs: its connection holds the -wal and -shm files open
    db = sqlite3.connect(gw.data / "registry.sqlite3")
    try:
        db.execute("PRAGMA journal_mode").fetchone()
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        for path in gw.data.iterdir():
            os.chown(path, service_uid, service_uid)
        provision("while-running")
        owners = _owners(gw.data)
        assert set(owners.values()) == {(service_uid, service_uid)}, owners
    finally:
        db.close()
