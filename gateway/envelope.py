"""Telemetry bodies (CBOR, JSON, SenML JSON, SenML CBOR) -> the JSON envelope published to MQTT, and the message id.

Pure: no asyncio, no sockets, no clock and no randomness. The caller passes the time of reception and the
device's idempotency key. The whole mapping is documented in ``docs/gateway-envelope.md``.

- :func:`decode_payload` turns a request body into a JSON value, or raises :class:`PayloadError` with the CoAP
  response code (4.00, 4.13 or 4.15) and a one-line diagnostic that is safe to send back and to log.
- :func:`message_id` derives the envelope id from the device and its idempotency key (:func:`check_key`,
  :func:`key_from_query`), so that a reading resent in a new DTLS session after a crash gets the same id.
- :func:`make_envelope` and :func:`encode_envelope` build the envelope and its compact UTF-8 JSON bytes.

The decoders are :mod:`.cbor_decode` (a CBOR decoder of its own rather than cbor2, so that none of cbor2's
automatic conversions can reach the output and every bound is checked before anything is allocated),
:mod:`.json_decode` and :mod:`.senml`; :mod:`.payload_base` holds what they share.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from .cbor_decode import CborDecoder, to_json
from .json_decode import decode_json
from .payload_base import (
    BAD_REQUEST,
    MAX_DEPTH_LIMIT,
    MAX_INT_BITS,
    REQUEST_ENTITY_TOO_LARGE,
    UNSUPPORTED_CONTENT_FORMAT,
    JSONValue,
    Limits,
    PayloadError,
    fail,
)
from .senml import SENML_CBOR_LABELS, SENML_VERSION, senml_from_cbor, senml_from_json

__all__ = [
    "BAD_REQUEST", "ENVELOPE_FIELDS", "MAX_DEPTH_LIMIT", "MAX_INT_BITS", "REQUEST_ENTITY_TOO_LARGE",
    "SENML_CBOR_LABELS", "SENML_VERSION", "UNSUPPORTED_CONTENT_FORMAT", "ContentFormat", "JSONValue", "PayloadError",
    "check_key", "decode_payload", "encode_envelope", "format_timestamp", "key_from_query", "make_envelope",
    "message_id",
]

#: The envelope's fields, in the order :func:`encode_envelope` writes them.
ENVELOPE_FIELDS = ("device", "id", "received_at", "content_format", "data")

class ContentFormat(enum.IntEnum):
    """The CoAP Content-Formats ``POST /telemetry`` accepts."""

    JSON = 50
    CBOR = 60
    SENML_JSON = 110
    SENML_CBOR = 112



# ---------------------------------------------------------------------------------------------------- decode_payload

def decode_payload(content_format: int | None, payload: bytes, *, max_size: int = 16384, max_depth: int = 16,
                   max_items: int = 1024) -> JSONValue:
    """The JSON value of a ``POST /telemetry`` body, or :class:`PayloadError`.

    - 4.15: ``content_format`` is missing (None) or not one of :class:`ContentFormat`.
    - 4.13: the body is longer than ``max_size`` bytes.
    - 4.00: the body is empty, not well-formed, not valid, not representable in JSON, nests containers deeper
      than ``max_depth`` (a top-level array or map is depth 1; in CBOR a tag 24 adds a level), or holds more than
      ``max_items`` items in all (an array element or a map entry is one item).

    Time and memory are linear in the size of the body; nothing but :class:`PayloadError` is raised for any body
    (``ValueError`` only for nonsensical limits)."""
    if content_format is None:
        raise PayloadError(UNSUPPORTED_CONTENT_FORMAT,
                           "a Content-Format is required: 50 (JSON), 60 (CBOR), 110 (SenML JSON), 112 (SenML CBOR)")
    try:
        fmt = ContentFormat(content_format)
    except ValueError:
        shown = str(int(content_format)) if isinstance(content_format, int) and 0 <= content_format <= 65535 else "?"
        raise PayloadError(UNSUPPORTED_CONTENT_FORMAT,
                           f"Content-Format {shown} is not supported (50, 60, 110 and 112 are)") from None
    if max_size < 0 or max_items < 0 or not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"bad limits: max_size {max_size}, max_depth {max_depth} (1..{MAX_DEPTH_LIMIT}), "
                         f"max_items {max_items}")
    if len(payload) > max_size:
        raise PayloadError(REQUEST_ENTITY_TOO_LARGE,
                           f"payload of {len(payload)} bytes is over the limit of {max_size}")
    data = bytes(payload)
    if not data:
        fail("empty payload")
    limits = Limits(max_depth, max_items)
    if fmt is ContentFormat.JSON:
        return decode_json(data, limits)
    if fmt is ContentFormat.CBOR:
        return to_json(CborDecoder(data, limits, senml=False).decode())
    if fmt is ContentFormat.SENML_JSON:
        return senml_from_json(decode_json(data, limits))
    return senml_from_cbor(CborDecoder(data, limits, senml=True).decode())


# ------------------------------------------------------------------------------------- idempotency key and message id

_KEY = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
_ID_DOMAIN = b"iotdtls-gateway/message-id/v1\x00"


def check_key(key: str) -> bool:
    """Whether ``key`` can be an idempotency key: 1 to 64 characters of ``A-Z a-z 0-9 . _ -``."""
    return isinstance(key, str) and _KEY.fullmatch(key) is not None


def key_from_query(query: Iterable[str]) -> str | None:
    """The idempotency key in a request's Uri-Query options (``k=3fa29c01.17``), or None without one. Other
    options are ignored; a malformed or repeated ``k`` is a :class:`PayloadError` 4.00."""
    found: str | None = None
    for option in query:
        if option != "k" and not option.startswith("k="):
            continue
        if found is not None:
            fail("Uri-Query 'k' appears more than once")
        key = option[2:]
        if not check_key(key):
            fail("Uri-Query 'k' must be 1 to 64 characters of A-Z a-z 0-9 . _ -")
        found = key
    return found


def message_id(device: str, key: str) -> str:
    """The envelope id of the message that ``device`` sent with idempotency ``key``: 32 lowercase hex digits,
    the first 16 bytes of SHA-256 over ``"iotdtls-gateway/message-id/v1" 0x00``, then the device id and the key,
    each as a 4-byte big-endian length and its UTF-8 bytes. The same (device, key) always gives the same id."""
    if not isinstance(device, str) or not device:
        raise ValueError("device must be a non-empty string")
    if not check_key(key):
        raise ValueError("not an idempotency key: 1 to 64 characters of A-Z a-z 0-9 . _ -")
    d, k = device.encode("utf-8"), key.encode("ascii")
    digest = hashlib.sha256(_ID_DOMAIN + len(d).to_bytes(4, "big") + d + len(k).to_bytes(4, "big") + k)
    return digest.hexdigest()[:32]


# ---------------------------------------------------------------------------------------------------------- envelope

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MS = 253402300800000  # 10000-01-01T00:00:00Z


def format_timestamp(seconds: float) -> str:
    """Seconds since the epoch -> RFC 3339 UTC with milliseconds (rounded to the nearest), e.g.
    ``2026-12-07T10:56:01.123Z``."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise ValueError("the time must be a finite number of seconds since the epoch")
    ms = round(seconds * 1000)
    if not 0 <= ms < _MAX_MS:
        raise ValueError("the time must be between 1970 and 9999")
    moment = _EPOCH + timedelta(milliseconds=ms)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def make_envelope(device: str, msg_id: str, received_at: float, content_format: int,
                  data: JSONValue) -> dict[str, JSONValue]:
    """The envelope of one accepted message. ``received_at`` is the caller's clock (seconds since the epoch);
    ``content_format`` one of :class:`ContentFormat` (ValueError otherwise); ``data`` from :func:`decode_payload`."""
    if not isinstance(device, str) or not device:
        raise ValueError("device must be a non-empty string")
    if not isinstance(msg_id, str) or not msg_id:
        raise ValueError("msg_id must be a non-empty string")
    return {"device": device, "id": msg_id, "received_at": format_timestamp(received_at),
            "content_format": int(ContentFormat(content_format)), "data": data}


def encode_envelope(envelope: Mapping[str, JSONValue]) -> bytes:
    """Compact UTF-8 JSON with the fields in the order of ENVELOPE_FIELDS; ValueError for a missing or an extra
    field, NaN or Infinity, or a string that is not Unicode text."""
    if set(envelope) != set(ENVELOPE_FIELDS):
        raise ValueError(f"an envelope has exactly the fields {', '.join(ENVELOPE_FIELDS)}")
    ordered = {name: envelope[name] for name in ENVELOPE_FIELDS}
    return json.dumps(ordered, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
