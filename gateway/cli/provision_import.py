"""Reading device files for ``iotdtls-provision import``: CSV and psktool ``identity:hexkey`` files, each row
checked (device id, identity, key, fingerprint, metadata, state, duplicates in the file and in the registry), every
bad row reported as ``FILE:LINE: reason``.

The CSV format (a header line naming the columns is required; columns in any order; only ``device`` is required)::

    device,identity,psk_hex,rpk,metadata,state
    sensor-0001,,000102030405060708090a0b0c0d0e0f,,"{""site"": ""hall 3""}",
    cam-7,,,ni:///sha-256;...,,revoked

Keys are never part of a message: a bad key is "not hex digits" or "has 8 bytes", not its value.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from typing import Any

from iotdtls.keys import KeyFileError, parse_fingerprint

from ..devices import GENERATION_MARK, Credential, Device, RegistryError, check_device_id, check_psk_identity
from ..registry import NewDevice
from .provision_common import (
    Failure,
    Progress,
    UsageError,
)

COLUMNS = ("device", "identity", "psk_hex", "rpk", "metadata", "state")
MIN_PSK, MAX_PSK = 16, 64


class BadRows(UsageError):
    """An input file with bad rows: one line per row, then a summary (exit 2)."""

    def __init__(self, summary: str, lines: list[str]) -> None:
        super().__init__(summary)
        self.lines = lines


@dataclass
class Row:
    line: int
    item: NewDevice


# -- reading -----------------------------------------------------------------------------------------------------
def read_input(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.buffer.read().decode("utf-8-sig")
        with open(path, "rb") as f:
            return f.read().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise Failure(f"cannot read {path}: {exc.strerror}") from None


def detect_format(text: str) -> str:
    """``psktool`` when the first line that is not blank or a ``#`` comment looks like ``identity:hexkey`` (a
    ``:`` and no ``,``), else ``csv`` (whose first line is the header)."""
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return "psktool" if ":" in line and "," not in line else "csv"
    return "csv"


def check_reason(fn: Any, value: str) -> str | None:
    try:
        fn(value)
    except RegistryError as exc:
        return str(exc)
    return None


def _psk_reason(text: str) -> tuple[bytes | None, str | None]:
    """A PSK column or field: the key, or why it is bad (never the value itself)."""
    t = text.strip()
    if t[:2] in ("0x", "0X"):
        t = t[2:]
    if len(t) % 2 or any(c not in "0123456789abcdefABCDEF" for c in t):
        return None, "the key is not hex digits"
    key = bytes.fromhex(t)
    if not MIN_PSK <= len(key) <= MAX_PSK:
        return None, f"the key has {len(key)} bytes: a PSK has {MIN_PSK} to {MAX_PSK}"
    return key, None


def _generation(device: str, identity: str | None) -> int:
    """A rotated credential keeps its generation when it moves (``sensor-1#3`` is generation 3 of sensor-1), so
    that the next rotation does not clash with it."""
    if identity and identity.startswith(device + GENERATION_MARK):
        tail = identity[len(device) + 1:]
        if tail.isdigit() and int(tail) >= 1:
            return int(tail)
    return 1


def parse_csv(text: str, name: str, *, derived: bool, progress: Progress | None = None) -> tuple[list[Row], list[str]]:
    """Rows of a CSV file and the problems, one per bad row: ``NAME:LINE: reason; reason``."""
    reader = csv.reader(io.StringIO(text, newline=""))
    problems: list[str] = []
    rows: list[Row] = []
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(f"{name}:{start}: not CSV ({exc})")
            break
        if progress is not None:
            progress.update(min(reader.line_num, progress.total))
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # a blank line
        if header is None:
            header = [f.strip().lower() for f in fields]
            bad = [f"unknown column {h!r}" for h in header if h not in COLUMNS]
            bad += [f"column {h!r} twice" for h in sorted(set(header)) if header.count(h) > 1]
            if "device" not in header:
                bad.append("no device column")
            if bad:
                problems.append(f"{name}:{start}: {'; '.join(bad)} (the columns are {', '.join(COLUMNS)}; the "
                                "first line names them)")
                return [], problems
            continue
        if len(fields) != len(header):
            problems.append(f"{name}:{start}: {len(fields)} fields, the header has {len(header)}")
            continue
        row = dict(zip(header, (f.strip() for f in fields), strict=True))
        reasons: list[str] = []
        device = row["device"]
        if not device:
            reasons.append("no device id")
        elif (why := check_reason(check_device_id, device)) is not None:
            reasons.append(why)
        identity = row.get("identity") or None
        if identity is not None and (why := check_reason(check_psk_identity, identity)) is not None:
            reasons.append(why)
        psk = None
        if row.get("psk_hex"):
            psk, why = _psk_reason(row["psk_hex"])
            if why:
                reasons.append(f"psk_hex: {why}")
            elif derived:
                reasons.append("psk_hex is given, but the keys are derived (--derive-from)")
        pin = None
        if row.get("rpk"):
            try:
                pin = parse_fingerprint(row["rpk"])
            except KeyFileError:
                reasons.append("rpk is not a SHA-256 fingerprint (ni:///sha-256;... or 64 hex digits)")
            if identity is not None or row.get("psk_hex"):
                reasons.append("a device has a PSK (identity, psk_hex) or a raw public key (rpk), not both")
        metadata: dict[str, Any] = {}
        if row.get("metadata"):
            try:
                value = json.loads(row["metadata"])
            except ValueError:
                value = None
            if isinstance(value, dict):
                metadata = value
            else:
                reasons.append("metadata is not a JSON object")
        state = row.get("state") or "enabled"
        if state not in ("enabled", "revoked"):
            reasons.append(f"state {state!r} is not enabled or revoked")
        if reasons:
            problems.append(f"{name}:{start}: {'; '.join(reasons)}")
            continue
        rows.append(Row(start, NewDevice(device, identity if pin is None else None, psk, pin, metadata, state,
                                         _generation(device, identity))))
    if header is None:
        problems.append(f"{name}: empty: a CSV file starts with its header ({','.join(COLUMNS)})")
    return rows, problems


def parse_psktool(text: str, name: str, *, progress: Progress | None = None) -> tuple[list[Row], list[str]]:
    """``identity:hexkey`` lines (GnuTLS psktool, ``iotdtls-server --psk-file``): the identity is the device id.
    Blank lines and ``#`` comments are skipped."""
    rows: list[Row] = []
    problems: list[str] = []
    lines = text.splitlines()
    for number, raw in enumerate(lines, 1):
        if progress is not None:
            progress.update(min(number, progress.total))
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        identity, sep, key_text = line.rpartition(":")
        if not sep or not identity:
            problems.append(f"{name}:{number}: expected identity:hexkey")
            continue
        reasons = []
        if (why := check_reason(check_device_id, identity)) is not None:
            reasons.append(f"{why} (in a psktool file the identity is the device id)")
        psk, why = _psk_reason(key_text)
        if why:
            reasons.append(why)
        if reasons:
            problems.append(f"{name}:{number}: {'; '.join(reasons)}")
            continue
        rows.append(Row(number, NewDevice(identity, None, psk)))
    if not rows and not problems:
        problems.append(f"{name}: no identity:hexkey lines")
    return rows, problems


def check_duplicates(rows: list[Row], devices: list[Device], name: str) -> list[str]:
    """Duplicate ids, PSK identities and keys, within the file (the later line is the bad one) and against the
    registry."""
    ids = {d.id for d in devices}
    owners: dict[tuple[str, bytes], str] = {(c.kind, c.identity): d.id for d in devices for c in d.credentials}
    seen_id: dict[str, int] = {}
    seen_cred: dict[tuple[str, bytes], int] = {}
    problems = []
    for row in rows:
        item = row.item
        reasons = []
        if item.device_id in seen_id:
            reasons.append(f"duplicate device {item.device_id!r} (also on line {seen_id[item.device_id]})")
        elif item.device_id in ids:
            reasons.append(f"device {item.device_id!r} exists already in the registry")
        seen_id.setdefault(item.device_id, row.line)
        if item.pin is not None:
            cred, what = ("rpk", item.pin), f"public key {Credential('rpk', item.pin).label}"
        else:
            ident = item.psk_identity or item.device_id
            cred, what = ("psk", ident.encode()), f"PSK identity {ident!r}"
        same = reasons and cred == ("psk", item.device_id.encode())  # said already: the identity is the id
        if cred in seen_cred and not same:
            reasons.append(f"duplicate {what} (also on line {seen_cred[cred]})")
        elif cred in owners and not same:
            reasons.append(f"{what} belongs to device {owners[cred]!r} in the registry")
        seen_cred.setdefault(cred, row.line)
        if reasons:
            problems.append(f"{name}:{row.line}: {'; '.join(reasons)}")
    return problems
