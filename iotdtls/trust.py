"""Deciding whether a peer's public key or certificate chain is trusted, and what identity it carries.

Three sources, checked in this order: pinned SHA-256 fingerprints of SubjectPublicKeyInfo (raw public keys, or
the leaf key of a certificate), a callback for dynamic lookup (a device registry), and X.509 chain validation
against configured CA certificates with ``cryptography``'s verifier. Nothing else is accepted.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from .constants import AlertDescription, CertificateType
from .errors import AlertError, BadCertificate, UnknownCA
from .keys import fingerprint, ni_uri


@dataclass(frozen=True)
class PeerCredential:
    """What a peer authenticated with: a raw public key (``kind`` RAW_PUBLIC_KEY) or a certificate chain."""

    kind: CertificateType
    #: DER SubjectPublicKeyInfo of the peer's (leaf) key.
    spki: bytes
    #: DER certificates, leaf first (empty for a raw public key).
    certificates: tuple[bytes, ...] = ()
    #: Name given by a trust callback, if it returned one.
    name: str | None = None

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(self.spki)

    @property
    def ni(self) -> str:
        """The key's RFC 6920 ``ni:///sha-256;...`` name."""
        return ni_uri(self.fingerprint)

    @property
    def subject(self) -> str | None:
        """The leaf certificate's subject (RFC 4514), or None for a raw public key."""
        if not self.certificates:
            return None
        try:
            return x509.load_der_x509_certificate(self.certificates[0]).subject.rfc4514_string()
        except Exception:  # a subject that does not decode (only reachable for pinned or callback-trusted certs)
            return None

    @property
    def identity(self) -> str:
        """A stable name for the layers above: callback name, else certificate subject, else ``ni:`` URI."""
        return self.name or self.subject or self.ni


#: A trust callback gets the presented credential and returns False/None (refuse), True (accept) or a name.
TrustCallback = Callable[[PeerCredential], bool | str | None]


@dataclass
class TrustStore:
    """Trusted peer keys and CAs. Empty means nobody is trusted."""

    pinned: set[bytes] = field(default_factory=set)
    callback: TrustCallback | None = None
    ca_certificates: list[x509.Certificate] = field(default_factory=list)
    #: Check that a server certificate names this DNS name or IP address (client side; None: chain only).
    server_name: str | None = None

    @classmethod
    def of(cls, pins: Iterable[bytes] = (), cas: Iterable[x509.Certificate] = (),
           callback: TrustCallback | None = None) -> TrustStore:
        return cls(pinned=set(pins), ca_certificates=list(cas), callback=callback)

    @property
    def empty(self) -> bool:
        return not self.pinned and self.callback is None and not self.ca_certificates

    def accepts(self) -> list[CertificateType]:
        """Certificate types this store can judge, in preference order (raw keys first, as RFC 7925)."""
        types = []
        if self.pinned or self.callback is not None:
            types.append(CertificateType.RAW_PUBLIC_KEY)
        if self.ca_certificates or self.pinned or self.callback is not None:
            types.append(CertificateType.X509)
        return types

    def verify(self, cred: PeerCredential, wall_time: float) -> PeerCredential:
        """Return ``cred`` (possibly named by the callback) if trusted; raise the alert to send otherwise."""
        judged = self._by_key(cred)
        if judged is not None:
            return judged
        if cred.kind == CertificateType.X509 and self.ca_certificates:
            self._verify_chain(cred, wall_time)
            return cred
        if cred.kind == CertificateType.X509:
            raise UnknownCA("certificate not issued by a trusted CA and its key is not pinned")
        raise BadCertificate("raw public key is not trusted")

    def _by_key(self, cred: PeerCredential) -> PeerCredential | None:
        """``cred`` (named by the callback, if it gave a name) when its key is pinned or the callback accepts it;
        None when neither; BadCertificate when the callback fails."""
        if cred.fingerprint in self.pinned:
            return cred
        if self.callback is not None:
            try:
                verdict = self.callback(cred)
            except Exception as exc:  # a failing registry lookup refuses, it does not crash the server
                raise BadCertificate(f"trust callback failed: {type(exc).__name__}") from None
            if verdict:
                return cred if verdict is True else PeerCredential(cred.kind, cred.spki, cred.certificates,
                                                                   str(verdict))
        return None

    def still_trusts(self, cred: PeerCredential) -> bool:
        """For a resumption, which has the peer's key but not its chain: the key is still pinned or accepted by the
        callback (a revocation in the registry ends resumption at once), or it is a certificate and a CA is trusted
        (the session does not outlive the chain it was made with: :func:`chain_not_after`)."""
        try:
            if self._by_key(cred) is not None:
                return True
        except BadCertificate:  # the callback failed: refused, as in verify()
            return False
        return cred.kind == CertificateType.X509 and bool(self.ca_certificates)

    def _verify_chain(self, cred: PeerCredential, wall_time: float) -> None:
        when = datetime.datetime.fromtimestamp(wall_time, datetime.UTC)
        try:
            certs = [x509.load_der_x509_certificate(c) for c in cred.certificates]
            periods = [(c.not_valid_before_utc, c.not_valid_after_utc) for c in certs]
        except Exception:  # ValueError, InvalidVersion, ...: malformed DER from the peer
            raise BadCertificate("certificate does not parse") from None
        for position, (start, end) in enumerate(periods):
            if not start <= when <= end:
                raise AlertError(f"certificate {position} of the chain is valid {start:%Y-%m-%d} to {end:%Y-%m-%d} "
                                 "only", description=AlertDescription.certificate_expired)
        builder = PolicyBuilder().store(Store(self.ca_certificates)).time(when).extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all())
        try:
            builder.build_client_verifier().verify(certs[0], certs[1:])
        except VerificationError as exc:
            raise UnknownCA(f"chain does not verify: {exc}") from None
        except Exception:  # the verifier's own parse errors on malformed extensions or names
            raise BadCertificate("certificate chain is malformed") from None
        if self.server_name is not None and not _names(certs[0], self.server_name):
            raise BadCertificate(f"certificate is not valid for {self.server_name}")


def _names(cert: x509.Certificate, name: str) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # absent, duplicated or malformed: the name cannot be confirmed
        return False
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return name.lower().rstrip(".") in (d.lower().rstrip(".") for d in san.get_values_for_type(x509.DNSName))
    return ip in san.get_values_for_type(x509.IPAddress)


def chain_not_after(certificates: Iterable[bytes]) -> float | None:
    """The earliest end of validity (POSIX seconds) of a DER chain, or None for no chain or one that does not
    parse (it was verified before this is asked, unless a pin accepted it)."""
    ends = []
    try:
        for der in certificates:
            ends.append(x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp())
    except Exception:  # ValueError and the like: no bound from a malformed chain
        return None
    return min(ends) if ends else None
