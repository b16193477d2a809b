"""``iotdtls-gateway`` with cProfile switched on and off by signals, so that a benchmark profiles one phase only.

    python -m benchmarks.profiled_gateway OUT.prof run --config FILE --log-json

SIGUSR1 starts profiling the event loop's thread; SIGUSR2 stops it and writes the statistics to ``OUT-1.prof``, the
next time to ``OUT-2.prof``, and so on (``python -m pstats OUT-1.prof``), with the garbage collector's pauses
during the phase next to it (``OUT-1.gc.json``: count, total and longest pause per generation). Everything else is
``iotdtls-gateway``'s command line.
"""

from __future__ import annotations

import cProfile
import gc
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from iotdtls_gateway.cli.gateway import main as gateway_main


class GcPauses:
    """The collector's pauses per generation, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.started = 0.0
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self.started)

    def reset(self) -> None:
        self.pauses = {0: [], 1: [], 2: []}

    def summary(self) -> dict[str, Any]:
        return {str(g): {"count": len(p), "total_ms": 1000 * sum(p), "max_ms": 1000 * max(p, default=0.0)}
                for g, p in self.pauses.items()} | {"objects": len(gc.get_objects())}


def main() -> None:
    if len(sys.argv) < 3:
        print("usage: python -m benchmarks.profiled_gateway OUT.prof run --config FILE", file=sys.stderr)
        sys.exit(2)
    out = Path(sys.argv[1])
    profiler = cProfile.Profile()
    pauses = GcPauses()
    dumps = 0

    def start(signum: int, frame: FrameType | None) -> None:
        nonlocal profiler
        profiler = cProfile.Profile()
        pauses.reset()
        profiler.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal dumps
        profiler.disable()
        dumps += 1
        stem = out.with_name(f"{out.stem}-{dumps}")
        Path(f"{stem}.gc.json").write_text(json.dumps(pauses.summary()))
        profiler.dump_stats(f"{stem}{out.suffix}")

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    gateway_main(sys.argv[2:])


if __name__ == "__main__":
    main()
