"""The status page at ``/`` of the metrics server: plain HTML and CSS, rendered on the server, with an inline
SVG chart of messages per minute over the last hour. No JavaScript, nothing fetched from elsewhere (the server
sends a Content-Security-Policy that forbids it). Every text that comes from outside (device ids, metadata, the
uplink's last error) is escaped. The page lists at most :data:`.figures.MAX_DEVICE_ROWS` devices, the most
recently seen first, and says how many more there are.
"""

from __future__ import annotations

import html
import math
from typing import Any

from .figures import ago, human_bytes, utc

CHART_WIDTH, CHART_HEIGHT = 1000, 200
#: Left margin for the scale, bottom margin for the time axis.
CHART_LEFT, CHART_BOTTOM, CHART_TOP = 44, 22, 10

STYLE = """
:root { --fg: #1d2430; --muted: #5c6775; --line: #d9dee5; --bg: #f5f7fa; --card: #ffffff; --accent: #2f6fd6;
        --ok: #1f8a4c; --warn: #b7791f; --bad: #c53030; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); }
header { background: #1d2430; color: #fff; padding: 14px 24px; display: flex; align-items: baseline; gap: 18px;
         flex-wrap: wrap; }
header h1 { font-size: 20px; margin: 0; font-weight: 600; }
header .where { color: #c8d0db; }
main { padding: 18px 24px 30px; max-width: 1280px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); margin: 0 0 4px;
           font-weight: 600; }
.card .big { font-size: 26px; font-weight: 600; }
.card .small { color: var(--muted); font-size: 12.5px; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 12.5px; font-weight: 600;
         color: #fff; background: var(--muted); }
.badge.ok, .badge.online, .badge.open { background: var(--ok); }
.badge.connecting { background: var(--warn); }
.badge.bad, .badge.offline, .badge.revoked { background: var(--bad); }
.badge.none { background: #8a94a3; }
section.panel { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px;
                margin-top: 14px; }
section.panel h2 { font-size: 15px; margin: 0 0 8px; }
svg.chart { width: 100%; max-width: 1100px; height: auto; display: block; }
svg .bar { fill: var(--accent); }
svg .axis { stroke: var(--line); stroke-width: 1; }
svg text { fill: var(--muted); font-size: 11px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.id { font-family: ui-monospace, "DejaVu Sans Mono", monospace; overflow-wrap: anywhere; }
td.meta { color: var(--muted); font-size: 12.5px; overflow-wrap: anywhere; }
.note { color: var(--muted); margin: 8px 0 0; }
footer { color: var(--muted); font-size: 12px; margin-top: 16px; }
footer a { color: var(--accent); }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)



def _card(title: str, big: str, *small: str) -> str:
    lines = "".join(f'<div class="small">{s}</div>' for s in small if s)
    return f'<div class="card"><h2>{_e(title)}</h2><div class="big">{big}</div>{lines}</div>'


def _badge(state: str) -> str:
    return f'<span class="badge {_e(state)}">{_e(state)}</span>'


def _nice_max(value: int) -> int:
    """The chart's top: 1, 2 or 5 times a power of ten, at least ``value`` (and at least 1)."""
    if value <= 1:
        return 1
    magnitude = int(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def chart(per_minute: list[int], now: float) -> str:
    """An inline SVG bar chart: one bar per minute, oldest on the left, each with a tooltip."""
    top = _nice_max(max(per_minute, default=0))
    plot_w = CHART_WIDTH - CHART_LEFT - 6
    plot_h = CHART_HEIGHT - CHART_BOTTOM - CHART_TOP
    n = max(1, len(per_minute))
    step = plot_w / n
    base = CHART_TOP + plot_h
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" '
             'role="img" aria-label="messages per minute, last hour">',
             f'<line class="axis" x1="{CHART_LEFT}" y1="{base}" x2="{CHART_WIDTH - 6}" y2="{base}"/>',
             f'<line class="axis" x1="{CHART_LEFT}" y1="{CHART_TOP}" x2="{CHART_WIDTH - 6}" y2="{CHART_TOP}"/>',
             f'<text x="{CHART_LEFT - 6}" y="{CHART_TOP + 4}" text-anchor="end">{top}</text>',
             f'<text x="{CHART_LEFT - 6}" y="{base + 4}" text-anchor="end">0</text>']
    first_minute = int(now // 60) - n + 1
    for i, count in enumerate(per_minute):
        height = plot_h * count / top
        x = CHART_LEFT + i * step + 1
        minute = (first_minute + i) * 60
        label = f"{utc(minute)[11:16]} UTC: {count} message{'s' if count != 1 else ''}"
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{base - height:.1f}" width="{max(1.0, step - 2):.1f}" '
                     f'height="{height:.1f}"><title>{_e(label)}</title></rect>')
    for i, text in ((0, f"-{n} min"), (n // 2, f"-{n - n // 2} min"), (n - 1, "now")):
        x = CHART_LEFT + (i + 0.5) * step
        anchor = "start" if i == 0 else "end" if i == n - 1 else "middle"
        parts.append(f'<text x="{x:.1f}" y="{CHART_HEIGHT - 6}" text-anchor="{anchor}">{_e(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render(figures: dict[str, Any], rows: list[dict[str, Any]], hidden: int, *, refresh: int = 10) -> str:
    """The whole page, from :func:`.figures.collect` and :func:`.figures.device_rows`."""
    f = figures
    now = f["now"]
    health = f["health"]
    where = f["coaps"] or "not serving"
    d, s, u, m, h = f["devices"], f["spool"], f["uplink"], f["messages"], f["handshakes"]
    cards = [
        _card("Health", _badge("ok") if health is None else _badge("bad"), _e(health) if health else
              f"up {_e(ago(f['uptime_s']))}"),
        _card("Devices", _e(d["registered"]), f"{_e(d['enabled'])} enabled, {_e(d['revoked'])} revoked",
              f"{_e(f['sessions']['open'])} sessions open"),
        _card("Messages, last hour", _e(m["last_hour"]), f"{_e(m['acknowledged'])} acknowledged since start",
              f"{_e(m['duplicates'])} resends recognised"),
        _card("Spool", _e(s["messages"]), f"{_e(human_bytes(s['bytes']))} of {_e(human_bytes(s['max_bytes']))}",
              "empty" if s["oldest_age_s"] is None else f"oldest entry {_e(ago(s['oldest_age_s']))} old"),
        _card("Uplink", _badge(u["state"]), _e(u["broker"] or "no [mqtt]: messages stay in the spool"),
              f"{_e(u['published'])} published, {_e(u['in_flight'])} in flight" if u["broker"] else "",
              f"last error: {_e(u['last_error'])}" if u["last_error"] else ""),
        _card("Handshakes", _e(h["ok"]), f"{_e(h['failed'])} failed",
              ", ".join(f"{_e(k)}: {_e(v)}" for k, v in h["by_suite"].items() if v)),
    ]
    c = f["commands"]
    if c is not None:
        cards.append(_card("Commands", _e(c["pending"]) + " pending", f"{_e(c['delivered'])} delivered, "
                           f"{_e(c['expired'])} expired, {_e(c['undeliverable'])} undeliverable, "
                           f"{_e(c.get('rejected', 0))} rejected"))
    table = ['<table><thead><tr><th>Device</th><th>Session</th><th>Last seen</th><th class="num">Today</th>'
             '<th>Metadata</th></tr></thead><tbody>']
    for r in rows:
        seen = r["last_seen"]
        seen_text = "never" if seen is None else f"{ago(max(0.0, now - seen))} ago"
        table.append(f'<tr><td class="id">{_e(r["device"])}</td><td>{_badge(r["session"])}</td>'
                     f'<td title="{_e(utc(seen))}">{_e(seen_text)}</td><td class="num">{_e(r["today"])}</td>'
                     f'<td class="meta">{_e(r["metadata"])}</td></tr>')
    table.append("</tbody></table>")
    if not rows:
        table.append('<p class="note">No device in the registry yet (iotdtls-provision add).</p>')
    if hidden:
        table.append(f'<p class="note">{_e(hidden)} more devices not shown (the {_e(len(rows))} most recently seen '
                     "are).</p>")
    head = (f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh > 0 else "")
    return "".join([
        '<!doctype html><html lang="en"><head><meta charset="utf-8">', head,
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>iotdtls gateway {_e(where)}</title><style>{STYLE}</style></head><body>",
        f'<header><h1>iotdtls gateway</h1><span class="where">coaps {_e(where)}</span>'
        f'<span class="where">{_e(utc(now))}</span></header><main>',
        '<div class="cards">', *cards, "</div>",
        '<section class="panel"><h2>Messages per minute, last hour</h2>', chart(m["per_minute"], now), "</section>",
        f'<section class="panel"><h2>Devices ({_e(d["registered"])})</h2>', *table, "</section>",
        '<footer>Read-only. Machine-readable: <a href="/metrics">/metrics</a> (Prometheus), '
        '<a href="/status.json">/status.json</a>, <a href="/healthz">/healthz</a>.</footer>',
        "</main></body></html>",
    ])
