"""SenML packs (RFC 8428) in JSON and in CBOR: validated, CBOR labels mapped to their JSON names, base values
left for the consumer to resolve (RFC 8428 section 4.6)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from typing import Any

from .cbor_decode import DecimalFraction, Raw, to_json
from .payload_base import JSONValue, b64url, fail, quote

#: The SenML version (RFC 8428 section 4.4) this gateway understands; a pack with a higher ``bver`` is refused.
SENML_VERSION = 10


# ------------------------------------------------------------------------------------------------------------- SenML

#: RFC 8428 Table 4: the SenML CBOR labels and their names in SenML JSON.
SENML_CBOR_LABELS = {-1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
                     0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd"}
_STRING_LABELS = frozenset({"bn", "bu", "n", "u", "vs"})
_NUMBER_LABELS = frozenset({"bt", "bv", "bs", "v", "s", "t", "ut"})
_VALUE_LABELS = ("v", "vs", "vb", "vd")
_KNOWN_LABELS = frozenset(SENML_CBOR_LABELS.values())
_B64URL_BODY = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)


class _Pack:
    """The checks that span records: one version for the whole pack (RFC 8428 section 4.4)."""

    def __init__(self) -> None:
        self.version: int | None = None

    def record(self, index: int, record: dict[str, JSONValue]) -> None:
        where = f"SenML: record {index}"
        if "bver" in record:
            version = record["bver"]
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                fail(f"{where}: 'bver' must be a positive integer")
            if version > SENML_VERSION:
                shown = str(version) if version < 1000 else "over 999"
                fail(f"{where}: version {shown} is not supported (up to {SENML_VERSION} is)")
            if index > 1 and version != (self.version or SENML_VERSION):
                fail(f"{where}: 'bver' differs from the earlier records")
            self.version = version
        elif self.version is None:
            self.version = SENML_VERSION
        values = [label for label in _VALUE_LABELS if label in record]
        if len(values) > 1:
            fail(f"{where}: more than one value field ('{values[0]}' and '{values[1]}')")


def _senml_field(where: str, label: str, value: object) -> None:
    """Checks the value of a known label other than ``vd`` and ``bver`` (RFC 8428 Table 1)."""
    if label in _STRING_LABELS:
        if not isinstance(value, str):
            fail(f"{where}: '{label}' must be a string")
    elif label in _NUMBER_LABELS:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            fail(f"{where}: '{label}' must be a number")
    elif label == "vb" and not isinstance(value, bool):
        fail(f"{where}: 'vb' must be a boolean")


def _senml_unknown(where: str, label: str) -> None:
    if label.endswith("_"):
        fail(f"{where}: label {quote(label)} must be understood and is not")


def _vd_from_text(where: str, value: JSONValue) -> str:
    """SenML JSON's ``vd``: base64url (padding optional on input, omitted in the output)."""
    if not isinstance(value, str):
        fail(f"{where}: 'vd' must be a base64url string")
    body = value.rstrip("=")
    padding = len(value) - len(body)
    ok = (_B64URL_BODY.fullmatch(body) is not None and len(body) % 4 != 1
          and (padding == 0 or (padding <= 2 and len(value) % 4 == 0)))
    if ok:
        try:
            canonical = b64url(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (binascii.Error, ValueError):
            canonical = ""
        ok = canonical == body
    if not ok:
        fail(f"{where}: 'vd' must be base64url")
    return body


def _records(value: object, record_kind: str) -> Iterator[tuple[int, str, dict[Any, Any]]]:
    """``(index, where, record)`` for each record of a pack: an array of one or more ``record_kind``."""
    if not isinstance(value, list) or not value:
        fail("SenML: a pack must be an array of one or more records")
    for index, record in enumerate(value, 1):
        where = f"SenML: record {index}"
        if not isinstance(record, dict):
            fail(f"{where} must be {record_kind}")
        yield index, where, record


def senml_from_json(value: JSONValue) -> JSONValue:
    pack = _Pack()
    out: list[JSONValue] = []
    for index, where, record in _records(value, "an object"):
        fields: dict[str, JSONValue] = {}
        for label, item in record.items():
            if label == "vd":
                fields[label] = _vd_from_text(where, item)
            elif label in _KNOWN_LABELS:
                _senml_field(where, label, item)
                fields[label] = item
            else:
                _senml_unknown(where, label)
                fields[label] = item
        pack.record(index, fields)
        out.append(fields)
    return out


def senml_from_cbor(raw: Raw) -> JSONValue:
    pack = _Pack()
    out: list[JSONValue] = []
    for index, where, record in _records(raw, "a map"):
        fields: dict[str, JSONValue] = {}
        for key, item in record.items():
            if isinstance(key, int):
                label = SENML_CBOR_LABELS.get(key)
                if label is None:
                    fail(f"{where}: unknown CBOR label {key}")
            else:
                label = key
            if label in fields:
                fail(f"{where}: label {quote(label)} appears twice")
            if label == "vd":
                if not isinstance(item, bytes):
                    fail(f"{where}: 'vd' must be a byte string")
                fields[label] = b64url(item)
            elif isinstance(item, DecimalFraction) and label in _NUMBER_LABELS:
                fields[label] = item.to_float()
            elif label in _KNOWN_LABELS:
                _senml_field(where, label, item)  # a scalar of the right type (bver is checked by _Pack)
                fields[label] = to_json(item)
            else:
                _senml_unknown(where, label)
                fields[label] = to_json(item)
        pack.record(index, fields)
        out.append(fields)
    return out
