"""The device firmware (micropython/main.py) on the real MicroPython 1.27 (WebAssembly port, under Node.js through
tests/mpwasm/run.mjs) with real UDP sockets, against a real ``iotdtls-coap-server`` (and through ``iotdtls-netem``).

Needs `node` and `npm ci --prefix tests/mpwasm` (skipped otherwise, or failed under IOTDTLS_REQUIRE_PEERS=1). The
wasm MicroPython has no cryptolib: the pure-Python AES of iotdtls_mp runs. Measured numbers (run times, datagram
and loss counts, recovery time, heap) are printed with a ``MEASURED`` prefix (see them with ``pytest -s``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import aiocoap
import pytest
from mp_driver import UdpRelay
from mp_fixtures import (
    KEY_HEX,
    bounded_wait_on_wire,
    key_lines,
    key_server,
    parse_key,
    telemetry_server,
    write_credentials,
)
from peers import LOCALHOST, PeerProcess, datagram_sizes, free_udp_port, netem_proxy, require_peer, run_peer

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tests" / "mpwasm" / "run.mjs"
NODE_MODULES = ROOT / "tests" / "mpwasm" / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
MAIN = "micropython/main.py"  # relative to ROOT (the cwd of every run)
WRONG_HEX = "0f0e0d0c0b0a09080706050403020100"
SESSION_LINE = "DTLS session with"
# Device timers scaled down for the lossy runs (the defaults are seconds to minutes).
FAST = {"retransmit_initial": 0.3, "ack_timeout": 0.3, "handshake_timeout": 30, "tries": 5, "interval": 0}
LOSS_SEEDS = (1, 2, 3, 4, 5)


@pytest.fixture(autouse=True)
def _need_node() -> None:
    require_peer(
        "node + tests/mpwasm/node_modules (npm ci --prefix tests/mpwasm)",
        shutil.which("node") is not None and NODE_MODULES.is_dir(),
    )


def measured(what: str) -> None:
    print(f"MEASURED {what}", flush=True)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    return write_credentials(tmp_path)




def config(tmp_path: Path, port: int, **extra: object) -> Path:
    cfg: dict[str, object] = {"host": LOCALHOST, "port": port, "identity": "dev1", "psk": KEY_HEX, "interval": 0.2}
    cfg.update(extra)
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(cfg))
    return path


def run_device(cfg: Path, count: int, timeout: float = 30.0,
               micropython: str = "") -> tuple[subprocess.CompletedProcess[str], float]:
    """`node run.mjs micropython/main.py CFG --count N` to the end; (result, seconds taken).

    micropython="1.23": on MicroPython 1.23.0 (the oldest release of the npm package) instead of 1.27.0."""
    t0 = time.monotonic()
    env = {**os.environ, "MPWASM_MICROPYTHON": micropython}
    r = subprocess.run(["node", str(RUNNER), MAIN, str(cfg), "--count", str(count)],
                       capture_output=True, text=True, timeout=timeout, cwd=str(ROOT), env=env)  # fmt: skip
    return r, time.monotonic() - t0


def readings(server: PeerProcess, n: int, timeout: float = 5.0) -> list[dict[str, object]]:
    """The first `n` JSON lines the server printed (one per /telemetry POST it handled)."""
    return [json.loads(server.read_line(timeout)) for _ in range(n)]


def seen_seqs(server: PeerProcess) -> list[int]:
    """seq of every reading the server printed so far (duplicates possible: a retried reading is a new request)."""
    out = []
    for line in server.stdout.lines:
        msg = json.loads(line)
        assert msg["from"] == "dev1", line
        out.append(msg["reading"]["seq"])
    return out


def sessions(server: PeerProcess) -> int:
    return sum(SESSION_LINE in line for line in server.stderr.lines)


def describe(r: subprocess.CompletedProcess[str], *peers: PeerProcess) -> str:
    return (f"device rc={r.returncode}\n--- device stdout ---\n{r.stdout}--- device stderr ---\n{r.stderr}"
            + "".join(p.transcript() for p in peers))  # fmt: skip


def wait_seqs(server: PeerProcess, want: set[int], timeout: float = 3.0) -> list[int]:
    """The device may exit a moment before the server's line is read: wait for the wanted seqs to show up."""
    deadline = time.monotonic() + timeout
    while True:
        seqs = seen_seqs(server)
        if want <= set(seqs) or time.monotonic() > deadline:
            return seqs
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------------
# 1. the plain run
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("micropython", ["", "1.23"], ids=["mp1.27", "mp1.23"])
def test_three_readings_one_session(tmp_path: Path, creds: Path, micropython: str) -> None:
    port = free_udp_port()
    with telemetry_server(port, creds) as server:
        r, took = run_device(config(tmp_path, port), 3, micropython=micropython)
        assert r.returncode == 0, describe(r, server)
        assert r.stdout == "2.04\n" * 3, describe(r, server)
        got = readings(server, 3)
        assert [m["from"] for m in got] == ["dev1"] * 3
        assert [m["reading"]["seq"] for m in got] == [1, 2, 3]  # type: ignore[index]
        assert all(isinstance(m["reading"]["uptime"], int) for m in got)  # type: ignore[index]
        time.sleep(0.2)
        assert sessions(server) == 1, server.transcript()
    measured(f"plain --count 3 on MicroPython {micropython or '1.27'}: {took:.2f} s (node start + handshake + "
             "3 POSTs, interval 0.2 s)")


# --------------------------------------------------------------------------------------------------
# 2. 30 % loss each way
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", LOSS_SEEDS)
def test_lossy_link(tmp_path: Path, creds: Path, seed: int) -> None:
    port, proxy = free_udp_port(), free_udp_port()
    with (telemetry_server(port, creds) as server,
          netem_proxy(proxy, port, "--loss", "0.3", "--seed", str(seed)) as netem):
        r, took = run_device(config(tmp_path, proxy, **FAST), 5, timeout=40)
        seqs = wait_seqs(server, {1, 2, 3, 4, 5})
        c2s, s2c = datagram_sizes(netem, "c2s"), datagram_sizes(netem, "s2c")
        assert r.returncode == 0, describe(r, server, netem)
        assert r.stdout == "2.04\n" * 5, describe(r, server, netem)
        assert set(seqs) == {1, 2, 3, 4, 5}, describe(r, server, netem)
        n_sessions = sessions(server)
    lost_c2s = sum(fate == "LOST" for _, fate in c2s)
    lost_s2c = sum(fate == "LOST" for _, fate in s2c)
    assert lost_c2s + lost_s2c > 0  # the seeded loss did hit
    measured(f"loss 0.3 seed {seed}: {took:.2f} s, datagrams c2s {len(c2s)} (lost {lost_c2s}), "
             f"s2c {len(s2c)} (lost {lost_s2c}), server sessions {n_sessions}, readings seen {seqs}")  # fmt: skip


def test_lossless_baseline_through_netem(tmp_path: Path, creds: Path) -> None:
    """The same --count 5 through netem without loss: the datagram counts the lossy runs are compared with."""
    port, proxy = free_udp_port(), free_udp_port()
    with telemetry_server(port, creds) as server, netem_proxy(proxy, port) as netem:
        r, took = run_device(config(tmp_path, proxy, **FAST), 5)
        seqs = wait_seqs(server, {1, 2, 3, 4, 5})
        c2s, s2c = datagram_sizes(netem, "c2s"), datagram_sizes(netem, "s2c")
        assert (r.returncode, r.stdout) == (0, "2.04\n" * 5), describe(r, server, netem)
        assert seqs == [1, 2, 3, 4, 5]
        assert sessions(server) == 1
    # c2s: ClientHello, ClientHello+cookie, ClientKeyExchange+CCS+Finished, 5 POSTs, close_notify (9);
    # s2c: HelloVerifyRequest, ServerHello+ServerHelloDone, CCS+Finished, 5 responses, close_notify (9)
    assert all(fate.startswith("delivered") for _, fate in c2s + s2c)
    measured(f"lossless baseline --count 5 via netem: {took:.2f} s, datagrams c2s {len(c2s)}, s2c {len(s2c)}")


# --------------------------------------------------------------------------------------------------
# 3. a 128-byte datagram budget
# --------------------------------------------------------------------------------------------------


LONG_ID = "device-" + "x" * 113  # 120 bytes: the ClientKeyExchange alone no longer fits 128 bytes


def _mtu_run(tmp_path: Path, identity: str, mtu: int | None) -> tuple[list[int], list[int], float]:
    """--count 3 with `identity` through a lossless netem, device and server at `mtu` (None: defaults, 512)."""
    creds = tmp_path / "credentials-mtu.json"
    creds.write_text(json.dumps({f":{identity}": {"dtls": {"psk": {"hex": KEY_HEX},
                                                            "client-identity": {"ascii": identity}}}}))  # fmt: skip
    port, proxy = free_udp_port(), free_udp_port()
    extra = {} if mtu is None else {"mtu": mtu}
    server_args = () if mtu is None else ("--mtu", str(mtu))
    with telemetry_server(port, creds, *server_args) as server, netem_proxy(proxy, port) as netem:
        r, took = run_device(config(tmp_path, proxy, identity=identity, **extra), 3)
        lines = [json.loads(line) for line in (server.read_line() for _ in range(3))]
        c2s, s2c = datagram_sizes(netem, "c2s"), datagram_sizes(netem, "s2c")
        assert (r.returncode, r.stdout) == (0, "2.04\n" * 3), describe(r, server, netem)
        assert [(m["from"], m["reading"]["seq"]) for m in lines] == [(identity, n) for n in (1, 2, 3)]  # type: ignore
        assert sessions(server) == 1
    assert c2s and s2c and all(fate.startswith("delivered") for _, fate in c2s + s2c)
    return [n for n, _ in c2s], [n for n, _ in s2c], took


@pytest.mark.parametrize("identity", ["dev1", LONG_ID], ids=["dev1", "identity120"])
def test_mtu_128(tmp_path: Path, identity: str) -> None:
    """Config "mtu": 128 on the device, --mtu 128 on the server: every datagram either way is <= 128 bytes. With the
    120-byte identity the budget binds: without it the device's ClientKeyExchange flight is one larger datagram."""
    sizes_c2s, sizes_s2c, took = _mtu_run(tmp_path, identity, 128)
    assert max(sizes_c2s) <= 128, sizes_c2s
    assert max(sizes_s2c) <= 128, sizes_s2c
    measured(f"mtu 128 ({identity[:12]}): {took:.2f} s, c2s sizes {sizes_c2s}, s2c sizes {sizes_s2c}")
    if identity == LONG_ID:
        free_c2s, free_s2c, _ = _mtu_run(tmp_path, identity, None)
        assert max(free_c2s) > 128, free_c2s  # the control: the limit is what kept the datagrams small
        measured(f"same identity, default mtu: c2s sizes {free_c2s}, s2c sizes {free_s2c}")


# --------------------------------------------------------------------------------------------------
# 4. a wrong PSK
# --------------------------------------------------------------------------------------------------


def test_wrong_psk(tmp_path: Path, creds: Path) -> None:
    port = free_udp_port()
    with telemetry_server(port, creds) as server:
        # backoff_max caps the back-off between the attempts (2 s, 4 s, ... otherwise)
        r, took = run_device(config(tmp_path, port, psk=WRONG_HEX, tries=2, backoff_max=0.3), 3)
        assert r.returncode == 1, describe(r, server)
        lines = r.stdout.splitlines()
        assert len(lines) == 1, describe(r, server)
        assert lines[0].startswith("error: reading 1 not answered after 2 attempt(s): "), lines
        assert "bad_record_mac" in lines[0], lines
        assert r.stderr == "", r.stderr
        time.sleep(0.2)
        assert seen_seqs(server) == []
        assert sessions(server) == 0, server.transcript()
    measured(f"wrong psk: {took:.2f} s, {lines[0]!r}")


# --------------------------------------------------------------------------------------------------
# 5. the server restarted between readings
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_server_restart(tmp_path: Path, creds: Path, how: str) -> None:
    """The server is stopped (SIGTERM: it closes its sessions with close_notify; SIGKILL: silently) and started
    again on the same port between readings 1 and 2. Every reading is answered: after a close_notify the device
    handshakes again at once; after a silent restart reading 2 goes out over a session the new server does not
    have, its CoAP retransmissions go unanswered, the device drops the session and handshakes again."""
    port = free_udp_port()
    interval = 1.5
    cfg = config(tmp_path, port, interval=interval, ack_timeout=0.2, retransmit_initial=0.3, backoff_max=1)
    argv = ["node", str(RUNNER), MAIN, str(cfg), "--count", "3"]
    times: list[float] = []
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(telemetry_server(port, creds))
        device = stack.enter_context(run_peer("mpwasm main.py", argv, cwd=str(ROOT)))
        device.expect_line("2.04", timeout=10)
        times.append(time.monotonic())
        assert [m["reading"]["seq"] for m in readings(first, 1)] == [1]  # type: ignore[index]
        if how == "sigkill":
            first.proc.kill()
        first.stop()
        t_down = time.monotonic()
        second = stack.enter_context(telemetry_server(port, creds))
        restart = time.monotonic() - t_down
        assert restart < interval, f"the server took {restart:.2f} s to come back: not between readings"
        for _ in range(2):
            device.expect_line("2.04", timeout=20)
            times.append(time.monotonic())
        assert device.wait_exit(10) == 0, device.transcript()
        seqs = wait_seqs(second, {2, 3})
        assert {2, 3} <= set(seqs), second.transcript()
        assert sessions(second) == 1, second.transcript()
        assert sessions(first) == 1, first.transcript()
    recovery = times[1] - times[0] - interval
    if how == "sigterm":  # the close_notify ended the session: a new handshake at once, no CoAP timeout (>= 9.3 s)
        assert recovery < 5, recovery
    measured(f"server restart ({how}): server down+up {restart:.2f} s; reading 2 answered {recovery:.2f} s after "
             f"it was due (interval {interval} s); reading 3 {times[2] - times[1]:.2f} s after reading 2; "
             f"second server saw {seqs}")  # fmt: skip


# --------------------------------------------------------------------------------------------------
# 6. the idempotency key (Uri-Query k=<boot>.<seq>) and the bounded wait for a separate response
# --------------------------------------------------------------------------------------------------

SEPARATE_WAIT = 3  # coaps.SEPARATE_WAIT
ACK_T = 0.5  # the device's ack_timeout here: the wait for a separate response is bounded at 1.5 s
# (mtype, code, mid, token, Uri-Path, Content-Format, Uri-Query, payload), encoded by the device code in MicroPython
# with the options given out of order too, and by aiocoap here
CODEC_CASES = [
    (0, 2, 0x1234, "0a0b0c0d", "telemetry", 60, "k=0123abcd.1", "a266757074696d650063736571 01"),
    (0, 2, 0xFFFF, "01", "telemetry", 60, "k=89abcdef.123456789", ""),
    (0, 3, 7, "", "a/b/c", 60, "k=00000000.4294967295&x=1&y=", "00"),
    (1, 2, 0, "0102030405060708", "sensors/t1", None, "q=" + "v" * 300, "ff" * 20),
]


def test_coap_encoding_in_micropython(tmp_path: Path) -> None:
    """coap.encode with Uri-Path segments, Content-Format and Uri-Query options, in order and out of order, in the
    real MicroPython: byte-identical with aiocoap (MicroPython's sort is not stable: a sort by option number alone
    reorders repeated options)."""
    script = tmp_path / "codec.py"
    script.write_text(textwrap.dedent(f"""\
        from binascii import hexlify, unhexlify
        from iotdtls_mp import coap
        for t, code, mid, tok, path, cf, q, pl in {CODEC_CASES!r}:
            cfs = coap.content_format(cf) if cf is not None else []
            tok, pl = unhexlify(tok), unhexlify(pl.replace(" ", ""))
            a = coap.encode(t, code, mid, tok, coap.uri_path(path) + cfs + coap.uri_query(q), pl)
            b = coap.encode(t, code, mid, tok, coap.uri_query(q) + cfs + coap.uri_path(path), pl)
            print(str(hexlify(a), "ascii"), a == b)
    """))
    r = subprocess.run(["node", str(RUNNER), "--path", "micropython", str(script)],
                       capture_output=True, text=True, timeout=30, cwd=str(ROOT))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.split("\n")[:-1]
    assert len(lines) == len(CODEC_CASES), r.stdout
    for (t, code, mid, tok, path, cf, q, pl), line in zip(CODEC_CASES, lines, strict=True):
        want = aiocoap.Message(code=aiocoap.numbers.codes.Code(code), uri_path=tuple(path.split("/")),
                               uri_query=tuple(x for x in q.split("&") if x), payload=bytes.fromhex(pl))
        if cf is not None:
            want.opt.content_format = cf
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # setting mtype, mid and token is deprecated in aiocoap
            want.mtype, want.mid, want.token = aiocoap.numbers.types.Type(t), mid, bytes.fromhex(tok)
            want_hex = want.encode().hex()
        assert line == want_hex + " True", (line, want_hex)
        assert aiocoap.Message.decode(bytes.fromhex(want_hex)).opt.uri_query == tuple(x for x in q.split("&") if x)


def test_key_per_reading_and_per_boot(tmp_path: Path, creds: Path) -> None:
    port = free_udp_port()
    with key_server(port, creds) as server:
        boots = []
        for _ in range(2):  # two boots of the device
            r, _ = run_device(config(tmp_path, port), 2)
            assert (r.returncode, r.stdout) == (0, "2.04\n" * 2), describe(r, server)
            got = key_lines(server, 2)
            keys = [parse_key(m["query"]) for m in got]  # type: ignore[arg-type]
            assert [seq for _, seq in keys] == [m["reading"]["seq"] for m in got] == [1, 2]  # type: ignore[index]
            assert keys[0][0] == keys[1][0]
            boots.append(keys[0][0])
    assert boots[0] != boots[1]
    measured(f"idempotency keys on MicroPython: boot ids {boots}")


def test_no_separate_response_session_replaced_same_key(tmp_path: Path, creds: Path) -> None:
    """The server answers reading 1 with an empty ACK and never with the response: SEPARATE_WAIT x ack_timeout after
    the empty ACK the device replaces the session and resends reading 1 (same key, same payload, new MID and token),
    which the same server answers on the new session. One attempt per reading (tries 1)."""
    port = free_udp_port()
    with key_server(port, creds, hang=1) as server, UdpRelay(port) as relay:
        r, took = run_device(config(tmp_path, relay.port, ack_timeout=ACK_T, tries=1, interval=0), 2)
        assert (r.returncode, r.stdout) == (0, "2.04\n" * 2), describe(r, server)
        got = key_lines(server, 3)
        time.sleep(0.1)
        assert sessions(server) == 2, server.transcript()
    assert [m["hang"] for m in got] == [True, False, False]
    keys = [parse_key(m["query"]) for m in got]  # type: ignore[arg-type]
    assert keys[0] == keys[1] and keys[2] == (keys[0][0], 2)
    assert got[0]["reading"] == got[1]["reading"] and got[0]["token"] != got[1]["token"]
    waited, sent, to_hello = bounded_wait_on_wire(relay.log)
    assert sent == 1 and to_hello < 0.2
    assert SEPARATE_WAIT * ACK_T - 0.05 <= waited < SEPARATE_WAIT * ACK_T + 0.5
    measured(f"empty ACK and no response: session replaced {waited:.2f} s after the empty ACK (bound "
             f"{SEPARATE_WAIT} x {ACK_T} s), --count 2 {took:.2f} s")


def test_gateway_crash_after_empty_ack(tmp_path: Path, creds: Path) -> None:
    """The gateway sends the empty ACK for reading 1, is killed (-9) and started again: the device replaces the
    session at the bound and the new gateway gets reading 1 with the key the first one saw."""
    port = free_udp_port()
    with contextlib.ExitStack() as stack:
        relay = stack.enter_context(UdpRelay(port))
        cfg = config(tmp_path, relay.port, ack_timeout=ACK_T, tries=1, interval=0)
        first = stack.enter_context(key_server(port, creds, hang=1))
        device = stack.enter_context(run_peer("mpwasm main.py", ["node", str(RUNNER), MAIN, str(cfg), "--count", "2"],
                                              cwd=str(ROOT)))  # fmt: skip
        [m1] = key_lines(first, 1, timeout=15)
        deadline = time.monotonic() + 2
        while not any(way == "s2c" and d[0] == 23 for _, way, d in relay.log):  # the empty ACK
            assert time.monotonic() < deadline, first.transcript()
            time.sleep(0.01)
        first.proc.kill()
        first.stop()
        second = stack.enter_context(key_server(port, creds))
        device.expect_line("2.04", timeout=10)
        device.expect_line("2.04", timeout=10)
        assert device.wait_exit(10) == 0, device.transcript()
        m2, m3 = key_lines(second, 2)
    assert m1["hang"] and not m2["hang"]
    assert parse_key(m2["query"]) == parse_key(m1["query"]) and m2["reading"] == m1["reading"]  # type: ignore
    assert parse_key(m3["query"])[1] == 2  # type: ignore[arg-type]
    waited, sent, _ = bounded_wait_on_wire(relay.log)
    assert sent == 1 and SEPARATE_WAIT * ACK_T - 0.05 <= waited < SEPARATE_WAIT * ACK_T + 0.5
    measured(f"gateway killed after its empty ACK: session replaced {waited:.2f} s after it, reading 1 resent with "
             f"key {m1['query']}")


# --------------------------------------------------------------------------------------------------
# 7. heap taken by importing the device code
# --------------------------------------------------------------------------------------------------


def test_import_heap(tmp_path: Path) -> None:
    script = tmp_path / "heap.py"
    # this port frees garbage only between top-level runs: import in one step, measure in the next
    script.write_text(textwrap.dedent("""\
        import gc
        gc.collect()
        STATE = [gc.mem_alloc(), 0, None]


        def mpwasm_step():
            STATE[1] += 1
            if STATE[1] == 1:
                import main
                STATE[2] = main.__file__
                return True
            gc.collect()
            print(gc.mem_alloc() - STATE[0])
            print(STATE[2])
            return False
    """))  # fmt: skip
    r = subprocess.run(["node", str(RUNNER), "--path", "micropython", str(script)],
                       capture_output=True, text=True, timeout=30, cwd=str(ROOT))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    used, where = r.stdout.splitlines()
    assert where.endswith("/micropython/main.py"), where
    measured(f"heap taken by `import main` (from .py source, MicroPython 1.27 wasm): {int(used)} bytes")
    assert 0 < int(used) < 44 * 1024  # ~42 KB measured with 1.27 (CID, record_size_limit, resumption included)



# --------------------------------------------------------------------------------------------------
# 8. the heap target of the issue: a handshake + one POST within 32 KiB (benchmarks/bench_mp.py's replay)
# --------------------------------------------------------------------------------------------------


def test_handshake_and_post_heap_within_32_kib(tmp_path: Path) -> None:
    from benchmarks import bench_mp

    bench_mp.record_transcript(tmp_path / "transcript.json")
    r = bench_mp.run_device(["transcript.json", "replay"], tmp_path)
    assert r["ok"], r
    measured(f"peak heap of handshake + POST (upper bound): {r['peak_live']} B; steps {r['steps']}")
    assert 0 < r["peak_live"] <= 32 * 1024


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))
