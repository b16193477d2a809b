"""Footprint of the device code on a real 32-bit MicroPython with its ordinary garbage collector: the unix port for
i386 from Debian 13 (MicroPython 1.25, tests/mpunix/install.sh), with the heap fixed by ``-X heapsize``.

``micropython/main.py`` itself runs, booting from ``.mpy`` files compiled here by mpy-cross (nothing of the test in
between: the port's own socket, hashlib and cryptolib, as on a board), against iotdtls's DTLSServer with a 4-byte
Connection ID, record_size_limit and a session cache: boot 1 makes a full handshake and posts one confirmable
reading, stores the session in its config file; boot 2 resumes it (an abbreviated handshake) and posts again. The
issue's target: both within a 48 KiB heap. The WebAssembly port (tests/test_mp_footprint.py) frees garbage only
between top-level runs, so it gives an upper bound; this port collects when an allocation fails, as boards do.

Figures print with a ``MEASURED`` prefix (``pytest -s``): the import heap by module, and the smallest heap (in
1 KiB steps) that each boot passes with.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mp_cid_server import CidServer
from mp_fixtures import KEY_HEX
from peers import LOCALHOST, require_peer
from test_mp_footprint import compile_device

WRAPPER = Path(os.environ.get("IOTDTLS_MPUNIX32", "/opt/iotdtls-ci/mpunix32/micropython32"))
TARGET_KIB = 48
#: boot main.py from .mpy, one reading, then the heap left (collected) and the session it stored
BOOT = """import gc, sys
import main
r = main.main(["main.py", sys.argv[1], "--count", "1"])
gc.collect()
print("HEAP", gc.mem_alloc(), gc.mem_free())
sys.exit(r)
"""
IMPORTS = """import gc
gc.collect()
b = gc.mem_alloc()
print("BASE", b)
for m in ("iotdtls_mp.aes", "iotdtls_mp.ccm", "iotdtls_mp.prf", "iotdtls_mp.dtls", "iotdtls_mp.coap",
          "iotdtls_mp.cbor", "iotdtls_mp.coaps", "main"):
    __import__(m)
    gc.collect()
    a = gc.mem_alloc()
    print("IMPORT", m, a - b)
    b = a
"""

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def mpy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    require_peer("32-bit MicroPython unix port (bash tests/mpunix/install.sh)", WRAPPER.is_file())
    dest = tmp_path_factory.mktemp("mpy32")
    return dest, compile_device(dest, wasm=False)


def micropython(mpy_dir: Path, heap_kib: int, code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(WRAPPER), "-X", f"heapsize={heap_kib}K", "-c", code, *args], capture_output=True,
                          text=True, timeout=120, cwd=str(cwd), env={"MICROPYPATH": str(mpy_dir), "PATH": "/usr/bin"})


def write_config(path: Path, port: int, **more: Any) -> Path:
    path.write_text(json.dumps({"host": LOCALHOST, "port": port, "identity": "dev1", "psk": KEY_HEX, "interval": 0,
                                "tries": 1, "handshake_timeout": 10, **more}))
    path.chmod(0o600)
    return path


def boot(mpy_dir: Path, heap_kib: int, cfg: Path) -> tuple[bool, str]:
    """One boot of main.py --count 1 within heap_kib; (exit 0 and a 2.04, what it printed)."""
    r = micropython(mpy_dir, heap_kib, BOOT, str(cfg), cwd=cfg.parent)
    out = r.stdout + r.stderr
    return r.returncode == 0 and "2.04" in r.stdout.splitlines(), out


def smallest(mpy_dir: Path, cfg: Path, session: str | None, lo: int = 24, hi: int = TARGET_KIB) -> int:
    """The smallest heap (KiB) a boot passes with, the config's session reset to `session` before each try."""
    base = json.loads(cfg.read_text())
    while lo < hi:
        mid = (lo + hi) // 2
        c = dict(base)
        c.pop("session", None)
        if session is not None:
            c["session"] = session
        cfg.write_text(json.dumps(c))
        if boot(mpy_dir, mid, cfg)[0]:
            hi = mid
        else:
            lo = mid + 1
    return lo


@pytest.mark.parametrize("tickets", [False, True], ids=["session-id", "ticket"])
def test_boot_handshake_cid_post_and_resume_within_48k(tmp_path: Path, mpy: tuple[Path, int], tickets: bool) -> None:
    mpy_dir, size = mpy
    with CidServer(cid_length=4, record_size_limit=512) as srv:
        cfg = write_config(tmp_path / "config.json", srv.port, tickets=tickets)
        ok, out = boot(mpy_dir, TARGET_KIB, cfg)
        assert ok, out
        stored = json.loads(cfg.read_text())
        assert stored.get("session"), stored.keys()  # kept for the next boot
        ok, out = boot(mpy_dir, TARGET_KIB, cfg)
        assert ok, out
        hs = srv.log.handshakes
        assert [h.resumed for h in hs] == [False, True], hs
        assert all(h.cid and len(h.cid) == 4 for h in hs)  # the device sends with the server's CID
        assert len(srv.log.data) == 2
        full = smallest(mpy_dir, cfg, None)
        resumed = smallest(mpy_dir, cfg, stored["session"])
    imports = micropython(mpy_dir, 256, IMPORTS, cwd=tmp_path).stdout.split()
    by_module = {imports[k + 1]: int(imports[k + 2]) for k in range(2, len(imports), 3)}
    print(f"\nMEASURED [unix port, i386, real GC, {'tickets' if tickets else 'session ID'}] .mpy {size} B; "
          f"interpreter at start {imports[1]} B; import heap {sum(by_module.values())} B "
          f"({', '.join(f'{k.split(chr(46))[-1]} {v}' for k, v in by_module.items())}); smallest heap that passes: "
          f"full handshake + POST {full} KiB, resumed + POST {resumed} KiB; target {TARGET_KIB} KiB", flush=True)
    assert full <= TARGET_KIB and resumed <= TARGET_KIB
