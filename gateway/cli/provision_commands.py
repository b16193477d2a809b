"""The iotdtls-provision commands that change or show one device at a time: ``add`` (one device; a batch is in
:mod:`.provision_io`), ``rotate``, ``revoke``/``enable``, ``list``, ``show``, ``history`` and ``set-meta``."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from iotdtls.keys import (
    KeyFileError,
    fingerprint,
    generate_private_key,
    load_private_key,
    ni_uri,
    parse_fingerprint,
    private_key_pem,
    spki_der,
)

from ..devices import PSK_LENGTH, config_etag, derive_psk
from ..registry import NewDevice, parse_pin
from .provision_common import (
    PROG,
    Context,
    Failure,
    SecretFiles,
    UsageError,
    describe,
    describe_duration,
    device_config,
    device_settings,
    iso,
    printable_key,
    read_hex_key,
)
from .provision_io import cmd_add_batch, cmd_import


def parse_meta(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``: VALUE is JSON if it parses (a finite number, true, null, "text", [..], {..}), else the string
    itself; an empty VALUE is None (set-meta removes the key)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"expected KEY=VALUE, not {text!r}")
    if value == "":
        return key, None

    def no_constant(name: str) -> Any:
        raise ValueError(name)

    try:
        return key, json.loads(value, parse_constant=no_constant)
    except ValueError:
        return key, value


# -- keys --------------------------------------------------------------------------------------------------------
def master_key(path: str | None) -> bytes | None:
    return read_hex_key(path, "--derive-from", min_bytes=16) if path is not None else None


def new_psk(args: argparse.Namespace, device_id: str, master: bytes | None) -> bytes | None:
    """The PSK the options ask for: from --psk-file, derived, printable; None: the registry draws a random one."""
    if args.psk_file is not None:
        return read_hex_key(args.psk_file, "--psk-file", min_bytes=16, max_bytes=64)
    if master is not None:
        return derive_psk(master, device_id)
    if args.printable_key:
        return printable_key()
    return None


# -- commands ----------------------------------------------------------------------------------------------------
def cmd_add(ctx: Context, args: argparse.Namespace) -> None:
    rpk = args.rpk is not None or args.generate
    if args.generate and args.rpk:
        raise UsageError("--generate makes the key pair: give --rpk without a key, or no --generate")
    if args.generate != (args.key_out is not None):
        raise UsageError("--generate writes the private key to --key-out FILE: give both")
    if args.rpk == "" and not args.generate:
        raise UsageError("--rpk needs the device's public key (a PEM file or a fingerprint), or --generate")
    if rpk and (args.psk_identity or args.psk_file or args.derive_from or args.printable_key or args.device_config
                or args.export or args.configs or args.show_secret):
        raise UsageError("a raw-public-key device has no PSK: --psk-identity, --psk-file, --derive-from, "
                         "--printable-key, --device-config, --export, --configs and --show-secret are for PSK devices")
    metadata = {}
    for pair in args.meta:
        key, value = parse_meta(pair)
        if value is not None:
            metadata[key] = value
    master = master_key(args.derive_from)
    if args.count is not None:
        if args.device is not None or args.id_template is None:
            raise UsageError("a batch is --count N --id-template TEMPLATE, without a DEVICE")
        if rpk or args.psk_identity or args.psk_file or args.device_config or args.show_secret:
            raise UsageError("a batch adds PSK devices (identity = id) with random, derived or printable keys: "
                             "--rpk, --psk-identity, --psk-file, --device-config and --show-secret are for one "
                             "device")
        settings = device_settings(ctx, args) if args.configs else None
        cmd_add_batch(ctx, args, master, metadata, settings)
        return
    if args.device is None:
        raise UsageError("add needs a DEVICE (or --count N --id-template TEMPLATE for a batch)")
    if args.id_template or args.export or args.configs:
        raise UsageError("--id-template, --export and --configs are for a batch (--count N)")
    files = SecretFiles()
    if rpk:
        cmd_add_rpk(ctx, args, metadata, files)
        return
    psk = new_psk(args, args.device, master) or secrets.token_bytes(PSK_LENGTH)
    settings = device_settings(ctx, args) if args.device_config else None
    identity = args.psk_identity or args.device
    with files.transaction():
        if args.device_config:
            assert settings is not None
            text = json.dumps(device_config(identity, psk, settings), indent=2) + "\n"
            files.add(args.device_config, text.encode())
        ((device, secret),) = ctx.registry.add_devices([NewDevice(args.device, args.psk_identity, psk, None,
                                                                  metadata)])
    cred = device.credentials[0]
    how = " (derived key)" if master is not None else " (printable key)" if args.printable_key else ""
    where = f"; config for the device in {args.device_config} (0600)" if args.device_config else ""
    print(f"added {device.id}: {cred.kind} identity {cred.label}{how}{where}")
    if args.show_secret and secret is not None:
        print(f"{cred.label}:{secret.hex()}")


def cmd_add_rpk(ctx: Context, args: argparse.Namespace, metadata: dict[str, Any], files: SecretFiles) -> None:
    with files.transaction():
        if args.generate:
            key = generate_private_key()
            pin = fingerprint(spki_der(key))
            files.add(args.key_out, private_key_pem(key))
        else:
            pin = read_pin(args.rpk)
        ((device, _),) = ctx.registry.add_devices([NewDevice(args.device, pin=pin, metadata=metadata)])
    cred = device.credentials[0]
    where = f"; its private key in {args.key_out} (0600)" if args.generate else ""
    print(f"added {device.id}: {cred.kind} identity {cred.label}{where}")
    if ctx.gateway_key is not None:
        try:
            gateway = ni_uri(fingerprint(spki_der(load_private_key(ctx.gateway_key.read_bytes()))))
            print(f"the device pins the gateway's key {gateway} (the public half of {ctx.gateway_key})")
        except (OSError, KeyFileError):
            print(f"{PROG}: warning: cannot read the gateway's key_file {ctx.gateway_key}", file=sys.stderr)
    elif ctx.bind is not None:
        print(f"{PROG}: note: the gateway has no [coaps] key_file: it serves PSK devices only", file=sys.stderr)


def read_pin(value: str) -> bytes:
    path = Path(value)
    if path.is_file():
        try:
            return parse_pin(path.read_bytes())
        except OSError as exc:
            raise Failure(f"cannot read {value}: {exc.strerror}") from None
    try:
        return parse_fingerprint(value)
    except KeyFileError:
        raise UsageError("bad public key: neither a readable key file nor a SHA-256 fingerprint "
                         "(ni:///sha-256;... or 64 hex digits)") from None


def cmd_import_(ctx: Context, args: argparse.Namespace) -> None:
    settings = device_settings(ctx, args) if args.configs else None
    cmd_import(ctx, args, master_key(args.derive_from), settings)


def cmd_state(ctx: Context, args: argparse.Namespace) -> None:
    for device_id in args.devices:
        ctx.registry.get(device_id)  # every device exists before any changes
    for device_id in args.devices:
        if args.command == "revoke":
            device = ctx.registry.revoke(device_id)
            print(f"revoked {device.id}: a running gateway ends its session and refuses it within 1 s")
        else:
            device = ctx.registry.enable(device_id)
            print(f"enabled {device.id}: it may connect again (a running gateway reloads within 1 s)")


def cmd_rotate(ctx: Context, args: argparse.Namespace) -> None:
    if args.psk_file is not None and len(args.devices) > 1:
        raise UsageError("--psk-file gives one key: rotate one device with it")
    master = master_key(args.derive_from)
    plans = []
    for device_id in args.devices:
        device = ctx.registry.get(device_id)
        psk = new_psk(args, device_id, master)
        current = device.newest("psk")
        if psk is not None and current is not None and current.secret == psk:
            raise UsageError(f"the new key of {device_id!r} is its current key (the same master key?): rotate with "
                             "another one")
        plans.append((device_id, psk))
    for device_id, psk in plans:
        cred, key = ctx.registry.rotate(device_id, grace=args.grace, psk=psk)
        older = [c.not_after for c in ctx.registry.get(device_id).credentials if c.kind == "psk" and
                 c.generation < cred.generation and c.retired_at is None and c.not_after is not None]
        until = max(older) if older else time.time() + args.grace  # (a shorter grace given before stays)
        print(f"rotated {device_id}: new key {cred.label} (generation {cred.generation}); the old key works until "
              f"{iso(until)} ({describe_duration(args.grace)}) or until the device first uses the new one; a "
              "running gateway hands the new key to the device over its session")
        if args.show_secret:
            print(f"{cred.label}:{key.hex()}")


def cmd_list(ctx: Context, args: argparse.Namespace) -> None:
    now = time.time()
    for device in ctx.registry.devices():
        stale = device.stale(now)
        if (args.stale and not stale) or (args.revoked and device.enabled):
            continue
        if args.json:
            print(json.dumps(describe(device, now), sort_keys=True))
            continue
        creds = []
        for c in device.credentials:
            if c.retired_at is not None:
                continue
            note = f" (until {iso(c.not_after)})" if c.not_after is not None else ""
            creds.append(f"{c.kind}:{c.label}{note}")
        flag = "\tstale: slept through a rotation (rotate it again, or give it its new key)" if stale else ""
        print(f"{device.id}\t{device.state}\t{', '.join(creds)}{flag}")


def cmd_show(ctx: Context, args: argparse.Namespace) -> None:
    print(json.dumps(describe(ctx.registry.get(args.device), time.time()), indent=2, sort_keys=True))


def cmd_history(ctx: Context, args: argparse.Namespace) -> None:
    for entry in ctx.registry.history(args.device):
        if args.json:
            print(json.dumps({"at": iso(entry.at), "time": entry.at, "device": entry.device, "action": entry.action,
                              "detail": entry.detail}, sort_keys=True))
            continue
        detail = " ".join(f"{k}={iso(v) if k.endswith('_until') and isinstance(v, int | float) else json_text(v)}"
                          for k, v in sorted(entry.detail.items()))
        print(f"{iso(entry.at)}  {entry.action:<19} {detail}".rstrip())


def json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def cmd_set_meta(ctx: Context, args: argparse.Namespace) -> None:
    pairs = [parse_meta(p) for p in args.pairs]
    ctx.registry.get(args.device)
    for key, value in pairs:
        device = ctx.registry.set_meta(args.device, key, value)
        print(f"{device.id}: removed {key}" if value is None else f"{device.id}: {key} = {json.dumps(value)}")


def cmd_set_config(ctx: Context, args: argparse.Namespace) -> None:
    if args.clear:
        device = ctx.registry.set_config(args.device, None)
        print(f"{device.id}: configuration removed")
        return
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        raise Failure(f"cannot read {args.file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise Failure(f"{args.file}: not UTF-8 text") from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise Failure(f"{args.file}: not valid JSON: {exc}") from None
    device = ctx.registry.set_config(args.device, doc)
    print(f"{device.id}: configuration stored, ETag {config_etag(doc).hex()} "
          f"({len(json.dumps(doc, separators=(',', ':')))} bytes of JSON)")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def cmd_get_config(ctx: Context, args: argparse.Namespace) -> None:
    device = ctx.registry.get(args.device)
    if device.config is None:
        raise Failure(f"{device.id} has no configuration")
    print(json.dumps(device.config, indent=2, sort_keys=True))
    print(f"# ETag {config_etag(device.config).hex()}", file=sys.stderr)
