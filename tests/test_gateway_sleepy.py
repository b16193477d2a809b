"""Sleepy and moving devices against the real gateway process (issue 18): a NAT rebinding in the middle of a
stream of readings (a relay moves the device to a new source port) loses nothing and costs no handshake, thanks to
the connection ID; a gateway restart (SIGTERM or kill -9) costs a device that saved its session an abbreviated
handshake, through a ticket sealed with keys kept in the data dir; a revoked device cannot resume."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import cbor2
from aiocoap import CHANGED, CON, POST, Message
from gateway_fixtures import Gateway, gateway

from iotdtls import DTLSConfiguration
from iotdtls.aio import ClientSession, connect
from iotdtls.errors import DTLSError
from iotdtls.resumption import Session


class RebindingRelay(asyncio.DatagramProtocol):
    """The device's NAT: forwards its datagrams to the gateway from an upstream socket, and on :meth:`rebind`
    forgets the mapping and uses a new upstream socket (a new source port, as the gateway sees it). Replies that
    reach the old socket after that are lost, as a NAT drops them."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.device: tuple[str, int] | None = None
        self.listener: asyncio.DatagramTransport | None = None
        self.upstream: asyncio.DatagramTransport | None = None
        self.ports: list[int] = []
        self.lost_replies = 0

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.listener, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        await self.rebind()
        return int(self.listener.get_extra_info("sockname")[1])

    async def rebind(self) -> None:
        old = self.upstream
        loop = asyncio.get_running_loop()
        relay = self

        class Upstream(asyncio.DatagramProtocol):
            def __init__(self) -> None:
                self.transport: asyncio.DatagramTransport | None = None

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport  # type: ignore[assignment]

            def datagram_received(self, data: bytes, addr: Any) -> None:
                if relay.upstream is not self.transport:
                    relay.lost_replies += 1
                    return
                if relay.listener is not None and relay.device is not None:
                    relay.listener.sendto(data, relay.device)

        self.upstream, _ = await loop.create_datagram_endpoint(Upstream, remote_addr=self.target)
        self.ports.append(self.upstream.get_extra_info("sockname")[1])
        if old is not None:
            loop.call_later(2.0, old.close)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.device = addr
        if self.upstream is not None:
            self.upstream.sendto(data)

    def close(self) -> None:
        for t in (self.listener, self.upstream):
            if t is not None:
                t.close()


class Device:
    """A PSK device speaking CoAP over an iotdtls session: confirmable POSTs of CBOR readings to /telemetry."""

    def __init__(self, cfg: dict[str, Any], *, cid: int | None = 0, tickets: bool = True) -> None:
        self.config = DTLSConfiguration(psk_identity=cfg["identity"].encode(), psk=bytes.fromhex(cfg["psk"]),
                                        cid_length=cid, session_tickets=tickets, retransmit_initial=0.3)
        self.mid = 100
        self.session: ClientSession | None = None

    async def connect(self, port: int, saved: Session | None = None) -> ClientSession:
        self.session = await connect("127.0.0.1", port, self.config, session=saved)
        return self.session

    async def post(self, seq: int, tries: int = 12) -> None:
        assert self.session is not None
        self.mid += 1
        request = Message(code=POST, payload=cbor2.dumps({"seq": seq, "temp": 21.5}))
        request.mtype, request.mid, request.token = CON, self.mid, seq.to_bytes(4, "big")
        request.opt.uri_path = ("telemetry",)
        request.opt.content_format = 60
        data = request.encode()
        for _ in range(tries):  # the CoAP retransmission of a confirmable message, same message ID
            await self.session.send(data)
            try:
                while True:
                    reply = Message.decode(await asyncio.wait_for(self.session.recv(), 0.5))
                    if reply.mid == self.mid or reply.token == request.token:
                        assert reply.code == CHANGED, reply
                        return
            except TimeoutError:
                continue
        raise AssertionError(f"reading {seq} was never acknowledged")


def handshakes(gw: Gateway) -> list[bool]:
    """One entry per completed handshake since the gateway process started: resumed or not."""
    return [bool(e.get("resumed")) for e in gw.log_events("handshake")]


def readings(gw: Gateway) -> list[int]:
    return [e["data"]["seq"] for e in gw.envelopes()]


def test_nat_rebinding_mid_stream_loses_nothing_and_costs_no_handshake(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw:
        cfg = json.loads(gw.provision("sensor-1").read_text())

        async def scenario() -> RebindingRelay:
            relay = RebindingRelay(("127.0.0.1", gw.port))
            port = await relay.start()
            device = Device(cfg)
            session = await device.connect(port)
            assert session.connection.peer_connection_id is not None  # the gateway gave a 4-byte CID
            assert len(session.connection.peer_connection_id) == 4
            for seq in range(1, 31):
                await device.post(seq)
                if seq in (10, 20):
                    await relay.rebind()  # the NAT forgot the device: a new source port
            await session.close()
            relay.close()
            return relay

        relay = asyncio.run(scenario())
        assert len(set(relay.ports)) == 3
        assert sorted(readings(gw)) == list(range(1, 31))  # every reading once: no loss, no duplicate
        assert handshakes(gw) == [False]  # one handshake for the whole stream


def test_without_cid_a_rebinding_costs_the_session(tmp_path: Path) -> None:
    """The contrast: with no connection ID, the gateway cannot know the new port; the readings after the move go
    unanswered (the device would need a new handshake)."""
    with gateway(tmp_path) as gw:
        cfg = json.loads(gw.provision("sensor-1").read_text())

        async def scenario() -> bool:
            relay = RebindingRelay(("127.0.0.1", gw.port))
            port = await relay.start()
            device = Device(cfg, cid=None)
            await device.connect(port)
            await device.post(1)
            await relay.rebind()
            try:
                await device.post(2, tries=3)
            except AssertionError:
                return False
            finally:
                relay.close()
            return True

        assert asyncio.run(scenario()) is False
        assert readings(gw) == [1]


def test_gateway_restart_costs_an_abbreviated_handshake(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    gw.start()
    try:
        cfg = json.loads(gw.provision("sensor-1").read_text())
        keys = tmp_path / "data" / "ticket-keys.bin"
        assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600

        async def one(saved: Session | None, seq: int) -> tuple[Session | None, bool]:
            device = Device(cfg)
            session = await device.connect(gw.port, saved)
            await device.post(seq)
            result = session.session, session.resumed
            await session.close()
            return result

        saved, resumed = asyncio.run(one(None, 1))
        assert saved is not None and saved.ticket and not resumed
        blob = saved.to_bytes()  # what a device keeps in flash across its own reboot
        gw.stop()
        gw.start()  # an orderly restart
        saved2, resumed = asyncio.run(one(Session.from_bytes(blob), 2))
        assert resumed and handshakes(gw) == [True]
        gw.kill9()
        gw.start()  # a crash
        _, resumed = asyncio.run(one(saved2, 3))
        assert resumed and handshakes(gw) == [True]
        assert sorted(readings(gw)) == [1, 2, 3]
    finally:
        if gw.proc is not None:
            gw.proc.stop()


def test_revoked_device_cannot_resume(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw:
        cfg = json.loads(gw.provision("sensor-1").read_text())

        async def first() -> Session | None:
            device = Device(cfg)
            session = await device.connect(gw.port)
            await device.post(1)
            result = session.session
            await session.close()
            return result

        saved = asyncio.run(first())
        assert saved is not None
        r = gw.provision_cmd("revoke", "sensor-1")
        assert r.returncode == 0, r.stderr

        async def again() -> str:
            device = Device(cfg)
            device.config.handshake_timeout = 5
            try:
                session = await device.connect(gw.port, saved)
            except DTLSError as exc:
                return type(exc).__name__
            return "resumed" if session.resumed else "full"

        assert asyncio.run(again()) not in ("resumed", "full")
        assert readings(gw) == [1]


def test_micropython_device_resumes_after_a_gateway_restart(tmp_path: Path) -> None:
    """micropython/main.py (CPython) with "tickets": true keeps its session in its config file; after a kill -9 of
    the gateway its next run resumes it (an abbreviated handshake), and its readings are stored."""
    from gateway_fixtures import device_config, run_device

    gw = Gateway(tmp_path)
    gw.start()
    try:
        cfg = device_config(gw.provision("sensor-1"), host="127.0.0.1", port=gw.port, tickets=True)
        r = run_device(cfg, 2)
        assert r.returncode == 0 and r.stdout.split() == ["2.04"] * 2, r.stdout + r.stderr
        assert handshakes(gw) == [False]
        assert json.loads(cfg.read_text())["session"]  # the session, kept in the config file
        assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
        gw.kill9()
        gw.start()
        r = run_device(cfg, 2)
        assert r.returncode == 0 and r.stdout.split() == ["2.04"] * 2, r.stdout + r.stderr
        assert handshakes(gw) == [True]
        assert len(readings(gw)) == 4
    finally:
        if gw.proc is not None:
            gw.proc.stop()
