"""Human-readable descriptions of DTLS datagrams, for the demo and for debugging (no secrets shown)."""

from __future__ import annotations

from .constants import ContentType, HandshakeType
from .errors import DTLSError
from .reassembly import parse_fragments
from .record import split_records


def describe_datagram(data: bytes) -> list[str]:
    """One entry per record: handshake message names (with fragments), CCS, alerts, or protected data."""
    out: list[str] = []
    for rec in split_records(data):
        ct = rec.content_type
        if rec.epoch > 0:
            kind = _PROTECTED.get(ct, "record (protected)")
            out.append(f"{kind} [epoch {rec.epoch}, {len(rec.fragment) + 13} B]")
        elif ct == ContentType.HANDSHAKE:
            try:
                frags = parse_fragments(rec.fragment)
            except DTLSError:
                out.append("malformed handshake record")
                continue
            for f in frags:
                name = _name(f.msg_type)
                if f.offset or len(f.body) != f.length:
                    name += f" fragment {f.offset}-{f.offset + len(f.body)}/{f.length}"
                out.append(f"{name} (seq {f.message_seq})")
        elif ct == ContentType.CHANGE_CIPHER_SPEC:
            out.append("ChangeCipherSpec")
        elif ct == ContentType.ALERT and len(rec.fragment) == 2:
            out.append(f"Alert level={rec.fragment[0]} description={rec.fragment[1]}")
        else:
            out.append(f"{ContentType(ct).name} [epoch 0]")
    return out or ["(not DTLS)"]


_PROTECTED: dict[int, str] = {
    ContentType.HANDSHAKE: "Finished (protected)",
    ContentType.APPLICATION_DATA: "ApplicationData",
    ContentType.ALERT: "Alert (protected)",
}


def _name(msg_type: int) -> str:
    try:
        return "".join(w.capitalize() for w in HandshakeType(msg_type).name.split("_")).replace(
            "Hello", "Hello")
    except ValueError:
        return f"Handshake({msg_type})"
