# iotdtls device firmware entry point: posts CBOR telemetry over CoAPs (DTLS 1.2 PSK) to a gateway.
#
# On a board this runs at boot and loops forever. On the unix port (or CPython):
#     micropython main.py config.json --count N
# posts N readings, prints one line per response with its CoAP code, exits 0 when all were answered.
# config.json: {"host", "port", "identity", "psk" (hex), "path" (default "telemetry"), "interval" (s)}; optional
# "method" ("POST" or "PUT"), "mtu", "tries" (attempts per reading with --count), "wifi_ssid"/"wifi_password"
# (boards), "ack_timeout", "retransmit_initial", "handshake_timeout", "backoff_max" (seconds), "key" (false: no
# idempotency key), "old_identity"/"old_psk" (the previous key, kept by a key rotation), "cid" (false: no Connection
# ID), "rsl" (the record_size_limit advertised, 256), "tickets" (true: resume with a session ticket, RFC 5077; default
# false: with the session ID, from the gateway's session cache: a smaller ClientHello), "session" (the DTLS session,
# hex, stored here after each handshake and resumed at the next boot; docs/micropython.md: it holds the master
# secret, like "psk" it must stay private).
# Every request carries the reading's idempotency key as a Uri-Query option k=<boot>.<seq>: <boot> 8 lowercase hex
# digits drawn at boot, <seq> the reading's "seq"; a reading resent (a retransmission, a new session, a new attempt)
# has the same key and payload, so the gateway can drop the duplicates.
# Key rotation: when a 2.04 carries the gateway's CBOR {"cred": true}, the device GETs its new key from
# "credentials" (next to "path"), writes it to the config file (atomically: a temp file renamed over it; the
# previous key stays as "old_identity"/"old_psk"), closes the session, and handshakes with the new key at the next
# request. If that key is refused (bad_record_mac), it falls back to the previous one, once.
# Downlink (docs/gateway.md): a 2.04 carrying {"cfg": true} makes the device GET "config" (with the ETag it has,
# "config_etag"; 2.03: unchanged) and apply what it knows of it ("interval"), stored in its config file; {"cmd": N}
# makes it GET "commands", run each with its handler (HANDLERS) and POST each result to "commands".
import json
import socket
import sys
import time
from binascii import hexlify

from iotdtls_mp import cbor, coap, coaps

try:
    from os import urandom
except ImportError:  # ports without os.urandom (the webassembly port): random, seeded by the port or runner
    import random

    def urandom(n):
        b = bytearray(n)
        for i in range(n):
            b[i] = random.getrandbits(8)
        return b

try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython
    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b


class Clock:
    """Seconds since the last rebase(): small numbers, so single-precision floats stay exact enough."""

    def __init__(self):
        self.base = ticks_ms()

    def __call__(self):
        return ticks_diff(ticks_ms(), self.base) / 1000

    def rebase(self):
        t = self()
        self.base = ticks_ms()
        return t


def load_config(path):
    try:
        f = open(path)  # noqa: SIM115
    except OSError:  # FAT renames by removing the target first: a power cut in between leaves the whole new file
        f = open(path + ".tmp")  # noqa: SIM115
    with f:
        cfg = load_config_dict(json.load(f))
    cfg["_file"] = path  # where a rotated key is stored
    return cfg


def _call(mod, fn, *args):
    """iotdtls_mp.<mod>.<fn>(*args), the module imported for this call only: its code leaves the heap after (the
    config check at boot, a config write after a handshake, a hint of the gateway; a board's heap is 48 KiB)."""
    import iotdtls_mp as p

    __import__("iotdtls_mp." + mod)
    try:
        return getattr(getattr(p, mod), fn)(*args)
    finally:
        sys.modules.pop("iotdtls_mp." + mod, None)
        if hasattr(p, mod):
            delattr(p, mod)


def load_config_dict(cfg):
    """Check a config (types, ranges), fill in defaults, add "psk_bytes" (iotdtls_mp/config.py)."""
    return _call("config", "check", cfg)


def save_config(cfg):
    """Write cfg to the file it was read from, atomically: a temp file renamed over it (iotdtls_mp/config.py)."""
    _call("config", "save", cfg)


def adopt(cfg, s):
    """After a request: store a key the gateway handed over, or note a fallback it accepted (iotdtls_mp/hints.py);
    a line to print, or None."""
    if s.offer is None and s.swapped is None:
        return None
    return _call("hints", "adopt", cfg, s, save_config)


def sensor():
    """A temperature in degrees C where the board has a sensor, else None."""
    try:
        if sys.platform == "rp2":
            import machine
            v = machine.ADC(4).read_u16() * 3.3 / 65535
            return round(27 - (v - 0.706) / 0.001721, 1)
        if sys.platform == "esp32":
            import esp32
            if hasattr(esp32, "mcu_temperature"):
                return esp32.mcu_temperature()
            return round((esp32.raw_temperature() - 32) / 1.8, 1)
    except Exception:
        pass
    return None


def reading(n, uptime):
    r = {"uptime": int(uptime), "seq": n}
    t = sensor()
    if t is not None:
        r["temp"] = t
    return cbor.dumps(r)


def cmd_led(dev, args):
    """Switch the board's LED (args: {"on": bool}; no args: toggle); on the unix port only the state changes."""
    on = args.get("on") if isinstance(args, dict) else None
    dev.led = (not dev.led) if on is None else bool(on)
    try:
        import machine
        machine.Pin("LED", machine.Pin.OUT).value(dev.led)
    except Exception:  # no machine module (unix, CPython) or no LED pin
        pass
    return {"led": dev.led}


def cmd_reboot(dev, args):
    """Reboot once the result is posted (machine.reset on a board); elsewhere a new boot id, i.e. a new Device."""
    dev.reboot = True
    return {"rebooting": True}


#: Command name -> handler(device, args) returning the result (any CBOR value); an exception is an "error" result.
HANDLERS = {"led": cmd_led, "reboot": cmd_reboot}


def wifi(cfg):
    if "wifi_ssid" not in cfg:
        return
    try:
        import network
    except ImportError:
        return
    w = network.WLAN(network.STA_IF)
    w.active(True)
    if not w.isconnected():
        w.connect(cfg["wifi_ssid"], cfg.get("wifi_password", ""))
        for _ in range(200):
            if w.isconnected():
                break
            time.sleep_ms(100)


ERRNO = {101: "network unreachable", 111: "connection refused", 113: "no route to host", -2: "unknown host"}


def network_error(e):
    n = e.args[0] if e.args else None
    return f"network error {n} ({ERRNO[n]})" if n in ERRNO else f"network error {n if n is not None else e}"


def _timed_out(e):
    return isinstance(e, OSError) and ((e.args and e.args[0] in (11, 110, 116)) or "timed out" in str(e))


def _sib(cfg, name):
    """The path `name` next to the telemetry path ("a/telemetry" -> "a/name")."""
    p = cfg["path"]
    return p[:p.rfind("/") + 1] + name


def new_session(cfg, rand):
    """The coaps.Session of a config: its credential, the previous one as the fallback, the rotation path."""
    saved = cfg.get("session_bytes") or None  # stored by an earlier boot (Device.keep): resumed
    s = coaps.Session(
        cfg["identity"].encode(), cfg["psk_bytes"], rand, mtu=cfg.get("mtu", 512),
        ack_timeout=cfg.get("ack_timeout", coap.ACK_TIMEOUT), retransmit_initial=cfg.get("retransmit_initial", 2.0),
        handshake_timeout=cfg.get("handshake_timeout", 60), backoff_max=cfg.get("backoff_max", 300),
        cred_path=_sib(cfg, "credentials"), rsl=cfg.get("rsl", 256), cid=b"" if cfg.get("cid", True) else None,
        tickets=cfg.get("tickets", False), session=saved)
    if "old_psk_bytes" in cfg and "old_identity" in cfg:
        s.old = (cfg["old_identity"].encode(), cfg["old_psk_bytes"])
    return s


class Device:
    """The blocking-socket loop around a coaps.Session."""

    def __init__(self, cfg, rand=urandom, out=print):
        self.cfg = cfg
        self.out = out
        self.clock = Clock()
        self.session = new_session(cfg, rand)
        # the idempotency key's prefix "k=<boot>.": a boot id of 8 hex digits, new for each Device (each boot)
        self.boot = str(hexlify(rand(4)), "ascii")
        self.kq = "k=" + self.boot + "." if cfg.get("key", True) else None
        self.last = None  # (n, payload) of the last reading: a reading resent is the same reading
        self.sock = None
        # the largest datagram taken: the mtu, at least 512. A larger recv() needs a free block that size in one
        # piece, which a fragmented 48 KiB heap may not have; the server's records fit (our record_size_limit is
        # 256), and a longer datagram is cut, so its last record fails to authenticate
        self.rx = max(cfg.get("mtu", 512), 512)
        self._um = 0  # uptime, summed from tick differences (ticks_ms wraps every ~12 days on boards)
        self._ut = ticks_ms()
        self.saved = self.session.saved
        self.led = False
        self.handlers = HANDLERS
        self.reboot = False  # a "reboot" command ran: the loop starts a new Device (machine.reset on a board)

    def uptime(self):
        """Seconds since the Device was made; called at least every few days (each reading), so wrap-safe."""
        t = ticks_ms()
        self._um += ticks_diff(t, self._ut)
        self._ut = t
        return self._um // 1000

    def _open(self):
        # a connected UDP socket: the kernel keeps other senders out, and where the OS reports ICMP errors (unix)
        # a server that is not listening is an immediate error (connection refused) instead of a timeout
        if self.sock is None:
            ai = socket.getaddrinfo(self.cfg["host"], self.cfg["port"], 0, socket.SOCK_DGRAM)[0]
            sock = socket.socket(ai[0], socket.SOCK_DGRAM)
            try:
                sock.connect(ai[-1])
            except OSError:
                sock.close()
                raise
            self.sock = sock

    def _cs(self):
        # a new socket is a new source port: the server knows the session there only by its Connection ID
        c = self.session.conn
        if c is None or not c.pcid:
            self.session.drop()
            self.session.datagrams()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _lost(self, e):
        self.session.abort(network_error(e))
        self._cs()

    def _flush(self):
        for d in self.session.datagrams():
            self.sock.send(d)

    def wait(self, until):
        """Handle datagrams and timers until `until` (clock seconds) or, if None, until the request is done."""
        s = self.session
        while True:
            now = self.clock()
            t = s.timer()
            if until is None:
                if not s.busy():
                    return
                end = t
            else:
                if now >= until:
                    return
                end = until if t is None else min(t, until)
            if end is not None and end <= now:
                s.on_timer(now)
                self._flush()
                continue
            # whole milliseconds: MicroPython's unix port makes a timeout just below a whole second tv_usec=1000000,
            # which Linux refuses (OSError 33, EDOM)
            self.sock.settimeout(max(5, int((end - now) * 1000)) / 1000 if end is not None else 1)
            try:
                d = self.sock.recv(self.rx)
            except OSError as e:
                if not _timed_out(e):
                    raise
                continue
            s.receive(d, self.clock())
            self._flush()

    def key(self, n):
        """The Uri-Query of reading n: "k=<boot>.<n>", or None with "key": false."""
        # % allocates less than + str(n) or an f-string (which MicroPython compiles to str.format)
        return "%s%d" % (self.kq, n) if self.kq is not None else None  # noqa: UP031

    def post(self, n):
        """Post reading n (again: the same payload and key); returns ("ok", Message) or ("error", reason)."""
        s = self.session
        try:
            self._open()
            last = self.last
            if last is None or last[0] != n:
                last = self.last = (n, reading(n, self.uptime()))
            code = coap.PUT if self.cfg.get("method") == "PUT" else coap.POST
            s.request(self.clock(), code, self.cfg["path"], last[1], coap.CF_CBOR, query=self.key(n))
            self._flush()
            self.wait(None)
            result = s.result
            line = adopt(self.cfg, s)
            if line:
                self.out(line)
                self._flush()  # the close_notify of a rekey
            if result[0] == "ok" and getattr(result[1], "payload", None) and result[1].code == coap.CHANGED:
                try:
                    _call("hints", "downlink", self, coaps._cbor(result[1], dict), save_config)
                except OSError as e:  # the reading was acknowledged: what waits is fetched after the next one
                    self._lost(e)
            s.result = result
            self.keep()
        except ValueError as e:  # a reading too large for the configured mtu
            return ("error", str(e))
        except OSError as e:
            self._lost(e)
        if s.timer() is None:
            self.clock.rebase()
        return s.result

    def keep(self):
        """Store the DTLS session when it changed (a handshake) in the config file, for the next boot: flash is
        written once per handshake, not per reading."""
        b = self.session.saved
        if b != self.saved:
            self.saved = b
            self.cfg["session_bytes"] = b
            self.cfg["session"] = hexlify(b or b"").decode()
            try:  # noqa: SIM105 - MicroPython has no contextlib
                save_config(self.cfg)
            except OSError:  # a full or read-only file system: resumed only while this boot lasts
                pass

    def ask(self, code, path, payload=b"", opts=None):
        """One more request over the session; the response Message, or None."""
        self.session.request(self.clock(), code, _sib(self.cfg, path), payload,
                             coap.CF_CBOR if payload else None, opts=opts)
        self._flush()
        self.wait(None)
        r = self.session.result
        return r[1] if r[0] == "ok" else None

    def pause(self, seconds):
        """Wait `seconds` while still answering the server (e.g. its close_notify); socket errors (a refused
        close_notify, Wi-Fi gone) close the socket, and the rest of the time is slept."""
        end = self.clock() + seconds
        if self.sock is not None:
            try:
                self.wait(end)
            except OSError:
                self._cs()
        left = end - self.clock()
        if left > 0:
            time.sleep(left)
        if self.session.timer() is None:
            self.clock.rebase()

    def close(self):
        self.session.drop()
        if self.sock is not None:
            try:  # noqa: SIM105 (no contextlib in MicroPython)
                self._flush()
            except OSError:
                pass
        self._cs()


def restart(dev, cfg, out):
    """After a "reboot" command: machine.reset() on a board; elsewhere a new Device (a new boot id)."""
    if not dev.reboot:
        return dev
    dev.close()
    try:
        import machine
        machine.reset()
    except ImportError:
        pass
    out("rebooted")
    return Device(cfg, out=out)


def run_count(cfg, count, out=print):
    """Post `count` readings, each tried up to cfg["tries"] times; 0 when all were answered."""
    dev = Device(cfg, out=out)
    tries = cfg.get("tries", 3)
    try:
        for n in range(1, count + 1):
            for attempt in range(tries):
                ok, r = dev.post(n)
                if ok == "ok":
                    out(coap.code_str(r.code))
                    break
                if attempt + 1 < tries:
                    dev.pause(dev.session.delay())
            else:
                out(f"error: reading {n} not answered after {tries} attempt(s): {r}")
                return 1
            dev = restart(dev, cfg, out)
            if n < count:
                dev.pause(cfg["interval"])
    finally:
        dev.close()
    return 0


def run_forever(cfg, out=print, limit=None):
    """The board loop: a reading every interval, back-off after failures. A crash (a bug, MemoryError) starts the
    loop again with a new Device after 10 s instead of leaving the board at the REPL. `limit` is for tests."""
    n = 0
    while limit is None or n < limit:
        dev = Device(cfg, out=out)
        try:
            while limit is None or n < limit:
                wifi(cfg)  # no-op when connected (or not a board); rejoins after an outage
                n += 1
                ok, r = dev.post(n)
                out(f"{n} {coap.code_str(r.code)}" if ok == "ok" else f"{n} {r}")
                dev = restart(dev, cfg, out)
                dev.pause(cfg["interval"] if ok == "ok" else max(dev.session.delay(), 1))
        except KeyboardInterrupt:
            raise
        except Exception as e:
            out(f"{n} crashed: {e!r}; restarting the loop")
            try:  # noqa: SIM105
                dev.close()
            except Exception:
                pass
            time.sleep(10)


def main(argv):
    args = argv[1:]
    count = None
    if "--count" in args:
        i = args.index("--count")
        try:
            count = int(args[i + 1])
        except (IndexError, ValueError):
            print("usage: main.py [CONFIG.json] [--count N]")
            return 2
        del args[i:i + 2]
    path = args[0] if args else "config.json"
    try:
        cfg = load_config(path)
    except OSError:
        print(f"error: cannot read config file {path}")
        return 2
    except (ValueError, KeyError, TypeError) as e:
        print(f"error: bad config file {path}: {e}")
        return 2
    if count is None:
        run_forever(cfg)
    return run_count(cfg, count)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
