"""The load generator of ``benchmarks/bench_gateway.py``: simulated devices in several processes.

Each worker process drives its share of the devices (:class:`~benchmarks.gateway_device.SimDevice`, sans-IO) over
one connected UDP socket per device, bound to the device's own loopback address, with an epoll loop and a timer
heap of its own (no asyncio: the generator should cost little next to the server it loads). The controller talks to
the workers through :class:`Fleet`, one command at a time, and every worker answers with its share of the figures.

Commands (dicts, ``cmd`` says which):

- ``target``: point every device at ``host``:``port``, over DTLS (``secure``) or plain CoAP; sessions are forgotten.
- ``connect``: every device posts one reading (a handshake first, over DTLS), at most ``window`` at once per worker;
  the answer comes when all have been acknowledged, or at ``timeout``. ``since`` and ``upto`` (fractions of each
  worker's devices, default 0 and 1) connect a part of them.
- ``closed``: from ``start`` to ``end`` (``time.monotonic()``, the same clock in every process on Linux) the first
  ``concurrency`` devices each post one reading after the other (NSTART = 1), as fast as they are answered.
- ``rate``: from ``start`` to ``end``, ``rate`` readings per second from the worker's devices in turn (open loop; a
  device still busy with its last reading is skipped and counted).
- ``storm``: every device posts a reading every ``interval`` seconds (+-25 %) and at once when its session ends
  (close_notify or an alert, as when the gateway stops); ``storm_status`` counts the devices acknowledged since a
  moment; ``stop`` ends the phase.
"""

from __future__ import annotations

import contextlib
import heapq
import multiprocessing
import random
import resource
import selectors
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.gateway_device import SimDevice, device_address

#: How long a phase waits for the readings still under way after its end (they are not counted).
QUIESCE = 20.0
RECV_SIZE = 2048
#: Readings slower than this (s) are listed with the time they started, at most MAX_SLOW per worker and phase.
SLOW = 0.05
MAX_SLOW = 200
#: Device counters every phase reports (what the phase added).
COUNTERS = ("retransmissions", "empty_acks", "renewals")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Phase:
    """What one command measures in one worker."""

    def __init__(self, cmd: dict[str, Any], now: float) -> None:
        self.cmd = cmd
        self.mode: str = cmd["cmd"]
        self.start: float = cmd.get("start", now)
        self.end: float = cmd.get("end", float("inf"))
        self.deadline: float = cmd.get("timeout", 0.0) and now + cmd["timeout"]
        self.cpu0 = cpu_seconds()
        self.ok = 0  # acknowledged readings that started in [start, end)
        self.ok_in_window = 0  # ... and were acknowledged before end
        self.failed = 0  # failed attempts (each is retried after the device's back-off)
        self.skipped = 0  # rate mode: ticks that found the device still busy
        self.latencies: list[float] = []
        self.slow: list[tuple[float, float]] = []  # (start, round trip) of readings slower than SLOW
        self.stopping = False
        self.stopped_at = 0.0
        # connect
        self.queue: list[int] = []
        self.outstanding = 0
        self.connected = 0
        self.target = 0
        self.first_done = 0.0
        self.last_done = 0.0
        # rate
        self.next_tick = self.start
        self.cursor = 0
        # storm: acknowledgement times and the first session end per device
        self.acks: dict[int, list[float]] = {}
        self.handshakes0 = 0
        self.counters0: dict[str, int] = {}
        self.noticed: dict[int, float] = {}


class Worker:
    def __init__(self, control: Connection, first: int, count: int, seed: int) -> None:
        self.control = control
        self.rng = random.Random(seed)
        self.indices = list(range(first, first + count))
        self.devices: list[SimDevice] = []
        self.socks: list[socket.socket] = []
        self.sel = selectors.EpollSelector()
        self.heap: list[tuple[float, int]] = []
        self.armed: list[float | None] = [None] * count
        self.phase: Phase | None = None
        self.running = True
        self.sel.register(control.fileno(), selectors.EVENT_READ, -1)
        for slot, index in enumerate(self.indices):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((device_address(index), 0))
            self.socks.append(sock)
            self.sel.register(sock, selectors.EVENT_READ, slot)

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(self) -> None:
        heap, armed, devices = self.heap, self.armed, self.devices
        while self.running:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                when, slot = heapq.heappop(heap)
                if armed[slot] != when:
                    continue
                armed[slot] = None
                dev = devices[slot]
                dev.on_timer(now)
                self._flush(slot)
            phase = self.phase
            if phase is not None:
                self._phase_tick(phase, now)
            wake = heap[0][0] if heap else now + 0.5
            if self.phase is not None:
                wake = min(wake, now + 0.05)
                if self.phase.mode == "rate" and not self.phase.stopping:
                    wake = min(wake, self.phase.next_tick)
            for key, _ in self.sel.select(max(0.0, wake - time.monotonic())):
                slot = key.data
                if slot < 0:
                    self._command(self.control.recv())
                    continue
                self._read(slot)

    def _read(self, slot: int) -> None:
        sock = self.socks[slot]
        dev = self.devices[slot] if self.devices else None  # None before the first "target": drain and drop
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                break
            except OSError:  # ICMP port unreachable: nothing listens at the target (the gateway is down)
                if dev is not None:
                    dev.network_error(time.monotonic())
                continue
            if dev is not None:
                dev.receive(data, time.monotonic())
        if dev is not None:
            self._flush(slot)

    def _flush(self, slot: int) -> None:
        dev = self.devices[slot]
        out = dev.datagrams()
        if out:
            sock = self.socks[slot]
            for d in out:
                try:
                    sock.send(d)
                except BlockingIOError:
                    pass  # a full socket buffer loses the datagram, as a network would
                except OSError:
                    dev.network_error(time.monotonic())
                    break
        when = dev.timer()
        if when is not None and self.armed[slot] != when:
            self.armed[slot] = when
            heapq.heappush(self.heap, (when, slot))

    # -- listener (called by the devices) ------------------------------------------------------------------------
    def done(self, dev: SimDevice, ok: bool, now: float) -> None:
        phase = self.phase
        if phase is None:
            return
        if not ok:
            phase.failed += 1
            return
        if phase.start <= dev.started < phase.end:
            phase.ok += 1
            phase.latencies.append(dev.latency)
            if dev.latency > SLOW and len(phase.slow) < MAX_SLOW:
                phase.slow.append((dev.started, dev.latency))
            if now < phase.end:
                phase.ok_in_window += 1
        mode = phase.mode
        if mode == "closed":
            if not phase.stopping and now < phase.end:
                dev.post(now)
        elif mode == "connect":
            phase.outstanding -= 1
            phase.connected += 1
            phase.first_done = phase.first_done or now
            phase.last_done = now
            self._connect_more(phase, now)
        elif mode == "storm":
            phase.acks.setdefault(dev.index, []).append(now)
            if not phase.stopping:
                dev.due_at = now + phase.cmd["interval"] * (0.75 + 0.5 * self.rng.random())

    def session_ended(self, dev: SimDevice, now: float) -> None:
        phase = self.phase
        if phase is not None and phase.mode == "storm" and not phase.stopping:
            phase.noticed.setdefault(dev.index, now)
            dev.post(now)

    # -- phases --------------------------------------------------------------------------------------------------
    def _command(self, cmd: dict[str, Any]) -> None:
        now = time.monotonic()
        name = cmd["cmd"]
        if name == "quit":
            self.running = False
            self.control.send({"ok": True})
        elif name == "target":
            self._target(cmd)
            self.control.send({"ok": True})
        elif name in ("connect", "closed", "rate", "storm"):
            self.phase = phase = Phase(cmd, now)
            phase.counters0 = self._counters()
            if name == "connect":
                phase.start, phase.end = now, float("inf")
                first = round(cmd.get("since", 0.0) * len(self.devices))
                phase.queue = list(range(first, round(cmd.get("upto", 1.0) * len(self.devices))))[::-1]
                phase.target = len(phase.queue)
                self._connect_more(phase, now)
            elif name == "storm":
                phase.start, phase.end = now, float("inf")
                phase.handshakes0 = sum(d.handshakes for d in self.devices)
                for slot, dev in enumerate(self.devices):
                    dev.due_at = now + cmd["interval"] * self.rng.random()
                    self._flush(slot)
                self.control.send({"ok": True})
        elif name == "storm_status":
            self.control.send(self._storm_status(cmd["since"]))
        elif name == "stop":
            if self.phase is None:
                self.control.send({})
                return
            self._stop(self.phase, now)
        else:
            self.control.send({"error": f"unknown command {name}"})

    def _target(self, cmd: dict[str, Any]) -> None:
        self.phase = None
        self.heap.clear()
        self.armed[:] = [None] * len(self.indices)
        self.devices[:] = [SimDevice(index, self, self.rng, secure=cmd["secure"]) for index in self.indices]
        for sock in self.socks:
            sock.connect((cmd["host"], cmd["port"]))

    def _connect_more(self, phase: Phase, now: float) -> None:
        window = phase.cmd["window"]
        while phase.queue and phase.outstanding < window:
            slot = phase.queue.pop()
            phase.outstanding += 1
            self.devices[slot].post(now)
            self._flush(slot)

    def _phase_tick(self, phase: Phase, now: float) -> None:
        mode = phase.mode
        if mode == "connect":
            if phase.connected == phase.target or (phase.deadline and now >= phase.deadline):
                self._finish(phase, now, connected=phase.connected, first_done=phase.first_done,
                             last_done=phase.last_done,
                             handshakes=sum(d.handshakes for d in self.devices))
            return
        if mode == "storm":
            if phase.stopping:
                self._maybe_stopped(phase, now)
            return
        if not phase.stopping:
            if now < phase.start:
                return
            if mode == "closed" and phase.next_tick <= now:  # the first tick starts every device
                phase.next_tick = float("inf")
                for slot in range(min(phase.cmd["concurrency"], len(self.devices))):
                    self.devices[slot].post(now)
                    self._flush(slot)
            elif mode == "rate":
                self._rate_ticks(phase, now)
            if now >= phase.end:
                self._stop(phase, now)
            return
        self._maybe_stopped(phase, now)

    def _rate_ticks(self, phase: Phase, now: float) -> None:
        interval = 1.0 / phase.cmd["rate"]
        devices = self.devices
        n = len(devices)
        while phase.next_tick <= now and phase.next_tick < phase.end:
            phase.next_tick += interval
            for _ in range(n):
                slot = phase.cursor
                phase.cursor = (slot + 1) % n
                if devices[slot].post(now):
                    self._flush(slot)
                    break
                phase.skipped += 1
            else:
                break

    def _stop(self, phase: Phase, now: float) -> None:
        phase.stopping = True
        phase.stopped_at = now
        for slot, dev in enumerate(self.devices):
            dev.due_at = None
            dev.cancel_retry()
            self._flush(slot)
        self._maybe_stopped(phase, now)

    def _maybe_stopped(self, phase: Phase, now: float) -> None:
        busy = sum(1 for d in self.devices if d.pending)
        if busy and now < phase.stopped_at + QUIESCE:
            return
        extra: dict[str, Any] = {"unfinished": busy}
        if phase.mode == "storm":
            extra.update(self._storm_status(phase.start))
        self._finish(phase, now, **extra)

    def _finish(self, phase: Phase, now: float, **extra: Any) -> None:
        self.phase = None
        result = {"mode": phase.mode, "ok": phase.ok, "ok_in_window": phase.ok_in_window, "failed": phase.failed,
                  "skipped": phase.skipped, "latencies": phase.latencies, "slow": phase.slow,
                  "cpu": cpu_seconds() - phase.cpu0,
                  "wall": now - phase.start,
                  **{name: total - phase.counters0[name] for name, total in self._counters().items()}, **extra}
        self.control.send(result)

    def _counters(self) -> dict[str, int]:
        return {name: sum(getattr(d, name) for d in self.devices) for name in COUNTERS}

    def _storm_status(self, since: float) -> dict[str, Any]:
        phase = self.phase
        if phase is None or phase.mode != "storm":
            return {"error": "no storm under way"}
        firsts = {i: next((t for t in ts if t >= since), None) for i, ts in phase.acks.items()}
        back = {i: t for i, t in firsts.items() if t is not None}
        missing = [i for i in self.indices if i not in back]
        return {"back": len(back), "last_back": max(back.values(), default=None), "missing": missing[:20],
                "back_after": sorted(t - since for t in back.values()), "missing_count": len(missing),
                "noticed": len(phase.noticed),
                "handshakes": sum(d.handshakes for d in self.devices) - phase.handshakes0,
                "failed": phase.failed, "cpu": cpu_seconds() - phase.cpu0}


def worker_main(control: Connection, first: int, count: int, seed: int) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        Worker(control, first, count, seed).run()


class Fleet:
    """The controller's handle on the worker processes: ``devices`` split evenly over ``workers``."""

    def __init__(self, devices: int, workers: int, seed: int = 1) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that runs threads (the MQTT subscriber)
        self.devices = devices
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        workers = max(1, min(workers, devices))
        for w in range(workers):
            first = devices * w // workers
            count = devices * (w + 1) // workers - first
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, first, count, seed + w), daemon=True,
                               name=f"bench-devices-{w}")
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    def send(self, **cmd: Any) -> None:
        for pipe in self.pipes:
            pipe.send(cmd)

    def share(self, total: int) -> list[int]:
        """``total`` split over the workers as evenly as integers allow."""
        n = len(self.pipes)
        return [total * (w + 1) // n - total * w // n for w in range(n)]

    def gather(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        out = []
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"a load worker did not answer within {timeout:g} s")
            out.append(pipe.recv())
        return out

    def command(self, wait: float = 60.0, each: list[dict[str, Any]] | None = None,
                **cmd: Any) -> list[dict[str, Any]]:
        """Send ``cmd`` to every worker (updated with ``each[w]`` for worker ``w``) and wait up to ``wait`` seconds
        for all their answers."""
        for w, pipe in enumerate(self.pipes):
            pipe.send({**cmd, **(each[w] if each else {})})
        return self.gather(wait)

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send({"cmd": "quit"})
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
