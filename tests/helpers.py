"""Shared test helpers: seeded randomness, configurations and an in-memory client/server pair."""

from __future__ import annotations

import random
from collections.abc import Callable

from iotdtls import DTLSConfiguration, DTLSConnection, DTLSServer
from iotdtls.events import Event

CLIENT_ADDR = ("192.0.2.1", 5000)
IDENTITY = b"dev1"
KEY = bytes(range(16))


def seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def client_config(seed: int = 1, **kw: object) -> DTLSConfiguration:
    kw.setdefault("psk_identity", IDENTITY)
    kw.setdefault("psk", KEY)
    return DTLSConfiguration(is_client=True, random=seeded(seed), **kw)  # type: ignore[arg-type]


def server_config(seed: int = 2, **kw: object) -> DTLSConfiguration:
    kw.setdefault("psk_store", {IDENTITY: KEY})
    return DTLSConfiguration(is_client=False, random=seeded(seed), **kw)  # type: ignore[arg-type]


def drain(conn: DTLSConnection) -> list[Event]:
    out = []
    while (e := conn.next_event()) is not None:
        out.append(e)
    return out


def drain_server(server: DTLSServer) -> list[tuple[object, Event]]:
    out = []
    while (e := server.next_event()) is not None:
        out.append(e)
    return out


def shuttle(client: DTLSConnection, server: DTLSServer, addr: object, now: float, rounds: int) -> None:
    """``rounds`` times: the client's datagrams to the server at ``addr``, then the server's to the client."""
    for _ in range(rounds):
        for d in client.datagrams_to_send(now):
            server.receive_datagram(d, addr, now)
        for d, _ in server.datagrams_to_send(now):
            client.receive_datagram(d, now)


class Pair:
    """A client connection and a server front wired in memory; ``deliver`` hands datagrams over."""

    def __init__(self, client_kw: dict[str, object] | None = None, server_kw: dict[str, object] | None = None,
                 **server_limits: int) -> None:
        self.now = 0.0
        self.client = DTLSConnection(client_config(**(client_kw or {})), peer="server")
        self.server = DTLSServer(server_config(**(server_kw or {})), **server_limits)
        self.wire: list[tuple[str, bytes]] = []  # ("c2s"|"s2c", datagram) log

    def c2s(self) -> list[bytes]:
        out = self.client.datagrams_to_send(self.now)
        self.wire += [("c2s", d) for d in out]
        return out

    def s2c(self) -> list[bytes]:
        out = [d for d, _ in self.server.datagrams_to_send(self.now)]
        self.wire += [("s2c", d) for d in out]
        return out

    def pump(self, rounds: int = 10) -> None:
        for _ in range(rounds):
            moved = False
            for d in self.c2s():
                self.server.receive_datagram(d, CLIENT_ADDR, self.now)
                moved = True
            for d in self.s2c():
                self.client.receive_datagram(d, self.now)
                moved = True
            if not moved:
                return

    def handshake(self) -> None:
        self.client.connect(self.now)
        self.pump()

    @property
    def server_conn(self) -> DTLSConnection:
        return self.server.connections[CLIENT_ADDR]


# -- step-by-step driving, crafting and inspection of records (test_handshake, test_conformance, test_fuzz) --

Wire = list[bytes]


def half_steps(pair: Pair, steps: int) -> None:
    """Perform ``steps`` one-way deliveries of everything pending, alternating c2s, s2c, c2s, ...

    With cookies on: 1 = ClientHello delivered, 2 = HelloVerifyRequest delivered, 3 = ClientHello with cookie
    delivered (server WAIT_CKE), 4 = server flight delivered (client WAIT_FINISHED), 5 = client final flight
    delivered (server established), 6 = server final flight delivered (both established).
    The client must have called ``connect`` already.
    """
    for i in range(steps):
        if i % 2 == 0:
            to_server(pair, pair.c2s())
        else:
            to_client(pair, pair.s2c())


def to_server(pair: Pair, datagrams: Wire, addr: object = CLIENT_ADDR) -> None:
    for d in datagrams:
        pair.server.receive_datagram(d, addr, pair.now)


def to_client(pair: Pair, datagrams: Wire) -> None:
    for d in datagrams:
        pair.client.receive_datagram(d, pair.now)


def established_pair(client_kw: dict[str, object] | None = None, server_kw: dict[str, object] | None = None,
                     **limits: int) -> Pair:
    """A pair with a completed handshake and the handshake events drained."""
    pair = Pair(client_kw, server_kw, **limits)
    pair.handshake()
    assert pair.client.is_established and pair.server_conn.is_established
    drain(pair.client)
    drain_server(pair.server)
    return pair


def run_until(pair: Pair, until: float, deliver: bool = True) -> None:
    """Advance the fake clock timer by timer up to ``until``, firing both sides' timers; with ``deliver``
    datagrams produced on the way are exchanged, otherwise they are dropped (total loss)."""
    while True:
        timers = [t for t in (pair.client.get_timer(), pair.server.get_timer()) if t is not None]
        if not timers or min(timers) > until:
            break
        pair.now = max(pair.now, min(timers))
        pair.client.handle_timer(pair.now)
        pair.server.handle_timer(pair.now)
        if deliver:
            pair.pump()
        else:
            pair.c2s()
            pair.s2c()
    pair.now = max(pair.now, until)


def handshake_record(msg_type: int, body: bytes, message_seq: int, record_seq: int = 0) -> bytes:
    """An epoch-0 record carrying one whole handshake message."""
    from iotdtls.constants import ContentType
    from iotdtls.reassembly import message_header
    from iotdtls.record import encode_plain

    return encode_plain(ContentType.HANDSHAKE, record_seq, message_header(msg_type, len(body), message_seq) + body)


def split_messages(datagram: bytes, first_seq: int) -> list[bytes]:
    """Re-encode each handshake fragment of the epoch-0 records of ``datagram`` as its own datagram, with
    record sequence numbers counting from ``first_seq`` (so the receiver's replay window keeps the copies)."""
    from iotdtls.constants import ContentType
    from iotdtls.reassembly import message_header, parse_fragments
    from iotdtls.record import encode_plain, split_records

    out: list[bytes] = []
    for rec in split_records(datagram):
        if rec.epoch != 0 or rec.content_type != ContentType.HANDSHAKE:
            out.append(encode_plain(rec.content_type, rec.epoch_seq, rec.fragment))
            continue
        for f in parse_fragments(rec.fragment):
            hdr = message_header(f.msg_type, f.length, f.message_seq, f.offset, len(f.body))
            out.append(encode_plain(ContentType.HANDSHAKE, first_seq + len(out), hdr + f.body))
    return out


def plain_alerts(datagrams: Wire) -> list[tuple[int, int]]:
    """``(level, description)`` of every epoch-0 (plaintext) alert record in ``datagrams``."""
    from iotdtls.constants import ContentType
    from iotdtls.record import split_records

    return [(r.fragment[0], r.fragment[1]) for d in datagrams for r in split_records(d)
            if r.content_type == ContentType.ALERT and r.epoch == 0 and len(r.fragment) == 2]


def record_types(datagram: bytes) -> list[tuple[int, int]]:
    """``(content_type, epoch)`` of each record of a datagram."""
    from iotdtls.record import split_records

    return [(r.content_type, r.epoch) for r in split_records(datagram)]


def raw_records(datagram: bytes) -> list[bytes]:
    """The records of a datagram as the exact byte slices they occupy (header included)."""
    out = []
    pos = 0
    while len(datagram) - pos >= 13:
        end = pos + 13 + int.from_bytes(datagram[pos + 11 : pos + 13], "big")
        if end > len(datagram):
            break
        out.append(datagram[pos:end])
        pos = end
    return out


# -- public keys (ECDHE-ECDSA) --------------------------------------------------------------------
def p256_key(label: str):  # type: ignore[no-untyped-def]
    """A deterministic P-256 private key per label, so fingerprints in tests stay stable."""
    import hashlib

    from iotdtls.keys import derive_scalar_key

    return derive_scalar_key(hashlib.sha512(label.encode()).digest()[:48])


def pin_of(key) -> bytes:  # type: ignore[no-untyped-def]
    from iotdtls.keys import fingerprint, spki_der

    return fingerprint(spki_der(key))


def pk_client_config(seed: int = 1, *, key: str | None = "client", trust: tuple[str, ...] = ("server",),
                     **kw: object) -> DTLSConfiguration:
    """A raw-public-key client: own key ``key`` (None: no key), pinning the keys named in ``trust``."""
    from iotdtls.trust import TrustStore

    kw.setdefault("psk_identity", None)
    kw.setdefault("psk", None)
    kw.setdefault("private_key", p256_key(key) if key else None)
    kw.setdefault("trust", TrustStore.of(pin_of(p256_key(t)) for t in trust))
    return client_config(seed, **kw)


def pk_server_config(seed: int = 2, *, key: str = "server", trust: tuple[str, ...] = ("client",),
                     **kw: object) -> DTLSConfiguration:
    """A raw-public-key server (no PSK unless ``psk_store`` is given) pinning the keys named in ``trust``."""
    from iotdtls.trust import TrustStore

    kw.setdefault("psk_store", None)
    kw.setdefault("private_key", p256_key(key))
    if trust:
        kw.setdefault("trust", TrustStore.of(pin_of(p256_key(t)) for t in trust))
    return server_config(seed, **kw)


class PkPair(Pair):
    """Pair with raw-public-key configurations; ``client_kw``/``server_kw`` go to pk_*_config."""

    def __init__(self, client_kw: dict[str, object] | None = None, server_kw: dict[str, object] | None = None,
                 **server_limits: int) -> None:
        self.now = 0.0
        self.client = DTLSConnection(pk_client_config(**(client_kw or {})), peer="server")  # type: ignore[arg-type]
        self.server = DTLSServer(pk_server_config(**(server_kw or {})), **server_limits)  # type: ignore[arg-type]
        self.wire: list[tuple[str, bytes]] = []
