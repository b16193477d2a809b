"""Building blocks of DTLS 1.2 session resumption: session IDs (RFC 5246 section 7.3) and session tickets
(RFC 5077), bound to the extended master secret (RFC 7627 section 5.3: only EMS sessions are resumed).

Sans-IO like the rest of the core: time (``now``, wall-clock seconds since the epoch) and randomness
(``random(n) -> n bytes``) are arguments. Only :meth:`TicketKeys.save` and :meth:`TicketKeys.load` touch the disk.

- :class:`Session`: what both ends keep of a completed handshake, with a versioned binary encoding
  (``iotdtls/sessions.py``, which documents it).
- :class:`SessionCache`: the server's session-ID cache, bounded (LRU by count), entries expire (``sessions.py``).
- :class:`TicketKeys`: the server's rotating AES-128-GCM keys that seal a :class:`Session` into a ticket
  (``iotdtls/tickets.py``).
"""

from __future__ import annotations

from .sessions import MAX_CLOCK_SKEW, Random, Session, SessionCache, psk_fingerprint
from .tickets import TICKET_OVERHEAD, TicketKeys

__all__ = [
    "MAX_CLOCK_SKEW",
    "TICKET_OVERHEAD",
    "Random",
    "Session",
    "SessionCache",
    "TicketKeys",
    "psk_fingerprint",
]
