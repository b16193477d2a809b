"""Write the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from real handshakes.

Every datagram comes from a complete, seeded exchange between a client and a server of tests/helpers, so the
seeds are real protocol traffic and, because the targets rebuild the same seeded endpoints, the protected
records in them authenticate when a target replays them. The ECDHE-ECDSA exchanges (raw public keys with and
without a client key, X.509 from fuzz/fixed_pki.py) are as deterministic: derived keys, RFC 6979 signatures,
seeded ephemeral keys. Run ``python fuzz/seeds.py`` after changing the handshake (the old seeds still work as
fuzz inputs, they just reach less far).
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import fuzz_resumption
import negotiation
from _harness import FUZZ_DIR, encode_frames
from endpoints import (
    CLIENT_STATES,
    SERVER_VARIANTS,
    SHARED,
    addr_of,
    client_config_of,
    reference_wire,
    server_pair,
    wire_of,
)
from helpers import CLIENT_ADDR, Pair

from iotdtls import DTLSConnection
from iotdtls.buffer import Buffer, Writer
from iotdtls.constants import CipherSuite, ContentType, ExtensionType, HandshakeType
from iotdtls.messages import (
    ClientHello,
    pull_client_hello,
    pull_server_hello,
    push_client_hello,
    push_extensions,
    push_server_hello,
)
from iotdtls.reassembly import message_header, parse_fragments
from iotdtls.record import encode_plain, split_records

CORPUS = FUZZ_DIR / "corpus"

WIRES: dict[str, dict[str, object]] = {
    "default": {},
    "hint": {"hint": True},
    "small-mtu": {"coalesce_records": True, "mtu": 64},
    "ccm-no-ems": {},
    "rpk": {},
    "rpk-anonymous": {},
    "x509": {},
    "ticket-cid": {},
    "resume": {},
}


PK_WIRES = ("rpk", "rpk-anonymous", "x509")
#: Exchanges with 4-byte connection IDs (endpoints.TICKET_CID): a full handshake with a ticket, and a resumption.
CID_WIRES = ("ticket-cid", "resume")
TICKET_VARIANT = next(i for i, (kind, _, _) in enumerate(SERVER_VARIANTS) if kind == "ticket")


def _wire(name: str) -> list[tuple[str, bytes]]:
    if name in PK_WIRES or name in CID_WIRES:
        return wire_of(name)
    kw = dict(WIRES[name])
    hint = bool(kw.pop("hint", False))
    if name == "ccm-no-ems":
        pair = Pair({"cipher_suites": [CipherSuite.TLS_PSK_WITH_AES_128_CCM], "extended_master_secret": False})
        pair.handshake()
        pair.client.send(b"up")
        pair.pump()
        return list(pair.wire)
    return reference_wire(hint, "psk", **kw)


def record_seeds() -> list[bytes]:
    seeds = []
    names = [name for name in WIRES if name not in PK_WIRES and name not in CID_WIRES]
    for name in names:
        wire = [d for _, d in _wire(name)]
        seeds += [b"\x00" + d for d in wire]
        seeds.append(b"\x00" + b"".join(wire[:4]))
    for mode in (1, 3, 5, 7, 9, 17):
        seeds.append(bytes([mode]) + (1 << 48 | 5).to_bytes(8, "big") + b"application payload")
    for name in PK_WIRES:
        seeds += [b"\x00" + d for _, d in _wire(name)]
    # tls12_cid records, parsed with the right CID length (mode 2: 4 bytes) and a wrong one (mode 4: 1 byte);
    # round trips (modes with bits 0 and 7: epoch and sequence, CID length, padding, inner type, CID, payload).
    for name in CID_WIRES:
        seeds += [bytes([mode]) + d for _, d in _wire(name) for mode in (2, 4)]
    for mode in (0x81, 0x89, 0x99):
        seeds.append(bytes([mode]) + (1 << 48 | 7).to_bytes(8, "big") + bytes([3, 16, 23]) + b"cid!" + b"payload")
        seeds.append(bytes([mode]) + (1 << 48 | 8).to_bytes(8, "big") + bytes([19, 0, 0x99]) + bytes(range(20)))
    return seeds


#: fuzz_handshake_messages parser index per message type (PSK first, then ECDHE-ECDSA).
SELECTOR: dict[int, tuple[int, ...]] = {
    HandshakeType.CLIENT_HELLO: (0,), HandshakeType.SERVER_HELLO: (1,), HandshakeType.HELLO_VERIFY_REQUEST: (2,),
    HandshakeType.SERVER_KEY_EXCHANGE: (4, 9), HandshakeType.CLIENT_KEY_EXCHANGE: (4, 11),
    HandshakeType.SERVER_HELLO_DONE: (4,), HandshakeType.CERTIFICATE: (8,), HandshakeType.CERTIFICATE_REQUEST: (10,),
    HandshakeType.CERTIFICATE_VERIFY: (11,),
}


def _whole_messages(wire: list[tuple[str, bytes]]) -> list[tuple[int, bytes]]:
    """(type, body) of every epoch-0 handshake message of an exchange, fragments joined."""
    parts: dict[tuple[str, int, int], bytearray] = {}
    for direction, d in wire:
        for r in split_records(d):
            if r.epoch == 0 and r.content_type == ContentType.HANDSHAKE:
                for f in parse_fragments(r.fragment):
                    body = parts.setdefault((direction, f.message_seq, f.msg_type), bytearray(f.length))
                    body[f.offset : f.offset + len(f.body)] = f.body
    return [(msg_type, bytes(body)) for (_, _, msg_type), body in parts.items()]


def message_seeds() -> list[bytes]:
    seeds = []
    psk_wires = [name for name in WIRES if name not in PK_WIRES and name not in CID_WIRES]
    wire = [d for name in psk_wires for _, d in _wire(name)]
    payloads = [r.fragment for d in wire for r in split_records(d)
                if r.epoch == 0 and r.content_type == ContentType.HANDSHAKE]
    bodies = []
    for payload in payloads:
        seeds.append(b"\x05" + payload)
        for f in parse_fragments(payload):
            if f.offset == 0 and len(f.body) == f.length and f.msg_type in SELECTOR:
                seeds.append(bytes([SELECTOR[f.msg_type][0]]) + f.body)
                bodies.append(bytes([f.msg_type]) + f.body)
            if f.msg_type == HandshakeType.CLIENT_HELLO and f.offset == 0 and len(f.body) == f.length:
                w = Writer()
                push_extensions(w, pull_client_hello(Buffer(f.body)).extensions)
                seeds.append(b"\x03" + w.data())
    seeds.append(b"\x04" + bytes(12))
    seeds.append(b"\x06" + b"\xff\xfe".join(payloads[:12]))
    seeds.append(b"\x06" + b"\xff\xfe".join(reversed(payloads[:12])))
    for mtu_byte in (0, 20, 100, 255):
        for coalesce in (0, 1):
            seeds.append(b"\x07" + bytes([mtu_byte, coalesce]) + b"\xff\xfe".join([b"\x14", *bodies[:4]]))
    # ECDHE-ECDSA: the records of the public-key exchanges, and every whole message (fragments joined) for
    # each parser it can reach, the extension lists of the ClientHellos included.
    for name in PK_WIRES:
        pk_wire = _wire(name)
        seeds += [b"\x05" + r.fragment for _, d in pk_wire for r in split_records(d)
                  if r.epoch == 0 and r.content_type == ContentType.HANDSHAKE]
        for msg_type, body in _whole_messages(pk_wire):
            seeds += [bytes([selector]) + body for selector in SELECTOR.get(msg_type, ())]
            if msg_type == HandshakeType.CLIENT_HELLO:
                seeds += [b"\x0b" + ext for _, ext in pull_client_hello(Buffer(body)).extensions if ext]
    # Connection ID, record_size_limit and tickets: every message of those exchanges for its parser, the new
    # extension bodies and the NewSessionTicket (selector 12), and the hellos through the negotiation (13; the
    # ClientHellos also offering the session and the ticket that fuzz/negotiation.py's server knows).
    for name in CID_WIRES:
        for msg_type, body in _whole_messages(_wire(name)):
            seeds += [bytes([selector]) + body for selector in SELECTOR.get(msg_type, ())]
            if msg_type == HandshakeType.NEW_SESSION_TICKET:
                seeds.append(b"\x0c" + body)
            if msg_type == HandshakeType.CLIENT_HELLO:
                hello = pull_client_hello(Buffer(body))
                seeds += [b"\x0c" + ext for t, ext in hello.extensions if t in NEW_EXTENSIONS]
                seeds.append(b"\x0d\x00" + body)
                seeds.append(b"\x0d\x00" + _offering(hello, negotiation.CACHED.session_id, b""))
                seeds.append(b"\x0d\x00" + _offering(hello, b"\x22" * 8, negotiation.TICKET))
            if msg_type == HandshakeType.SERVER_HELLO:
                seeds.append(b"\x0d\x01" + body)
                sh = pull_server_hello(Buffer(body))
                w = Writer()
                push_server_hello(w, replace(sh, session_id=negotiation.CACHED.session_id))
                seeds.append(b"\x0d\x01" + w.data())
    return seeds


NEW_EXTENSIONS = (ExtensionType.CONNECTION_ID, ExtensionType.RECORD_SIZE_LIMIT, ExtensionType.SESSION_TICKET)


def _offering(hello: ClientHello, session_id: bytes, ticket: bytes) -> bytes:
    """``hello`` offering a session: its ID, and a ticket in the SessionTicket extension."""
    exts = [(t, ticket if t == ExtensionType.SESSION_TICKET else e) for t, e in hello.extensions]
    w = Writer()
    push_client_hello(w, replace(hello, session_id=session_id, extensions=exts))
    return w.data()


def server_seeds() -> list[bytes]:
    seeds = []
    for variant, (kind, kw, _) in enumerate(SERVER_VARIANTS):
        wire_kw = {k: v for k, v in kw.items() if k in (*SHARED, "cookies", "require_client_auth")}
        wire = reference_wire(bool(kw.get("psk_identity_hint")), kind, **wire_kw)
        c2s = [d for direction, d in wire if direction == "c2s"]
        # The established client's own traffic replayed.
        seeds.append(bytes([variant]) + encode_frames([(0, d) for d in c2s]))
        # Complete handshakes, data and close from fresh addresses, recorded against this very server (a server
        # that also holds PSKs gets a PSK client and a raw-public-key client).
        pair = server_pair(variant)
        client_kw = {k: v for k, v in kw.items() if k in SHARED}
        kinds = {4: "psk" if kw.get("psk_store") else kind, 5: kind}
        clients = {tag: DTLSConnection(client_config_of(kinds[tag], 7 + tag, **client_kw), peer="server")
                   for tag in (4, 5)}
        frames: list[tuple[int, bytes]] = []
        for client in clients.values():
            client.connect(pair.now)
        for step in range(12):
            for tag, client in clients.items():
                if step == 8 and client.is_established:
                    client.send(b"from a fresh address")
                if step == 10 and client.is_established:
                    client.close()
                for d in client.datagrams_to_send(pair.now):
                    frames.append((tag, d))
                    pair.server.receive_datagram(d, addr_of(tag), pair.now)
                for d, a in pair.server.datagrams_to_send(pair.now):
                    for t, c in clients.items():
                        if a == addr_of(t):
                            c.receive_datagram(d, pair.now)
        seeds.append(bytes([variant]) + encode_frames(frames))
        # Both at once, interleaved, plus a timer tick.
        mixed = [(0, d) for d in c2s[:3]] + [(0x84, d) for _, d in frames[:2]] + frames[2:]
        seeds.append(bytes([variant]) + encode_frames(mixed))
        # An authenticated peer misbehaving: plaintext epoch-1 records that the harness seals (tag bit 6).
        sealed = [(0x40, _plain(23, 1000, b"sealed data")), (0x40, _plain(21, 1001, b"\x01\x5a")),
                  (0x40, _plain(22, 1002, message_header(HandshakeType.FINISHED, 12, 4) + bytes(12))),
                  (0x40, _plain(22, 1003, message_header(HandshakeType.CLIENT_HELLO, 0, 0))),
                  (0x40, _plain(21, 1004, b"\x01\x00"))]
        seeds.append(bytes([variant]) + encode_frames(sealed))
        if kind == "ticket":
            seeds += _ticket_server_seeds(variant)
    return seeds


def _ticket_server_seeds(variant: int) -> list[bytes]:
    """The ticket variant: a new client resumes the established client's session from a fresh address (the
    abbreviated handshake, then data), and the established client's CID records arrive from another address (the
    front moves the session there)."""
    pair = server_pair(variant)
    session = pair.client.session
    assert session is not None
    resumer = DTLSConnection(client_config_of("ticket", 13), peer="server")
    resumer.connect(pair.now, session=session)
    frames: list[tuple[int, bytes]] = []
    for step in range(6):
        if step == 3 and resumer.is_established:
            resumer.send(b"resumed")
        for d in resumer.datagrams_to_send(pair.now):
            frames.append((6, d))
            pair.server.receive_datagram(d, addr_of(6), pair.now)
        for d, a in pair.server.datagrams_to_send(pair.now):
            if a == addr_of(6):
                resumer.receive_datagram(d, pair.now)
    assert resumer.is_established and resumer.resumed
    pair = server_pair(variant)
    moved: list[tuple[int, bytes]] = []
    for text in (b"from a new address", b"and again", b"settled"):
        pair.client.send(text)
        for _ in range(2):  # with RFC 9853 the front challenges the new address, and the client answers
            for d in pair.client.datagrams_to_send(pair.now):
                moved.append((7, d))
                pair.server.receive_datagram(d, addr_of(7), pair.now)
            for d, _ in pair.server.datagrams_to_send(pair.now):
                pair.client.receive_datagram(d, pair.now)
    assert CLIENT_ADDR not in pair.server.connections, "the session did not move"
    return [bytes([variant]) + encode_frames(frames), bytes([variant]) + encode_frames(moved)]


def _plain(content_type: int, seq: int, payload: bytes) -> bytes:
    return encode_plain(content_type, (1 << 48) | seq, payload)


def client_seeds() -> list[bytes]:
    seeds = []
    for index, (_, _, wire) in enumerate(CLIENT_STATES):
        s2c = [d for direction, d in wire_of(wire) if direction == "s2c"]
        seeds.append(bytes([index]) + encode_frames([(0x40, s2c[0]), *((0, d) for d in s2c[1:])]))
        seeds.append(bytes([index]) + encode_frames([(0xC0, d) for d in reversed(s2c)]))
        seeds.append(bytes([index]) + encode_frames([(0x40, s2c[0]), *((0, d) for d in s2c[1:]),
                                                     (0x20, _plain(23, 1000, b"sealed data")),
                                                     (0x20, _plain(22, 1001, message_header(0, 0, 9)))]))
    return seeds


def resumption_seeds() -> list[bytes]:
    """fuzz_resumption: the reference sessions' encodings (to parse, and to seal), their tickets at several
    times, the reference key file, and the session a real ticket handshake left the client."""
    sessions = [s.to_bytes() for s in fuzz_resumption.SESSIONS]
    wire_session = server_pair(TICKET_VARIANT).client.session
    assert wire_session is not None
    sessions.append(wire_session.to_bytes())
    seeds = [b"\x00" + s for s in sessions] + [b"\x03" + s for s in sessions]
    for ticket in fuzz_resumption.TICKETS:
        seeds += [b"\x01" + bytes([t]) + ticket for t in (0, 2, 4, 5)]
    seeds.append(b"\x01\x00" + wire_session.ticket)
    seeds.append(b"\x02" + fuzz_resumption.KEYS_FILE)
    return seeds


def write(target: str, seeds: list[bytes]) -> None:
    out = CORPUS / target
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for n, seed in enumerate(dict.fromkeys(seeds)):
        (out / f"seed-{n:03d}").write_bytes(seed)
    print(f"{target}: {len(set(seeds))} seeds")


def main() -> None:
    write("fuzz_record", record_seeds())
    write("fuzz_handshake_messages", message_seeds())
    write("fuzz_server", server_seeds())
    write("fuzz_client", client_seeds())
    write("fuzz_resumption", resumption_seeds())


if __name__ == "__main__":
    main()
