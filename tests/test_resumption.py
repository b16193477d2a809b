"""Session resumption, sans-IO: abbreviated handshakes through session IDs and RFC 5077 tickets, EMS-bound, for
PSK and ECDHE-ECDSA sessions; expiry, revocation, a changed key, ticket key rotation, a server restart, loss."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import replace

import pki
import pytest
from helpers import (
    CLIENT_ADDR,
    IDENTITY,
    KEY,
    Pair,
    PkPair,
    client_config,
    drain,
    drain_server,
    p256_key,
    pin_of,
    pk_client_config,
    seeded,
    server_config,
)

from iotdtls import DTLSConfiguration, DTLSConnection, DTLSServer
from iotdtls.constants import AlertDescription, CertificateType, ExtensionType, HandshakeType
from iotdtls.errors import RemoteAlert
from iotdtls.events import DataReceived, HandshakeCompleted
from iotdtls.keys import spki_der
from iotdtls.messages import Extensions
from iotdtls.resumption import Session, TicketKeys
from iotdtls.trust import PeerCredential, TrustStore


class Clock:
    """Wall-clock time for sessions and tickets, moved by the test."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def full_then_resume(client_kw: dict[str, object] | None = None, server_kw: dict[str, object] | None = None,
                     pk: bool = False, **limits: object) -> tuple[Pair, Session]:
    """A full handshake; returns the pair and the client's session."""
    cls = PkPair if pk else Pair
    pair = cls(client_kw, server_kw, **limits)  # type: ignore[arg-type]
    pair.handshake()
    assert pair.client.is_established and not pair.client.resumed
    session = pair.client.session
    assert session is not None
    return pair, session


def reconnect(pair: Pair, session: Session | None, seed: int = 7, pk: bool = False,
              **client_kw: object) -> DTLSConnection:
    """A new client (a rebooted device) offering ``session`` to the same server front."""
    config = pk_client_config(seed, **client_kw) if pk else client_config(seed, **client_kw)
    client = DTLSConnection(config, peer="server")
    pair.client = client
    pair.wire = []
    client.connect(pair.now, session=session)
    pair.pump()
    return client


def test_session_id_resumption_psk() -> None:
    pair, session = full_then_resume()
    assert len(session.session_id) == 8 and session.ticket == b"" and session.extended_master_secret
    client = reconnect(pair, session)
    assert client.is_established and client.resumed and pair.server_conn.resumed
    assert pair.server_conn.identity == IDENTITY
    events = drain_server(pair.server)
    assert any(isinstance(e, HandshakeCompleted) and e.resumed for _, e in events)
    # data flows on the new keys both ways
    client.send(b"ping")
    pair.pump()
    assert (CLIENT_ADDR, DataReceived(b"ping")) in drain_server(pair.server)
    # abbreviated: ClientHello, HelloVerifyRequest, ClientHello, (ServerHello, CCS, Finished), (CCS, Finished)
    assert [d for d, _ in pair.wire][:5] == ["c2s", "s2c", "c2s", "s2c", "c2s"]


def test_a_session_resumes_again_and_again() -> None:
    pair, session = full_then_resume()
    for seed in (7, 8, 9):
        client = reconnect(pair, session, seed=seed)
        assert client.resumed
        assert client.session == session  # the same session goes on


def test_abbreviated_wire_size() -> None:
    """docs/sleepy-devices.md quotes these: 442 bytes in 5 datagrams with the cookie exchange, of which the
    abbreviated handshake proper (ClientHello, server flight, client flight) is 83 + 149 + 67 = 299 bytes."""
    pair, session = full_then_resume()
    full = sum(len(d) for _, d in pair.wire)
    reconnect(pair, session)
    sizes = [len(d) for _, d in pair.wire]
    assert sizes == [83, 44, 99, 149, 67]
    assert full == 486 and sum(sizes) == 442


def test_ticket_resumption_and_server_restart() -> None:
    clock = Clock()
    keys = TicketKeys(seeded(11), lifetime=7 * 86400)
    pair, session = full_then_resume({"session_tickets": True, "wall_time": clock},
                                     {"session_tickets": True, "wall_time": clock}, ticket_keys=keys)
    assert session.ticket and not session.session_id  # the client makes up a session ID to go with the ticket
    assert len(session.ticket) <= 110
    # the gateway restarts: a new front, the same keys loaded from disk, an empty session cache
    restored = TicketKeys.from_bytes(keys.to_bytes(), seeded(12))
    pair.server = DTLSServer(server_config(session_tickets=True, wall_time=clock), ticket_keys=restored)
    client = reconnect(pair, session, session_tickets=True, wall_time=clock)
    assert client.resumed and pair.server_conn.resumed


def test_new_session_ticket_is_in_the_server_final_flight() -> None:
    keys = TicketKeys(seeded(11))
    pair = Pair({"session_tickets": True}, {"session_tickets": True}, ticket_keys=keys)
    pair.handshake()
    last = pair.wire[-1][1]
    assert last[13] == HandshakeType.NEW_SESSION_TICKET  # NewSessionTicket, then CCS and Finished
    assert pair.client.session is not None and pair.client.session.session_id == b""  # ticket only, no ID
    assert pair.server.session_cache is not None and len(pair.server.session_cache) == 0  # nothing kept


def test_expired_session_gets_a_full_handshake() -> None:
    clock = Clock()
    pair, session = full_then_resume({"wall_time": clock, "session_lifetime": 3600},
                                     {"wall_time": clock, "session_lifetime": 3600})
    clock.t += 3601
    client = reconnect(pair, session, wall_time=clock, session_lifetime=3600)
    assert client.is_established and not client.resumed


def test_expired_ticket_gets_a_full_handshake() -> None:
    clock = Clock()
    keys = TicketKeys(seeded(11))
    pair, session = full_then_resume({"session_tickets": True, "wall_time": clock},
                                     {"session_tickets": True, "wall_time": clock, "session_lifetime": 600},
                                     ticket_keys=keys)
    clock.t += 601
    # the client still believes in it (its own lifetime is longer): the server refuses, a full handshake follows
    client = reconnect(pair, replace(session, lifetime=86400.0), session_tickets=True,
                       wall_time=clock)
    assert client.is_established and not client.resumed


def test_revoked_identity_cannot_resume() -> None:
    store = {IDENTITY: KEY}
    pair, session = full_then_resume({}, {"psk_store": store.get})
    del store[IDENTITY]  # revoked in the registry
    assert pair.server.forget_sessions(IDENTITY) == 1
    client = reconnect(pair, session)
    assert client.is_closed and not client.resumed  # a full handshake, which fails: unknown identity


def test_revoked_identity_cannot_resume_with_a_ticket() -> None:
    store = {IDENTITY: KEY}
    keys = TicketKeys(seeded(11))
    pair, session = full_then_resume({"session_tickets": True}, {"psk_store": store.get, "session_tickets": True},
                                     ticket_keys=keys)
    del store[IDENTITY]  # no purge needed: the server checks the identity's key at every resumption
    client = reconnect(pair, session, session_tickets=True)
    assert not client.resumed and not client.is_established


def test_changed_key_cannot_resume() -> None:
    store = {IDENTITY: KEY}
    pair, session = full_then_resume({}, {"psk_store": store.get})
    store[IDENTITY] = bytes(16)  # rotated
    client = reconnect(pair, session, psk=bytes(16))
    assert client.is_established and not client.resumed  # a full handshake with the new key


def test_ticket_key_rotation() -> None:
    clock = Clock()
    keys = TicketKeys(seeded(11), rotation=3600, lifetime=7200)
    pair, session = full_then_resume({"session_tickets": True, "wall_time": clock},
                                     {"session_tickets": True, "wall_time": clock}, ticket_keys=keys)
    clock.t += 3700
    keys.rotate(clock.t)  # a new key seals new tickets; the old one still opens its tickets
    assert reconnect(pair, session, session_tickets=True, wall_time=clock).resumed
    clock.t += 7300  # the old key has been retired
    assert not reconnect(pair, session, session_tickets=True, wall_time=clock, seed=9).resumed


def test_unknown_session_id_falls_back_to_a_full_handshake() -> None:
    pair, session = full_then_resume()
    other = DTLSServer(server_config(seed=5))
    pair.server = other
    client = reconnect(pair, session)
    assert client.is_established and not client.resumed
    assert client.session is not None and client.session.session_id != session.session_id


def test_session_cache_off() -> None:
    pair = Pair(server_kw={}, session_cache=0)
    pair.handshake()
    assert pair.client.session is None  # no session ID, no ticket: nothing to resume


def test_no_extended_master_secret_no_resumption() -> None:
    pair = Pair({"extended_master_secret": False}, {})
    pair.handshake()
    assert pair.client.is_established and pair.client.session is None


def test_session_without_ems_is_never_offered() -> None:
    pair, session = full_then_resume()
    weak = replace(session, extended_master_secret=False)
    client = reconnect(pair, weak)
    assert client.is_established and not client.resumed


def test_rpk_resumption_and_revoked_key() -> None:
    pair, session = full_then_resume(pk=True)
    client = reconnect(pair, session, pk=True)
    assert client.resumed and pair.server_conn.resumed
    assert pair.server_conn.peer_credential is not None
    assert pair.server_conn.identity == session.identity or pair.server_conn.identity
    # the client's key is no longer pinned: no resumption (and the full handshake fails)
    pair.server._config.trust = TrustStore.of([pin_of(p256_key("someone else"))])
    client = reconnect(pair, session, pk=True, seed=9)
    assert not client.resumed


@pytest.mark.parametrize("lost", ["server_flight", "client_finished"])
def test_abbreviated_handshake_survives_loss(lost: str) -> None:
    pair, session = full_then_resume()
    client = DTLSConnection(client_config(7), peer="server")
    pair.client = client
    client.connect(0.0, session=session)
    for step in range(40):
        for d in pair.c2s():
            if lost == "client_finished" and client.is_established and step < 3:
                continue  # the client's final flight is lost (the first time)
            pair.server.receive_datagram(d, CLIENT_ADDR, pair.now)
        out = pair.s2c()
        if lost == "server_flight" and step == 1:
            out = []
        for d in out:
            client.receive_datagram(d, pair.now)
        pair.now += 1.0
        pair.server.handle_timer(pair.now)
        client.handle_timer(pair.now)
        if client.is_established and pair.server_conn.resumed:
            break
    assert client.resumed and pair.server_conn.is_established and pair.server_conn.resumed
    client.send(b"after loss")
    pair.pump()
    assert (CLIENT_ADDR, DataReceived(b"after loss")) in drain_server(pair.server)
    drain(client)


def test_wrong_master_secret_fails_cleanly() -> None:
    """A client with a session whose secret the server does not share (forged ticket contents are impossible;
    here a tampered saved session): the Finished does not verify and the handshake ends with an alert."""
    pair, session = full_then_resume()
    tampered = replace(session, master_secret=bytes(48))
    client = reconnect(pair, tampered)
    assert client.is_closed and not client.is_established


def test_resume_without_cookie_is_opt_in() -> None:
    pair, session = full_then_resume()
    pair.server.resume_without_cookie = True
    client = reconnect(pair, session)
    assert client.resumed and [len(d) for _, d in pair.wire] == [83, 149, 67]
    # a session the front does not know still goes through the cookie exchange
    unknown = replace(session, session_id=b"\x00" * 8)
    client = reconnect(pair, unknown, seed=9)
    assert not client.resumed and [len(d) for _, d in pair.wire][:2] == [83, 44]


# -- X.509 sessions: the key judged again at each resumption, and no session outlives its chain ---------------


class LegacyX509Client(DTLSConnection):
    """A client that sends its certificate chain without the client_certificate_type extension (as OpenSSL or
    GnuTLS do), so the server judges an X.509 chain rather than negotiating a raw public key."""

    def _client_pk_extensions(self) -> Extensions:
        return [e for e in super()._client_pk_extensions() if e[0] != ExtensionType.CLIENT_CERTIFICATE_TYPE]


def x509_client(ca: pki.Issued, cli: pki.Issued, seed: int = 1) -> DTLSConnection:
    return LegacyX509Client(DTLSConfiguration(
        is_client=True, random=seeded(seed), private_key=cli.key, certificate_chain=[cli.cert],
        trust=TrustStore(ca_certificates=[ca.cert], server_name="127.0.0.1")), peer="server")


def x509_pair(callback: Callable[[PeerCredential], str | None], client_days: int = 30,
              client_start: datetime.datetime | None = None) -> tuple[Pair, pki.Issued, pki.Issued]:
    """Mutual X.509: the client's certificate from a CA the client alone knows; the server judges the client's key
    with ``callback`` (as the gateway's registry does) and has no CA."""
    ca = pki.make_ca()
    srv, cli = pki.issue(ca, "gateway"), pki.issue(ca, "sensor", days=client_days, not_before=client_start)
    pair = Pair.__new__(Pair)
    pair.now, pair.wire = 0.0, []
    pair.client = x509_client(ca, cli)
    pair.server = DTLSServer(DTLSConfiguration(
        is_client=False, random=seeded(2), private_key=srv.key, certificate_chain=[srv.cert, ca.cert],
        trust=TrustStore(callback=callback), require_client_auth=True))
    return pair, ca, cli


def x509_reconnect(pair: Pair, session: Session | None, ca: pki.Issued, cli: pki.Issued,
                   seed: int) -> DTLSConnection:
    client = pair.client = x509_client(ca, cli, seed=seed)
    pair.wire = []
    client.connect(pair.now, session=session)
    pair.pump()
    return client


def test_x509_session_resumes_while_the_callback_accepts_the_key() -> None:
    """A revocation in the registry (the callback refuses the key) ends resumption at once, as for raw keys."""
    revoked: set[bytes] = set()
    seen: list[str | None] = []

    def judge(cred: PeerCredential) -> str | None:
        seen.append(cred.name)
        return None if cred.fingerprint in revoked else "sensor-1"

    pair, ca, cli = x509_pair(judge)
    pair.handshake()
    session = pair.client.session
    assert session is not None and not pair.client.resumed
    peer = pair.server_conn.peer_credential
    assert peer is not None and peer.kind is CertificateType.X509 and len(peer.certificates) == 1
    client = x509_reconnect(pair, session, ca, cli, seed=9)
    assert client.resumed and pair.server_conn.resumed
    assert pair.server_conn.peer_credential is not None and pair.server_conn.peer_credential.name == "sensor-1"
    revoked.add(pair.server_conn.peer_credential.fingerprint)
    client = x509_reconnect(pair, session, ca, cli, seed=10)
    assert not client.resumed and not client.is_established  # a full handshake, refused
    assert isinstance(client.error, RemoteAlert) and client.error.description == AlertDescription.unknown_ca


def test_x509_session_does_not_outlive_the_certificates() -> None:
    """The client's certificate ends in about two hours: the server's session (and the client's, bounded by the
    server's chain the same way) may be resumed for no longer, though session_lifetime is a day."""
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=22)
    pair, _, cli = x509_pair(lambda cred: "sensor-1", client_days=1, client_start=start)
    pair.handshake()
    cache = pair.server.session_cache
    assert cache is not None and pair.client.session is not None
    server_session = cache.get(pair.client.session.session_id, time.time())
    assert server_session is not None
    left = cli.cert.not_valid_after_utc.timestamp() - server_session.created
    assert left - 1 <= server_session.lifetime <= left < 2.1 * 3600
    assert pair.client.session.lifetime == 86400.0  # the server's own certificate lasts 30 days


def test_trust_store_still_trusts() -> None:
    key = p256_key("client")
    rpk = PeerCredential(CertificateType.RAW_PUBLIC_KEY, spki_der(key))
    cert = PeerCredential(CertificateType.X509, spki_der(key))
    ca = pki.make_ca()
    assert TrustStore.of([pin_of(key)]).still_trusts(rpk) and TrustStore.of([pin_of(key)]).still_trusts(cert)
    assert not TrustStore.of([pin_of(p256_key("other"))]).still_trusts(rpk)
    assert TrustStore(callback=lambda c: "n").still_trusts(rpk)
    assert not TrustStore(callback=lambda c: None).still_trusts(rpk)

    def broken(c: PeerCredential) -> str:
        raise RuntimeError("registry down")

    assert not TrustStore(callback=broken).still_trusts(cert)
    assert TrustStore.of(cas=[ca.cert]).still_trusts(cert) and not TrustStore.of(cas=[ca.cert]).still_trusts(rpk)
    assert not TrustStore().still_trusts(cert)
