"""Footprint of the device code in the real MicroPython 1.27 (WebAssembly, 32-bit) under a REAL heap cap: the runner's
``--fixed-heap`` stops the heap from growing (MemoryError past ``--heap``, as on a board). Boots from ``.mpy`` files
compiled here by mpy-cross (the socket shim too), then handshakes with iotdtls's DTLSServer (Connection ID on,
record_size_limit, session cache) and sends one confirmable POST, one datagram (in, handled, out) per top-level run
(tests/mp_footprint_device.py). This port frees garbage only between top-level runs, so each run's garbage counts
on top of the live heap: the cap measured here bounds a board's need from above.

Two configurations: ``--cryptolib`` (the firmware AES of ESP32 / Pico W boards, given by the runner through the JS
bridge) and the pure-Python AES fallback (softaes.py). The issue's target is 48 KiB (49,152 B); HEAP_CAP holds what
passes today here; the target is checked on the 32-bit unix port (tests/test_mp_footprint_unix32.py).
Figures print with a ``MEASURED`` prefix (``pytest -s``). Needs node + ``npm ci --prefix tests/mpwasm`` and mpy-cross.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mp_cid_server import CidServer
from mp_fixtures import KEY_HEX
from peers import LOCALHOST, require_peer

ROOT = Path(__file__).resolve().parent.parent
MP_DIR = ROOT / "micropython"
RUNNER = ROOT / "tests" / "mpwasm" / "run.mjs"
NODE_MODULES = ROOT / "tests" / "mpwasm" / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
TARGET = 48 * 1024
#: One 2 KiB step above the smallest cap that passes today, with cryptolib and with the pure-Python AES (measured:
#: 56 KiB and 58 KiB pass, 54 KiB and 56 KiB do not). The issue's target, TARGET, is met on a port whose garbage
#: collector runs inside a run, as a board's does: tests/test_mp_footprint_unix32.py.
HEAP_CAP = {"cryptolib": 58 * 1024, "pure": 60 * 1024}

pytestmark = pytest.mark.interop


def _mpy_cross(src: Path, out: Path, name: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # -O3, as iotdtls-provision bundle compiles: no line numbers (smaller code, in flash and in the heap)
    subprocess.run([sys.executable, "-m", "mpy_cross", "-O3", "-s", name, "-o", str(out), str(src)], check=True,
                   timeout=60)


def compile_device(dest: Path, wasm: bool = True) -> int:
    """Every device file as .mpy under dest, and with ``wasm`` the WebAssembly runner's socket shim and this test's
    stepping device; the device files' total size."""
    total = 0
    for src in sorted(MP_DIR.rglob("*.py")):
        rel = src.relative_to(MP_DIR)
        out = dest / rel.with_suffix(".mpy")
        _mpy_cross(src, out, rel.as_posix())  # the name a board's copy has, whatever this checkout's path
        total += out.stat().st_size
    if not wasm:
        return total
    _mpy_cross(ROOT / "tests" / "mpwasm" / "socket.py", dest / "socket.mpy", "socket.py")
    _mpy_cross(ROOT / "tests" / "mp_footprint_device.py", dest / "mp_footprint_device.mpy", "mp_footprint_device.py")
    return total


def run_footprint(tmp: Path, port: int, heap: int,
                  cryptolib: bool = True) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    mpy = tmp / "mpy"
    run = tmp / "run"
    run.mkdir(exist_ok=True)
    (run / "dev.json").write_text(json.dumps({"host": LOCALHOST, "port": port, "identity": "dev1", "psk": KEY_HEX,
                                              "interval": 0}))
    (run / "fp.py").write_text("from mp_footprint_device import mpwasm_step\n")  # the stub: the rest is .mpy
    opts = ["--cryptolib"] if cryptolib else []
    r = subprocess.run(["node", str(RUNNER), "--heap", str(heap), "--fixed-heap", "--heap-report", *opts, "--path",
                        str(mpy), "fp.py", "dev.json"], capture_output=True, text=True, timeout=120, cwd=str(run))
    lines = r.stdout.strip().splitlines()
    return r, json.loads(lines[-1]) if r.returncode == 0 and lines else None


@pytest.mark.parametrize("aes", ["cryptolib", "pure"])
def test_boot_from_mpy_handshake_cid_and_post_under_a_real_cap(tmp_path: Path, aes: str) -> None:
    require_peer("node + tests/mpwasm/node_modules (npm ci --prefix tests/mpwasm)",
                 shutil.which("node") is not None and NODE_MODULES.is_dir())
    size = compile_device(tmp_path / "mpy")
    cap = HEAP_CAP[aes]
    with CidServer(cid_length=4, record_size_limit=512) as srv:
        r, m = run_footprint(tmp_path, srv.port, cap, cryptolib=aes == "cryptolib")
        assert m is not None, r.stdout + r.stderr
        assert m["result"] == "ok" and m["code"] == 68 and m["handshakes"] == 1 and m["cid"] == 4, m
        assert m["cryptolib"] is (aes == "cryptolib")
        assert srv.log.handshakes and srv.log.handshakes[0].cid  # the server gave the device a CID
        report = [x for x in r.stderr.splitlines() if x.startswith("mpwasm-heap:")]
        assert report and "end_total=" in report[0]
        initial = int(report[0].split("initial_total=")[1].split()[0])
        end = int(report[0].split("end_total=")[1].split()[0])
        assert end == initial  # the heap did not grow: the cap held
        total = m["base"] + m["peak"]
        print(f"\nMEASURED [{aes}] .mpy {size} B; runner base {m['base']} B (socket shim {m['shim']} B more); "
              f"import of the device code (live) {m['import']} B, by module {m['modules']}; peak (live + garbage of "
              f"one run) {m['peak']} B at step {m['top']}; live after the POST {m['live']} B; heap needed {total} B "
              f"of the cap {cap} ({initial} B usable); target {TARGET}", flush=True)
        assert total <= initial
