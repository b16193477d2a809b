"""The PSK handshake of both roles as a state table (RFC 6347 section 4.2, RFC 4279, RFC 7627).

``HANDSHAKE_TABLE`` maps ``(state, handshake type)`` to a handler; ``CCS_TABLE`` does the same for
ChangeCipherSpec. A pair missing from the tables is answered with ``unexpected_message``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from enum import IntEnum, auto

from .buffer import Buffer, Writer
from .config import DTLSConfiguration
from .constants import DTLS_1_2, SUITE_AEAD, AlertDescription, CipherSuite, ExtensionType, HandshakeType
from .errors import (
    AlertError,
    DecryptError,
    HandshakeFailure,
    IllegalParameter,
    ProtocolVersionError,
    UnexpectedMessage,
)
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
from .prf import HmacSha256Key, finished_verify_data, key_block, master_secret, psk_premaster
from .reassembly import CCS, OutMessage, Reassembler, message_header
from .record import CipherState
from .transport import RecordLayer

MAX_HELLO_VERIFY = 4


class State(IntEnum):
    CLIENT_START = auto()
    CLIENT_WAIT_HELLO = auto()  # ClientHello sent: HelloVerifyRequest or ServerHello
    CLIENT_WAIT_SKE_OR_DONE = auto()  # ServerHello received
    CLIENT_WAIT_DONE = auto()  # ServerKeyExchange received
    CLIENT_WAIT_FINISHED = auto()  # final flight sent: ChangeCipherSpec, then Finished
    SERVER_START = auto()
    SERVER_WAIT_CKE = auto()  # ServerHello flight sent
    SERVER_WAIT_FINISHED = auto()  # ClientKeyExchange received: ChangeCipherSpec, then Finished
    ESTABLISHED = auto()
    CLOSED = auto()


HANDSHAKING = frozenset(
    {State.CLIENT_WAIT_HELLO, State.CLIENT_WAIT_SKE_OR_DONE, State.CLIENT_WAIT_DONE,
     State.CLIENT_WAIT_FINISHED, State.SERVER_WAIT_CKE, State.SERVER_WAIT_FINISHED}
)
WAITING_FINISHED = frozenset({State.CLIENT_WAIT_FINISHED, State.SERVER_WAIT_FINISHED})

_EMS_EXT: tuple[int, bytes] = (ExtensionType.EXTENDED_MASTER_SECRET, b"")
_RENEG_EXT: tuple[int, bytes] = (ExtensionType.RENEGOTIATION_INFO, b"\x00")


class HandshakeLayer(RecordLayer):
    """Handshake state and message handlers; :class:`DTLSConnection` adds the public API."""

    __slots__ = (
        "_client_random", "_dummy_psk_key", "_early_ccs", "_hello_verify_count", "_identity",
        "_identity_hint", "_master", "_master_mac", "_psk", "_reasm", "_send_seq", "_server_random",
        "_state", "_suite", "_transcript", "_use_ems",
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
        self._psk = b""
        self._hello_verify_count = 0
        self._early_ccs = False
        self._dummy_psk_key = b""

    # -- helpers ---------------------------------------------------------------------------------
    def _add_transcript(self, msg_type: int, seq: int, body: bytes) -> None:
        self._transcript.update(message_header(msg_type, len(body), seq))
        self._transcript.update(body)

    def _next_message(self, msg_type: int, body: bytes, epoch: int = 0) -> OutMessage:
        msg = OutMessage(epoch, msg_type, self._send_seq, body)
        self._send_seq += 1
        return msg

    def _derive_keys(self) -> None:
        key_len, iv_len, tag_len = SUITE_AEAD[self._suite]
        session_hash = self._transcript.copy().digest() if self._use_ems else None
        self._master = master_secret(psk_premaster(self._psk), self._client_random, self._server_random,
                                     session_hash)
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

    # -- client ----------------------------------------------------------------------------------
    def _send_client_hello(self, cookie: bytes, now: float) -> None:
        cfg = self._config
        exts: list[tuple[int, bytes]] = [_EMS_EXT] if cfg.extended_master_secret else []
        # Secure renegotiation is signalled with the SCSV, which RFC 5746 section 3.4 makes equivalent to an
        # empty renegotiation_info extension and which costs 2 bytes instead of 5.
        suites = [*cfg.cipher_suites, CipherSuite.TLS_EMPTY_RENEGOTIATION_INFO_SCSV]
        hello = ClientHello(random=self._client_random, cipher_suites=suites, cookie=cookie, extensions=exts)
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
        if sh.cipher_suite not in cfg.cipher_suites or sh.cipher_suite not in SUITE_AEAD:
            raise IllegalParameter("server chose a cipher suite we did not offer")
        if sh.compression_method != 0:
            raise IllegalParameter("server chose compression")
        offered = {ExtensionType.RENEGOTIATION_INFO}
        if cfg.extended_master_secret:
            offered.add(ExtensionType.EXTENDED_MASTER_SECRET)
        for ext_type, _ in sh.extensions:
            if ext_type not in offered:
                raise AlertError("server sent an extension we did not offer",
                                 description=AlertDescription.unsupported_extension)
        check_renegotiation_info(sh.extensions)
        self._use_ems = find_extension(sh.extensions, ExtensionType.EXTENDED_MASTER_SECRET) is not None
        if cfg.require_extended_master_secret and not self._use_ems:
            raise HandshakeFailure("server does not support the extended master secret")
        self._suite = sh.cipher_suite
        self._server_random = sh.random
        self._add_transcript(HandshakeType.SERVER_HELLO, seq, body)
        self._state = State.CLIENT_WAIT_SKE_OR_DONE

    def _client_server_key_exchange(self, body: bytes, seq: int, now: float) -> None:
        self._identity_hint = pull_psk_identity(Buffer(body))
        self._add_transcript(HandshakeType.SERVER_KEY_EXCHANGE, seq, body)
        self._state = State.CLIENT_WAIT_DONE

    def _client_server_hello_done(self, body: bytes, seq: int, now: float) -> None:
        pull_empty(Buffer(body))
        self._add_transcript(HandshakeType.SERVER_HELLO_DONE, seq, body)
        cfg = self._config
        assert cfg.psk_identity is not None and cfg.psk is not None
        self._identity, self._psk = cfg.psk_identity, cfg.psk
        w = Writer()
        push_psk_identity(w, self._identity)
        cke = self._next_message(HandshakeType.CLIENT_KEY_EXCHANGE, w.data())
        self._add_transcript(cke.msg_type, cke.message_seq, cke.body)
        self._derive_keys()
        fin = self._next_message(HandshakeType.FINISHED, self._finished_data(True), epoch=1)
        self._add_transcript(fin.msg_type, fin.message_seq, fin.body)
        self._state = State.CLIENT_WAIT_FINISHED
        self._send_flight([cke, OutMessage(0, CCS), fin], now)
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
        suite = next((s for s in cfg.cipher_suites if s in hello.cipher_suites), None)
        if suite is None:
            raise HandshakeFailure("no cipher suite in common")
        reneg = check_renegotiation_info(hello.extensions) or \
            CipherSuite.TLS_EMPTY_RENEGOTIATION_INFO_SCSV in hello.cipher_suites
        client_ems = find_extension(hello.extensions, ExtensionType.EXTENDED_MASTER_SECRET) is not None
        self._use_ems = client_ems and cfg.extended_master_secret
        if cfg.require_extended_master_secret and not self._use_ems:
            raise HandshakeFailure("client does not support the extended master secret")
        self._suite = suite
        self._server_random = cfg.random(32)
        exts: list[tuple[int, bytes]] = []
        if reneg:
            exts.append(_RENEG_EXT)
        if self._use_ems:
            exts.append(_EMS_EXT)
        w = Writer()
        push_server_hello(w, ServerHello(random=self._server_random, cipher_suite=suite, extensions=exts))
        flight = [self._next_message(HandshakeType.SERVER_HELLO, w.data())]
        if cfg.psk_identity_hint is not None:
            w = Writer()
            push_psk_identity(w, cfg.psk_identity_hint)
            flight.append(self._next_message(HandshakeType.SERVER_KEY_EXCHANGE, w.data()))
        flight.append(self._next_message(HandshakeType.SERVER_HELLO_DONE, b""))
        for msg in flight:
            self._add_transcript(msg.msg_type, msg.message_seq, msg.body)
        self._state = State.SERVER_WAIT_CKE
        self._send_flight(flight, now)

    def _server_client_key_exchange(self, body: bytes, seq: int, now: float) -> None:
        identity = pull_psk_identity(Buffer(body))
        psk = self._config.lookup_psk(identity)
        if not psk:
            # Unknown identity: continue with a key nobody has, so it fails exactly like a wrong key
            # (bad_record_mac on the client's Finished), with the same work done (RFC 4279 section 5.1).
            psk = hmac.digest(self._dummy_psk_key, identity, "sha256")[:16]
        self._identity, self._psk = identity, psk
        self._add_transcript(HandshakeType.CLIENT_KEY_EXCHANGE, seq, body)
        self._derive_keys()
        self._state = State.SERVER_WAIT_FINISHED
        if self._early_ccs:
            self._early_ccs = False
            self._activate_read_epoch()

    def _server_finished(self, body: bytes, seq: int, now: float) -> None:
        verify = pull_finished(Buffer(body))
        if not hmac.compare_digest(verify, self._finished_data(True)):
            raise DecryptError("client Finished does not verify")
        self._add_transcript(HandshakeType.FINISHED, seq, body)
        fin = self._next_message(HandshakeType.FINISHED, self._finished_data(False), epoch=1)
        self._send_flight([OutMessage(0, CCS), fin], now, timer=False)
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
}

#: ChangeCipherSpec is legal only here, and only while the read side is still in epoch 0.
CCS_TABLE: dict[State, Callable[[HandshakeLayer], None]] = {
    State.CLIENT_WAIT_FINISHED: HandshakeLayer._ccs_switch,
    State.SERVER_WAIT_FINISHED: HandshakeLayer._ccs_switch,
    State.SERVER_WAIT_CKE: HandshakeLayer._ccs_early,
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
