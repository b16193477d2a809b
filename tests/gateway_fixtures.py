"""A real ``iotdtls-gateway run`` process in a temporary data dir, devices provisioned with the real
``iotdtls-provision``, and the MicroPython device client (CPython or the WebAssembly MicroPython) pointed at it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from iotdtls_gateway.spool import Row, SpoolLimits, SpoolStore
from peers import PeerProcess, free_udp_port

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "micropython" / "main.py"
WASM_RUNNER = ROOT / "tests" / "mpwasm" / "run.mjs"
PROVISION = [sys.executable, "-m", "iotdtls_gateway.cli.provision"]
GATEWAY = [sys.executable, "-m", "iotdtls_gateway"]
#: Device timers scaled down for tests (a board's defaults are seconds to minutes).
FAST_DEVICE = {"ack_timeout": 0.3, "retransmit_initial": 0.3, "handshake_timeout": 30, "backoff_max": 1,
               "tries": 8, "interval": 0}


class Gateway:
    """``iotdtls-gateway run`` as a process: start, kill -9, restart on the same data dir and port."""

    def __init__(self, tmp: Path, *, mqtt: str | None = None, extra: str = "", port: int | None = None) -> None:
        self.tmp = tmp
        self.port = port or free_udp_port()
        self.config = tmp / "gateway.toml"
        self.data = tmp / "data"
        text = f'data_dir = "data"\n\n[coaps]\nbind = "127.0.0.1:{self.port}"\nretransmit_initial = 0.3\n{extra}\n'
        if mqtt:
            text += f'\n[mqtt]\nurl = "{mqtt}"\nreconnect_min = 0.2\nreconnect_max = 1\n'
        self.config.write_text(text)
        self.proc: PeerProcess | None = None
        self.generation = 0

    def start(self) -> PeerProcess:
        self.generation += 1
        self.proc = PeerProcess(f"iotdtls-gateway#{self.generation}",
                                [*GATEWAY, "run", "--config", str(self.config), "--log-json"])
        self.proc.wait_output('"event":"started"', timeout=20)
        return self.proc

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait_exit(10)

    def stop(self) -> int:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait_exit(20)

    def provision(self, device: str, *extra: str) -> Path:
        """Add ``device`` with iotdtls-provision; returns its config.json (for micropython/main.py)."""
        out = self.tmp / f"{device}.json"
        r = self.provision_cmd("add", device, "--device-config", str(out), *extra)
        assert r.returncode == 0, r.stderr
        return out

    def provision_cmd(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run iotdtls-provision; a running gateway has reloaded its registry when this returns."""
        before = len(self.log_events("registry_reloaded")) if self.running else 0
        r = subprocess.run([*PROVISION, "--config", str(self.config), *argv], capture_output=True, text=True,
                           timeout=30)
        if r.returncode == 0 and self.running and argv[0] in ("add", "revoke", "enable", "rotate", "import",
                                                              "set-meta", "set-config"):
            deadline = time.monotonic() + 10
            while len(self.log_events("registry_reloaded")) == before and time.monotonic() < deadline:
                time.sleep(0.05)
        return r

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def rows(self) -> list[Row]:
        store = SpoolStore(self.data / "spool.sqlite3", SpoolLimits())
        try:
            return store.read(0, 100_000)
        finally:
            store.close()

    def envelopes(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.rows()]

    def log_events(self, name: str) -> list[dict[str, Any]]:
        assert self.proc is not None
        out = []
        for line in self.proc.stderr.lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                out.append(record)
        return out


@contextmanager
def gateway(tmp: Path, **kw: Any) -> Iterator[Gateway]:
    gw = Gateway(tmp, **kw)
    gw.start()
    try:
        yield gw
    finally:
        if gw.proc is not None:
            gw.proc.stop()


def device_config(path: Path, **changes: Any) -> Path:
    cfg = json.loads(path.read_text())
    cfg.update(FAST_DEVICE)
    cfg.update(changes)
    path.write_text(json.dumps(cfg))
    return path


def run_device(cfg: Path, count: int, *, wasm: bool = False, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``micropython/main.py CFG --count N`` on CPython, or on the real MicroPython (WebAssembly) with ``wasm``."""
    argv = ["node", str(WASM_RUNNER), "micropython/main.py"] if wasm else [sys.executable, str(MAIN)]
    return subprocess.run([*argv, str(cfg), "--count", str(count)], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT))


def start_device(cfg: Path, count: int, *, wasm: bool = False) -> subprocess.Popen[str]:
    argv = ["node", str(WASM_RUNNER), "micropython/main.py"] if wasm else [sys.executable, str(MAIN)]
    return subprocess.Popen([*argv, str(cfg), "--count", str(count)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=str(ROOT))


def wait_rows(gw: Gateway, n: int, timeout: float = 10.0) -> list[Row]:
    deadline = time.monotonic() + timeout
    while True:
        rows = gw.rows()
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)
