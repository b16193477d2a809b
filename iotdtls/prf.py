"""TLS 1.2 PRF (RFC 5246 section 5) with P_SHA256, key block and Finished computation."""

from __future__ import annotations

import hmac

_MD = "sha256"


def p_sha256(secret: bytes, seed: bytes, length: int) -> bytes:
    out = bytearray()
    a = seed
    digest = hmac.digest
    while len(out) < length:
        a = digest(secret, a, _MD)
        out += digest(secret, a + seed, _MD)
    return bytes(out[:length])


def prf(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
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


def key_block(master: bytes, client_random: bytes, server_random: bytes, length: int) -> bytes:
    return prf(master, b"key expansion", server_random + client_random, length)


def finished_verify_data(master: bytes, is_client: bool, transcript_hash: bytes) -> bytes:
    label = b"client finished" if is_client else b"server finished"
    return prf(master, label, transcript_hash, 12)
