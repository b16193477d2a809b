"""RFC 8449 record_size_limit against GnuTLS 3.7 (and OpenSSL 3.0, which does not implement it), both roles.

TLS_PSK_WITH_AES_128_CCM_8 with the extended master secret. `dtls_relay.RecordRelay` sits between the peers and
reads, on the wire, the record_size_limit of each ClientHello and ServerHello and the size of every protected
record (plaintext = fragment - 16 for CCM_8). What GnuTLS 3.7.9 does, measured here:

* it refuses limits below 512 (its MIN_RECORD_SIZE; RFC 8449 allows 64): as a server it leaves the extension out
  of its ServerHello (not negotiated), as a client it aborts the handshake with illegal_parameter;
* it keeps to a negotiated limit by refusing a larger datagram (EMSGSIZE), not by splitting it: a DTLS record is
  an application datagram;
* gnutls-serv --echo echoes at most 254 bytes per record (a 255-byte buffer), so nothing it sends can exceed a
  limit of 512 or more.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dtls_relay import CLIENT_HELLO, SERVER_HELLO, RecordRelay, record_size_limits
from peers import LOCALHOST, free_udp_port, gnutls_client, gnutls_server, require_gnutls, require_openssl
from test_interop import IDENTITY, KEY, KEY_HEX, finish_client, iotdtls_client, iotdtls_server
from test_interop_resumption import (
    PSK_CCM_8,
    PSK_LINES,
    client_config,
    client_round,
    s_client_round,
    s_server_verbose,
)

from iotdtls import DTLSConfiguration
from iotdtls.aio import serve
from iotdtls.aio.server import ServerSession

pytestmark = pytest.mark.interop

#: gnutls-serv --echo reads into a 255-byte buffer: it echoes at most 254 bytes per record.
GNUTLS_SERV_ECHO_MAX = 254
#: The smallest record_size_limit GnuTLS accepts (its MIN_RECORD_SIZE); RFC 8449 allows 64.
GNUTLS_MIN_LIMIT = 512
#: What GnuTLS advertises (and answers) by default in DTLS 1.2: 2^14.
GNUTLS_DEFAULT_LIMIT = 16384
CCM_8_DATAGRAM_OVERHEAD = 13 + 16  # record header, explicit nonce and tag

@pytest.mark.parametrize("limit", [64, 128, 256])
def test_gnutls_serv_ignores_our_record_size_limit_below_512(limit: int) -> None:
    """gnutls-serv leaves record_size_limit out of its ServerHello when the client asks for less than 512: the
    limit is not negotiated, and GnuTLS may (and does, below 254) send us records larger than it."""
    require_gnutls()
    port = free_udp_port()
    payload = b"g" * GNUTLS_SERV_ECHO_MAX
    with gnutls_server(port, PSK_LINES), RecordRelay(port) as relay:
        run = asyncio.run(client_round(relay.port, client_config(tickets=False, record_size_limit=limit),
                                       payloads=[payload]))
        records = relay.snapshot()
    assert record_size_limits(records, CLIENT_HELLO)[-1] == limit, relay.describe()
    assert record_size_limits(records, SERVER_HELLO) == [None], relay.describe()
    assert run.peer_limit is None
    assert b"".join(run.echoes[0]) == payload
    assert [r.plaintext_len for r in relay.protected("s2c")] == [GNUTLS_SERV_ECHO_MAX], relay.describe()


@pytest.mark.parametrize("limit", [64, 256, 512])
def test_cli_client_record_size_limit_with_gnutls_serv(limit: int) -> None:
    """`iotdtls-client --record-size-limit N` as a user runs it: the echo of a 200-byte line arrives whole in one
    record (below 512 because GnuTLS does not negotiate the limit, at 512 because 200 fit in it)."""
    require_gnutls()
    port = free_udp_port()
    line = "l" * 200
    with gnutls_server(port, PSK_LINES), RecordRelay(port) as relay, \
            iotdtls_client(relay.port, "--record-size-limit", str(limit)) as client:
        client.write_line(line)
        client.expect_line(line, timeout=10)
        finish_client(client)
        records = relay.snapshot()
    negotiated = GNUTLS_DEFAULT_LIMIT if limit >= GNUTLS_MIN_LIMIT else None
    assert record_size_limits(records, SERVER_HELLO) == [negotiated], relay.describe()
    assert [r.plaintext_len for r in relay.protected("s2c")] == [200], relay.describe()


@pytest.mark.parametrize("serv_limit", [None, 512], ids=["gnutls-default", "gnutls-recordsize-512"])
def test_record_size_limit_512_with_gnutls_serv(serv_limit: int | None) -> None:
    """Our limit 512 is negotiated; gnutls-serv answers with its own (16384, or --recordsize), which our client
    then keeps to: with --recordsize 512 it refuses a 513-byte datagram and sends a 512-byte one."""
    require_gnutls()
    port = free_udp_port()
    extra = ("--recordsize", str(serv_limit)) if serv_limit else ()
    payloads = [b"a" * GNUTLS_SERV_ECHO_MAX, b"b" * 512]
    config = client_config(tickets=False, record_size_limit=512, mtu=1400)
    with gnutls_server(port, PSK_LINES, extra=extra), RecordRelay(port) as relay:
        run = asyncio.run(client_round(relay.port, config, payloads=payloads,
                                       oversize=513 if serv_limit else None))
        records = relay.snapshot()
    peer_limit = serv_limit or GNUTLS_DEFAULT_LIMIT
    assert record_size_limits(records, SERVER_HELLO) == [peer_limit], relay.describe()
    assert run.peer_limit == peer_limit
    assert run.max_payload == min(peer_limit, 1400 - CCM_8_DATAGRAM_OVERHEAD)
    assert run.refused == ([513] if serv_limit else [])
    assert [b"".join(r) for r in run.echoes] == payloads
    assert max(len(rec) for r in run.echoes for rec in r) <= 512
    assert max(r.plaintext_len for r in relay.protected("c2s")) == 512, relay.describe()
    assert all(r.plaintext_len <= 512 for r in relay.protected("s2c")), relay.describe()


def test_gnutls_cli_keeps_to_iotdtls_server_record_size_limit() -> None:
    """gnutls-cli offers 16384; iotdtls-server --record-size-limit 512 answers 512, and gnutls-cli then refuses
    (EMSGSIZE, nothing sent) a 601-byte line instead of splitting it: DTLS records are datagrams."""
    require_gnutls()
    port = free_udp_port()
    with iotdtls_server(port, "--record-size-limit", "512", "--mtu", "1400") as server, \
            RecordRelay(port) as relay, gnutls_client(relay.port, IDENTITY, KEY_HEX) as client:
        client.wait_handshake(timeout=10)
        client.write_line("a" * 511)  # 512 bytes with the newline: the limit exactly
        client.expect_line("a" * 511)
        client.write_line("b" * 600)
        client.wait_output("EMSGSIZE", "stderr", timeout=10)
        client.write_line("still there")
        client.expect_line("still there")
        server.wait_output("handshake complete")
        records = relay.snapshot()
    assert record_size_limits(records, CLIENT_HELLO)[-1] == GNUTLS_DEFAULT_LIMIT, relay.describe()
    assert record_size_limits(records, SERVER_HELLO) == [512], relay.describe()
    sizes = [r.plaintext_len for r in relay.protected("c2s")]
    assert sizes == [512, len("still there\n")], relay.describe()


@pytest.mark.parametrize("limit", [64, 256])
def test_gnutls_cli_refuses_iotdtls_server_record_size_limit_below_512(limit: int) -> None:
    """GnuTLS aborts the handshake with illegal_parameter when a server's record_size_limit is below 512, a value
    RFC 8449 allows: an iotdtls server meant for GnuTLS clients must not advertise less than 512."""
    require_gnutls()
    port = free_udp_port()
    with iotdtls_server(port, "--record-size-limit", str(limit)) as server, \
            gnutls_client(port, IDENTITY, KEY_HEX) as client:
        server.wait_output("handshake failed: client sent alert: illegal_parameter", timeout=10)
        assert client.wait_exit(timeout=10) != 0, client.transcript()
        assert "illegal parameter" in client.stderr.text(), client.transcript()


@dataclass
class ServerView:
    sessions: list[tuple[bool, int | None, int]] = field(default_factory=list)  # (resumed, peer limit, max payload)
    refused: list[int] = field(default_factory=list)


async def serve_chunked_replies(port: int, reply: bytes, view: ServerView, drive: Any, *, limit: int | None = None
                                ) -> None:
    """Serve (our asyncio server, mtu 1400): every datagram is answered with `reply`, which first goes to send()
    whole (refused when larger than the client's limit) and then in chunks of the connection's max_payload.
    `drive` runs in a thread while the server serves."""
    config = DTLSConfiguration(is_client=False, psk_store={IDENTITY.encode(): KEY}, cipher_suites=[PSK_CCM_8],
                               extended_master_secret=True, require_extended_master_secret=True, mtu=1400,
                               record_size_limit=limit, retransmit_initial=0.5)
    holder: list[Any] = []

    async def handler(session: ServerSession) -> None:
        conn = holder[0].core.connections.get(session.peer)
        view.sessions.append((conn.resumed, conn.record_size_limit, conn.max_payload))
        while True:
            try:
                await session.recv()
            except Exception:  # closed by the peer
                return
            try:
                await session.send(reply)
            except ValueError:
                view.refused.append(len(reply))
                for i in range(0, len(reply), conn.max_payload):
                    await session.send(reply[i:i + conn.max_payload])

    server = await serve(LOCALHOST, port, config, handler)
    holder.append(server)
    try:
        async with asyncio.timeout(40):
            await asyncio.to_thread(drive)
    finally:
        server.close()


def test_iotdtls_server_keeps_to_gnutls_cli_record_size_limit() -> None:
    """gnutls-cli --recordsize 512 (it then also sends max_fragment_length, which iotdtls leaves unanswered): our
    server refuses to send a 1500-byte datagram whole and the reply goes in 512-byte records, in the full and the
    resumed handshake alike."""
    require_gnutls()
    port = free_udp_port()
    reply = b"r" * 1499 + b"\n"
    view = ServerView()
    relay = RecordRelay(port)

    def drive() -> None:
        with gnutls_client(relay.port, IDENTITY, KEY_HEX, extra=["--recordsize", "512", "--resume"]) as client:
            client.wait_output("*** This is a resumed session", "stdout", timeout=15)
            client.write_line("ask")
            client.expect_line("r" * 1499, timeout=10)

    try:
        asyncio.run(serve_chunked_replies(port, reply, view, drive))
    finally:
        relay.close()
    records = relay.snapshot()
    assert record_size_limits(records, CLIENT_HELLO)[-2:] == [512, 512], relay.describe()
    assert record_size_limits(records, SERVER_HELLO) == [GNUTLS_DEFAULT_LIMIT] * 2, relay.describe()
    assert view.sessions == [(False, 512, 512), (True, 512, 512)]
    assert view.refused == [len(reply)]
    assert [r.plaintext_len for r in relay.protected("s2c")] == [512, 512, 476], relay.describe()


def test_openssl_does_not_negotiate_record_size_limit(tmp_path: Path) -> None:
    """OpenSSL 3.0 has no RFC 8449: s_server answers our record_size_limit with nothing, s_client sends none, so
    iotdtls-server --record-size-limit 512 puts none in its ServerHello either, and both sides work unlimited."""
    require_openssl()
    port = free_udp_port()
    with s_server_verbose(port), RecordRelay(port) as relay:
        run = asyncio.run(client_round(relay.port, client_config(tickets=False, record_size_limit=512), echo=False))
        records = relay.snapshot()
    assert record_size_limits(records, CLIENT_HELLO)[-1] == 512, relay.describe()
    assert record_size_limits(records, SERVER_HELLO) == [None] and run.peer_limit is None, relay.describe()
    port = free_udp_port()
    with iotdtls_server(port, "--record-size-limit", "512") as server, RecordRelay(port) as relay:
        s_client_round(relay.port, "-sess_out", tmp_path / "sess", "no limit here")
        server.wait_handshake()
        records = relay.snapshot()
    assert set(record_size_limits(records, CLIENT_HELLO)) == {None}, relay.describe()
    assert record_size_limits(records, SERVER_HELLO) == [None], relay.describe()
