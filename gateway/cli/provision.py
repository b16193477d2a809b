"""iotdtls-provision: device identities and keys in the gateway's registry.

    iotdtls-provision (--config GATEWAY.toml | --registry FILE) add DEVICE [--psk-identity ID | --key PEM|FINGERPRINT]
                      [--device-config OUT.json [--host H] [--port P]]
    iotdtls-provision ... list [--json]
    iotdtls-provision ... show DEVICE
    iotdtls-provision ... revoke DEVICE

A thin layer over :mod:`iotdtls_gateway.registry`. Keys are never printed: ``add`` writes the device's config
(with its key) to a 0600 file when asked, and prints only the identity. Errors are one line, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from iotdtls.keys import write_secret_file

from ..config import ConfigError, load
from ..registry import Device, Registry, RegistryError

PROG = "iotdtls-provision"


def fail(message: str, status: int = 2) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(status)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Add, list, show and revoke the gateway's devices.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", metavar="GATEWAY.toml", help="the gateway's configuration (its data_dir)")
    where.add_argument("--registry", metavar="FILE", help="a registry file (registry.sqlite3)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = sub.add_parser("add", help="add a device with a new random PSK (or a raw public key)")
    add.add_argument("device")
    cred = add.add_mutually_exclusive_group()
    cred.add_argument("--psk-identity", metavar="ID", help="PSK identity (default: the device id)")
    cred.add_argument("--key", metavar="PEM|FINGERPRINT",
                      help="register the device by its raw public key: a PEM/DER file or a SHA-256 fingerprint "
                      "(hex or ni:///sha-256;...)")
    add.add_argument("--device-config", metavar="OUT.json",
                     help="write the config.json that micropython/main.py reads (with the key; mode 0600)")
    add.add_argument("--host", help="gateway address for --device-config (default: the coaps bind address)")
    add.add_argument("--port", type=int, help="gateway port for --device-config (default: the coaps port)")
    lst = sub.add_parser("list", help="list the devices")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    show = sub.add_parser("show", help="show one device (never its key)")
    show.add_argument("device")
    revoke = sub.add_parser("revoke", help="revoke a device: its handshakes fail from then on")
    revoke.add_argument("device")
    return p


def describe(device: Device) -> dict[str, Any]:
    """What may be shown of a device: everything but secrets."""
    return {"device": device.id, "state": device.state, "metadata": device.metadata,
            "credentials": [{"kind": c.kind, "identity": c.label, "not_before": c.not_before,
                             "not_after": c.not_after} for c in device.credentials]}


def open_registry(args: argparse.Namespace) -> tuple[Registry, tuple[str, int] | None]:
    bind: tuple[str, int] | None = None
    if args.config:
        try:
            config = load(args.config)
        except ConfigError as exc:
            fail(str(exc.problems[0]) + (f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""))
        path = config.registry_path
        bind = (config.coaps.host, config.coaps.port)
        try:
            config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"cannot create data_dir {config.data_dir}: {exc.strerror}", 1)
    else:
        path = Path(args.registry)
    try:
        return Registry(path), bind
    except RegistryError as exc:
        fail(str(exc), 1)


def device_config(device: str, identity: str, psk: bytes, host: str, port: int) -> dict[str, Any]:
    """The config.json of micropython/main.py for this device."""
    return {"host": host, "port": port, "identity": identity, "psk": psk.hex(), "path": "telemetry",
            "interval": 60}


def cmd_add(reg: Registry, args: argparse.Namespace, bind: tuple[str, int] | None) -> None:
    key: str | bytes | None = None
    if args.key:
        path = Path(args.key)
        try:
            key = path.read_bytes() if path.is_file() else args.key
        except OSError as exc:
            fail(f"cannot read {args.key}: {exc.strerror}")
    if args.device_config and key is not None:
        fail("--device-config writes a PSK device's config; a raw-public-key device keeps its own key")
    host = args.host or (bind[0] if bind and bind[0] not in ("0.0.0.0", "::", "") else None)
    port = args.port or (bind[1] if bind else 5684)
    if args.device_config and host is None:
        fail("--device-config needs --host: the gateway binds a wildcard address")
    if args.port is not None and not 0 < args.port < 65536:
        fail(f"--port {args.port} is out of range (1-65535)")
    device, psk = reg.add_device(args.device, psk_identity=args.psk_identity, key=key)
    cred = device.credentials[0]
    if args.device_config:
        assert psk is not None and host is not None
        data = json.dumps(device_config(device.id, cred.label, psk, host, port), indent=2) + "\n"
        try:
            write_secret_file(args.device_config, data.encode())
        except OSError as exc:
            reg.revoke(device.id)
            fail(f"cannot write {args.device_config}: {exc.strerror} (device {device.id} revoked again)", 1)
    where = f"; config for the device in {args.device_config} (0600)" if args.device_config else ""
    print(f"added {device.id}: {cred.kind} identity {cred.label}{where}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    os.umask(0o077)
    reg, bind = open_registry(args)
    try:
        if args.command == "add":
            cmd_add(reg, args, bind)
        elif args.command == "list":
            for device in reg.devices():
                if args.json:
                    print(json.dumps(describe(device), sort_keys=True))
                else:
                    creds = ", ".join(f"{c.kind}:{c.label}" for c in device.credentials)
                    print(f"{device.id}\t{device.state}\t{creds}")
        elif args.command == "show":
            print(json.dumps(describe(reg.get(args.device)), indent=2, sort_keys=True))
        else:
            device = reg.revoke(args.device)
            print(f"revoked {device.id}: its handshakes fail from now on (a running gateway reloads within 1 s)")
    except RegistryError as exc:
        fail(str(exc))
    finally:
        reg.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
