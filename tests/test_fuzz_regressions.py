"""Regression tests for the coverage-guided fuzz targets in fuzz/ (see docs/fuzzing.md).

* Every committed seed (fuzz/corpus/<target>/) and every input that once crashed a target
  (fuzz/crashes/<target>/) is replayed through the target's ``test_one_input``: no exception may escape and no
  connection may end with internal_error. A crash the fuzzer finds is committed to fuzz/crashes/ and gets a
  named test below; while the bug is open its inputs are listed in ``OPEN_BUGS`` and run as strict xfails.
* The seeds still reach deep: replayed against today's code they complete handshakes. When the handshake
  bytes change, regenerate them with ``python fuzz/seeds.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"
if str(FUZZ_DIR) not in sys.path:
    sys.path.insert(0, str(FUZZ_DIR))

import fuzz_client  # noqa: E402
import fuzz_handshake_messages  # noqa: E402
import fuzz_record  # noqa: E402
import fuzz_resumption  # noqa: E402
import fuzz_server  # noqa: E402
from _harness import frames  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from endpoints import (  # noqa: E402
    CLIENT_STATES,
    SERVER_VARIANTS,
    addr_of,
    client_pair,
    make_pair,
    seal_for,
    server_pair,
)
from fixed_pki import certificates  # noqa: E402
from helpers import CLIENT_ADDR, drain, drain_server, p256_key, pin_of, seeded, to_client, to_server  # noqa: E402

from iotdtls import (  # noqa: E402
    ConnectionTerminated,
    HandshakeCompleted,
    PeerAddressChanged,
    Session,
    TicketKeys,
)
from iotdtls.constants import AlertDescription  # noqa: E402
from iotdtls.errors import AlertError, DecodeError, InternalError  # noqa: E402
from iotdtls.handshake import State  # noqa: E402
from iotdtls.trust import TrustStore  # noqa: E402

TARGETS: dict[str, ModuleType] = {m.__name__: m for m in (fuzz_record, fuzz_handshake_messages, fuzz_server,
                                                          fuzz_client, fuzz_resumption)}


#: Committed crash inputs of bugs not fixed yet: "<target>/<file>" -> reason; they run as strict xfails.
#: Empty: the crashes of the public-key targets (fuzz/crashes/*/rpk-*, x509-*) were fixed in e0776f4.
OPEN_BUGS: dict[str, str] = {}
CERTIFICATE_ALERTS = (AlertDescription.bad_certificate, AlertDescription.unsupported_certificate,
                      AlertDescription.unknown_ca)


def _inputs(kind: str) -> list[object]:
    out: list[object] = []
    for target in TARGETS:
        for path in sorted((FUZZ_DIR / kind / target).glob("*")):
            if path.is_file():
                reason = OPEN_BUGS.get(f"{target}/{path.name}") if kind == "crashes" else None
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                out.append(pytest.param(target, path, id=f"{target}/{path.name}", marks=marks))
    return out


@pytest.mark.parametrize(("target", "path"), _inputs("corpus"))
def test_seed_replays_cleanly(target: str, path: Path) -> None:
    TARGETS[target].test_one_input(path.read_bytes())


@pytest.mark.parametrize(("target", "path"), _inputs("crashes"))
def test_former_crash_replays_cleanly(target: str, path: Path) -> None:
    TARGETS[target].test_one_input(path.read_bytes())


def test_open_bugs_name_committed_crashes() -> None:
    for name in OPEN_BUGS:
        assert (FUZZ_DIR / "crashes" / name).is_file(), name


P256_OID = bytes.fromhex("2a8648ce3d030107")  # 1.2.840.10045.3.1.7 (secp256r1), DER
X509_V3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2: version v3
UNDECODABLE = {
    "rpk-curve": ("rpk", P256_OID, P256_OID[:-1] + b"\x00"),  # 1.2.840.10045.3.1.0: UnsupportedAlgorithm
    "x509-curve": ("x509", P256_OID, P256_OID[:-1] + b"\x00"),
    "x509-version": ("x509", X509_V3, X509_V3[:-1] + b"\x03"),  # "v4": x509.InvalidVersion
}


@pytest.mark.parametrize("role", ["client", "server"])
@pytest.mark.parametrize("case", sorted(UNDECODABLE))
def test_undecodable_peer_key_or_certificate_is_refused_with_an_alert(role: str, case: str) -> None:
    """Bug found by fuzz_handshake_messages and fuzz_server within a second of their first run (one byte of
    the curve OID, or of the key type OID, of a raw public key) and by a longer fuzz_handshake_messages run (the
    version of an X.509 certificate); inputs in fuzz/crashes/, the fuzz_client ones written by hand from the
    same findings. A fatal bad_certificate or unsupported_certificate is expected; the handshake ended with
    internal_error until e0776f4: handshake_pk._peer_credential caught only ValueError/TypeError around
    ``load_der_public_key`` and ValueError around ``load_der_x509_certificate(...).public_key()``, while
    cryptography also raises UnsupportedAlgorithm and x509.InvalidVersion."""
    kind, old, new = UNDECODABLE[case]
    errors = _tampered_handshake(kind, role, old, new)
    assert len(errors) == 1 and isinstance(errors[0], AlertError), errors
    assert errors[0].description in (AlertDescription.bad_certificate, AlertDescription.unsupported_certificate)


def _tampered_handshake(kind: str, role: str, old: bytes, new: bytes,
                        client_kw: dict[str, object] | None = None) -> list[Exception | None]:
    """A public-key handshake (mutual, ``kind`` "rpk" or "x509") in which ``old`` is replaced by ``new`` in the
    flight the ``role`` receives with the peer's certificate; the terminations of ``role``."""
    mtu = {"mtu": 1400}  # no fragmentation: the bytes are rewritten in the datagrams
    pair = make_pair(kind, {**mtu, **(client_kw or {})}, {**mtu, "require_client_auth": True, "cookies": False})

    def tampered(datagrams: list[bytes]) -> list[bytes]:
        out = [d.replace(old, new) for d in datagrams]
        assert out != datagrams, "nothing to replace in these datagrams"
        return out

    pair.client.connect(pair.now)
    to_server(pair, pair.c2s())
    server_flight = pair.s2c()
    if role == "client":
        to_client(pair, tampered(server_flight))
        events = drain(pair.client)
    else:
        to_client(pair, server_flight)
        to_server(pair, tampered(pair.c2s()))
        events = [e for _, e in drain_server(pair.server)]
    return [e.error for e in events if isinstance(e, ConnectionTerminated)]


def _der(role: str) -> bytes:
    return certificates()[role].public_bytes(serialization.Encoding.DER)


def _subject_tampered(role: str, how: str) -> bytes:
    """The leaf of fuzz/fixed_pki with its subject common name made invalid (the signature no longer matches)."""
    der = _der(role)
    cn = der.index(f"fuzz {role}".encode())
    if how == "utf8":
        return der[: cn + 4] + b"\xdc" + der[cn + 5 :]  # not UTF-8 in a UTF8String
    return der[: cn - 2] + b"\x01" + der[cn - 1 :]  # the attribute value typed BOOLEAN, 11 bytes long


@pytest.mark.parametrize("case", ["ca-chain-verify", "pinned-subject-utf8", "pinned-subject-type"])
def test_malformed_certificate_is_refused_with_an_alert_not_internal_error(case: str) -> None:
    """A certificate that loads (cryptography parses lazily) but has a malformed field; internal_error until
    e0776f4. ``ca-chain-verify``: found by fuzz_handshake_messages (fuzz/crashes/; two bytes of the client leaf
    of fuzz/fixed_pki changed, one in the subject, one in the signature): a server that checks client
    certificates against a CA got ValueError from ``build_client_verifier().verify()`` (TrustStore._verify_chain
    caught only VerificationError). ``pinned-*``: written from the same finding: a client that pins the
    server's key gets a certificate for that key whose subject does not decode (an invalid UTF-8 byte, or a
    BOOLEAN attribute value); trust.verify accepted the pin, then the identity (PeerCredential.subject ->
    ``subject.rfc4514_string()``) raised ValueError / KeyError. Expected: the handshake completes (the key is
    pinned) or a certificate alert."""
    if case == "ca-chain-verify":
        found = (FUZZ_DIR / "crashes" / "fuzz_handshake_messages" / "x509-malformed-subject-chain-verify")
        errors = _tampered_handshake("x509", "server", _der("client"), found.read_bytes()[7:])
        assert errors, "a certificate that does not verify must be refused"
    else:
        pin = TrustStore.of([pin_of(p256_key("x509-server"))])
        errors = _tampered_handshake("x509", "client", _der("server"),
                                     _subject_tampered("server", case.rsplit("-", 1)[1]), {"trust": pin})
    assert not any(isinstance(e, InternalError) for e in errors), errors
    assert all(isinstance(e, AlertError) and e.description in CERTIFICATE_ALERTS for e in errors), errors


def test_every_target_has_seeds() -> None:
    for target in TARGETS:
        assert len(list((FUZZ_DIR / "corpus" / target).glob("seed-*"))) >= 5, target


def test_server_seeds_still_complete_a_handshake_from_a_fresh_address() -> None:
    completed = 0
    for path in sorted((FUZZ_DIR / "corpus" / "fuzz_server").glob("seed-*")):
        data = path.read_bytes()
        pair = server_pair(data[0])
        for tag, datagram in frames(data[1:]):
            pair.server.receive_datagram(datagram, addr_of(tag), pair.now)
            pair.server.datagrams_to_send(pair.now)
            completed += sum(isinstance(e, HandshakeCompleted) and a != CLIENT_ADDR
                             for a, e in drain_server(pair.server))
    assert completed >= 3, "stale seeds: regenerate them with python fuzz/seeds.py"


def test_client_seeds_still_complete_the_handshake_from_every_state() -> None:
    completed: dict[int, bool] = {}
    for path in sorted((FUZZ_DIR / "corpus" / "fuzz_client").glob("seed-*")):
        data = path.read_bytes()
        pair = client_pair(data[0])
        state = data[0] % len(CLIENT_STATES)
        done = pair.client.is_established
        for tag, datagram in frames(data[1:]):
            if tag & 0x40 and pair.client.state is State.CLIENT_START:
                pair.client.connect(pair.now)
            pair.client.receive_datagram(seal_for(pair.client, datagram) if tag & 0x20 else datagram, pair.now)
            pair.client.datagrams_to_send(pair.now)
        done = done or any(isinstance(e, HandshakeCompleted) for e in drain(pair.client))
        completed[state] = completed.get(state, False) or done
    stale = [CLIENT_STATES[i][0] for i, ok in sorted(completed.items()) if not ok]
    assert len(completed) == len(CLIENT_STATES) and not stale, \
        f"stale seeds for {stale}: regenerate them with python fuzz/seeds.py"


def test_ticket_key_file_without_keys_loads() -> None:
    """Found by fuzz_resumption in its first 18 s run (fuzz/crashes/fuzz_resumption/ticket-key-file-without-keys):
    a key file that declares no key. ``to_bytes`` writes exactly that once every key expired (``open`` drops
    expired keys and sets ``needs_save``; the gateway then saves), so a server idle for longer than the key
    lifetime refuses its own file at the next start ("not a ticket key file"). The file must load (no keys: the
    next seal makes one) or be refused with the documented DecodeError."""
    keys = TicketKeys(seeded(1))
    keys.rotate(1000.0)
    assert keys.open(b"\x00" * 40, 1000.0 + 30 * 86400.0) is None and len(keys) == 0 and keys.needs_save
    data = keys.to_bytes()
    assert data == (FUZZ_DIR / "crashes" / "fuzz_resumption" / "ticket-key-file-without-keys").read_bytes()[1:]
    try:
        loaded = TicketKeys.from_bytes(data, seeded(2))
    except DecodeError:
        return
    assert len(loaded) == 0


def test_ticket_server_seeds_resume_and_move_a_session() -> None:
    """The seeds of the ticket variants of fuzz_server reach the new paths: an abbreviated handshake from a fresh
    address (HandshakeCompleted with resumed=True), and the established session's tls12_cid records arriving from
    another address, which move it there (PeerAddressChanged; with RFC 9853 after the path challenge)."""
    resumed = moved = 0
    variants = [i for i, v in enumerate(SERVER_VARIANTS) if v[0] == "ticket"]
    for path in sorted((FUZZ_DIR / "corpus" / "fuzz_server").glob("seed-*")):
        data = path.read_bytes()
        if data[0] not in variants:
            continue
        pair = server_pair(data[0])
        for tag, datagram in frames(data[1:]):
            pair.server.receive_datagram(datagram, addr_of(tag), pair.now)
            for reply, addr in pair.server.datagrams_to_send(pair.now):
                if addr == addr_of(tag) and addr_of(tag) == addr_of(7):
                    pair.client.receive_datagram(reply, pair.now)  # the moved client answers challenges
            for _, event in drain_server(pair.server):
                resumed += isinstance(event, HandshakeCompleted) and event.resumed
                moved += isinstance(event, PeerAddressChanged)
    assert resumed >= len(variants) and moved >= len(variants), (resumed, moved)


def test_resumption_seeds_open_their_tickets() -> None:
    """fuzz_resumption's seeds parse and open: every reference encoding is a Session, and the genuine tickets
    open to their sessions at the reference time (otherwise the target only ever sees refusals)."""
    seeds = [p.read_bytes() for p in sorted((FUZZ_DIR / "corpus" / "fuzz_resumption").glob("seed-*"))]
    sessions = [Session.from_bytes(s[1:]) for s in seeds if s[0] == 0]
    opened = [fuzz_resumption._keys().open(s[2:], fuzz_resumption.TIMES[s[1]]) for s in seeds
              if s[:2] == b"\x01\x00" and s[2:] in fuzz_resumption.TICKETS]
    assert len(sessions) >= 4 and len(opened) == len(fuzz_resumption.TICKETS) and None not in opened
