"""Hello extensions beyond the base handshake, and the abbreviated handshake they enable.

- Connection ID (RFC 9146): each side names the CID it wants in the records it receives; the server's comes from
  its front's generator (unique among its live connections, random, so it reveals nothing about the session).
- record_size_limit (RFC 8449): each side bounds the plaintext of the protected records it receives.
- Session resumption (RFC 5246 section 7.3) through session IDs and RFC 5077 tickets, only for sessions made with
  the extended master secret (RFC 7627 section 5.3). A server resumes only while the session's credential is
  still good: the PSK identity still has the same key (a revoked device's lookup fails), or the peer's raw public
  key is still trusted.

Handlers are registered in :data:`iotdtls.handshake.HANDSHAKE_TABLE`.
"""

from __future__ import annotations

import hmac
from dataclasses import replace

from .buffer import Buffer, Writer
from .constants import (
    MAX_PLAINTEXT,
    PSK_SUITES,
    CertificateType,
    ExtensionType,
    HandshakeType,
)
from .errors import DecryptError, HandshakeFailure, IllegalParameter
from .handshake_base import State
from .handshake_pk import PublicKeyHandshake
from .messages import (
    ClientHello,
    Extensions,
    NewSessionTicket,
    connection_id_extension,
    find_extension,
    pull_connection_id,
    pull_finished,
    pull_new_session_ticket,
    pull_record_size_limit,
    push_new_session_ticket,
    record_size_limit_extension,
)
from .reassembly import CCS, OutMessage
from .resumption import Session, psk_fingerprint
from .trust import PeerCredential, chain_not_after

#: Length of the session IDs a client makes up to recognise an accepted ticket, and a server issues.
SESSION_ID_LEN = 8
_MAX_TICKET_HINT = 0xFFFFFFFF


class ExtensionHandshake(PublicKeyHandshake):
    __slots__ = ()

    # -- client ----------------------------------------------------------------------------------
    def _client_hello_extensions(self) -> Extensions:
        """Connection ID, record_size_limit and SessionTicket for the ClientHello."""
        cfg = self._config
        exts: Extensions = []
        if cfg.cid_length is not None:
            exts.append(connection_id_extension(self._cid))
        if cfg.record_size_limit is not None:
            exts.append(record_size_limit_extension(cfg.record_size_limit))
        if cfg.session_tickets:
            resume = self._resume
            exts.append((ExtensionType.SESSION_TICKET, resume.ticket if resume is not None else b""))
        if cfg.return_routability_check:
            exts.append((ExtensionType.RRC, b""))
        return exts

    def _client_offered_extensions(self) -> set[int]:
        cfg = self._config
        offered: set[int] = set()
        if cfg.cid_length is not None:
            offered.add(ExtensionType.CONNECTION_ID)
        if cfg.record_size_limit is not None:
            offered.add(ExtensionType.RECORD_SIZE_LIMIT)
        if cfg.session_tickets:
            offered.add(ExtensionType.SESSION_TICKET)
        if cfg.return_routability_check:
            offered.add(ExtensionType.RRC)
        return offered

    def _client_prepare_resumption(self, session: Session | None) -> None:
        """At connect(): the session to offer, if it can still be resumed with this configuration."""
        cfg = self._config
        if session is None or not cfg.extended_master_secret or not session.extended_master_secret or \
                session.expired(cfg.wall_time()) or session.cipher_suite not in cfg.usable_suites():
            return
        if not session.session_id and not (session.ticket and cfg.session_tickets):
            return
        self._resume = session
        # RFC 5077 section 3.4: a ticket goes with a session ID of our own, which an accepting server echoes
        self._session_id = session.session_id or cfg.random(SESSION_ID_LEN)

    def _client_negotiated(self, exts: Extensions) -> None:
        """The ServerHello's answers: its CID, its record_size_limit, a promised ticket."""
        data = find_extension(exts, ExtensionType.CONNECTION_ID)
        if data is not None:
            self._peer_cid = pull_connection_id(data)
            self._cid_on = True
        else:
            self._cid = b""  # no CID: our records and the server's keep the classic format
        data = find_extension(exts, ExtensionType.RECORD_SIZE_LIMIT)
        if data is not None:
            self._peer_record_limit = pull_record_size_limit(data)
            assert self._config.record_size_limit is not None  # we offered it
            self._record_limit = self._config.record_size_limit
        rrc = find_extension(exts, ExtensionType.RRC)
        if rrc:
            raise IllegalParameter("non-empty rrc extension")
        self._rrc_on = rrc is not None
        ticket = find_extension(exts, ExtensionType.SESSION_TICKET)
        if ticket:
            raise IllegalParameter("non-empty SessionTicket extension in the ServerHello")
        self._issue_ticket = ticket is not None

    def _client_try_resume(self, session_id: bytes, body: bytes, seq: int) -> bool:
        """True when the ServerHello accepted the offered session: the abbreviated handshake follows."""
        resume = self._resume
        if resume is None or not session_id or not hmac.compare_digest(session_id, self._session_id):
            self._resume = None
            return False
        if self._suite != resume.cipher_suite:
            raise IllegalParameter("server resumed the session with another cipher suite")
        if not self._use_ems:
            # RFC 7627 section 5.3: a session made with the extended master secret resumes only with it
            raise HandshakeFailure("server resumed an extended-master-secret session without the extension")
        self._resumed = True
        self._restore(resume)
        self._add_transcript(HandshakeType.SERVER_HELLO, seq, body)
        self._install_keys()
        self._state = State.CLIENT_RESUME_WAIT_TICKET if self._issue_ticket else State.CLIENT_RESUME_WAIT_FINISHED
        return True

    def _client_new_session_ticket(self, body: bytes, seq: int, now: float) -> None:
        nst = pull_new_session_ticket(Buffer(body))
        self._add_transcript(HandshakeType.NEW_SESSION_TICKET, seq, body)
        self._ticket = nst.ticket
        self._ticket_lifetime = nst.lifetime_hint
        self._state = State.CLIENT_WAIT_FINISHED if self._state is State.CLIENT_WAIT_TICKET \
            else State.CLIENT_RESUME_WAIT_FINISHED
        if self._early_ccs:
            self._early_ccs = False
            self._activate_read_epoch()

    def _client_resume_finished(self, body: bytes, seq: int, now: float) -> None:
        """Abbreviated handshake: the server's Finished comes first; ours answers it, and stays ready to be
        sent again if the server, missing it, retransmits its flight."""
        verify = pull_finished(Buffer(body))
        if not hmac.compare_digest(verify, self._finished_data(False)):
            raise DecryptError("server Finished does not verify")
        self._add_transcript(HandshakeType.FINISHED, seq, body)
        fin = self._next_message(HandshakeType.FINISHED, self._finished_data(True), epoch=1)
        self._send_flight([OutMessage(0, CCS), fin], now, timer=False)
        self._write_epoch = 1
        self._handshake_done()

    # -- server ----------------------------------------------------------------------------------
    def _server_negotiate(self, hello: ClientHello) -> Extensions:
        """Connection ID and record_size_limit for the ServerHello (the ticket is decided separately)."""
        cfg = self._config
        exts: Extensions = []
        data = find_extension(hello.extensions, ExtensionType.CONNECTION_ID)
        if data is not None and cfg.cid_length is not None:
            peer_cid = pull_connection_id(data)
            own = self._new_cid(cfg.cid_length)
            if own is not None:
                self._peer_cid, self._cid, self._cid_on = peer_cid, own, True
                exts.append(connection_id_extension(own))
        rrc = find_extension(hello.extensions, ExtensionType.RRC)
        if rrc == b"" and cfg.return_routability_check and self._cid_on:
            self._rrc_on = True
            exts.append((ExtensionType.RRC, b""))
        data = find_extension(hello.extensions, ExtensionType.RECORD_SIZE_LIMIT)
        if data is not None:
            self._peer_record_limit = pull_record_size_limit(data)
            self._record_limit = cfg.record_size_limit or MAX_PLAINTEXT
            exts.append(record_size_limit_extension(self._record_limit))
        return exts

    def _new_cid(self, length: int) -> bytes | None:
        context = self._context
        if context is not None and context.new_cid is not None:
            return context.new_cid(length)
        return self._config.random(length)

    def _server_find_session(self, hello: ClientHello, client_ems: bool) -> Session | None:
        """The session a ClientHello offers, if this server knows it and may resume it now."""
        context, cfg = self._context, self._config
        if context is None or not client_ems or not cfg.extended_master_secret or not hello.session_id:
            return None
        now = cfg.wall_time()
        session = None
        ticket = find_extension(hello.extensions, ExtensionType.SESSION_TICKET)
        if ticket and context.tickets is not None and cfg.session_tickets:
            session = context.tickets.open(ticket, now)
        if session is None and context.cache is not None:
            session = context.cache.get(hello.session_id, now)
        if session is None or not session.extended_master_secret or session.expired(now) or \
                session.cipher_suite not in hello.cipher_suites or session.cipher_suite not in cfg.usable_suites():
            return None
        if not self._credential_still_good(session):
            if context.cache is not None and session.session_id:
                context.cache.remove(session.session_id)
            return None
        return session

    def _credential_still_good(self, session: Session) -> bool:
        """A PSK session resumes only while its identity has the same key (revocation or a new key ends it); a
        public-key session only while the peer's key is still trusted: pinned or accepted by the trust callback
        (raw public keys and certificates alike), or a certificate while a CA is trusted."""
        cfg = self._config
        if session.cipher_suite in PSK_SUITES:
            psk = cfg.lookup_psk(session.identity)
            return psk is not None and hmac.compare_digest(psk_fingerprint(psk), session.psk_fingerprint)
        if session.peer_spki and session.peer_kind is not None:
            try:
                kind = CertificateType(session.peer_kind)
            except ValueError:
                return False
            return cfg.trust is not None and cfg.trust.still_trusts(
                PeerCredential(kind, session.peer_spki, name=session.peer_name))
        return True

    def _server_wants_ticket(self, hello: ClientHello) -> bool:
        context = self._context
        return context is not None and context.tickets is not None and self._config.session_tickets and \
            self._use_ems and find_extension(hello.extensions, ExtensionType.SESSION_TICKET) is not None

    def _server_session_id(self) -> bytes:
        """A full handshake's session ID: a fresh one for the cache, none when a ticket carries the session."""
        context = self._context
        if self._issue_ticket or context is None or context.cache is None or not self._use_ems:
            return b""
        return context.cache.new_session_id(self._config.random, SESSION_ID_LEN)

    def _server_resume_flight(self, first: OutMessage, session: Session, now: float) -> None:
        """Abbreviated handshake: ServerHello, ChangeCipherSpec and our Finished in one flight."""
        self._resumed = True
        self._restore(session)
        self._add_transcript(first.msg_type, first.message_seq, first.body)
        self._install_keys()
        fin = self._next_message(HandshakeType.FINISHED, self._finished_data(False), epoch=1)
        self._add_transcript(fin.msg_type, fin.message_seq, fin.body)
        self._state = State.SERVER_RESUME_WAIT_FINISHED
        self._send_flight([first, OutMessage(0, CCS), fin], now)
        self._write_epoch = 1

    def _server_resume_finished(self, body: bytes, seq: int, now: float) -> None:
        verify = pull_finished(Buffer(body))
        if not hmac.compare_digest(verify, self._finished_data(True)):
            raise DecryptError("client Finished does not verify")
        self._amp_limit = False
        self._stop_timer()
        self._flight = []
        self._handshake_done()

    def _server_ticket_message(self) -> OutMessage:
        """The NewSessionTicket of a full handshake, sealed with the front's current ticket key."""
        context = self._context
        assert context is not None and context.tickets is not None
        session = self._new_session()
        ticket = context.tickets.seal(session, self._config.wall_time())
        w = Writer()
        hint = min(int(self._config.session_lifetime), _MAX_TICKET_HINT)
        push_new_session_ticket(w, NewSessionTicket(lifetime_hint=hint, ticket=ticket))
        return self._next_message(HandshakeType.NEW_SESSION_TICKET, w.data())

    # -- both ------------------------------------------------------------------------------------
    def _restore(self, session: Session) -> None:
        self._master = session.master_secret
        self._identity = session.identity
        if session.peer_spki and session.peer_kind is not None:
            self._peer = PeerCredential(CertificateType(session.peer_kind), session.peer_spki,
                                        name=session.peer_name)

    def _new_session(self) -> Session:
        """The session this (full) handshake made, from its master secret and credentials."""
        cfg = self._config
        peer = self._peer
        psk_fp = b""
        if not cfg.is_client and self._suite in PSK_SUITES:
            psk = cfg.lookup_psk(self._identity)
            psk_fp = psk_fingerprint(psk) if psk is not None else b""
        lifetime = float(self._ticket_lifetime) if self._ticket_lifetime else cfg.session_lifetime
        if cfg.is_client:
            lifetime = min(lifetime, cfg.session_lifetime)
        created = float(int(cfg.wall_time()))
        end = chain_not_after(peer.certificates) if peer is not None and peer.certificates else None
        if end is not None:  # a session does not outlive the peer's certificates (resumption skips the chain)
            lifetime = min(lifetime, max(0.0, end - created))
        return Session(
            cipher_suite=self._suite, master_secret=self._master, extended_master_secret=self._use_ems,
            identity=self._identity, session_id=self._session_id if cfg.is_client else b"",
            ticket=self._ticket, created=created, lifetime=float(int(lifetime)),
            psk_fingerprint=psk_fp, peer_kind=int(peer.kind) if peer is not None else None,
            peer_spki=peer.spki if peer is not None else b"", peer_name=peer.name if peer is not None else None)

    def _remember_session(self) -> None:
        """At the end of a handshake: the client keeps its session to offer next time; a server puts a new
        session in its cache (a ticket already carries it)."""
        if not self._use_ems:
            return
        cfg = self._config
        if cfg.is_client:
            if self._resumed and self._resume is not None:
                self._session = replace(self._resume, ticket=self._ticket) if self._ticket else self._resume
            elif self._session_id or self._ticket:
                self._session = self._new_session()
            return
        context = self._context
        if not self._resumed and self._session_id and context is not None and context.cache is not None:
            session = self._new_session()
            context.cache.put(replace(session, session_id=self._session_id), cfg.wall_time())
