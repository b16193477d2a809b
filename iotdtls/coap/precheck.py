"""What a CoAP message costs is decided before aiocoap decodes it: a message larger than ``max_message_size``
or with more than ``max_options`` options never becomes an aiocoap ``Message`` (whose option objects cost about
a hundred times their bytes). A confirmable request beyond a bound is answered from its bytes alone, as a
piggybacked ACK with its message ID and token: 4.13 Request Entity Too Large with Size1 (RFC 7252 section
5.9.2.9, RFC 7959 section 2.9.3) or 4.02 Bad Option. Anything else beyond a bound, and anything that is not
CoAP at all, is dropped."""

from __future__ import annotations

from dataclasses import dataclass

from . import wire


@dataclass(frozen=True, slots=True)
class Verdict:
    """``accept``: hand the message to aiocoap. ``reason``: why not (a stats key), ``reply``: bytes to send back."""

    accept: bool
    reason: str = ""
    reply: bytes | None = None


ACCEPT = Verdict(True)
_UNPARSABLE = Verdict(False, "dropped_unparsable")


def precheck(data: bytes, *, max_message_size: int, max_options: int, max_entity: int) -> Verdict:
    """Judge one received CoAP message. ``max_entity`` is the Size1 a 4.13 carries: the largest request body
    the server takes (in Block1 blocks)."""
    header = wire.scan_header(data)
    if header is None:
        return _UNPARSABLE
    answer = header.mtype == wire.CON and header.is_request
    if len(data) > max_message_size:
        if not answer:
            return Verdict(False, "dropped_too_big")
        reply = wire.encode(wire.ACK, wire.REQUEST_ENTITY_TOO_LARGE, header.mid, header.token,
                            [(wire.SIZE1, wire.uint(max_entity))])
        return Verdict(False, "refused_too_big", reply)
    count = wire.count_options(data, max_options)
    if count is None:
        return _UNPARSABLE
    if count > max_options:
        if not answer:
            return Verdict(False, "dropped_too_many_options")
        reply = wire.encode(wire.ACK, wire.BAD_OPTION, header.mid, header.token, (), b"too many options")
        return Verdict(False, "refused_too_many_options", reply)
    return ACCEPT
