"""Per-connection record state: epochs, sequence numbers, cipher states, replay windows and flights.

This is the lower half of :class:`~iotdtls.connection.DTLSConnection`. A flight is kept as a list of
:class:`~iotdtls.reassembly.OutMessage` and re-packed on every (re)transmission, so each retransmitted record
gets a fresh sequence number while handshake ``message_seq`` values stay the same.
"""

from __future__ import annotations

from .config import DTLSConfiguration
from .constants import AlertDescription, AlertLevel, ContentType
from .errors import InternalError
from .reassembly import OutMessage, pack_flight
from .record import MAX_SEQ, CipherState, encode_plain
from .replay import ReplayWindow


class RecordLayer:
    __slots__ = (
        "_config", "_flight", "_last_sent", "_next_read_cipher", "_out", "_read_cipher", "_read_epoch",
        "_timeout", "_timer_at", "_windows", "_write_cipher", "_write_epoch", "_write_seq", "flights_sent",
        "retransmissions",
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
        self._out: list[bytes] = []
        self._flight: list[OutMessage] = []
        self._timer_at: float | None = None
        self._timeout = config.retransmit_initial
        self._last_sent = float("-inf")
        #: Statistics: flights sent and retransmitted, for demos and benchmarks.
        self.flights_sent = 0
        self.retransmissions = 0

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
        return cipher.protect(content_type, (epoch << 48) | seq, payload)

    def _overhead(self, epoch: int) -> int:
        if epoch == 0 or self._write_cipher is None:
            return 0
        return self._write_cipher.overhead

    def _send_alert(self, level: AlertLevel, description: AlertDescription) -> None:
        self._out.append(self._write_record(self._write_epoch, ContentType.ALERT, bytes((level, description))))

    # -- flights ---------------------------------------------------------------------------------
    def _send_flight(self, messages: list[OutMessage], now: float, *, timer: bool = True) -> None:
        """Send a new flight; ``timer`` arms retransmission (not for a server's final flight)."""
        self._flight = messages
        self._timeout = self._config.retransmit_initial
        self._transmit(now)
        self.flights_sent += 1
        self._timer_at = now + self._timeout if timer else None

    def _transmit(self, now: float) -> None:
        self._out.extend(pack_flight(self._flight, self._config.mtu, self._overhead, self._write_record,
                                     self._config.coalesce_records))
        self._last_sent = now

    def _retransmit(self, now: float, *, backoff: bool) -> None:
        if not self._flight:
            return
        self._transmit(now)
        self.retransmissions += 1
        if backoff:
            self._timeout = min(self._timeout * 2, self._config.retransmit_max)
            self._timer_at = now + self._timeout

    def _stop_timer(self) -> None:
        self._timer_at = None
