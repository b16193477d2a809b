"""coaps:// clients (the aiocoap transport and iotdtls-coap-client) with Connection ID and session resumption,
against the real iotdtls CoAP server over UDP: a re-handshake resumes the last session to that server, a session
saved by one process resumes in the next, a session ended by a fatal alert is not offered again."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

from peers import free_udp_port, run_peer
from test_coap import CLIENT_PSK, client_transport, get, run, serving
from test_coap_cli import CLIENT, SERVER, psk_entry
from test_coap_cli import run as run_tool

from iotdtls import DTLSConfiguration
from iotdtls.coap import client_context
from iotdtls.errors import AlertError


def test_a_new_handshake_resumes_the_last_session_and_cid_is_negotiated() -> None:
    async def main() -> None:
        async with serving(config=DTLSConfiguration(is_client=False, cid_length=4)) as server:
            ctx = await client_context(CLIENT_PSK, config=DTLSConfiguration(cid_length=0))
            try:
                r = await get(ctx, server.uri("whoami"))
                conn = r.remote.connection
                assert r.code.is_successful() and not conn.resumed
                assert conn.peer_connection_id is not None and len(conn.peer_connection_id) == 4
                sessions = client_transport(ctx).sessions
                assert list(sessions) == [("127.0.0.1", server.port)]
                # the server ends the session (close_notify): the next request handshakes again, abbreviated
                for remote in server.transport.sessions():
                    server.transport.end_session(remote)
                await asyncio.sleep(0.1)
                r = await get(ctx, server.uri("whoami"))
                assert r.code.is_successful() and r.remote.connection.resumed
                assert [h.resumed for h in server.handshakes] == [False, True]
            finally:
                await ctx.shutdown()

    run(main())


def test_a_saved_session_resumes_in_a_new_client_context() -> None:
    async def main() -> None:
        async with serving() as server:
            saved: dict[tuple[str, int], object] = {}
            for _ in range(2):
                ctx = await client_context(CLIENT_PSK, sessions=saved)  # type: ignore[arg-type]
                try:
                    r = await get(ctx, server.uri("whoami"))
                    assert r.code.is_successful()
                finally:
                    await ctx.shutdown()
            assert [h.resumed for h in server.handshakes] == [False, True]

    run(main())


def test_a_session_ended_by_a_fatal_alert_is_not_offered_again() -> None:
    async def main() -> None:
        async with serving() as server:
            ctx = await client_context(CLIENT_PSK)
            try:
                await get(ctx, server.uri("whoami"))
                transport = client_transport(ctx)
                assert transport.sessions
                session = next(iter(transport._pool.values()))
                session._connection_ended(session.connection, AlertError("internal_error"))  # type: ignore[arg-type]
                assert transport.sessions == {}
            finally:
                await ctx.shutdown()

    run(main())


def test_coap_client_cli_session_file_and_cid(tmp_path: Path) -> None:
    """iotdtls-coap-client --session FILE --cid 0 against iotdtls-coap-server --cid 4: a full handshake, then
    abbreviated ones; the file is 0600."""
    (tmp_path / "server.json").write_text(json.dumps({":dev1": psk_entry()}))
    (tmp_path / "client.json").write_text(json.dumps({"coaps://*": psk_entry()}))
    port = free_udp_port()
    argv = [*SERVER, "--bind", f"127.0.0.1:{port}", "--credentials", str(tmp_path / "server.json"), "--cid", "4"]
    session = tmp_path / "session.bin"
    with run_peer("iotdtls-coap-server", argv, listen_port=port) as server:
        lines = []
        for _ in range(3):
            r = run_tool([*CLIENT, "--credentials", str(tmp_path / "client.json"), "--session", str(session),
                          "--cid", "0", "-m", "post", "--payload", "hi", f"coaps://127.0.0.1:{port}/echo"])
            assert r.returncode == 0 and r.stdout == b"hi\n", r.stderr
            lines.append(r.stderr.decode().strip())
        assert server.alive(), server.transcript()
    assert lines == ["iotdtls-coap-client: full handshake"] + \
        ["iotdtls-coap-client: session resumed (abbreviated handshake)"] * 2
    assert stat.S_IMODE(session.stat().st_mode) == 0o600


def test_coap_client_cli_usage_errors(tmp_path: Path) -> None:
    for bad in (["--cid", "21"], ["--cid", "x"], ["--record-size-limit", "63"]):
        r = run_tool([*CLIENT, *bad, "coaps://127.0.0.1:1/x"])
        assert r.returncode == 2 and len(r.stderr.decode().strip().splitlines()) == 1, r.stderr

