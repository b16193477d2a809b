"""asyncio endpoints on loopback: many peers, session hand-off, limits, reboots, errors."""

from __future__ import annotations

import asyncio
import socket

import pytest
from helpers import IDENTITY, client_config, server_config
from peers import free_udp_port

from iotdtls import ConnectionClosed, DTLSConnection, HandshakeTimeout, RemoteAlert
from iotdtls.aio import ServerSession, connect, serve
from iotdtls.constants import AlertDescription

FAST = {"retransmit_initial": 0.2, "retransmit_max": 0.4}


async def echo(session: ServerSession) -> None:
    while True:
        try:
            await session.send(await session.recv())
        except ConnectionClosed:
            return


def test_many_peers_at_once() -> None:
    async def main() -> None:
        store = {f"dev{i}".encode(): bytes([i]) * 16 for i in range(30)}
        server = await serve("127.0.0.1", 0, server_config(psk_store=store), echo)
        host, port = server.address

        async def device(i: int) -> bytes:
            cfg = client_config(seed=100 + i, psk_identity=f"dev{i}".encode(), psk=bytes([i]) * 16, **FAST)
            async with connect(host, port, cfg) as session:
                await session.send(f"reading {i}".encode())
                return await asyncio.wait_for(session.recv(), 5)

        replies = await asyncio.gather(*(device(i) for i in range(30)))
        assert replies == [f"reading {i}".encode() for i in range(30)]
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_sessions_from_async_iterator_carry_the_identity() -> None:
    async def main() -> None:
        async with await serve("127.0.0.1", 0, server_config()) as server:
            host, port = server.address
            async with connect(host, port, client_config(**FAST)) as client:
                session = await anext(aiter(server))
                assert session.identity == IDENTITY
                await client.send(b"ping")
                assert await session.recv() == b"ping"
                await session.send(b"pong")
                assert await client.recv() == b"pong"
            with pytest.raises(ConnectionClosed):  # the client's close_notify ends the session
                await asyncio.wait_for(session.recv(), 2)

    asyncio.run(main())


def test_wrong_key_and_unknown_identity_fail_alike() -> None:
    async def main() -> None:
        async with await serve("127.0.0.1", 0, server_config(), echo) as server:
            host, port = server.address
            errors = []
            for kw in ({"psk": b"\xff" * 16}, {"psk_identity": b"stranger"}):
                with pytest.raises(RemoteAlert) as info:
                    await connect(host, port, client_config(**kw, **FAST))
                errors.append((type(info.value), info.value.description))
            assert errors[0] == errors[1] == (RemoteAlert, AlertDescription.bad_record_mac)

    asyncio.run(main())


def test_handshake_timeout_when_nobody_answers() -> None:
    async def main() -> None:
        cfg = client_config(handshake_timeout=0.6, **FAST)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers: no ICMP either
            silent.bind(("127.0.0.1", 0))
            with pytest.raises(HandshakeTimeout):
                await connect("127.0.0.1", silent.getsockname()[1], cfg)

    asyncio.run(main())


def test_rebooted_client_from_the_same_port_gets_a_fresh_session() -> None:
    async def main() -> None:
        async with await serve("127.0.0.1", 0, server_config(), echo) as server:
            host, port = server.address
            local = ("127.0.0.1", free_udp_port())
            first = await connect(host, port, client_config(seed=1, **FAST), local_addr=local)
            await first.send(b"before")
            assert await first.recv() == b"before"
            first._transport.close()  # type: ignore[union-attr]  # power loss: no close_notify
            await asyncio.sleep(0.05)
            async with connect(host, port, client_config(seed=2, **FAST), local_addr=local) as second:
                await second.send(b"after reboot")
                assert await asyncio.wait_for(second.recv(), 5) == b"after reboot"
            assert len(server.core.connections) <= 1

    asyncio.run(main())


def test_idle_sessions_are_closed() -> None:
    async def main() -> None:
        async with await serve("127.0.0.1", 0, server_config(idle_timeout=0.3)) as server:
            host, port = server.address
            async with connect(host, port, client_config(**FAST)) as client:
                session = await anext(aiter(server))
                with pytest.raises(ConnectionClosed):  # the server's close_notify after 0.3 s idle
                    await asyncio.wait_for(client.recv(), 3)
                assert session.closed
            assert server.core.connections == {}

    asyncio.run(main())


def test_handshake_slots_are_limited() -> None:
    async def main() -> None:
        server = await serve("127.0.0.1", 0, server_config(), echo, max_handshakes=1)
        host, port = server.address
        # a client that goes silent after its ClientHello with the cookie holds the only handshake slot
        stalled = DTLSConnection(client_config(seed=5))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((host, port))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        stalled.connect(loop.time())
        for _ in range(2):  # ClientHello -> HelloVerifyRequest, ClientHello with the cookie -> server flight
            for d in stalled.datagrams_to_send(loop.time()):
                sock.send(d)
            stalled.receive_datagram(await loop.sock_recv(sock, 2048), loop.time())
        assert server.core.handshakes_in_progress == 1
        # so a second device gets its HelloVerifyRequest but no state, and gives up
        with pytest.raises(HandshakeTimeout):
            await connect(host, port, client_config(seed=6, handshake_timeout=0.8, **FAST))
        assert server.core.stats["dropped_full"] >= 1
        sock.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
