"""iotdtls.coap in-process: aiocoap client and server contexts over iotdtls on 127.0.0.1 (no external peers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.resource as resource
import pytest
from aiocoap.credentials import CredentialsLoadError
from peers import free_udp_port, require_tinydtls

from iotdtls import AlertError, DTLSConfiguration, HandshakeCompleted
from iotdtls.coap import ClientSession, ServerRemote, client_context, load_credentials, server_context
from iotdtls.coap.client import STALE_AFTER, STALE_SENDS, IotdtlsClientTransport, SessionError
from iotdtls.coap.server import IotdtlsServerTransport
from iotdtls.constants import AlertDescription
from iotdtls.keys import fingerprint, generate_private_key, ni_uri, private_key_pem, public_key_pem, spki_der
from iotdtls.netem import Impairment, LinkProfile, NetemProxy

PSK_ASCII = "secretPSK0123456"
PSK_HEX = PSK_ASCII.encode().hex()


def psk_entry(identity: str = "dev1", key: dict[str, str] | None = None) -> dict[str, Any]:
    return {"dtls": {"psk": key or {"ascii": PSK_ASCII}, "client-identity": {"ascii": identity}}}


SERVER_PSK = {":dev1": psk_entry()}
CLIENT_PSK = {"coaps://127.0.0.1*": psk_entry()}


def run(coro: Coroutine[Any, Any, None], timeout: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def run_and_return(coro: Coroutine[Any, Any, float], timeout: float = 40.0) -> float:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- a site -----------------------------------------------------------------------------------------------


class WhoAmI(resource.Resource):  # type: ignore[misc]
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        remote = request.remote
        body = {"claims": list(remote.authenticated_claims), "identity": remote.identity.decode(),
                "type": type(remote).__name__}
        return aiocoap.Message(payload=json.dumps(body).encode(), content_format=50)


class Echo(resource.Resource):  # type: ignore[misc]
    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CONTENT, payload=request.payload, content_format=request.opt.content_format)


class Slow(resource.Resource):  # type: ignore[misc]
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        await asyncio.sleep(60)
        return aiocoap.Message(payload=b"late")


class Ticker(resource.ObservableResource):  # type: ignore[misc]
    def __init__(self, interval: float = 0.05) -> None:
        super().__init__()
        self.count = 0
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None

    def update_observation_count(self, count: int) -> None:
        if count and self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self._interval, self._tick)
        elif not count and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self.count += 1
        self.updated_state()
        self._handle = asyncio.get_running_loop().call_later(self._interval, self._tick)

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=str(self.count).encode())


def build_site() -> resource.Site:
    site = resource.Site()
    for path, res in (("whoami", WhoAmI()), ("echo", Echo()), ("slow", Slow()), ("tick", Ticker())):
        site.add_resource([path], res)
    return site


# -- server harness ---------------------------------------------------------------------------------------


@dataclass
class Server:
    ctx: aiocoap.Context
    port: int
    transport: IotdtlsServerTransport
    handshakes: list[HandshakeCompleted] = field(default_factory=list)

    def uri(self, path: str, port: int | None = None) -> str:
        return f"coaps://127.0.0.1:{port or self.port}/{path}"


def server_transport(ctx: aiocoap.Context) -> IotdtlsServerTransport:
    for ti in ctx.request_interfaces:
        mi = getattr(getattr(ti, "token_interface", None), "message_interface", None)
        if isinstance(mi, IotdtlsServerTransport):
            return mi
    raise AssertionError("no iotdtls server transport in the context")


def client_transport(ctx: aiocoap.Context) -> IotdtlsClientTransport:
    for ti in ctx.request_interfaces:
        mi = getattr(getattr(ti, "token_interface", None), "message_interface", None)
        if isinstance(mi, IotdtlsClientTransport):
            return mi
    raise AssertionError("no iotdtls client transport in the context")


def watch_handshakes(transport: IotdtlsServerTransport, into: list[HandshakeCompleted]) -> None:
    """Record every HandshakeCompleted the server core reports (wrapping its next_event)."""
    original = transport.core.next_event

    def next_event() -> Any:
        item = original()
        if item is not None and isinstance(item[1], HandshakeCompleted):
            into.append(item[1])
        return item

    transport.core.next_event = next_event  # type: ignore[method-assign]


async def start_server(credentials: Any, *, config: DTLSConfiguration | None = None,
                       port: int | None = None) -> Server:
    port = port or free_udp_port()
    ctx = await server_context(build_site(), ("127.0.0.1", port), credentials, config=config)
    server = Server(ctx, port, server_transport(ctx))
    watch_handshakes(server.transport, server.handshakes)
    return server


@contextlib.asynccontextmanager
async def serving(credentials: Any = SERVER_PSK, **kw: Any) -> AsyncIterator[Server]:
    server = await start_server(credentials, **kw)
    try:
        yield server
    finally:
        await server.ctx.shutdown()


@contextlib.asynccontextmanager
async def client(credentials: Any = CLIENT_PSK, **kw: Any) -> AsyncIterator[aiocoap.Context]:
    ctx = await client_context(credentials, **kw)
    try:
        yield ctx
    finally:
        await ctx.shutdown()


async def get(ctx: aiocoap.Context, uri: str, timeout: float = 10.0, **kw: Any) -> aiocoap.Message:
    request = aiocoap.Message(code=kw.pop("code", aiocoap.GET), uri=uri, **kw)
    return await asyncio.wait_for(ctx.request(request).response, timeout)


async def timed(awaitable: Awaitable[Any]) -> tuple[Any, float]:
    start = time.monotonic()
    try:
        return await awaitable, time.monotonic() - start
    except Exception as exc:
        return exc, time.monotonic() - start


async def crash(server: Server) -> None:
    """Shut the server down like a power cut: the socket closes, no close_notify reaches any client."""
    server.transport.core.close = lambda addr: None  # type: ignore[method-assign]
    await server.ctx.shutdown()


# -- PSK ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("server_key", "client_key"), [({"ascii": PSK_ASCII}, {"ascii": PSK_ASCII}),
                                                        ({"hex": PSK_HEX}, {"ascii": PSK_ASCII}),
                                                        ({"ascii": PSK_ASCII}, {"hex": PSK_HEX.upper()})])
def test_psk_get_post_and_claims(server_key: dict[str, str], client_key: dict[str, str]) -> None:
    async def main() -> None:
        creds = {":dev1": psk_entry(key=server_key), ":dev2": psk_entry("dev2", {"ascii": "other-key-222222"})}
        async with serving(creds) as server, client({"coaps://127.0.0.1*": psk_entry(key=client_key)}) as ctx:
            r = await get(ctx, server.uri("whoami"))
            assert r.code == aiocoap.CONTENT
            assert json.loads(r.payload) == {"claims": [":dev1"], "identity": "dev1", "type": "ServerRemote"}
            assert isinstance(r.remote, ClientSession)
            r = await get(ctx, server.uri("echo"), code=aiocoap.POST, payload=b"hello", content_format=0)
            assert (r.code, r.payload, r.opt.content_format) == (aiocoap.CONTENT, b"hello", 0)
            async with client({"coaps://*": psk_entry("dev2", {"ascii": "other-key-222222"})}) as ctx2:
                r2 = await get(ctx2, server.uri("whoami"))
                assert json.loads(r2.payload)["claims"] == [":dev2"]
            remotes = list(server.transport._remotes.values())
            assert [(x.authenticated_claims, x.identity) for x in remotes] == [([":dev1"], b"dev1")]
            assert all(isinstance(x, ServerRemote) for x in remotes)

    run(main())


def test_twenty_sequential_requests_one_handshake() -> None:
    async def main() -> None:
        async with serving() as server, client() as ctx:
            first = await get(ctx, server.uri("whoami"))
            session, conn = first.remote, first.remote.connection
            for i in range(20):
                r = await get(ctx, server.uri("echo"), code=aiocoap.POST, payload=b"%d" % i)
                assert r.payload == b"%d" % i
                assert r.remote is session and session.connection is conn
            assert len(server.handshakes) == 1 and server.handshakes[0].identity == b"dev1"
            assert server.transport.core.stats["hello_verify_sent"] == 1
            assert len(client_transport(ctx)._pool) == 1

    run(main())


def test_concurrent_first_requests_share_one_handshake() -> None:
    async def main() -> None:
        async with serving() as server, client() as ctx:
            replies = await asyncio.gather(*(get(ctx, server.uri("echo"), code=aiocoap.POST, payload=b"%d" % i)
                                             for i in range(20)))
            assert [r.payload for r in replies] == [b"%d" % i for i in range(20)]
            assert len({id(r.remote) for r in replies}) == 1
            assert len(server.handshakes) == 1

    run(main())


# -- raw public keys ---------------------------------------------------------------------------------------


@pytest.fixture
def rpk_files(tmp_path: Path) -> dict[str, Any]:
    keys = {name: generate_private_key(os.urandom(48)) for name in ("server", "client", "stranger")}
    for name, key in keys.items():
        (tmp_path / f"{name}.key").write_bytes(private_key_pem(key))
        (tmp_path / f"{name}.pub").write_bytes(public_key_pem(key))
    pins = {name: fingerprint(spki_der(key)) for name, key in keys.items()}
    return {"dir": tmp_path, "pins": pins, "server_creds": {
        "coaps://*": {"iotdtls-rpk": {"private-key": str(tmp_path / "server.key")}},
        ":sensor-7": {"iotdtls-rpk": {"peer-keys": [str(tmp_path / "client.pub")]}},
        ":dev1": psk_entry(),
    }}


def rpk_client(files: dict[str, Any], who: str, server_pin: str) -> dict[str, Any]:
    return {"coaps://*": {"iotdtls-rpk": {"private-key": str(files["dir"] / f"{who}.key"), "peer-keys": [server_pin]}}}


@pytest.mark.parametrize("pin_form", ["file", "hex", "ni"])
def test_rpk_both_sides_claims_are_the_entry_name(rpk_files: dict[str, Any], pin_form: str) -> None:
    pin = rpk_files["pins"]["server"]
    server_pin = {"file": str(rpk_files["dir"] / "server.pub"), "hex": pin.hex(), "ni": ni_uri(pin)}[pin_form]

    async def main() -> None:
        async with serving(rpk_files["server_creds"]) as server, \
                client(rpk_client(rpk_files, "client", server_pin)) as ctx:
            r = await get(ctx, server.uri("whoami"))
            assert json.loads(r.payload) == {"claims": [":sensor-7"], "identity": ":sensor-7", "type": "ServerRemote"}
            assert r.remote.authenticated_claims == [ni_uri(pin)]  # the client's view: the server's key
            assert server.handshakes[0].peer is not None
            assert server.handshakes[0].peer.fingerprint == rpk_files["pins"]["client"]

    run(main())


def test_rpk_unpinned_client_refused_while_good_client_served(rpk_files: dict[str, Any]) -> None:
    server_pin = rpk_files["pins"]["server"].hex()

    async def main() -> None:
        async with serving(rpk_files["server_creds"]) as server, \
                client(rpk_client(rpk_files, "client", server_pin)) as good:
            r = await get(good, server.uri("whoami"))
            session = r.remote
            async with client(rpk_client(rpk_files, "stranger", server_pin)) as bad:
                exc, elapsed = await timed(get(bad, server.uri("whoami")))
            assert isinstance(exc, aiocoap.error.NetworkError), exc
            assert isinstance(exc.__cause__, AlertError) and exc.__cause__.remote
            assert exc.__cause__.description == AlertDescription.bad_certificate
            assert elapsed < 3.0
            for _ in range(3):
                r = await get(good, server.uri("whoami"))
                assert r.remote is session and json.loads(r.payload)["claims"] == [":sensor-7"]
            assert len(server.handshakes) == 1

    run(main())


def test_psk_and_rpk_clients_on_one_server(rpk_files: dict[str, Any]) -> None:
    async def main() -> None:
        async with serving(rpk_files["server_creds"]) as server, client() as psk, \
                client(rpk_client(rpk_files, "client", ni_uri(rpk_files["pins"]["server"]))) as rpk:
            a, b = await asyncio.gather(get(psk, server.uri("whoami")), get(rpk, server.uri("whoami")))
            assert json.loads(a.payload)["claims"] == [":dev1"]
            assert json.loads(b.payload)["claims"] == [":sensor-7"]
            assert sorted(h.identity for h in server.handshakes) == [b":sensor-7", b"dev1"]

    run(main())


# -- failures ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [psk_entry(key={"ascii": "wrongPSK01234567"}), psk_entry("stranger")])
def test_wrong_psk_fails_promptly_then_good_client_works(bad: dict[str, Any]) -> None:
    async def main() -> None:
        async with serving() as server:
            async with client({"coaps://*": bad}) as ctx:
                exc, elapsed = await timed(get(ctx, server.uri("whoami")))
                assert isinstance(exc, aiocoap.error.NetworkError), exc
                assert isinstance(exc.__cause__, AlertError) and exc.__cause__.remote
                assert exc.__cause__.description == AlertDescription.bad_record_mac
                assert elapsed < 2.0  # EXCHANGE_LIFETIME is 247 s
                exc, elapsed = await timed(get(ctx, server.uri("whoami")))  # a fresh handshake, same answer
                assert isinstance(exc, aiocoap.error.NetworkError) and elapsed < 2.0
            async with client() as ctx:
                r = await get(ctx, server.uri("whoami"))
                assert json.loads(r.payload)["claims"] == [":dev1"]
            assert len(server.handshakes) == 1

    run(main())


def test_server_shutdown_errors_pending_request_promptly() -> None:
    async def main() -> None:
        async with client() as ctx:
            server = await start_server(SERVER_PSK)
            await get(ctx, server.uri("whoami"))
            pending = asyncio.ensure_future(get(ctx, server.uri("slow"), timeout=30))
            await asyncio.sleep(0.3)
            start = time.monotonic()
            await server.ctx.shutdown()
            exc, _ = await timed(pending)
            assert isinstance(exc, aiocoap.error.NetworkError), exc
            assert isinstance(exc.__cause__, SessionError)
            assert time.monotonic() - start < 1.0

    run(main())


def test_server_crash_pending_request_ends_cleanly_on_client_shutdown() -> None:
    async def main() -> None:
        ctx = await client_context(CLIENT_PSK)
        server = await start_server(SERVER_PSK)
        await get(ctx, server.uri("whoami"))
        await crash(server)
        pending = asyncio.ensure_future(get(ctx, server.uri("whoami"), timeout=60))
        done, _ = await asyncio.wait({pending}, timeout=2.0)
        assert not done  # still retransmitting, nothing hangs or raises out of band
        start = time.monotonic()
        await ctx.shutdown()
        exc, _ = await timed(pending)
        assert isinstance(exc, aiocoap.error.LibraryShutdown), exc
        assert time.monotonic() - start < 1.0

    run(main())


async def restart_under_live_client(*, first_only: bool) -> float:
    """Crash the server, start a new one on the same port; return seconds until a request succeeds."""
    async with client() as ctx:
        server = await start_server(SERVER_PSK)
        before = (await get(ctx, server.uri("whoami"))).remote.connection
        await crash(server)
        async with serving(port=server.port) as restarted:
            start = time.monotonic()
            deadline = start + 3 * STALE_AFTER + 6
            while True:
                result, _ = await timed(get(ctx, restarted.uri("whoami"), timeout=deadline - time.monotonic()))
                if isinstance(result, aiocoap.Message) or first_only:
                    break
                assert isinstance(result, aiocoap.error.NetworkError), result
            assert isinstance(result, aiocoap.Message), result
            took = time.monotonic() - start
            assert json.loads(result.payload)["claims"] == [":dev1"]
            assert result.remote.connection is not before  # a new DTLS session
            assert len(restarted.handshakes) == 1
            return took


def test_server_restart_next_requests_succeed_after_rehandshake() -> None:
    took = run_and_return(restart_under_live_client(first_only=False))
    print(f"restart recovered after {took:.1f} s (STALE_SENDS={STALE_SENDS}, STALE_AFTER={STALE_AFTER})")
    assert STALE_AFTER < took < 3 * STALE_AFTER  # the third CoAP transmission (~6-9 s) starts the handshake


def test_server_restart_pending_request_survives_rehandshake() -> None:
    run_and_return(restart_under_live_client(first_only=True))


def test_server_graceful_restart_next_request_is_immediate() -> None:
    async def main() -> None:
        async with client() as ctx:
            server = await start_server(SERVER_PSK)
            await get(ctx, server.uri("whoami"))
            await server.ctx.shutdown()  # close_notify reaches the client
            async with serving(port=server.port) as restarted:
                r, elapsed = await timed(get(ctx, restarted.uri("whoami")))
                assert isinstance(r, aiocoap.Message) and elapsed < 1.0, r

    run(main())


def test_idle_timeout_closes_session_and_client_rehandshakes() -> None:
    async def main() -> None:
        async with serving(config=DTLSConfiguration(is_client=False, idle_timeout=0.5)) as server, client() as ctx:
            r = await get(ctx, server.uri("whoami"))
            session, conn = r.remote, r.remote.connection
            await asyncio.sleep(1.0)
            assert server.transport.core.connections == {} and server.transport._remotes == {}
            assert conn.is_closed and session.connection is None  # the close_notify arrived
            r = await get(ctx, server.uri("whoami"))
            assert json.loads(r.payload)["claims"] == [":dev1"]
            assert r.remote is not session and len(server.handshakes) == 2

    run(main())


# -- sizes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mtu", "szx"), [(128, 0), (256, 3), (512, 4)])
def test_blockwise_post_fits_the_mtu(mtu: int, szx: int) -> None:
    body = os.urandom(3000)
    sizes: list[tuple[str, int]] = []

    async def main() -> None:
        async with serving(config=DTLSConfiguration(is_client=False, mtu=mtu)) as server:
            proxy = NetemProxy(("127.0.0.1", server.port), Impairment(LinkProfile(mtu=mtu)),
                               observer=lambda d, _a, data, _x: sizes.append((d, len(data))))
            _, port = await proxy.start()
            try:
                async with client(config=DTLSConfiguration(mtu=mtu)) as ctx:
                    r = await get(ctx, server.uri("echo", port), code=aiocoap.POST, payload=body, content_format=42)
                    assert r.payload == body and r.opt.content_format == 42
                    assert r.remote.maximum_block_size_exp == szx
                    assert next(iter(server.transport._remotes.values())).maximum_block_size_exp == szx
            finally:
                proxy.close()
            stats = proxy.impairment_stats
            assert stats.c2s.too_big == stats.s2c.too_big == 0
            assert max(size for _, size in sizes) <= mtu
            blocks = -(-3000 // (16 << szx))
            assert sum(d == "c2s" for d, _ in sizes) >= blocks  # Block1 up, Block2 down
            assert sum(d == "s2c" for d, _ in sizes) >= blocks

    run(main())


# -- observe -----------------------------------------------------------------------------------------------


def test_observe_three_notifications_over_one_session() -> None:
    async def main() -> None:
        async with serving() as server, client() as ctx:
            request = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=server.uri("tick"), observe=0))
            first = await asyncio.wait_for(request.response, 5)
            values = [int(first.payload)]
            async for note in request.observation:
                assert note.remote is first.remote
                values.append(int(note.payload))
                if len(values) == 4:
                    request.observation.cancel()
                    break
            assert values == sorted(values) and len(set(values)) == 4
            assert len(server.handshakes) == 1

    run(main())


# -- precedence over aiocoap's tinydtls transport ----------------------------------------------------------


def test_coaps_goes_through_iotdtls_even_with_dtlssocket_installed() -> None:
    require_tinydtls()
    import aiocoap.defaults

    assert aiocoap.defaults.dtls_missing_modules() == []  # aiocoap itself would use tinydtls here

    async def main() -> None:
        async with serving() as server, client() as ctx:
            r = await get(ctx, server.uri("whoami"))
            assert type(r.remote) is ClientSession
            kinds = {type(ti.token_interface.message_interface).__module__ for ti in ctx.request_interfaces}
            assert kinds == {"iotdtls.coap.client", "aiocoap.transports.udp6"}

    run(main())
    code = ("import asyncio, sys; from iotdtls.coap import client_context\n"
            "async def m():\n    c = await client_context({}); await c.shutdown()\n"
            "asyncio.run(m()); print(sorted(x for x in sys.modules if 'tinydtls' in x or 'DTLSSocket' in x))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "[]"


# -- credentials errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("item", "message"), [
    ({"private-key": "{d}/missing.key"}, "iotdtls-rpk: cannot read {d}/missing.key: No such file or directory"),
    ({"peer-keys": ["abcd"]}, "iotdtls-rpk: abcd: neither a readable key file nor a SHA-256 fingerprint"),
    ({"peer-keys": ["ni:///sha-256;tooShort"]}, "ni:///sha-256;tooShort: neither a readable key file"),
    ({"peer-keys": ["{d}/junk.txt"]}, "{d}/junk.txt: not a PEM/DER public key"),
    ({"peer-keys": "{d}/server.pub"}, "peer-keys must be a list of files or fingerprints"),
    ({"private-key": 7}, "private-key must be a file name"),
    ({"privat-key": "x"}, 'iotdtls-rpk takes an object with "private-key" and/or "peer-keys"'),
    ({}, 'iotdtls-rpk takes an object with "private-key" and/or "peer-keys"'),
    (["x"], 'iotdtls-rpk takes an object with "private-key" and/or "peer-keys"'),
    ({"private-key": "{d}/junk.txt"}, "{d}/junk.txt"),
])
def test_malformed_rpk_entries_raise_credentials_load_error(tmp_path: Path, item: Any, message: str) -> None:
    (tmp_path / "junk.txt").write_text("not a key\n")
    (tmp_path / "server.pub").write_bytes(public_key_pem(generate_private_key()))
    filled = json.loads(json.dumps(item).replace("{d}", str(tmp_path)))
    with pytest.raises(CredentialsLoadError) as info:
        load_credentials({"coaps://*": {"iotdtls-rpk": filled}})
    assert message.replace("{d}", str(tmp_path)) in str(info.value)
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({":x": {"iotdtls-rpk": filled}}))

    async def main() -> None:
        with pytest.raises(CredentialsLoadError):
            await server_context(build_site(), ("127.0.0.1", free_udp_port()), str(path))

    run(main())


def test_rpk_client_without_server_pin_fails_the_request() -> None:
    async def main() -> None:
        async with client({"coaps://*": {"iotdtls-rpk": {"peer-keys": []}}}) as ctx:
            exc, elapsed = await timed(get(ctx, f"coaps://127.0.0.1:{free_udp_port()}/x"))
            assert isinstance(exc, CredentialsLoadError) and "needs peer-keys" in str(exc)
            assert elapsed < 1.0

    run(main())


def test_server_shutdown_with_live_session_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with client() as ctx:
            server = await start_server(SERVER_PSK)
            await get(ctx, server.uri("whoami"))
            with caplog.at_level(logging.WARNING):
                await server.ctx.shutdown()

    run(main())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
