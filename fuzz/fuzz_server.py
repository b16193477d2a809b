"""Fuzz target (c): the server's per-datagram entry point, ``DTLSServer.receive_datagram``, with one
established session (at the client address of tests/helpers) and fresh source addresses.

Input: one variant byte (``endpoints.SERVER_VARIANTS``: PSK with cookies on / off / small MTU with hint / tight
limits; raw public keys with the client's key requested; PSK and raw-key clients on one server; X.509 with
required client certificates at a 256-byte MTU), then frames ``[tag][len:2][datagram]``. The
tag picks the source address (established client or one of 7 fresh ones, ``endpoints.addr_of``); with bit 7
set, time advances and the server's timers fire before the datagram; with bit 6 set, the epoch-1 records of
the datagram are protected with the keys of the address's connection (a peer that holds the PSK,
``endpoints.seal_for``); bit 5 makes the server send a record to the address first (if established), bit 4
makes it close the address's connection after the datagram.
Bugs: any exception escaping, a connection ending with internal_error, unbounded state, the established
session dying silently, a handshake left half-open after every timer ran.
"""

from __future__ import annotations

from _harness import FuzzBug, frames, instrumented, main

with instrumented(__name__ == "__main__"):
    from endpoints import addr_of, check_events, check_server, probe_seq, seal_for, server_pair
    from helpers import CLIENT_ADDR, drain_server

    from iotdtls import DataReceived, DTLSServer
    from iotdtls.events import Event

SETTLE = 400.0  # beyond the 120 s handshake timeout


def _events(server: DTLSServer) -> list[tuple[object, Event]]:
    events = drain_server(server)
    check_events(e for _, e in events)
    return events


def test_one_input(data: bytes) -> None:
    if not data:
        return
    pair = server_pair(data[0])
    server = pair.server
    session = server.connections[CLIENT_ADDR]
    now = pair.now
    for tag, datagram in frames(data[1:]):
        if tag & 0x80:
            now += ((tag >> 4) & 7) ** 2 * 0.25
            server.handle_timer(now)
            _events(server)
        addr = addr_of(tag)
        if tag & 0x40:
            datagram = seal_for(server.connections.get(addr), datagram)
        conn = server.connections.get(addr)
        if tag & 0x20 and conn is not None and conn.is_established:
            server.send(addr, datagram[:16])
        server.receive_datagram(datagram, addr, now)
        if tag & 0x10:
            server.close(addr)
        _events(server)
        server.datagrams_to_send(now)
        check_server(server)
    # The established session survives anything that cannot authenticate, or ends with an event.
    seq = probe_seq(session, pair.client._write_seq[1])  # past every record the input may have used
    if server.connections.get(CLIENT_ADDR) is session and session.is_established and seq is not None:
        pair.client._write_seq[1] = seq
        pair.client.send(b"probe")
        for d in pair.client.datagrams_to_send(now):
            server.receive_datagram(d, CLIENT_ADDR, now)
        if (CLIENT_ADDR, DataReceived(b"probe")) not in _events(server):
            raise FuzzBug("the established session no longer delivers authentic data")
    # Every timer runs its course: nothing stays half-open.
    while (when := server.get_timer()) is not None and when <= now + SETTLE:
        server.handle_timer(when)
        _events(server)
        server.datagrams_to_send(when)
    check_server(server)
    if server.handshakes_in_progress:
        raise FuzzBug(f"{server.handshakes_in_progress} handshakes still in progress after every timeout")


if __name__ == "__main__":
    main(test_one_input)
