"""iotdtls-keygen: create a P-256 key pair for raw-public-key DTLS and print its fingerprint."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..keys import (
    KeyFileError,
    fingerprint,
    generate_private_key,
    load_private_key,
    load_public_key,
    ni_uri,
    private_key_pem,
    public_key_pem,
    spki_der,
    write_secret_file,
)
from .common import ToolParser, add_standard, fail, run_tool, setup_logging, verbosity, write_stdout

PROG = "iotdtls-keygen"


def build_parser() -> argparse.ArgumentParser:
    p = ToolParser(
        prog=PROG,
        description="Create a P-256 private key (PKCS#8 PEM, mode 0600) and its public key (SPKI PEM), and print "
        "the public key's SHA-256 fingerprint; with --show, print the fingerprint of an existing key file.")
    p.add_argument("key", metavar="KEYFILE", help="private key to write (or, with --show, a key/cert to read)")
    p.add_argument("--public", metavar="FILE", help="public key output (default: KEYFILE with .pub)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--show", action="store_true", help="print the fingerprint of an existing key file")
    add_standard(p)
    return p


def report(spki: bytes) -> None:
    digest = fingerprint(spki)
    write_stdout(f"sha-256: {digest.hex()}")
    write_stdout(f"ni:      {ni_uri(digest)}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(PROG, verbosity(args))
    run_tool(PROG, lambda: keygen(args))


def keygen(args: argparse.Namespace) -> None:
    key_path = Path(args.key)
    try:
        if args.show:
            data = key_path.read_bytes()
            if b"PRIVATE KEY" in data:
                spki = spki_der(load_private_key(data))
            else:
                try:
                    spki = spki_der(load_private_key(data))  # DER: private or public, we cannot tell by looking
                except KeyFileError:
                    spki = spki_der(load_public_key(data))
            report(spki)
            return
        pub_path = Path(args.public) if args.public else key_path.with_suffix(".pub")
        for path in (key_path, pub_path):
            if path.exists() and not args.force:
                fail(f"{path} exists (use --force to overwrite)", 1, PROG)
        key = generate_private_key()
        write_secret_file(key_path, private_key_pem(key))
        pub_path.write_bytes(public_key_pem(key))
    except KeyFileError as exc:
        fail(f"{key_path}: {exc}", 1, PROG)
    except OSError as exc:
        fail(f"{exc.filename or key_path}: {exc.strerror}", 1, PROG)
    write_stdout(f"private key: {key_path} (mode 0600)")
    write_stdout(f"public key:  {pub_path}")
    report(spki_der(key))


if __name__ == "__main__":
    main()
