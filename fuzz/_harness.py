"""Driver shared by the fuzz targets: atheris (libFuzzer) when it is installed, a coverage-guided mutation loop
otherwise, and a replay mode for coverage measurement and regression tests.

This module must not import iotdtls: the targets import iotdtls inside :func:`instrumented` so that atheris
instruments it.

Command line of every target (libFuzzer's syntax, the subset the fallback understands too)::

    python fuzz/fuzz_server.py [CORPUS_DIR ...] [-max_total_time=S] [-runs=N] [-artifact_prefix=P] [libFuzzer flags]
    python fuzz/fuzz_server.py --replay FILE_OR_DIR ...     # run each input once, exit 1 on a crash
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parent
for _p in (str(REPO), str(REPO / "tests"), str(FUZZ_DIR)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

TestOneInput = Callable[[bytes], None]

try:  # pragma: no cover - depends on the machine
    import atheris  # type: ignore[import-untyped]

    HAVE_ATHERIS = True
except ImportError:  # pragma: no cover
    atheris = None
    HAVE_ATHERIS = False


class FuzzBug(AssertionError):
    """An invariant of a target failed: a bug, like an exception escaping."""


@contextlib.contextmanager
def instrumented(active: bool) -> Iterator[None]:
    """Instrument iotdtls for atheris when ``active`` (the target runs as a script, not in replay mode and not
    imported by the regression tests) and atheris is installed; a no-op otherwise."""
    if active and HAVE_ATHERIS and "--replay" not in sys.argv and not os.environ.get("IOTDTLS_NO_ATHERIS"):
        with atheris.instrument_imports(include=["iotdtls"]):
            yield
    else:
        yield


# -- framing of several datagrams in one input -----------------------------------------------------------


def frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``[tag:1][length:2][bytes]`` repeated; a short last frame takes what is left."""
    pos, end = 0, len(data)
    while pos < end:
        tag = data[pos]
        if end - pos < 3:
            yield tag, data[pos + 1 :]
            return
        length = int.from_bytes(data[pos + 1 : pos + 3], "big")
        chunk = data[pos + 3 : pos + 3 + length]
        pos += 3 + length
        yield tag, chunk


def encode_frames(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes([tag]) + len(chunk).to_bytes(2, "big") + chunk for tag, chunk in items)


# -- entry point ------------------------------------------------------------------------------------------


def main(test_one_input: TestOneInput, argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if "--replay" in argv:
        sys.exit(replay(test_one_input, [a for a in argv[1:] if a != "--replay" and not a.startswith("-")]))
    if HAVE_ATHERIS and not os.environ.get("IOTDTLS_NO_ATHERIS"):
        atheris.Setup(argv, test_one_input)
        atheris.Fuzz()
    else:
        sys.exit(fallback_fuzz(test_one_input, argv))


def _inputs(paths: list[str]) -> Iterator[Path]:
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif p.is_file():
            yield p


def replay(test_one_input: TestOneInput, paths: list[str]) -> int:
    """Run every input once; print and count the crashes."""
    crashes = runs = 0
    for path in _inputs(paths):
        runs += 1
        try:
            test_one_input(path.read_bytes())
        except Exception:
            crashes += 1
            print(f"CRASH {path}", file=sys.stderr)
            traceback.print_exc()
    print(f"replayed {runs} inputs, {crashes} crashes")
    return 1 if crashes else 0


# -- fallback: a small coverage-guided mutation fuzzer (when atheris cannot be installed) ---------------------


def _flag(argv: list[str], name: str, default: float) -> float:
    for a in argv:
        if a.startswith(f"-{name}="):
            return float(a.split("=", 1)[1])
    return default


def _mutate(rng: random.Random, data: bytes, corpus: list[bytes], max_len: int) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[pos % len(b)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[pos % len(b)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 2:
            b[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and b:
            del b[pos : pos + rng.randint(1, 16)]
        elif op == 4 and corpus:
            other = rng.choice(corpus)
            start = rng.randrange(len(other) + 1)
            b[pos:pos] = other[start : start + rng.randint(1, 64)]
        elif op == 5 and len(b) >= 2:
            p = pos % (len(b) - 1)
            b[p : p + 2] = rng.choice([0, 1, 0xFF, 0xFFFF, rng.randrange(1 << 16)]).to_bytes(2, "big")
        elif op == 6 and corpus:
            b = bytearray(b[:pos] + rng.choice(corpus)[pos:])
        elif op == 7 and b:
            start = rng.randrange(len(b))
            chunk = b[start : start + rng.randint(1, 32)]
            b[pos:pos] = chunk
    return bytes(b[:max_len])


def fallback_fuzz(test_one_input: TestOneInput, argv: list[str]) -> int:
    """Mutate the corpus; keep inputs that reach new arcs (coverage.py); stop on the first crash.

    Prints libFuzzer-style ``stat::`` lines so fuzz/run.sh reads both drivers the same way."""
    coverage: ModuleType | None
    try:
        import coverage
    except ImportError:
        coverage = None
    max_time = _flag(argv, "max_total_time", 60.0)
    max_runs = int(_flag(argv, "runs", -1))
    max_len = int(_flag(argv, "max_len", 4096))
    prefix = next((a.split("=", 1)[1] for a in argv if a.startswith("-artifact_prefix=")), "./crash-")
    dirs = [Path(a) for a in argv[1:] if not a.startswith("-")]
    corpus = [p.read_bytes() for p in _inputs([str(d) for d in dirs])] or [b""]
    out_dir = dirs[0] if dirs else None
    rng = random.Random(int(_flag(argv, "seed", 0)) or None)
    cov = None
    if coverage is not None:
        cov = coverage.Coverage(data_file=None, branch=True, include=[str(REPO / "iotdtls" / "*")])
        cov.start()
    seen = 0

    def arcs() -> int:
        if cov is None:
            return 0
        data = cov.get_data()
        return sum(len(data.arcs(f) or ()) for f in data.measured_files())

    start = time.monotonic()
    runs = 0
    print(f"INFO: fallback fuzzer (atheris not installed), coverage feedback: {cov is not None}")
    try:
        queue = list(corpus)
        while True:
            data = queue.pop() if queue else _mutate(rng, rng.choice(corpus), corpus, max_len)
            runs += 1
            try:
                test_one_input(data)
            except Exception:
                name = f"{prefix}{hashlib.sha1(data).hexdigest()}"
                Path(name).parent.mkdir(parents=True, exist_ok=True)
                Path(name).write_bytes(data)
                traceback.print_exc()
                print(f"==ERROR: uncaught exception; test unit written to {name}")
                _stats(runs, start, len(corpus), seen)
                return 1
            if cov is not None:
                now_arcs = arcs()
                if now_arcs > seen:
                    seen = now_arcs
                    corpus.append(data)
                    if out_dir is not None:
                        out_dir.mkdir(parents=True, exist_ok=True)
                        (out_dir / hashlib.sha1(data).hexdigest()).write_bytes(data)
            if (max_runs >= 0 and runs >= max_runs) or time.monotonic() - start >= max_time:
                break
    finally:
        if cov is not None:
            cov.stop()
    _stats(runs, start, len(corpus), seen)
    return 0


def _stats(runs: int, start: float, corpus: int, arcs: int) -> None:
    elapsed = max(time.monotonic() - start, 1e-9)
    print(f"stat::number_of_executed_units: {runs}")
    print(f"stat::average_exec_per_sec:     {int(runs / elapsed)}")
    print(f"stat::new_units_added:          {corpus}")
    print(f"stat::arcs_covered:             {arcs}")
