"""Self-check of the Bouncy Castle CID peer (tests/bc_peer.py, tests/bcpeer/BcPeer.java): BC against BC, no iotdtls.

If these fail, the CID interop failures of tests/test_interop_cid.py are about the harness or the machine.
"""

from __future__ import annotations

import subprocess

import pytest
from bc_peer import bc_classpath, bc_command, bc_server, run_bc_client
from peers import free_udp_port

pytestmark = pytest.mark.interop

KEY_HEX = "00112233445566778899aabbccddeeff"


@pytest.fixture(autouse=True)
def _bouncycastle() -> None:
    bc_classpath()  # skips (or fails with IOTDTLS_REQUIRE_PEERS=1) without Java or the jars; compiles once


@pytest.mark.parametrize(
    ("server_cid", "client_cid"),
    [(6, 0), (4, 4), (None, None), (0, 6), (None, 4), (4, None)],
    ids=["server6-client0", "server4-client4", "no-cid", "server0-client6", "server-none-client4",
         "server4-client-none"],
)
def test_handshake_cids_and_data_both_ways(server_cid: int | None, client_cid: int | None) -> None:
    port = free_udp_port()
    with bc_server(port, KEY_HEX, server_cid) as server:
        result = run_bc_client(port, KEY_HEX, client_cid, "hello BC", count=3).check()
        assert [server.recv() for _ in range(3)] == ["hello BC"] * 3, server.transcript()
        assert result.received == ["hello BC"] * 3, result.transcript()
        server.next_event("CLOSED")
        assert server.wait_closed() == 0, server.transcript()
        srv, cli = server.handshake(), result.handshake
        assert cli is not None
        # a CID is negotiated only when both sides send the extension (RFC 9146 section 3)
        negotiated = server_cid is not None and client_cid is not None
        if not negotiated:
            assert (srv.cid_in, srv.cid_out, cli.cid_in, cli.cid_out) == (None, None, None, None)
            return
        assert srv.cid_in is not None and cli.cid_in is not None
        assert len(srv.cid_in) == server_cid and len(cli.cid_in) == client_cid
        assert (srv.cid_in, srv.cid_out) == (cli.cid_out, cli.cid_in), (srv, cli)


def test_client_rebind_keeps_the_session_with_a_cid() -> None:
    port = free_udp_port()
    with bc_server(port, KEY_HEX, 6) as server:
        result = run_bc_client(port, KEY_HEX, 0, "ping", count=4, rebind_after=2).check()
        assert result.received == ["ping"] * 4, result.transcript()
        [(old, new)] = result.rebinds
        assert old == result.local_port and new != old
        server.next_event("CLOSED")
        assert server.wait_closed() == 0
        # one handshake; the server moved its replies to the client's new port
        assert len(server.lines("HANDSHAKE")) == 1
        assert server.client_address() == f"127.0.0.1:{old}"
        assert server.peer_updates() == [f"127.0.0.1:{new}"], server.transcript()
        assert server.lines("RECV") == ["ping"] * 4


@pytest.mark.parametrize("server_cid", [None, 0], ids=["no-cid", "server-asks-empty"])
def test_client_rebind_without_a_server_cid_gets_no_reply(server_cid: int | None) -> None:
    # The server has no CID to find the session by: it keeps answering the old address (RFC 9146 section 6), so the
    # harness's rebind test above proves the CID, not a server that follows any datagram.
    port = free_udp_port()
    with bc_server(port, KEY_HEX, server_cid, timeout=10) as server:
        result = run_bc_client(port, KEY_HEX, 4, "ping", count=2, rebind_after=1, wait_ms=1500, timeout=10)
        assert result.returncode == 1, result.transcript()
        assert result.received == ["ping"]
        assert "no reply to message 2" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert server.peer_updates() == []
        assert server.lines("RECV")[:1] == ["ping"]


def test_wrong_identity_fails_fast_with_one_line() -> None:
    port = free_udp_port()
    with bc_server(port, KEY_HEX, 6, timeout=10) as server:
        result = run_bc_client(port, KEY_HEX, 0, "x", identity="intruder", timeout=10)
        assert result.returncode == 1
        assert result.stderr.strip() == "BcPeer: handshake failed: TlsFatalAlert: unknown_psk_identity(115)"
        assert server.wait_closed() == 1


def test_bad_arguments_are_one_line_errors() -> None:
    for args in (["--host", "127.0.0.1"], ["--host", "h", "--port", "x"], ["--bogus", "1"], ["--psk", "abc"]):
        proc = subprocess.run(bc_command("client", args), capture_output=True, text=True, timeout=30, check=False)
        assert proc.returncode == 1, args
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("BcPeer: "), proc.stderr


def test_server_following_every_datagram_needs_no_cid() -> None:
    # --peer-update latest (not RFC 9146): the reply address follows any datagram, so a rebind works without a CID
    port = free_udp_port()
    with bc_server(port, KEY_HEX, None, peer_update="latest") as server:
        result = run_bc_client(port, KEY_HEX, None, "ping", count=2, rebind_after=1).check()
        assert result.received == ["ping"] * 2
        [(_, new)] = result.rebinds
        assert server.peer_updates() == [f"127.0.0.1:{new}"], server.transcript()
