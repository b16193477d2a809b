"""Bad-input fuzzing with hypothesis: random and mutated datagrams fed to both roles in every handshake state.

Properties: no exception escapes ``receive_datagram`` / ``handle_timer``; every connection either keeps going,
drops the input, or ends with a ConnectionTerminated whose error is a protocol alert (never InternalError, which
would mean a bug in the core), a HandshakeTimeout, close_notify or a replacement by a new handshake; nothing
stays half-open once the timers have run; two established ends share working keys.

Two PSK variants add the extensions of issue 18: 4-byte connection IDs both ways, a record_size_limit and RFC 5077
tickets (``cid-tickets``), and the same client resuming a ticket session with an abbreviated handshake
(``resume-cid``): mutated tls12_cid records, NewSessionTickets and resumed flights, some of them from another
address (where an authentic newer record moves the session).

The same properties hold in the ECDHE-ECDSA states (raw public keys with and without a client key, X.509 with
required client authentication, see ``PK_VARIANTS``): the server flight and the client's final flight are
delivered in part, so every public-key state of both roles is fuzzed, and the mutated datagrams come from
complete public-key exchanges.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from helpers import (
    CLIENT_ADDR,
    Pair,
    PkPair,
    client_config,
    drain,
    drain_server,
    half_steps,
    raw_records,
    run_until,
    seeded,
    split_messages,
    to_client,
    to_server,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotdtls import (
    ConnectionTerminated,
    DataReceived,
    DTLSConnection,
    HandshakeCompleted,
    HandshakeTimeout,
    Session,
    SessionEvicted,
    TicketKeys,
)
from iotdtls.constants import CipherSuite, ContentType, HandshakeType
from iotdtls.errors import AlertError, InternalError
from iotdtls.events import Event
from iotdtls.handshake import State
from iotdtls.reassembly import message_header, parse_fragments
from iotdtls.record import encode_plain, split_records

#: CI runs a fixed, derandomized set; IOTDTLS_FUZZ_EXAMPLES=5000 IOTDTLS_FUZZ_RANDOM=1 hunts for new cases.
FUZZ = settings(max_examples=int(os.environ.get("IOTDTLS_FUZZ_EXAMPLES", "600")), deadline=None,
                derandomize=not os.environ.get("IOTDTLS_FUZZ_RANDOM"), database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"
if str(FUZZ_DIR) not in sys.path:
    sys.path.insert(0, str(FUZZ_DIR))
from fixed_pki import WALL_TIME, x509_kw  # noqa: E402  (deterministic certificates, shared with the fuzz targets)

#: Connection IDs, record_size_limit and tickets on both sides; a fixed wall clock keeps the tickets the same.
TICKET_KW: dict[str, object] = {"cid_length": 4, "record_size_limit": 256, "session_tickets": True,
                                "wall_time": lambda: WALL_TIME}

#: name -> (kind of pair: "psk", "rpk" (tests/helpers.PkPair) or "x509", client keywords, server keywords)
VARIANTS: dict[str, tuple[str, dict[str, object], dict[str, object]]] = {
    "default": ("psk", {}, {}),
    "hint-coalesced": ("psk", {"coalesce_records": True}, {"psk_identity_hint": b"hint", "coalesce_records": True}),
    "mtu64": ("psk", {"mtu": 64}, {"mtu": 64}),
    "ccm-no-ems": ("psk", {"cipher_suites": [CipherSuite.TLS_PSK_WITH_AES_128_CCM], "extended_master_secret": False},
                   {}),
    "cid-tickets": ("ticket", TICKET_KW, TICKET_KW),
    "resume-cid": ("resume", TICKET_KW, TICKET_KW),
}
PK_VARIANTS: dict[str, tuple[str, dict[str, object], dict[str, object]]] = {
    "rpk-mutual": ("rpk", {}, {}),
    "rpk-anonymous-mtu128": ("rpk", {"key": None, "mtu": 128}, {"mtu": 128, "coalesce_records": True}),
    "x509-required-mtu256": ("x509", {"mtu": 256}, {"mtu": 256, "require_client_auth": True}),
}
ALL_VARIANTS = {**VARIANTS, **PK_VARIANTS}
#: 0 = ClientHello sent, 1..6 = one-way deliveries of the handshake (6 = both established),
#: 7 = application data exchanged both ways (the server's final flight is no longer kept).
STAGES = range(8)
#: Public-key handshakes also stop inside a flight (the rest of it is lost; retransmission recovers it).
#: 8..11: the client got the server flight up to WAIT_CERTIFICATE, WAIT_ECDHE_SKE, WAIT_CR_OR_DONE, WAIT_DONE;
#: 12..15: the server got these parts of the client's final flight.
PK_STAGES = range(16)
_CCS, _FIN = -20, -1
FINAL_PARTS: dict[int, set[int]] = {
    12: {HandshakeType.CERTIFICATE},  # WAIT_CKE_AUTH (WAIT_CKE for a client without a key)
    13: {HandshakeType.CERTIFICATE, HandshakeType.CLIENT_KEY_EXCHANGE},  # WAIT_CERTIFICATE_VERIFY
    14: {HandshakeType.CERTIFICATE, HandshakeType.CLIENT_KEY_EXCHANGE, _CCS, _FIN},  # the CertificateVerify lost
    15: {HandshakeType.CERTIFICATE, HandshakeType.CLIENT_KEY_EXCHANGE, HandshakeType.CERTIFICATE_VERIFY, _CCS},
}
CLIENT_TARGETS = [State.CLIENT_WAIT_CERTIFICATE, State.CLIENT_WAIT_ECDHE_SKE, State.CLIENT_WAIT_CR_OR_DONE,
                  State.CLIENT_WAIT_DONE]
OTHER_ADDR = ("198.51.100.23", 4444)


class FuzzPair(Pair):
    """A pair whose client only hears what the server sends to the client's address (the fuzzer also talks
    to the server from another address). ``session``: what the client offers when it connects."""

    session: Session | None = None

    def s2c(self) -> list[bytes]:
        out = [d for d, addr in self.server.datagrams_to_send(self.now) if addr == CLIENT_ADDR]
        self.wire += [("s2c", d) for d in out]
        return out


class FuzzPkPair(PkPair):
    s2c = FuzzPair.s2c


def make_pair(variant: str) -> Pair:
    kind, client_kw, server_kw = ALL_VARIANTS[variant]
    if kind == "rpk":
        return FuzzPkPair(dict(client_kw), dict(server_kw))
    if kind == "x509":
        return FuzzPair(x509_kw("client", **client_kw), x509_kw("server", **server_kw))
    if kind in ("ticket", "resume"):
        pair = FuzzPair(dict(client_kw), dict(server_kw), ticket_keys=TicketKeys(seeded(9)))  # type: ignore[arg-type]
        if kind == "resume":  # a first, complete handshake with the same server front leaves a ticket
            pair.handshake()
            pair.session = pair.client.session
            assert pair.session is not None
            pair.server.close(CLIENT_ADDR)
            pair.s2c()
            drain_server(pair.server)
            pair.client = DTLSConnection(client_config(**client_kw), peer="server")
            pair.wire.clear()
        return pair
    return FuzzPair(dict(client_kw), dict(server_kw))


def pair_at(variant: str, stage: int) -> Pair:
    pair = make_pair(variant)
    pair.client.connect(pair.now, session=getattr(pair, "session", None))
    if stage >= 8:
        _inside_a_flight(pair, stage)
        return pair
    half_steps(pair, min(stage, 6))
    if stage >= 7:
        pair.client.send(b"up")
        pair.pump()
        pair.server.send(CLIENT_ADDR, b"down")
        pair.pump()
    return pair


def _part(piece: bytes) -> int:
    """Handshake type of a one-fragment datagram of ``split_messages``; _CCS or _FIN (epoch 1) otherwise."""
    (rec,) = split_records(piece)
    if rec.epoch == 1:
        return _FIN
    return parse_fragments(rec.fragment)[0].msg_type if rec.content_type == ContentType.HANDSHAKE else _CCS


def _inside_a_flight(pair: Pair, stage: int) -> None:
    if stage < 12:
        half_steps(pair, 3)
        target = CLIENT_TARGETS[stage - 8]
        for piece in split_messages(b"".join(pair.s2c()), 10):
            if pair.client.state is target:
                break
            to_client(pair, [piece])
    else:
        half_steps(pair, 4)
        to_server(pair, [p for p in split_messages(b"".join(pair.c2s()), 20) if _part(p) in FINAL_PARTS[stage]])


@functools.cache
def reference_wire(variant: str) -> tuple[bytes, ...]:
    """Every datagram of a complete exchange: handshake, data both ways, close_notify and its answer.
    The randomness is seeded, so these are valid records for every pair of the same variant."""
    pair = pair_at(variant, 7)
    pair.client.close()
    pair.pump()
    return tuple(d for _, d in pair.wire)


# -- mutation strategies -----------------------------------------------------------------------------------


def _flip(d: bytes, pos: int, bit: int) -> bytes:
    if not d:
        return d
    b = bytearray(d)
    b[pos % len(b)] ^= 1 << bit
    return bytes(b)


def _overwrite(d: bytes, pos: int, value: int) -> bytes:
    if not d:
        return d
    b = bytearray(d)
    b[pos % len(b)] = value
    return bytes(b)


def _records_op(d: bytes, op: str, k: int) -> bytes:
    recs = raw_records(d)
    if not recs:
        return d
    i = k % len(recs)
    if op == "dup":
        recs.insert(i, recs[i])
    elif op == "drop":
        del recs[i]
    elif op == "swap":
        recs.append(recs.pop(i))
    return b"".join(recs)


Mutation = Callable[[bytes, tuple[bytes, ...]], bytes]

mutations: st.SearchStrategy[Mutation] = st.one_of(
    st.builds(lambda p, b: lambda d, pool: _flip(d, p, b), st.integers(0, 4096), st.integers(0, 7)),
    st.builds(lambda p, v: lambda d, pool: _overwrite(d, p, v), st.integers(0, 4096), st.integers(0, 255)),
    st.builds(lambda n: lambda d, pool: d[: n % (len(d) + 1)], st.integers(0, 4096)),
    st.builds(lambda n, x: lambda d, pool: d[: n % (len(d) + 1)] + x + d[n % (len(d) + 1):],
              st.integers(0, 4096), st.binary(min_size=1, max_size=8)),
    st.builds(lambda i, a, b: lambda d, pool: d[: a % (len(d) + 1)] + pool[i % len(pool)][b % 200:],
              st.integers(0, 100), st.integers(0, 4096), st.integers(0, 4096)),
    st.builds(lambda op, k: lambda d, pool: _records_op(d, op, k), st.sampled_from(["dup", "drop", "swap"]),
              st.integers(0, 16)),
    st.builds(lambda i: lambda d, pool: d + pool[i % len(pool)], st.integers(0, 100)),
)


@st.composite
def random_record(draw: st.DrawFn) -> bytes:
    """A well-framed record of any type and epoch with random content; handshake records get a plausible
    handshake header so the reassembler is reached."""
    ctype = draw(st.sampled_from([20, 21, 22, 23, 23, 25, 27]))
    epoch = draw(st.sampled_from([0, 0, 1, 2]))
    seq = draw(st.one_of(st.integers(0, 80), st.integers(0, (1 << 48) - 1)))
    if ctype == ContentType.TLS12_CID:  # RFC 9146: a CID (4 bytes: the variants' length) after the sequence number
        payload = draw(st.binary(max_size=120))
        return encode_plain(ctype, (epoch << 48) | seq, b"")[:11] + draw(st.binary(min_size=4, max_size=4)) + \
            len(payload).to_bytes(2, "big") + payload
    if ctype == ContentType.HANDSHAKE and epoch == 0 and draw(st.booleans()):
        msg_type = draw(st.sampled_from([*HandshakeType, 99]))
        length = draw(st.integers(0, 300))
        offset = draw(st.integers(0, length))
        body = draw(st.binary(max_size=max(0, length - offset)))
        payload = message_header(msg_type, length, draw(st.integers(0, 8)), offset, len(body)) + body
    elif ctype == ContentType.ALERT:
        payload = draw(st.binary(min_size=0, max_size=3))
    else:
        payload = draw(st.binary(max_size=120))
    return encode_plain(ctype, (epoch << 48) | seq, payload)


@st.composite
def bad_datagram(draw: st.DrawFn, variant: str) -> bytes:
    pool = reference_wire(variant)
    kind = draw(st.sampled_from(["random", "records", "mutated", "mutated", "mutated"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "records":
        return b"".join(draw(st.lists(random_record(), min_size=1, max_size=3)))
    data = draw(st.sampled_from(pool))
    for mutate in draw(st.lists(mutations, min_size=1, max_size=4)):
        data = mutate(data, pool)
    return data


# -- invariants --------------------------------------------------------------------------------------------


def _check_terminations(events: list[Event], *, server: bool) -> None:
    completed = 0
    for event in events:
        if isinstance(event, HandshakeCompleted):
            completed += 1
        if not isinstance(event, ConnectionTerminated) or event.error is None:
            continue
        err = event.error
        assert not isinstance(err, InternalError), f"InternalError (a bug in the core): {err}"
        allowed: tuple[type[Exception], ...] = (AlertError, HandshakeTimeout)
        if server:
            allowed += (SessionEvicted,)
        assert isinstance(err, allowed), f"unexpected termination {err!r}"


def settle_and_check(pair: Pair, events: list[tuple[str, Event]]) -> None:
    """Let the legitimate exchange and every timer run their course, then check the invariants."""
    pair.pump()
    run_until(pair, 400.0)
    events += [("c", e) for e in drain(pair.client)]
    events += [("s", e) for _, e in drain_server(pair.server)]
    _check_terminations([e for side, e in events if side == "c"], server=False)
    _check_terminations([e for side, e in events if side == "s"], server=True)
    # Nothing is left half-open: the handshake timeout bounds every handshake.
    assert not pair.client.is_handshaking
    assert all(not c.is_handshaking for c in pair.server.connections.values())
    assert pair.server.handshakes_in_progress == 0
    # Memory stays bounded: nothing is kept for reassembly once a connection is established.
    for conn in (pair.client, *pair.server.connections.values()):
        if conn.is_established:
            assert not conn._reasm._parts, sorted(conn._reasm._parts)
    assert len(pair.server._partial_hellos) <= 64
    # Two established ends share working keys. (Replayed reference records may already have used the
    # first sequence numbers of this same deterministic session, so a few probes are sent.)
    session = pair.server.connections.get(CLIENT_ADDR)
    if pair.client.is_established and session is not None and session.is_established:
        for _ in range(4):
            pair.client.send(b"probe")
        pair.pump()
        assert (CLIENT_ADDR, DataReceived(b"probe")) in drain_server(pair.server)


def inject(pair: Pair, target: str, datagram: bytes, events: list[tuple[str, Event]]) -> None:
    if target == "client":
        pair.client.receive_datagram(datagram, pair.now)
    else:
        pair.server.receive_datagram(datagram, CLIENT_ADDR if target == "server" else OTHER_ADDR, pair.now)
    events += [("c", e) for e in drain(pair.client)]
    events += [("s", e) for _, e in drain_server(pair.server)]


# -- the fuzz tests ----------------------------------------------------------------------------------------


Case = tuple[str, int, list[tuple[str, bytes]]]


@st.composite
def scenario(draw: st.DrawFn, variants: Mapping[str, object] = VARIANTS, stages: range = STAGES) -> Case:
    variant = draw(st.sampled_from(sorted(variants)))
    stage = draw(st.sampled_from(stages))
    targets = st.sampled_from(["client", "server", "server", "other"])
    injections = draw(st.lists(st.tuples(targets, bad_datagram(variant)), min_size=1, max_size=3))
    return variant, stage, injections


@FUZZ
@given(scenario())
def test_bad_datagrams_in_every_state(case: Case) -> None:
    run_scenario(case)


#: The public-key pairs cost about twice a PSK pair: fewer examples by default.
PK_FUZZ = settings(FUZZ, max_examples=int(os.environ.get("IOTDTLS_FUZZ_EXAMPLES", "300")))


@PK_FUZZ
@given(scenario(PK_VARIANTS, PK_STAGES))
def test_bad_datagrams_in_every_public_key_state(case: Case) -> None:
    """Random, truncated, spliced and mutated datagrams (from complete public-key exchanges) in every state of
    both roles, the public-key ones included: nothing escapes, every end is an alert, a timeout or silence."""
    run_scenario(case)


def run_scenario(case: Case) -> None:
    variant, stage, injections = case
    pair = pair_at(variant, stage)
    events: list[tuple[str, Event]] = []
    for target, datagram in injections:
        inject(pair, target, datagram, events)
    settle_and_check(pair, events)


@FUZZ
@given(st.sampled_from(sorted(VARIANTS)), st.sampled_from(STAGES), st.integers(0, 2**32 - 1))
def test_reference_datagrams_replayed_in_every_state(variant: str, stage: int, seed: int) -> None:
    """Genuine datagrams of the same session replayed, duplicated and reordered at any point."""
    replay_reference(variant, stage, seed)


@PK_FUZZ
@given(st.sampled_from(sorted(PK_VARIANTS)), st.sampled_from(PK_STAGES), st.integers(0, 2**32 - 1))
def test_reference_datagrams_replayed_in_every_public_key_state(variant: str, stage: int, seed: int) -> None:
    replay_reference(variant, stage, seed)


def replay_reference(variant: str, stage: int, seed: int) -> None:
    rng = random.Random(seed)
    pool = list(reference_wire(variant))
    pair = pair_at(variant, stage)
    events: list[tuple[str, Event]] = []
    for d in rng.sample(pool, k=min(len(pool), rng.randint(1, 6))):
        inject(pair, rng.choice(["client", "server"]), d, events)
        if rng.random() < 0.3:
            pair.now += rng.choice([0.1, 1.0, 3.0])
    settle_and_check(pair, events)


@FUZZ
@given(st.sampled_from(STAGES), st.binary(max_size=64), st.integers(0, 2**32 - 1))
def test_random_bytes_and_timers(stage: int, noise: bytes, seed: int) -> None:
    """Random bytes to both ends interleaved with timer firings at random times."""
    rng = random.Random(seed)
    pair = pair_at("default", stage)
    events: list[tuple[str, Event]] = []
    for _ in range(4):
        pair.now += rng.choice([0.0, 0.5, 2.0, 7.0])
        pair.client.handle_timer(pair.now)
        pair.server.handle_timer(pair.now)
        inject(pair, rng.choice(["client", "server", "other"]), noise[: rng.randint(0, len(noise))], events)
        if rng.random() < 0.5:
            pair.pump()
    settle_and_check(pair, events)


@st.composite
def fragmentation(draw: st.DrawFn, max_messages: int = 4) -> tuple[list[list[int]], list[int], int]:
    """Cut points per message (as fractions of 1000), a delivery permutation key and a duplication seed."""
    cuts = draw(st.lists(st.lists(st.integers(0, 1000), max_size=5), min_size=max_messages,
                         max_size=max_messages))
    order = draw(st.permutations(list(range(32))))
    return cuts, order, draw(st.integers(0, 2**32 - 1))


def _refragment(datagrams: list[bytes], cuts: list[list[int]], order: list[int], seed: int,
                first_seq: int) -> list[bytes]:
    """Every epoch-0 handshake message of ``datagrams`` cut into fragments at the given points (plus a few
    overlapping duplicates), each in its own record with a fresh sequence number, in a scrambled order."""
    rng = random.Random(seed)
    frags: list[bytes] = []
    messages = [f for d in datagrams for r in split_records(d) if r.epoch == 0 and r.content_type == 22
                for f in parse_fragments(r.fragment)]
    for i, m in enumerate(messages):
        assert m.offset == 0 and len(m.body) == m.length
        points = sorted({c * m.length // 1000 for c in cuts[i % len(cuts)]} | {0, m.length})
        pieces = [(a, b) for a, b in itertools.pairwise(points) if b > a] or [(0, 0)]
        for _ in range(rng.randint(0, 2)):
            a, b = sorted((rng.randint(0, m.length), rng.randint(0, m.length)))
            pieces.append((a, b))
        for a, b in pieces:
            frags.append(message_header(m.msg_type, m.length, m.message_seq, a, b - a) + m.body[a:b])
    keyed = sorted(range(len(frags)), key=lambda j: order[j % len(order)] * 100 + j)
    return [encode_plain(ContentType.HANDSHAKE, first_seq + n, frags[j]) for n, j in enumerate(keyed)]


@FUZZ
@given(st.sampled_from(["default", "hint-coalesced", "rpk-mutual"]), fragmentation(max_messages=5))
def test_server_flight_any_fragmentation_and_order_reassembled(
        variant: str, frag: tuple[list[list[int]], list[int], int]) -> None:
    """Any split of the server's flight into fragments, delivered in any order with overlapping duplicates,
    reassembles: the client reaches WAIT_FINISHED and the handshake completes. ``rpk-mutual``: the five
    messages of an ECDHE-ECDSA flight (ServerHello, Certificate, ServerKeyExchange, CertificateRequest,
    ServerHelloDone), all within the reassembler's look-ahead."""
    cuts, order, seed = frag
    pair = pair_at(variant, 3)
    flight = pair.s2c()
    records = _refragment(flight, cuts, order, seed, first_seq=20)
    to_client(pair, records)
    assert pair.client.state is State.CLIENT_WAIT_FINISHED, drain(pair.client)
    half_steps(pair, 2)
    assert pair.client.is_established and pair.server.connections[CLIENT_ADDR].is_established


@FUZZ
@given(fragmentation(max_messages=1))
def test_client_final_flight_any_fragmentation_and_order_reassembled(
        frag: tuple[list[list[int]], list[int], int]) -> None:
    """The ClientKeyExchange in arbitrary fragments, in any order relative to the CCS and Finished."""
    cuts, order, seed = frag
    pair = pair_at("default", 4)
    (final,) = pair.c2s()
    cke, ccs, fin = raw_records(final)
    pieces = [*_refragment([cke], cuts, order, seed, first_seq=20), ccs, fin]
    rng = random.Random(seed)
    rng.shuffle(pieces)
    to_server(pair, pieces)
    assert pair.server.connections[CLIENT_ADDR].is_established
    to_client(pair, pair.s2c())
    assert pair.client.is_established


@PK_FUZZ
@given(fragmentation(max_messages=3))
def test_public_key_final_flight_any_fragmentation_and_order_reassembled(
        frag: tuple[list[list[int]], list[int], int]) -> None:
    """Certificate, ClientKeyExchange and CertificateVerify in arbitrary fragments with overlapping duplicates,
    all in any order relative to each other and to the ChangeCipherSpec and Finished."""
    cuts, order, seed = frag
    pair = pair_at("rpk-mutual", 4)
    (final,) = pair.c2s()
    cert, cke, cv, ccs, fin = raw_records(final)
    pieces = [*_refragment([cert, cke, cv], cuts, order, seed, first_seq=20), ccs, fin]
    random.Random(seed).shuffle(pieces)
    to_server(pair, pieces)
    assert pair.server.connections[CLIENT_ADDR].is_established
    to_client(pair, pair.s2c())
    assert pair.client.is_established


@FUZZ
@given(fragmentation(max_messages=1), st.booleans())
def test_client_hello_any_fragmentation_and_order_accepted(
        frag: tuple[list[list[int]], list[int], int], with_noise: bool) -> None:
    """The server front collects a ClientHello (with its cookie) split into arbitrary fragments in any order,
    with overlapping duplicates, without storing more than its bounded table, and the handshake completes;
    fragments of other hellos from other addresses interleaved do not disturb it."""
    cuts, order, seed = frag
    pair = pair_at("default", 2)
    (hello,) = pair.c2s()
    # Sequence numbers above the client's own next ones (2, 3), inside the server's replay window.
    pieces = _refragment([hello], cuts, order, seed, first_seq=40)
    if with_noise:
        noise = _refragment([hello], [[500]], order, seed + 1, first_seq=100)
        pieces = [p for pair_ in zip(pieces, noise * len(pieces), strict=False) for p in pair_]
    for p in pieces:
        pair.server.receive_datagram(p, OTHER_ADDR if with_noise and p in noise else CLIENT_ADDR, pair.now)
        assert len(pair.server._partial_hellos) <= 64
    assert list(pair.server.connections) == [CLIENT_ADDR]
    assert pair.server.connections[CLIENT_ADDR].state is State.SERVER_WAIT_CKE
    pair.pump()
    assert pair.client.is_established and pair.server.connections[CLIENT_ADDR].is_established
