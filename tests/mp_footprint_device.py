# Runs INSIDE MicroPython (tests/mpwasm/run.mjs --heap N --fixed-heap [--cryptolib] --path MPYDIR this.py CONFIG),
# started by tests/test_mp_footprint.py: boots from .mpy files (one module per top-level run), then a handshake
# (Connection ID on) and one confirmable POST with main.py's Device, one datagram per top-level run: a datagram
# received, handled, or sent, each in its own run. This WebAssembly port frees garbage only between top-level runs,
# so what a run allocates (garbage included) must fit in the heap on top of what lives: a stricter bound than a
# board's, whose GC runs when the heap is full. Prints one JSON line.
import gc
import json
import sys

MODS = ("socket", "iotdtls_mp.aes", "iotdtls_mp.ccm", "iotdtls_mp.prf", "iotdtls_mp.dtls", "iotdtls_mp.coap",
        "iotdtls_mp.cbor", "iotdtls_mp.coaps", "main")
try:  # noqa: SIM105 (no contextlib here); the firmware module (run.mjs --cryptolib): not the device's heap
    import cryptolib  # noqa: F401
except ImportError:
    pass

gc.collect()
S = {"base": gc.mem_alloc(), "i": 0, "peak": 0, "dev": None, "import": 0, "in": None, "out": [], "top": (0, ""),
     "live": []}


def step():
    i = S["i"]
    S["live"].append(gc.mem_alloc() - S["base"])  # live heap after the previous step (socket: the runner's shim)
    S["i"] = i + 1
    if i < len(MODS):
        __import__(MODS[i])
        return MODS[i]
    import main
    d = S["dev"]
    if d is None:
        S["import"] = gc.mem_alloc() - S["base"] - S["live"][1]  # the device code (the shim and the runner apart)
        from iotdtls_mp import coap
        d = S["dev"] = main.Device(main.load_config(sys.argv[1]))
        d._open()
        d.session.request(d.clock(), coap.POST, d.cfg["path"], main.reading(1, 0), coap.CF_CBOR, query=d.key(1))
        S["out"] = d.session.datagrams()
        return "request"
    s = d.session
    if S["out"]:  # one datagram out
        d.sock.send(S["out"].pop(0))
        return "send"
    if S["in"] is not None:  # one datagram handled
        s.receive(S["in"], d.clock())
        S["in"] = None
        S["out"] = s.datagrams()
        return "handle"
    if not s.busy():
        return None
    now = d.clock()
    t = s.timer()
    if t is not None and t <= now:
        s.on_timer(now)
        S["out"] = s.datagrams()
        return "timer"
    d.sock.settimeout(max(0.005, t - now) if t is not None else 1)
    try:  # noqa: SIM105 (no contextlib in MicroPython); one datagram in
        S["in"] = d.sock.recv(2048)
    except OSError:
        pass
    return "recv"


def mpwasm_step():
    gc.collect()
    what = step()
    used = gc.mem_alloc() - S["base"]
    if used > S["peak"]:
        S["peak"] = used
        S["top"] = (S["i"], what)
    if what:
        return True
    gc.collect()
    s = S["dev"].session
    r = s.result
    print(json.dumps({"result": r[0], "code": r[1].code if r[0] == "ok" else r[1], "handshakes": s.handshakes,
                      "cid": s.conn.pcid is not None and len(s.conn.pcid), "base": S["base"],
                      "import": S["import"], "peak": S["peak"], "live": gc.mem_alloc() - S["base"],
                      "steps": S["i"], "top": S["top"],
                      "shim": S["live"][1] - S["live"][0],
                      "modules": [S["live"][k + 1] - S["live"][k] for k in range(1, len(MODS))],
                      "cryptolib": "cryptolib" in sys.modules}))
    return False
