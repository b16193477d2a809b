"""Configuration of a DTLS endpoint. Time never comes from here; randomness does (``random``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TextIO

from cryptography import x509

from .constants import (
    ECDHE_ECDSA_SUITES,
    MAX_CID_LEN,
    MAX_PLAINTEXT,
    MIN_RECORD_SIZE_LIMIT,
    PSK_SUITES,
    CipherSuite,
)
from .keys import PrivateKey
from .trust import TrustStore

PskStore = Mapping[bytes, bytes] | Callable[[bytes], bytes | None]

#: Preference order (a server picks the first one the client offers and its credentials allow). Suites
#: without credentials are left out of what is offered: a PSK-only endpoint offers exactly the PSK suites.
DEFAULT_SUITES = [
    CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
    CipherSuite.TLS_PSK_WITH_AES_128_CCM,
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM,
]

#: Default datagram budget (UDP payload bytes). Below the 548 bytes every IPv4 host reassembles and well
#: below IPv6's 1280-byte minimum link MTU, so it survives tunnels and 6LoWPAN fragmentation; a PSK flight
#: needs at most 99 bytes, so handshakes never fragment at this size.
DEFAULT_MTU = 512
MIN_MTU = 64


@dataclass
class DTLSConfiguration:
    """Everything an endpoint needs. ``is_client`` selects the role.

    PSK: a client has ``psk_identity`` and ``psk``; a server has ``psk_store`` (a mapping or a callable from
    identity to key, returning ``None`` for unknown identities) and an optional ``psk_identity_hint``.

    Public keys (ECDHE-ECDSA on P-256): ``private_key`` is the endpoint's own key, presented as a raw public
    key (RFC 7250) or, with ``certificate_chain``, as X.509. ``trust`` judges the peer's key: a client needs it
    to offer these suites at all; a server with a non-empty ``trust`` asks clients for a key or certificate,
    and with ``require_client_auth`` refuses clients that present none.
    """

    is_client: bool = True
    psk_identity: bytes | None = None
    psk: bytes | None = None
    psk_store: PskStore | None = None
    psk_identity_hint: bytes | None = None
    private_key: PrivateKey | None = None
    certificate_chain: list[x509.Certificate] | None = None
    trust: TrustStore | None = None
    require_client_auth: bool = False
    cipher_suites: list[int] = field(default_factory=lambda: list(DEFAULT_SUITES))
    #: Datagram budget in bytes of UDP payload; handshake flights are fragmented and packed to it.
    mtu: int = DEFAULT_MTU
    #: Flight retransmission: first timeout and the cap of its exponential back-off, in seconds.
    retransmit_initial: float = 2.0
    retransmit_max: float = 8.0
    #: Total time a handshake may take before it fails with HandshakeTimeout.
    handshake_timeout: float = 120.0
    #: Close an established connection after this many seconds without an authenticated record. ``None``: never
    #: on a client; on a server front (:class:`~iotdtls.server.DTLSServer`) 24 hours. ``0``: never.
    idle_timeout: float | None = None
    #: Server: until the client's Finished verifies, send at most this many times the bytes received from the
    #: client in the handshake, retransmissions included (None: no limit).
    amplification_factor: float | None = 3.0
    replay_window: int = 64
    extended_master_secret: bool = True
    require_extended_master_secret: bool = False
    #: Pack consecutive handshake messages of a flight into one record (saves 13 bytes each).
    coalesce_records: bool = False
    #: Largest handshake message accepted for reassembly.
    max_handshake_message: int = 4096
    #: Records of the next epoch held back until its ChangeCipherSpec arrives (and at most 1 KB each on average).
    max_buffered_records: int = 16
    #: Connection ID (RFC 9146): the length (0-20) of the CID this endpoint asks its peer to put in the records
    #: it sends; 0 means "I send a CID if you want one, but I need none"; ``None``: no connection_id extension.
    cid_length: int | None = None
    #: Pad the inner plaintext of CID records to a multiple of this many bytes (0: no padding), so that record
    #: lengths reveal less about their content.
    cid_padding: int = 0
    #: RFC 9853 return routability check: offered by a client, accepted by a server with a connection ID. The
    #: server front then challenges a session's new address and moves the session only when the answer comes
    #: back from there (the basic procedure); either side answers challenges.
    return_routability_check: bool = False
    #: RFC 8449 record_size_limit to advertise: the largest plaintext this endpoint accepts in a protected
    #: record (64 .. 16384); ``None``: the extension is not offered (a server still answers a client's with
    #: 16384 and honours the client's limit).
    record_size_limit: int | None = None
    #: Session resumption through RFC 5077 tickets: a client asks for one (an empty SessionTicket extension, 4
    #: bytes per ClientHello); a server issues them when its front has ticket keys. Off by default: a client
    #: resumes through the server's session-ID cache, which costs no byte in a full handshake but does not survive
    #: a server restart; tickets do (with the front's ticket keys kept on disk).
    session_tickets: bool = False
    #: Seconds a session may be resumed for, counted from its full handshake (server: cache entries and tickets).
    session_lifetime: float = 86400.0
    #: Server: require a HelloVerifyRequest cookie exchange before creating any state.
    cookies: bool = True
    cookie_lifetime: float = 120.0
    #: NSS key log output (``CLIENT_RANDOM <hex> <hex>``) for Wireshark; contains secrets.
    keylog_file: TextIO | None = None
    #: Source of randomness: a callable returning n random bytes. Tests pass a seeded one.
    random: Callable[[int], bytes] = os.urandom
    #: Wall-clock time (seconds since the epoch), used only to check certificate validity periods.
    wall_time: Callable[[], float] = time.time

    def validate(self) -> None:
        if self.mtu < MIN_MTU:
            raise ValueError(f"mtu must be at least {MIN_MTU} bytes")
        if self.retransmit_initial <= 0 or self.retransmit_max < self.retransmit_initial:
            raise ValueError("retransmission timers must satisfy 0 < initial <= max")
        if self.handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")
        if self.idle_timeout is not None and self.idle_timeout < 0:
            raise ValueError("idle_timeout must not be negative")
        if self.amplification_factor is not None and self.amplification_factor < 1:
            raise ValueError("amplification_factor must be at least 1 (or None for no limit)")
        if self.require_extended_master_secret and not self.extended_master_secret:
            raise ValueError("require_extended_master_secret needs extended_master_secret")
        if self.cid_length is not None and not 0 <= self.cid_length <= MAX_CID_LEN:
            raise ValueError(f"cid_length must be 0 to {MAX_CID_LEN} (or None for no connection ID)")
        if self.cid_padding < 0 or self.cid_padding > 1024:
            raise ValueError("cid_padding must be 0 to 1024 bytes")
        if self.record_size_limit is not None and \
                not MIN_RECORD_SIZE_LIMIT <= self.record_size_limit <= MAX_PLAINTEXT:
            raise ValueError(f"record_size_limit must be {MIN_RECORD_SIZE_LIMIT} to {MAX_PLAINTEXT} bytes")
        if self.session_lifetime < 0:
            raise ValueError("session_lifetime must not be negative")
        if not self.cipher_suites:
            raise ValueError("at least one cipher suite is required")
        for suite in self.cipher_suites:
            if suite not in PSK_SUITES and suite not in ECDHE_ECDSA_SUITES:
                raise ValueError(f"unsupported cipher suite 0x{suite:04X}")
        if self.certificate_chain is not None and self.private_key is None:
            raise ValueError("certificate_chain needs the matching private_key")
        if self.require_client_auth and (self.trust is None or self.trust.empty):
            raise ValueError("require_client_auth needs a trust store with pinned keys, a callback or CAs")
        if not self.usable_suites():
            if self.is_client:
                raise ValueError("a client needs psk_identity and psk, or a trust store to verify a public-key "
                                 "server, for one of its cipher_suites")
            raise ValueError("a server needs psk_store, or a private_key, for one of its cipher_suites")

    def for_host(self, host: str) -> DTLSConfiguration:
        """This configuration for connecting to ``host``: with CA certificates in ``trust`` and no
        ``server_name`` there, a copy whose server certificate must name ``host``; otherwise itself."""
        trust = self.trust
        if trust is None or not trust.ca_certificates or trust.server_name is not None:
            return self
        return replace(self, trust=replace(trust, server_name=host))

    def has_psk(self) -> bool:
        if self.is_client:
            return self.psk is not None and self.psk_identity is not None
        return self.psk_store is not None

    def has_public_key(self) -> bool:
        """The credentials for ECDHE-ECDSA: a client must be able to judge the server, a server needs a key."""
        if self.is_client:
            return self.trust is not None and not self.trust.empty
        return self.private_key is not None

    def usable_suites(self) -> list[int]:
        """``cipher_suites`` that the configured credentials can complete, in preference order."""
        psk, pk = self.has_psk(), self.has_public_key()
        return [s for s in self.cipher_suites if (psk and s in PSK_SUITES) or (pk and s in ECDHE_ECDSA_SUITES)]

    def lookup_psk(self, identity: bytes) -> bytes | None:
        store = self.psk_store
        if store is None:
            return None
        if callable(store):
            return store(identity)
        return store.get(identity)
