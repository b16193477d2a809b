"""Baseline ("peer") figures for the iotdtls benchmarks.

Each public function returns **seconds per operation** (the median of several timed repeats, measured with
:func:`time.perf_counter`) and runs for well under ~3 s.

* :func:`aesccm_floor` - the bare AEAD floor of one record: ``AESCCM.encrypt`` + ``AESCCM.decrypt`` from
  ``cryptography`` with a precomputed nonce and AAD, nothing else.
* :func:`tinydtls_record` - protect + unprotect of one application record through tinydtls (C, via the
  ``DTLSSocket`` Cython bindings), two in-process endpoints wired together in memory.
* :func:`tinydtls_handshake` - one full tinydtls PSK handshake (cookie exchange included), in memory.
* :func:`tinydtls_handshake_wire` - ``(UDP payload bytes, datagrams)`` of one such handshake.

Notes on the ``DTLSSocket.dtls`` API (DTLSSocket 0.2.3, see ``DTLSSocket/dtls.pyx`` in the sdist):

* ``DTLS(read=, write=, event=, pskId=, pskStore=)``; callbacks are ``read(addr, data) -> int``,
  ``write(addr, data) -> int`` (both must return an int, e.g. ``len(data)``; ``addr`` is an ``(ipv6_str,
  port)`` tuple) and ``event(level, code)`` (no session argument).  The client uses ``pskId`` as its
  identity; ``pskStore`` maps identity -> key for the key lookup on both sides.  ``pskId`` is a Cython
  ``char*``: the bytes object must stay alive (and must not contain NUL).
* Addresses are IPv6 only (``inet_pton(AF_INET6, ...)``): ``"127.0.0.1"`` is rejected, so fake peers are
  ``("::1", 1)`` and ``("::1", 2)`` (``"::ffff:127.0.0.1"`` would also do).
* ``connect(addr, port)`` sends the ClientHello synchronously through the write callback and returns a
  ``Connection``.  Dropping that object resets the peer (its ``__dealloc__`` calls ``dtls_reset_peer``), so
  it has to be kept alive while the session is used.  The server side needs no call before its first
  ``handleMessage``.
* ``handleMessage(Session(addr, port), datagram)`` processes one datagram; every resulting datagram is
  emitted synchronously through the write callback and application data through the read callback before
  it returns.  Datagrams are queued and pumped (no re-entrant ``handleMessage`` from inside a callback).
* Completion is signalled by ``event(0, 0x01DE)`` (``DTLS_EVENT_CONNECTED``) on each side; the client also
  reports ``0x01DC`` (``DTLS_EVENT_CONNECT``) when it starts.  The server is connected after the client's
  Finished, the client after the server's Finished.
* With a loss-free in-memory link no timer is needed: ``checkRetransmit()`` only matters on loss and
  returns 0 (nothing pending) after the handshake.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Any, Final

from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from DTLSSocket import dtls  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "aesccm_floor",
    "tinydtls_handshake",
    "tinydtls_handshake_wire",
    "tinydtls_record",
]

PSK_IDENTITY: Final = b"dev1"
PSK_KEY: Final = bytes(range(16))
CLIENT_ADDR: Final = ("::1", 1)
SERVER_ADDR: Final = ("::1", 2)
DTLS_EVENT_CONNECTED: Final = 0x01DE


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


# --------------------------------------------------------------------------------------------------------
# 1. AEAD floor
# --------------------------------------------------------------------------------------------------------


def aesccm_floor(payload_len: int = 64, tag_len: int = 8, *, loops: int = 20000, repeats: int = 9) -> float:
    """Seconds for one AES-128-CCM seal + open of ``payload_len`` bytes (12-byte nonce, 13-byte AAD)."""
    aead = AESCCM(bytes(range(16)), tag_length=tag_len)
    nonce = bytes(range(12))
    aad = bytes(13)
    payload = bytes(payload_len)
    encrypt = aead.encrypt
    decrypt = aead.decrypt
    if decrypt(nonce, encrypt(nonce, payload, aad), aad) != payload:
        raise AssertionError("AESCCM round trip failed")
    samples: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            decrypt(nonce, encrypt(nonce, payload, aad), aad)
        samples.append((time.perf_counter() - t0) / loops)
    return _median(samples)


# --------------------------------------------------------------------------------------------------------
# tinydtls pair wired in memory
# --------------------------------------------------------------------------------------------------------


class _TinyDTLSPair:
    """A tinydtls client and server in one process; their write callbacks feed a shared datagram queue."""

    def __init__(self) -> None:
        # Keep the identity / store objects referenced: DTLS.pskId is a raw char* into the bytes object.
        self._identity = PSK_IDENTITY
        self._store = {PSK_IDENTITY: PSK_KEY}
        # (to_server, datagram) in send order
        self.queue: deque[tuple[bool, bytes]] = deque()
        self.wire: list[tuple[bool, int]] = []  # (from_client, len) of every datagram, for accounting
        self.record_wire = True
        self.received: list[bytes] = []
        self.client_connected = False
        self.server_connected = False
        self.client: Any = dtls.DTLS(
            read=self._on_read,
            write=self._client_write,
            event=self._client_event,
            pskId=self._identity,
            pskStore=self._store,
        )
        self.server: Any = dtls.DTLS(
            read=self._on_read,
            write=self._server_write,
            event=self._server_event,
            pskId=self._identity,
            pskStore=self._store,
        )
        # Sessions as seen by the receiving side: the server sees the client's address and vice versa.
        self.client_session: Any = dtls.Session(*CLIENT_ADDR)
        self.server_session: Any = dtls.Session(*SERVER_ADDR)
        self.connection: Any = None  # client's Connection to the server; must stay referenced

    # callbacks --------------------------------------------------------------------------------------------
    def _client_write(self, _addr: tuple[str, int], data: bytes) -> int:
        self.queue.append((True, data))
        if self.record_wire:
            self.wire.append((True, len(data)))
        return len(data)

    def _server_write(self, _addr: tuple[str, int], data: bytes) -> int:
        self.queue.append((False, data))
        if self.record_wire:
            self.wire.append((False, len(data)))
        return len(data)

    def _on_read(self, _addr: tuple[str, int], data: bytes) -> int:
        self.received.append(data)
        return len(data)

    def _client_event(self, _level: int, code: int) -> None:
        if code == DTLS_EVENT_CONNECTED:
            self.client_connected = True

    def _server_event(self, _level: int, code: int) -> None:
        if code == DTLS_EVENT_CONNECTED:
            self.server_connected = True

    # driving ----------------------------------------------------------------------------------------------
    def pump(self) -> None:
        """Deliver queued datagrams (in order, loss-free) until both sides are quiet."""
        queue = self.queue
        server_handle = self.server.handleMessage
        client_handle = self.client.handleMessage
        while queue:
            to_server, data = queue.popleft()
            if to_server:
                server_handle(self.client_session, data)
            else:
                client_handle(self.server_session, data)

    def handshake(self) -> None:
        self.connection = self.client.connect(*SERVER_ADDR)
        if self.connection is None:
            raise RuntimeError("tinydtls connect() failed")
        self.pump()
        if not (self.client_connected and self.server_connected):
            raise RuntimeError("tinydtls handshake did not complete")

    def close(self) -> None:
        self.connection = None
        self.queue.clear()


# --------------------------------------------------------------------------------------------------------
# 2. tinydtls record protect + unprotect
# --------------------------------------------------------------------------------------------------------


def tinydtls_record(payload_len: int = 64, *, loops: int = 20000, repeats: int = 9) -> float:
    """Seconds for client ``write`` (protect) + server ``handleMessage`` (unprotect) of one record."""
    pair = _TinyDTLSPair()
    pair.handshake()
    pair.record_wire = False
    payload = bytes(payload_len)
    conn = pair.connection
    write = pair.client.write
    handle = pair.server.handleMessage
    session = pair.client_session
    popleft = pair.queue.popleft
    received = pair.received

    # warm-up + correctness check
    write(conn, payload)
    handle(session, popleft()[1])
    if received != [payload] or pair.queue:
        raise AssertionError("tinydtls record did not round-trip")
    received.clear()

    samples: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            write(conn, payload)
            handle(session, popleft()[1])
        samples.append((time.perf_counter() - t0) / loops)
        if len(received) != loops or received[-1] != payload:
            raise AssertionError("tinydtls lost application data")
        received.clear()
    pair.close()
    return _median(samples)


# --------------------------------------------------------------------------------------------------------
# 3. tinydtls handshake
# --------------------------------------------------------------------------------------------------------


def tinydtls_handshake(*, handshakes: int = 2000) -> float:
    """Seconds for one full in-memory tinydtls PSK handshake (ClientHello .. both sides CONNECTED).

    Each handshake uses a fresh client/server context pair; creating the contexts is not timed.
    The figure is the median over ``handshakes`` individually timed handshakes.
    """
    samples: list[float] = []
    for _ in range(handshakes + 5):  # the first few are warm-up
        pair = _TinyDTLSPair()
        pair.record_wire = False
        t0 = time.perf_counter()
        pair.handshake()
        samples.append(time.perf_counter() - t0)
        pair.close()
    return _median(samples[5:])


def tinydtls_handshake_wire() -> tuple[int, int]:
    """``(total UDP payload bytes, datagrams)`` of one tinydtls PSK handshake, both directions."""
    pair = _TinyDTLSPair()
    pair.handshake()
    total = sum(n for _, n in pair.wire)
    count = len(pair.wire)
    pair.close()
    return total, count


def main() -> None:
    dtls.setLogLevel(dtls.DTLS_LOG_EMERG)
    floor = aesccm_floor()
    record = tinydtls_record()
    handshake = tinydtls_handshake()
    wire_bytes, datagrams = tinydtls_handshake_wire()
    print(f"aesccm_floor (64 B, seal+open)        : {floor * 1e6:9.2f} us")
    print(f"tinydtls_record (64 B, protect+unprot.): {record * 1e6:9.2f} us")
    print(f"tinydtls_handshake (PSK, cookie)       : {handshake * 1e6:9.2f} us")
    print(f"tinydtls_handshake_wire                : {wire_bytes} B in {datagrams} datagrams")


if __name__ == "__main__":
    main()
