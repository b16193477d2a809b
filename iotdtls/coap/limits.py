"""The bounds of the CoAPs server, in one place: every one is a keyword of :func:`iotdtls.coap.server_context`
with the default below (docs/coap.md, "Bounds", says what happens beyond each)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .blockwise import MAX_TRANSMIT_WAIT
from .observe import CON_EVERY, CON_INTERVAL

#: Datagrams up to this size are taken (unless the mtu is larger): an Ethernet MTU, room for 1024-byte blocks
#: (1024 + a CoAP header and options of up to ~400 bytes + 29 bytes of record overhead).
DEFAULT_MAX_DATAGRAM = 1500
KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """How much one session, and all of them together, can make the CoAPs server hold."""

    #: DTLS datagrams longer than this are dropped before any parsing or decryption. None: 1500, or the mtu if
    #: that is larger.
    max_datagram: int | None = None
    #: CoAP messages longer than this (header, token, options and payload) never reach aiocoap: a confirmable
    #: request gets 4.13 with Size1. RFC 7252 section 4.6's 1152 = a 1024-byte block + 128 bytes.
    max_message_size: int = 1152
    #: ... and those with more options than this: a confirmable request gets 4.02 Bad Option.
    max_options: int = 64
    #: Deduplication cache (message IDs and the replies sent, kept EXCHANGE_LIFETIME = 247 s): bytes per session
    #: and in total; the oldest entries go first.
    dedup_bytes_per_session: int = 64 * KIB
    dedup_bytes_total: int = 8 * MIB
    #: Block1 uploads (request bodies in blocks) being assembled: per session (a new one evicts the session's
    #: oldest), bytes per upload (beyond: 4.13 with Size1 = this), bytes in total (beyond: 4.13), and how long
    #: an upload may sit without a block before it is forgotten.
    max_uploads_per_session: int = 4
    max_upload_bytes: int = 64 * KIB
    upload_bytes_total: int = 8 * MIB
    upload_lifetime: float = MAX_TRANSMIT_WAIT
    #: Block2 responses kept for their following blocks: per session and in total bytes (oldest first out), and
    #: for how long. A miss is rendered again (GET, FETCH) or answered 4.08 (other methods).
    max_block2_per_session: int = 4
    block2_bytes_total: int = 8 * MIB
    block2_lifetime: float = MAX_TRANSMIT_WAIT
    #: Observations per session; a registration beyond is served as a plain response without Observe.
    max_observers_per_session: int = 8
    #: A notification goes out confirmable at least every this many notifications, and this often (seconds).
    con_notification_every: int = CON_EVERY
    con_notification_interval: float = CON_INTERVAL
    #: Confirmable messages waiting behind an unacknowledged one (NSTART = 1) per session; beyond, the newest is
    #: dropped and its request or observation ended.
    max_backlog_per_session: int = 32

    def datagram_limit(self, mtu: int) -> int:
        return self.max_datagram if self.max_datagram is not None else max(DEFAULT_MAX_DATAGRAM, mtu)

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value <= 0:
                raise ValueError(f"{f.name} must be positive")
        if self.max_message_size < 4:
            raise ValueError("max_message_size must be at least 4 bytes (a CoAP header)")
