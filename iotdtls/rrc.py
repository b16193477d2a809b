"""Return routability check (RFC 9853, the update of RFC 9146): the ``rrc`` extension and the
``return_routability_check`` content type. Each message is a type and an 8-byte cookie, always protected.

Only the basic procedure is implemented: the server front challenges a CID session's new address and moves the
session there once the answer comes back from it (see :class:`iotdtls.DTLSServer`); either side answers a
challenge. ``path_drop`` and unknown types are ignored, as the RFC requires.
"""

from __future__ import annotations

from enum import IntEnum

from .errors import DecodeError

COOKIE_LEN = 8
#: How long the server front waits for the path_response before it gives the move up.
CHALLENGE_TIMEOUT = 3.0


class RrcType(IntEnum):
    PATH_CHALLENGE = 0
    PATH_RESPONSE = 1
    PATH_DROP = 2


def pull_rrc(payload: bytes) -> tuple[int, bytes]:
    """The type and cookie of a return_routability_check message (the type may be unknown)."""
    if len(payload) != 1 + COOKIE_LEN:
        raise DecodeError("malformed return_routability_check message")
    return payload[0], payload[1:]


def push_rrc(msg_type: RrcType, cookie: bytes) -> bytes:
    return bytes((msg_type,)) + cookie
