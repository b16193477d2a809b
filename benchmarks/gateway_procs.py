"""The processes and files behind ``benchmarks/bench_gateway.py``: the gateway under test and the bare aiocoap
server as child processes (RSS and CPU read from /proc), the registry and spool filled directly, and two facts
about the machine (fsync latency of the disk, speed of one core in pure Python)."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from iotdtls_gateway.envelope import encode_envelope, make_envelope, message_id
from iotdtls_gateway.registry import NewDevice, Registry
from iotdtls_gateway.spool import Message, SpoolLimits, SpoolStore

from benchmarks.gateway_device import device_name, device_psk

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """VmRSS of process ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_of(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of process ``pid``'s main thread (the gateway's event loop) and of its other threads (the spool
    writer, asyncio's worker threads), from /proc/PID/task."""
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK
        if task.name == str(pid):
            main += seconds
        else:
            other += seconds
    return main, other


class ChildProcess:
    """A server started by the benchmark, its output in a log file; stopped with SIGTERM."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._offset = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=str(ROOT))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self._offset)
            return f.read().decode("utf-8", "replace")

    def wait_for(self, needle: str, timeout: float = 60.0) -> float:
        """Wait until ``needle`` appears in this process's output; returns ``time.monotonic()`` then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return time.monotonic()
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.output()[-2000:]}")
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: {needle!r} not seen within {timeout:g} s")

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def gateway_config(directory: Path, port: int, mqtt_port: int | None, coaps: dict[str, int] | None = None) -> Path:
    """The configuration under test: every limit at its default (coaps.max_sessions 10,000, max_handshakes 100,
    a quarter of them per network, one session per identity) unless ``coaps`` sets one; the uplink's reconnect
    delay is shortened (0.2-1 s, default 1-60 s) so that the drain measures the drain, not the back-off."""
    text = f'data_dir = "data"\n\n[coaps]\nbind = "127.0.0.1:{port}"\n'
    text += "".join(f"{key} = {value}\n" for key, value in (coaps or {}).items())
    if mqtt_port is not None:
        text += (f'\n[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\nclient_id = "bench-gateway"\n'
                 'reconnect_min = 0.2\nreconnect_max = 1.0\n')
    path = directory / "gateway.toml"
    path.write_text(text)
    (directory / "data").mkdir(mode=0o700, exist_ok=True)
    return path


def start_gateway(config: Path, log: Path, profile: Path | None = None) -> ChildProcess:
    argv = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []),
            "-m", "iotdtls_gateway", "run", "--config", str(config), "--log-json"]
    return ChildProcess("iotdtls-gateway", argv, log)


def start_bare_server(port: int, log: Path, transport: str = "udp6") -> ChildProcess:
    return ChildProcess("aiocoap server", [sys.executable, "-m", "benchmarks.bare_coap_server", "--port", str(port),
                                           "--transport", transport], log)


def provision(registry: Path, devices: int) -> float:
    """Add ``devices`` PSK devices (dev0, dev1, ...) in one batch; returns the seconds it took."""
    t = time.perf_counter()
    with Registry(registry) as reg:
        reg.add_devices([NewDevice(device_name(i), psk=device_psk(i)) for i in range(devices)])
    return time.perf_counter() - t


def fill_spool(spool: Path, count: int, devices: int, batch: int = 2000) -> tuple[list[str], float]:
    """Append ``count`` envelopes (devices in turn, each with an idempotency key) straight to the spool file with
    :class:`SpoolStore`, ``batch`` per transaction; returns their ids and the seconds it took."""
    t = time.perf_counter()
    ids = []
    store = SpoolStore(spool, SpoolLimits())
    try:
        now = time.time()
        for start in range(0, count, batch):
            messages = []
            for n in range(start, min(count, start + batch)):
                device = device_name(n % devices)
                key = f"drain.{n}"
                msg_id = message_id(device, key)
                body = encode_envelope(make_envelope(device, msg_id, now, 60, {"seq": n, "temp": 21.5}))
                messages.append(Message(device, msg_id, key, now, body))
                ids.append(msg_id)
            store.append(messages, now)
    finally:
        store.close()
    return ids, time.perf_counter() - t


def fsync_latency(directory: Path, n: int = 50) -> float:
    """Median seconds of a 4 KB write + fsync in ``directory``."""
    path = directory / "fsync.probe"
    times = []
    with open(path, "wb") as f:
        for _ in range(n):
            t = time.perf_counter()
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t)
    path.unlink()
    return statistics.median(times)


def core_speed(repeat: int = 5) -> float:
    """Millions of iterations per second of a small pure-Python loop (integer arithmetic, a dict, a bytes slice):
    the best of ``repeat`` runs, so a busy machine shows its speed when it gets a core."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        d: dict[int, int] = {}
        data = bytes(range(256)) * 4
        acc = 0
        for i in range(200_000):
            acc = (acc + i * 7) & 0xFFFF
            d[i & 255] = acc
            acc ^= data[i & 1023]
        best = min(best, time.perf_counter() - t)
    return 0.2 / best
