"""Per-connection record state: epochs, sequence numbers, cipher states, replay windows and flights.

This is the lower half of :class:`~iotdtls.connection.DTLSConnection`. A flight is kept as a list of
:class:`~iotdtls.reassembly.OutMessage` and re-packed on every (re)transmission, so each retransmitted record
gets a fresh sequence number while handshake ``message_seq`` values stay the same.
"""

from __future__ import annotations

from logging import DEBUG

from .config import DTLSConfiguration
from .constants import MAX_PLAINTEXT, AlertDescription, AlertLevel, ContentType
from .errors import InternalError
from .logs import CONNECTION_LOG, HANDSHAKE_LOG, alert_text, endpoint, flight_text
from .reassembly import OutMessage, pack_flight
from .record import MAX_SEQ, CipherState, encode_plain
from .replay import ReplayWindow


class RecordLayer:
    __slots__ = (
        "_amp_limit", "_amp_next", "_amp_received", "_amp_sent", "_cid", "_cid_on", "_config", "_flight",
        "_flight_attempt", "_last_sent", "_next_read_cipher", "_out", "_peer_cid", "_peer_record_limit",
        "_read_cipher", "_read_epoch", "_record_limit", "_rrc_answered", "_rrc_cookie", "_rrc_on", "_timeout",
        "_timer_at", "_windows", "_write_cipher", "_write_epoch", "_write_seq", "amplification_blocked",
        "flights_sent", "retransmissions",
    )

    def __init__(self, config: DTLSConfiguration) -> None:
        self._config = config
        self._write_epoch = 0
        self._write_seq = [0, 0]
        self._write_cipher: CipherState | None = None
        self._read_epoch = 0
        self._read_cipher: CipherState | None = None
        self._next_read_cipher: CipherState | None = None
        self._windows = [ReplayWindow(config.replay_window), ReplayWindow(config.replay_window)]
        # Connection ID (RFC 9146): the CID we receive with (what the peer puts in its records) and the one we
        # put in ours; empty in a direction without one. ``_cid_on``: the extension was negotiated.
        self._cid = b""
        self._peer_cid = b""
        self._cid_on = False
        # RFC 9853: negotiated; the cookie of our outstanding path_challenge; whether it was answered
        self._rrc_on = False
        self._rrc_cookie = b""
        self._rrc_answered = False
        # record_size_limit (RFC 8449), once both sides sent it: the largest plaintext we accept in a protected
        # record, and the largest we may send.
        self._record_limit = MAX_PLAINTEXT + 1
        self._peer_record_limit = MAX_PLAINTEXT
        self._out: list[bytes] = []
        self._flight: list[OutMessage] = []
        self._flight_attempt = 0  # retransmissions of the current flight, for the log
        self._timer_at: float | None = None
        self._timeout = config.retransmit_initial
        self._last_sent = float("-inf")
        # Amplification limit (server, until the client's Finished verifies): bytes received from the peer in
        # this handshake, bytes sent to it, and the datagram of the flight a limited retransmission resumes at.
        self._amp_limit = False
        self._amp_received = 0
        self._amp_sent = 0
        self._amp_next = 0
        #: Statistics: flights sent and retransmitted, and retransmissions cut short by the amplification limit.
        self.flights_sent = 0
        self.retransmissions = 0
        self.amplification_blocked = 0

    # -- writing ---------------------------------------------------------------------------------
    def _write_record(self, epoch: int, content_type: int, payload: bytes) -> bytes:
        seq = self._write_seq[epoch]
        if seq > MAX_SEQ:
            raise InternalError("sequence number space exhausted")
        self._write_seq[epoch] = seq + 1
        if epoch == 0:
            return encode_plain(content_type, seq, payload)
        cipher = self._write_cipher
        if cipher is None:
            raise InternalError("no keys for epoch 1")
        if self._peer_cid:
            return cipher.protect_cid(content_type, (epoch << 48) | seq, payload, self._peer_cid,
                                      self._config.cid_padding, self._peer_record_limit)
        return cipher.protect(content_type, (epoch << 48) | seq, payload)

    def _overhead(self, epoch: int) -> int:
        if epoch == 0 or self._write_cipher is None:
            return 0
        if self._peer_cid:
            return self._write_cipher.overhead + len(self._peer_cid) + 1
        return self._write_cipher.overhead

    def _send_alert(self, level: AlertLevel, description: AlertDescription) -> None:
        record = self._write_record(self._write_epoch, ContentType.ALERT, bytes((level, description)))
        self._amp_sent += len(record)  # an alert always goes out, but it counts
        self._out.append(record)
        if CONNECTION_LOG.getEffectiveLevel() <= DEBUG:
            CONNECTION_LOG.debug("%s: sent alert %s", self._who(), alert_text(level, description))

    def _who(self) -> str:
        """The prefix of this connection's log lines."""
        return endpoint(self._config.is_client, None)

    # -- amplification limit ---------------------------------------------------------------------
    def _limit_amplification(self, received: int, sent: int) -> None:
        """Server: until the client proves it receives (its Finished verifies), retransmit only while everything
        sent stays within ``amplification_factor`` times the bytes received from it in this handshake."""
        if self._config.amplification_factor is not None:
            self._amp_limit = True
            self._amp_received = received
            self._amp_sent = sent

    def _emit_limited(self, datagrams: list[bytes]) -> int:
        """Queue the datagrams of a retransmission that fit the amplification budget, starting where the last
        limited one stopped, so that a live client gets every part of a flight in the end; returns how many."""
        factor = self._config.amplification_factor
        assert factor is not None
        budget = int(factor * self._amp_received) - self._amp_sent
        n = len(datagrams)
        start = self._amp_next % n if n else 0
        sent = 0
        for dgram in datagrams[start:] + datagrams[:start]:
            if len(dgram) > budget:
                break
            self._out.append(dgram)
            budget -= len(dgram)
            self._amp_sent += len(dgram)
            sent += 1
        if sent < n:
            self.amplification_blocked += 1
        self._amp_next = start + sent
        return sent

    # -- flights ---------------------------------------------------------------------------------
    def _send_flight(self, messages: list[OutMessage], now: float, *, timer: bool = True) -> None:
        """Send a new flight; ``timer`` arms retransmission (not for a server's final flight)."""
        self._flight = messages
        self._flight_attempt = 0
        self._timeout = self._config.retransmit_initial
        queued = len(self._out)
        # A new flight goes out whole, counted against the budget: the first one answers a ClientHello whose
        # cookie proved the address (RFC 6347 4.2.1), and a server's only other flight follows the client's
        # Finished. Only its retransmissions are limited.
        self._transmit(now, limited=False)
        self.flights_sent += 1
        self._timer_at = now + self._timeout if timer else None
        if HANDSHAKE_LOG.getEffectiveLevel() <= DEBUG:
            datagrams = self._out[queued:]
            HANDSHAKE_LOG.debug("%s: sent flight %s (%d datagram%s, %d bytes)%s", self._who(),
                                flight_text(m.msg_type for m in messages), len(datagrams),
                                "" if len(datagrams) == 1 else "s", sum(map(len, datagrams)),
                                f", retransmission timer {self._timeout:g} s" if timer else "")

    def _transmit(self, now: float, *, limited: bool) -> bool:
        """Pack and queue the current flight; False if the amplification limit let nothing out."""
        datagrams = pack_flight(self._flight, self._config.mtu, self._overhead, self._write_record,
                                self._config.coalesce_records)
        if limited and self._amp_limit:
            if not self._emit_limited(datagrams):
                return False
        else:
            self._out.extend(datagrams)
            if self._amp_limit:
                self._amp_sent += sum(len(d) for d in datagrams)
        self._last_sent = now
        return True

    def _retransmit(self, now: float, *, backoff: bool) -> None:
        if not self._flight:
            return
        sent = self._transmit(now, limited=True)
        if sent:
            self.retransmissions += 1
            self._flight_attempt += 1
        if backoff:
            self._timeout = min(self._timeout * 2, self._config.retransmit_max)
            self._timer_at = now + self._timeout
        if HANDSHAKE_LOG.getEffectiveLevel() <= DEBUG:
            flight = flight_text(m.msg_type for m in self._flight)
            why = "timer expired" if backoff else "peer retransmitted"
            timer = f"next timer in {self._timeout:g} s" if self._timer_at is not None else "no timer"
            if sent:
                HANDSHAKE_LOG.debug("%s: retransmitted flight %s (%s, attempt %d, %s)", self._who(), flight, why,
                                    self._flight_attempt, timer)
            else:
                HANDSHAKE_LOG.debug("%s: retransmission of flight %s held back by the amplification limit (%s)",
                                    self._who(), flight, timer)

    def _stop_timer(self) -> None:
        self._timer_at = None
