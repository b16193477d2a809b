"""A scripted server for the one handshake no iotdtls server produces: an abbreviated handshake in which the server
renews the ticket (RFC 5077 section 3.2, figure 2: ServerHello with an empty SessionTicket extension,
NewSessionTicket, ChangeCipherSpec, Finished). ``DTLSServer`` resumes without issuing a new ticket, so the client's
``CLIENT_RESUME_WAIT_TICKET`` state is reached only against other stacks; this script plays such a server from the
resumed session's master secret with the library's own encoders and key schedule, and checks the client's
Finished. It answers the first ClientHello directly (RFC 6347 section 4.2.1: a server may skip the cookie exchange
when it resumes a session).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from iotdtls.buffer import Buffer, Writer
from iotdtls.constants import DTLS_1_2, SUITE_AEAD, ContentType, ExtensionType, HandshakeType
from iotdtls.messages import (
    NewSessionTicket,
    ServerHello,
    pull_client_hello,
    push_new_session_ticket,
    push_server_hello,
)
from iotdtls.prf import finished_verify_data, key_block
from iotdtls.reassembly import message_header, parse_fragments
from iotdtls.record import CipherState, encode_plain, split_records
from iotdtls.resumption import Session

#: The renewed ticket the script hands out: opaque to the client, which only stores it.
RENEWED_TICKET = b"renewed ticket " + bytes(range(32))
LIFETIME_HINT = 3600


class RenewingServer:
    """The server side of one abbreviated handshake that renews the ticket of ``session``."""

    def __init__(self, session: Session, random: Callable[[int], bytes]) -> None:
        self._session = session
        self._random = random
        self._transcript = hashlib.sha256()
        self._client_random = b""
        self._server_random = b""
        self._read: CipherState | None = None
        #: The genuine bodies of the messages sent, by handshake type.
        self.sent: dict[int, bytes] = {}
        self.finished_verified = False

    def _add(self, msg_type: int, seq: int, body: bytes) -> bytes:
        message = message_header(msg_type, len(body), seq) + body
        self._transcript.update(message)
        self.sent[msg_type] = body
        return message

    def answer(self, datagram: bytes) -> list[bytes]:
        """The server flight for the client's first ClientHello, one record each: ServerHello, NewSessionTicket,
        ChangeCipherSpec, Finished."""
        (record,) = split_records(datagram)
        (frag,) = parse_fragments(record.fragment)
        assert frag.msg_type == HandshakeType.CLIENT_HELLO and frag.message_seq == 0
        hello = pull_client_hello(Buffer(frag.body))
        session = self._session
        assert session.cipher_suite in hello.cipher_suites and hello.session_id
        self._client_random, self._server_random = hello.random, self._random(32)
        self._transcript.update(message_header(frag.msg_type, len(frag.body), 0) + frag.body)
        w = Writer()
        push_server_hello(w, ServerHello(
            random=self._server_random, cipher_suite=session.cipher_suite, session_id=hello.session_id,
            extensions=[(ExtensionType.RENEGOTIATION_INFO, b"\x00"), (ExtensionType.EXTENDED_MASTER_SECRET, b""),
                        (ExtensionType.SESSION_TICKET, b"")]))
        server_hello = self._add(HandshakeType.SERVER_HELLO, 0, w.data())
        w = Writer()
        push_new_session_ticket(w, NewSessionTicket(lifetime_hint=LIFETIME_HINT, ticket=RENEWED_TICKET))
        ticket = self._add(HandshakeType.NEW_SESSION_TICKET, 1, w.data())
        key_len, iv_len, tag_len = SUITE_AEAD[session.cipher_suite]
        kb = key_block(session.master_secret, self._client_random, self._server_random, 2 * (key_len + iv_len))
        write = CipherState(kb[key_len : 2 * key_len], kb[2 * key_len + iv_len :], tag_len)
        self._read = CipherState(kb[:key_len], kb[2 * key_len : 2 * key_len + iv_len], tag_len)
        verify = finished_verify_data(session.master_secret, False, self._transcript.copy().digest())
        finished = self._add(HandshakeType.FINISHED, 2, verify)
        hs = ContentType.HANDSHAKE
        return [encode_plain(hs, 0, server_hello), encode_plain(hs, 1, ticket),
                encode_plain(ContentType.CHANGE_CIPHER_SPEC, 2, b"\x01"), write.protect(hs, 1 << 48, finished)]

    def receive(self, datagram: bytes) -> None:
        """The client's final flight: its ChangeCipherSpec and a Finished that must verify."""
        assert self._read is not None
        for record in split_records(datagram):
            if record.epoch != 1 or record.content_type != ContentType.HANDSHAKE:
                continue
            plain = self._read.unprotect(record)
            assert plain is not None and record.version == DTLS_1_2
            (frag,) = parse_fragments(plain)
            want = finished_verify_data(self._session.master_secret, True, self._transcript.copy().digest())
            assert frag.msg_type == HandshakeType.FINISHED and frag.message_seq == 1
            self.finished_verified = hmac.compare_digest(frag.body, want)
