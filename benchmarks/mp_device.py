# Runs INSIDE MicroPython (tests/mpwasm/run.mjs --path micropython benchmarks/mp_device.py CONFIG MODE), started by
# benchmarks/bench_mp.py: one handshake plus POSTs with micropython/main.py's Device against a real CoAPs server.
# MODE "time": handshake and POST times, AES block operations, bare AES/SHA-256/CCM costs in the same interpreter.
# MODE "replay" (CONFIG is then a transcript written by bench_mp.py): coaps.Session sans-IO on the recorded server
# datagrams, with the same deterministic randomness, one datagram per top-level step of the runner (this port frees
# garbage only between top-level runs); the live heap at each step start plus what the step allocates bounds the
# peak. MODE "churn": bytes allocated (garbage included) through real sockets. Prints one JSON line.
import gc
import json
import sys

import main
from iotdtls_mp import aes, ccm, coap, prf

ticks_ms, ticks_diff = main.ticks_ms, main.ticks_diff
V = sys.implementation.version
IMPLEMENTATION = f"{sys.implementation.name} {V[0]}.{V[1]}.{V[2]}"


def per_call_ms(f, n):
    t = ticks_ms()
    for _ in range(n):
        f()
    return ticks_diff(ticks_ms(), t) / n


def timed(dev):
    t0, a0 = ticks_ms(), aes.ops
    r1 = dev.post(1)
    t1, a1 = ticks_ms(), aes.ops
    r2 = dev.post(2)
    t2, a2 = ticks_ms(), aes.ops
    key = aes.new_ecb(bytes(16))
    o = aes.ops
    sealed = ccm.seal(key, bytes(12), bytes(13), bytes(64), 8)
    seal_ops = aes.ops - o
    o = aes.ops
    ccm.open(key, bytes(12), bytes(13), sealed, 8)
    open_ops = aes.ops - o
    import hashlib
    return {
        "ok": [r1[0], r2[0]],
        "first_post_ms": ticks_diff(t1, t0), "post_ms": ticks_diff(t2, t1),
        "first_post_aes_ops": a1 - a0, "post_aes_ops": a2 - a1,
        "record64_seal_aes_ops": seal_ops, "record64_open_aes_ops": open_ops,
        "aes_block_ms": per_call_ms(lambda: key(bytes(16)), 50),
        "aes_key_setup_ms": per_call_ms(lambda: aes.new_ecb(bytes(16)), 10),
        "sha256_64B_ms": per_call_ms(lambda: hashlib.sha256(bytes(64)).digest(), 200),
        "ccm_seal64_ms": per_call_ms(lambda: ccm.seal(key, bytes(12), bytes(13), bytes(64), 8), 10),
        "hmac_sha256_ms": per_call_ms(lambda: prf.hmac_sha256(bytes(48), bytes(64)), 50),
        "cryptolib": aes.cryptolib is not None,
        "handshakes": dev.session.handshakes,
    }


def churn(dev):
    gc.collect()
    gc.disable()
    m0 = gc.mem_alloc()
    r1 = dev.post(1)
    m1 = gc.mem_alloc()
    r2 = dev.post(2)
    m2 = gc.mem_alloc()
    gc.enable()
    return {"ok": [r1[0], r2[0]], "allocated_first_post": m1 - m0, "allocated_post": m2 - m1}


def drand(seed):
    """Deterministic rand(n): SHA-256 in counter mode (bench_mp.py has the same function for the recording)."""
    import hashlib
    st = [0, b""]

    def rand(n):
        while len(st[1]) < n:
            st[1] += hashlib.sha256(seed + st[0].to_bytes(4, "big")).digest()
            st[0] += 1
        r, st[1] = st[1][:n], st[1][n:]
        return r

    return rand


class Replay:
    """coaps.Session on the recorded server datagrams, one datagram per top-level step (see the runner's
    mpwasm_step): live heap at each step start after a collection, plus what the step allocates, bounds the peak."""

    def __init__(self, path):
        from binascii import unhexlify

        from iotdtls_mp import coaps
        with open(path) as f:
            t = json.load(f)
        self.server = [unhexlify(d) for d in t["server"]]
        self.client = [unhexlify(d) for d in t["client"]]
        self.todo = list(self.server)
        self.sent = []
        self.steps = []  # (live at step start, allocated during the step)
        self.session = None
        self.coaps = coaps
        del t

    def step(self):
        gc.collect()
        live = gc.mem_alloc()
        s = self.session
        if s is None:
            s = self.session = self.coaps.Session(b"dev1", bytes(range(16)), drand(b"iotdtls-bench"))
            s.request(0, coap.POST, "telemetry", bytes(64), coap.CF_CBOR)
        else:
            s.receive(self.todo.pop(0), 0)
        self.sent += s.datagrams()
        self.steps.append((live, gc.mem_alloc() - live))
        return bool(self.todo)

    def result(self):
        s = self.session
        ok = s.result is not None and s.result[0] == "ok" and self.sent == self.client
        base = self.steps[0][0]  # the heap before the Session exists
        bound = max(live + alloc for live, alloc in self.steps) - base
        return {"ok": ok, "peak_live": bound, "implementation": IMPLEMENTATION,
                "steps": [(live - base, alloc) for live, alloc in self.steps],
                "datagrams": len(self.sent) + len(self.server),
                "bytes": sum(len(d) for d in self.sent + self.server)}


REPLAY = None


def mpwasm_step():
    if REPLAY is None:
        return False
    if REPLAY.step():
        return True
    print(json.dumps(REPLAY.result()))
    return False


if sys.argv[2] == "replay":  # the work happens in mpwasm_step(), called by the runner after this script
    REPLAY = Replay(sys.argv[1])
else:
    device = main.Device(main.load_config(sys.argv[1]))
    result = {"time": timed, "churn": churn}[sys.argv[2]](device)
    device.close()
    result["implementation"] = IMPLEMENTATION
    print(json.dumps(result))
