"""A deterministic X.509 PKI for the fuzz targets, their seeds and tests/test_fuzz.py.

tests/pki.py draws fresh keys, serial numbers and the current date, so its certificates differ on every run;
the fuzz seeds must authenticate when replayed later, so here everything is fixed: keys derived from labels
(tests/helpers.p256_key), fixed serial numbers and validity, RFC 6979 deterministic ECDSA signatures, and a
configuration clock (``wall_time``) inside the validity period.
"""

from __future__ import annotations

import datetime
import functools

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import p256_key

from iotdtls.trust import TrustStore

NOT_BEFORE = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
NOT_AFTER = datetime.datetime(2045, 1, 1, tzinfo=datetime.UTC)
WALL_TIME = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).timestamp()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(cn: str, key: ec.EllipticCurvePrivateKey, serial: int, issuer: x509.Certificate | None,
                 issuer_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    ca = issuer is None
    builder = (
        x509.CertificateBuilder().subject_name(_name(cn))
        .issuer_name(_name(cn) if issuer is None else issuer.subject).public_key(key.public_key())
        .serial_number(serial).not_valid_before(NOT_BEFORE).not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False).add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True)


@functools.cache
def certificates() -> dict[str, x509.Certificate]:
    """``ca``, and ``server`` and ``client`` leaf certificates issued by it."""
    ca_key = p256_key("x509-ca")
    ca = _certificate("iotdtls fuzz CA", ca_key, 1, None, ca_key)
    return {"ca": ca,
            "server": _certificate("fuzz server", p256_key("x509-server"), 2, ca, ca_key),
            "client": _certificate("fuzz client", p256_key("x509-client"), 3, ca, ca_key)}


def x509_kw(role: str, **kw: object) -> dict[str, object]:
    """DTLSConfiguration keywords (for tests/helpers client_config / server_config) of an X.509-only
    ``role`` ("client" or "server") that trusts the fixed CA and presents its own leaf certificate."""
    certs = certificates()
    out: dict[str, object] = {
        "private_key": p256_key(f"x509-{role}"), "certificate_chain": [certs[role]],
        "trust": TrustStore.of(cas=[certs["ca"]]), "wall_time": lambda: WALL_TIME,
    }
    out.update({"psk_identity": None, "psk": None} if role == "client" else {"psk_store": None})
    out.update(kw)
    return out
