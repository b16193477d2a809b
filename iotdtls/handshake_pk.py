"""The ECDHE-ECDSA half of the handshake (RFC 8422, RFC 7250, RFC 5246 section 7.4): negotiation of
certificate types, Certificate, signed ServerKeyExchange, CertificateRequest, CertificateVerify.

Handlers are registered in :data:`iotdtls.handshake.HANDSHAKE_TABLE` next to the PSK ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from .buffer import Buffer, Writer
from .constants import (
    CertificateType,
    ClientCertificateType,
    ECPointFormat,
    ExtensionType,
    HandshakeType,
    NamedGroup,
    SignatureScheme,
)
from .errors import (
    BadCertificate,
    DecryptError,
    HandshakeFailure,
    IllegalParameter,
    UnsupportedCertificate,
)
from .handshake_base import HandshakeBase, State
from .keys import derive_scalar_key, spki_der
from .messages import ClientHello, Extensions, find_extension
from .pkmessages import (
    P256_POINT_LEN,
    CertificateMessage,
    CertificateRequest,
    CertificateVerify,
    ECDHEServerKeyExchange,
    pull_certificate,
    pull_certificate_request,
    pull_certificate_type,
    pull_certificate_verify,
    pull_ecdhe_client_key_exchange,
    pull_ecdhe_server_key_exchange,
    pull_uint8_list,
    pull_uint16_list,
    push_certificate,
    push_certificate_request,
    push_certificate_verify,
    push_ecdhe_client_key_exchange,
    push_ecdhe_server_key_exchange,
    push_uint8_list,
    push_uint16_list,
)
from .reassembly import OutMessage
from .trust import PeerCredential

_SCHEME = SignatureScheme.ECDSA_SECP256R1_SHA256
_ECDSA = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_ECDSA_PREHASHED = ec.ECDSA(utils.Prehashed(hashes.SHA256()), deterministic_signing=True)
_VERIFY = ec.ECDSA(hashes.SHA256())
_VERIFY_PREHASHED = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
_POINT_FORMATS = (ExtensionType.EC_POINT_FORMATS, push_uint8_list([ECPointFormat.UNCOMPRESSED]))


def _decode_point(point: bytes) -> ec.EllipticCurvePublicKey:
    if len(point) != P256_POINT_LEN or point[0] != 4:
        raise IllegalParameter("ECDH share is not an uncompressed P-256 point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise IllegalParameter("ECDH share is not on the curve") from None


def _encode_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _ephemeral_key(random: Callable[[int], bytes]) -> ec.EllipticCurvePrivateKey:
    """A fresh ECDHE key from the configured randomness (OpenSSL's own generator when that is os.urandom:
    the same source, at half the cost of deriving the key from a scalar)."""
    if random is os.urandom:
        return ec.generate_private_key(ec.SECP256R1())
    return derive_scalar_key(random(48))


_SPKI_CACHE: dict[int, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}


def _own_spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The DER SubjectPublicKeyInfo of our key, encoded once per key object (a handful of keys per process)."""
    hit = _SPKI_CACHE.get(id(key))
    if hit is not None and hit[0] is key:
        return hit[1]
    if len(_SPKI_CACHE) >= 64:
        _SPKI_CACHE.clear()
    spki = spki_der(key)
    _SPKI_CACHE[id(key)] = (key, spki)
    return spki


def _peer_credential(msg: CertificateMessage) -> tuple[PeerCredential, ec.EllipticCurvePublicKey]:
    """The credential a Certificate message presents and its P-256 key, or the alert to refuse it with."""
    if msg.kind == CertificateType.RAW_PUBLIC_KEY:
        spki = msg.spki
        try:
            key = serialization.load_der_public_key(spki)
        except Exception:  # ValueError, UnsupportedAlgorithm (unknown curve OIDs), ...: all the peer's fault
            raise BadCertificate("raw public key does not parse") from None
    else:
        try:
            key = x509.load_der_x509_certificate(msg.chain[0]).public_key()
        except Exception:  # ValueError, InvalidVersion, UnsupportedAlgorithm, ...
            raise BadCertificate("certificate does not parse") from None
        spki = spki_der(key) if isinstance(key, ec.EllipticCurvePublicKey) else b""
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise UnsupportedCertificate("peer key is not a P-256 key")
    return PeerCredential(msg.kind, spki, tuple(msg.chain)), key


class PublicKeyHandshake(HandshakeBase):
    __slots__ = ()

    # -- shared ----------------------------------------------------------------------------------
    def _judge(self, msg: CertificateMessage) -> None:
        trust = self._config.trust
        cred, key = _peer_credential(msg)
        if trust is None:
            raise BadCertificate("no trust store configured")
        self._peer = trust.verify(cred, self._config.wall_time())
        self._peer_key = key

    def _own_certificate(self, kind: CertificateType) -> OutMessage:
        cfg = self._config
        if kind == CertificateType.RAW_PUBLIC_KEY:
            assert cfg.private_key is not None
            msg = CertificateMessage(kind, spki=_own_spki(cfg.private_key))
        else:
            chain = cfg.certificate_chain or []
            msg = CertificateMessage(kind, chain=[c.public_bytes(serialization.Encoding.DER) for c in chain])
        w = Writer()
        push_certificate(w, msg)
        return self._next_message(HandshakeType.CERTIFICATE, w.data())

    def _ecdhe_premaster(self, peer_point: bytes) -> None:
        assert self._ecdhe_key is not None
        self._premaster = self._ecdhe_key.exchange(ec.ECDH(), _decode_point(peer_point))

    # -- client ----------------------------------------------------------------------------------
    def _client_pk_extensions(self) -> Extensions:
        """Extensions offered with ECDHE-ECDSA suites (RFC 8422 section 5.1, RFC 5246, RFC 7250)."""
        cfg = self._config
        assert cfg.trust is not None
        exts: Extensions = [
            (ExtensionType.SUPPORTED_GROUPS, push_uint16_list([NamedGroup.SECP256R1])),
            _POINT_FORMATS,
            (ExtensionType.SIGNATURE_ALGORITHMS, push_uint16_list([_SCHEME])),
        ]
        if cfg.private_key is not None:
            own = [CertificateType.X509, CertificateType.RAW_PUBLIC_KEY] if cfg.certificate_chain \
                else [CertificateType.RAW_PUBLIC_KEY]
            exts.append((ExtensionType.CLIENT_CERTIFICATE_TYPE, push_uint8_list(own)))
        accepted = cfg.trust.accepts()
        if CertificateType.RAW_PUBLIC_KEY in accepted:
            exts.append((ExtensionType.SERVER_CERTIFICATE_TYPE, push_uint8_list(accepted)))
        return exts

    def _client_pk_server_hello(self, exts: Extensions) -> None:
        """Certificate types the ServerHello selected; without the extensions X.509 applies."""
        cfg = self._config
        assert cfg.trust is not None
        data = find_extension(exts, ExtensionType.SERVER_CERTIFICATE_TYPE)
        kind = CertificateType.X509 if data is None else pull_certificate_type(data)
        if kind not in cfg.trust.accepts():
            raise UnsupportedCertificate(f"server certificate type {kind.name} cannot be verified here")
        self._server_cert_type = kind
        data = find_extension(exts, ExtensionType.CLIENT_CERTIFICATE_TYPE)
        if data is not None:
            self._client_cert_type = pull_certificate_type(data)
        formats = find_extension(exts, ExtensionType.EC_POINT_FORMATS)
        if formats is not None and ECPointFormat.UNCOMPRESSED not in pull_uint8_list(formats):
            raise IllegalParameter("server does not accept uncompressed points")
        self._state = State.CLIENT_WAIT_CERTIFICATE

    def _client_certificate(self, body: bytes, seq: int, now: float) -> None:
        msg = pull_certificate(Buffer(body), self._server_cert_type)
        if msg.kind == CertificateType.X509 and not msg.chain:
            raise BadCertificate("server sent no certificate")
        self._judge(msg)
        self._add_transcript(HandshakeType.CERTIFICATE, seq, body)
        self._state = State.CLIENT_WAIT_ECDHE_SKE

    def _client_ecdhe_server_key_exchange(self, body: bytes, seq: int, now: float) -> None:
        ske = pull_ecdhe_server_key_exchange(Buffer(body))
        if ske.scheme != _SCHEME:
            raise IllegalParameter("server signed with an algorithm we did not offer")
        assert self._peer_key is not None
        try:
            self._peer_key.verify(ske.signature, self._client_random + self._server_random + ske.params(), _VERIFY)
        except InvalidSignature:
            raise DecryptError("ServerKeyExchange signature does not verify") from None
        self._ecdhe_key = _ephemeral_key(self._config.random)
        self._ecdhe_premaster(ske.point)
        self._identity = self._peer_identity()
        self._add_transcript(HandshakeType.SERVER_KEY_EXCHANGE, seq, body)
        self._state = State.CLIENT_WAIT_CR_OR_DONE

    def _client_certificate_request(self, body: bytes, seq: int, now: float) -> None:
        cr = pull_certificate_request(Buffer(body))
        cfg = self._config
        can_sign = _SCHEME in cr.schemes and ClientCertificateType.ECDSA_SIGN in cr.certificate_types
        self._cert_requested = True
        if self._client_cert_type == CertificateType.RAW_PUBLIC_KEY:
            if not can_sign:
                raise HandshakeFailure("server requests a raw public key but not an ECDSA P-256 signature")
            self._present_cert = True
        else:
            self._present_cert = can_sign and bool(cfg.certificate_chain)
        self._add_transcript(HandshakeType.CERTIFICATE_REQUEST, seq, body)
        self._state = State.CLIENT_WAIT_DONE

    def _client_pk_final_flight(self) -> list[OutMessage]:
        """[Certificate], ClientKeyExchange, [CertificateVerify]; derives the keys on the way."""
        flight = []
        if self._cert_requested:
            if self._present_cert:
                flight.append(self._own_certificate(self._client_cert_type))
            else:
                w = Writer()
                push_certificate(w, CertificateMessage(CertificateType.X509))
                flight.append(self._next_message(HandshakeType.CERTIFICATE, w.data()))
        assert self._ecdhe_key is not None
        w = Writer()
        push_ecdhe_client_key_exchange(w, _encode_point(self._ecdhe_key))
        self._ecdhe_key = None
        flight.append(self._next_message(HandshakeType.CLIENT_KEY_EXCHANGE, w.data()))
        for msg in flight:
            self._add_transcript(msg.msg_type, msg.message_seq, msg.body)
        self._derive_keys()
        if self._cert_requested and self._present_cert:
            key = self._config.private_key
            assert key is not None
            signature = key.sign(self._transcript.copy().digest(), _ECDSA_PREHASHED)
            w = Writer()
            push_certificate_verify(w, CertificateVerify(_SCHEME, signature))
            cv = self._next_message(HandshakeType.CERTIFICATE_VERIFY, w.data())
            self._add_transcript(cv.msg_type, cv.message_seq, cv.body)
            flight.append(cv)
        return flight

    # -- server ----------------------------------------------------------------------------------
    def _server_pk_negotiate(self, hello: ClientHello) -> Extensions:
        """ServerHello extensions for an ECDHE-ECDSA suite, or the alert explaining why it cannot be used."""
        cfg = self._config
        exts = hello.extensions
        groups = find_extension(exts, ExtensionType.SUPPORTED_GROUPS)
        if groups is not None and NamedGroup.SECP256R1 not in pull_uint16_list(groups):
            raise HandshakeFailure("client does not support secp256r1")
        schemes = find_extension(exts, ExtensionType.SIGNATURE_ALGORITHMS)
        if schemes is not None and _SCHEME not in pull_uint16_list(schemes):
            raise HandshakeFailure("client does not accept ecdsa_secp256r1_sha256")
        formats = find_extension(exts, ExtensionType.EC_POINT_FORMATS)
        if formats is not None and ECPointFormat.UNCOMPRESSED not in pull_uint8_list(formats):
            raise IllegalParameter("client does not accept uncompressed points")
        out: Extensions = [_POINT_FORMATS] if formats is not None else []
        # our certificate: what the client can verify and we can present
        # a configured certificate chain is presented by preference; every key can be a raw public key
        can_present = [CertificateType.X509, CertificateType.RAW_PUBLIC_KEY] if cfg.certificate_chain \
            else [CertificateType.RAW_PUBLIC_KEY]
        offered = find_extension(exts, ExtensionType.SERVER_CERTIFICATE_TYPE)
        if offered is None:
            if CertificateType.X509 not in can_present:
                raise UnsupportedCertificate("client accepts only X.509 and we have a raw public key")
            server_type = CertificateType.X509
        else:
            server_type = _first_common(pull_uint8_list(offered), can_present)
            out.append((ExtensionType.SERVER_CERTIFICATE_TYPE, bytes((server_type,))))
        # the client's certificate: requested when we have something to judge it with
        trust = cfg.trust
        client_type: CertificateType | None = None
        if trust is not None and not trust.empty:
            offered = find_extension(exts, ExtensionType.CLIENT_CERTIFICATE_TYPE)
            if offered is None:
                client_type = CertificateType.X509 if CertificateType.X509 in trust.accepts() else None
            else:
                try:
                    client_type = _first_common(pull_uint8_list(offered), trust.accepts())
                except UnsupportedCertificate:
                    if cfg.require_client_auth:
                        raise
                if client_type is not None:
                    out.append((ExtensionType.CLIENT_CERTIFICATE_TYPE, bytes((client_type,))))
            if client_type is None and cfg.require_client_auth:
                raise UnsupportedCertificate("client can present no certificate type we can verify")
        self._server_cert_type = server_type
        self._cert_requested = client_type is not None
        if client_type is not None:
            self._client_cert_type = client_type
        return out

    def _server_pk_flight(self) -> list[OutMessage]:
        """Certificate, ServerKeyExchange and, when client authentication is wanted, CertificateRequest."""
        cfg = self._config
        key = cfg.private_key
        assert key is not None
        flight = [self._own_certificate(self._server_cert_type)]
        self._ecdhe_key = _ephemeral_key(cfg.random)
        ske = ECDHEServerKeyExchange(point=_encode_point(self._ecdhe_key), scheme=_SCHEME, signature=b"")
        ske.signature = key.sign(self._client_random + self._server_random + ske.params(), _ECDSA)
        w = Writer()
        push_ecdhe_server_key_exchange(w, ske)
        flight.append(self._next_message(HandshakeType.SERVER_KEY_EXCHANGE, w.data()))
        if self._cert_requested:
            w = Writer()
            push_certificate_request(w, CertificateRequest())
            flight.append(self._next_message(HandshakeType.CERTIFICATE_REQUEST, w.data()))
        return flight

    def _server_client_certificate(self, body: bytes, seq: int, now: float) -> None:
        msg = pull_certificate(Buffer(body), self._client_cert_type)
        if msg.kind == CertificateType.X509 and not msg.chain:
            if self._config.require_client_auth:
                raise HandshakeFailure("client presented no certificate")
            self._state = State.SERVER_WAIT_CKE
        else:
            self._judge(msg)
            self._state = State.SERVER_WAIT_CKE_AUTH
        self._add_transcript(HandshakeType.CERTIFICATE, seq, body)

    def _server_ecdhe_client_key_exchange(self, body: bytes, seq: int, now: float) -> None:
        self._ecdhe_premaster(pull_ecdhe_client_key_exchange(Buffer(body)))
        self._ecdhe_key = None
        self._add_transcript(HandshakeType.CLIENT_KEY_EXCHANGE, seq, body)
        self._derive_keys()
        if self._state is State.SERVER_WAIT_CKE_AUTH:
            self._state = State.SERVER_WAIT_CERTIFICATE_VERIFY
        else:
            self._state = State.SERVER_WAIT_FINISHED

    def _server_certificate_verify(self, body: bytes, seq: int, now: float) -> None:
        cv = pull_certificate_verify(Buffer(body))
        if cv.scheme != _SCHEME:
            raise IllegalParameter("CertificateVerify uses an algorithm we did not offer")
        assert self._peer_key is not None
        try:
            self._peer_key.verify(cv.signature, self._transcript.copy().digest(), _VERIFY_PREHASHED)
        except InvalidSignature:
            raise DecryptError("CertificateVerify signature does not verify") from None
        self._identity = self._peer_identity()
        self._add_transcript(HandshakeType.CERTIFICATE_VERIFY, seq, body)
        self._state = State.SERVER_WAIT_FINISHED

    def _peer_identity(self) -> bytes:
        return self._peer.identity.encode() if self._peer is not None else b""


def _first_common(offered: list[int], supported: list[CertificateType]) -> CertificateType:
    """Our first preference among the types the client lists (RFC 7250 leaves the choice to the server)."""
    for t in supported:
        if t in offered:
            return t
    raise UnsupportedCertificate("no certificate type in common")
