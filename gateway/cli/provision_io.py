"""Batches of devices for iotdtls-provision: ``import`` (all or nothing, every bad row reported; the reading is
in :mod:`.provision_import`), ``export`` (CSV or psktool, keys only with --include-secrets, 0600) and
``add --count N --id-template T``; the keys of a batch go out as a CSV (``--export``) or as device configs
(``--configs DIR``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import secrets
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..devices import PSK_LENGTH, Credential, Device, check_device_id, derive_psk
from ..registry import NewDevice
from .provision_common import (
    PROG,
    Context,
    DeviceSettings,
    Failure,
    Progress,
    SecretFiles,
    UsageError,
    device_config,
    printable_key,
    write_secret,
)
from .provision_import import (
    COLUMNS,
    BadRows,
    Row,
    check_duplicates,
    check_reason,
    detect_format,
    parse_csv,
    parse_psktool,
    read_input,
)


def n_devices(n: int) -> str:
    return f"{n} device{'s' if n != 1 else ''}"


def fill_keys(items: list[NewDevice], master: bytes | None, printable: bool) -> list[NewDevice]:
    """PSK devices without a key get one: derived from the master key, printable, or random (from secrets)."""
    out = []
    for item in items:
        if item.pin is None and item.psk is None:
            if master is not None:
                psk = derive_psk(master, item.device_id)
            elif printable:
                psk = printable_key()
            else:
                psk = secrets.token_bytes(PSK_LENGTH)
            item = replace(item, psk=psk)
        out.append(item)
    return out


# -- writing -----------------------------------------------------------------------------------------------------
def csv_row(device_id: str, cred: Credential, metadata: dict[str, Any], state: str, secret: bool) -> list[str]:
    psk = cred.secret.hex() if secret and cred.kind == "psk" and cred.secret is not None else ""
    return [device_id, cred.label if cred.kind == "psk" else "", psk, cred.label if cred.kind == "rpk" else "",
            json.dumps(metadata, sort_keys=True, separators=(",", ":")) if metadata else "", state]


def csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(rows)
    return buf.getvalue()


def batch_secrets_out(files: SecretFiles, args: argparse.Namespace, items: list[NewDevice],
                      settings: DeviceSettings | None) -> list[str]:
    """Stage the keys of a batch: ``--export FILE`` (CSV with the keys) and ``--configs DIR`` (one config.json per
    PSK device). Returns what was written, for the summary."""
    written = []
    if args.export:
        rows = []
        for item in items:
            cred = (Credential("rpk", item.pin) if item.pin is not None else
                    Credential("psk", (item.psk_identity or item.device_id).encode(), item.psk))
            rows.append(csv_row(item.device_id, cred, item.metadata or {}, item.state, True))
        files.add(args.export, csv_text(rows).encode())
        written.append(f"keys in {args.export} (0600)")
    if args.configs:
        assert settings is not None
        folder = Path(args.configs)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise Failure(f"cannot create {folder}: {exc.strerror}") from None
        count = 0
        for item in items:
            if item.psk is None:
                continue
            cfg = device_config(item.psk_identity or item.device_id, item.psk, settings)
            files.add(folder / f"{item.device_id}.json", (json.dumps(cfg, indent=2) + "\n").encode())
            count += 1
        written.append(f"{count} device configs in {folder}/DEVICE.json (0600)")
    return written


def add_batch(ctx: Context, items: list[NewDevice], args: argparse.Namespace, settings: DeviceSettings | None,
              action: str, what: str) -> list[str]:
    """Add ``items`` in one transaction, with their keys staged to files first; the progress of a long batch on
    stderr. Returns what was written."""
    files = SecretFiles()
    progress = Progress(f"{what}: writing", len(items), "device")
    try:
        with files.transaction():
            written = batch_secrets_out(files, args, items, settings)
            ctx.registry.add_devices(items, action=action, progress=progress.update)
    finally:
        progress.close()
    return written


def cmd_import(ctx: Context, args: argparse.Namespace, master: bytes | None,
               settings: DeviceSettings | None) -> None:
    started = time.monotonic()
    name = args.file
    text = read_input(name)
    fmt = args.format if args.format != "auto" else detect_format(text)
    if fmt == "psktool" and master is not None:
        raise UsageError("--derive-from: a psktool file has a key on every line")
    label = Path(name).name if name != "-" else "stdin"
    checking = Progress(f"{label}: checking", max(1, text.count("\n")), "line")
    try:
        if fmt == "csv":
            rows, problems = parse_csv(text, name, derived=master is not None, progress=checking)
        else:
            rows, problems = parse_psktool(text, name, progress=checking)
        checking.update(checking.total)
    finally:
        checking.close()
    problems += check_duplicates(rows, ctx.registry.devices(), name)
    problems.sort(key=lambda p: _line_of(p, name))
    if problems:
        bad = len({_line_of(p, name) for p in problems})
        raise BadRows(f"{name}: {bad} bad row{'s' if bad != 1 else ''}: nothing imported (an import is all or "
                      "nothing)", problems)
    if not rows:
        raise UsageError(f"{name}: no devices")
    items = fill_keys([r.item for r in rows], master, args.printable_key)
    if args.dry_run:
        print(f"{name}: {n_devices(len(items))}, no problems (dry run: nothing written)")
        return
    written = add_batch(ctx, items, args, settings, "imported", label)
    took = time.monotonic() - started
    print(f"imported {n_devices(len(items))} from {name} in {took:.1f} s" + "".join(f"; {w}" for w in written))


def _line_of(problem: str, name: str) -> int:
    """The line number of a problem ``NAME:LINE: reason`` (0 for a problem of the whole file)."""
    number = problem[len(name) + 1:].split(":", 1)[0]
    return int(number) if number.isdigit() else 0


def export_credential(device: Device, now: float) -> tuple[Credential | None, str | None]:
    """The credential that moves with a device: among those valid now, the newest the device has used (or, for a
    device that never connected, the newest). Also a warning when a newer key is waiting (a rotation in progress:
    the device may not have it yet)."""
    valid = [c for c in device.credentials if c.valid_at(now)]
    if not valid:
        return None, f"{device.id}: no valid credential (a rotation it slept through?): not exported"
    used = [c for c in valid if c.first_used_at is not None]
    pick = max(used or valid, key=lambda c: c.generation)
    newer = [c for c in valid if c.generation > pick.generation]
    warning = None
    if newer:
        warning = (f"{device.id}: a rotation is in progress: exported {pick.label} (in use), not "
                   f"{', '.join(c.label for c in newer)} (not used yet); rotate it again on the new gateway")
    return pick, warning


def cmd_export(ctx: Context, args: argparse.Namespace) -> None:
    if args.format == "psktool" and not args.include_secrets:
        raise UsageError("--format psktool writes the keys: add --include-secrets")
    now = time.time()
    lines: list[str] = []
    rows: list[list[str]] = []
    warnings: list[str] = []
    count = 0
    devices = ctx.registry.devices()
    if args.devices:
        wanted = set(args.devices)
        for device_id in args.devices:
            ctx.registry.get(device_id)  # UnknownDevice
        devices = [d for d in devices if d.id in wanted]
    for device in devices:
        cred, warning = export_credential(device, now)
        if warning:
            warnings.append(warning)
        if cred is None:
            continue
        count += 1
        if args.format == "psktool":
            if cred.kind == "psk" and cred.secret is not None and device.enabled:
                lines.append(f"{cred.label}:{cred.secret.hex()}\n")
            continue
        rows.append(csv_row(device.id, cred, device.metadata, device.state, args.include_secrets))
    text = "".join(lines) if args.format == "psktool" else csv_text(rows)
    for warning in warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if args.file == "-" and not args.include_secrets:
        sys.stdout.write(text)
        return
    out = write_secret(args.file, text, show_secret=args.show_secret, what="an export with --include-secrets",
                       file_hint="export FILE")
    if out is not None:
        keys = "with their keys" if args.include_secrets else "without keys"
        n = len(lines) if args.format == "psktool" else count
        print(f"exported {n_devices(n)} {keys} to {out} (0600)")


def id_batch(template: str, count: int, start: int) -> list[str]:
    ids = []
    for n in range(start, start + count):
        try:
            ids.append(template.format(n=n))
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise UsageError(f"--id-template {template!r}: {exc.__class__.__name__}: {exc} (use {{n}}, e.g. "
                             "'sensor-{n:04d}')") from None
    if len(set(ids)) != len(ids):
        raise UsageError(f"--id-template {template!r} gives the same id twice: put {{n}} in it")
    return ids


def cmd_add_batch(ctx: Context, args: argparse.Namespace, master: bytes | None, metadata: dict[str, Any],
                  settings: DeviceSettings | None) -> None:
    ids = id_batch(args.id_template, args.count, args.start)
    devices = ctx.registry.devices()
    rows = [Row(i + 1, NewDevice(device_id, None, None, None, metadata)) for i, device_id in enumerate(ids)]
    problems = [why for r in rows if (why := check_reason(check_device_id, r.item.device_id))]
    problems += [p.split(": ", 1)[1] for p in check_duplicates(rows, devices, "batch")]
    if problems:
        raise UsageError(f"{problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    items = fill_keys([r.item for r in rows], master, args.printable_key)
    if not (args.export or args.configs) and master is None:
        print(f"{PROG}: note: the keys are in the registry only; write them out with export --include-secrets or "
              "device-config", file=sys.stderr)
    written = add_batch(ctx, items, args, settings, "added", f"add {ids[0]}..{ids[-1]}")
    how = "derived keys" if master is not None else "printable keys" if args.printable_key else "random keys"
    print(f"added {len(items)} devices {ids[0]} .. {ids[-1]} (psk, {how})" + "".join(f"; {w}" for w in written))


def configs_dir_arg(value: str) -> str:
    if os.path.exists(value) and not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value} exists and is not a directory")
    return value
