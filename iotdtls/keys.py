"""Key material on disk and on the wire: P-256 private keys, SubjectPublicKeyInfo, certificates, fingerprints.

A raw public key (RFC 7250) travels as its DER SubjectPublicKeyInfo; its fingerprint is the SHA-256 of those
bytes, written as hex (``sha-256:`` prefix and colons optional) or as an RFC 6920 ``ni:///sha-256;...`` URI.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

# Key files are written like the other secret files: atomically, mode 0600 from the start (a public name here).
from .secret_files import write_secret_file as write_secret_file

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class KeyFileError(ValueError):
    """A key, certificate or fingerprint that cannot be used (wrong format, wrong curve)."""


def _require_p256(key: object, what: str) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) or \
            not isinstance(key.curve, ec.SECP256R1):
        raise KeyFileError(f"{what} is not a P-256 (secp256r1) key")


def load_private_key(data: bytes) -> PrivateKey:
    """A P-256 private key in PEM or DER, PKCS#8 or SEC1 (``EC PRIVATE KEY``); unencrypted."""
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise KeyFileError("the private key is encrypted; give an unencrypted PEM/DER key") from None
    except ValueError:
        raise KeyFileError("not a PEM/DER private key (PKCS#8 or SEC1)") from None
    _require_p256(key, "the private key")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def load_public_key(data: bytes) -> PublicKey:
    """A P-256 public key as PEM or DER SubjectPublicKeyInfo (a PEM certificate is accepted too)."""
    key: object
    try:
        if b"-----BEGIN CERTIFICATE" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        elif b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError("not a PEM/DER public key (SubjectPublicKeyInfo) or PEM certificate") from None
    _require_p256(key, "the public key")
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """One or more certificates, PEM (a chain, leaf first) or a single DER certificate."""
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise KeyFileError("not a PEM certificate chain or DER certificate") from None
    if not certs:
        raise KeyFileError("no certificate found")
    return certs


def spki_der(key: PublicKey | PrivateKey) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    return key.public_bytes(*_SPKI)


def fingerprint(spki: bytes) -> bytes:
    """SHA-256 of a DER SubjectPublicKeyInfo: what pins and the authenticated identity are made of."""
    return hashlib.sha256(spki).digest()


def ni_uri(digest: bytes) -> str:
    """RFC 6920 named-information form of a SHA-256 fingerprint, as CoAP tooling writes it."""
    return "ni:///sha-256;" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def parse_fingerprint(text: str) -> bytes:
    """A SHA-256 fingerprint from hex (``AB:CD...``, ``sha-256:...``, ``sha256:...``) or ``ni:///sha-256;...``."""
    t = text.strip()
    if t.lower().startswith("ni:"):
        m = re.fullmatch(r"(?i:ni)://[^/]*/(?i:sha-256);([A-Za-z0-9_-]{43})(\?.*)?", t)
        if not m:
            raise KeyFileError(f"not an ni:///sha-256 URI: {text!r}")
        return base64.urlsafe_b64decode(m.group(1) + "=")
    for prefix in ("sha-256:", "sha256:", "sha-256=", "sha256="):
        if t.lower().startswith(prefix):
            t = t[len(prefix):]
            break
    t = t.replace(":", "")
    if not _HEX64.fullmatch(t):
        raise KeyFileError(f"not a SHA-256 fingerprint (64 hex digits or ni:///sha-256;...): {text!r}")
    return bytes.fromhex(t)


def read_pin(path_or_fingerprint: str) -> bytes:
    """A ``--trust-key`` argument: a public-key file (PEM/DER SPKI or certificate) or a fingerprint."""
    path = Path(path_or_fingerprint)
    if path.is_file():
        try:
            return fingerprint(spki_der(load_public_key(path.read_bytes())))
        except KeyFileError as exc:
            raise KeyFileError(f"{path_or_fingerprint}: {exc}") from None
    try:
        return parse_fingerprint(path_or_fingerprint)
    except KeyFileError:
        raise KeyFileError(f"{path_or_fingerprint}: neither a readable key file nor a SHA-256 fingerprint") from None


def generate_private_key(random: bytes | None = None) -> PrivateKey:
    """A new P-256 key; with ``random`` (32+ bytes) it is derived from them, for seeded tests."""
    if random is None:
        return ec.generate_private_key(ec.SECP256R1())
    return derive_scalar_key(random)


_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def derive_scalar_key(random: bytes) -> PrivateKey:
    """Map random bytes to a valid P-256 scalar in [1, n-1] (bias below 2^-128 with 48 bytes)."""
    return ec.derive_private_key(int.from_bytes(random, "big") % (_N - 1) + 1, ec.SECP256R1())


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: PublicKey | PrivateKey) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

