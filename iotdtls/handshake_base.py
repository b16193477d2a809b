"""Handshake state shared by both roles and both key exchanges: states, transcript, key derivation."""

from __future__ import annotations

import hashlib
from enum import IntEnum, auto

from cryptography.hazmat.primitives.asymmetric import ec

from .config import DTLSConfiguration
from .constants import SUITE_AEAD, CertificateType
from .prf import HmacSha256Key, finished_verify_data, key_block, master_secret
from .reassembly import OutMessage, Reassembler, message_header
from .record import CipherState
from .resumption import Session
from .server_context import ServerContext
from .transport import RecordLayer
from .trust import PeerCredential


class State(IntEnum):
    CLIENT_START = auto()
    CLIENT_WAIT_HELLO = auto()  # ClientHello sent: HelloVerifyRequest or ServerHello
    CLIENT_WAIT_SKE_OR_DONE = auto()  # ServerHello (PSK suite) received
    CLIENT_WAIT_DONE = auto()  # PSK ServerKeyExchange or CertificateRequest received
    CLIENT_WAIT_FINISHED = auto()  # final flight sent: ChangeCipherSpec, then Finished
    SERVER_START = auto()
    SERVER_WAIT_CKE = auto()  # ServerHello flight sent (no CertificateRequest, or an empty client Certificate)
    SERVER_WAIT_FINISHED = auto()  # ClientKeyExchange (and CertificateVerify) received: CCS, then Finished
    ESTABLISHED = auto()
    CLOSED = auto()
    # ECDHE-ECDSA
    CLIENT_WAIT_CERTIFICATE = auto()  # ServerHello (ECDHE suite) received
    CLIENT_WAIT_ECDHE_SKE = auto()  # server Certificate received
    CLIENT_WAIT_CR_OR_DONE = auto()  # signed ServerKeyExchange received: CertificateRequest or ServerHelloDone
    SERVER_WAIT_CLIENT_CERTIFICATE = auto()  # ServerHello flight with CertificateRequest sent
    SERVER_WAIT_CKE_AUTH = auto()  # non-empty client Certificate received
    SERVER_WAIT_CERTIFICATE_VERIFY = auto()  # ... then its ClientKeyExchange
    # RFC 5077 tickets and abbreviated handshakes (RFC 5246 section 7.3)
    CLIENT_WAIT_TICKET = auto()  # final flight sent, the ServerHello promised a NewSessionTicket
    CLIENT_RESUME_WAIT_TICKET = auto()  # abbreviated: ServerHello accepted our session and promised a ticket
    CLIENT_RESUME_WAIT_FINISHED = auto()  # abbreviated: ChangeCipherSpec, then the server's Finished
    SERVER_RESUME_WAIT_FINISHED = auto()  # abbreviated: our Finished sent; the client's CCS, then its Finished


HANDSHAKING = frozenset(
    {State.CLIENT_WAIT_HELLO, State.CLIENT_WAIT_SKE_OR_DONE, State.CLIENT_WAIT_DONE,
     State.CLIENT_WAIT_FINISHED, State.SERVER_WAIT_CKE, State.SERVER_WAIT_FINISHED,
     State.CLIENT_WAIT_CERTIFICATE, State.CLIENT_WAIT_ECDHE_SKE, State.CLIENT_WAIT_CR_OR_DONE,
     State.SERVER_WAIT_CLIENT_CERTIFICATE, State.SERVER_WAIT_CKE_AUTH, State.SERVER_WAIT_CERTIFICATE_VERIFY,
     State.CLIENT_WAIT_TICKET, State.CLIENT_RESUME_WAIT_TICKET, State.CLIENT_RESUME_WAIT_FINISHED,
     State.SERVER_RESUME_WAIT_FINISHED}
)
WAITING_FINISHED = frozenset({State.CLIENT_WAIT_FINISHED, State.SERVER_WAIT_FINISHED, State.CLIENT_WAIT_TICKET,
                              State.CLIENT_RESUME_WAIT_TICKET, State.CLIENT_RESUME_WAIT_FINISHED,
                              State.SERVER_RESUME_WAIT_FINISHED})


class HandshakeBase(RecordLayer):
    """Fields and helpers of a handshake in progress; the handlers live in the subclasses."""

    __slots__ = (
        "_cert_requested", "_client_cert_type", "_client_random", "_context", "_dummy_psk_key", "_early_ccs",
        "_ecdhe_key", "_hello_verify_count", "_identity", "_identity_hint", "_issue_ticket", "_master",
        "_master_mac", "_peer", "_peer_key", "_premaster", "_present_cert", "_reasm", "_resume", "_resumed",
        "_send_seq", "_server_cert_type", "_server_random", "_session", "_session_id", "_state", "_suite", "_ticket",
        "_ticket_lifetime", "_transcript", "_use_ems",
    )

    def __init__(self, config: DTLSConfiguration) -> None:
        super().__init__(config)
        self._state = State.CLIENT_START if config.is_client else State.SERVER_START
        self._reasm = Reassembler(config.max_handshake_message)
        self._send_seq = 0
        self._transcript = hashlib.sha256()
        self._client_random = b""
        self._server_random = b""
        self._suite = 0
        self._use_ems = False
        self._master = b""
        self._master_mac: HmacSha256Key | None = None
        self._identity = b""
        self._identity_hint = b""
        self._premaster = b""
        self._hello_verify_count = 0
        self._early_ccs = False
        self._dummy_psk_key = b""
        # public-key handshakes
        self._peer: PeerCredential | None = None
        self._peer_key: ec.EllipticCurvePublicKey | None = None
        self._ecdhe_key: ec.EllipticCurvePrivateKey | None = None
        self._server_cert_type = CertificateType.X509
        self._client_cert_type = CertificateType.X509
        self._cert_requested = False
        self._present_cert = False
        # resumption: the session offered (client) or found (server), whether this handshake is abbreviated,
        # the session ID and ticket of the session being made, and what a server front lends its connections
        self._resume: Session | None = None
        self._resumed = False
        self._session: Session | None = None
        self._session_id = b""
        self._ticket = b""
        self._ticket_lifetime = 0
        self._issue_ticket = False
        self._context: ServerContext | None = None

    def _add_transcript(self, msg_type: int, seq: int, body: bytes) -> None:
        self._transcript.update(message_header(msg_type, len(body), seq))
        self._transcript.update(body)

    def _next_message(self, msg_type: int, body: bytes, epoch: int = 0) -> OutMessage:
        msg = OutMessage(epoch, msg_type, self._send_seq, body)
        self._send_seq += 1
        return msg

    def _derive_keys(self) -> None:
        """Master secret and key block from ``_premaster``; call right after the ClientKeyExchange."""
        session_hash = self._transcript.copy().digest() if self._use_ems else None
        self._master = master_secret(self._premaster, self._client_random, self._server_random, session_hash)
        self._premaster = b""
        self._install_keys()

    def _install_keys(self) -> None:
        """Key block and cipher states from ``_master`` and the two randoms (also for an abbreviated handshake,
        whose master secret is the resumed session's)."""
        key_len, iv_len, tag_len = SUITE_AEAD[self._suite]
        self._master_mac = HmacSha256Key(self._master)
        kb = key_block(self._master_mac, self._client_random, self._server_random, 2 * (key_len + iv_len))
        ck, sk = kb[:key_len], kb[key_len : 2 * key_len]
        civ, siv = kb[2 * key_len : 2 * key_len + iv_len], kb[2 * key_len + iv_len :]
        client_state, server_state = CipherState(ck, civ, tag_len), CipherState(sk, siv, tag_len)
        if self._config.is_client:
            self._write_cipher, self._next_read_cipher = client_state, server_state
        else:
            self._write_cipher, self._next_read_cipher = server_state, client_state
        log = self._config.keylog_file
        if log is not None:
            log.write(f"CLIENT_RANDOM {self._client_random.hex()} {self._master.hex()}\n")
            log.flush()

    def _finished_data(self, is_client: bool) -> bytes:
        assert self._master_mac is not None
        return finished_verify_data(self._master_mac, is_client, self._transcript.copy().digest())

    def _activate_read_epoch(self) -> None:
        """Hook: the connection switches its read side to epoch 1 and replays buffered records."""
        raise NotImplementedError

    def _handshake_done(self) -> None:
        raise NotImplementedError
