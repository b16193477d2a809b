"""aiocoap's message manager for the CoAPs server, with its state bounded.

:class:`BoundedMessageManager` is aiocoap's ``MessageManager`` (the RFC 7252 message layer: message IDs,
deduplication, confirmable retransmission, piggybacking) with the parts that grow per request replaced:

* deduplication keeps encoded replies in a :class:`~iotdtls.coap.dedup.DedupCache` (bytes, lazy expiry, bounded)
  instead of ``Message`` objects with a timer each;
* blockwise transfers are done here, before aiocoap's resources see the request: Block1 blocks go into a
  :class:`~iotdtls.coap.blockwise.Block1Assembler` and are answered 2.31 Continue from here; the last block
  becomes one whole request without Block1, so aiocoap's per-resource ``Block1Spool`` stores nothing, and its
  response gets the Block1 option back. Block2 is stripped from requests too, the remote reports a payload size
  aiocoap never slices at (so its ``Block2Cache`` stays empty), and responses larger than a block are sliced
  here, with a bounded :class:`~iotdtls.coap.blockwise.Block2Cache` serving the following blocks;
* observations are capped per session, and notifications follow :class:`~iotdtls.coap.observe.ObserverRegistry`
  (a confirmable one regularly, the newest held back while one is in flight);
* confirmable messages waiting behind an unacknowledged one (aiocoap's ``_backlogs``) are capped per session.

All of a session's state goes when its DTLS session ends (the transport's ``dispatch_error``).

This overrides private methods of aiocoap 0.4.17's ``MessageManager`` (``_deduplicate_message``,
``_store_response_for_duplicates``, ``_send_initially``, ``_process_request``, ``_remove_exchange``,
``_retransmit``) and reads ``_backlogs`` and ``_active_exchanges``; the ``coap`` extra pins that version.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import ACK, CON, NON, RST
from aiocoap.optiontypes import BlockOption

from . import wire
from .blockwise import (
    MAX_SZX,
    Block1Assembler,
    Block2Cache,
    CachedResponse,
    Complete,
    Continue,
    block_size,
    key_cost,
    slice_block,
)
from .dedup import DedupCache
from .limits import ServerLimits
from .observe import ObserverRegistry

_KEY_IGNORES = (OptionNumber.BLOCK1, OptionNumber.BLOCK2, OptionNumber.OBSERVE)
#: Options of a response that a block served from the cache does not repeat (it gets its own Block2/Size2).
_NOT_CACHED = frozenset((wire.OBSERVE, wire.BLOCK1, wire.BLOCK2, wire.SIZE2, int(OptionNumber.NO_RESPONSE)))
_SAFE_METHODS = (Code.GET, Code.FETCH)
_INFO = "_iotdtls_blockwise"  # attribute of an incoming request handed to aiocoap: what was stripped from it

#: Counters of :attr:`BoundedMessageManager.stats`, all starting at 0.
COUNTERS = ("duplicates", "uploads_completed", "uploads_too_large", "uploads_refused_full", "uploads_incomplete",
            "uploads_bad_block", "block2_served", "block2_rerendered", "block2_incomplete", "block2_out_of_range",
            "block2_not_cached", "observers_refused", "notifications_held", "notifications_replaced",
            "observers_dropped", "backlog_dropped")

Notification = tuple[Any, Callable[[], None]]  # an aiocoap response Message and its messageerror monitor


class _Stripped:
    """What was taken off a request before aiocoap saw it, to be put on (or applied to) its response."""

    __slots__ = ("block1", "block2")

    def __init__(self) -> None:
        self.block1: tuple[int, int] | None = None  # the last Block1 block's (num, szx)
        self.block2: tuple[int, int] | None = None  # the Block2 block asked for, (num, szx)


def request_key(request: Any) -> tuple[Hashable, int]:
    """The key all blocks of one transfer share, and its estimated size in bytes."""
    key = request.get_cache_key(_KEY_IGNORES)
    options = key[1]
    size = sum(len(v) if isinstance(v, bytes | str) else 8 for _n, v in options)
    return key, key_cost(len(options), size)


class BoundedMessageManager(MessageManager):  # type: ignore[misc]
    """aiocoap's MessageManager with bounded deduplication, blockwise, Observe and backlog state."""

    def __init__(self, token_manager: Any, limits: ServerLimits) -> None:
        super().__init__(token_manager)
        self.limits = limits
        self.stats: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._dedup = DedupCache(max_session_bytes=limits.dedup_bytes_per_session,
                                 max_total_bytes=limits.dedup_bytes_total)
        self._uploads = Block1Assembler(max_per_session=limits.max_uploads_per_session,
                                        max_bytes=limits.max_upload_bytes, max_total_bytes=limits.upload_bytes_total,
                                        lifetime=limits.upload_lifetime)
        self._blocks = Block2Cache(max_per_session=limits.max_block2_per_session,
                                   max_total_bytes=limits.block2_bytes_total, lifetime=limits.block2_lifetime)
        self._observers: ObserverRegistry[Notification] = ObserverRegistry(
            max_per_session=limits.max_observers_per_session, con_every=limits.con_notification_every,
            con_interval=limits.con_notification_interval)

    def gauges(self) -> dict[str, int]:
        """What is held right now, and what the stores evicted or expired so far."""
        return {"dedup_entries": len(self._dedup), "dedup_bytes": self._dedup.total_bytes,
                "dedup_evicted": self._dedup.evicted, "uploads": len(self._uploads),
                "upload_bytes": self._uploads.total_bytes, "uploads_evicted": self._uploads.evicted,
                "uploads_expired": self._uploads.expired, "block2_entries": len(self._blocks),
                "block2_bytes": self._blocks.total_bytes, "block2_evicted": self._blocks.evicted,
                "observers": len(self._observers),
                "backlog": sum(len(b) for b in self._backlogs.values())}

    def _now(self) -> float:
        return float(self.loop.time())

    # -- sessions ending -------------------------------------------------------------------------
    def dispatch_error(self, error: BaseException, remote: Any) -> None:
        super().dispatch_error(error, remote)  # ends the remote's requests and observations (aiocoap)
        self.forget(remote)

    def forget(self, remote: Any) -> None:
        """Drop everything kept for ``remote`` (its DTLS session ended)."""
        self._dedup.drop_session(remote)
        self._uploads.drop_session(remote)
        self._blocks.drop_session(remote)
        self._observers.drop_session(remote)

    # -- deduplication ---------------------------------------------------------------------------
    def _deduplicate_message(self, message: Any) -> bool:
        reply = self._dedup.seen(message.remote, message.mid, self._now())
        if reply is None:
            return False
        self.stats["duplicates"] += 1
        if message.mtype is CON and reply:
            self.message_interface.send_bytes(message.remote, reply)
        return True

    def _store_response_for_duplicates(self, message: Any) -> None:
        pass  # _send_initially keeps the encoded reply

    def _send_initially(self, message: Any, messageerror_monitor: Callable[[], None] | None = None) -> None:
        if message.mtype is CON:
            assert messageerror_monitor is not None, "messageerror_monitor needs to be set for CONs"
            self._add_exchange(message, messageerror_monitor)
        data = message.encode()
        if message.mtype is ACK or message.mtype is RST:  # carries the request's message ID
            self._dedup.answered(message.remote, message.mid, data, self._now())
        self.message_interface.send_bytes(message.remote, data)

    def _reply(self, request: Any, code: int, options: Iterable[tuple[int, bytes]] = (), payload: bytes = b"") -> None:
        """Answer ``request`` from here (piggybacked on the ACK of a CON), without aiocoap's request layer."""
        if request.mtype is CON:
            mtype, mid = wire.ACK, request.mid
        else:
            mtype, mid = wire.NON, self._next_message_id()
        data = wire.encode(mtype, code, mid, request.token, options, payload)
        if mtype == wire.ACK:
            self._dedup.answered(request.remote, mid, data, self._now())
        self.message_interface.send_bytes(request.remote, data)

    # -- incoming requests -----------------------------------------------------------------------
    def _process_request(self, request: Any) -> None:
        now = self._now()
        stripped = _Stripped()
        if request.opt.block1 is not None and not self._take_block1(request, stripped, now):
            return
        if request.opt.block2 is not None and not self._take_block2(request, stripped, now):
            return
        if stripped.block1 is not None or stripped.block2 is not None:
            setattr(request, _INFO, stripped)
        self._check_observe(request, now)
        super()._process_request(request)

    def _take_block1(self, request: Any, stripped: _Stripped, now: float) -> bool:
        """Feed a Block1 block; True if the request is now whole (and goes on to aiocoap without Block1)."""
        block = request.opt.block1
        key, cost = request_key(request)
        outcome = self._uploads.feed(request.remote, key, cost, block.block_number, block.more, block.size_exponent,
                                     request.payload, request.opt.size1, now)
        if isinstance(outcome, Continue):
            self._reply(request, wire.CONTINUE, [(wire.BLOCK1, wire.block_value(outcome.num, True, outcome.szx))])
            return False
        if isinstance(outcome, Complete):
            self.stats["uploads_completed"] += 1
            request.payload = outcome.body
            request.opt.block1 = None
            stripped.block1 = (outcome.num, outcome.szx)
            return True
        self.stats[outcome.reason] += 1
        options = [] if outcome.size1 is None else [(wire.SIZE1, wire.uint(outcome.size1))]
        self._reply(request, outcome.code, options, outcome.diagnostic)
        return False

    def _take_block2(self, request: Any, stripped: _Stripped, now: float) -> bool:
        """A Block2 request: serve a later block from the cache (False), or strip the option and let aiocoap
        render the whole response, which :meth:`_shape_response` slices (True)."""
        block = request.opt.block2
        szx = min(block.size_exponent, MAX_SZX, request.remote.maximum_block_size_exp)
        num = block.block_number * block_size(min(block.size_exponent, MAX_SZX)) // block_size(szx)
        if num > 0:
            key, _cost = request_key(request)
            cached = self._blocks.get(request.remote, key, now)
            if cached is not None:
                self._serve_block(request, key, cached, num, szx)
                return False
            if request.code not in _SAFE_METHODS:  # a POST is not run again for its later blocks
                self.stats["block2_incomplete"] += 1
                self._reply(request, wire.REQUEST_ENTITY_INCOMPLETE)
                return False
            self.stats["block2_rerendered"] += 1
        request.opt.block2 = None
        stripped.block2 = (num, szx)
        return True

    def _serve_block(self, request: Any, key: Hashable, cached: CachedResponse, num: int, szx: int) -> None:
        chunk = slice_block(cached.payload, num, szx)
        if chunk is None:
            self.stats["block2_out_of_range"] += 1
            self._reply(request, wire.BAD_REQUEST, (), b"Block request out of bounds")
            return
        data, more = chunk
        self.stats["block2_served"] += 1
        if not more:
            self._blocks.pop(request.remote, key)
        self._reply(request, cached.code, [*cached.options, (wire.BLOCK2, wire.block_value(num, more, szx))], data)

    def _check_observe(self, request: Any, now: float) -> None:
        remote, token = request.remote, request.token
        if request.opt.observe == 0:
            incoming = self.token_manager.incoming_requests or {}
            if not self._observers.reserve(remote, token, request.mtype is CON, now,
                                           lambda t: (t, remote) in incoming):
                self.stats["observers_refused"] += 1
                request.opt.observe = None  # served as a plain response (RFC 7641 section 4.1)
        elif self._observers.get(remote, token) is not None:
            self._observers.drop(remote, token)  # a new request on the token replaces the observation

    # -- outgoing responses ----------------------------------------------------------------------
    def send_message(self, message: Any, messageerror_monitor: Callable[[], None]) -> Any:
        if not message.code.is_response() or self._active_exchanges is None:
            return super().send_message(message, messageerror_monitor)
        remote, now = message.remote, self._now()
        observation = self._observers.get(remote, message.token)
        notification = False
        if observation is not None:
            if message.opt.observe is None or not message.code.is_successful():
                self._observers.drop(remote, message.token)  # the last response of the observation
            elif not observation.established:
                observation.established = True  # the registration's own response
            else:
                if observation.in_flight is not None:
                    self.stats["notifications_held"] += 1
                    if self._observers.hold(observation, (message, messageerror_monitor)):
                        self.stats["notifications_replaced"] += 1
                    return None
                notification = True
                reliability = message.transport_tuning.reliability
                confirmable = (reliability is True or (reliability is None and observation.confirmable)
                               or self._observers.confirmable_due(observation, now))
                message.mtype = CON if confirmable else NON
                self._observers.sent(observation, confirmable, now)
        self._shape_response(message, now)
        result = super().send_message(message, messageerror_monitor)
        if notification and message.mtype is CON and observation is not None:
            observation.in_flight = message.mid
        self._bound_backlog(remote)
        return result

    def _shape_response(self, message: Any, now: float) -> None:
        """Put the Block1 option back on the response to an assembled request, and cut a response larger than
        a block (or asked for in blocks) to the block asked for, keeping the rest for the following blocks."""
        request = getattr(message, "request", None)
        if request is None or message.opt.block2 is not None:
            return  # not a response to a request (never here), or the resource did its own blockwise
        stripped: _Stripped | None = getattr(request, _INFO, None)
        if stripped is not None and stripped.block1 is not None:
            num, szx = stripped.block1
            stripped.block1 = None  # the first response only, not notifications
            message.opt.block1 = BlockOption.BlockwiseTuple(num, False, szx)
        asked = stripped.block2 if stripped is not None else None
        num, szx = asked if asked is not None else (0, message.remote.maximum_block_size_exp)
        payload = message.payload
        if num == 0 and len(payload) <= block_size(szx):
            return
        chunk = slice_block(payload, num, szx)
        if chunk is None:
            self.stats["block2_out_of_range"] += 1
            message.code = Code.BAD_REQUEST
            message.payload = b"Block request out of bounds"
            message.opt = type(message.opt)()
            return
        data, more = chunk
        if more:
            key, cost = request_key(request)
            options = tuple((int(o.number), o.encode()) for o in message.opt.option_list()
                            if int(o.number) not in _NOT_CACHED)
            if not self._blocks.put(message.remote, key, CachedResponse(int(message.code), options, payload), cost,
                                    now):
                self.stats["block2_not_cached"] += 1
        message.payload = data
        message.opt.block2 = BlockOption.BlockwiseTuple(num, more, szx)
        if num == 0:
            message.opt.size2 = len(payload)

    # -- confirmable exchanges -------------------------------------------------------------------
    def _remove_exchange(self, message: Any) -> None:
        super()._remove_exchange(message)
        observation = self._observers.acknowledged(message.remote, message.mid)
        if observation is None:
            return
        if message.mtype is RST:  # aiocoap's monitor has ended the observation
            self._observers.drop(message.remote, observation.token)
            return
        pending, observation.pending = observation.pending, None
        if pending is not None:
            self.send_message(*pending)

    def _retransmit(self, message: Any, timeout: float, retransmission_counter: int) -> None:
        super()._retransmit(message, timeout, retransmission_counter)
        if self._active_exchanges is not None and (message.remote, message.mid) not in self._active_exchanges:
            # aiocoap gave up: ConRetransmitsExceeded ended every request and observation of the remote
            self.stats["observers_dropped"] += self._observers.drop_session(message.remote)

    def _bound_backlog(self, remote: Any) -> None:
        backlog = self._backlogs.get(remote)
        if backlog is None or len(backlog) <= self.limits.max_backlog_per_session:
            return
        dropped, monitor = backlog.pop()
        self.stats["backlog_dropped"] += 1
        observation = self._observers.acknowledged(remote, dropped.mid)
        if observation is not None:
            self._observers.drop(remote, observation.token)
        if monitor is not None:
            self.loop.call_soon(monitor)  # ends the request or observation it belonged to
