"""Stateless HelloVerifyRequest cookies (RFC 6347 section 4.2.1).

A cookie is HMAC-SHA256 over the client's address and its ClientHello without the cookie field, truncated to
16 bytes, under a secret that rotates every ``lifetime`` seconds. Secrets are derived from one random master key
and the rotation period, so the server stores nothing per client; the current and previous periods verify.
"""

from __future__ import annotations

import hmac

from .prf import HmacSha256Key

COOKIE_LEN = 16


class CookieJar:
    def __init__(self, master_key: bytes, lifetime: float = 120.0) -> None:
        if len(master_key) < 16:
            raise ValueError("cookie master key must have at least 16 bytes")
        self._master = master_key
        self._lifetime = lifetime
        self._cache: dict[int, HmacSha256Key] = {}

    def _secret(self, period: int) -> HmacSha256Key:
        secret = self._cache.get(period)
        if secret is None:
            if len(self._cache) > 4:
                self._cache.clear()
            key = hmac.digest(self._master, b"cookie" + period.to_bytes(8, "big", signed=True), "sha256")
            secret = self._cache[period] = HmacSha256Key(key)
        return secret

    def make(self, address: bytes, hello_without_cookie: bytes, now: float) -> bytes:
        period = int(now // self._lifetime)
        return self._secret(period).digest(address + hello_without_cookie)[:COOKIE_LEN]

    def verify(self, cookie: bytes, address: bytes, hello_without_cookie: bytes, now: float) -> bool:
        if len(cookie) != COOKIE_LEN:
            return False
        period = int(now // self._lifetime)
        msg = address + hello_without_cookie
        for p in (period, period - 1):
            expected = self._secret(p).digest(msg)[:COOKIE_LEN]
            if hmac.compare_digest(expected, cookie):
                return True
        return False


def hello_without_cookie(body: bytes) -> bytes:
    """A ClientHello body with its cookie vector removed (the body must already have parsed)."""
    sid_len = body[34]
    cstart = 35 + sid_len
    clen = body[cstart]
    return body[:cstart] + body[cstart + 1 + clen :]
