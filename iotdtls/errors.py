"""Exceptions. Every protocol failure carries the alert that describes it.

``DTLSError`` is the root. ``AlertError`` subclasses carry an :class:`AlertDescription`; ``remote`` tells
whether the peer sent the alert (``True``) or we raised it because the peer broke the protocol (``False``).
"""

from __future__ import annotations

import errno

from .constants import AlertDescription


class DTLSError(Exception):
    """Base class for every iotdtls error."""


class AlertError(DTLSError):
    """A fatal protocol error, described by a TLS alert."""

    description: AlertDescription = AlertDescription.internal_error

    def __init__(self, reason: str = "", *, description: AlertDescription | None = None,
                 remote: bool = False) -> None:
        if description is not None:
            self.description = description
        self.remote = remote
        self.reason = reason
        who = "peer sent" if remote else "local"
        super().__init__(f"{self.description.name} ({who}){': ' + reason if reason else ''}")

    def explain(self, hint: str) -> None:
        """Add what the alert usually means to ``reason`` and to the message (e.g. a wrong PSK)."""
        self.reason = f"{self.reason}: {hint}" if self.reason else hint
        who = "peer sent" if self.remote else "local"
        self.args = (f"{self.description.name} ({who}): {self.reason}",)


class UnexpectedMessage(AlertError):
    description = AlertDescription.unexpected_message


class BadRecordMac(AlertError):
    description = AlertDescription.bad_record_mac


class DecodeError(AlertError):
    description = AlertDescription.decode_error


class DecryptError(AlertError):
    description = AlertDescription.decrypt_error


class HandshakeFailure(AlertError):
    description = AlertDescription.handshake_failure


class IllegalParameter(AlertError):
    description = AlertDescription.illegal_parameter


class ProtocolVersionError(AlertError):
    description = AlertDescription.protocol_version


class BadCertificate(AlertError):
    description = AlertDescription.bad_certificate


class UnsupportedCertificate(AlertError):
    description = AlertDescription.unsupported_certificate


class UnknownCA(AlertError):
    description = AlertDescription.unknown_ca


class InternalError(AlertError):
    description = AlertDescription.internal_error


class RecordOverflow(AlertError):
    description = AlertDescription.record_overflow


class NoRenegotiation(AlertError):
    description = AlertDescription.no_renegotiation


class RemoteAlert(AlertError):
    """The peer sent a fatal alert (``remote`` is always ``True``)."""

    def __init__(self, description: AlertDescription) -> None:
        super().__init__(description=description, remote=True)


class HandshakeTimeout(DTLSError):
    """The handshake did not complete within the configured budget."""


class ConnectionClosed(DTLSError):
    """The connection is closed; no more data can be sent."""


class ConnectionRefused(DTLSError, ConnectionRefusedError):
    """Nothing listens at the server's address: the kernel reported ICMP port unreachable for datagrams of at
    least two separate transmissions (one stray report does not end a handshake). Also a builtin
    :class:`ConnectionRefusedError` (``errno`` is ``ECONNREFUSED``)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"connection refused by {where} (nothing listening?)")
        self.errno = errno.ECONNREFUSED
        self.strerror = self.args[0]

    def __str__(self) -> str:
        return str(self.args[0])  # not OSError's "[Errno 111] ..."

    def __reduce__(self) -> tuple[type[ConnectionRefused], tuple[str, int]]:
        return type(self), (self.host, self.port)
