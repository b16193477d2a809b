"""Argument parsing and error reporting shared by the command-line tools."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn, TextIO, TypeVar

from ..config import DTLSConfiguration
from ..constants import MAX_CID_LEN, MAX_PLAINTEXT, MIN_RECORD_SIZE_LIMIT
from .runtime import (
    ToolParser,
    UsageError,
    add_standard,
    bind_port,
    int_range,
    is_quiet,
    mtu_type,
    port,
    probability,
    register_secrets,
    run_tool,
    seconds,
    setup_logging,
    verbosity,
    write_stdout,
)

T = TypeVar("T")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mtu", type=mtu_type(), default=None, help="datagram budget in bytes (default 512)")
    parser.add_argument("--keylog", metavar="FILE", help="append NSS key log lines (contains secrets)")
    parser.add_argument("--retransmit-initial", type=seconds, metavar="S",
                        help="first retransmission timeout (default 2)")
    parser.add_argument("--retransmit-max", type=seconds, metavar="S",
                        help="retransmission timeout cap (default 8)")
    parser.add_argument("--handshake-timeout", type=seconds, metavar="S",
                        help="give up the handshake after S seconds (default 120)")
    parser.add_argument("--cid", type=cid_length, metavar="N",
                        help="connection ID (RFC 9146): ask the peer to send a CID of N bytes (0-20; 0: send one "
                        "if the peer wants it, need none); default: no connection ID")
    parser.add_argument("--record-size-limit", type=record_size_limit, metavar="BYTES",
                        help="RFC 8449: the largest record plaintext to accept (64-16384); default: not sent")


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
    if args.cid is not None:
        config.cid_length = args.cid
    if args.record_size_limit is not None:
        config.record_size_limit = args.record_size_limit
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


def add_public_key(parser: argparse.ArgumentParser, *, server: bool) -> None:
    g = parser.add_argument_group("raw public keys and certificates (ECDHE-ECDSA on P-256)")
    g.add_argument("--key", metavar="FILE", help="own private key (PEM/DER, PKCS#8 or SEC1); without --cert it "
                   "is presented as a raw public key")
    g.add_argument("--cert", metavar="FILE", help="own X.509 certificate chain (PEM, leaf first) instead of a raw key")
    g.add_argument("--trust-key", metavar="FILE|FINGERPRINT", action="append", default=[],
                   help="a pinned peer public key (PEM/DER SPKI) or its SHA-256 fingerprint (hex or "
                   "ni:///sha-256;...); repeatable")
    g.add_argument("--ca", metavar="FILE", action="append", default=[],
                   help="trusted CA certificates (PEM) for X.509 peers; repeatable")
    if server:
        g.add_argument("--require-client-auth", action="store_true",
                       help="refuse clients that present no trusted key or certificate")
    else:
        g.add_argument("--server-name", metavar="NAME",
                       help="name a server certificate must carry (default: the host argument)")


def apply_public_key(config: DTLSConfiguration, args: argparse.Namespace) -> None:
    """Load ``--key``/``--cert``/``--trust-key``/``--ca`` into ``config``; file problems are usage errors."""
    from ..keys import KeyFileError, load_certificates, load_private_key, read_pin
    from ..trust import TrustStore

    def read(path: str, what: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None

    def load(path: str, what: str, loader: Callable[[bytes], T]) -> T:
        try:
            return loader(read(path, what))
        except KeyFileError as exc:
            raise UsageError(f"{what} {path}: {exc}") from None

    if args.key:
        config.private_key = load(args.key, "key file", load_private_key)
    if args.cert:
        if not args.key:
            raise UsageError("--cert needs --key with the certificate's private key")
        config.certificate_chain = load(args.cert, "certificate file", load_certificates)
        if config.certificate_chain[0].public_key() != config.private_key.public_key():  # type: ignore[union-attr]
            raise UsageError(f"{args.cert}: the certificate does not match the key in {args.key}")
    try:
        pins = {read_pin(p) for p in args.trust_key}
    except KeyFileError as exc:
        raise UsageError(f"--trust-key {exc}") from None
    cas = [c for path in args.ca for c in load(path, "CA file", load_certificates)]
    if getattr(args, "require_client_auth", False) and not (pins or cas):
        raise UsageError("--require-client-auth needs --trust-key or --ca to judge client keys")
    if pins or cas:
        config.trust = TrustStore.of(pins, cas)
        if config.is_client:
            config.trust.server_name = args.server_name or args.host
    config.require_client_auth = bool(getattr(args, "require_client_auth", False))


def cid_length(text: str) -> int:
    return _int_in_range(text, 0, MAX_CID_LEN, "a connection ID length")


def record_size_limit(text: str) -> int:
    return _int_in_range(text, MIN_RECORD_SIZE_LIMIT, MAX_PLAINTEXT, "a record size limit")


def _int_in_range(text: str, low: int, high: int, what: str) -> int:
    value = _int_at_least(text, low, what)
    if value > high:
        raise argparse.ArgumentTypeError(f"{what} must be {low} to {high}, not {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0")
    return value


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


def describe_error(exc: BaseException, peer: str = "server") -> str:
    from ..errors import AlertError, ConnectionRefused, HandshakeTimeout

    if isinstance(exc, ConnectionRefused):
        return str(exc)  # "connection refused by HOST:PORT (nothing listening?)"
    if isinstance(exc, AlertError):
        who = f"{peer} sent alert" if exc.remote else "handshake failed"
        text = f"{who}: {exc.description.name}"
        return text + (f" ({exc.reason})" if exc.reason else "")
    if isinstance(exc, HandshakeTimeout):
        return f"timeout: {exc}"
    if isinstance(exc, OSError):
        return f"network error: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


# the shared frame of every tool (runtime.py) is re-exported: the gateway's command-line tools import it from here
__all__ = [
    "ToolParser",
    "UsageError",
    "add_common",
    "add_public_key",
    "add_standard",
    "apply_common",
    "apply_public_key",
    "bind_port",
    "describe_error",
    "fail",
    "int_range",
    "is_quiet",
    "load_psk_file",
    "mtu_type",
    "non_negative_float",
    "non_negative_int",
    "parse_hex",
    "port",
    "positive_int",
    "probability",
    "register_secrets",
    "run_tool",
    "seconds",
    "setup_logging",
    "verbosity",
    "write_stdout",
]
