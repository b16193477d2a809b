"""Key files, fingerprints and trust decisions (``iotdtls/keys.py``, ``iotdtls/trust.py``), without a handshake."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pki
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from helpers import p256_key, pin_of

from iotdtls.constants import AlertDescription, CertificateType
from iotdtls.errors import AlertError, BadCertificate, UnknownCA
from iotdtls.keys import (
    KeyFileError,
    derive_scalar_key,
    fingerprint,
    generate_private_key,
    load_certificates,
    load_private_key,
    load_public_key,
    ni_uri,
    parse_fingerprint,
    private_key_pem,
    public_key_pem,
    read_pin,
    spki_der,
    write_secret_file,
)
from iotdtls.trust import PeerCredential, TrustStore

Enc = serialization.Encoding
Priv = serialization.PrivateFormat
Pub = serialization.PublicFormat
KEY = p256_key("keys")
DIGEST = fingerprint(spki_der(KEY))
HEX = DIGEST.hex()
NI = "ni:///sha-256;" + base64.urlsafe_b64encode(DIGEST).decode().rstrip("=")
NOW = pki.NOW.timestamp()
DAY = 86400.0


# -- private and public keys -----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [Enc.PEM, Enc.DER])
@pytest.mark.parametrize("fmt", [Priv.PKCS8, Priv.TraditionalOpenSSL], ids=["pkcs8", "sec1"])
def test_load_private_key_forms(encoding: Enc, fmt: Priv) -> None:
    data = KEY.private_bytes(encoding, fmt, serialization.NoEncryption())
    if fmt is Priv.TraditionalOpenSSL and encoding is Enc.PEM:
        assert data.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    loaded = load_private_key(data)
    assert loaded.private_numbers() == KEY.private_numbers()


def test_private_key_pem_round_trip() -> None:
    pem = private_key_pem(KEY)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert load_private_key(pem).private_numbers() == KEY.private_numbers()


OtherKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
OTHER_KEYS: dict[str, Callable[[], OtherKey]] = {
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "secp256k1": lambda: ec.generate_private_key(ec.SECP256K1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "rsa1024": lambda: rsa.generate_private_key(65537, 1024),
}


@pytest.mark.parametrize("kind", sorted(OTHER_KEYS))
@pytest.mark.parametrize("encoding", [Enc.PEM, Enc.DER])
def test_other_key_types_are_refused(kind: str, encoding: Enc) -> None:
    key = OTHER_KEYS[kind]()
    with pytest.raises(KeyFileError, match="P-256"):
        load_private_key(key.private_bytes(encoding, Priv.PKCS8, serialization.NoEncryption()))
    with pytest.raises(KeyFileError, match="P-256"):
        load_public_key(key.public_key().public_bytes(encoding, Pub.SubjectPublicKeyInfo))


@pytest.mark.parametrize("encoding", [Enc.PEM, Enc.DER])
def test_encrypted_private_key_is_refused(encoding: Enc) -> None:
    data = KEY.private_bytes(encoding, Priv.PKCS8, serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(KeyFileError):
        load_private_key(data)


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                                  b"\x30\x03\x02\x01\x01"])
def test_unreadable_keys_are_refused(data: bytes) -> None:
    with pytest.raises(KeyFileError):
        load_private_key(data)
    with pytest.raises(KeyFileError):
        load_public_key(data)


def test_load_public_key_forms() -> None:
    spki = spki_der(KEY)
    assert spki_der(load_public_key(spki)) == spki
    assert spki_der(load_public_key(public_key_pem(KEY))) == spki
    assert public_key_pem(KEY) == public_key_pem(KEY.public_key())
    leaf = pki.issue(pki.make_ca(), "dev", key=KEY)
    assert spki_der(load_public_key(leaf.cert.public_bytes(Enc.PEM))) == spki


def test_load_certificates() -> None:
    ca = pki.make_ca()
    leaf = pki.issue(ca, "dev")
    chain = load_certificates(leaf.cert.public_bytes(Enc.PEM) + ca.cert.public_bytes(Enc.PEM))
    assert chain == [leaf.cert, ca.cert]
    assert load_certificates(leaf.cert.public_bytes(Enc.DER)) == [leaf.cert]
    for bad in (b"", b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", b"\x30\x00"):
        with pytest.raises(KeyFileError):
            load_certificates(bad)


def test_generated_and_derived_keys() -> None:
    a, b = derive_scalar_key(b"\x01" * 48), generate_private_key(b"\x01" * 48)
    assert a.private_numbers() == b.private_numbers() and isinstance(a.curve, ec.SECP256R1)
    assert derive_scalar_key(b"\x00" * 48).private_numbers().private_value == 1  # never the invalid scalar 0
    assert derive_scalar_key(b"\xff" * 48).private_numbers().private_value >= 1
    assert generate_private_key().private_numbers() != generate_private_key().private_numbers()


# -- fingerprints ----------------------------------------------------------------------------------------


def test_fingerprint_and_ni() -> None:
    assert hashlib.sha256(KEY.public_key().public_bytes(Enc.DER, Pub.SubjectPublicKeyInfo)).digest() == DIGEST
    assert pin_of(KEY) == DIGEST
    assert ni_uri(DIGEST) == NI and len(NI) == len("ni:///sha-256;") + 43 and "=" not in NI
    # RFC 6920 section 3 example: the sha-256 of "Hello World!"
    example = hashlib.sha256(b"Hello World!").digest()
    assert ni_uri(example) == "ni:///sha-256;f4OxZX_x_FO5LcGBSKHWXfwtSx-j1ncoSt3SABJtkGk"


@pytest.mark.parametrize("text", [
    HEX,
    HEX.upper(),
    ":".join(HEX[i : i + 2] for i in range(0, 64, 2)),
    ":".join(HEX[i : i + 2] for i in range(0, 64, 2)).upper(),
    "sha-256:" + HEX,
    "SHA-256:" + HEX.upper(),
    "sha256:" + HEX,
    "sha-256=" + HEX,
    "  " + HEX + "\n",
    NI,
    NI.replace("ni:///", "ni://example.com/"),
    NI.replace("ni:///", "ni://device.local:5684/"),
    NI + "?ct=41",
])
def test_parse_fingerprint_forms(text: str) -> None:
    assert parse_fingerprint(text) == DIGEST


@pytest.mark.parametrize("text", [
    "",
    HEX[:-1],
    HEX + "0",
    HEX[:-2],
    HEX + "00",
    "g" + HEX[1:],
    HEX[:-1] + "z",
    "sha-512:" + HEX,
    "md5:" + HEX[:32],
    NI[:-1],
    NI + "A",
    NI.replace("sha-256", "sha-512"),
    NI.replace("ni:///", "ni:/"),
    NI[:-1] + "+",
    NI[:-1] + "=",
    "ni:///sha-256;" + base64.b64encode(DIGEST).decode(),  # padded standard base64 is not base64url
    "ni:///sha-256",
])
def test_parse_fingerprint_refuses(text: str) -> None:
    with pytest.raises(KeyFileError):
        parse_fingerprint(text)


def test_read_pin_files_and_strings(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_bytes(public_key_pem(KEY))
    (tmp_path / "k.der").write_bytes(spki_der(KEY))
    leaf = pki.issue(pki.make_ca(), "dev", key=KEY)
    leaf.write(tmp_path, "leaf")
    for name in ("k.pem", "k.der", "leaf.crt", "leaf.pub"):
        assert read_pin(str(tmp_path / name)) == DIGEST
    assert read_pin(HEX) == read_pin(NI) == read_pin("sha-256:" + HEX.upper()) == DIGEST
    with pytest.raises(KeyFileError):
        read_pin(str(tmp_path / "missing.pem"))
    (tmp_path / "p384.pem").write_bytes(ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        Enc.PEM, Pub.SubjectPublicKeyInfo))
    with pytest.raises(KeyFileError):
        read_pin(str(tmp_path / "p384.pem"))
    (tmp_path / "junk").write_bytes(b"junk")
    with pytest.raises(KeyFileError):
        read_pin(str(tmp_path / "junk"))


def test_write_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    write_secret_file(path, b"one")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path.read_bytes() == b"one"
    path.write_bytes(b"an old, longer, world-readable file")
    os.chmod(path, 0o644)
    write_secret_file(str(path), b"two")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path.read_bytes() == b"two"


# -- trust decisions -------------------------------------------------------------------------------------


def rpk(key: ec.EllipticCurvePrivateKey) -> PeerCredential:
    return PeerCredential(CertificateType.RAW_PUBLIC_KEY, spki_der(key))


def chain_of(*certs: x509.Certificate) -> PeerCredential:
    return PeerCredential(CertificateType.X509, spki_der(certs[0].public_key()),  # type: ignore[arg-type]
                          tuple(c.public_bytes(Enc.DER) for c in certs))


def test_credential_properties() -> None:
    cred = rpk(KEY)
    assert cred.fingerprint == DIGEST and cred.ni == NI
    assert cred.subject is None and cred.identity == NI
    leaf = pki.issue(pki.make_ca(), "sensor-7", key=KEY)
    x = chain_of(leaf.cert)
    assert x.fingerprint == DIGEST and x.subject == "CN=sensor-7" and x.identity == "CN=sensor-7"
    assert PeerCredential(x.kind, x.spki, x.certificates, "named").identity == "named"


def test_empty_store_trusts_nobody() -> None:
    store = TrustStore()
    assert store.empty and store.accepts() == []
    with pytest.raises(BadCertificate):
        store.verify(rpk(KEY), NOW)
    with pytest.raises(UnknownCA):
        store.verify(chain_of(pki.issue(pki.make_ca(), "dev", key=KEY).cert), NOW)


def test_pinned_raw_key() -> None:
    store = TrustStore.of([DIGEST])
    assert store.accepts() == [CertificateType.RAW_PUBLIC_KEY, CertificateType.X509]
    assert store.verify(rpk(KEY), NOW) == rpk(KEY)
    with pytest.raises(BadCertificate) as info:
        store.verify(rpk(p256_key("stranger")), NOW)
    assert info.value.description == AlertDescription.bad_certificate


def test_pinned_certificate_leaf_key() -> None:
    # No CA at all: a certificate is accepted by the pin of its leaf key, whoever issued it, even expired.
    store = TrustStore.of([DIGEST])
    leaf = pki.issue(pki.make_ca(), "dev", key=KEY, not_before=pki.NOW - datetime.timedelta(days=90))
    assert store.verify(chain_of(leaf.cert), NOW).identity == "CN=dev"
    with pytest.raises(UnknownCA):
        store.verify(chain_of(pki.issue(pki.make_ca(), "dev").cert), NOW)


def test_callback_verdicts() -> None:
    keys = {verdict: p256_key(f"callback-{i}") for i, verdict in enumerate((True, "device-42", False, None))}
    verdicts = {spki_der(k): v for v, k in keys.items()}
    seen: list[PeerCredential] = []

    def registry(cred: PeerCredential) -> bool | str | None:
        seen.append(cred)
        return verdicts[cred.spki]

    store = TrustStore.of(callback=registry)
    assert store.accepts() == [CertificateType.RAW_PUBLIC_KEY, CertificateType.X509]
    assert store.verify(rpk(keys[True]), NOW) == rpk(keys[True])
    assert store.verify(rpk(keys[True]), NOW).identity == rpk(keys[True]).ni
    named = store.verify(rpk(keys["device-42"]), NOW)
    assert named.identity == "device-42" and named.name == "device-42" and named.spki == spki_der(keys["device-42"])
    for verdict in (False, None):
        with pytest.raises(BadCertificate):
            store.verify(rpk(keys[verdict]), NOW)
    assert seen[-1] == rpk(keys[None])
    # a name also replaces the subject of a certificate
    leaf = pki.issue(pki.make_ca(), "sensor", key=keys["device-42"])
    assert store.verify(chain_of(leaf.cert), NOW).identity == "device-42"


def test_callback_that_raises_refuses() -> None:
    def broken(cred: PeerCredential) -> bool:
        raise ConnectionError("registry down")

    with pytest.raises(BadCertificate, match="ConnectionError"):
        TrustStore.of(callback=broken).verify(rpk(KEY), NOW)


def test_pins_are_checked_before_the_callback() -> None:
    calls: list[PeerCredential] = []
    store = TrustStore.of([DIGEST], callback=lambda c: calls.append(c) or None)  # type: ignore[func-returns-value]
    store.verify(rpk(KEY), NOW)
    assert calls == []


def test_ca_chain() -> None:
    ca = pki.make_ca()
    leaf = pki.issue(ca, "dev")
    store = TrustStore.of(cas=[ca.cert])
    assert store.accepts() == [CertificateType.X509]
    assert store.verify(chain_of(leaf.cert), NOW).identity == "CN=dev"
    assert store.verify(chain_of(leaf.cert, ca.cert), NOW).identity == "CN=dev"  # the root may be sent along
    with pytest.raises(BadCertificate):  # a raw key cannot chain to a CA
        store.verify(rpk(leaf.key), NOW)


def test_unknown_ca() -> None:
    store = TrustStore.of(cas=[pki.make_ca().cert])
    other = pki.make_ca("other CA")
    with pytest.raises(UnknownCA) as info:
        store.verify(chain_of(pki.issue(other, "dev").cert, other.cert), NOW)
    assert info.value.description == AlertDescription.unknown_ca


def test_validity_period_inside() -> None:
    ca = pki.make_ca()
    leaf = pki.issue(ca, "dev", days=10)
    store = TrustStore.of(cas=[ca.cert])
    for t in (NOW, NOW + 8 * DAY):
        store.verify(chain_of(leaf.cert), t)


@pytest.mark.parametrize("when", ["expired", "not-yet-valid"])
def test_validity_period_outside_is_certificate_expired(when: str) -> None:
    ca = pki.make_ca()
    leaf = pki.issue(ca, "dev", not_before=pki.NOW - datetime.timedelta(hours=12), days=10)
    wall = NOW + 12 * DAY if when == "expired" else NOW - DAY / 2 - 600  # the CA itself is valid at both times
    with pytest.raises(AlertError) as info:
        TrustStore.of(cas=[ca.cert]).verify(chain_of(leaf.cert), wall)
    assert info.value.description == AlertDescription.certificate_expired


@pytest.mark.parametrize("when", ["expired", "not-yet-valid"])
def test_validity_period_outside_is_refused(when: str) -> None:
    ca = pki.make_ca()
    leaf = pki.issue(ca, "dev", not_before=pki.NOW - datetime.timedelta(hours=12), days=10)
    wall = NOW + 12 * DAY if when == "expired" else NOW - DAY / 2 - 600
    with pytest.raises(AlertError) as info:
        TrustStore.of(cas=[ca.cert]).verify(chain_of(leaf.cert), wall)
    assert info.value.description in (AlertDescription.certificate_expired, AlertDescription.unknown_ca)


@pytest.mark.parametrize(("name", "ok"), [
    ("127.0.0.1", True), ("localhost", True), ("LOCALHOST.", True), ("::1", True), ("gw.example", True),
    ("127.0.0.2", False), ("::2", False), ("other.example", False), ("example", False), ("10.0.0.1", False),
])
def test_server_name(name: str, ok: bool) -> None:
    ca = pki.make_ca()
    leaf = pki.issue(ca, "gw", names=("127.0.0.1", "::1", "localhost", "gw.example"))
    store = TrustStore(ca_certificates=[ca.cert], server_name=name)
    if ok:
        store.verify(chain_of(leaf.cert), NOW)
    else:
        with pytest.raises(BadCertificate, match="not valid for"):
            store.verify(chain_of(leaf.cert), NOW)


def test_server_name_without_san_is_refused() -> None:
    ca = pki.make_ca()
    leaf = pki.issue(ca, "gw", names=())
    with pytest.raises(BadCertificate):
        TrustStore(ca_certificates=[ca.cert], server_name="gw").verify(chain_of(leaf.cert), NOW)
    TrustStore(ca_certificates=[ca.cert]).verify(chain_of(leaf.cert), NOW)  # no name to check: chain only
