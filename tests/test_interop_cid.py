"""RFC 9146 Connection IDs against a real peer: iotdtls and Bouncy Castle 1.80 (tests/bc_peer.py), both roles.

TLS_PSK_WITH_AES_128_CCM_8, DTLS 1.2, the extended master secret required on both sides. Our side runs through
the asyncio API (iotdtls.aio.connect / serve); BC through tests/bcpeer/BcPeer.java. Each case checks the CIDs each
side reports (ours `connection_id` is the CID we receive, `peer_connection_id` the one we send; BcPeer prints
`cid_in`/`cid_out` the same way), data both ways, and close_notify.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from bc_peer import BcClientResult, BcHandshake, bc_classpath, bc_server, run_bc_client
from peers import free_udp_port

from iotdtls import DTLSConfiguration
from iotdtls.aio import connect, serve
from iotdtls.aio.server import ServerSession

pytestmark = pytest.mark.interop

KEY_HEX = "00112233445566778899aabbccddeeff"
KEY = bytes.fromhex(KEY_HEX)
IDENTITY = b"dev1"
PSK_CCM_8 = 0xC0A8
DEADLINE = 30.0  # a whole test, JVM start included

# (our CID length, BC's CID length): a CID in each direction, an empty one each way, and none at all
CID_CASES = [(4, 6), (0, 6), (6, 0), (5, 5), (None, 6), (4, None)]
CID_IDS = ["ours4-bc6", "ours0-bc6", "ours6-bc0", "ours5-bc5", "ours-none-bc6", "ours4-bc-none"]


@pytest.fixture(autouse=True)
def _bouncycastle() -> None:
    bc_classpath()  # skips (or fails with IOTDTLS_REQUIRE_PEERS=1) without Java or the jars; compiles once


def _config(is_client: bool, cid: int | None, **kw: Any) -> DTLSConfiguration:
    creds: dict[str, Any] = {"psk_identity": IDENTITY, "psk": KEY} if is_client else {"psk_store": {IDENTITY: KEY}}
    return DTLSConfiguration(
        is_client=is_client, cipher_suites=[PSK_CCM_8], cid_length=cid, extended_master_secret=True,
        require_extended_master_secret=True, retransmit_initial=1.0, retransmit_max=4.0, handshake_timeout=15.0,
        **creds, **kw,
    )  # fmt: skip


def _check_cids(ours: tuple[bytes | None, bytes | None], bc: BcHandshake, our_len: int | None,
                bc_len: int | None, where: str) -> None:
    """`ours` = (connection_id, peer_connection_id) of our side."""
    if our_len is None or bc_len is None:  # no CID unless both sides send the extension (RFC 9146 section 3)
        assert ours == (None, None), where
        assert (bc.cid_in, bc.cid_out) == (None, None), where
        return
    assert ours[0] is not None and len(ours[0]) == our_len, where
    assert bc.cid_in is not None and len(bc.cid_in) == bc_len, where
    assert ours == (bc.cid_out, bc.cid_in), f"our (receive, send) CIDs {ours} vs BC's {bc}; {where}"


# --------------------------------------------------------------------------------------------------
# Our client, BC server
# --------------------------------------------------------------------------------------------------


@dataclass
class ClientRun:
    cids: tuple[bytes | None, bytes | None] = (None, None)
    suite: int = 0
    echoes: list[bytes] = field(default_factory=list)


async def _our_client(port: int, cid: int | None, messages: list[bytes], *, rebind_after: int | None = None,
                      **kw: Any) -> ClientRun:
    run = ClientRun()
    async with asyncio.timeout(DEADLINE), connect("127.0.0.1", port, _config(True, cid, **kw)) as session:
        conn = session.connection
        run.cids = (conn.connection_id, conn.peer_connection_id)
        run.suite = conn.cipher_suite
        for i, message in enumerate(messages):
            if i == rebind_after:
                await session.rebind()
            await session.send(message)
            run.echoes.append(await asyncio.wait_for(session.recv(), 5.0))
    return run


@pytest.mark.parametrize(("ours", "theirs"), CID_CASES, ids=CID_IDS)
def test_our_client_bc_server(ours: int | None, theirs: int | None) -> None:
    port = free_udp_port()
    messages = [b"reading 1", "température 21.5".encode(), b"x" * 300]
    with bc_server(port, KEY_HEX, theirs) as server:
        run = asyncio.run(_our_client(port, ours, messages))
        assert run.echoes == messages, server.transcript()
        assert run.suite == PSK_CCM_8
        assert [server.recv() for _ in messages] == [m.decode() for m in messages]
        server.next_event("CLOSED")  # our close_notify
        assert server.wait_closed() == 0, server.transcript()
        _check_cids(run.cids, server.handshake(), ours, theirs, server.transcript())


def test_our_client_bc_server_with_cid_padding() -> None:
    # Padded inner plaintext (RFC 9146 section 4: zeros after the real content type), which BC must strip.
    port = free_udp_port()
    messages = [b"a", b"bb" * 20]
    with bc_server(port, KEY_HEX, 6) as server:
        run = asyncio.run(_our_client(port, 4, messages, cid_padding=16))
        assert run.echoes == messages, server.transcript()
        assert server.lines("RECV")[:2] == [m.decode() for m in messages]
        _check_cids(run.cids, server.handshake(), 4, 6, server.transcript())


@pytest.mark.parametrize(("ours", "theirs"), [(0, 6), (4, 6)], ids=["ours0-bc6", "ours4-bc6"])
def test_our_client_changes_source_port_mid_session(ours: int, theirs: int) -> None:
    # NAT rebinding: our client goes on from a new UDP socket; BC finds the session by its CID in our records and
    # moves its replies to the new address (it prints PEER), with no new handshake.
    port = free_udp_port()
    messages = [b"before 1", b"before 2", b"after 1", b"after 2"]
    with bc_server(port, KEY_HEX, theirs) as server:
        run = asyncio.run(_our_client(port, ours, messages, rebind_after=2))
        assert run.echoes == messages, server.transcript()
        server.next_event("CLOSED")
        assert server.wait_closed() == 0, server.transcript()
        first = server.client_address()
        moved = server.peer_updates()
        assert len(moved) == 1 and moved[0] != first, server.transcript()
        assert len(server.lines("HANDSHAKE")) == 1
        assert server.lines("RECV") == [m.decode() for m in messages]
        _check_cids(run.cids, server.handshake(), ours, theirs, server.transcript())


class _Relay:
    """A UDP relay on 127.0.0.1 between one client and a server port, keeping every datagram both ways."""

    class _Side(asyncio.DatagramProtocol):
        def __init__(self, on_datagram: Any) -> None:
            self.on_datagram = on_datagram

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.on_datagram(data, addr)

    def __init__(self) -> None:
        self.log: list[tuple[str, bytes]] = []
        self._client: Any = None
        self._front: asyncio.DatagramTransport | None = None
        self._back: asyncio.DatagramTransport | None = None

    async def start(self, target_port: int) -> int:
        loop = asyncio.get_running_loop()
        self._front, _ = await loop.create_datagram_endpoint(lambda: self._Side(self._from_client),
                                                             local_addr=("127.0.0.1", 0))
        self._back, _ = await loop.create_datagram_endpoint(lambda: self._Side(self._from_server),
                                                            remote_addr=("127.0.0.1", target_port))
        port: int = self._front.get_extra_info("sockname")[1]
        return port

    def _from_client(self, data: bytes, addr: Any) -> None:
        self._client = addr
        self.log.append(("c2s", data))
        if self._back is not None:
            self._back.sendto(data)

    def _from_server(self, data: bytes, addr: Any) -> None:
        self.log.append(("s2c", data))
        if self._front is not None and self._client is not None:
            self._front.sendto(data, self._client)

    def close(self) -> None:
        for transport in (self._front, self._back):
            if transport is not None:
                transport.close()


def _records(datagram: bytes, cid_len: int) -> list[tuple[int, int, bytes | None, int]]:
    """(content type, epoch, CID or None, length of the protected part) of each DTLS 1.2 record."""
    out: list[tuple[int, int, bytes | None, int]] = []
    pos = 0
    while pos + 13 <= len(datagram):
        ctype, epoch = datagram[pos], int.from_bytes(datagram[pos + 3 : pos + 5], "big")
        pos += 11
        cid = None
        if ctype == 25:
            cid, pos = datagram[pos : pos + cid_len], pos + cid_len
        length = int.from_bytes(datagram[pos : pos + 2], "big")
        out.append((ctype, epoch, cid, length))
        pos += 2 + length
    assert pos == len(datagram), f"trailing bytes in {datagram.hex()}"
    return out


@pytest.mark.parametrize(("ours", "theirs", "padding"), [(4, 6, 0), (0, 6, 0), (6, 0, 0), (6, 4, 16)],
                         ids=["ours4-bc6", "ours0-bc6", "ours6-bc0", "ours6-bc4-padded"])
def test_cid_records_on_the_wire(ours: int, theirs: int, padding: int) -> None:
    # Every record of epoch 1 (Finished included) carries the CID its receiver asked for, as a tls12_cid (25)
    # record; a direction whose CID is empty uses the plain record format. CCM_8 adds 8 bytes of explicit nonce
    # and 8 of tag; the inner plaintext adds its real content type, then our padding to a multiple of `padding`.
    port = free_udp_port()
    relay = _Relay()
    text = b"hello"

    async def main() -> ClientRun:
        relay_port = await relay.start(port)
        try:
            return await _our_client(relay_port, ours, [text], cid_padding=padding)
        finally:
            relay.close()

    with bc_server(port, KEY_HEX, theirs) as server:
        run = asyncio.run(main())
        assert run.echoes == [text]
        bc = server.handshake()
    _check_cids(run.cids, bc, ours, theirs, server.transcript())
    assert bc.cid_in is not None and run.cids[0] is not None
    seen: dict[str, list[tuple[int, bytes | None, int]]] = {"c2s": [], "s2c": []}
    for direction, datagram in relay.log:
        cid = bc.cid_in if direction == "c2s" else run.cids[0]  # the CID the receiver asked for
        for ctype, epoch, rec_cid, length in _records(datagram, len(cid)):
            if epoch == 1:
                seen[direction].append((ctype, rec_cid, length))
                if cid:
                    assert (ctype, rec_cid) == (25, cid), f"{direction} record type {ctype}, CID {rec_cid!r}"
                else:
                    assert ctype in (21, 22, 23), f"{direction}: a CID record where no CID was asked for"
    assert seen["c2s"] and seen["s2c"], relay.log
    # the application record each way (ours, then BC's echo): only our side pads, and only CID records
    ours_app = (-(-(len(text) + 1) // padding) * padding if padding else len(text) + 1) if theirs else len(text)
    bc_app = len(text) + 1 if ours else len(text)
    assert ours_app + 16 in [length for _, _, length in seen["c2s"]], seen
    assert bc_app + 16 in [length for _, _, length in seen["s2c"]], seen


# --------------------------------------------------------------------------------------------------
# BC client, our server
# --------------------------------------------------------------------------------------------------


@dataclass
class ServerRun:
    cids: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    peers: list[Any] = field(default_factory=list)


async def _our_server_vs_bc_client(ours: int | None, theirs: int | None, text: str, count: int,
                                   rebind_after: int | None = None, **kw: Any) -> tuple[ServerRun, BcClientResult]:
    run = ServerRun()
    done = asyncio.Event()

    async def echo(session: ServerSession) -> None:
        conn = server.core.connections.get(session.peer)
        if conn is not None:
            run.cids.append((conn.connection_id, conn.peer_connection_id))
        try:
            while True:
                data = await session.recv()
                run.received.append(data)
                run.peers.append(session.peer)
                await session.send(data)
        except Exception:  # the session ended: close_notify (or an error, seen in the BC transcript)
            done.set()

    async with asyncio.timeout(DEADLINE):
        server = await serve("127.0.0.1", 0, _config(False, ours, **kw), echo)
        try:
            port = server.address[1]
            result = await asyncio.to_thread(run_bc_client, port, KEY_HEX, theirs, text, count=count,
                                             rebind_after=rebind_after)
            if result.returncode == 0:
                await asyncio.wait_for(done.wait(), 5.0)  # our side saw the close_notify
        finally:
            server.close()
            await server.wait_closed()
    return run, result


@pytest.mark.parametrize(("ours", "theirs"), CID_CASES, ids=CID_IDS)
def test_bc_client_our_server(ours: int | None, theirs: int | None) -> None:
    run, result = asyncio.run(_our_server_vs_bc_client(ours, theirs, "hello from BC", 3))
    result.check()
    assert result.received == ["hello from BC"] * 3, result.transcript()
    assert run.received == [b"hello from BC"] * 3
    assert result.handshake is not None and len(run.cids) == 1
    _check_cids(run.cids[0], result.handshake, ours, theirs, result.transcript())


def test_bc_client_our_server_with_cid_padding() -> None:
    run, result = asyncio.run(_our_server_vs_bc_client(6, 4, "padded", 2, cid_padding=32))
    result.check()
    assert result.received == ["padded"] * 2, result.transcript()
    assert result.handshake is not None
    _check_cids(run.cids[0], result.handshake, 6, 4, result.transcript())


def test_bc_client_changes_source_port_our_server_follows() -> None:
    # BC's client rebinds after 2 messages; our server routes its CID records to the session and answers the new
    # address (PeerAddressChanged), without a new handshake.
    run, result = asyncio.run(_our_server_vs_bc_client(6, 0, "ping", 4, rebind_after=2))
    result.check()
    assert result.received == ["ping"] * 4, result.transcript()
    [(old, new)] = result.rebinds
    assert [addr[1] for addr in run.peers] == [old, old, new, new]
    assert len(run.cids) == 1
