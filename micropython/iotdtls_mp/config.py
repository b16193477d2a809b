"""The device's config file: checked at boot, written back atomically. Loaded only for those calls by main.py,
which then drops it from the heap (a board's heap is 48 KiB)."""

import json
import os
from binascii import unhexlify


def check(cfg):
    """Check a config (types, ranges), fill in defaults, add "psk_bytes"."""
    if not isinstance(cfg, dict):
        raise ValueError("expected a JSON object")
    for k in ("host", "port", "identity", "psk"):
        if k not in cfg:
            raise ValueError("missing " + k)
    for k, v in cfg.items():
        ok = True
        if k in ("key", "cid", "tickets"):
            ok = isinstance(v, bool)
        elif k in ("host", "identity", "psk", "path", "old_identity", "old_psk", "method", "wifi_ssid",
                   "wifi_password", "session"):
            ok = isinstance(v, str)
        else:  # a number in [lo, hi]: an int where lo >= 1
            for n, lo, hi in (("port", 1, 65535), ("mtu", 64, 65535), ("rsl", 64, 16384), ("tries", 1, 1000),
                              ("interval", 0, 10**9), ("ack_timeout", 0.01, 600), ("retransmit_initial", 0.01, 600),
                              ("handshake_timeout", 0.1, 86400), ("backoff_max", 0, 86400)):
                if k == n:
                    ok = isinstance(v, int if lo >= 1 else (int, float)) and not isinstance(v, bool)
                    if ok and not lo <= v <= hi:
                        raise ValueError(k + " out of range")
        if not ok:
            raise ValueError("wrong type for " + k)
    if cfg.get("method", "POST") not in ("POST", "PUT"):
        raise ValueError("method: POST or PUT")
    for k in ("psk", "old_psk", "session"):
        try:
            if k in cfg:
                cfg[k + "_bytes"] = unhexlify(cfg[k])
        except ValueError:
            raise ValueError(k + " is not hex") from None
    if not cfg["psk_bytes"] or not cfg["identity"]:
        raise ValueError("empty psk or identity")
    cfg.setdefault("path", "telemetry")
    cfg.setdefault("interval", 60)
    return cfg


def save(cfg):
    """Write cfg to the file it was read from, atomically: a temp file renamed over it."""
    path = cfg.get("_file")
    if path is None:  # a config that came from no file: the key lives in RAM only
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        if hasattr(os, "chmod"):  # CPython: private (it holds the key and the session), on disk before the rename
            os.chmod(tmp, 0o600)
        d = {}
        for k in cfg:
            if k[:1] != "_" and k[-6:] != "_bytes":
                d[k] = cfg[k]
        json.dump(d, f)
        if hasattr(os, "fsync"):
            f.flush()
            os.fsync(f.fileno())
    getattr(os, "replace", os.rename)(tmp, path)
