"""A flight of five handshake messages in one record is processed at once (regression; found by bench_pk_wire).

With ``coalesce_records=True`` an RPK server that requests a client key sends ServerHello, Certificate,
ServerKeyExchange, CertificateRequest and ServerHelloDone (message_seq 1..5) in a single record. The client
adds every fragment of the record to its Reassembler before it pops any, while its ``next_seq`` is still 1, and
``Reassembler.add`` drops message_seq >= next_seq + max_ahead (4): the ServerHelloDone is discarded and the
handshake stalls in CLIENT_WAIT_DONE until the server's retransmission timer fires (2 s by default, 9 s with
RFC 7925 timers). Any peer that packs a whole flight into one record triggered it. Fixed by a six-message
reassembly window.
"""

from __future__ import annotations

from helpers import PkPair


def _coalesced_pair() -> PkPair:
    return PkPair({"coalesce_records": True}, {"coalesce_records": True, "require_client_auth": True})


def test_five_message_flight_in_one_record_completes_without_retransmission() -> None:
    pair = _coalesced_pair()
    pair.handshake()  # loss-free, no timer fires
    assert pair.client.is_established and pair.server_conn.is_established
