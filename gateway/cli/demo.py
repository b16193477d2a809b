"""``iotdtls-gateway demo``: a gateway in a temporary data dir, devices provisioned with iotdtls-provision, and
the MicroPython device client (micropython/main.py, run by CPython) posting readings to it, one of them through
a lossy relay. Readings are shown as the gateway commits them; a summary ends the run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from iotdtls.netem import Impairment, LinkProfile, NetemProxy

from ..config import load
from ..logs import setup
from ..spool import SpoolStore

MICROPYTHON = Path(__file__).resolve().parents[2] / "micropython"
#: Timers of the demo devices: shorter than a board's defaults, so that the lossy one finishes in seconds.
DEVICE_TIMERS = {"ack_timeout": 0.5, "retransmit_initial": 0.5, "handshake_timeout": 60, "backoff_max": 2,
                 "tries": 8, "interval": 0.3}


def say(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_demo(args: argparse.Namespace) -> int:
    if not (MICROPYTHON / "main.py").is_file():
        print("iotdtls-gateway: the demo runs the device client from a checkout of the repository "
              f"(micropython/main.py not found at {MICROPYTHON}); install with pip install -e", file=sys.stderr)
        return 1
    if not 1 <= args.devices <= 50 or not 1 <= args.readings <= 100 or not 0 <= args.loss < 1:
        print("iotdtls-gateway: demo: --devices 1-50, --readings 1-100, --loss 0 to below 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="iotdtls-gateway-demo-") as tmp:
        return asyncio.run(_demo(Path(tmp), args))


async def _demo(tmp: Path, args: argparse.Namespace) -> int:
    os.umask(0o077)
    port = free_port()
    config_path = tmp / "gateway.toml"
    mqtt = f'\n[mqtt]\nurl = "{args.mqtt}"\n' if args.mqtt else ""
    config_path.write_text(f'data_dir = "data"\n\n[coaps]\nbind = "127.0.0.1:{port}"\n{mqtt}')
    say(f"iotdtls-gateway demo in {tmp}\n\n1. Provisioning {args.devices} devices with iotdtls-provision:")
    devices = [f"sensor-{i + 1}" for i in range(args.devices)]
    for device in devices:
        argv = [sys.executable, "-m", "iotdtls_gateway.cli.provision", "--config", str(config_path), "add", device,
                "--device-config", str(tmp / f"{device}.json"), "--host", "127.0.0.1"]
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        say(f"   $ iotdtls-provision --config gateway.toml add {device} --device-config {device}.json "
            f"--host 127.0.0.1\n     {out.decode().strip()}")
        if proc.returncode:
            return 1
    setup("text", "warning")
    from ..service import Gateway, StartError

    stored: list[tuple[float, str, str, bool]] = []
    started = time.monotonic()

    def on_stored(device: str, msg_id: str, duplicate: bool) -> None:
        stored.append((time.monotonic() - started, device, msg_id, duplicate))
        tag = "a resend, answered again, stored once" if duplicate else "committed to the spool"
        say(f"   {time.monotonic() - started:6.2f} s  {device}: reading {msg_id[:12]}... {tag}")

    gateway = Gateway(load(config_path), on_stored=on_stored)
    try:
        await gateway.start()
    except StartError as exc:
        print(f"iotdtls-gateway: {exc}", file=sys.stderr)
        return 1
    lossy = devices[-1] if args.loss > 0 else None
    proxy = None
    if lossy is not None:
        profile = LinkProfile(loss=args.loss)
        proxy = NetemProxy(("127.0.0.1", port), Impairment(profile, profile, seed=args.seed))
        _, proxy_port = await proxy.start()
    say(f"\n2. Gateway serving coaps://127.0.0.1:{port} (registry and spool in {tmp / 'data'}); "
        f"{'uplink ' + args.mqtt if args.mqtt else 'no broker: readings stay in the spool'}.")
    say(f"\n3. {args.devices} devices (micropython/main.py on CPython) post {args.readings} CBOR readings each"
        + (f"; {lossy} through a relay losing {args.loss:.0%} of the datagrams each way" if lossy else "") + ":")
    procs = []
    for device in devices:
        cfg_path = tmp / f"{device}.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.update(DEVICE_TIMERS)
        if device == lossy:
            cfg["port"] = proxy_port
        cfg_path.write_text(json.dumps(cfg))
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, str(MICROPYTHON / "main.py"), str(cfg_path), "--count", str(args.readings),
            cwd=str(MICROPYTHON), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT))
    answers = await asyncio.gather(*(_device_output(device, p) for device, p in zip(devices, procs, strict=True)))
    await asyncio.sleep(0.2)
    spool = gateway.writer.totals if gateway.writer else None
    uplink = dict(getattr(gateway.uplink, "stats", {}) or {})
    await gateway.stop()
    if proxy is not None:
        proxy.close()
    ok = sum(a.count("2.04") for a in answers)
    say(f"\n4. Summary after {time.monotonic() - started:.1f} s:")
    say(f"   readings acknowledged (2.04): {ok} of {args.devices * args.readings}")
    say(f"   readings committed: {sum(1 for s in stored if not s[3])}, resends recognised: "
        f"{sum(1 for s in stored if s[3])}")
    if proxy is not None:
        st = proxy.impairment_stats
        say(f"   lossy relay: {st.c2s.lost} of {st.c2s.datagrams} datagrams lost towards the gateway, "
            f"{st.s2c.lost} of {st.s2c.datagrams} back")
    if args.mqtt:
        say(f"   published to {args.mqtt}: {uplink.get('acknowledged', 0)} acknowledged by the broker")
    if spool is not None:
        say(f"   spool: {spool.messages} messages waiting" + (" for the broker" if args.mqtt else
                                                              " (no broker given: they stay in the spool)"))
        rows = SpoolStore(tmp / "data" / "spool.sqlite3").read(0, 2)
        if rows:
            say("   the first envelopes, as `iotdtls-gateway spool --json` exports them and MQTT carries them:")
            for row in rows:
                say("     " + row.body.decode())
    return 0 if ok == args.devices * args.readings else 1


async def _device_output(device: str, proc: asyncio.subprocess.Process) -> list[str]:
    lines: list[str] = []
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        text = line.decode(errors="replace").strip()
        lines.append(text)
    with contextlib.suppress(ProcessLookupError):
        await proc.wait()
    if proc.returncode:
        say(f"   {device}: exited {proc.returncode}: {lines[-1] if lines else ''}")
    return lines
