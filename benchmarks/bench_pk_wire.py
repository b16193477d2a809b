"""Wire size of an ECDHE-ECDSA handshake with raw public keys and mutual authentication, iotdtls versus GnuTLS.

Run with ``python -m benchmarks.bench_pk_wire``.

Counted: UDP payload bytes and datagrams, both directions, from the first ClientHello up to and including
the datagram carrying the server's Finished (the end of a full handshake); the cookie exchange is included.
Not counted: anything after that (application data, close_notify) and GnuTLS's NewSessionTicket records,
which gnutls-serv sends in its final flight; they are cut out of their datagrams and reported apart.

Pairs, at ``mtu`` 512 (the iotdtls default) and 256, TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 on P-256:

* iotdtls client <-> iotdtls server, sans-IO in memory (:class:`benchmarks.bench_handshake.IotPair`, seeded
  randomness, so the figure is reproducible; ECDSA signatures are DER and 70-72 bytes, so other runs of any
  stack vary by a few bytes);
* iotdtls client (:func:`iotdtls.aio.connect`) -> ``gnutls-serv``, ``gnutls-cli`` -> iotdtls server
  (:func:`iotdtls.aio.serve`) and ``gnutls-cli`` -> ``gnutls-serv``, over 127.0.0.1 through a
  zero-impairment :class:`iotdtls.netem.NetemProxy` whose observer sees every datagram.  Both GnuTLS tools
  get ``--mtu`` and the keys (written by :mod:`iotdtls.keys` into a temporary directory).

The GnuTLS priority removes X.509 from the certificate types (``-CTYPE-ALL``): with only ``+CTYPE-CLI-RAWPK``
added to NORMAL, gnutls-serv selects X.509 for the client (both list it first), gnutls-cli sends no certificate
and ``--require-client-cert`` fails the handshake ("No certificate was found").  For comparison the same run
also measures the default PSK handshake (:func:`benchmarks.bench_wire.iotdtls_wire`).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from benchmarks import bench_wire
from benchmarks.bench_handshake import IotPair
from benchmarks.bench_pk_handshake import CLIENT_KEY, SERVER_KEY, client_config, server_config
from benchmarks.ports import free_port, udp_bound
from iotdtls import DTLSConfiguration
from iotdtls.aio import connect, serve
from iotdtls.constants import ContentType, HandshakeType
from iotdtls.keys import fingerprint, private_key_pem, public_key_pem, spki_der, write_secret_file
from iotdtls.netem import Address, Direction, Impairment, NetemProxy
from iotdtls.record import CipherState
from iotdtls.trust import TrustStore

__all__ = ["PRIORITY", "Capture", "handshake_part", "iotdtls_in_memory", "main", "over_udp"]

PRIORITY: Final = ("NORMAL:-VERS-ALL:+VERS-DTLS1.2:-CIPHER-ALL:+AES-128-CCM-8:-KX-ALL:+ECDHE-ECDSA:"
                   "-CTYPE-ALL:+CTYPE-CLI-RAWPK:+CTYPE-SRV-RAWPK")
MTUS: Final = (512, 256)
TIMEOUT: Final = 10.0
NEW_SESSION_TICKET: Final = 4
_NAMES: Final = {HandshakeType.CERTIFICATE: "Certificate", HandshakeType.CERTIFICATE_REQUEST: "CertificateRequest",
                 HandshakeType.CERTIFICATE_VERIFY: "CertificateVerify", NEW_SESSION_TICKET: "NewSessionTicket"}
PAIRS: Final = (("iotdtls", "iotdtls <-> iotdtls (in memory)"),
                ("iotdtls_client_gnutls_server", "iotdtls client -> gnutls-serv"),
                ("gnutls_client_iotdtls_server", "gnutls-cli -> iotdtls server"),
                ("gnutls", "gnutls-cli <-> gnutls-serv"))


@dataclass
class Capture:
    """The counted datagrams of one handshake, ``(from_client, payload)``, and what was left out."""

    datagrams: list[tuple[bool, bytes]]
    ticket_bytes: int = 0
    ticket_datagrams: int = 0
    excluded: int = 0  # datagrams after the server's Finished (application data, alerts)
    messages: list[list[str]] = field(default_factory=list)

    def bytes_(self, from_client: bool | None = None) -> int:
        return sum(len(d) for c, d in self.datagrams if from_client is None or c == from_client)

    def count(self, from_client: bool | None = None) -> int:
        return sum(1 for c, _ in self.datagrams if from_client is None or c == from_client)

    @property
    def largest(self) -> int:
        return max(len(d) for _, d in self.datagrams)


def _records(datagram: bytes) -> list[bytes]:
    out, pos = [], 0
    while len(datagram) - pos >= 13:
        end = pos + 13 + int.from_bytes(datagram[pos + 11:pos + 13], "big")
        out.append(datagram[pos:end])
        pos = end
    return out


def _is_ticket(record: bytes) -> bool:
    epoch = int.from_bytes(record[3:5], "big")
    return record[0] == ContentType.HANDSHAKE and epoch == 0 and len(record) > 13 and record[13] == NEW_SESSION_TICKET


def _server_finished(record: bytes) -> bool:
    return record[0] == ContentType.HANDSHAKE and int.from_bytes(record[3:5], "big") > 0


def handshake_part(log: list[tuple[bool, bytes]]) -> Capture:
    """Cut a datagram log after the server's Finished and take the NewSessionTicket records out.

    Raises when the log shows no server Finished or a retransmission (a repeated epoch-0 handshake fragment
    or a second protected handshake record in one direction), which would inflate the count.
    """
    end = next((i for i, (c, d) in enumerate(log) if not c and any(map(_server_finished, _records(d)))), None)
    if end is None:
        raise RuntimeError(f"no server Finished among {len(log)} datagrams")
    cap = Capture([], excluded=len(log) - end - 1)
    seen: set[tuple[bool, bytes]] = set()
    for from_client, datagram in log[:end + 1]:
        kept = []
        for rec in _records(datagram):
            if rec[0] == ContentType.HANDSHAKE:
                # epoch 0: message_seq + fragment_offset of the (first) fragment; protected: one record expected
                key = (from_client, rec[17:22] if int.from_bytes(rec[3:5], "big") == 0 else b"protected")
                if key in seen:
                    raise RuntimeError("retransmission during the handshake")
                seen.add(key)
            if _is_ticket(rec):
                cap.ticket_bytes += len(rec)
            else:
                kept.append(rec)
        if kept:
            cap.datagrams.append((from_client, b"".join(kept)))
        else:
            cap.ticket_datagrams += 1
    return cap


def _name(text: str) -> str:
    for msg_type, name in _NAMES.items():
        text = text.replace(f"handshake({int(msg_type)})", name)
    return text


def _describe(cap: Capture, client_read: CipherState | None = None,
              server_read: CipherState | None = None) -> Capture:
    cap.messages = [[_name(m) for m in bench_wire.describe_datagram(c, d, server_read if c else client_read).messages]
                    for c, d in cap.datagrams]
    return cap


def iotdtls_in_memory(mtu: int, *, mutual: bool = True, **kw: object) -> Capture:
    """An iotdtls RPK handshake in memory (seeded randomness), every datagram counted."""
    seed = random.Random(f"bench_pk_wire/{mtu}")
    ccfg = client_config(mutual=mutual, mtu=mtu, random=seed.randbytes, **kw)
    scfg = server_config(mutual=mutual, mtu=mtu, random=seed.randbytes, **kw)
    pair = IotPair(ccfg, scfg, record_wire=True)
    pair.handshake()
    pair.check_established()
    return _describe(handshake_part(pair.wire), getattr(pair.client, "_read_cipher", None),
                     getattr(pair.server_conn, "_read_cipher", None))


# --------------------------------------------------------------------------------------------------------
# real peers over UDP, through a counting proxy
# --------------------------------------------------------------------------------------------------------


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _gnutls_serv(keys: Path, mtu: int) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        "gnutls-serv", "--udp", "-p", str(port), "--echo", "--priority", PRIORITY, "--rawpkkeyfile",
        str(keys / "server.key"), "--rawpkfile", str(keys / "server.pub"), "--require-client-cert",
        "--mtu", str(mtu), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not udp_bound(port):
        if proc.returncode is not None or loop.time() > deadline:
            await _stop(proc)
            raise RuntimeError(f"gnutls-serv did not start on port {port}")
        await asyncio.sleep(0.02)
    return proc, port


async def _gnutls_cli(port: int, keys: Path, mtu: int) -> None:
    """Run gnutls-cli until its handshake completes, then close its stdin so that it says goodbye and exits."""
    proc = await asyncio.create_subprocess_exec(
        "gnutls-cli", "--udp", "-p", str(port), "127.0.0.1", "--priority", PRIORITY, "--rawpkkeyfile",
        str(keys / "client.key"), "--rawpkfile", str(keys / "client.pub"), "--insecure", "--mtu", str(mtu),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    output = b""
    try:
        while b"Handshake was completed" not in output:
            line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
            if not line:
                raise RuntimeError("gnutls-cli handshake failed:\n" + output.decode(errors="replace"))
            output += line
        proc.stdin.close()
        await asyncio.wait_for(proc.communicate(), TIMEOUT)
    finally:
        await _stop(proc)


async def _iotdtls_client(port: int, mtu: int) -> None:
    cfg = DTLSConfiguration(is_client=True, private_key=CLIENT_KEY, mtu=mtu,
                            trust=TrustStore.of([fingerprint(spki_der(SERVER_KEY))]))
    session = await asyncio.wait_for(connect("127.0.0.1", port, cfg), TIMEOUT)
    if session.peer_credential is None:
        raise RuntimeError("iotdtls client: no server key")
    await session.close()


async def _through_proxy(target_port: int, run_client: Callable[[int], Awaitable[None]],
                         ) -> list[tuple[bool, bytes]]:
    """Put a zero-impairment proxy in front of ``target_port``, run ``run_client(proxy_port)``, return the log."""
    log: list[tuple[bool, bytes]] = []

    def observe(direction: Direction, _client: Address, data: bytes, _delays: list[float]) -> None:
        log.append((direction == "c2s", bytes(data)))

    proxy = NetemProxy(("127.0.0.1", target_port), Impairment(), observer=observe)
    _, port = await proxy.start()
    try:
        await run_client(port)
        await asyncio.sleep(0.1)  # let the last datagrams through
    finally:
        proxy.close()
    return log


async def _capture(pair: str, keys: Path, mtu: int) -> Capture:
    if pair == "gnutls_client_iotdtls_server":
        cfg = DTLSConfiguration(is_client=False, private_key=SERVER_KEY, require_client_auth=True, mtu=mtu,
                                trust=TrustStore.of([fingerprint(spki_der(CLIENT_KEY))]))
        server = await serve("127.0.0.1", 0, cfg)
        try:
            log = await _through_proxy(server.address[1], lambda p: _gnutls_cli(p, keys, mtu))
        finally:
            server.close()
        return _describe(handshake_part(log))
    proc, target = await _gnutls_serv(keys, mtu)
    try:
        if pair == "gnutls":
            log = await _through_proxy(target, lambda p: _gnutls_cli(p, keys, mtu))
        else:
            log = await _through_proxy(target, lambda p: _iotdtls_client(p, mtu))
    finally:
        await _stop(proc)
    return _describe(handshake_part(log))


async def _over_udp_async(mtus: tuple[int, ...], attempts: int) -> dict[tuple[str, int], Capture]:
    out: dict[tuple[str, int], Capture] = {}
    with tempfile.TemporaryDirectory(prefix="bench_pk_wire") as tmp:
        keys = Path(tmp)
        for stem, key in (("server", SERVER_KEY), ("client", CLIENT_KEY)):
            write_secret_file(keys / f"{stem}.key", private_key_pem(key))
            (keys / f"{stem}.pub").write_bytes(public_key_pem(key))
        for mtu in mtus:
            for pair, _ in PAIRS[1:]:
                for attempt in range(attempts):
                    try:
                        out[(pair, mtu)] = await _capture(pair, keys, mtu)
                        break
                    except RuntimeError:
                        if attempt == attempts - 1:
                            raise
    return out


def over_udp(mtus: tuple[int, ...] = MTUS, *, attempts: int = 3) -> dict[tuple[str, int], Capture]:
    """``{(pair, mtu): Capture}`` of the three pairs with GnuTLS, over loopback (retried on retransmission)."""
    return asyncio.run(_over_udp_async(mtus, attempts))


def _row(label: str, cap: Capture) -> str:
    ticket = f"{cap.ticket_bytes} B / {cap.ticket_datagrams}" if cap.ticket_bytes else "-"
    return (f"  {label:34} {cap.bytes_(True):5d} / {cap.count(True):2d} {cap.bytes_(False):5d} / {cap.count(False):2d} "
            f"{cap.bytes_():7d} {cap.count():6d} {cap.largest:7d}  {ticket}")


def _print_datagrams(title: str, cap: Capture) -> None:
    print(f"  {title}: {cap.bytes_()} B in {cap.count()} datagrams")
    for n, ((from_client, datagram), names) in enumerate(zip(cap.datagrams, cap.messages, strict=True), 1):
        print(f"    {n:2d} {'C->S' if from_client else 'S->C'} {len(datagram):4d} B  {', '.join(names)}")


def main() -> dict[str, Any]:
    """Measure every pair at both MTUs (the GnuTLS ones only if GnuTLS is installed); print and return."""
    caps: dict[tuple[str, int], Capture] = {("iotdtls", mtu): iotdtls_in_memory(mtu) for mtu in MTUS}
    have_gnutls = shutil.which("gnutls-cli") is not None and shutil.which("gnutls-serv") is not None
    if have_gnutls:
        caps |= over_udp()
    psk = bench_wire.iotdtls_wire()
    psk_bytes, psk_count = sum(i.size for i in psk), len(psk)
    server_only = iotdtls_in_memory(512, mutual=False)
    out: dict[str, Any] = {"psk_bytes": psk_bytes, "psk_datagrams": psk_count, "have_gnutls": have_gnutls,
                           "iotdtls_server_only_512_bytes": server_only.bytes_(),
                           "iotdtls_server_only_512_datagrams": server_only.count()}
    print("RPK handshake, mutual authentication, ECDHE-ECDSA P-256 AES-128-CCM-8, cookie exchange (UDP payload, "
          "up to the server's Finished; GnuTLS session tickets excluded)")
    for mtu in MTUS:
        print(f"mtu {mtu}:  {'':28} {'C->S B / n':>10} {'S->C B / n':>10} {'total B':>7} {'dgrams':>6} "
              f"{'largest':>7}  ticket (excluded)")
        for pair, label in PAIRS:
            cap = caps.get((pair, mtu))
            if cap is None:
                print(f"  {label:34} (GnuTLS not installed)")
                continue
            print(_row(label, cap))
            out |= {f"{pair}_{mtu}_bytes": cap.bytes_(), f"{pair}_{mtu}_datagrams": cap.count(),
                    f"{pair}_{mtu}_largest": cap.largest, f"{pair}_{mtu}_ticket_bytes": cap.ticket_bytes,
                    f"{pair}_{mtu}_ticket_datagrams": cap.ticket_datagrams,
                    f"{pair}_{mtu}_datagrams_after_handshake": cap.excluded}
    for mtu in MTUS:
        _print_datagrams(f"iotdtls <-> iotdtls, mtu {mtu}", caps[("iotdtls", mtu)])
        if ("gnutls", mtu) in caps:
            _print_datagrams(f"gnutls-cli <-> gnutls-serv, mtu {mtu}", caps[("gnutls", mtu)])
    ours = caps[("iotdtls", 512)]
    print(f"  iotdtls RPK mutual vs PSK (mtu 512): {ours.bytes_()} B / {ours.count()} datagrams vs "
          f"{psk_bytes} B / {psk_count} = {ours.bytes_() / psk_bytes:.2f}x bytes; RPK server-only: "
          f"{server_only.bytes_()} B / {server_only.count()} datagrams")
    out["rpk_vs_psk_bytes"] = ours.bytes_() / psk_bytes
    for mtu in MTUS:
        if ("gnutls", mtu) in caps:
            ratio = caps[("iotdtls", mtu)].bytes_() / caps[("gnutls", mtu)].bytes_()
            out[f"iotdtls_vs_gnutls_{mtu}_bytes"] = ratio
            print(f"  iotdtls / GnuTLS bytes at mtu {mtu}: {ratio:.2f}x")
    out["datagram_lists"] = {f"{pair}_{mtu}": [(c, len(d), names) for (c, d), names in zip(cap.datagrams,
                             cap.messages, strict=True)] for (pair, mtu), cap in caps.items()}
    return out


if __name__ == "__main__":
    main()
