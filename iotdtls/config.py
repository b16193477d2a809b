"""Configuration of a DTLS endpoint. Time never comes from here; randomness does (``random``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO

from .constants import CipherSuite

PskStore = Mapping[bytes, bytes] | Callable[[bytes], bytes | None]

DEFAULT_SUITES = [CipherSuite.TLS_PSK_WITH_AES_128_CCM_8, CipherSuite.TLS_PSK_WITH_AES_128_CCM]

#: Default datagram budget (UDP payload bytes). Below the 548 bytes every IPv4 host reassembles and well
#: below IPv6's 1280-byte minimum link MTU, so it survives tunnels and 6LoWPAN fragmentation; a PSK flight
#: needs at most 99 bytes, so handshakes never fragment at this size.
DEFAULT_MTU = 512
MIN_MTU = 64


@dataclass
class DTLSConfiguration:
    """Everything an endpoint needs. ``is_client`` selects the role.

    Client credentials: ``psk_identity`` and ``psk``. Server credentials: ``psk_store`` (a mapping or a
    callable from identity to key, returning ``None`` for unknown identities) and an optional
    ``psk_identity_hint``.
    """

    is_client: bool = True
    psk_identity: bytes | None = None
    psk: bytes | None = None
    psk_store: PskStore | None = None
    psk_identity_hint: bytes | None = None
    cipher_suites: list[int] = field(default_factory=lambda: list(DEFAULT_SUITES))
    #: Datagram budget in bytes of UDP payload; handshake flights are fragmented and packed to it.
    mtu: int = DEFAULT_MTU
    #: Flight retransmission: first timeout and the cap of its exponential back-off, in seconds.
    retransmit_initial: float = 2.0
    retransmit_max: float = 8.0
    #: Total time a handshake may take before it fails with HandshakeTimeout.
    handshake_timeout: float = 120.0
    #: Close an established connection after this many seconds without an authenticated record (None: never).
    idle_timeout: float | None = None
    replay_window: int = 64
    extended_master_secret: bool = True
    require_extended_master_secret: bool = False
    #: Pack consecutive handshake messages of a flight into one record (saves 13 bytes each).
    coalesce_records: bool = False
    #: Largest handshake message accepted for reassembly.
    max_handshake_message: int = 4096
    #: Records of the next epoch held back until its ChangeCipherSpec arrives (and at most 1 KB each on average).
    max_buffered_records: int = 16
    #: Server: require a HelloVerifyRequest cookie exchange before creating any state.
    cookies: bool = True
    cookie_lifetime: float = 120.0
    #: NSS key log output (``CLIENT_RANDOM <hex> <hex>``) for Wireshark; contains secrets.
    keylog_file: TextIO | None = None
    #: Source of randomness: a callable returning n random bytes. Tests pass a seeded one.
    random: Callable[[int], bytes] = os.urandom

    def validate(self) -> None:
        if self.mtu < MIN_MTU:
            raise ValueError(f"mtu must be at least {MIN_MTU} bytes")
        if self.retransmit_initial <= 0 or self.retransmit_max < self.retransmit_initial:
            raise ValueError("retransmission timers must satisfy 0 < initial <= max")
        if self.require_extended_master_secret and not self.extended_master_secret:
            raise ValueError("require_extended_master_secret needs extended_master_secret")
        if not self.cipher_suites:
            raise ValueError("at least one cipher suite is required")
        for suite in self.cipher_suites:
            if suite not in (CipherSuite.TLS_PSK_WITH_AES_128_CCM_8, CipherSuite.TLS_PSK_WITH_AES_128_CCM):
                raise ValueError(f"unsupported cipher suite 0x{suite:04X}")
        if self.is_client:
            if self.psk is None or self.psk_identity is None:
                raise ValueError("a PSK client needs psk_identity and psk")
        elif self.psk_store is None:
            raise ValueError("a PSK server needs psk_store")

    def lookup_psk(self, identity: bytes) -> bytes | None:
        store = self.psk_store
        if store is None:
            return None
        if callable(store):
            return store(identity)
        return store.get(identity)
