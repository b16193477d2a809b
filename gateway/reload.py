"""What a configuration reload (SIGHUP) changes: the keys that differ, which apply live, which need a restart.

:func:`plan` compares the running configuration with the file just read and returns a :class:`ReloadPlan`, with no
I/O: the service applies it (:meth:`iotdtls_gateway.service.Gateway.reconfigure`).

Live, without a restart (no session is touched):

* ``[log]``: format and level;
* ``[spool]``: the bounds (``max_bytes``, ``max_age``), deduplication, ``retry_after`` and ``commit_window``, used
  from the writer's next commit;
* ``[mqtt]``, any key, and the table added or removed: the uplink is stopped gracefully (what the broker has not
  acknowledged stays in the spool) and a new one starts from the oldest message in the spool; a changed
  ``command_topic`` is unsubscribed by the old uplink before it disconnects;
* ``[commands]``: the TTLs and bounds of commands that arrive from now on.

Everything else (``data_dir``, the whole ``[coaps]`` table: the socket, the DTLS parameters, the session limits,
``key_file``, and any table this module does not know) takes effect at the next restart: the running gateway
keeps its old value, and :attr:`ReloadPlan.effective` says so, so that the next reload names the key again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import GatewayConfig
from .spool import SpoolLimits

#: Tables whose every key applies live.
LIVE_TABLES = frozenset({"spool", "mqtt", "log", "commands"})
#: Fields of GatewayConfig that are not keys of the file.
NOT_KEYS = frozenset({"path"})
#: Fields derived from another key, shown under that key's name.
SHOWN_AS = {"coaps.host": "coaps.bind", "coaps.port": "coaps.bind", "mqtt.host": "mqtt.url",
            "mqtt.port": "mqtt.url", "mqtt.tls": "mqtt.url", "metrics.host": "metrics.bind",
            "metrics.port": "metrics.bind"}


@dataclass(frozen=True)
class ReloadPlan:
    #: Changed keys applied at once, in file order (``mqtt`` alone: the table was added or removed).
    live: tuple[str, ...]
    #: Changed keys that take effect at the next restart (the gateway keeps running with their old values).
    restart: tuple[str, ...]
    #: The configuration the gateway runs with after the reload: the new file's, but with the old value of every
    #: key that needs a restart.
    effective: GatewayConfig

    @property
    def changed(self) -> bool:
        return bool(self.live or self.restart)

    def touches(self, table: str) -> bool:
        """True if a live key of ``table`` changed (or the table itself came or went)."""
        return any(k == table or k.startswith(table + ".") for k in self.live)


def flatten(config: GatewayConfig) -> dict[str, Any]:
    """Every key of the configuration by its dotted name, the way the file spells it (``coaps.bind``,
    ``mqtt.url``); a table that is absent is the key ``mqtt`` with the value None."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.name in NOT_KEYS:
            continue
        value = getattr(config, f.name)
        if value is None or not dataclasses.is_dataclass(value):
            out[f.name] = value
            continue
        out[f.name] = True  # the table is present
        for sub in dataclasses.fields(value):
            name = f"{f.name}.{sub.name}"
            shown = SHOWN_AS.get(name, name)
            if shown != name:  # host and port are one key, bind; url carries host, port and tls
                out[shown] = (*_as_tuple(out.get(shown)), getattr(value, sub.name))
            else:
                out[name] = getattr(value, sub.name)
    return out


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else () if value is None else (value,)


def changed_keys(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The keys whose value differs, in the order of the new file's fields (then those only the old one has).
    A table added or removed is named alone (``mqtt``), not each of its keys."""
    a, b = flatten(old), flatten(new)
    tables_toggled = {k for k in (a.keys() | b.keys()) if "." not in k and (a.get(k) is None) != (b.get(k) is None)}
    out: list[str] = []
    for key in [*b, *(k for k in a if k not in b)]:
        if key in out or (key.split(".", 1)[0] in tables_toggled and "." in key):
            continue
        if a.get(key) != b.get(key):
            out.append(key)
    return out


def plan(old: GatewayConfig, new: GatewayConfig) -> ReloadPlan:
    """What reloading ``new`` over the running ``old`` does."""
    keys = changed_keys(old, new)
    live = tuple(k for k in keys if k.split(".", 1)[0] in LIVE_TABLES)
    restart = tuple(k for k in keys if k.split(".", 1)[0] not in LIVE_TABLES)
    kept = {f.name: getattr(old, f.name) for f in dataclasses.fields(old)
            if f.name not in LIVE_TABLES and f.name not in NOT_KEYS}
    return ReloadPlan(live=live, restart=restart, effective=dataclasses.replace(new, **kept))


def summary(p: ReloadPlan) -> list[str]:
    """The log lines of a reload: what was applied, and (a warning) what needs a restart. Key names only, never a
    value (a password may have changed)."""
    if not p.changed:
        return ["configuration reloaded: no change"]
    lines = [f"configuration reloaded: {', '.join(p.live) + ' applied' if p.live else 'nothing to apply live'}"]
    if p.restart:
        lines.append(f"configuration reloaded, but {', '.join(p.restart)} changed: "
                     f"{'it takes' if len(p.restart) == 1 else 'they take'} effect at the next restart")
    return lines


def spool_limits(config: GatewayConfig) -> SpoolLimits:
    """The spool's bounds as the writer and the store take them."""
    s = config.spool
    return SpoolLimits(max_bytes=s.max_bytes, max_age=s.max_age, dedup_window=s.dedup_window,
                       dedup_max_keys=s.dedup_max_keys, retry_after=s.retry_after)
