"""Events a :class:`~iotdtls.connection.DTLSConnection` reports through ``next_event()``."""

from __future__ import annotations

from dataclasses import dataclass

from .constants import AlertDescription
from .trust import PeerCredential


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of connection events."""


@dataclass(frozen=True, slots=True)
class HandshakeCompleted(Event):
    cipher_suite: int
    #: The PSK identity, or the peer's public-key identity (see ``DTLSConnection.identity``).
    identity: bytes
    extended_master_secret: bool
    #: The peer's verified raw public key or certificate chain (ECDHE-ECDSA suites).
    peer: PeerCredential | None = None
    #: The handshake was abbreviated: it resumed an earlier session (RFC 5246 section 7.3, RFC 5077).
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    data: bytes


@dataclass(frozen=True, slots=True)
class AlertReceived(Event):
    level: int
    description: AlertDescription | int


@dataclass(frozen=True, slots=True)
class ConnectionTerminated(Event):
    """The connection ended: by close_notify (``error`` is ``None``), a fatal alert or a timeout."""

    error: Exception | None


@dataclass(frozen=True, slots=True)
class ReplacementFailed(Event):
    """Server front only: a new handshake from the address of an established session failed or timed out (a
    replayed ClientHello, say). The session at that address goes on unchanged."""

    error: Exception | None


@dataclass(frozen=True, slots=True)
class PeerAddressChanged(Event):
    """Server front only: a session with a connection ID (RFC 9146) was reached from a new address by an
    authenticated record newer than any before, and moved there. The event comes with the new address;
    ``previous`` is the old one. Send to the new address from now on."""

    previous: object
