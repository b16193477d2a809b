"""The hello negotiation of Connection ID, record_size_limit and session resumption, for fuzz_handshake_messages:
one parsed ClientHello handed to a new server connection (``DTLSConnection.accept`` with a session cache and
ticket keys that know one session each), or one ServerHello handed to a client that offers a known session.

Bugs: an exception or internal_error; a server resuming a session the hello did not offer (a wrong session), or
resuming without the extended master secret; a client resuming with a ServerHello that did not echo its session
ID or changed the cipher suite.
"""

from __future__ import annotations

from dataclasses import replace

from _harness import FuzzBug
from endpoints import TICKET_CID, check_events
from fixed_pki import WALL_TIME
from helpers import IDENTITY, KEY, client_config, drain, seeded, server_config

from iotdtls import DTLSConnection, Session, SessionCache, TicketKeys
from iotdtls.constants import CipherSuite, ContentType, ExtensionType, HandshakeType
from iotdtls.messages import ClientHello, ServerHello, find_extension
from iotdtls.reassembly import message_header
from iotdtls.record import encode_plain
from iotdtls.resumption import psk_fingerprint
from iotdtls.server_context import ServerContext

SUITE = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
#: The session the server's cache holds (by ID) and the client offers, and the one in the ticket.
CACHED = Session(cipher_suite=SUITE, master_secret=bytes(range(48)), extended_master_secret=True,
                 identity=IDENTITY, session_id=b"\x11" * 8, created=WALL_TIME, lifetime=86400.0,
                 psk_fingerprint=psk_fingerprint(KEY))
IN_TICKET = replace(CACHED, master_secret=bytes(range(48, 96)), session_id=b"")
#: Keys of their own (not those of the ``ticket`` pairs, whose tickets then open to no session known here).
TICKET_KEYS = TicketKeys(seeded(10))
TICKET = TICKET_KEYS.seal(IN_TICKET, WALL_TIME)
#: What the client keeps: the cached session's ID and master secret, with the ticket.
OFFERED = replace(CACHED, ticket=TICKET, psk_fingerprint=b"")


def server_negotiates(hello: ClientHello, body: bytes) -> None:
    cache = SessionCache(4)
    cache.put(CACHED, WALL_TIME)
    conn = DTLSConnection(server_config(2, **TICKET_CID), validate=False)
    conn.accept(hello, body, 0, 0, 0.0, bytes(32), context=ServerContext(cache, TICKET_KEYS, None))
    check_events(drain(conn))
    if not conn.resumed:
        return
    ticket = find_extension(hello.extensions, ExtensionType.SESSION_TICKET)
    if conn._master == IN_TICKET.master_secret:
        offered = ticket == TICKET
    else:
        offered = conn._master == CACHED.master_secret and hello.session_id == CACHED.session_id
    if not offered or not conn._use_ems or find_extension(hello.extensions,
                                                          ExtensionType.EXTENDED_MASTER_SECRET) is None:
        raise FuzzBug("the server resumed a session the ClientHello did not offer, or without the EMS")


def client_negotiates(server_hello: ServerHello, body: bytes) -> None:
    conn = DTLSConnection(client_config(1, **TICKET_CID), validate=False)
    conn.connect(0.0, session=OFFERED)
    conn.datagrams_to_send(0.0)
    conn.receive_datagram(encode_plain(ContentType.HANDSHAKE, 0, message_header(
        HandshakeType.SERVER_HELLO, len(body), 0) + body), 0.0)
    check_events(drain(conn))
    if conn.resumed and (server_hello.session_id != CACHED.session_id or server_hello.cipher_suite != SUITE
                         or conn._master != CACHED.master_secret):
        raise FuzzBug("the client resumed on a ServerHello that did not accept its session")
