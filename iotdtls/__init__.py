"""iotdtls: a pure-Python DTLS 1.2 stack for the RFC 7925 IoT profile (PSK and raw public keys / X.509 with
AES-128-CCM-8)."""

from .config import DTLSConfiguration
from .connection import DTLSConnection, IdleTimeout
from .constants import AlertDescription, CipherSuite
from .errors import AlertError, ConnectionClosed, ConnectionRefused, DTLSError, HandshakeTimeout, RemoteAlert
from .events import (
    AlertReceived,
    ConnectionTerminated,
    DataReceived,
    Event,
    HandshakeCompleted,
    PeerAddressChanged,
    ReplacementFailed,
)
from .resumption import Session, SessionCache, TicketKeys
from .server import ConnectionReplaced, DTLSServer, SessionEvicted
from .trust import PeerCredential, TrustStore

__version__ = "0.1.0"

__all__ = [
    "AlertDescription",
    "AlertError",
    "AlertReceived",
    "CipherSuite",
    "ConnectionClosed",
    "ConnectionRefused",
    "ConnectionReplaced",
    "ConnectionTerminated",
    "DTLSConfiguration",
    "DTLSConnection",
    "DTLSError",
    "DTLSServer",
    "DataReceived",
    "Event",
    "HandshakeCompleted",
    "HandshakeTimeout",
    "IdleTimeout",
    "PeerAddressChanged",
    "PeerCredential",
    "RemoteAlert",
    "ReplacementFailed",
    "Session",
    "SessionCache",
    "SessionEvicted",
    "TicketKeys",
    "TrustStore",
]
