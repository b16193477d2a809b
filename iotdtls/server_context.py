"""What a server front lends each of its connections: the session cache, the ticket keys and the generator of
connection IDs. A connection made without a front (tests, a one-peer server) gets an empty context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .resumption import SessionCache, TicketKeys


@dataclass(slots=True)
class ServerContext:
    #: Session-ID resumption: a bounded cache (``None``: no session IDs are issued).
    cache: SessionCache | None = None
    #: RFC 5077 tickets: the rotating keys that seal them (``None``: no tickets are issued or accepted).
    tickets: TicketKeys | None = None
    #: A fresh connection ID of the given length, unique among the front's live connections; ``None`` when no
    #: unique one could be found (the connection then goes without a CID).
    new_cid: Callable[[int], bytes | None] | None = None
