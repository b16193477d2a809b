"""JSON telemetry bodies (RFC 8259): strict UTF-8, no NaN or Infinity, no duplicate keys, nesting and size
bounded before the json module recurses."""

from __future__ import annotations

import json
import math
import re
from typing import NoReturn

from .cbor_decode import check_int
from .payload_base import MAX_INT_BITS, MAX_INT_DIGITS, JSONValue, Limits, fail, quote

# -------------------------------------------------------------------------------------------------------------- JSON

#: Strings (closed or not) and brackets, to measure the nesting before the json module recurses into it.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]++|\\.)*+"?|[\[{]|[\]}]', re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        fail(f"JSON: integer too large (over {MAX_INT_BITS} bits)")
    try:
        value = int(literal)
    except ValueError:  # CPython's int/str digit limit, if someone lowered it
        fail(f"JSON: integer too large (over {MAX_INT_BITS} bits)")
    return check_int(value, "JSON")


def _json_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        fail("JSON: number out of range")
    if value == 0.0 and any(c in "123456789" for c in literal.partition("e")[0].partition("E")[0]):
        fail("JSON: number underflows to zero")
    return value


def _json_constant(name: str) -> NoReturn:
    fail(f"JSON: {name} is not allowed")


def _json_object(pairs: list[tuple[str, JSONValue]]) -> dict[str, JSONValue]:
    out: dict[str, JSONValue] = {}
    for key, value in pairs:
        if key in out:
            fail(f"JSON: duplicate key {quote(key)}")
        out[key] = value
    return out


def decode_json(data: bytes, limits: Limits) -> JSONValue:
    """RFC 8259 text in UTF-8 -> its value: no BOM, no NaN or Infinity, no duplicate keys, no unpaired surrogate
    escapes, integers within MAX_INT_BITS, other numbers as IEEE 754 doubles within their range."""
    if data.startswith(b"\xef\xbb\xbf"):
        fail("JSON: a byte order mark is not allowed")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(f"JSON: invalid UTF-8 at byte {e.start}")
    depth = 0
    for token in _JSON_TOKENS.finditer(text):
        c = token.group()[0]
        if c == "[" or c == "{":
            depth += 1
            limits.check_depth(depth)
        elif c == "]" or c == "}":
            depth -= 1
    try:
        value: JSONValue = json.loads(text, object_pairs_hook=_json_object, parse_int=_json_int,
                                      parse_float=_json_float, parse_constant=_json_constant)
    except json.JSONDecodeError as e:  # the json module's messages quote none of the input
        message = re.sub(r"\s+(starting )?at$", "", e.msg)
        fail(f"JSON: {message} (line {e.lineno}, column {e.colno})")
    except RecursionError:
        fail(f"nesting deeper than {limits.max_depth}")
    # Count the items and look for unpaired surrogates (from \ud800-style escapes), iteratively.
    stack: list[JSONValue] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                fail("JSON: a string holds an unpaired surrogate escape")
        elif isinstance(v, list):
            limits.add_items(len(v))
            stack.extend(v)
        elif isinstance(v, dict):
            limits.add_items(len(v))
            for key, item in v.items():
                if _SURROGATE.search(key):
                    fail("JSON: a key holds an unpaired surrogate escape")
                stack.append(item)
    return value
