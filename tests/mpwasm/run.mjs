#!/usr/bin/env node
// Run a MicroPython script like the unix port does (`micropython SCRIPT.py ARGS...`), on the real MicroPython
// compiled to WebAssembly (npm @micropython/micropython-webassembly-pyscript), with blocking UDP sockets.
//
//   node tests/mpwasm/run.mjs [--heap BYTES] [--fixed-heap] [--heap-report] [--cryptolib] [--path DIR]... SCRIPT.py [ARGS...]
//
// MicroPython runs in a worker thread (worker.mjs). This (main) thread owns the Node dgram sockets: it queues
// received datagrams (at most QUEUE_MAX per socket, later ones are dropped) and answers the worker's socket
// calls through a SharedArrayBuffer + Atomics.notify, so that recv() in Python really blocks. See README.md.
import dgram from "node:dgram";
import dns from "node:dns";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import crypto from "node:crypto";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const QUEUE_MAX = 64;
const DATA_BYTES = 1 << 20;
const E = { EBADF: 9, EAGAIN: 11, EINVAL: 22, EAFNOSUPPORT: 97, ENOTCONN: 107, EISCONN: 106, ETIMEDOUT: 110 };
const EAI_NONAME = -2; // what getaddrinfo() failures raise on the unix port (glibc EAI_NONAME)

function usage(msg) {
  fs.writeSync(2, `run.mjs: ${msg}\nusage: node run.mjs [--heap BYTES] [--fixed-heap] [--heap-report] [--cryptolib] [--path DIR]... SCRIPT.py [ARGS...]\n`);
  process.exit(2);
}

// ---- command line
const argv = process.argv.slice(2);
let heap = 1024 * 1024;
let heapReport = false;
let fixedHeap = false;
let cryptolib = false;
const paths = [];
while (argv.length && argv[0].startsWith("--")) {
  const opt = argv.shift();
  if (opt === "--") break;
  if (opt === "--heap-report") {
    heapReport = true;
    continue;
  }
  if (opt === "--fixed-heap") {
    fixedHeap = true;
    continue;
  }
  if (opt === "--cryptolib") {
    cryptolib = true;
    continue;
  }
  if (!argv.length) usage(`${opt} needs a value`);
  const val = argv.shift();
  if (opt === "--heap") {
    heap = Number.parseInt(val, 10);
    if (!(heap >= 4096)) usage(`bad --heap ${val}`);
  } else if (opt === "--path") {
    const d = path.resolve(val);
    if (!fs.existsSync(d) || !fs.statSync(d).isDirectory()) usage(`--path ${val}: not a directory`);
    paths.push(d);
  } else {
    usage(`unknown option ${opt}`);
  }
}
if (!argv.length) usage("no script");
const scriptArg = argv.shift();
const script = path.resolve(scriptArg);
if (!fs.existsSync(script)) usage(`${script}: no such file`);

// ---- sockets (main thread side)
const ctlSab = new SharedArrayBuffer(8);
const dataSab = new SharedArrayBuffer(DATA_BYTES);
const ctl = new Int32Array(ctlSab);
const dataView = new Uint8Array(dataSab);
const encoder = new TextEncoder();

const sockets = new Map(); // id -> state
let nextId = 1;

function reply(obj) {
  const bytes = encoder.encode(JSON.stringify(obj));
  dataView.set(bytes, 0);
  ctl[1] = bytes.length;
  Atomics.store(ctl, 0, 1);
  Atomics.notify(ctl, 0);
}

function errnoOf(e) {
  if (e && typeof e.errno === "number" && e.errno < 0) return -e.errno;
  if (e && e.code && os.constants.errno[e.code]) return os.constants.errno[e.code];
  if (e && e.code === "ERR_SOCKET_DGRAM_IS_CONNECTED") return E.EISCONN;
  if (e && e.code === "ERR_SOCKET_DGRAM_NOT_CONNECTED") return E.ENOTCONN;
  return E.EINVAL;
}

function deliver(s, item) {
  const { n } = s.pending;
  clearTimeout(s.pending.timer);
  s.pending = null;
  reply({ data: item.msg.subarray(0, n).toString("hex"), host: item.host, port: item.port });
}

function ensure(s) {
  if (s.sock) return s.sock;
  const sock = dgram.createSocket({ type: "udp4", reuseAddr: s.reuse });
  sock.on("message", (msg, rinfo) => {
    const item = { msg, host: rinfo.address, port: rinfo.port };
    if (s.pending) deliver(s, item);
    else if (s.queue.length < QUEUE_MAX) s.queue.push(item);
    else s.dropped++;
  });
  sock.on("error", (e) => {
    if (s.onError) s.onError(e);
  });
  s.sock = sock;
  return sock;
}

function closeSocket(s) {
  if (s.sock) {
    try {
      s.sock.close();
    } catch {
      // already closed
    }
  }
  s.sock = null;
  sockets.delete(s.id);
}

const ops = {
  resolve(r) {
    const host = r.host === "localhost" ? "127.0.0.1" : r.host;
    if (/^\d{1,3}(\.\d{1,3}){3}$/.test(host)) return reply({ ip: host });
    dns.lookup(host, { family: 4 }, (e, address) => reply(e ? { err: EAI_NONAME } : { ip: address }));
  },
  socket(r) {
    const id = nextId++;
    sockets.set(id, { id, sock: null, reuse: false, queue: [], pending: null, dropped: 0, onError: null });
    reply({ id });
  },
  setsockopt(r, s) {
    if (r.opt === 2) s.reuse = !!r.val; // SO_REUSEADDR; must come before bind (Node sets it at creation)
    reply({});
  },
  bind(r, s) {
    const sock = ensure(s);
    s.onError = (e) => {
      s.onError = null;
      closeSocket(s);
      sockets.set(s.id, s); // the id stays valid; a new dgram socket is made on next use
      reply({ err: errnoOf(e) });
    };
    try {
      sock.bind({ address: r.host || "0.0.0.0", port: r.port, exclusive: true }, () => {
        s.onError = null;
        reply({});
      });
    } catch (e) {
      s.onError = null;
      reply({ err: errnoOf(e) });
    }
  },
  connect(r, s) {
    try {
      ensure(s).connect(r.port, r.host, (e) => reply(e ? { err: errnoOf(e) } : {}));
    } catch (e) {
      reply({ err: errnoOf(e) });
    }
  },
  send(r, s) {
    const buf = Buffer.from(r.data, "hex");
    const cb = (e) => reply(e ? { err: errnoOf(e) } : { n: buf.length });
    try {
      if (r.host === undefined) ensure(s).send(buf, cb);
      else ensure(s).send(buf, r.port, r.host, cb);
    } catch (e) {
      reply({ err: errnoOf(e) });
    }
  },
  recv(r, s) {
    if (s.queue.length) {
      s.pending = { n: r.n, timer: null };
      return deliver(s, s.queue.shift());
    }
    if (r.timeout === 0) return reply({ err: E.EAGAIN });
    s.pending = { n: r.n, timer: null };
    if (r.timeout > 0) {
      s.pending.timer = setTimeout(() => {
        s.pending = null;
        reply({ err: E.ETIMEDOUT });
      }, r.timeout);
    }
  },
  getsockname(r, s) {
    try {
      const a = s.sock.address();
      reply({ host: a.address, port: a.port });
    } catch {
      reply({ err: E.EINVAL });
    }
  },
  close(r, s) {
    closeSocket(s);
    reply({});
  },
};

function handle(r) {
  const op = ops[r.op];
  if (!op) return reply({ err: E.EINVAL });
  if (r.op === "resolve" || r.op === "socket") return op(r);
  const s = sockets.get(r.id);
  if (!s) return reply({ err: E.EBADF });
  return op(r, s);
}

// ---- the worker
const t0 = performance.now();
const worker = new Worker(path.join(HERE, "worker.mjs"), {
  workerData: {
    script,
    scriptArg,
    scriptDir: path.dirname(script),
    paths,
    args: argv,
    heap,
    heapReport,
    fixedHeap,
    cryptolib,
    seed: crypto.randomBytes(4).readUInt32LE(0),
    ctlSab,
    dataSab,
    socketShim: path.join(HERE, "socket.py"),
  },
  stdout: false,
  stderr: false,
});

let finished = false;
function finish(code) {
  if (finished) return;
  finished = true;
  for (const s of [...sockets.values()]) closeSocket(s);
  if (process.env.MPWASM_TIMING) fs.writeSync(2, `mpwasm: total ${(performance.now() - t0).toFixed(0)} ms\n`);
  worker.terminate().finally(() => process.exit(code));
}

worker.on("message", (m) => {
  if (m.type === "rpc") {
    let r;
    try {
      r = JSON.parse(m.request);
      handle(r);
    } catch (e) {
      reply({ err: E.EINVAL });
    }
  } else if (m.type === "exit") {
    finish(m.code);
  }
});
worker.on("error", (e) => {
  fs.writeSync(2, `mpwasm: worker error: ${e && e.stack}\n`);
  finish(1);
});
worker.on("exit", (code) => {
  // normal path goes through the "exit" message; this only fires on its own if the worker died
  finish(code || 1);
});
