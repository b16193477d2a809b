"""The handshake of both roles as a state table (RFC 6347 section 4.2, RFC 4279, RFC 8422, RFC 7627).

``HANDSHAKE_TABLE`` maps ``(state, handshake type)`` to a handler; ``CCS_TABLE`` does the same for
ChangeCipherSpec. A pair missing from the tables is answered with ``unexpected_message``. The PSK handlers and
the hellos and Finished are here; the public-key ones are in :mod:`iotdtls.handshake_pk`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from .buffer import Buffer, Writer
from .constants import (
    DTLS_1_2,
    ECDHE_ECDSA_SUITES,
    SUITE_AEAD,
    AlertDescription,
    CipherSuite,
    ExtensionType,
    HandshakeType,
)
from .errors import (
    AlertError,
    DecryptError,
    HandshakeFailure,
    IllegalParameter,
    ProtocolVersionError,
    UnexpectedMessage,
)
from .handshake_base import HANDSHAKING, WAITING_FINISHED, State
from .handshake_ext import ExtensionHandshake
from .messages import (
    ClientHello,
    ServerHello,
    check_renegotiation_info,
    find_extension,
    pull_empty,
    pull_finished,
    pull_hello_verify_request,
    pull_psk_identity,
    pull_server_hello,
    push_client_hello,
    push_psk_identity,
    push_server_hello,
)
from .prf import psk_premaster
from .reassembly import CCS, OutMessage

__all__ = ["CCS_TABLE", "HANDSHAKE_TABLE", "HANDSHAKING", "PROTECTED_MESSAGES", "WAITING_FINISHED",
           "HandshakeLayer", "State", "expect"]

MAX_HELLO_VERIFY = 4

_EMS_EXT: tuple[int, bytes] = (ExtensionType.EXTENDED_MASTER_SECRET, b"")
_RENEG_EXT: tuple[int, bytes] = (ExtensionType.RENEGOTIATION_INFO, b"\x00")
_PK_SERVER_HELLO_EXTS = frozenset({ExtensionType.EC_POINT_FORMATS, ExtensionType.SERVER_CERTIFICATE_TYPE,
                                   ExtensionType.CLIENT_CERTIFICATE_TYPE})


class HandshakeLayer(ExtensionHandshake):
    """Handshake message handlers; :class:`DTLSConnection` adds the public API."""

    __slots__ = ()

    # -- client ----------------------------------------------------------------------------------
    def _send_client_hello(self, cookie: bytes, now: float) -> None:
        cfg = self._config
        exts: list[tuple[int, bytes]] = [_EMS_EXT] if cfg.extended_master_secret else []
        # Offering a session, only its suite: the server resumes with it or falls back to it (fewer bytes).
        offered = cfg.usable_suites() if self._resume is None else [self._resume.cipher_suite]
        if any(s in ECDHE_ECDSA_SUITES for s in offered):
            exts += self._client_pk_extensions()
        exts += self._client_hello_extensions()
        # Secure renegotiation is signalled with the SCSV, which RFC 5746 section 3.4 makes equivalent to an
        # empty renegotiation_info extension and which costs 2 bytes instead of 5.
        suites = [*offered, CipherSuite.TLS_EMPTY_RENEGOTIATION_INFO_SCSV]
        hello = ClientHello(random=self._client_random, cipher_suites=suites, cookie=cookie, extensions=exts,
                            session_id=self._session_id if self._resume is not None else b"")
        w = Writer()
        push_client_hello(w, hello)
        msg = self._next_message(HandshakeType.CLIENT_HELLO, w.data())
        self._transcript = hashlib.sha256()
        self._add_transcript(msg.msg_type, msg.message_seq, msg.body)
        self._state = State.CLIENT_WAIT_HELLO
        self._send_flight([msg], now)

    def _client_hello_verify(self, body: bytes, seq: int, now: float) -> None:
        hvr = pull_hello_verify_request(Buffer(body))
        self._hello_verify_count += 1
        if self._hello_verify_count > MAX_HELLO_VERIFY or not hvr.cookie:
            raise IllegalParameter("unusable HelloVerifyRequest")
        self._send_client_hello(hvr.cookie, now)

    def _client_server_hello(self, body: bytes, seq: int, now: float) -> None:
        sh = pull_server_hello(Buffer(body))
        cfg = self._config
        if sh.version != DTLS_1_2:
            raise ProtocolVersionError("server chose a version other than DTLS 1.2")
        if sh.cipher_suite not in cfg.usable_suites() or sh.cipher_suite not in SUITE_AEAD:
            raise IllegalParameter("server chose a cipher suite we did not offer")
        if sh.compression_method != 0:
            raise IllegalParameter("server chose compression")
        offered = {ExtensionType.RENEGOTIATION_INFO, *self._client_offered_extensions()}
        if cfg.extended_master_secret:
            offered.add(ExtensionType.EXTENDED_MASTER_SECRET)
        ecdhe = sh.cipher_suite in ECDHE_ECDSA_SUITES
        if ecdhe:
            offered |= _PK_SERVER_HELLO_EXTS
            if cfg.private_key is None:
                offered.discard(ExtensionType.CLIENT_CERTIFICATE_TYPE)
        for ext_type, _ in sh.extensions:
            if ext_type not in offered:
                raise AlertError("server sent an extension we did not offer",
                                 description=AlertDescription.unsupported_extension)
        check_renegotiation_info(sh.extensions)
        self._use_ems = find_extension(sh.extensions, ExtensionType.EXTENDED_MASTER_SECRET) is not None
        if cfg.require_extended_master_secret and not self._use_ems:
            raise HandshakeFailure("server does not support the extended master secret")
        self._suite = CipherSuite(sh.cipher_suite)
        self._server_random = sh.random
        self._client_negotiated(sh.extensions)
        if self._client_try_resume(sh.session_id, body, seq):
            return
        self._session_id = sh.session_id
        self._add_transcript(HandshakeType.SERVER_HELLO, seq, body)
        if ecdhe:
            self._client_pk_server_hello(sh.extensions)
        else:
            self._state = State.CLIENT_WAIT_SKE_OR_DONE

    def _client_server_key_exchange(self, body: bytes, seq: int, now: float) -> None:
        self._identity_hint = pull_psk_identity(Buffer(body))
        self._add_transcript(HandshakeType.SERVER_KEY_EXCHANGE, seq, body)
        self._state = State.CLIENT_WAIT_DONE

    def _client_server_hello_done(self, body: bytes, seq: int, now: float) -> None:
        pull_empty(Buffer(body))
        self._add_transcript(HandshakeType.SERVER_HELLO_DONE, seq, body)
        if self._suite in ECDHE_ECDSA_SUITES:
            flight = self._client_pk_final_flight()
        else:
            cfg = self._config
            assert cfg.psk_identity is not None and cfg.psk is not None
            self._identity, self._premaster = cfg.psk_identity, psk_premaster(cfg.psk)
            w = Writer()
            push_psk_identity(w, self._identity)
            cke = self._next_message(HandshakeType.CLIENT_KEY_EXCHANGE, w.data())
            self._add_transcript(cke.msg_type, cke.message_seq, cke.body)
            self._derive_keys()
            flight = [cke]
        fin = self._next_message(HandshakeType.FINISHED, self._finished_data(True), epoch=1)
        self._add_transcript(fin.msg_type, fin.message_seq, fin.body)
        self._state = State.CLIENT_WAIT_TICKET if self._issue_ticket else State.CLIENT_WAIT_FINISHED
        self._send_flight([*flight, OutMessage(0, CCS), fin], now)
        self._write_epoch = 1

    def _client_finished(self, body: bytes, seq: int, now: float) -> None:
        verify = pull_finished(Buffer(body))
        if not hmac.compare_digest(verify, self._finished_data(False)):
            raise DecryptError("server Finished does not verify")
        self._stop_timer()
        self._flight = []
        self._handshake_done()

    # -- server ----------------------------------------------------------------------------------
    def _server_accept(self, hello: ClientHello, body: bytes, seq: int, now: float) -> None:
        """Start the handshake from a ClientHello that passed the cookie check."""
        cfg = self._config
        self._send_seq = seq
        self._reasm.next_seq = seq + 1
        self._add_transcript(HandshakeType.CLIENT_HELLO, seq, body)
        self._client_random = hello.random
        if hello.version > DTLS_1_2:  # DTLS versions count down: 0xFEFF is 1.0
            raise ProtocolVersionError("client does not offer DTLS 1.2")
        if 0 not in hello.compression_methods:
            raise IllegalParameter("client does not offer null compression")
        reneg = check_renegotiation_info(hello.extensions) or \
            CipherSuite.TLS_EMPTY_RENEGOTIATION_INFO_SCSV in hello.cipher_suites
        client_ems = find_extension(hello.extensions, ExtensionType.EXTENDED_MASTER_SECRET) is not None
        self._use_ems = client_ems and cfg.extended_master_secret
        if cfg.require_extended_master_secret and not self._use_ems:
            raise HandshakeFailure("client does not support the extended master secret")
        session = self._server_find_session(hello, client_ems)
        pk_exts: list[tuple[int, bytes]]
        if session is not None:
            suite, pk_exts = session.cipher_suite, []
        else:
            suite, pk_exts = self._server_choose_suite(hello)
        self._suite = suite
        self._server_random = cfg.random(32)
        exts: list[tuple[int, bytes]] = []
        if reneg:
            exts.append(_RENEG_EXT)
        if self._use_ems:
            exts.append(_EMS_EXT)
        exts += pk_exts
        exts += self._server_negotiate(hello)
        if session is not None:
            self._session_id = hello.session_id
        else:
            self._issue_ticket = self._server_wants_ticket(hello)
            if self._issue_ticket:
                exts.append((ExtensionType.SESSION_TICKET, b""))
            self._session_id = self._server_session_id()
        w = Writer()
        push_server_hello(w, ServerHello(random=self._server_random, cipher_suite=suite, extensions=exts,
                                         session_id=self._session_id))
        first = self._next_message(HandshakeType.SERVER_HELLO, w.data())
        if session is not None:
            self._server_resume_flight(first, session, now)
            return
        flight = [first]
        if suite in ECDHE_ECDSA_SUITES:
            flight += self._server_pk_flight()
        elif cfg.psk_identity_hint is not None:
            w = Writer()
            push_psk_identity(w, cfg.psk_identity_hint)
            flight.append(self._next_message(HandshakeType.SERVER_KEY_EXCHANGE, w.data()))
        flight.append(self._next_message(HandshakeType.SERVER_HELLO_DONE, b""))
        for msg in flight:
            self._add_transcript(msg.msg_type, msg.message_seq, msg.body)
        self._state = State.SERVER_WAIT_CLIENT_CERTIFICATE if self._cert_requested else State.SERVER_WAIT_CKE
        self._send_flight(flight, now)

    def _server_choose_suite(self, hello: ClientHello) -> tuple[int, list[tuple[int, bytes]]]:
        """The first suite of our preference the client offers and our credentials and its extensions allow."""
        refusal: AlertError | None = None
        for suite in self._config.usable_suites():
            if suite not in hello.cipher_suites:
                continue
            if suite not in ECDHE_ECDSA_SUITES:
                return suite, []
            try:
                return suite, self._server_pk_negotiate(hello)
            except AlertError as exc:
                refusal = refusal or exc
        raise refusal or HandshakeFailure("no cipher suite in common")

    def _server_client_key_exchange(self, body: bytes, seq: int, now: float) -> None:
        if self._suite in ECDHE_ECDSA_SUITES:
            self._server_ecdhe_client_key_exchange(body, seq, now)
        else:
            self._server_psk_client_key_exchange(body, seq, now)
        if self._early_ccs:
            self._early_ccs = False
            self._activate_read_epoch()

    def _server_psk_client_key_exchange(self, body: bytes, seq: int, now: float) -> None:
        identity = pull_psk_identity(Buffer(body))
        # An unknown identity continues with a key nobody has, so it fails exactly like a wrong key
        # (bad_record_mac on the client's Finished, RFC 4279 section 5.1). The stand-in key is derived for every
        # identity, known or not, so both paths do the same work and cannot be told apart by timing.
        stand_in = hmac.digest(self._dummy_psk_key, identity, "sha256")[:16]
        psk = self._config.lookup_psk(identity) or stand_in
        self._identity, self._premaster = identity, psk_premaster(psk)
        self._add_transcript(HandshakeType.CLIENT_KEY_EXCHANGE, seq, body)
        self._derive_keys()
        self._state = State.SERVER_WAIT_FINISHED

    def _server_finished(self, body: bytes, seq: int, now: float) -> None:
        verify = pull_finished(Buffer(body))
        if not hmac.compare_digest(verify, self._finished_data(True)):
            raise DecryptError("client Finished does not verify")
        self._amp_limit = False  # the client proved it received our flight: no more amplification limit
        self._add_transcript(HandshakeType.FINISHED, seq, body)
        flight = [OutMessage(0, CCS)]
        if self._issue_ticket:
            ticket = self._server_ticket_message()
            self._add_transcript(ticket.msg_type, ticket.message_seq, ticket.body)
            flight.insert(0, ticket)
        fin = self._next_message(HandshakeType.FINISHED, self._finished_data(False), epoch=1)
        self._send_flight([*flight, fin], now, timer=False)
        self._write_epoch = 1
        self._handshake_done()

    # -- ChangeCipherSpec ------------------------------------------------------------------------
    def _ccs_switch(self) -> None:
        self._activate_read_epoch()

    def _ccs_early(self) -> None:
        # The client's CCS overtook its ClientKeyExchange: apply it once the keys exist.
        self._early_ccs = True


Handler = Callable[[HandshakeLayer, bytes, int, float], None]

HANDSHAKE_TABLE: dict[tuple[State, int], Handler] = {
    (State.CLIENT_WAIT_HELLO, HandshakeType.HELLO_VERIFY_REQUEST): HandshakeLayer._client_hello_verify,
    (State.CLIENT_WAIT_HELLO, HandshakeType.SERVER_HELLO): HandshakeLayer._client_server_hello,
    (State.CLIENT_WAIT_SKE_OR_DONE, HandshakeType.SERVER_KEY_EXCHANGE):
        HandshakeLayer._client_server_key_exchange,
    (State.CLIENT_WAIT_SKE_OR_DONE, HandshakeType.SERVER_HELLO_DONE): HandshakeLayer._client_server_hello_done,
    (State.CLIENT_WAIT_DONE, HandshakeType.SERVER_HELLO_DONE): HandshakeLayer._client_server_hello_done,
    (State.CLIENT_WAIT_FINISHED, HandshakeType.FINISHED): HandshakeLayer._client_finished,
    (State.SERVER_WAIT_CKE, HandshakeType.CLIENT_KEY_EXCHANGE): HandshakeLayer._server_client_key_exchange,
    (State.SERVER_WAIT_FINISHED, HandshakeType.FINISHED): HandshakeLayer._server_finished,
    # ECDHE-ECDSA
    (State.CLIENT_WAIT_CERTIFICATE, HandshakeType.CERTIFICATE): HandshakeLayer._client_certificate,
    (State.CLIENT_WAIT_ECDHE_SKE, HandshakeType.SERVER_KEY_EXCHANGE):
        HandshakeLayer._client_ecdhe_server_key_exchange,
    (State.CLIENT_WAIT_CR_OR_DONE, HandshakeType.CERTIFICATE_REQUEST): HandshakeLayer._client_certificate_request,
    (State.CLIENT_WAIT_CR_OR_DONE, HandshakeType.SERVER_HELLO_DONE): HandshakeLayer._client_server_hello_done,
    (State.SERVER_WAIT_CLIENT_CERTIFICATE, HandshakeType.CERTIFICATE): HandshakeLayer._server_client_certificate,
    (State.SERVER_WAIT_CKE_AUTH, HandshakeType.CLIENT_KEY_EXCHANGE): HandshakeLayer._server_client_key_exchange,
    (State.SERVER_WAIT_CERTIFICATE_VERIFY, HandshakeType.CERTIFICATE_VERIFY):
        HandshakeLayer._server_certificate_verify,
    # session tickets and abbreviated handshakes
    (State.CLIENT_WAIT_TICKET, HandshakeType.NEW_SESSION_TICKET): HandshakeLayer._client_new_session_ticket,
    (State.CLIENT_RESUME_WAIT_TICKET, HandshakeType.NEW_SESSION_TICKET):
        HandshakeLayer._client_new_session_ticket,
    (State.CLIENT_RESUME_WAIT_FINISHED, HandshakeType.FINISHED): HandshakeLayer._client_resume_finished,
    (State.SERVER_RESUME_WAIT_FINISHED, HandshakeType.FINISHED): HandshakeLayer._server_resume_finished,
}

#: ChangeCipherSpec is legal only here, and only while the read side is still in epoch 0.
CCS_TABLE: dict[State, Callable[[HandshakeLayer], None]] = {
    State.CLIENT_WAIT_FINISHED: HandshakeLayer._ccs_switch,
    State.SERVER_WAIT_FINISHED: HandshakeLayer._ccs_switch,
    State.SERVER_WAIT_CKE: HandshakeLayer._ccs_early,
    State.SERVER_WAIT_CLIENT_CERTIFICATE: HandshakeLayer._ccs_early,
    State.SERVER_WAIT_CKE_AUTH: HandshakeLayer._ccs_early,
    # Keys exist but the CertificateVerify is outstanding: switch now, so a Finished that skips the
    # CertificateVerify meets unexpected_message; a reordered CertificateVerify is still read from epoch 0.
    State.SERVER_WAIT_CERTIFICATE_VERIFY: HandshakeLayer._ccs_switch,
    # a ChangeCipherSpec that overtook the NewSessionTicket waits for it
    State.CLIENT_WAIT_TICKET: HandshakeLayer._ccs_early,
    State.CLIENT_RESUME_WAIT_TICKET: HandshakeLayer._ccs_early,
    State.CLIENT_RESUME_WAIT_FINISHED: HandshakeLayer._ccs_switch,
    State.SERVER_RESUME_WAIT_FINISHED: HandshakeLayer._ccs_switch,
}

#: Handshake messages that must arrive protected (epoch 1); all others must arrive in epoch 0.
PROTECTED_MESSAGES = frozenset({HandshakeType.FINISHED})


def expect(table_key: tuple[State, int]) -> Handler:
    handler = HANDSHAKE_TABLE.get(table_key)
    if handler is None:
        state, msg_type = table_key
        raise UnexpectedMessage(f"{_type_name(msg_type)} in state {state.name}")
    return handler


def _type_name(msg_type: int) -> str:
    try:
        return HandshakeType(msg_type).name
    except ValueError:
        return f"handshake type {msg_type}"
