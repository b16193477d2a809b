"""The library's loggers and the text its log lines are made of (never a secret, never raw peer bytes).

Loggers (all children of ``iotdtls``, silent unless the application configures :mod:`logging`):

- ``iotdtls.handshake``: DEBUG each flight sent and each handshake message received, retransmissions (which
  flight, attempt, next timer); INFO a session established (suite, extended master secret, peer identity) and a
  PSK handshake whose keys did not match.
- ``iotdtls.connection``: DEBUG alerts sent and received; INFO a connection closed or failed, and why.
- ``iotdtls.server``: DEBUG the cookie exchange; WARNING refusals and evictions, at most once a minute per cause.
- ``iotdtls.aio``: the asyncio layer (socket buffer sizes).

Nothing is logged per application record. Identities are printed as escaped, bounded Python string literals, so
a peer cannot forge log lines or flood them; keys, secrets and application data are never passed to a logger.

Call sites test ``LOG.getEffectiveLevel() <= level`` before building a line, not ``isEnabledFor``: its cache is
filled under a lock on first use after every configuration change, and the server must do the same work, call
for call, for an unknown PSK identity and a wrong key (tests/test_fairness.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .constants import AlertDescription, AlertLevel, CipherSuite, HandshakeType

HANDSHAKE_LOG = logging.getLogger("iotdtls.handshake")
CONNECTION_LOG = logging.getLogger("iotdtls.connection")

#: Longest identity (in characters) printed whole; longer ones are cut and marked.
MAX_IDENTITY_CHARS = 64
#: What a bad_record_mac or decrypt_error while waiting for the Finished of a PSK handshake usually means.
PSK_REJECTED_HINT = "the server rejected our key: wrong PSK or unknown identity"
PSK_MISMATCH_LOG = "client's key did not match: wrong PSK or unknown identity"
#: What an unknown_psk_identity alert from a server means.
PSK_UNKNOWN_HINT = "the server does not know our PSK identity"

_CCS = -1  # iotdtls.reassembly.CCS, the ChangeCipherSpec element of a flight


def identity_text(identity: bytes) -> str:
    """``identity 'dev1'``, or ``anonymous``: escaped (control and non-printable characters as ``\\x..``) and cut
    at :data:`MAX_IDENTITY_CHARS` characters."""
    if not identity:
        return "anonymous"
    text = identity.decode("utf-8", "replace")
    if len(text) > MAX_IDENTITY_CHARS:
        return f"identity {text[:MAX_IDENTITY_CHARS]!r}... ({len(identity)} bytes)"
    return f"identity {text!r}"


def where(addr: object) -> str:
    """``host:port`` (``[v6]:port``) of a socket address; other peer labels as a bounded literal."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    if isinstance(addr, str) and addr.isprintable() and len(addr) <= MAX_IDENTITY_CHARS:
        return addr
    return repr(addr)[:MAX_IDENTITY_CHARS]


def endpoint(is_client: bool, peer: object) -> str:
    """The prefix of a connection's log lines: ``client``, ``client (server)``, ``server (192.0.2.1:5000)``."""
    role = "client" if is_client else "server"
    return role if peer is None else f"{role} ({where(peer)})"


def message_name(msg_type: int) -> str:
    """``ClientHello``, ``ChangeCipherSpec``, ``HandshakeType(99)``."""
    if msg_type == _CCS:
        return "ChangeCipherSpec"
    try:
        return "".join(w.capitalize() for w in HandshakeType(msg_type).name.split("_"))
    except ValueError:
        return f"HandshakeType({msg_type})"


def flight_text(msg_types: Iterable[int]) -> str:
    """``ClientKeyExchange, ChangeCipherSpec, Finished``."""
    return ", ".join(message_name(t) for t in msg_types)


def suite_name(suite: int) -> str:
    try:
        return CipherSuite(suite).name
    except ValueError:
        return f"0x{suite:04X}"


def alert_text(level: int, description: int) -> str:
    """``fatal bad_record_mac``, ``warning close_notify``, ``level 7 description 200``."""
    try:
        level_text = AlertLevel(level).name.lower()
    except ValueError:
        level_text = f"level {level}"
    try:
        return f"{level_text} {AlertDescription(description).name}"
    except ValueError:
        return f"{level_text} description {description}"
