"""The real MicroPython device client (WebAssembly MicroPython 1.27 under Node, tests/mpwasm/) against iotdtls's
DTLSServer: Connection ID (RFC 9146) across a new source port, resumption after a reboot (abbreviated handshake),
the full handshake when the server forgot the session, record_size_limit (RFC 8449). Bytes on the wire of each
handshake are printed with a ``MEASURED`` prefix (``pytest -s``). Needs node and ``npm ci --prefix tests/mpwasm``.

Sans-IO checks of the same features on CPython (every flavour of CID, tickets alone, a record over the limit) are
at the end.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mp_cid_server import CidServer
from peers import require_peer
from test_mp_dtls import ADDR, KEY, Net, _exchange, _rand, dtls

from iotdtls import DTLSConfiguration, DTLSServer
from iotdtls.resumption import TicketKeys

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tests" / "mpwasm" / "run.mjs"
NODE_MODULES = ROOT / "tests" / "mpwasm" / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"


def device(port: int, *args: str) -> dict[str, Any]:
    require_peer("node + tests/mpwasm/node_modules (npm ci --prefix tests/mpwasm)",
                 shutil.which("node") is not None and NODE_MODULES.is_dir())
    r = subprocess.run(["node", str(RUNNER), "--path", "micropython", "tests/mp_cid_device.py", str(port), *args],
                       capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert r.returncode == 0, r.stdout + r.stderr
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def measured(what: str) -> None:
    print(f"MEASURED {what}", flush=True)


def _wire(r: dict[str, Any]) -> int:
    hw = r["handshake_wire"]
    return int(hw[1] + hw[3])


@pytest.mark.interop
def test_cid_new_port_then_resume_then_forgotten() -> None:
    with CidServer(cid_length=4, record_size_limit=512) as srv:
        full = device(srv.port, "full")
        assert full["established"] and not full["abbreviated"], full
        assert full["peer_cid"] and len(full["peer_cid"]) == 8  # the server's 4-byte CID, in our records
        assert full["echoed"] == [True] * 6, full  # 3 before and 3 after the new source port, no new handshake
        assert len(srv.log.handshakes) == 1 and not srv.log.handshakes[0].resumed
        assert srv.log.handshakes[0].peer_cid == b""  # the device asked for no CID of its own
        assert len(srv.log.moves) == 1  # the session moved to the new port once
        got = [d for _, d in srv.log.data]
        assert got == [b"m%d" % i for i in range(1, 7)]
        ports = {a[1] for a, _ in srv.log.data}
        assert len(ports) == 2
        hw = full["handshake_wire"]
        measured(f"full handshake (CID, record_size_limit, no ticket asked): device sent {hw[0]} dg / {hw[1]} B, "
                 f"received {hw[2]} dg / {hw[3]} B: {hw[1] + hw[3]} B")
        session = bytes.fromhex(full["session"])
        assert session[51] == 8 and len(session) == 52 + 8  # an 8-byte session ID, no ticket

        n0 = len(srv.log.wire)
        res = device(srv.port, "resume", full["session"])  # a reboot: a new Client from the saved session
        assert res["established"] and res["abbreviated"], res
        assert res["echoed"] == [True] * 3
        assert srv.log.handshakes[-1].resumed
        hw = res["handshake_wire"]
        measured(f"abbreviated handshake (resumed by session ID): device sent {hw[0]} dg / {hw[1]} B, received "
                 f"{hw[2]} dg / {hw[3]} B: {hw[1] + hw[3]} B (server log: {srv.wire_bytes(n0)})")
        assert _wire(res) < _wire(full)

        srv.restart()  # the server forgot every session and its ticket key
        again = device(srv.port, "resume", res["session"])
        assert again["established"] and not again["abbreviated"], again
        assert again["echoed"] == [True] * 3
        assert not srv.log.handshakes[-1].resumed
        measured(f"resumption refused, full handshake instead: {_wire(again)} B")


@pytest.mark.interop
def test_resumption_by_ticket_when_asked() -> None:
    """With tickets (config "tickets": true) the ticket rides in both ClientHellos of the cookie exchange: the
    abbreviated handshake is then larger than one by session ID, and larger than a full PSK handshake."""
    with CidServer(cid_length=4, record_size_limit=512, session_cache=0) as srv:
        full = device(srv.port, "full-tickets")
        assert full["established"] and not full["abbreviated"], full
        measured(f"full handshake (CID, record_size_limit, empty ticket extension): {_wire(full)} B")
        res = device(srv.port, "resume-tickets", full["session"])
        assert res["established"] and res["abbreviated"], res  # no session cache: the ticket did it
        hw = res["handshake_wire"]
        measured(f"abbreviated handshake (resumed by ticket): device sent {hw[0]} dg / {hw[1]} B, received "
                 f"{hw[2]} dg / {hw[3]} B: {hw[1] + hw[3]} B")
        assert _wire(res) > _wire(full)


@pytest.mark.interop
def test_record_size_limit_of_the_server_is_honoured() -> None:
    with CidServer(cid_length=4, record_size_limit=64) as srv:
        small = device(srv.port, "limit", "40")
        assert small["established"] and small["server_limit"] == 64
        assert small["room"] == 63  # the tls12_cid inner plaintext: the content and its type byte
        assert small["sent"] is True
        big = device(srv.port, "limit", "100")
        assert big["sent"] == "larger than mtu"
        assert [d for _, d in srv.log.data] == [b"x" * 40]


# --------------------------------------------------------------------------------------------------
# sans-IO, CPython
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("server_cid", [None, 0, 4])
@pytest.mark.parametrize("client_cid", [None, b"", b"\x01\x02\x03"])
def test_cid_flavours(server_cid: int | None, client_cid: bytes | None) -> None:
    net = Net(seed=1, server={"cid_length": server_cid}, cid=client_cid)
    c = net.run()
    assert c.established, c.error
    conn = net.server.connections[ADDR]
    if server_cid is None or client_cid is None:
        assert c.pcid is None
    else:
        assert c.pcid == conn.connection_id and conn.peer_connection_id == client_cid
    _exchange(net)


def test_record_overflow_is_fatal() -> None:
    net = Net(seed=2, server={"record_size_limit": 512}, rsl=64)
    c = net.run()
    assert c.established and c._lim == 64
    conn = net.server.connections[ADDR]
    net.server.send(ADDR, b"y" * 64)
    net.pump()
    assert c.recv() == [b"y" * 64]
    conn._max_payload = 1000  # a server that ignores our limit
    net.server.send(ADDR, b"y" * 65)
    net.pump()
    assert c.closed and c.error == 22


def test_server_limit_below_64_is_refused() -> None:
    c = dtls.Client(b"dev1", KEY, _rand(1))
    c.connect(0)
    c._rseq = 1  # as if the ServerHello was message 0
    exts = b"\0\x17\0\0" + b"\0\x1c\0\x02\0\x3f"  # extended_master_secret, record_size_limit 63
    c._message(2, b"\xfe\xfd" + bytes(32) + b"\0\xc0\xa8\0" + len(exts).to_bytes(2, "big") + exts, 0)
    assert c.closed and c.error == 47


@pytest.mark.parametrize(("tickets", "cache"), [(True, True), (True, False), (False, True)])
def test_ticket_and_session_id_resumption(tickets: bool, cache: bool) -> None:
    keys = TicketKeys(_rand(5))

    def server(seed: int) -> DTLSServer:
        return DTLSServer(DTLSConfiguration(is_client=False, psk_store={b"dev1": KEY}, random=_rand(seed),
                                            session_tickets=True), ticket_keys=keys,
                          session_cache=1000 if cache else 0)

    net = Net(seed=3, tickets=tickets)
    net.server = server(90)
    c = net.run()
    blob = c.state()
    assert c.established and blob and blob[0] == 1
    assert bool(c.ticket) == tickets and (tickets or len(c.sid) == 8)  # no ticket asked: an 8-byte session ID
    net2 = Net(seed=4, session=blob, tickets=tickets)
    net2.server = server(91) if not cache else net.server
    c2 = net2.run()
    assert c2.established and c2._abbr
    assert c2.state()
    c2.send(b"r")
    net2.pump()
    assert net2.server_data == [b"r"]


def _hello_extensions(c: dtls.Client) -> dict[int, bytes]:
    """The extensions of the ClientHello that ``c`` just sent."""
    d = c.datagrams()[0]
    body = d[13 + 12:]
    i = 2 + 32
    i += 1 + body[i]  # session ID
    i += 1 + body[i]  # cookie
    i += 2 + int.from_bytes(body[i:i + 2], "big")  # suites
    i += 1 + body[i]  # compression
    end = i + 2 + int.from_bytes(body[i:i + 2], "big")
    i += 2
    out = {}
    while i < end:
        t, n = int.from_bytes(body[i:i + 2], "big"), int.from_bytes(body[i + 2:i + 4], "big")
        out[t] = body[i + 4:i + 4 + n]
        i += 4 + n
    return out


def test_tickets_only_when_asked() -> None:
    """tickets=False (the device's default): no SessionTicket extension, and a saved session that holds a ticket
    resumes by its session ID, without the ticket; tickets=True: the ticket rides in the ClientHello."""
    blob = b"\1\xc0\xa8" + bytes(48) + b"\x08" + b"S" * 8 + b"T" * 100
    plain = dtls.Client(b"dev1", KEY, _rand(1))
    plain.connect(0)
    assert 0x23 not in _hello_extensions(plain)
    c = dtls.Client(b"dev1", KEY, _rand(1), session=blob)
    c.connect(0)
    assert c._rs == b"S" * 8 and c.ticket == b"" and 0x23 not in _hello_extensions(c)
    t = dtls.Client(b"dev1", KEY, _rand(1), tickets=True, session=blob)
    t.connect(0)
    assert t._rs == b"S" * 8 and _hello_extensions(t)[0x23] == b"T" * 100
    only = dtls.Client(b"dev1", KEY, _rand(1), session=b"\1\xc0\xa8" + bytes(48) + b"\0" + b"T" * 100)
    assert only._rs == b"" and only._ms is None  # a ticket alone, tickets off: nothing to resume with


def test_abbreviated_under_loss() -> None:
    srv = DTLSServer(DTLSConfiguration(is_client=False, psk_store={b"dev1": KEY}, random=_rand(7)))
    net = Net(seed=5)
    net.server = srv
    blob = net.run().state()
    ok = 0
    for seed in range(20):
        n = Net(seed=100 + seed, loss=0.3, session=blob, handshake_timeout=120)
        n.server = srv
        n.rng = random.Random(seed)
        c = n.run()
        if c.established:
            ok += 1
            assert c._abbr
    assert ok == 20


def test_no_resumption_without_ems_flag_or_with_garbage() -> None:
    for blob in (b"", b"\0" + bytes(60), b"\1\xc0\xa8" + bytes(10), b"\1\xc0\xa8" + bytes(48) + b"\x40"):
        c = dtls.Client(b"dev1", KEY, _rand(1), session=blob)
        assert c._rs == b"" and c._ms is None
