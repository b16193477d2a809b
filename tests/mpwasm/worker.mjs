// Worker thread of run.mjs: runs MicroPython (WebAssembly) synchronously, like the unix port's main loop.
//
// Network calls from Python go through the registered JS module `_mpwasm_net` (one function, `call(json)`):
// the request is posted to the main thread, which owns the dgram sockets, and this thread blocks in
// Atomics.wait until the main thread has written the JSON reply into the shared buffer (see run.mjs).
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { parentPort, workerData } from "node:worker_threads";

// MPWASM_MICROPYTHON=1.23 picks the older build installed beside the default one (package.json aliases).
const version = process.env.MPWASM_MICROPYTHON;
const { loadMicroPython } = await import(
  version ? `micropython-${version}` : "@micropython/micropython-webassembly-pyscript"
);
const { script, scriptArg, scriptDir, paths, args, heap, seed, ctlSab, dataSab, socketShim, heapReport, fixedHeap,
  cryptolib } = workerData;
const ctl = new Int32Array(ctlSab); // [0] = reply ready (0/1), [1] = reply length in bytes
const data = new Uint8Array(dataSab);
const decoder = new TextDecoder();
const sleeper = new Int32Array(new SharedArrayBuffer(4));

// ---- stdout/stderr: written synchronously to fd 1/2 so nothing is lost or reordered when the script blocks.
function writeAll(fd, buf) {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if (e.code !== "EAGAIN") throw e; // a non-blocking pipe that is full: wait a little and retry
      Atomics.wait(sleeper, 0, 0, 2);
    }
  }
}

class LineSink {
  constructor(fd) {
    this.fd = fd;
    this.buf = [];
  }
  put(bytes) {
    for (const c of bytes) {
      this.buf.push(c);
      if (c === 10) this.flush();
    }
  }
  flush() {
    if (this.buf.length) {
      writeAll(this.fd, Uint8Array.from(this.buf));
      this.buf = [];
    }
  }
}
const out = new LineSink(1);
const err = new LineSink(2);
let capture = null; // when a string, stdout goes here instead (used to read micropython.mem_info())

function rpc(request) {
  out.flush();
  err.flush();
  Atomics.store(ctl, 0, 0);
  parentPort.postMessage({ type: "rpc", request });
  while (Atomics.load(ctl, 0) === 0) Atomics.wait(ctl, 0, 0);
  return decoder.decode(data.slice(0, ctl[1]));
}

// ---- MicroPython filesystem: host paths are mirrored at the same absolute paths.
function mkdirs(mp, dir) {
  let cur = "";
  for (const part of dir.split("/").filter(Boolean)) {
    cur += "/" + part;
    try {
      mp.FS.mkdir(cur);
    } catch {
      // exists
    }
  }
}

const SKIP_DIRS = new Set(["node_modules", "__pycache__", ".git"]);

function copyTree(mp, dir) {
  mkdirs(mp, dir);
  for (const ent of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, ent.name);
    if (ent.isDirectory()) {
      if (!SKIP_DIRS.has(ent.name) && !ent.name.startsWith(".")) copyTree(mp, p);
    } else if (ent.isFile() && (ent.name.endsWith(".py") || ent.name.endsWith(".mpy") || ent.name.endsWith(".json"))) {
      mp.FS.writeFile(p, fs.readFileSync(p));
    }
  }
}

// [GC heap total, used] (after a collection if asked), from micropython.mem_info() (the heap grows on demand: split heap)
function gcInfo(mp, collect) {
  capture = "";
  try {
    mp.runPython(`import gc, micropython\n${collect ? "gc.collect()\n" : ""}micropython.mem_info()`);
  } catch {
    // ignore
  }
  const m = /GC: total: (\d+), used: (\d+)/.exec(capture);
  capture = null;
  return m ? [+m[1], +m[2]] : null;
}

// --fixed-heap: make the GC heap a real cap, as on a board. This build adds a heap area (malloc) when an
// allocation fails even after a collection (split heap). Here the WebAssembly memory may no longer grow, and
// everything malloc can still hand out is taken, but for a few separated holes of RESERVE bytes (the JS <-> Python
// glue mallocs small strings: the code of each top-level run, socket replies). A new heap area is at least as large
// as the heap already there (MicroPython doubles it), so it cannot fit in a hole while --heap > RESERVE: the
// allocation fails and Python raises MemoryError.
const RESERVE = 16 * 1024;
const HOLES = 8;

function fixHeap(mp) {
  if (heap <= 2 * RESERVE) throw new Error(`--fixed-heap needs --heap > ${2 * RESERVE}`);
  const M = mp._module;
  WebAssembly.Memory.prototype.grow = () => {
    throw new RangeError("mpwasm --fixed-heap: the WebAssembly memory may not grow");
  };
  const stream = console._stderr;
  const write = stream.write;
  stream.write = () => true; // the runtime's "growMemory: ... failed" line while malloc is drained
  const holes = [];
  const held = [];
  try {
    for (let k = 0; k < 2 * HOLES; k++) holes.push(M._malloc(RESERVE));
    for (let size = 1 << 24; size >= 8; size >>= 1) {
      for (let p = M._malloc(size); p; p = M._malloc(size)) held.push(p);
    }
  } finally {
    stream.write = write;
  }
  // every other reserved block (in address order) goes back: separated by taken ones, holes do not merge
  holes.sort((a, b) => a - b);
  let freed = 0;
  for (let k = 0; k < holes.length; k += 2) {
    if (holes[k]) {
      M._free(holes[k]);
      freed++;
    }
  }
  if (process.env.MPWASM_DEBUG) {
    fs.writeSync(2, `mpwasm: fixed heap: ${held.length} more blocks taken, ${freed} holes of ${RESERVE} B\n`);
  }
}

// --cryptolib: the firmware module of the boards (ESP32, Pico W), AES-128 in ECB mode (1) by Node's crypto:
// cryptolib.aes(key, 1).encrypt(block) -> bytes. What a board allocates per block (one 16-byte bytes) is what this
// allocates: a Python bytes/bytearray handed to JS becomes a proxy that pins it in the port's proxy table, so its
// bytes are read one by one (small ints, no allocation) and the proxy is released at once; the result is built by
// struct.pack from 8 small ints (no tuple), and its proxy released at the next call.
const PY_HELPERS = `
import struct
def _mpwasm_at(b, i):
    return b[i]
def _mpwasm_pack(a, b, c, d, e, f, g, h):
    return struct.pack(">8H", a, b, c, d, e, f, g, h)
`;

function registerCryptolib(mp) {
  mp.runPython(PY_HELPERS);
  const at = mp.globals.get("_mpwasm_at");
  const pack = mp.globals.get("_mpwasm_pack");
  const M = mp._module;
  const unpin = (p) => M.ccall("proxy_c_free_obj", "null", ["number"], [p._ref]);
  const read = (p) => {
    const b = Buffer.alloc(16);
    try {
      for (let i = 0; i < 16; i++) b[i] = at(p, i);
    } finally {
      unpin(p);
    }
    return b;
  };
  let last = null;
  mp.registerJsModule("cryptolib", {
    aes(key, mode) {
      const k = read(key);
      if (mode !== 1) throw new Error("cryptolib (mpwasm): only AES-128 in ECB mode (1)");
      return {
        encrypt(block) {
          const c = crypto.createCipheriv("aes-128-ecb", k, null);
          c.setAutoPadding(false);
          const o = c.update(read(block));
          if (last !== null) unpin(last);
          last = pack(...[0, 2, 4, 6, 8, 10, 12, 14].map((i) => o.readUInt16BE(i)));
          return last;
        },
      };
    },
  });
}

function pyStr(s) {
  return JSON.stringify(s); // a JSON string literal is a valid Python string literal for our inputs
}

async function main() {
  const mp = await loadMicroPython({
    heapsize: heap,
    linebuffer: false,
    stdout: (b) => {
      if (capture !== null) capture += decoder.decode(b);
      else out.put(b);
    },
    stderr: (b) => err.put(b),
  });
  const initial = heapReport ? gcInfo(mp, true) : null;
  for (const dir of [scriptDir, ...paths]) copyTree(mp, dir);
  // ARGS naming existing host files (relative to Node's cwd) are copied to the same path relative to the
  // MicroPython cwd (= the script's directory); absolute ones to the same absolute path.
  for (const a of args) {
    const host = path.resolve(a);
    if (a && fs.existsSync(host) && fs.statSync(host).isFile()) {
      const dest = path.isAbsolute(a) ? a : path.resolve(scriptDir, a);
      mkdirs(mp, path.dirname(dest));
      mp.FS.writeFile(dest, fs.readFileSync(host));
    }
  }
  mkdirs(mp, "/lib");
  mp.FS.writeFile("/lib/socket.py", fs.readFileSync(socketShim));
  mp.registerJsModule("_mpwasm_net", { call: (req) => rpc(req) });
  if (cryptolib) registerCryptolib(mp);
  if (fixedHeap) fixHeap(mp);

  const driver = `
import sys, os, random
random.seed(${seed})
sys.argv[:] = ${pyStr([scriptArg, ...args])}
sys.path[:] = ${pyStr([scriptDir, ...paths, ".frozen", "/lib"])}
os.chdir(${pyStr(scriptDir)})
_mpwasm_rc = 0
try:
    with open(${pyStr(script)}) as _mpwasm_f:
        _mpwasm_src = _mpwasm_f.read()
    _mpwasm_code = compile(_mpwasm_src, ${pyStr(script)}, "exec")
    del _mpwasm_f, _mpwasm_src
    _mpwasm_ns = {"__name__": "__main__", "__file__": ${pyStr(script)}}
    exec(_mpwasm_code, _mpwasm_ns)
except SystemExit as _mpwasm_e:
    _mpwasm_v = _mpwasm_e.args[0] if _mpwasm_e.args else None
    if isinstance(_mpwasm_v, int):
        _mpwasm_rc = _mpwasm_v & 255
    elif _mpwasm_v is not None:
        print(_mpwasm_v, file=sys.stderr)
        _mpwasm_rc = 1
except BaseException as _mpwasm_e:
    sys.print_exception(_mpwasm_e, sys.stderr)
    _mpwasm_rc = 1
`;
  // A script may define mpwasm_step(): after the script, it is called in separate top-level runs while it
  // returns True. This port collects garbage only between top-level runs (inside one, stale stack memory keeps
  // garbage alive), so heap measurements step this way.
  const stepper = `
try:
    _mpwasm_more = _mpwasm_rc == 0 and "mpwasm_step" in _mpwasm_ns and bool(_mpwasm_ns["mpwasm_step"]())
except BaseException as _mpwasm_e:
    sys.print_exception(_mpwasm_e, sys.stderr)
    _mpwasm_rc = 1
    _mpwasm_more = False
`;
  let rc;
  try {
    mp.runPython(driver);
    do {
      mp.runPython(stepper);
    } while (mp.globals.get("_mpwasm_more"));
    rc = mp.globals.get("_mpwasm_rc");
  } catch (e) {
    out.flush();
    err.flush();
    writeAll(2, Buffer.from(`mpwasm: MicroPython failed: ${e && e.name}: ${e && e.message}\n`));
    rc = 1;
  }
  out.flush();
  err.flush();
  if (heapReport) {
    const end = gcInfo(mp, false); // empty added areas are given back by a collection, so look first
    const m = gcInfo(mp, true);
    const line = m && end && initial
      ? `mpwasm-heap: requested=${heap} initial_total=${initial[0]} end_total=${end[0]} used_after_gc=${m[1]}\n`
      : `mpwasm-heap: unavailable\n`;
    writeAll(2, Buffer.from(line));
  }
  parentPort.postMessage({ type: "exit", code: typeof rc === "number" ? rc : 1 });
}

main().catch((e) => {
  writeAll(2, Buffer.from(`mpwasm: worker failed: ${e && e.stack}\n`));
  parentPort.postMessage({ type: "exit", code: 1 });
});
