"""The MicroPython (WebAssembly) runner tests/mpwasm/run.mjs: exit codes, argv, blocking UDP sockets, --heap.

Needs `node` and `npm ci --prefix tests/mpwasm` (skipped otherwise, or failed under IOTDTLS_REQUIRE_PEERS=1).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import LOCALHOST, PeerProcess, free_udp_port, require_peer, run_peer

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tests" / "mpwasm" / "run.mjs"
NODE_MODULES = ROOT / "tests" / "mpwasm" / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
TIMEOUT = 20


@pytest.fixture(autouse=True)
def _need_node() -> None:
    require_peer(
        "node + tests/mpwasm/node_modules (npm ci --prefix tests/mpwasm)",
        shutil.which("node") is not None and NODE_MODULES.is_dir(),
    )


def _script(tmp_path: Path, body: str, name: str = "main.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(RUNNER), *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd
    )


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A CPython UDP echo server on 127.0.0.1 (in a thread); yields its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCALHOST, 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            sock.sendto(data, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def test_exit_codes_and_main(tmp_path: Path) -> None:
    ok = _script(tmp_path, 'assert __name__ == "__main__"\nprint("done")\n', "ok.py")
    r = _run(ok)
    assert (r.returncode, r.stdout, r.stderr) == (0, "done\n", "")
    r = _run(_script(tmp_path, "raise SystemExit(3)\n", "three.py"))
    assert r.returncode == 3
    r = _run(_script(tmp_path, "import sys\nsys.exit('bad config')\n", "msg.py"))
    assert (r.returncode, r.stderr) == (1, "bad config\n")
    r = _run(_script(tmp_path, "def f():\n    1 // 0\nprint('before')\nf()\n", "boom.py"))
    assert r.returncode == 1
    assert r.stdout == "before\n"
    assert "Traceback" in r.stderr and "ZeroDivisionError" in r.stderr and 'boom.py", line 2' in r.stderr


def test_argv_path_and_cwd(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "pkg" / "__init__.py").write_text("VALUE = 42\n")
    app = tmp_path / "app"
    app.mkdir()
    (app / "helper.py").write_text("NAME = 'helper'\n")
    (app / "config.json").write_text('{"a": 1}\n')
    (tmp_path / "extra.txt").write_text("from arg\n")
    script = _script(
        app,
        """\
        import json, sys
        import helper, pkg
        print(sys.argv)
        print(helper.NAME, pkg.VALUE, json.load(open("config.json"))["a"], open(sys.argv[2]).read().strip())
    """,
    )
    r = _run("--path", lib, script, "x y", "extra.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"[{str(script)!r}, 'x y', 'extra.txt']", "helper 42 1 from arg"]


def test_udp_echo_all_byte_values(tmp_path: Path, echo_server: int) -> None:
    script = _script(
        tmp_path,
        """\
        import socket, sys
        ai = socket.getaddrinfo("localhost", int(sys.argv[1]), 0, socket.SOCK_DGRAM)[0]
        s = socket.socket(ai[0], socket.SOCK_DGRAM)
        s.settimeout(2)
        payload = bytes(range(256)) * 4
        for size in (0, 1, 256, 1024):
            assert s.sendto(payload[:size], ai[-1]) == size
            data, addr = s.recvfrom(2048)
            assert data == payload[:size], (size, data)
            assert addr == ai[-1], addr
        s.connect(ai[-1])
        s.send(b"\\x00\\xff")
        assert s.recv(1) == b"\\x00"  # truncated to n, like a UDP recv
        s.close()
        print("ok")
    """,
    )
    r = _run(script, echo_server)
    assert (r.returncode, r.stdout, r.stderr) == (0, "ok\n", "")


def test_recv_timeout_and_nonblocking(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """\
        import socket, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        t = time.ticks_ms()
        try:
            s.recv(100)
        except OSError as e:
            print("timeout", e.args[0], time.ticks_diff(time.ticks_ms(), t) >= 190)
        s.setblocking(False)
        try:
            s.recvfrom(100)
        except OSError as e:
            print("empty", e.args[0])
        s.close()
        try:
            s.recv(1)
        except OSError as e:
            print("closed", e.args[0])
    """,
    )
    r = _run(script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["timeout 110 True", "empty 11", "closed 9"]


def test_two_sockets_and_queue_bound(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """\
        import socket, time
        a = socket.socket(); a.bind(("127.0.0.1", 0))
        b = socket.socket(); b.bind(("127.0.0.1", 0))
        b.connect(a.getsockname())
        for i in range(100):
            b.send(bytes([i]))
        a.sendto(b"to b", b.getsockname())
        time.sleep_ms(200)  # everything arrives while Python is not in recv: queued, at most 64 per socket
        a.settimeout(0)
        got = []
        try:
            while True:
                got.append(a.recv(10)[0])
        except OSError as e:
            print(e.args[0])
        print(got == list(range(64)), b.recvfrom(10) == (b"to b", a.getsockname()))
        c = socket.socket()
        try:
            c.bind(a.getsockname())
        except OSError as e:
            print("in use", e.args[0])
    """,
    )
    r = _run(script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["11", "True True", "in use 98"]


def test_blocking_recv_and_line_output(tmp_path: Path) -> None:
    """Output lines appear while the script blocks in recv(); a datagram sent later wakes it up."""
    port = free_udp_port()
    script = _script(
        tmp_path,
        """\
        import socket, sys
        s = socket.socket()
        s.bind(("127.0.0.1", int(sys.argv[1])))
        print("listening")
        data, addr = s.recvfrom(100)
        s.sendto(bytes(reversed(data)), addr)
        print("got", data.decode())
    """,
    )
    with run_peer("mpwasm", ["node", str(RUNNER), str(script), str(port)], listen_port=port) as peer:
        assert isinstance(peer, PeerProcess)
        peer.expect_line("listening")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            c.sendto(b"hello", (LOCALHOST, port))
            assert c.recv(100) == b"olleh"
        peer.expect_line("got hello")
        assert peer.wait_exit() == 0


def test_heap_option_and_random_seeded(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """\
        import gc, random
        print(gc.mem_alloc() > 0, random.getrandbits(30))
    """,
    )
    r1 = _run("--heap", 65536, "--heap-report", script)
    r2 = _run("--heap", 65536, script)
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    assert r1.stdout.startswith("True ") and r1.stdout != r2.stdout  # seeded from Node's crypto per run
    assert "mpwasm-heap: requested=65536 initial_total=64000 " in r1.stderr
    assert r2.stderr == ""


def test_fixed_heap_is_a_real_cap(tmp_path: Path) -> None:
    """--fixed-heap: an allocation past --heap raises MemoryError instead of growing the heap (split heap)."""
    script = _script(
        tmp_path,
        """\
        import sys
        try:
            b = bytearray(int(sys.argv[1]))
            print("ok")
        except MemoryError:
            print("MemoryError")
    """,
    )
    grown = _run("--heap", 49152, script, "60000")
    assert grown.returncode == 0 and grown.stdout.strip() == "ok", grown.stderr
    capped = _run("--heap", 49152, "--fixed-heap", "--heap-report", script, "60000")
    assert capped.returncode == 0 and capped.stdout.strip() == "MemoryError", capped.stderr
    assert "initial_total=48000 end_total=48000 " in capped.stderr
    fits = _run("--heap", 49152, "--fixed-heap", script, "20000")
    assert fits.returncode == 0 and fits.stdout.strip() == "ok", fits.stderr


def test_device_package_ccm_vector(tmp_path: Path) -> None:
    """The device package imports under the real MicroPython (`--path micropython`): RFC 3610 packet vector #1."""
    script = _script(
        tmp_path,
        """\
        from binascii import hexlify
        from iotdtls_mp import aes, ccm
        enc = aes.new_ecb(bytes(range(0xC0, 0xD0)))
        nonce = bytes.fromhex("00000003020100a0a1a2a3a4a5")
        data = bytes(range(31))
        sealed = ccm.seal(enc, nonce, data[:8], data[8:], 8)
        print(hexlify(sealed).decode())
        print("open", ccm.open(enc, nonce, data[:8], sealed, 8) == data[8:], aes.cryptolib)
    """,
    )
    r = _run("--path", "micropython", script, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == "588c979a61c663d2f066d0c2c0f989806d5f6b61dac38417e8d12cfdf926e0\nopen True None\n"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
