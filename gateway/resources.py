"""The gateway's CoAP resources: ``/telemetry`` decodes, authorises, spools and answers.

The device is who the DTLS session authenticated: a PSK identity or a raw public key, looked up in the registry
snapshot; a payload cannot claim another device. A confirmable POST is answered 2.04 only after its envelope is
committed to the spool (aiocoap piggybacks the answer on the ACK when the commit takes less than its
EMPTY_ACK_DELAY, 0.1 s, and sends a separate response otherwise).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import aiocoap
import aiocoap.resource as resource
import cbor2
from aiocoap.numbers.codes import Code

from iotdtls.trust import PeerCredential

from .devices import Credential, Snapshot
from .envelope import PayloadError, decode_payload, encode_envelope, key_from_query, make_envelope, message_id
from .spool import Message, Refused, SpoolError, SpoolFull
from .spool_writer import SpoolWriter

log = logging.getLogger("iotdtls_gateway.resources")

_CODES = {"4.00": Code.BAD_REQUEST, "4.13": Code.REQUEST_ENTITY_TOO_LARGE, "4.15": Code.UNSUPPORTED_CONTENT_FORMAT}


#: The 2.04 of a POST carries this CBOR map when a new key waits for the device: {"cred": true} (docs/gateway.md).
CREDENTIAL_HINT = cbor2.dumps({"cred": True})


def session_credential(remote: Any, snapshot: Snapshot) -> tuple[str, Credential] | None:
    """``(device, credential)`` the DTLS session behind a request authenticated with (valid or not now)."""
    peer: PeerCredential | None = getattr(remote, "peer", None)
    if peer is not None:
        return snapshot.credential("rpk", peer.fingerprint)
    identity: bytes = getattr(remote, "identity", b"")
    return snapshot.credential("psk", identity) if identity else None


def newer_credential(remote: Any, snapshot: Snapshot) -> tuple[str, Credential] | None:
    """A PSK newer than the one this session used, if the device has one waiting (a rotation)."""
    found = session_credential(remote, snapshot)
    if found is None or found[1].kind != "psk":
        return None
    device = snapshot.devices.get(found[0])
    newest = device.newest("psk") if device is not None else None
    if newest is None or newest.generation <= found[1].generation:
        return None
    return found[0], newest


def device_of(remote: Any, snapshot: Snapshot, now: float) -> str | None:
    """The registry device behind a CoAPs request's DTLS session, if it is (still) enabled."""
    peer: PeerCredential | None = getattr(remote, "peer", None)
    if peer is not None:
        return snapshot.device_for_key(peer.fingerprint, now)
    identity: bytes = getattr(remote, "identity", b"")
    return snapshot.device_for_psk(identity, now) if identity else None


class TelemetryResource(resource.Resource):  # type: ignore[misc]
    """``POST /telemetry``: one reading (CBOR, JSON, SenML JSON or SenML CBOR) becomes one spooled envelope."""

    def __init__(self, snapshot: Callable[[], Snapshot], writer: SpoolWriter, *, max_body: int,
                 clock: Callable[[], float] = time.time, random: Callable[[int], bytes] | None = None,
                 on_stored: Callable[[str, str, bool], None] | None = None,
                 hints: Callable[[str], dict[str, Any]] | None = None) -> None:
        super().__init__()
        self._snapshot = snapshot
        #: What else waits for a device (the downlink's {"cfg": true} / {"cmd": N}), told on its 2.04
        self._hints = hints
        self._writer = writer
        self._max_body = max_body
        self._clock = clock
        if random is None:
            import secrets

            random = secrets.token_bytes
        self._random = random
        self._on_stored = on_stored
        #: requests being answered (the service waits for them at shutdown)
        self.pending = 0
        self.stats: dict[str, int] = {"accepted": 0, "duplicates": 0, "refused_full": 0, "bad_request": 0,
                                      "unsupported_format": 0, "too_large": 0, "forbidden": 0, "storage_errors": 0}

    async def needs_blockwise_assembly(self, request: Any) -> bool:
        return True

    async def render_post(self, request: Any) -> aiocoap.Message:
        self.pending += 1
        try:
            return await self._post(request)
        finally:
            self.pending -= 1

    async def _post(self, request: Any) -> aiocoap.Message:
        now = self._clock()
        device = device_of(request.remote, self._snapshot(), now)
        if device is None:
            self.stats["forbidden"] += 1
            return aiocoap.Message(code=Code.FORBIDDEN, payload=b"not an enabled device")
        try:
            key = key_from_query(request.opt.uri_query)
        except PayloadError as exc:
            self.stats["bad_request"] += 1
            return aiocoap.Message(code=Code.BAD_REQUEST, payload=exc.diagnostic.encode())
        content_format = request.opt.content_format
        try:
            data = decode_payload(None if content_format is None else int(content_format), request.payload,
                                  max_size=self._max_body)
        except PayloadError as exc:
            self.stats[{"4.13": "too_large", "4.15": "unsupported_format"}.get(exc.code, "bad_request")] += 1
            answer = aiocoap.Message(code=_CODES.get(exc.code, Code.BAD_REQUEST), payload=exc.diagnostic.encode())
            if exc.code == "4.13":
                answer.opt.size1 = self._max_body
            return answer
        msg_id = message_id(device, key) if key is not None else self._random(16).hex()
        assert content_format is not None  # decode_payload refused a missing one
        body = encode_envelope(make_envelope(device, msg_id, now, int(content_format), data))
        try:
            stored = await self._writer.append(Message(device, msg_id, key, now, body))
        except SpoolFull as exc:
            self.stats["refused_full"] += 1
            return aiocoap.Message(code=Code.SERVICE_UNAVAILABLE, max_age=exc.retry_after,
                                   payload=b"spool full, retry later")
        except Refused:
            self.stats["forbidden"] += 1
            return aiocoap.Message(code=Code.FORBIDDEN, payload=b"not an enabled device")
        except SpoolError as exc:
            self.stats["storage_errors"] += 1
            log.error("storage failure, reading from %s refused: %s", device, exc)
            return aiocoap.Message(code=Code.SERVICE_UNAVAILABLE, max_age=30, payload=b"storage failure")
        self.stats["duplicates" if stored.duplicate else "accepted"] += 1
        if self._on_stored is not None:
            self._on_stored(device, stored.msg_id, stored.duplicate)
        hints = self._hints(device) if self._hints is not None else {}
        if newer_credential(request.remote, self._snapshot()) is not None:
            hints["cred"] = True
        if hints:
            return aiocoap.Message(code=Code.CHANGED, payload=cbor2.dumps(hints), content_format=60)
        return aiocoap.Message(code=Code.CHANGED)


class CredentialsResource(resource.Resource):  # type: ignore[misc]
    """``GET /credentials``: the new key of a rotation, to its device only, over its authenticated session:
    a CBOR map {"identity": text, "psk": bytes, "not_before": seconds}. 4.04 when no new key waits."""

    def __init__(self, snapshot: Callable[[], Snapshot], clock: Callable[[], float] = time.time,
                 on_fetched: Callable[[str, str], None] | None = None) -> None:
        super().__init__()
        self._snapshot = snapshot
        self._clock = clock
        self._on_fetched = on_fetched

    async def render_get(self, request: Any) -> aiocoap.Message:
        snapshot = self._snapshot()
        if device_of(request.remote, snapshot, self._clock()) is None:
            return aiocoap.Message(code=Code.FORBIDDEN, payload=b"not an enabled device")
        found = newer_credential(request.remote, snapshot)
        if found is None or found[1].secret is None:
            return aiocoap.Message(code=Code.NOT_FOUND, payload=b"no new key")
        device, cred = found
        if self._on_fetched is not None:
            self._on_fetched(device, cred.label)
        body = {"identity": cred.label, "psk": cred.secret, "not_before": cred.not_before}
        return aiocoap.Message(code=Code.CONTENT, payload=cbor2.dumps(body), content_format=60)
