"""DTLSConnection: the sans-IO DTLS 1.2 endpoint for one peer.

Feed it datagrams with :meth:`receive_datagram`, send what :meth:`datagrams_to_send` returns, arm one timer at
:meth:`get_timer` and call :meth:`handle_timer` when it fires, and read :meth:`next_event`. Every method takes
the current time ``now`` (seconds, any monotonic origin); nothing here reads a clock or a socket.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from logging import DEBUG, INFO

from .buffer import Buffer
from .config import DTLSConfiguration
from .constants import DTLS_1_2, MAX_PLAINTEXT, PSK_SUITES, AlertDescription, AlertLevel, ContentType, HandshakeType
from .errors import (
    AlertError,
    BadRecordMac,
    ConnectionClosed,
    DecodeError,
    DTLSError,
    HandshakeTimeout,
    InternalError,
    RecordOverflow,
    RemoteAlert,
    UnexpectedMessage,
)
from .events import AlertReceived, ConnectionTerminated, DataReceived, Event, HandshakeCompleted
from .handshake import (
    CCS_TABLE,
    HANDSHAKING,
    PROTECTED_MESSAGES,
    WAITING_FINISHED,
    HandshakeLayer,
    State,
    expect,
)
from .logs import (
    CONNECTION_LOG,
    HANDSHAKE_LOG,
    PSK_MISMATCH_LOG,
    PSK_REJECTED_HINT,
    PSK_UNKNOWN_HINT,
    alert_text,
    endpoint,
    identity_text,
    message_name,
    suite_name,
)
from .messages import ClientHello
from .reassembly import parse_fragments
from .record import _HDR, SEQ_MASK, Record, split_records
from .resumption import Session
from .rrc import COOKIE_LEN, RrcType, pull_rrc, push_rrc
from .server_context import ServerContext
from .trust import PeerCredential

MAX_EARLY_DATA = 8
MAX_ERROR_CHARS = 300  # an error message in a log line is cut here
_APPDATA = bytes((ContentType.APPLICATION_DATA,))
_CID_RECORD = bytes((ContentType.TLS12_CID,))
# Enum attribute lookups are slow on Python 3.11; the hot paths compare against these aliases.
_ESTABLISHED = State.ESTABLISHED
_CLOSED = State.CLOSED
_APPLICATION_DATA = int(ContentType.APPLICATION_DATA)
_CHANGE_CIPHER_SPEC = int(ContentType.CHANGE_CIPHER_SPEC)
_TLS12_CID = int(ContentType.TLS12_CID)
_RRC = int(ContentType.RETURN_ROUTABILITY_CHECK)
_HANDSHAKE_OR_CID = frozenset({ContentType.HANDSHAKE, ContentType.TLS12_CID})
_EPOCH1 = 1 << 48
_NO_TRANSCRIPT = hashlib.sha256()
_RENEGOTIATION = frozenset({HandshakeType.HELLO_REQUEST, HandshakeType.CLIENT_HELLO})
#: Alerts that, while waiting for the Finished of a PSK handshake, mean the two sides derived different keys.
_KEY_MISMATCH = frozenset({AlertDescription.bad_record_mac, AlertDescription.decrypt_error})


class IdleTimeout(DTLSError):
    """An established connection saw no authenticated record for ``idle_timeout`` seconds."""


class DTLSConnection(HandshakeLayer):
    """One DTLS association. Create it with a :class:`DTLSConfiguration`; clients call :meth:`connect`."""

    __slots__ = (
        "_early_data", "_events", "_future", "_hs_deadline", "_idle_deadline", "_max_payload",
        "_min_trigger_interval", "_retransmit_requested", "_unconfirmed_sends", "error", "peer",
    )

    def __init__(self, config: DTLSConfiguration, *, peer: object = None, validate: bool = True) -> None:
        if validate:  # DTLSServer validates its configuration once, not per connection
            config.validate()
        super().__init__(config)
        self.peer = peer
        self._events: list[Event] = []
        self._future: list[Record] = []
        self._early_data: list[bytes] = []
        self._hs_deadline: float | None = None
        self._idle_deadline: float | None = None
        self._retransmit_requested = False
        # Duplicates are recognised by record sequence number; this short guard only keeps two crossing
        # retransmissions from being answered twice.
        self._min_trigger_interval = min(0.1, config.retransmit_initial / 4)
        self.error: Exception | None = None
        self._max_payload = 0
        self._unconfirmed_sends = 0  # sends since an abbreviated handshake the server has not confirmed

    # -- public API ------------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def is_established(self) -> bool:
        return self._state is _ESTABLISHED

    @property
    def is_handshaking(self) -> bool:
        return self._state in HANDSHAKING

    @property
    def is_closed(self) -> bool:
        return self._state is _CLOSED

    @property
    def identity(self) -> bytes:
        """Who authenticated. PSK suites: the PSK identity (ours on a client, the peer's on a server).

        ECDHE-ECDSA suites: the peer's :attr:`PeerCredential.identity` (a trust-callback name, a certificate
        subject or the key's ``ni:///sha-256;...`` URI), UTF-8 encoded; empty for a client that presented no key.
        """
        return self._identity

    @property
    def peer_credential(self) -> PeerCredential | None:
        """The peer's verified raw public key or certificate chain (ECDHE-ECDSA suites), else None."""
        return self._peer

    @property
    def cipher_suite(self) -> int:
        return self._suite

    @property
    def client_random(self) -> bytes:
        return self._client_random

    @property
    def max_payload(self) -> int:
        """Largest application payload that fits one record within the datagram budget and the peer's
        record_size_limit (RFC 8449)."""
        cid_type_byte = 1 if self._peer_cid else 0
        return min(self._config.mtu - 13 - self._overhead(1), self._peer_record_limit - cid_type_byte)

    @property
    def connection_id(self) -> bytes | None:
        """RFC 9146: the CID the peer puts in the records it sends us (may be empty), or ``None`` when no
        connection ID was negotiated."""
        return self._cid if self._cid_on else None

    @property
    def peer_connection_id(self) -> bytes | None:
        """RFC 9146: the CID we put in the records we send (may be empty), or ``None`` without a connection ID."""
        return self._peer_cid if self._cid_on else None

    @property
    def record_size_limit(self) -> int | None:
        """The peer's RFC 8449 record_size_limit (the largest plaintext we send it in a protected record), or
        ``None`` when the extension was not negotiated."""
        return self._peer_record_limit if self._record_limit <= MAX_PLAINTEXT else None

    @property
    def session(self) -> Session | None:
        """After the handshake, what a client keeps to resume this session later (:meth:`connect` with
        ``session=``): secret, like a key. ``None`` when the session cannot be resumed (no extended master
        secret, or the server gave neither a session ID nor a ticket)."""
        return self._session

    @property
    def resumed(self) -> bool:
        """The handshake was abbreviated: it resumed an earlier session."""
        return self._resumed

    def connect(self, now: float, session: Session | None = None) -> None:
        """Client: start the handshake by sending a ClientHello; offer ``session`` (from an earlier
        connection's :attr:`session`) for an abbreviated handshake. A server that does not resume it answers
        with a full handshake."""
        if not self._config.is_client or self._state is not State.CLIENT_START:
            raise DTLSError("connect() is for a new client connection")
        cfg = self._config
        if cfg.cid_length is not None:
            self._cid = cfg.random(cfg.cid_length)
        self._client_prepare_resumption(session)
        self._client_random = self._config.random(32)
        self._hs_deadline = now + self._config.handshake_timeout
        self._send_client_hello(b"", now)

    def accept(self, hello: ClientHello, body: bytes, message_seq: int, record_seq: int, now: float,
               dummy_psk_key: bytes, *, received: int = 0, sent: int = 0,
               context: ServerContext | None = None) -> None:
        """Server: start from a ClientHello whose cookie the server front verified. ``received`` and ``sent``
        are the bytes exchanged with the peer in this handshake so far (the hellos, the HelloVerifyRequest),
        the base of the amplification limit. ``context``: the front's session cache, ticket keys and CID
        generator."""
        if self._config.is_client or self._state is not State.SERVER_START:
            raise DTLSError("accept() is for a new server connection")
        self._context = context
        self._hs_deadline = now + self._config.handshake_timeout
        self._limit_amplification(received, sent)
        self._write_seq[0] = record_seq
        self._dummy_psk_key = dummy_psk_key
        if HANDSHAKE_LOG.getEffectiveLevel() <= DEBUG:
            HANDSHAKE_LOG.debug("%s: received ClientHello (seq %d%s)", self._who(), message_seq,
                                ", cookie verified" if hello.cookie else "")
        self._guard(lambda: self._server_accept(hello, body, message_seq, now))

    def send(self, data: bytes) -> None:
        """Queue one application datagram; the connection must be established."""
        if self._state is not _ESTABLISHED:
            raise ConnectionClosed("connection is not established")
        if len(data) > self._max_payload:
            raise ValueError(f"payload of {len(data)} bytes exceeds the record budget of {self._max_payload}")
        seq = self._write_seq[1]
        if seq >= SEQ_MASK:
            raise ConnectionClosed("sequence number space exhausted: reconnect")
        self._write_seq[1] = seq + 1
        if self._flight and self._resumed and self._config.is_client:
            # An abbreviated handshake ends with our Finished, which only the server's retransmission would
            # bring back if it were lost. Until a record from the server shows it arrived, it goes out again
            # with our data from the second send on (a retransmission of the application, as a rule: the first
            # send costs nothing extra); the server ignores a duplicate.
            if self._unconfirmed_sends:
                self._transmit(self._last_sent, limited=False)
            self._unconfirmed_sends += 1
        cipher = self._write_cipher
        assert cipher is not None
        if self._peer_cid:
            self._out.append(cipher.protect_cid(_APPLICATION_DATA, _EPOCH1 | seq, data, self._peer_cid,
                                                self._config.cid_padding, self._peer_record_limit))
        else:
            self._out.append(cipher.protect(_APPLICATION_DATA, _EPOCH1 | seq, data))

    def close(self, error: Exception | None = None) -> None:
        """Send close_notify (if established) and close; idempotent. ``error`` is what the
        :class:`ConnectionTerminated` event reports (``None``: an orderly close)."""
        if self._state is _CLOSED:
            return
        if self._state is _ESTABLISHED or self._write_epoch == 0:
            self._send_alert(AlertLevel.WARNING, AlertDescription.close_notify)
        self._terminate(error)

    def fail(self, error: AlertError) -> None:
        """End the connection with ``error``'s fatal alert (sent unless the peer sent it)."""
        self._fail(error)

    def abort(self, error: Exception) -> None:
        """Close without a word to the peer (the server front drops a handshake or a replaced session)."""
        if self._state is not _CLOSED:
            self._terminate(error)

    def read_window_state(self) -> tuple[int, int]:
        """Changes whenever a record of the current read epoch authenticates."""
        return self._windows[self._read_epoch].state()

    def datagrams_to_send(self, now: float) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        if self._state is _CLOSED:
            return None
        when = self._timer_at
        for t in (self._hs_deadline, self._idle_deadline):
            if t is not None and (when is None or t < when):
                when = t
        return when

    def handle_timer(self, now: float) -> None:
        if self._state is _CLOSED:
            return
        if self._hs_deadline is not None and now >= self._hs_deadline:
            self._terminate(HandshakeTimeout(f"handshake did not complete within "
                                             f"{self._config.handshake_timeout:g} s "
                                             f"({self.retransmissions} retransmissions)"))
        elif self._idle_deadline is not None and now >= self._idle_deadline:
            self._send_alert(AlertLevel.WARNING, AlertDescription.close_notify)
            self._terminate(IdleTimeout(f"no traffic for {self._config.idle_timeout:g} s"))
        elif self._timer_at is not None and now >= self._timer_at:
            self._guard(lambda: self._retransmit(now, backoff=True))

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def receive_datagram(self, data: bytes, now: float) -> None:
        if self._state is _ESTABLISHED:
            # Fast paths: one application record of the current epoch, the common case after the handshake.
            first = data[:1]
            if first == _APPDATA and len(data) > 13 and not self._cid:
                _, version, epoch_seq, length = _HDR.unpack_from(data)
                if length + 13 == len(data) and epoch_seq >> 48 == 1 and version == DTLS_1_2:
                    self._fast_application_data(data, version, epoch_seq, now)
                    return
            elif first == _CID_RECORD and self._cid and self._fast_cid_record(data, now):
                return
        if self._state is _CLOSED:
            return
        self._retransmit_requested = False
        if self._amp_limit:
            self._amp_received += len(data)
        self._guard(lambda: self._receive(data, now))

    # -- internals -------------------------------------------------------------------------------
    def _fast_application_data(self, data: bytes, version: int, epoch_seq: int, now: float) -> None:
        seq = epoch_seq & SEQ_MASK
        window = self._windows[1]
        if not window.is_fresh(seq):
            return
        assert self._read_cipher is not None
        payload = self._read_cipher.open(_APPLICATION_DATA, version, epoch_seq, data, 13, len(data))
        if payload is None:
            return
        if len(payload) > self._record_limit:
            self._guard(lambda: self._overflow())
            return
        window.mark(seq)
        if self._config.idle_timeout is not None:
            self._idle_deadline = now + self._config.idle_timeout
        if self._flight:
            self._flight = []  # server: the client has our Finished, no more final-flight retransmissions
        self._events.append(DataReceived(payload))

    def _fast_cid_record(self, data: bytes, now: float) -> bool:
        """One tls12_cid application record (RFC 9146) of epoch 1 carrying our CID; False for anything else,
        which then takes the general path."""
        cid = self._cid
        start = 11 + len(cid)
        if len(data) < start + 2 or data[11:start] != cid:
            return False
        _, version, epoch_seq, _ = _HDR.unpack_from(data)
        if int.from_bytes(data[start : start + 2], "big") + start + 2 != len(data) or epoch_seq >> 48 != 1 or \
                version != DTLS_1_2:
            return False
        seq = epoch_seq & SEQ_MASK
        window = self._windows[1]
        if not window.is_fresh(seq):
            return True
        assert self._read_cipher is not None
        opened = self._read_cipher.open_cid(Record(_TLS12_CID, version, epoch_seq, data[start + 2 :], cid))
        if opened is None:
            return True
        content_type, payload = opened
        if content_type != _APPLICATION_DATA or len(payload) > self._record_limit:
            return False  # not authenticated yet as far as the window goes: the general path redoes it
        window.mark(seq)
        if self._config.idle_timeout is not None:
            self._idle_deadline = now + self._config.idle_timeout
        if self._flight:
            self._flight = []
        self._events.append(DataReceived(payload))
        return True

    def _guard(self, action: object) -> None:
        try:
            action()  # type: ignore[operator]
        except AlertError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug must not escape as a traceback through the I/O layer
            self._fail(InternalError(f"{type(exc).__name__}: {exc}"))

    def _overflow(self) -> None:
        raise RecordOverflow(f"record larger than our record_size_limit of {self._record_limit} bytes")

    def _receive(self, data: bytes, now: float) -> None:
        for record in split_records(data, len(self._cid) or -1):
            self._handle_record(record, now)
            if self._state is _CLOSED:
                return
        if self._retransmit_requested and self._state is not _CLOSED:
            # under the amplification limit it stands for the timer (and backs it off); otherwise it comes extra
            self._retransmit(now, backoff=self._amp_limit)

    def _handle_record(self, record: Record, now: float) -> None:
        epoch = record.epoch
        if epoch == self._read_epoch:
            window = self._windows[epoch]
            if not window.is_fresh(record.seq):
                return
            content_type = record.content_type
            if epoch == 0:
                if content_type > _APPLICATION_DATA:
                    return  # tls12_cid and return_routability_check records exist only protected (RFC 9146 4)
                payload = record.fragment
            else:
                assert self._read_cipher is not None
                if content_type == _TLS12_CID:
                    # only records that carry our CID; without one, a tls12_cid record never parses
                    if record.cid != self._cid:
                        return
                    inner = self._read_cipher.open_cid(record)
                    opened = None
                    if inner is not None:
                        content_type, opened = inner
                        if not (_CHANGE_CIPHER_SPEC <= content_type <= _APPLICATION_DATA or content_type == _RRC):
                            raise UnexpectedMessage(f"content type {content_type} inside a tls12_cid record")
                elif self._cid:
                    return  # RFC 9146: once we asked for a CID, protected records must carry it
                else:
                    opened = self._read_cipher.unprotect(record)
                if opened is None:
                    if self._state in WAITING_FINISHED and record.content_type in _HANDSHAKE_OR_CID:
                        # The peer's Finished does not authenticate: our keys differ (wrong PSK). Fail fast
                        # instead of hanging (openssl #10906). Other records, e.g. stale ones of a previous
                        # session, are dropped as RFC 6347 4.1.2.7 says.
                        raise BadRecordMac("record failed authentication during the handshake")
                    return
                payload = opened
                if len(payload) > self._record_limit:
                    self._overflow()
            window.mark(record.seq)
            if epoch == 1 and self._config.idle_timeout is not None and self._state is _ESTABLISHED:
                self._idle_deadline = now + self._config.idle_timeout
            self._dispatch(content_type, payload, epoch, now)
        elif epoch == 1 and self._read_epoch == 0:
            # Not yet authenticable: bounded by count and by bytes (1 KB a record on average).
            limit = self._config.max_buffered_records
            if self._state in HANDSHAKING and len(self._future) < limit and \
                    sum(len(r.fragment) for r in self._future) + len(record.fragment) <= limit * 1024:
                self._future.append(record)
        elif epoch == 0 and self._read_epoch == 1 and record.content_type == ContentType.HANDSHAKE:
            window = self._windows[0]
            if window.is_fresh(record.seq):  # a network duplicate is not a retransmission
                window.mark(record.seq)
                if self._state is State.SERVER_WAIT_CERTIFICATE_VERIFY:
                    self._on_handshake(record.fragment, 0, now)  # the CCS overtook the CertificateVerify
                else:
                    self._old_epoch_handshake(record.fragment, now)

    def _old_epoch_handshake(self, payload: bytes, now: float) -> None:
        """Epoch-0 handshake records after the switch: the peer retransmitting an older flight."""
        try:
            frags = parse_fragments(payload)
        except DecodeError:
            return
        if any(f.message_seq < self._reasm.next_seq for f in frags):
            self._peer_retransmitted(now)

    def _dispatch(self, content_type: int, payload: bytes, epoch: int, now: float) -> None:
        if content_type == ContentType.HANDSHAKE:
            self._on_handshake(payload, epoch, now)
        elif content_type == ContentType.APPLICATION_DATA:
            self._on_application_data(payload, epoch)
        elif content_type == ContentType.ALERT:
            self._on_alert(payload)
        elif content_type == _RRC:
            self._on_return_routability_check(payload, epoch)
        elif content_type == ContentType.CHANGE_CIPHER_SPEC:
            self._on_change_cipher_spec(payload)
        else:
            raise UnexpectedMessage(f"content type {content_type}")

    # -- return routability check (RFC 9853) ---------------------------------------------------------
    def path_challenge(self) -> bytes | None:
        """A protected path_challenge record with a fresh cookie, to send to an address the peer seems to have
        moved to (the server front does); ``None`` when RRC was not negotiated."""
        if not self._rrc_on or self._state is not _ESTABLISHED:
            return None
        self._rrc_cookie = self._config.random(COOKIE_LEN)
        self._rrc_answered = False
        return self._write_record(1, _RRC, push_rrc(RrcType.PATH_CHALLENGE, self._rrc_cookie))

    def take_path_response(self) -> bool:
        """True once: our outstanding path_challenge was answered with its cookie."""
        answered, self._rrc_answered = self._rrc_answered, False
        return answered

    def _on_return_routability_check(self, payload: bytes, epoch: int) -> None:
        if epoch != 1 or not self._rrc_on or self._state is not _ESTABLISHED:
            raise UnexpectedMessage("return_routability_check without the rrc extension")
        msg_type, cookie = pull_rrc(payload)
        if msg_type == RrcType.PATH_CHALLENGE:
            self._out.append(self._write_record(1, _RRC, push_rrc(RrcType.PATH_RESPONSE, cookie)))
        elif msg_type == RrcType.PATH_RESPONSE and self._rrc_cookie and \
                hmac.compare_digest(cookie, self._rrc_cookie):
            self._rrc_cookie = b""
            self._rrc_answered = True

    def _on_handshake(self, payload: bytes, epoch: int, now: float) -> None:
        reasm = self._reasm
        established = self._state is _ESTABLISHED
        for frag in parse_fragments(payload):
            if established and frag.msg_type in _RENEGOTIATION:
                # any message_seq: a new handshake restarts at 0
                self._send_alert(AlertLevel.WARNING, AlertDescription.no_renegotiation)
            elif frag.message_seq < reasm.next_seq:
                self._peer_retransmitted(now)
            elif established:
                raise UnexpectedMessage("handshake message after the handshake")
            elif self._state not in HANDSHAKING:
                raise UnexpectedMessage("handshake message before the handshake started")
            else:
                reasm.add(frag, epoch)
        while self._state in HANDSHAKING:
            msg = reasm.pop()
            if msg is None:
                break
            msg_type, body, msg_epoch = msg
            if HANDSHAKE_LOG.getEffectiveLevel() <= DEBUG:
                HANDSHAKE_LOG.debug("%s: received %s (seq %d, epoch %d, %d bytes)", self._who(),
                                    message_name(msg_type), reasm.next_seq - 1, msg_epoch, len(body))
            if (msg_type in PROTECTED_MESSAGES) != (msg_epoch == 1):
                raise UnexpectedMessage(f"handshake type {msg_type} in epoch {msg_epoch}")
            expect((self._state, msg_type))(self, body, reasm.next_seq - 1, now)

    def _peer_retransmitted(self, now: float) -> None:
        # Before the peer proved it receives (amplification limit on), a repeated flight of the peer - a
        # replayed ClientHello, say - brings ours back no sooner than our own retransmission timer would.
        interval = self._timeout if self._amp_limit else self._min_trigger_interval
        if self._flight and now - self._last_sent >= interval:
            self._retransmit_requested = True

    def _on_change_cipher_spec(self, payload: bytes) -> None:
        if payload != b"\x01":
            raise DecodeError("malformed ChangeCipherSpec")
        handler = CCS_TABLE.get(self._state)
        if handler is None or self._read_epoch != 0:
            raise UnexpectedMessage(f"ChangeCipherSpec in state {self._state.name}")
        if HANDSHAKE_LOG.getEffectiveLevel() <= DEBUG:
            HANDSHAKE_LOG.debug("%s: received ChangeCipherSpec", self._who())
        handler(self)

    def _activate_read_epoch(self) -> None:
        self._read_cipher, self._next_read_cipher = self._next_read_cipher, None
        self._read_epoch = 1
        buffered, self._future = self._future, []
        for record in buffered:
            if self._state is _CLOSED:
                break
            self._handle_record(record, self._last_sent)

    def _on_application_data(self, payload: bytes, epoch: int) -> None:
        if epoch != 1:
            raise UnexpectedMessage("application data before the handshake")
        if self._state is _ESTABLISHED:
            if self._flight:
                self._flight = []  # the peer has our Finished: no more final-flight retransmissions
            self._events.append(DataReceived(payload))
        elif self._state in WAITING_FINISHED:
            if len(self._early_data) < MAX_EARLY_DATA:
                self._early_data.append(payload)  # overtook the Finished: deliver after it
        else:
            raise UnexpectedMessage("application data in state " + self._state.name)

    def _on_alert(self, payload: bytes) -> None:
        buf = Buffer(payload)
        level, desc = buf.pull_uint8(), buf.pull_uint8()
        if not buf.eof():
            raise DecodeError("malformed alert")
        if CONNECTION_LOG.getEffectiveLevel() <= DEBUG:
            CONNECTION_LOG.debug("%s: received alert %s", self._who(), alert_text(level, desc))
        try:
            description: AlertDescription | int = AlertDescription(desc)
        except ValueError:
            description = desc
        if desc == AlertDescription.close_notify:
            if self._state is _ESTABLISHED:
                self._send_alert(AlertLevel.WARNING, AlertDescription.close_notify)
            self._terminate(None)
        elif level == AlertLevel.FATAL:
            self._fail(RemoteAlert(AlertDescription(desc) if isinstance(description, AlertDescription)
                                   else AlertDescription.internal_error))
        else:
            self._events.append(AlertReceived(level, description))

    def _handshake_done(self) -> None:
        self._state = _ESTABLISHED
        self._remember_session()
        self._context = None
        self._resume = None
        self._amp_limit = False
        self._amp_received = self._amp_sent = 0
        self._max_payload = self.max_payload
        # Handshake-only state is released: it decides how many sessions one gateway holds.
        self._transcript = _NO_TRANSCRIPT
        self._master = b""
        self._master_mac = None
        self._next_read_cipher = None
        self._server_random = b""
        self._reasm.clear()  # fragments of messages that will never come
        self._hs_deadline = None
        if self._config.idle_timeout is not None:
            self._idle_deadline = self._last_sent + self._config.idle_timeout
        self._events.append(HandshakeCompleted(self._suite, self._identity, self._use_ems, self._peer,
                                               self._resumed))
        if HANDSHAKE_LOG.getEffectiveLevel() <= INFO:
            HANDSHAKE_LOG.info("%s: session %s: %s, extended master secret %s, %s%s, %d retransmission%s",
                               self._who(), "resumed" if self._resumed else "established", suite_name(self._suite),
                               "yes" if self._use_ems else "no", identity_text(self._identity),
                               f", connection ID {len(self._cid)}/{len(self._peer_cid)} bytes" if self._cid_on
                               else "", self.retransmissions, "" if self.retransmissions == 1 else "s")
        for data in self._early_data:
            self._events.append(DataReceived(data))
        self._early_data = []
        self._peer_key = None
        self._ecdhe_key = None

    def _fail(self, exc: AlertError) -> None:
        if self._state is _CLOSED:
            return
        if self._state in WAITING_FINISHED and self._suite in PSK_SUITES and not self._resumed:
            self._explain_psk_failure(exc)
        if not exc.remote:
            with contextlib.suppress(DTLSError):
                self._send_alert(AlertLevel.FATAL, exc.description)
        self._terminate(exc)

    def _explain_psk_failure(self, exc: AlertError) -> None:
        """A PSK handshake failed at the Finished: say what it usually means. The server only logs it; what it
        sends and when stays the same for a wrong key and an unknown identity."""
        description = exc.description
        if self._config.is_client:
            if description in _KEY_MISMATCH:
                exc.explain(PSK_REJECTED_HINT)
            elif description == AlertDescription.unknown_psk_identity and exc.remote:
                exc.explain(PSK_UNKNOWN_HINT)
        elif description in _KEY_MISMATCH and not exc.remote and HANDSHAKE_LOG.getEffectiveLevel() <= INFO:
            HANDSHAKE_LOG.info("%s: %s (%s)", self._who(), PSK_MISMATCH_LOG, identity_text(self._identity))

    def _who(self) -> str:
        return endpoint(self._config.is_client, self.peer)

    def _terminate(self, error: Exception | None) -> None:
        if CONNECTION_LOG.getEffectiveLevel() <= INFO:
            self._log_end(error)
        self._state = _CLOSED
        self.error = error
        self._timer_at = self._hs_deadline = self._idle_deadline = None
        self._flight = []
        self._future = []
        self._reasm.clear()
        self._events.append(ConnectionTerminated(error))

    def _log_end(self, error: Exception | None) -> None:
        established = self._state is _ESTABLISHED
        who = self._who() + (f" [{identity_text(self._identity)}]" if self._identity else "")
        if error is None:
            CONNECTION_LOG.info("%s: %s closed (close_notify)", who, "session" if established else "handshake")
        elif established:
            CONNECTION_LOG.info("%s: session closed: %s", who, _error_text(error))
        else:
            CONNECTION_LOG.info("%s: handshake failed: %s", who, _error_text(error))


def _error_text(error: Exception) -> str:
    """An error for a log line: its message (escaped, bounded: it may quote a peer's certificate), or its class
    name when it has none."""
    text = str(error) or type(error).__name__
    if not text.isprintable():
        text = repr(text)
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."
