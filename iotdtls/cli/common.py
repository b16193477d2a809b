"""Argument parsing and error reporting shared by the command-line tools."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, TextIO

from ..config import DTLSConfiguration


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit status 2."""


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mtu", type=int, default=None, help="datagram budget in bytes (default 512)")
    parser.add_argument("--keylog", metavar="FILE", help="append NSS key log lines (contains secrets)")
    parser.add_argument("--retransmit-initial", type=float, metavar="S", help="first retransmission timeout")
    parser.add_argument("--retransmit-max", type=float, metavar="S", help="retransmission timeout cap")
    parser.add_argument("--handshake-timeout", type=float, metavar="S", help="give up the handshake after S")


def apply_common(config: DTLSConfiguration, args: argparse.Namespace) -> TextIO | None:
    if args.mtu is not None:
        config.mtu = args.mtu
    if args.retransmit_initial is not None:
        config.retransmit_initial = args.retransmit_initial
    if args.retransmit_max is not None:
        config.retransmit_max = args.retransmit_max
    elif args.retransmit_initial is not None and config.retransmit_max < config.retransmit_initial:
        config.retransmit_max = config.retransmit_initial
    if args.handshake_timeout is not None:
        config.handshake_timeout = args.handshake_timeout
    keylog = None
    if args.keylog:
        try:
            keylog = open(args.keylog, "a", encoding="ascii")  # noqa: SIM115 - lives as long as the process
        except OSError as exc:
            raise UsageError(f"cannot open key log {args.keylog}: {exc.strerror}") from None
        config.keylog_file = keylog
    try:
        config.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return keylog


def parse_hex(value: str, what: str) -> bytes:
    try:
        key = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise UsageError(f"{what} must be hexadecimal") from None
    if not key:
        raise UsageError(f"{what} is empty")
    return key


def load_psk_file(path: str) -> dict[bytes, bytes]:
    """GnuTLS psktool format: one ``identity:hexkey`` per line; blank lines and ``#`` comments skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read PSK file {path}: {exc.strerror}") from None
    store: dict[bytes, bytes] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        identity, sep, key = line.rpartition(":")
        if not sep or not identity:
            raise UsageError(f"{path}:{number}: expected identity:hexkey")
        store[identity.encode()] = parse_hex(key.strip(), f"{path}:{number}: key")
    if not store:
        raise UsageError(f"{path}: no PSK entries")
    return store


def fail(message: str, status: int, prog: str) -> NoReturn:
    print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(status)


def describe_error(exc: BaseException) -> str:
    from ..errors import AlertError, HandshakeTimeout

    if isinstance(exc, AlertError):
        who = "server sent alert" if exc.remote else "handshake failed"
        text = f"{who}: {exc.description.name}"
        return text + (f" ({exc.reason})" if exc.reason else "")
    if isinstance(exc, HandshakeTimeout):
        return f"timeout: {exc}"
    if isinstance(exc, OSError):
        return f"network error: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"
