"""TLS 1.2 PRF (RFC 5246 section 5) with P_SHA256, key block and Finished computation.

P_SHA256 runs many HMACs under one secret, so the secret's inner and outer pad states are hashed once and
copied for each HMAC (RFC 2104), which halves the cost of the PRF.
"""

from __future__ import annotations

import hashlib

_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class HmacSha256Key:
    """HMAC-SHA256 under one key, with the padded key states precomputed."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\x00")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def digest(self, msg: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def p_sha256(secret: bytes | HmacSha256Key, seed: bytes, length: int) -> bytes:
    mac = secret if isinstance(secret, HmacSha256Key) else HmacSha256Key(secret)
    out = b""
    a = seed
    while len(out) < length:
        a = mac.digest(a)
        out += mac.digest(a + seed)
    return out[:length]


def prf(secret: bytes | HmacSha256Key, label: bytes, seed: bytes, length: int) -> bytes:
    return p_sha256(secret, label + seed, length)


def psk_premaster(psk: bytes) -> bytes:
    """RFC 4279 section 2: uint16 N, N zero bytes, uint16 N, the PSK."""
    n = len(psk).to_bytes(2, "big")
    return n + bytes(len(psk)) + n + psk


def master_secret(premaster: bytes, client_random: bytes, server_random: bytes,
                  session_hash: bytes | None) -> bytes:
    """The master secret; with ``session_hash`` it is the extended master secret of RFC 7627."""
    if session_hash is not None:
        return prf(premaster, b"extended master secret", session_hash, 48)
    return prf(premaster, b"master secret", client_random + server_random, 48)


def key_block(master: bytes | HmacSha256Key, client_random: bytes, server_random: bytes, length: int) -> bytes:
    return prf(master, b"key expansion", server_random + client_random, length)


def finished_verify_data(master: bytes | HmacSha256Key, is_client: bool, transcript_hash: bytes) -> bytes:
    label = b"client finished" if is_client else b"server finished"
    return prf(master, label, transcript_hash, 12)
