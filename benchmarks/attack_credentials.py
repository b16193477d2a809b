"""Credentials for the attack harness: a PSK file, raw public keys, a CA and a 2-certificate chain, as files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from iotdtls import DTLSConfiguration
from iotdtls.keys import fingerprint, generate_private_key, private_key_pem, public_key_pem, spki_der
from iotdtls.trust import TrustStore

from .attack_common import PSK_KEY, SERVER_IP


def ca_and_leaf(ip: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A P-256 CA and a leaf certificate for ``ip`` it signed (as ``tests/pki.py`` makes them)."""
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("iotdtls attack CA")).issuer_name(name("iotdtls attack CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(name("iotdtls attack server")).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip)),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return ca, leaf_key, leaf


class Credentials:
    """Everything the servers and clients need, as files in ``directory`` (a new temporary one if None).

    * ``psk.txt``: ``dev1`` .. ``dev{psk_devices}``, ``dev2`` .. and ``leaked`` with :data:`PSK_KEY`.
    * ``server.key`` (raw public key of the server), ``device.key`` / ``device.pub`` (an authenticated device).
    * ``ca.crt``, ``leaf.key`` and ``chain.pem`` (leaf + CA: a 2-certificate chain naming 127.0.0.1).
    """

    def __init__(self, directory: str | Path | None = None, psk_devices: int = 8) -> None:
        from cryptography.hazmat.primitives import serialization

        if directory is None:
            self._tmp: tempfile.TemporaryDirectory[str] | None = tempfile.TemporaryDirectory(prefix="iotdtls-attack-")
            directory = self._tmp.name
        else:
            self._tmp = None
        self.dir = Path(directory)
        self.identities = [f"dev{i}".encode() for i in range(1, psk_devices + 1)] + [b"leaked"]
        self.psk_file = self.dir / "psk.txt"
        self.psk_file.write_text("".join(f"{i.decode()}:{PSK_KEY.hex()}\n" for i in self.identities))
        self.server_key = generate_private_key()
        self.server_key_file = self.dir / "server.key"
        self.server_key_file.write_bytes(private_key_pem(self.server_key))
        self.device_key = generate_private_key()
        self.device_key_file = self.dir / "device.key"
        self.device_key_file.write_bytes(private_key_pem(self.device_key))
        self.device_pub_file = self.dir / "device.pub"
        self.device_pub_file.write_bytes(public_key_pem(self.device_key))
        self.ca_cert, self.leaf_key, self.leaf_cert = ca_and_leaf(SERVER_IP)
        self.ca_file = self.dir / "ca.crt"
        self.ca_file.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        self.leaf_key_file = self.dir / "leaf.key"
        self.leaf_key_file.write_bytes(private_key_pem(self.leaf_key))
        self.chain_file = self.dir / "chain.pem"
        self.chain_file.write_bytes(self.leaf_cert.public_bytes(serialization.Encoding.PEM) +
                                    self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Credentials:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- server arguments --------------------------------------------------------------------------
    def psk_args(self) -> list[str]:
        return ["--psk-file", str(self.psk_file)]

    def rpk_args(self, trust_device: bool = True) -> list[str]:
        """A raw-public-key server; with ``trust_device`` it pins the device key but does not require one."""
        args = ["--key", str(self.server_key_file)]
        return args + (["--trust-key", str(self.device_pub_file)] if trust_device else [])

    def chain_args(self) -> list[str]:
        return ["--key", str(self.leaf_key_file), "--cert", str(self.chain_file)]

    # -- client configurations --------------------------------------------------------------------
    def psk_client(self, identity: bytes = b"dev1", key: bytes = PSK_KEY,
                   random: Callable[[int], bytes] = os.urandom) -> DTLSConfiguration:
        return DTLSConfiguration(psk_identity=identity, psk=key, random=random)

    def anonymous_rpk_client(self, random: Callable[[int], bytes] = os.urandom) -> DTLSConfiguration:
        """A raw-public-key client without a key of its own, pinning the server's key."""
        pin = fingerprint(spki_der(self.server_key))
        return DTLSConfiguration(trust=TrustStore.of([pin]), random=random)

    def device_rpk_client(self, random: Callable[[int], bytes] = os.urandom) -> DTLSConfiguration:
        """The authenticated device: its own key (pinned by the server) and the server's key pinned."""
        pin = fingerprint(spki_der(self.server_key))
        return DTLSConfiguration(private_key=self.device_key, trust=TrustStore.of([pin]), random=random)

    def chain_client(self, random: Callable[[int], bytes] = os.urandom) -> DTLSConfiguration:
        """An anonymous client that verifies the server's X.509 chain against the CA."""
        trust = TrustStore.of(cas=[self.ca_cert])
        trust.server_name = SERVER_IP
        return DTLSConfiguration(trust=trust, random=random)
