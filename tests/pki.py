"""Test PKI: a CA and leaf certificates for P-256 keys, built with ``cryptography`` (no openssl CLI needed)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotdtls.keys import private_key_pem, public_key_pem

NOW = datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """``stem.key`` (PKCS#8 PEM) and ``stem.crt`` (PEM); returns their paths."""
        key_path, crt_path = directory / f"{stem}.key", directory / f"{stem}.crt"
        key_path.write_bytes(private_key_pem(self.key))
        crt_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{stem}.pub").write_bytes(public_key_pem(self.key))
        return key_path, crt_path


def make_ca(cn: str = "iotdtls test CA", key: ec.EllipticCurvePrivateKey | None = None) -> Issued:
    key = key or ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def issue(ca: Issued, cn: str, key: ec.EllipticCurvePrivateKey | None = None, *,
          names: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 30,
          not_before: datetime.datetime | None = None) -> Issued:
    """A leaf certificate for ``key`` (a new one if None) signed by ``ca``; ``names`` become SAN entries."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    start = not_before or NOW - datetime.timedelta(days=1)
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    builder = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))
