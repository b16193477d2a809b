"""What a 2.04 from the gateway may ask of the device: store a new key ({"cred": true}, fetched by the session;
adopt), fetch a changed configuration ({"cfg": true}) and run the commands waiting ({"cmd": N}; downlink). Loaded
only when a hint comes by main.py, which then drops it from the heap (a board's heap is 48 KiB)."""

from binascii import hexlify, unhexlify

from . import cbor, coap, coaps


def adopt(cfg, s, save):
    """After a request: store what the session learnt about its keys, in cfg and its file. A key the gateway
    handed over becomes "identity"/"psk" (the current one "old_identity"/"old_psk") and then the session's key
    (rekey: close_notify, the next request handshakes with it); a fallback the gateway accepted swaps the two.
    Returns a line to print, or None."""
    new, old = s.offer, s.swapped
    if new is None:
        if old is None:
            return None
        new = (s.identity, s.psk)
    else:
        old = (s.identity, s.psk)
    s.swapped = None
    c = dict(cfg)
    for k, v in (("", new), ("old_", old)):
        c[k + "identity"] = str(v[0], "utf-8")
        c[k + "psk"] = str(hexlify(v[1]), "ascii")
        c[k + "psk_bytes"] = v[1]
    try:
        save(c)
    except OSError as e:  # not stored: not used (the next hint fetches it again)
        s.offer = None
        return "key %s not stored: %s" % (c["identity"], e)  # noqa: UP031
    cfg.update(c)
    if s.offer is None:
        return "key %s refused, back to %s" % (c["old_identity"], c["identity"])  # noqa: UP031
    s.rekey()
    return "key %s stored" % c["identity"]  # noqa: UP031


def downlink(dev, hints, save):
    """Follow the hints of a 2.04: fetch a changed configuration (what the device knows of it: "interval"),
    run the commands waiting."""
    cfg = dev.cfg
    if hints.get("cfg"):
        tag = cfg.get("config_etag")
        m = dev.ask(coap.GET, "config", opts=[(coap.ETAG, unhexlify(tag))] if tag else None)
        if m is not None and m.code in (coap.CONTENT, coap.VALID):
            etag = m.opt(coap.ETAG)
            v = coaps._cbor(m, dict).get("interval") if m.code == coap.CONTENT else None
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 10**9
            if ok:
                cfg["interval"] = v
            if etag:
                cfg["config_etag"] = str(hexlify(etag[0]), "ascii")
            try:
                save(cfg)
            except OSError as e:
                dev.out("config not stored: %s" % e)  # noqa: UP031
            dev.out("config %s: %s" % (cfg.get("config_etag"), "interval" if ok else "unchanged"))  # noqa: UP031
    if hints.get("cmd"):  # one batch; more waiting: the next reading's 2.04 says so again
        m = dev.ask(coap.GET, "commands")
        for c in coaps._cbor(m, list) if m is not None and m.code == coap.CONTENT else ():
            if isinstance(c, dict) and isinstance(c.get("id"), str):
                _run(dev, c)


def _run(dev, c):
    f = dev.handlers.get(c.get("name"))
    out = {"id": c["id"], "status": "ok"}
    try:
        out["result"] = f(dev, c.get("args"))
    except Exception as e:  # an unknown command too (f is None)
        out["status"] = "error"
        out["result"] = str(e) if f else "unknown command"
    m = dev.ask(coap.POST, "commands", cbor.dumps(out))
    dev.out("command %s %s: %s -> %s" % (c["id"], c.get("name"), out["status"],  # noqa: UP031
                                         coap.code_str(m.code) if m is not None else "no answer"))
