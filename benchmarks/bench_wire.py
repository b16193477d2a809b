"""Handshake wire size: UDP payload bytes and datagrams of one full PSK handshake, iotdtls versus tinydtls.

Run with ``python -m benchmarks.bench_wire``.

The handshake is the default one: cookie exchange (HelloVerifyRequest), extended master secret, AES-128-CCM-8,
no identity hint, both directions counted.  Every datagram is listed with the messages it carries; protected
iotdtls records are decrypted with the peer's read keys so their contents can be named, protected tinydtls
records are assumed to use AES-128-CCM-8 (16 bytes of explicit nonce + tag), which is what it negotiates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from DTLSSocket import dtls  # type: ignore[import-untyped,unused-ignore]

from benchmarks import baselines
from benchmarks.bench_handshake import IotPair, client_config, server_config
from iotdtls.constants import ContentType, HandshakeType
from iotdtls.errors import DTLSError
from iotdtls.reassembly import parse_fragments
from iotdtls.record import CipherState, Record, split_records

__all__ = [
    "DatagramInfo",
    "describe_datagram",
    "iotdtls_wire",
    "main",
    "tinydtls_wire",
]

RECORD_HEADER: Final = 13
HANDSHAKE_HEADER: Final = 12
CCM8_EXPANSION: Final = 16  # 8-byte explicit nonce + 8-byte tag
TARGET_BYTES: Final = 478
TARGET_DATAGRAMS: Final = 6

CATEGORIES: Final = ("record headers", "handshake headers", "handshake bodies", "AEAD nonce+tag", "other content")

_SHORT: Final[dict[int, str]] = {
    HandshakeType.CLIENT_HELLO: "ClientHello",
    HandshakeType.HELLO_VERIFY_REQUEST: "HelloVerifyRequest",
    HandshakeType.SERVER_HELLO: "ServerHello",
    HandshakeType.SERVER_KEY_EXCHANGE: "ServerKeyExchange",
    HandshakeType.SERVER_HELLO_DONE: "ServerHelloDone",
    HandshakeType.CLIENT_KEY_EXCHANGE: "ClientKeyExchange",
    HandshakeType.FINISHED: "Finished",
}


@dataclass
class DatagramInfo:
    """One datagram of a handshake: direction, size, message names and a byte breakdown."""

    from_client: bool
    size: int
    messages: list[str] = field(default_factory=list)
    bytes_by_category: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))

    @property
    def direction(self) -> str:
        return "C->S" if self.from_client else "S->C"


def _message_name(msg_type: int, body: bytes, complete: bool) -> str:
    name = _SHORT.get(msg_type, f"handshake({msg_type})")
    if msg_type == HandshakeType.CLIENT_HELLO and complete and len(body) > 35:
        cookie_at = 35 + body[34]
        if cookie_at < len(body) and body[cookie_at]:
            name += f" (cookie {body[cookie_at]} B)"
    return name if complete else name + " [fragment]"


def _describe_record(record: Record, cipher: CipherState | None, info: DatagramInfo) -> None:
    cat = info.bytes_by_category
    cat["record headers"] += RECORD_HEADER
    payload = record.fragment
    suffix = ""
    if record.epoch > 0:
        suffix = " [protected]"
        plain = cipher.unprotect(record) if cipher is not None else None
        if plain is None:  # cannot decrypt: assume CCM-8, name the content by type only
            cat["AEAD nonce+tag"] += CCM8_EXPANSION
            inner = len(record.fragment) - CCM8_EXPANSION
            if record.content_type == ContentType.HANDSHAKE and inner == HANDSHAKE_HEADER + 12:
                cat["handshake headers"] += HANDSHAKE_HEADER
                cat["handshake bodies"] += 12
                info.messages.append("Finished" + suffix)
            else:
                cat["other content"] += inner
                info.messages.append(f"{ContentType(record.content_type).name} ({inner} B){suffix}")
            return
        payload = plain
        cat["AEAD nonce+tag"] += len(record.fragment) - len(payload)
    if record.content_type == ContentType.HANDSHAKE:
        try:
            frags = parse_fragments(payload)
        except DTLSError:
            cat["other content"] += len(payload)
            info.messages.append("malformed handshake" + suffix)
            return
        for frag in frags:
            cat["handshake headers"] += HANDSHAKE_HEADER
            cat["handshake bodies"] += len(frag.body)
            complete = frag.offset == 0 and len(frag.body) == frag.length
            info.messages.append(_message_name(frag.msg_type, frag.body, complete) + suffix)
    else:
        cat["other content"] += len(payload)
        name = {ContentType.CHANGE_CIPHER_SPEC: "ChangeCipherSpec", ContentType.ALERT: "Alert",
                ContentType.APPLICATION_DATA: "ApplicationData"}.get(ContentType(record.content_type), "?")
        info.messages.append(name + suffix)


def describe_datagram(from_client: bool, datagram: bytes, cipher: CipherState | None = None) -> DatagramInfo:
    """Name the messages of one handshake datagram; ``cipher`` decrypts its epoch-1 records if given."""
    info = DatagramInfo(from_client, len(datagram))
    for record in split_records(datagram):
        _describe_record(record, cipher, info)
    accounted = sum(info.bytes_by_category.values())
    if accounted != len(datagram):
        info.bytes_by_category["other content"] += len(datagram) - accounted
    return info


def iotdtls_wire() -> list[DatagramInfo]:
    """The datagrams of one default iotdtls PSK handshake (cookie + EMS), described."""
    pair = IotPair(client_config(), server_config(), record_wire=True)
    pair.handshake()
    pair.check_established()
    if not all(event.extended_master_secret for event in pair.completed):
        raise RuntimeError("the handshake did not use the extended master secret")
    # Read keys: the client's decrypts what the server sent and vice versa (private, best effort).
    client_read: CipherState | None = getattr(pair.client, "_read_cipher", None)
    server_read: CipherState | None = getattr(pair.server_conn, "_read_cipher", None)
    return [describe_datagram(c, d, server_read if c else client_read) for c, d in pair.wire]


class _LoggingTinyPair(baselines._TinyDTLSPair):
    """The baseline's tinydtls pair, keeping each datagram's bytes (the baseline keeps only lengths)."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[bool, bytes]] = []
        super().__init__()

    def _client_write(self, _addr: tuple[str, int], data: bytes) -> int:
        self.datagrams.append((True, bytes(data)))
        return super()._client_write(_addr, data)

    def _server_write(self, _addr: tuple[str, int], data: bytes) -> int:
        self.datagrams.append((False, bytes(data)))
        return super()._server_write(_addr, data)


def tinydtls_wire() -> list[DatagramInfo]:
    """The datagrams of one tinydtls PSK handshake, described (protected records not decrypted)."""
    pair = _LoggingTinyPair()
    pair.handshake()
    datagrams = list(pair.datagrams)  # before close(): dropping the Connection sends an alert
    pair.close()
    return [describe_datagram(c, d) for c, d in datagrams]


def _totals(infos: list[DatagramInfo]) -> tuple[int, int]:
    return sum(i.size for i in infos), len(infos)


def _print_datagrams(title: str, infos: list[DatagramInfo]) -> None:
    total, count = _totals(infos)
    print(f"{title}: {total} B in {count} datagrams")
    for n, info in enumerate(infos, 1):
        print(f"  {n:2d} {info.direction} {info.size:4d} B  {', '.join(info.messages)}")


def main() -> dict[str, Any]:
    """Describe both handshakes, print per-datagram tables and a byte breakdown, return the figures."""
    dtls.setLogLevel(dtls.DTLS_LOG_EMERG)
    ours = iotdtls_wire()
    tiny = tinydtls_wire()
    ours_bytes, ours_count = _totals(ours)
    tiny_bytes, tiny_count = _totals(tiny)
    base_bytes, base_count = baselines.tinydtls_handshake_wire()
    if (base_bytes, base_count) != (tiny_bytes, tiny_count):
        raise AssertionError(f"tinydtls wire capture {tiny_bytes} B/{tiny_count} disagrees with the baseline "
                             f"{base_bytes} B/{base_count}")
    print("PSK handshake wire size (UDP payload, both directions; cookie exchange + EMS, AES-128-CCM-8)")
    _print_datagrams("iotdtls", ours)
    _print_datagrams("tinydtls", tiny)
    print(f"  {'bytes by category':20} {'iotdtls':>8} {'tinydtls':>9}")
    for cat in CATEGORIES:
        a = sum(i.bytes_by_category[cat] for i in ours)
        b = sum(i.bytes_by_category[cat] for i in tiny)
        print(f"  {cat:20} {a:8d} {b:9d}")
    print(f"  {'total':20} {ours_bytes:8d} {tiny_bytes:9d}   ratio {ours_bytes / tiny_bytes:.3f}x bytes, "
          f"{ours_count}/{tiny_count} datagrams")
    ok = ours_bytes <= TARGET_BYTES and ours_count <= TARGET_DATAGRAMS
    print(f"  target <= {TARGET_BYTES} B in <= {TARGET_DATAGRAMS} datagrams: {'met' if ok else 'NOT met'}")
    return {
        "iotdtls_bytes": ours_bytes,
        "iotdtls_datagrams": ours_count,
        "tinydtls_bytes": tiny_bytes,
        "tinydtls_datagrams": tiny_count,
        "bytes_ratio_vs_tinydtls": ours_bytes / tiny_bytes,
        "iotdtls_datagram_list": [(i.direction, i.size, i.messages) for i in ours],
        "tinydtls_datagram_list": [(i.direction, i.size, i.messages) for i in tiny],
    }


if __name__ == "__main__":
    main()
