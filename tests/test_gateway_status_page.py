"""The status page at ``/`` of the gateway's metrics server: rendered from figures (escaping, the chart, the
bound on device rows), and served by a real gateway to a real headless browser (Debian's chromium), whose DOM
shows the devices the test provisioned and whose screenshot is not blank."""

from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gateway_fixtures import device_config, run_device
from iotdtls_gateway.devices import Device, Snapshot
from iotdtls_gateway.figures import MAX_DEVICE_ROWS, device_rows
from iotdtls_gateway.stats import GatewayStats
from iotdtls_gateway.status_page import render
from peers import require_peer
from test_gateway_metrics import http, metrics_gateway

NOW = 1_796_649_000.0  # 2026-12-07 13:10 UTC
EVIL = '<script>alert("x")</script><img src="https://example.com/x.png">'


def figures(**changes: Any) -> dict[str, Any]:
    """A reading of the figures as :func:`iotdtls_gateway.figures.collect` returns it."""
    f: dict[str, Any] = {
        "now": NOW, "started_at": NOW - 3600, "uptime_s": 3600.0, "coaps": "0.0.0.0:5684", "health": None,
        "devices": {"registered": 2, "enabled": 1, "revoked": 1}, "sessions": {"open": 1},
        "handshakes": {"ok": 4, "failed": 1, "by_suite": {"TLS_PSK_WITH_AES_128_CCM_8": 4}},
        "messages": {"received": 12, "acknowledged": 11, "stored": 10, "duplicates": 1,
                     "per_minute": [0] * 50 + [1, 2, 3, 0, 0, 0, 0, 0, 0, 5], "last_hour": 11},
        "refusals": {"telemetry": {"forbidden": 1}, "dtls": {}, "coap": {}}, "evictions": {}, "revocations": {},
        "spool": {"messages": 10, "bytes": 1400, "max_bytes": 1 << 28, "oldest_at": NOW - 90, "oldest_age_s": 90.0,
                  "commits": 10, "commit_failures": 0},
        "uplink": {"state": "offline", "broker": "mqtt://broker.example:1883", "published": 0, "sent": 0,
                   "reconnects": 3, "in_flight": 0, "last_error": EVIL,
                   "latency": {"count": 0, "sum_s": 0.0, "p50_le_s": None, "p99_le_s": None, "buckets": []}},
        "commands": {"received": 2, "delivered": 1, "expired": 1, "undeliverable": 0, "results": 1, "pending": 0},
    }
    f.update(changes)
    return f


ROWS = [{"device": "kitchen-1", "session": "open", "last_seen": NOW - 5, "today": 7, "metadata": EVIL},
        {"device": "cellar-3", "session": "revoked", "last_seen": None, "today": 0, "metadata": ""}]


def test_the_page_escapes_everything_and_loads_nothing() -> None:
    page = render(figures(), ROWS, 0)
    assert "<script" not in page and "<img" not in page
    assert html.escape(EVIL, quote=True) in page  # the metadata and the uplink's error, shown as text
    # nothing is fetched: no src/href to another origin, no stylesheet or script element
    assert re.findall(r"(?:src|href)=\"([^\"]*)\"", page) == ["/metrics", "/status.json", "/healthz"]
    assert "https://" not in page.replace(html.escape(EVIL, quote=True), "")
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert '<meta http-equiv="refresh" content="10">' in page
    for text in ("kitchen-1", "cellar-3", "5 s ago", "never", "oldest entry 90 s old",
                 "offline", "mqtt://broker.example:1883", "0 pending"):
        assert text in page, text


def test_the_chart_has_one_bar_per_minute_scaled_to_the_busiest() -> None:
    page = render(figures(), ROWS, 0)
    svg = page[page.index("<svg"):page.index("</svg>")]
    bars = re.findall(r'<rect class="bar" x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)">'
                      r"<title>(\d\d:\d\d) UTC: (\d+) messages?</title>", svg)
    assert len(bars) == 60
    heights = [float(h) for _, h, _, _ in bars]
    assert [int(n) for *_, n in bars] == figures()["messages"]["per_minute"]
    assert max(heights) == heights[-1] == pytest.approx(2.5 * heights[51])  # 5 and 2 on a scale up to 5
    assert heights[0] == 0 and bars[-1][2] == "13:10"  # the last bar is the current minute
    assert ">-60 min<" in svg and ">now<" in svg
    empty = render(figures(messages={**figures()["messages"], "per_minute": [0] * 60}), [], 0)
    assert "No device in the registry yet" in empty and "NaN" not in empty


def test_device_rows_are_bounded_and_most_recent_first() -> None:
    clock = lambda: NOW  # noqa: E731
    stats = GatewayStats(clock)
    devices = [Device(id=f"dev-{i:04d}", state="enabled" if i % 10 else "revoked", metadata={"n": i},
                      created_at=NOW - 86400) for i in range(MAX_DEVICE_ROWS + 200)]
    for i in (7, 3, 1100):
        stats.reading_stored(f"dev-{i:04d}")
    gw = SimpleNamespace(snapshot=Snapshot(devices, 1), stats=stats, transport=None)
    rows, hidden = device_rows(gw)  # type: ignore[arg-type]
    assert len(rows) == MAX_DEVICE_ROWS and hidden == 200
    assert [r["device"] for r in rows[:3]] == ["dev-0003", "dev-0007", "dev-1100"]  # seen, then by id
    assert {r["session"] for r in rows} == {"none", "revoked"} and rows[3]["today"] == 0
    assert rows[0]["today"] == 1 and rows[0]["metadata"] == '{"n": 3}'
    page = render(figures(), rows, hidden)
    assert page.count('<td class="id">') == MAX_DEVICE_ROWS
    assert "200 more devices not shown (the 1000 most recently seen are)" in page


# -- a real browser ---------------------------------------------------------------------------------------------
def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browse(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    browser = chromium()
    assert browser is not None
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-extensions", "--disable-background-networking", "--hide-scrollbars",
                           f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1200,900", *args, url],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp)})


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced RGB or RGBA PNG (what chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r[i:i + 3]) for r in rows for i in range(0, stride, bpp)]  # type: ignore[misc]


def test_the_page_in_a_real_headless_browser(tmp_path: Path) -> None:
    require_peer("chromium (Debian package chromium)", chromium() is not None)
    with metrics_gateway(tmp_path) as (gw, mport):
        cfg = device_config(gw.provision("kitchen-1"), host="127.0.0.1", port=gw.port)
        gw.provision("garden-2")
        gw.provision("cellar-3")
        assert gw.provision_cmd("set-meta", "kitchen-1", "room=<b>kitchen</b>").returncode == 0
        r = run_device(cfg, 4)
        assert r.returncode == 0 and r.stdout.split() == ["2.04"] * 4, r.stdout + r.stderr
        assert gw.provision_cmd("revoke", "cellar-3").returncode == 0
        status, content_type, _ = http(mport, "/")
        assert status == 200 and content_type == "text/html; charset=utf-8"
        url = f"http://127.0.0.1:{mport}/"
        dom = browse(url, tmp_path, "--dump-dom")
        shot = tmp_path / "status.png"
        taken = browse(url, tmp_path, f"--screenshot={shot}")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    cells = re.findall(r'<td class="id">([^<]*)</td><td><span class="badge (\w+)">', text)
    assert cells == [("kitchen-1", "none"), ("cellar-3", "revoked"), ("garden-2", "none")], cells
    assert re.search(r'<td class="num">4</td><td class="meta">\{"room": "&lt;b&gt;kitchen&lt;/b&gt;"\}</td>', text)
    assert "<b>kitchen" not in text  # the metadata stayed text: the browser made no element of it
    assert text.count('<rect class="bar"') == 60 and "Messages per minute, last hour" in text
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 900)
    colours: dict[bytes, int] = {}
    for p in pixels:
        colours[p] = colours.get(p, 0) + 1
    background = max(colours.values())
    assert len(colours) > 50, len(colours)  # text, badges, the chart: not a blank page
    assert background < 0.95 * len(pixels)
    assert colours.get(b"\x1d\x24\x30", 0) > 1200 * 40  # the dark header band
    assert colours.get(b"\x2f\x6f\xd6", 0) > 0  # the chart's bars (the accent colour)
