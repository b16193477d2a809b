"""The library's log lines (``iotdtls.*`` loggers): handshake steps of both roles and both key exchanges,
retransmissions, alerts, closes and evictions; nothing per application record; never a secret; and what a
bad_record_mac in a PSK handshake usually means, in the exception, the command-line error and the server's log.

Handshakes are driven in memory with a fake clock (``tests/helpers.py``); the last test runs the real
``iotdtls-server`` and ``iotdtls-client``.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    CLIENT_ADDR,
    IDENTITY,
    KEY,
    Pair,
    PkPair,
    client_config,
    drain,
    drain_server,
    established_pair,
    p256_key,
    run_until,
    server_config,
)
from peers import free_udp_port, run_peer

from iotdtls import DTLSConnection, DTLSServer
from iotdtls.cli.common import describe_error
from iotdtls.constants import AlertDescription, ContentType, HandshakeType
from iotdtls.errors import AlertError, BadRecordMac, RemoteAlert
from iotdtls.logs import MAX_IDENTITY_CHARS, PSK_MISMATCH_LOG, PSK_REJECTED_HINT, identity_text
from iotdtls.prf import HmacSha256Key, key_block
from iotdtls.reassembly import parse_fragments
from iotdtls.record import split_records

KEY_HEX = KEY.hex()
WRONG_KEY = bytes(range(0xA0, 0xB0))


class Capture(logging.Handler):
    """Every record of the ``iotdtls`` loggers at ``level`` and above, for the duration of a ``with``."""

    def __init__(self, level: int = logging.DEBUG) -> None:
        super().__init__(logging.DEBUG)
        self.level_wanted = level
        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger("iotdtls")
        self._saved = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Capture:
        self._logger.addHandler(self)
        self._logger.setLevel(self.level_wanted)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved)

    def lines(self, logger: str | None = None, level: int | None = None) -> list[str]:
        return [r.getMessage() for r in self.records
                if (logger is None or r.name == logger) and (level is None or r.levelno == level)]

    def text(self) -> str:
        return "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in self.records)


def has(cap: Capture, *needles: str, logger: str | None = None, level: int | None = None) -> None:
    """Each needle occurs in some line (of ``logger`` at ``level``), in this order."""
    lines = cap.lines(logger, level)
    pos = 0
    for needle in needles:
        hits = [i for i, line in enumerate(lines) if i >= pos and needle in line]
        assert hits, f"{needle!r} not logged (in order) by {logger or 'iotdtls'}:\n{cap.text()}"
        pos = hits[0] + 1


# -- handshake steps ---------------------------------------------------------------------------------------------

def test_psk_handshake_steps_at_debug() -> None:
    with Capture() as cap:
        pair = Pair()
        pair.handshake()
    assert pair.client.is_established
    hs, srv = "iotdtls.handshake", "iotdtls.server"
    has(cap, "client (server): sent flight ClientHello", "client (server): received HelloVerifyRequest (seq 0",
        "client (server): sent flight ClientHello", "client (server): received ServerHello (seq 1",
        "client (server): received ServerHelloDone (seq 2",
        "client (server): sent flight ClientKeyExchange, ChangeCipherSpec, Finished (1 datagram",
        "client (server): received ChangeCipherSpec", "client (server): received Finished (seq 3, epoch 1",
        logger=hs, level=logging.DEBUG)
    has(cap, "server (192.0.2.1:5000): received ClientHello (seq 0): sent HelloVerifyRequest", logger=srv,
        level=logging.DEBUG)
    has(cap, "server (192.0.2.1:5000): received ClientHello (seq 1, cookie verified)",
        "server (192.0.2.1:5000): sent flight ServerHello, ServerHelloDone",
        "server (192.0.2.1:5000): received ClientKeyExchange (seq 2", "server (192.0.2.1:5000): received Finished",
        "server (192.0.2.1:5000): sent flight ChangeCipherSpec, Finished (1 datagram", logger=hs,
        level=logging.DEBUG)
    established = cap.lines(hs, logging.INFO)
    assert established == [
        "server (192.0.2.1:5000): session established: TLS_PSK_WITH_AES_128_CCM_8, extended master secret yes, "
        "identity 'dev1', 0 retransmissions",
        "client (server): session established: TLS_PSK_WITH_AES_128_CCM_8, extended master secret yes, "
        "identity 'dev1', 0 retransmissions"]


def test_ecdhe_ecdsa_handshake_steps_at_debug() -> None:
    with Capture() as cap:
        pair = PkPair()
        pair.handshake()
    assert pair.client.is_established
    hs = "iotdtls.handshake"
    has(cap, "client (server): received ServerHello", "client (server): received Certificate (seq 2",
        "client (server): received ServerKeyExchange", "client (server): received CertificateRequest",
        "client (server): received ServerHelloDone",
        "client (server): sent flight Certificate, ClientKeyExchange, CertificateVerify, ChangeCipherSpec, "
        "Finished", "client (server): received Finished", logger=hs, level=logging.DEBUG)
    has(cap, "server (192.0.2.1:5000): sent flight ServerHello, Certificate, ServerKeyExchange, "
        "CertificateRequest, ServerHelloDone", "server (192.0.2.1:5000): received Certificate",
        "server (192.0.2.1:5000): received ClientKeyExchange", "server (192.0.2.1:5000): received CertificateVerify",
        "server (192.0.2.1:5000): received Finished", logger=hs, level=logging.DEBUG)
    established = cap.lines(hs, logging.INFO)
    assert len(established) == 2
    assert all("session established: TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, extended master secret yes, "
               "identity 'ni:///sha-256;" in line for line in established), established


# -- retransmissions, alerts, closes, evictions ------------------------------------------------------------------

def test_retransmissions_and_the_handshake_timeout_are_logged() -> None:
    pair = Pair(client_kw={"handshake_timeout": 20.0})  # retransmissions at 2, 6 and 14 s (timer 2, 4, 8, 8 s)
    with Capture() as cap:
        pair.client.connect(pair.now)
        run_until(pair, 30.0, deliver=False)  # everything lost
    assert cap.lines("iotdtls.handshake") == [
        "client (server): sent flight ClientHello (1 datagram, 77 bytes), retransmission timer 2 s",
        "client (server): retransmitted flight ClientHello (timer expired, attempt 1, next timer in 4 s)",
        "client (server): retransmitted flight ClientHello (timer expired, attempt 2, next timer in 8 s)",
        "client (server): retransmitted flight ClientHello (timer expired, attempt 3, next timer in 8 s)"]
    assert cap.lines("iotdtls.connection", logging.INFO) == [
        "client (server): handshake failed: handshake did not complete within 20 s (3 retransmissions)"]


def test_server_retransmission_after_a_lost_final_flight() -> None:
    pair = Pair()
    pair.client.connect(pair.now)
    with Capture() as cap:
        for _ in range(2):  # ClientHello, HelloVerifyRequest, ClientHello with the cookie, server flight
            for d in pair.c2s():
                pair.server.receive_datagram(d, CLIENT_ADDR, pair.now)
            for d in pair.s2c():
                pair.client.receive_datagram(d, pair.now)
        pair.c2s()  # the client's final flight is lost
        run_until(pair, 5.0)
    assert pair.client.is_established
    has(cap, "server (192.0.2.1:5000): retransmitted flight ServerHello, ServerHelloDone (timer expired, attempt 1",
        logger="iotdtls.handshake", level=logging.DEBUG)


def test_alerts_sent_and_received_and_closes() -> None:
    pair = established_pair()
    with Capture() as cap:
        pair.client.close()
        pair.pump()
    assert cap.lines("iotdtls.connection") == [
        "client (server): sent alert warning close_notify",
        "client (server) [identity 'dev1']: session closed (close_notify)",
        "server (192.0.2.1:5000): received alert warning close_notify",
        "server (192.0.2.1:5000): sent alert warning close_notify",
        "server (192.0.2.1:5000) [identity 'dev1']: session closed (close_notify)"]
    assert [r.levelno for r in cap.records] == [logging.DEBUG, logging.INFO, logging.DEBUG, logging.DEBUG,
                                                logging.INFO]


def test_fatal_alerts_are_logged_with_level_and_description() -> None:
    with Capture() as cap:
        pair = Pair(client_kw={"psk": WRONG_KEY})
        pair.handshake()
    has(cap, "server (192.0.2.1:5000): sent alert fatal bad_record_mac",
        "client (server): received alert fatal bad_record_mac", logger="iotdtls.connection", level=logging.DEBUG)
    has(cap, "server (192.0.2.1:5000) [identity 'dev1']: handshake failed: bad_record_mac (local)",
        "client (server) [identity 'dev1']: handshake failed: bad_record_mac (peer sent): " + PSK_REJECTED_HINT,
        logger="iotdtls.connection", level=logging.INFO)


def _connect(server: DTLSServer, addr: tuple[str, int], seed: int, now: float) -> DTLSConnection:
    client = DTLSConnection(client_config(seed), peer="server")
    client.connect(now)
    for _ in range(4):
        for d in client.datagrams_to_send(now):
            server.receive_datagram(d, addr, now)
        for d, _ in server.datagrams_to_send(now):
            client.receive_datagram(d, now)
    assert client.is_established
    return client


def test_evictions_are_logged() -> None:
    server = DTLSServer(server_config(), max_sessions_per_identity=1)
    with Capture(logging.INFO) as cap:
        _connect(server, ("192.0.2.7", 1000), 11, 0.0)
        _connect(server, ("192.0.2.8", 1000), 12, 1.0)  # same identity: the first session makes room
    has(cap, "session 192.0.2.7:1000 (identity 'dev1') closed: replaced by a newer session of the same identity",
        logger="iotdtls.server", level=logging.WARNING)
    has(cap, "server (192.0.2.7:1000) [identity 'dev1']: session closed: replaced by a newer session of the same "
        "identity", logger="iotdtls.connection", level=logging.INFO)


def test_identities_are_escaped_and_bounded() -> None:
    evil = b"dev\n2024-01-01 INFO forged line\x1b[31m" + b"x" * 500
    text = identity_text(evil)
    assert "\n" not in text and "\x1b" not in text
    assert len(text) < MAX_IDENTITY_CHARS + 60
    with Capture() as cap:
        pair = Pair(client_kw={"psk_identity": evil}, server_kw={"psk_store": {evil: KEY}})
        pair.handshake()
    assert pair.client.is_established
    assert cap.records and all(r.getMessage().isprintable() and len(r.getMessage()) < 400 for r in cap.records)


# -- nothing per application record ------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_nothing_logged_per_application_record(level: int) -> None:
    pair = established_pair()
    with Capture(level) as cap:
        for i in range(100):
            pair.client.send(b"reading %d" % i)
            pair.server.send(CLIENT_ADDR, b"ack %d" % i)
            pair.pump()
    assert len(drain(pair.client)) == 100 and len(drain_server(pair.server)) == 100
    assert cap.records == [], cap.text()


# -- no secret, ever ---------------------------------------------------------------------------------------------

def _server_random(wire: list[tuple[str, bytes]]) -> bytes:
    for direction, datagram in wire:
        for rec in split_records(datagram):
            if direction == "s2c" and rec.epoch == 0 and rec.content_type == ContentType.HANDSHAKE:
                for frag in parse_fragments(rec.fragment):
                    if frag.msg_type == HandshakeType.SERVER_HELLO:
                        return frag.body[2:34]
    raise AssertionError("no ServerHello on the wire")


def _session_secrets(keylog: str, wire: list[tuple[str, bytes]]) -> list[bytes]:
    """The master secret of every key log line and the key block (write keys and IVs) it expands to."""
    secrets = []
    server_random = _server_random(wire)
    for line in keylog.splitlines():
        _, client_random, master = line.split()
        master_bytes = bytes.fromhex(master)
        secrets.append(master_bytes)
        block = key_block(HmacSha256Key(master_bytes), bytes.fromhex(client_random), server_random, 40)
        secrets += [block[0:16], block[16:32], block[32:36], block[36:40]]
    assert secrets
    return secrets


def _forms(secret: bytes) -> Iterator[str]:
    yield secret.hex()
    yield secret.hex().upper()
    yield repr(secret)[2:-1]
    yield secret.decode("latin-1")
    yield str(int.from_bytes(secret, "big"))


def _assert_no_secret(cap: Capture, secrets: list[bytes]) -> None:
    assert cap.records
    texts = []
    for r in cap.records:
        texts.append(r.getMessage())
        texts += [repr(a) for a in (r.args or ())] + [str(a) for a in (r.args or ())]
    for secret in secrets:
        for form in _forms(secret):
            assert not any(form in t for t in texts), f"secret {secret.hex()} logged as {form!r}"


def test_no_secret_is_logged() -> None:
    plaintext = b"confidential reading 4711"
    client_log, server_log = io.StringIO(), io.StringIO()
    ckey, skey = p256_key("client"), p256_key("server")
    with Capture() as cap:
        psk = Pair(client_kw={"keylog_file": client_log}, server_kw={"keylog_file": server_log})
        psk.handshake()
        psk.client.send(plaintext)
        psk.server.send(CLIENT_ADDR, plaintext)
        psk.pump()
        psk.client.close()
        psk.pump()
        pk = PkPair(client_kw={"keylog_file": client_log}, server_kw={"keylog_file": server_log})
        pk.handshake()
        pk.client.send(plaintext)
        pk.pump()
        wrong = Pair(client_kw={"psk": WRONG_KEY})
        wrong.handshake()
        lost = Pair()
        lost.client.connect(0.0)
        run_until(lost, 30.0, deliver=False)
    assert psk.client.is_closed and pk.client.is_established and wrong.client.is_closed
    secrets = [KEY, WRONG_KEY, plaintext]
    secrets += [k.private_numbers().private_value.to_bytes(32, "big") for k in (ckey, skey)]
    secrets += _session_secrets(client_log.getvalue(), psk.wire + pk.wire)
    assert server_log.getvalue() == client_log.getvalue()
    _assert_no_secret(cap, secrets)


# -- what a bad_record_mac in a PSK handshake means --------------------------------------------------------------

def test_wrong_psk_client_error_says_what_it_means() -> None:
    pair = Pair(client_kw={"psk": WRONG_KEY})
    pair.handshake()
    error = pair.client.error
    assert isinstance(error, RemoteAlert) and error.description == AlertDescription.bad_record_mac
    assert error.reason == PSK_REJECTED_HINT
    assert str(error) == "bad_record_mac (peer sent): the server rejected our key: wrong PSK or unknown identity"
    assert describe_error(error) == \
        "server sent alert: bad_record_mac (the server rejected our key: wrong PSK or unknown identity)"


def test_our_own_finished_check_failing_says_it_too() -> None:
    """The server's Finished does not authenticate at the client (its keys differ from ours)."""
    pair = Pair()
    pair.client.connect(pair.now)
    for _ in range(2):
        for d in pair.c2s():
            pair.server.receive_datagram(d, CLIENT_ADDR, pair.now)
        for d in pair.s2c():
            pair.client.receive_datagram(d, pair.now)
    for d in pair.c2s():
        pair.server.receive_datagram(d, CLIENT_ADDR, pair.now)
    (final,) = pair.s2c()
    pair.client.receive_datagram(final[:-1] + bytes([final[-1] ^ 1]), pair.now)
    error = pair.client.error
    assert isinstance(error, BadRecordMac) and not error.remote
    assert str(error).endswith(PSK_REJECTED_HINT)


def test_ecdhe_failures_get_no_psk_hint() -> None:
    pair = PkPair(client_kw={"trust": ("nobody",)})
    pair.handshake()
    error = pair.client.error
    assert isinstance(error, AlertError) and "PSK" not in str(error)


def test_server_logs_a_key_mismatch_and_answers_unknown_identities_alike() -> None:
    """A wrong key and an unknown identity: the same log line (but for the identity) and the same datagrams."""
    runs = []
    for identity_bytes, key in ((IDENTITY, WRONG_KEY), (b"stranger", KEY)):
        with Capture() as cap:
            pair = Pair(client_kw={"psk_identity": identity_bytes, "psk": key})
            pair.handshake()
        assert pair.client.error is not None and PSK_REJECTED_HINT in str(pair.client.error)
        mismatch = [line for line in cap.lines("iotdtls.handshake", logging.INFO) if PSK_MISMATCH_LOG in line]
        assert len(mismatch) == 1, cap.text()
        identity = identity_text(identity_bytes)
        assert mismatch[0] == f"server (192.0.2.1:5000): {PSK_MISMATCH_LOG} ({identity})"
        server_levels = [(r.name, r.levelno) for r in cap.records if r.getMessage().startswith("server")]
        runs.append(([d for direction, d in pair.wire if direction == "s2c"], server_levels))
    (wire_a, levels_a), (wire_b, levels_b) = runs
    assert levels_a == levels_b
    assert wire_a[-1] == wire_b[-1]  # the same plaintext fatal bad_record_mac alert
    assert [len(d) for d in wire_a] == [len(d) for d in wire_b]


def test_cli_verbose_output_shows_handshake_steps_and_no_key(tmp_path: Path) -> None:
    """The real iotdtls-server and iotdtls-client with -vv (the tools' flags turn the library's loggers on): the
    handshake steps of both, the wrong-key hint on both sides, and neither key anywhere."""
    wrong_hex = WRONG_KEY.hex()
    psk = tmp_path / "psk.txt"
    psk.write_text(f"dev1:{KEY_HEX}\n")
    port = free_udp_port()
    server = [sys.executable, "-m", "iotdtls.cli.server", "--host", "127.0.0.1", "--port", str(port),
              "--psk-file", str(psk), "-vv"]

    def client(key_hex: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "iotdtls.cli.client", "127.0.0.1", str(port), "--psk-identity",
                               "dev1", "--psk", key_hex, "--linger", "0.2", "-vv"], input="hello\n",
                              capture_output=True, text=True, timeout=60)

    with run_peer("iotdtls-server", server, listen_port=port) as srv:
        good, bad = client(KEY_HEX), client(wrong_hex)
        srv.wait_output(PSK_MISMATCH_LOG, timeout=30)
        srv.proc.terminate()
        srv.wait_exit(timeout=30)
        srv.stderr.join(timeout=10)
        server_err = srv.stderr.text()
    assert (good.returncode, good.stdout) == (0, "hello\n"), good.stderr
    for needle in ("client: sent flight ClientHello", "client: received HelloVerifyRequest",
                   "client: sent flight ClientKeyExchange, ChangeCipherSpec, Finished", "client: received Finished",
                   "client: session established: TLS_PSK_WITH_AES_128_CCM_8", "sent alert warning close_notify"):
        assert needle in good.stderr, good.stderr
    for needle in ("received ClientHello (seq 1, cookie verified)", "sent flight ServerHello, ServerHelloDone",
                   "received ClientKeyExchange", "session established: TLS_PSK_WITH_AES_128_CCM_8",
                   "sent alert fatal bad_record_mac", f"{PSK_MISMATCH_LOG} (identity 'dev1')"):
        assert needle in server_err, server_err
    assert bad.returncode == 1, bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == ("iotdtls-client: server sent alert: bad_record_mac (the server "
                                                   "rejected our key: wrong PSK or unknown identity)")
    for text in (good.stderr, bad.stderr, server_err):
        for key_hex in (KEY_HEX, wrong_hex):
            assert key_hex not in text.lower()
