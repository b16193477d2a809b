"""Code points of DTLS 1.2 and the extensions iotdtls speaks (IANA TLS registries)."""

from __future__ import annotations

from enum import IntEnum

DTLS_1_2 = 0xFEFD
DTLS_1_0 = 0xFEFF


class ContentType(IntEnum):
    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23
    TLS12_CID = 25  # RFC 9146: a protected record carrying a connection ID
    RETURN_ROUTABILITY_CHECK = 27  # RFC 9853


class HandshakeType(IntEnum):
    HELLO_REQUEST = 0
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    HELLO_VERIFY_REQUEST = 3
    NEW_SESSION_TICKET = 4
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    CERTIFICATE_REQUEST = 13
    SERVER_HELLO_DONE = 14
    CERTIFICATE_VERIFY = 15
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20


class AlertLevel(IntEnum):
    WARNING = 1
    FATAL = 2


class AlertDescription(IntEnum):
    close_notify = 0
    unexpected_message = 10
    bad_record_mac = 20
    record_overflow = 22
    handshake_failure = 40
    bad_certificate = 42
    unsupported_certificate = 43
    certificate_revoked = 44
    certificate_expired = 45
    certificate_unknown = 46
    illegal_parameter = 47
    unknown_ca = 48
    access_denied = 49
    decode_error = 50
    decrypt_error = 51
    protocol_version = 70
    insufficient_security = 71
    internal_error = 80
    user_canceled = 90
    no_renegotiation = 100
    unsupported_extension = 110
    unknown_psk_identity = 115


class CipherSuite(IntEnum):
    TLS_PSK_WITH_AES_128_CCM = 0xC0A4
    TLS_PSK_WITH_AES_128_CCM_8 = 0xC0A8
    TLS_ECDHE_ECDSA_WITH_AES_128_CCM = 0xC0AC
    TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 = 0xC0AE
    TLS_EMPTY_RENEGOTIATION_INFO_SCSV = 0x00FF


PSK_SUITES = frozenset({CipherSuite.TLS_PSK_WITH_AES_128_CCM_8, CipherSuite.TLS_PSK_WITH_AES_128_CCM})
ECDHE_ECDSA_SUITES = frozenset(
    {CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM}
)


class CompressionMethod(IntEnum):
    NULL = 0


class ExtensionType(IntEnum):
    SERVER_NAME = 0
    MAX_FRAGMENT_LENGTH = 1
    SUPPORTED_GROUPS = 10
    EC_POINT_FORMATS = 11
    SIGNATURE_ALGORITHMS = 13
    CLIENT_CERTIFICATE_TYPE = 19
    SERVER_CERTIFICATE_TYPE = 20
    ENCRYPT_THEN_MAC = 22
    EXTENDED_MASTER_SECRET = 23
    RECORD_SIZE_LIMIT = 28
    SESSION_TICKET = 35
    CONNECTION_ID = 54
    RRC = 61  # RFC 9853 return routability check
    RENEGOTIATION_INFO = 0xFF01


class CertificateType(IntEnum):
    """RFC 7250 certificate types (TLS Certificate Types registry)."""

    X509 = 0
    RAW_PUBLIC_KEY = 2


class NamedGroup(IntEnum):
    SECP256R1 = 23


class ECPointFormat(IntEnum):
    UNCOMPRESSED = 0


class ECCurveType(IntEnum):
    NAMED_CURVE = 3


class SignatureScheme(IntEnum):
    """TLS 1.2 SignatureAndHashAlgorithm as one 16-bit value: hash (4 = SHA-256) and signature (3 = ECDSA)."""

    ECDSA_SECP256R1_SHA256 = 0x0403


class ClientCertificateType(IntEnum):
    ECDSA_SIGN = 64


# AEAD parameters per suite: (key length, fixed IV length, tag length)
SUITE_AEAD: dict[int, tuple[int, int, int]] = {
    CipherSuite.TLS_PSK_WITH_AES_128_CCM_8: (16, 4, 8),
    CipherSuite.TLS_PSK_WITH_AES_128_CCM: (16, 4, 16),
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8: (16, 4, 8),
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM: (16, 4, 16),
}

RECORD_HEADER_LEN = 13
HANDSHAKE_HEADER_LEN = 12
EXPLICIT_NONCE_LEN = 8
MAX_PLAINTEXT = 1 << 14
TLS12_CID = 25
#: RFC 9146 allows CIDs of up to 255 bytes; RFC 9146 section 3 and our configuration cap them at 20.
MAX_CID_LEN = 20
#: RFC 8449: the smallest record_size_limit a peer may ask for.
MIN_RECORD_SIZE_LIMIT = 64
