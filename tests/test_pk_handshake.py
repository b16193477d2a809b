"""The ECDHE-ECDSA handshake, sans IO: raw public keys (RFC 7250) and X.509, one-way and mutual, certificate-type
fallback, PSK and public keys on one server, refusals with their exact alerts, crafted flights and small MTUs
under loss (``tests/netsim.py``)."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import random
from collections.abc import Callable, Hashable
from typing import Any

import pki
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import (
    CLIENT_ADDR,
    IDENTITY,
    KEY,
    Pair,
    PkPair,
    drain,
    drain_server,
    half_steps,
    p256_key,
    pin_of,
    pk_client_config,
    plain_alerts,
    raw_records,
    seeded,
    to_client,
    to_server,
)
from netsim import LinkParams, Network

from iotdtls import DTLSConfiguration, DTLSConnection, DTLSServer
from iotdtls import handshake_pk as hpk
from iotdtls.constants import AlertDescription, AlertLevel, CertificateType, ContentType, ExtensionType, HandshakeType
from iotdtls.constants import CipherSuite as CS
from iotdtls.errors import AlertError, RemoteAlert
from iotdtls.events import ConnectionTerminated, DataReceived, HandshakeCompleted
from iotdtls.handshake import State
from iotdtls.keys import ni_uri, spki_der
from iotdtls.messages import Extensions
from iotdtls.reassembly import OutMessage, message_header, parse_fragments
from iotdtls.record import encode_plain, split_records
from iotdtls.trust import TrustStore

A = AlertDescription
RPK, X509 = CertificateType.RAW_PUBLIC_KEY, CertificateType.X509
ECDHE_SUITES = [CS.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, CS.TLS_ECDHE_ECDSA_WITH_AES_128_CCM]
CLIENT_KEY, SERVER_KEY = p256_key("client"), p256_key("server")


def ni(key: ec.EllipticCurvePrivateKey) -> bytes:
    return ni_uri(pin_of(key)).encode()


def pins(*keys: ec.EllipticCurvePrivateKey) -> TrustStore:
    return TrustStore.of(pin_of(k) for k in keys)


def pair_of(client: dict[str, Any], server: dict[str, Any], client_cls: type[DTLSConnection] = DTLSConnection) -> Pair:
    """A Pair from explicit configuration keywords (no PSK unless given)."""
    pair = Pair.__new__(Pair)
    pair.now, pair.wire = 0.0, []
    pair.client = client_cls(DTLSConfiguration(is_client=True, random=seeded(1), **client), peer="server")
    pair.server = DTLSServer(DTLSConfiguration(is_client=False, random=seeded(2), **server))
    return pair


def completed(pair: Pair) -> tuple[HandshakeCompleted, HandshakeCompleted]:
    """Both sides established; data flows both ways; returns the two HandshakeCompleted events."""
    sconn = pair.server_conn
    assert pair.client.is_established and sconn.is_established, (pair.client.error, sconn.error)
    (cdone,) = [e for e in drain(pair.client) if isinstance(e, HandshakeCompleted)]
    (sdone,) = [e for _, e in drain_server(pair.server) if isinstance(e, HandshakeCompleted)]
    assert cdone.identity == pair.client.identity and sdone.identity == sconn.identity
    assert cdone.peer == pair.client.peer_credential and sdone.peer == sconn.peer_credential
    assert cdone.cipher_suite == sconn.cipher_suite and cdone.extended_master_secret
    pair.client.send(b"ping")
    pair.pump()
    assert [e.data for _, e in drain_server(pair.server) if isinstance(e, DataReceived)] == [b"ping"]
    pair.server.send(CLIENT_ADDR, b"pong")
    pair.pump()
    assert [e.data for e in drain(pair.client) if isinstance(e, DataReceived)] == [b"pong"]
    return cdone, sdone


def refused(pair: Pair, desc: AlertDescription, by: str) -> None:
    """The side ``by`` refused with ``desc``: it sent exactly that fatal alert, its peer got it as RemoteAlert."""
    cerr = pair.client.error
    serrs = [e.error for _, e in drain_server(pair.server) if isinstance(e, ConnectionTerminated)]
    assert len(serrs) == 1, (cerr, serrs)
    serr = serrs[0]
    local, remote = (cerr, serr) if by == "client" else (serr, cerr)
    assert isinstance(local, AlertError) and not local.remote and local.description == desc, local
    assert isinstance(remote, RemoteAlert) and remote.description == desc, remote
    sent = {d: [x for k, x in pair.wire if k == d] for d in ("c2s", "s2c")}
    mine, theirs = ("c2s", "s2c") if by == "client" else ("s2c", "c2s")
    assert plain_alerts(sent[mine]) == [(AlertLevel.FATAL, desc)]
    assert plain_alerts(sent[theirs]) == []
    assert pair.client.is_closed and CLIENT_ADDR not in pair.server.connections


# -- a deterministic PKI (fixed dates, serials and RFC 6979 signatures), so simulations replay exactly ---------

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
WALL = (T0 + datetime.timedelta(days=100)).timestamp()


def make_cert(cn: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
              ca: bool, serial: int) -> x509.Certificate:
    issuer_cn, issuer_key = issuer or (cn, key)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
         .public_key(key.public_key()).serial_number(serial)
         .not_valid_before(T0).not_valid_after(T0 + datetime.timedelta(days=3650))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("gw.example")]), critical=False)
    return b.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True)


ROOT_KEY, INTER_KEY = p256_key("root"), p256_key("intermediate")
ROOT = make_cert("root", ROOT_KEY, None, True, 1)
INTER = make_cert("intermediate", INTER_KEY, ("root", ROOT_KEY), True, 2)
CHAIN3 = [make_cert("gw", SERVER_KEY, ("intermediate", INTER_KEY), False, 3), INTER, ROOT]


# -- successful handshakes -------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ECDHE_SUITES)
def test_rpk_one_way(suite: int) -> None:
    for server_trust in (None, TrustStore()):
        pair = pair_of({"trust": pins(SERVER_KEY), "cipher_suites": [suite]},
                       {"private_key": SERVER_KEY, "trust": server_trust, "cipher_suites": [suite]})
        pair.handshake()
        cdone, sdone = completed(pair)
        assert cdone.cipher_suite == suite
        assert cdone.identity == ni(SERVER_KEY) and cdone.peer is not None and cdone.peer.kind is RPK
        assert cdone.peer.spki == spki_der(SERVER_KEY) and cdone.peer.certificates == ()
        assert sdone.identity == b"" and sdone.peer is None and pair.server_conn.peer_credential is None


def test_client_without_key_to_a_server_that_asks() -> None:
    # The server trusts some keys but does not require one: the client answers with an empty Certificate.
    pair = PkPair({"key": None})
    pair.handshake()
    cdone, sdone = completed(pair)
    assert cdone.identity == ni(SERVER_KEY) and sdone.identity == b"" and sdone.peer is None


@pytest.mark.parametrize("suite", ECDHE_SUITES)
def test_rpk_mutual(suite: int) -> None:
    pair = PkPair({"cipher_suites": [suite]}, {"cipher_suites": [suite], "require_client_auth": True})
    pair.handshake()
    _, sdone = completed(pair)
    assert pair.client.cipher_suite == pair.server_conn.cipher_suite == suite
    assert pair.client.identity == ni(SERVER_KEY) and pair.server_conn.identity == ni(CLIENT_KEY)
    assert sdone.peer is not None and sdone.peer.kind is RPK and sdone.peer.fingerprint == pin_of(CLIENT_KEY)
    assert sdone.peer.identity == sdone.peer.ni


def test_callback_names_the_client() -> None:
    store = TrustStore.of(callback=lambda cred: "sensor-17" if cred.spki == spki_der(CLIENT_KEY) else None)
    pair = pair_of({"private_key": CLIENT_KEY, "trust": pins(SERVER_KEY)},
                   {"private_key": SERVER_KEY, "trust": store, "require_client_auth": True})
    pair.handshake()
    _, sdone = completed(pair)
    assert sdone.identity == b"sensor-17" and sdone.peer is not None and sdone.peer.name == "sensor-17"


@pytest.mark.parametrize("suite", ECDHE_SUITES)
def test_x509_mutual(suite: int) -> None:
    ca = pki.make_ca()
    srv, cli = pki.issue(ca, "gateway"), pki.issue(ca, "sensor")
    pair = pair_of(
        {"private_key": cli.key, "certificate_chain": [cli.cert], "cipher_suites": [suite],
         "trust": TrustStore(ca_certificates=[ca.cert], server_name="127.0.0.1")},
        {"private_key": srv.key, "certificate_chain": [srv.cert, ca.cert], "cipher_suites": [suite],
         "trust": TrustStore.of(cas=[ca.cert]), "require_client_auth": True})
    pair.handshake()
    cdone, sdone = completed(pair)
    assert cdone.identity == b"CN=gateway" and sdone.identity == b"CN=sensor"
    assert cdone.peer is not None and cdone.peer.kind is X509 and len(cdone.peer.certificates) == 2
    assert sdone.peer is not None and sdone.peer.kind is X509 and sdone.peer.spki == spki_der(cli.key)


def test_x509_one_way() -> None:
    ca = pki.make_ca()
    srv = pki.issue(ca, "gateway")
    pair = pair_of({"trust": TrustStore(ca_certificates=[ca.cert], server_name="localhost")},
                   {"private_key": srv.key, "certificate_chain": [srv.cert]})
    pair.handshake()
    cdone, sdone = completed(pair)
    assert cdone.identity == b"CN=gateway" and sdone.identity == b"" and sdone.peer is None


def test_mixed_x509_server_rpk_client() -> None:
    ca = pki.make_ca()
    srv = pki.issue(ca, "gateway")
    pair = pair_of({"private_key": CLIENT_KEY, "trust": TrustStore.of(cas=[ca.cert])},
                   {"private_key": srv.key, "certificate_chain": [srv.cert], "trust": pins(CLIENT_KEY),
                    "require_client_auth": True})
    pair.handshake()
    cdone, sdone = completed(pair)
    assert cdone.peer is not None and cdone.peer.kind is X509 and cdone.identity == b"CN=gateway"
    assert sdone.peer is not None and sdone.peer.kind is RPK and sdone.identity == ni(CLIENT_KEY)


def test_handshake_is_deterministic() -> None:
    wires = []
    for _ in range(2):
        pair = PkPair({}, {"require_client_auth": True})
        pair.handshake()
        wires.append(pair.wire)
    assert wires[0] == wires[1]  # RFC 6979 signatures, ephemeral keys from the seeded config.random


# -- certificate-type negotiation and fallback -----------------------------------------------------------


def editing(edit: Callable[[Extensions], Extensions]) -> type[DTLSConnection]:
    """A client class that edits the ECDHE extensions of its ClientHello."""

    class Edited(DTLSConnection):
        def _client_pk_extensions(self) -> Extensions:
            return edit(super()._client_pk_extensions())

    return Edited


def replacing(ext_type: int, data: bytes) -> type[DTLSConnection]:
    return editing(lambda exts: [(t, data if t == ext_type else d) for t, d in exts])


def test_x509_only_client_against_raw_key_server() -> None:
    ca = pki.make_ca()
    pair = pair_of({"trust": TrustStore.of(cas=[ca.cert])}, {"private_key": SERVER_KEY})
    pair.handshake()
    refused(pair, A.unsupported_certificate, by="server")


def test_x509_only_client_falls_back_to_psk() -> None:
    ca = pki.make_ca()
    pair = pair_of({"trust": TrustStore.of(cas=[ca.cert]), "psk": KEY, "psk_identity": IDENTITY},
                   {"private_key": SERVER_KEY, "psk_store": {IDENTITY: KEY},
                    "cipher_suites": [*ECDHE_SUITES, CS.TLS_PSK_WITH_AES_128_CCM_8]})
    pair.handshake()
    cdone, sdone = completed(pair)
    assert cdone.cipher_suite == CS.TLS_PSK_WITH_AES_128_CCM_8 and sdone.identity == IDENTITY and sdone.peer is None


def test_pinning_client_gets_the_server_certificate() -> None:
    # Pins judge X.509 too; the server prefers presenting its certificate, whose leaf key is pinned.
    srv = pki.issue(pki.make_ca(), "gateway", key=SERVER_KEY)
    pair = PkPair({}, {"certificate_chain": [srv.cert]})
    pair.handshake()
    cdone, _ = completed(pair)
    assert cdone.peer is not None and cdone.peer.kind is X509 and cdone.identity == b"CN=gateway"


def test_rpk_only_client_gets_a_raw_key_from_a_certificate_server() -> None:
    srv = pki.issue(pki.make_ca(), "gateway", key=SERVER_KEY)
    pair = pair_of({"private_key": CLIENT_KEY, "trust": pins(SERVER_KEY)},
                   {"private_key": SERVER_KEY, "certificate_chain": [srv.cert], "trust": pins(CLIENT_KEY)},
                   replacing(ExtensionType.SERVER_CERTIFICATE_TYPE, b"\x01\x02"))
    pair.handshake()
    cdone, _ = completed(pair)
    assert cdone.peer is not None and cdone.peer.kind is RPK and cdone.identity == ni(SERVER_KEY)


def test_x509_client_without_certificate_type_extension_is_judged_by_pin() -> None:
    cli = pki.issue(pki.make_ca(), "legacy", key=CLIENT_KEY)
    pair = pair_of({"private_key": CLIENT_KEY, "certificate_chain": [cli.cert], "trust": pins(SERVER_KEY)},
                   {"private_key": SERVER_KEY, "trust": pins(CLIENT_KEY), "require_client_auth": True},
                   editing(lambda exts: [e for e in exts if e[0] != ExtensionType.CLIENT_CERTIFICATE_TYPE]))
    pair.handshake()
    _, sdone = completed(pair)
    assert sdone.peer is not None and sdone.peer.kind is X509 and sdone.identity == b"CN=legacy"


def pump_all(server: DTLSServer, clients: dict[Hashable, DTLSConnection], rounds: int = 20) -> None:
    for _ in range(rounds):
        moved = False
        for addr, conn in clients.items():
            for d in conn.datagrams_to_send(0.0):
                server.receive_datagram(d, addr, 0.0)
                moved = True
        for d, addr in server.datagrams_to_send(0.0):
            clients[addr].receive_datagram(d, 0.0)
            moved = True
        if not moved:
            return


def test_psk_and_rpk_clients_on_one_server_at_once() -> None:
    server = DTLSServer(DTLSConfiguration(is_client=False, random=seeded(2), psk_store={IDENTITY: KEY},
                                          private_key=SERVER_KEY, trust=pins(CLIENT_KEY)))
    psk_addr, rpk_addr = ("192.0.2.1", 1), ("192.0.2.2", 2)
    psk_client = DTLSConnection(DTLSConfiguration(psk=KEY, psk_identity=IDENTITY, random=seeded(3)))
    rpk_client = DTLSConnection(DTLSConfiguration(private_key=CLIENT_KEY, trust=pins(SERVER_KEY), random=seeded(4)))
    clients: dict[Hashable, DTLSConnection] = {psk_addr: psk_client, rpk_addr: rpk_client}
    for conn in clients.values():
        conn.connect(0.0)
    pump_all(server, clients, rounds=2)  # hellos with cookies in: both handshakes are in progress together
    assert server.handshakes_in_progress == 2
    pump_all(server, clients)
    assert all(c.is_established for c in clients.values())
    assert server.connections[psk_addr].cipher_suite == CS.TLS_PSK_WITH_AES_128_CCM_8
    assert server.connections[psk_addr].identity == IDENTITY
    assert server.connections[rpk_addr].cipher_suite == CS.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
    assert server.connections[rpk_addr].identity == ni(CLIENT_KEY)
    assert clients[rpk_addr].identity == ni(SERVER_KEY)


@pytest.mark.parametrize(("server_suites", "client_suites", "expected"), [
    (None, None, CS.TLS_PSK_WITH_AES_128_CCM_8),
    ([CS.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, CS.TLS_PSK_WITH_AES_128_CCM_8], None,
     CS.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8),
    (None, [CS.TLS_ECDHE_ECDSA_WITH_AES_128_CCM, CS.TLS_PSK_WITH_AES_128_CCM], CS.TLS_PSK_WITH_AES_128_CCM),
    ([CS.TLS_ECDHE_ECDSA_WITH_AES_128_CCM, CS.TLS_PSK_WITH_AES_128_CCM_8],
     [CS.TLS_PSK_WITH_AES_128_CCM_8, CS.TLS_ECDHE_ECDSA_WITH_AES_128_CCM], CS.TLS_ECDHE_ECDSA_WITH_AES_128_CCM),
])
def test_server_preference_between_psk_and_public_keys(server_suites: list[int] | None,
                                                       client_suites: list[int] | None, expected: int) -> None:
    ckw: dict[str, Any] = {"psk": KEY, "psk_identity": IDENTITY, "private_key": CLIENT_KEY, "trust": pins(SERVER_KEY)}
    skw: dict[str, Any] = {"psk_store": {IDENTITY: KEY}, "private_key": SERVER_KEY, "trust": pins(CLIENT_KEY)}
    if client_suites:
        ckw["cipher_suites"] = client_suites
    if server_suites:
        skw["cipher_suites"] = server_suites
    pair = pair_of(ckw, skw)
    pair.handshake()
    cdone, sdone = completed(pair)
    assert cdone.cipher_suite == expected
    assert sdone.identity == (IDENTITY if expected in (0xC0A8, 0xC0A4) else ni(CLIENT_KEY))


# -- refusals --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ext_type", "data", "alert"), [
    (ExtensionType.SUPPORTED_GROUPS, b"\x00\x02\x00\x18", A.handshake_failure),  # secp384r1 only
    (ExtensionType.SIGNATURE_ALGORITHMS, b"\x00\x02\x05\x03", A.handshake_failure),  # ecdsa_secp384r1_sha384 only
    (ExtensionType.EC_POINT_FORMATS, b"\x01\x01", A.illegal_parameter),  # ansiX962_compressed_prime only
    (ExtensionType.SERVER_CERTIFICATE_TYPE, b"\x01\x01", A.unsupported_certificate),  # OpenPGP only
    (ExtensionType.CLIENT_CERTIFICATE_TYPE, b"\x01\x01", A.unsupported_certificate),  # with require_client_auth
])
def test_server_refuses_client_hello_parameters(ext_type: int, data: bytes, alert: AlertDescription) -> None:
    pair = pair_of({"private_key": CLIENT_KEY, "trust": pins(SERVER_KEY)},
                   {"private_key": SERVER_KEY, "trust": pins(CLIENT_KEY), "require_client_auth": True},
                   replacing(ext_type, data))
    pair.handshake()
    refused(pair, alert, by="server")


def test_unusable_client_certificate_type_without_require_client_auth() -> None:
    pair = pair_of({"private_key": CLIENT_KEY, "trust": pins(SERVER_KEY)},
                   {"private_key": SERVER_KEY, "trust": pins(CLIENT_KEY)},
                   replacing(ExtensionType.CLIENT_CERTIFICATE_TYPE, b"\x01\x01"))
    pair.handshake()
    _, sdone = completed(pair)  # no CertificateRequest: the client stays anonymous
    assert sdone.identity == b"" and sdone.peer is None


def test_client_refuses_unpinned_server_key() -> None:
    pair = PkPair({"trust": ("someone-else",)})
    pair.handshake()
    refused(pair, A.bad_certificate, by="client")


def test_client_refuses_certificate_of_unknown_ca() -> None:
    srv = pki.issue(pki.make_ca("rogue CA"), "gateway")
    pair = pair_of({"trust": TrustStore.of(cas=[pki.make_ca().cert])},
                   {"private_key": srv.key, "certificate_chain": [srv.cert]})
    pair.handshake()
    refused(pair, A.unknown_ca, by="client")


def test_client_refuses_certificate_for_another_name() -> None:
    ca = pki.make_ca()
    srv = pki.issue(ca, "gateway", names=("gw.example", "192.0.2.7"))
    pair = pair_of({"trust": TrustStore(ca_certificates=[ca.cert], server_name="127.0.0.1")},
                   {"private_key": srv.key, "certificate_chain": [srv.cert]})
    pair.handshake()
    refused(pair, A.bad_certificate, by="client")


def test_client_refuses_expired_certificate() -> None:
    ca = pki.make_ca()
    srv = pki.issue(ca, "gateway", not_before=pki.NOW - datetime.timedelta(hours=1), days=1)
    later = (pki.NOW + datetime.timedelta(days=5)).timestamp()
    pair = pair_of({"trust": TrustStore.of(cas=[ca.cert]), "wall_time": lambda: later},
                   {"private_key": srv.key, "certificate_chain": [srv.cert]})
    pair.handshake()
    refused(pair, A.certificate_expired, by="client")


def test_require_client_auth_refusals_then_a_good_client() -> None:
    pair = PkPair({"key": "stranger"}, {"require_client_auth": True})
    pair.handshake()
    refused(pair, A.bad_certificate, by="server")
    for client, alert in ((pk_client(key=None), A.handshake_failure), (pk_client(), None)):
        pair.client, pair.wire = client, []
        pair.handshake()
        if alert is None:
            _, sdone = completed(pair)
            assert sdone.identity == ni(CLIENT_KEY)
        else:
            refused(pair, alert, by="server")


def pk_client(key: str | None = "client") -> DTLSConnection:
    return DTLSConnection(pk_client_config(7, key=key), peer="server")


def tamper(datagrams: list[bytes], msg_type: int, edit: Callable[[bytes], bytes]) -> list[bytes]:
    """Re-encode the datagrams with the body of the (whole, epoch-0) handshake message ``msg_type`` edited."""
    out = []
    for dgram in datagrams:
        records = []
        for rec in split_records(dgram):
            payload = rec.fragment
            if rec.epoch == 0 and rec.content_type == ContentType.HANDSHAKE:
                parts = []
                for f in parse_fragments(payload):
                    if f.msg_type == msg_type:
                        assert f.offset == 0 and len(f.body) == f.length
                        body = edit(f.body)
                        parts.append(message_header(f.msg_type, len(body), f.message_seq) + body)
                    else:
                        header = message_header(f.msg_type, f.length, f.message_seq, f.offset, len(f.body))
                        parts.append(header + f.body)
                payload = b"".join(parts)
            records.append(encode_plain(rec.content_type, rec.epoch_seq, payload))
        out.append(b"".join(records))
    return out


def flip_last(body: bytes) -> bytes:
    return body[:-1] + bytes([body[-1] ^ 0x01])


def client_final_flight(pair: Pair) -> list[bytes]:
    pair.client.connect(pair.now)
    half_steps(pair, 4)
    return pair.c2s()


def finish(pair: Pair, c2s: list[bytes]) -> None:
    to_server(pair, c2s)
    pair.pump()


def test_forged_certificate_verify() -> None:
    pair = PkPair({}, {"require_client_auth": True})
    finish(pair, tamper(client_final_flight(pair), HandshakeType.CERTIFICATE_VERIFY, flip_last))
    refused(pair, A.decrypt_error, by="server")


class SkipsCertificateVerify(DTLSConnection):
    """Sends Certificate, ClientKeyExchange, CCS, Finished: the CertificateVerify is left out and its
    message_seq given to the Finished (the pion state-fuzzing finding: authentication without proof)."""

    def _client_pk_final_flight(self) -> list[OutMessage]:
        flight = super()._client_pk_final_flight()
        assert flight[-1].msg_type == HandshakeType.CERTIFICATE_VERIFY
        self._send_seq -= 1
        return flight[:-1]


@pytest.mark.parametrize("order", ["as-sent", "ccs-first"])
def test_missing_certificate_verify(order: str) -> None:
    pair = pair_of({"private_key": CLIENT_KEY, "trust": pins(SERVER_KEY)},
                   {"private_key": SERVER_KEY, "trust": pins(CLIENT_KEY)}, SkipsCertificateVerify)
    records = [r for d in client_final_flight(pair) for r in raw_records(d)]
    kinds = [next(split_records(r)).content_type for r in records]
    assert kinds == [ContentType.HANDSHAKE] * 2 + [ContentType.CHANGE_CIPHER_SPEC, ContentType.HANDSHAKE]
    if order == "ccs-first":
        records = records[2:3] + records[:2] + records[3:]
    finish(pair, records)
    refused(pair, A.unexpected_message, by="server")


def test_unrequested_client_certificate() -> None:
    class Pushy(DTLSConnection):
        def _client_pk_final_flight(self) -> list[OutMessage]:
            self._cert_requested = self._present_cert = True
            self._client_cert_type = RPK
            return super()._client_pk_final_flight()

    pair = pair_of({"private_key": CLIENT_KEY, "trust": pins(SERVER_KEY)}, {"private_key": SERVER_KEY}, Pushy)
    flight = client_final_flight(pair)
    assert HandshakeType.CERTIFICATE in [f.msg_type for d in flight for r in split_records(d) if r.epoch == 0
                                         and r.content_type == ContentType.HANDSHAKE
                                         for f in parse_fragments(r.fragment)]
    finish(pair, flight)
    refused(pair, A.unexpected_message, by="server")


def test_bad_server_key_exchange_signature() -> None:
    pair = PkPair()
    pair.client.connect(pair.now)
    half_steps(pair, 3)
    to_client(pair, tamper(pair.s2c(), HandshakeType.SERVER_KEY_EXCHANGE, flip_last))
    pair.pump()
    refused(pair, A.decrypt_error, by="client")


def compressed(point: bytes) -> bytes:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point).public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


BAD_POINTS: dict[str, Callable[[bytes], bytes]] = {
    "off-curve": flip_last,
    "compressed": compressed,
    "hybrid-prefix": lambda p: b"\x06" + p[1:],
    "infinity": lambda p: b"\x00",
    "truncated": lambda p: p[:64],
}


@pytest.mark.parametrize("kind", sorted(BAD_POINTS))
def test_bad_client_ecdh_point(kind: str) -> None:
    pair = PkPair()
    edit = BAD_POINTS[kind]
    finish(pair, tamper(client_final_flight(pair), HandshakeType.CLIENT_KEY_EXCHANGE,
                        lambda body: (lambda p: bytes([len(p)]) + p)(edit(body[1:]))))
    refused(pair, A.illegal_parameter, by="server")


@pytest.mark.parametrize("kind", ["off-curve", "compressed"])
def test_bad_server_ecdh_point(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The server signs the bad point, so only the point check can catch it.
    pair = PkPair()
    pair.client.connect(pair.now)
    half_steps(pair, 2)
    honest = hpk._encode_point
    monkeypatch.setattr(hpk, "_encode_point", lambda key: BAD_POINTS[kind](honest(key)))
    half_steps(pair, 1)
    monkeypatch.undo()
    pair.pump()
    refused(pair, A.illegal_parameter, by="client")


# -- fragmentation, loss and reordering ------------------------------------------------------------------

SIM_ADDR = ("192.0.2.10", 40000)
LOSSY = LinkParams(loss=0.3, dup=0.1, reorder=0.3, max_reorder=0.3)


def sim(seed: int, mtu: int, client: dict[str, Any], server: dict[str, Any], link: LinkParams = LOSSY) -> Network:
    rng = random.Random(seed)
    net = Network(DTLSConfiguration(is_client=False, random=rng.randbytes, mtu=mtu, wall_time=lambda: WALL,
                                    **server), rng)
    net.sent = []
    params = LinkParams(link.loss, link.dup, link.reorder, link.max_reorder, link.latency, mtu)
    ep = net.add_client(DTLSConfiguration(random=rng.randbytes, mtu=mtu, wall_time=lambda: WALL, **client),
                        SIM_ADDR, params, params)
    net.run(until=200.0, stop=lambda: ep.established_at is not None or ep.terminated is not None)
    assert ep.established_at is not None, (seed, ep.terminated)
    sconn = net.server_conn(SIM_ADDR)
    assert sconn is not None and sconn.is_established
    assert ep.conn.identity and sconn.identity
    assert max(len(d) for *_, d in net.sent) <= mtu
    assert ep.up.stats.mtu_dropped == ep.down.stats.mtu_dropped == 0
    return net


RPK_MUTUAL = ({"private_key": CLIENT_KEY, "trust": pins(SERVER_KEY)},
              {"private_key": SERVER_KEY, "trust": pins(CLIENT_KEY), "require_client_auth": True})
CHAIN_MUTUAL = ({"private_key": CLIENT_KEY, "trust": TrustStore(ca_certificates=[ROOT], server_name="gw.example")},
                {"private_key": SERVER_KEY, "certificate_chain": CHAIN3, "trust": pins(CLIENT_KEY),
                 "require_client_auth": True})


@pytest.mark.parametrize(("mtu", "profile", "datagrams"), [(256, "rpk", 8), (128, "rpk", 12), (256, "chain", 13)])
def test_small_mtu_without_loss(mtu: int, profile: str, datagrams: int) -> None:
    client, server = RPK_MUTUAL if profile == "rpk" else CHAIN_MUTUAL
    net = sim(0, mtu, client, server, LinkParams())
    assert len(net.sent or []) == datagrams


@pytest.mark.parametrize(("mtu", "profile"), [(256, "rpk"), (128, "rpk"), (256, "chain")])
def test_small_mtu_under_loss(mtu: int, profile: str) -> None:
    client, server = RPK_MUTUAL if profile == "rpk" else CHAIN_MUTUAL
    if profile == "chain":
        # Without the amplification limit: a 3-certificate flight of ~1.7 KB is retransmitted whole every time.
        # With it, see the next test.
        server = {**server, "amplification_factor": None}
    for seed in range(200):
        sim(seed, mtu, client, server)


def test_certificate_chain_under_loss_within_the_amplification_limit() -> None:
    """The default limit holds a 3-certificate flight's retransmissions to 3x what the client sends (its
    retransmitted hellos of ~115 B), so at 30% loss, 10% duplication and 30% reordering fewer handshakes
    finish within the 120 s budget: 153 of 200 when measured (200 without the limit; raw public keys and PSK
    are not affected, their flights fit the budget). docs/lossy-networks.md has the figures."""
    completed = 0
    for seed in range(200):
        with contextlib.suppress(AssertionError):
            sim(seed, 256, *CHAIN_MUTUAL)
            completed += 1
    assert completed >= 140, completed


@pytest.mark.parametrize("mtu", [128, 256])
def test_ccs_overtaking_certificate_verify(mtu: int) -> None:
    """Any order of the records of the client's final flight completes without a retransmission (all 120 at
    mtu 128, 150 of 720 at 256, where the CertificateVerify is split over two datagrams). When the CCS passes
    the CertificateVerify the server switches its read epoch and still reads the CertificateVerify from epoch 0."""
    def fresh() -> tuple[Pair, list[bytes]]:
        pair = PkPair({"mtu": mtu}, {"mtu": mtu, "require_client_auth": True})
        return pair, [r for d in client_final_flight(pair) for r in raw_records(d)]

    _, records = fresh()
    orders = list(itertools.permutations(range(len(records))))
    if len(orders) > 150:
        orders = random.Random(mtu).sample(orders, 150)
    seen_wait_cv = False
    for order in orders:
        pair, records = fresh()
        sconn = pair.server_conn
        for i in order:
            to_server(pair, [records[i]])
            seen_wait_cv |= sconn.state is State.SERVER_WAIT_CERTIFICATE_VERIFY and sconn._read_epoch == 1
        assert sconn.is_established, (order, sconn.error)
        pair.pump()
        assert pair.client.is_established and pair.client.retransmissions == 0, order
        assert sconn.identity == ni(CLIENT_KEY)
    assert seen_wait_cv  # some order really had the CCS ahead of the CertificateVerify
