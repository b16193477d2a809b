"""Fuzz target (d): a client connection in each handshake state (before connect, waiting for the
HelloVerifyRequest / ServerHello, ServerKeyExchange or ServerHelloDone, ServerHelloDone, ChangeCipherSpec,
Finished, and established; for ECDHE-ECDSA with raw public keys or X.509: waiting for the Certificate, the
ServerKeyExchange, a CertificateRequest or ServerHelloDone, ServerHelloDone after a CertificateRequest (with and
without a key of its own), Finished, and established), fed arbitrary datagrams.

Input: one state byte (``states.CLIENT_STATES``), then frames ``[tag][len:2][datagram]``; with bit 7 of the
tag set, time advances and the client's timer fires first; with bit 6 set on a client that has not started,
``connect()`` is called first; with bit 5 set, the epoch-1 records of the datagram are protected with the keys
the client reads (a server that holds the PSK, ``endpoints.seal_for``); bit 4 makes an established client send
a record first, bit 3 makes the client ``close()`` after the datagram.
Bugs: any exception escaping, termination with internal_error, unbounded buffers, a reassembler that keeps
fragments after the handshake, a handshake still running after every timer ran.
"""

from __future__ import annotations

from _harness import FuzzBug, frames, instrumented, main

with instrumented(__name__ == "__main__"):
    from endpoints import check_connection, check_events, client_pair, seal_for
    from helpers import drain

    from iotdtls.handshake import State

SETTLE = 400.0


def test_one_input(data: bytes) -> None:
    if not data:
        return
    pair = client_pair(data[0])
    client = pair.client
    now = pair.now
    for tag, datagram in frames(data[1:]):
        if tag & 0x80:
            now += ((tag >> 4) & 3) ** 2 * 0.5
            client.handle_timer(now)
        if tag & 0x40 and client.state is State.CLIENT_START:
            client.connect(now)
        if tag & 0x20:
            datagram = seal_for(client, datagram)
        if tag & 0x10 and client.is_established:
            client.send(datagram[:16])
        client.receive_datagram(datagram, now)
        if tag & 0x08:
            client.close()
        check_events(drain(client))
        client.datagrams_to_send(now)
        check_connection(client)
    while (when := client.get_timer()) is not None and when <= now + SETTLE:
        client.handle_timer(when)
        check_events(drain(client))
        client.datagrams_to_send(when)
    check_connection(client)
    if client.is_handshaking:
        raise FuzzBug("handshake still running after the handshake timeout")


if __name__ == "__main__":
    main(test_one_input)
