"""Record protection: one 64-byte application record, protect + unprotect, against the AEAD floor and tinydtls.

Run with ``python -m benchmarks.bench_records``.

Four iotdtls paths are timed, all with AES-128-CCM-8 (the suite a default handshake negotiates) and a fresh
sequence number per record, so the replay window accepts every one:

* ``connection`` - the full path between an established pair of :class:`~iotdtls.DTLSConnection`:
  ``client.send(payload)``, ``client.datagrams_to_send()``, ``server_conn.receive_datagram()`` and
  ``server_conn.next_event()`` returning the :class:`~iotdtls.DataReceived`.
* ``server front`` - the same, but the datagram enters through :meth:`DTLSServer.receive_datagram` (address
  lookup, new-ClientHello check, collecting output and events) and the event comes from
  :meth:`DTLSServer.next_event`; this is what the tinydtls baseline's ``handleMessage`` does.
* ``record layer (unprotect)`` - the bare record path without a connection: :meth:`CipherState.protect`,
  :func:`split_records`, :meth:`ReplayWindow.is_fresh`, :meth:`CipherState.unprotect`, :meth:`ReplayWindow.mark`.
* ``record layer (open)`` - the same through the single-record path the connection uses for application data
  (one header unpack and ``CipherState.open`` on the datagram); skipped when ``CipherState`` has no ``open``.
* a component breakdown of the record layer (each piece alone) next to bare ``AESCCM.encrypt`` / ``decrypt``.

The floor (:func:`benchmarks.baselines.aesccm_floor`) and tinydtls (:func:`benchmarks.baselines.tinydtls_record`)
are measured in the same run.  Every figure is the median of ``repeats`` timed loops of ``loops`` operations
(:func:`time.perf_counter`), with the garbage collector enabled as in the baselines; ``gc.collect()`` runs before
each series, outside the clock.
"""

from __future__ import annotations

import cProfile
import gc
import pstats
import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from DTLSSocket import dtls  # type: ignore[import-untyped,unused-ignore]

from benchmarks.baselines import aesccm_floor, tinydtls_record
from benchmarks.bench_handshake import CLIENT_ADDR, NOW, IotPair, client_config, server_config
from iotdtls import DataReceived
from iotdtls.constants import ContentType
from iotdtls.record import CipherState, split_records
from iotdtls.replay import ReplayWindow

__all__ = [
    "Interleaved",
    "connection_series",
    "interleaved",
    "main",
    "profile",
    "record_breakdown",
    "record_connection",
    "record_layer",
    "record_layer_open_series",
    "record_layer_series",
    "record_server_front",
    "server_front_series",
]

PAYLOAD_LEN: Final = 64
LOOPS: Final = 10000  # per series; the baselines default to 20000, which doubles the run time
REPEATS: Final = 9
TARGET_FLOOR_RATIO: Final = 1.25
KEY: Final = bytes(range(16))
IV: Final = bytes(4)
TAG_LEN: Final = 8  # AES-128-CCM-8
APPLICATION_DATA: Final = int(ContentType.APPLICATION_DATA)
EPOCH1: Final = 1 << 48
SEQ_MASK: Final = (1 << 48) - 1
_HEADER: Final = struct.Struct(">BHQH")  # record header: type, version, epoch << 48 | seq, length


def _timed(run: Callable[[int], None], loops: int, repeats: int) -> float:
    """Median seconds per operation of ``run(loops)`` over ``repeats`` series (after one warm-up call)."""
    run(min(loops, 1000))
    gc.collect()
    samples: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(loops)
        samples.append((time.perf_counter() - t0) / loops)
    return statistics.median(samples)


def _established_pair() -> IotPair:
    pair = IotPair(client_config(), server_config())
    pair.handshake()
    pair.check_established()
    return pair


def connection_series(payload_len: int = PAYLOAD_LEN) -> Callable[[int], None]:
    """A loop of ``send`` -> datagram -> peer ``receive_datagram`` -> ``DataReceived``, connection to connection."""
    pair = _established_pair()
    payload = bytes(payload_len)
    send = pair.client.send
    out = pair.client.datagrams_to_send
    conn = pair.server_conn
    receive = conn.receive_datagram
    next_event = conn.next_event
    now = NOW

    def run(n: int) -> None:
        for _ in range(n):
            send(payload)
            for dgram in out(now):
                receive(dgram, now)
            event = next_event()
        if not isinstance(event, DataReceived) or event.data != payload or next_event() is not None:
            raise AssertionError(f"record did not arrive as one DataReceived: {event!r}")

    return run


def record_connection(payload_len: int = PAYLOAD_LEN, *, loops: int = LOOPS, repeats: int = REPEATS) -> float:
    """Seconds for ``send`` -> datagram -> peer ``receive_datagram`` -> ``DataReceived``, connection to connection."""
    return _timed(connection_series(payload_len), loops, repeats)


def server_front_series(payload_len: int = PAYLOAD_LEN) -> Callable[[int], None]:
    """A loop of ``send`` -> datagram -> :meth:`DTLSServer.receive_datagram` -> ``DTLSServer.next_event``."""
    pair = _established_pair()
    payload = bytes(payload_len)
    send = pair.client.send
    out = pair.client.datagrams_to_send
    receive = pair.server.receive_datagram
    next_event = pair.server.next_event
    server_out = pair.server.datagrams_to_send
    addr = CLIENT_ADDR
    now = NOW

    def run(n: int) -> None:
        for _ in range(n):
            send(payload)
            for dgram in out(now):
                receive(dgram, addr, now)
            item = next_event()
        if item is None or not isinstance(item[1], DataReceived) or item[1].data != payload:
            raise AssertionError(f"record did not arrive as one DataReceived: {item!r}")
        if next_event() is not None or server_out(now):
            raise AssertionError("unexpected server output or events")

    return run


def record_server_front(payload_len: int = PAYLOAD_LEN, *, loops: int = LOOPS, repeats: int = REPEATS) -> float:
    """Seconds for ``send`` -> datagram -> :meth:`DTLSServer.receive_datagram` -> ``DTLSServer.next_event``."""
    return _timed(server_front_series(payload_len), loops, repeats)


def record_layer_series(payload_len: int = PAYLOAD_LEN) -> Callable[[int], None]:
    """A loop of ``CipherState.protect`` + ``split_records`` + replay check + ``unprotect`` + replay mark."""
    write = CipherState(KEY, IV, TAG_LEN)
    read = CipherState(KEY, IV, TAG_LEN)
    window = ReplayWindow(64)
    protect = write.protect
    unprotect = read.unprotect
    is_fresh = window.is_fresh
    mark = window.mark
    payload = bytes(payload_len)
    next_seq = [EPOCH1]

    def run(n: int) -> None:
        epoch_seq = next_seq[0]
        accepted = 0
        for _ in range(n):
            epoch_seq += 1
            for record in split_records(protect(APPLICATION_DATA, epoch_seq, payload)):
                if is_fresh(record.seq):
                    plain = unprotect(record)
                    if plain is not None:
                        mark(record.seq)
                        accepted += 1
        next_seq[0] = epoch_seq
        if accepted != n or plain != payload:
            raise AssertionError("record layer lost records")

    return run


def record_layer(payload_len: int = PAYLOAD_LEN, *, loops: int = LOOPS, repeats: int = REPEATS) -> float:
    """Seconds for ``CipherState.protect`` + ``split_records`` + replay check + ``unprotect`` + replay mark."""
    return _timed(record_layer_series(payload_len), loops, repeats)


def record_layer_open_series(payload_len: int = PAYLOAD_LEN) -> Callable[[int], None] | None:
    """The record layer as the connection's single-record fast path drives it, or ``None`` without that API.

    ``CipherState.protect``, one header unpack, replay check, ``CipherState.open`` on the datagram (no
    :class:`Record`, no fragment copy), replay mark.
    """
    write = CipherState(KEY, IV, TAG_LEN)
    read = CipherState(KEY, IV, TAG_LEN)
    open_record = getattr(read, "open", None)
    if open_record is None:
        return None
    window = ReplayWindow(64)
    protect = write.protect
    is_fresh = window.is_fresh
    mark = window.mark
    unpack = _HEADER.unpack_from
    payload = bytes(payload_len)
    next_seq = [EPOCH1]

    def run(n: int) -> None:
        epoch_seq = next_seq[0]
        accepted = 0
        for _ in range(n):
            epoch_seq += 1
            datagram = protect(APPLICATION_DATA, epoch_seq, payload)
            ctype, version, rec_epoch_seq, _length = unpack(datagram)
            seq = rec_epoch_seq & SEQ_MASK
            if is_fresh(seq):
                plain = open_record(ctype, version, rec_epoch_seq, datagram, 13, len(datagram))
                if plain is not None:
                    mark(seq)
                    accepted += 1
        next_seq[0] = epoch_seq
        if accepted != n or plain != payload:
            raise AssertionError("record layer (open) lost records")

    return run


def record_breakdown(payload_len: int = PAYLOAD_LEN, *, loops: int = LOOPS, repeats: int = 5) -> dict[str, float]:
    """Seconds per call of each record-layer piece alone, and of bare AESCCM encrypt / decrypt."""
    cipher = CipherState(KEY, IV, TAG_LEN)
    aead = AESCCM(KEY, tag_length=TAG_LEN)
    payload = bytes(payload_len)
    nonce = bytes(12)
    aad = bytes(13)
    sealed = aead.encrypt(nonce, payload, aad)
    datagram = cipher.protect(APPLICATION_DATA, EPOCH1 + 1, payload)
    record = next(split_records(datagram))
    protect = cipher.protect
    unprotect = cipher.unprotect
    encrypt = aead.encrypt
    decrypt = aead.decrypt
    window = ReplayWindow(64)
    is_fresh = window.is_fresh
    mark = window.mark

    def run_protect(n: int) -> None:
        for seq in range(EPOCH1, EPOCH1 + n):
            protect(APPLICATION_DATA, seq, payload)

    def run_split(n: int) -> None:
        for _ in range(n):
            for _record in split_records(datagram):
                pass

    def run_unprotect(n: int) -> None:
        for _ in range(n):
            unprotect(record)

    def run_replay(n: int) -> None:
        start = window.top + 1
        for seq in range(start, start + n):
            if is_fresh(seq):
                mark(seq)

    def run_encrypt(n: int) -> None:
        for _ in range(n):
            encrypt(nonce, payload, aad)

    def run_decrypt(n: int) -> None:
        for _ in range(n):
            decrypt(nonce, sealed, aad)

    return {
        "AESCCM.encrypt": _timed(run_encrypt, loops, repeats),
        "CipherState.protect": _timed(run_protect, loops, repeats),
        "AESCCM.decrypt": _timed(run_decrypt, loops, repeats),
        "CipherState.unprotect": _timed(run_unprotect, loops, repeats),
        "split_records (1 record)": _timed(run_split, loops, repeats),
        "ReplayWindow.is_fresh+mark": _timed(run_replay, loops, repeats),
    }


def _series_seconds(run: Callable[[int], None], loops: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    run(loops)
    return (time.perf_counter() - t0) / loops


class Interleaved:
    """Samples of every contender from round-robin series; ratios are medians of per-round ratios."""

    def __init__(self, samples: dict[str, list[float]]) -> None:
        self.samples = samples

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratio(self, name: str, reference: str) -> float:
        """Median over rounds of ``name / reference`` (both measured in the same round)."""
        pairs = zip(self.samples[name], self.samples[reference], strict=True)
        return statistics.median(a / b for a, b in pairs)


def interleaved(payload_len: int = PAYLOAD_LEN, *, loops: int = LOOPS, repeats: int = REPEATS) -> Interleaved:
    """Seconds per record of every contender, measured round-robin: one series of each per round.

    The peers come from :mod:`benchmarks.baselines` (one repeat per call).  Interleaving, and taking ratios
    within a round, keeps the ratios honest when the machine's speed drifts during the run.
    """
    ours = {
        "connection": connection_series(payload_len),
        "server front": server_front_series(payload_len),
        "record layer": record_layer_series(payload_len),
    }
    open_series = record_layer_open_series(payload_len)
    if open_series is not None:
        ours["record layer (open)"] = open_series
    for run in ours.values():
        run(min(loops, 1000))  # warm-up
    samples: dict[str, list[float]] = {"floor": [], "tinydtls": [], **{name: [] for name in ours}}
    for _ in range(repeats):
        gc.collect()
        samples["floor"].append(aesccm_floor(payload_len, TAG_LEN, loops=loops, repeats=1))
        gc.collect()
        samples["tinydtls"].append(tinydtls_record(payload_len, loops=loops, repeats=1))
        for name, run in ours.items():
            samples[name].append(_series_seconds(run, loops))
    return Interleaved(samples)


def profile(*, records: int = 100000, top: int = 25) -> None:
    """cProfile the connection -> connection record path and print the ``top`` functions by own time.

    cProfile adds a fixed cost per call, so it overstates small Python functions against the AEAD calls; use it
    for call counts and shape, and the pieces timed by :func:`record_breakdown` for real time.
    """
    run = connection_series()
    run(1000)
    profiler = cProfile.Profile()
    profiler.enable()
    run(records)
    profiler.disable()
    stats = pstats.Stats(profiler)
    print(f"cProfile of {records} records, connection -> connection "
          f"({stats.total_calls / records:.1f} calls each)")  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)


_LABELS: Final = {
    "floor": "AESCCM seal+open floor",
    "tinydtls": "tinydtls write+handleMessage",
    "connection": "iotdtls connection -> connection",
    "server front": "iotdtls via DTLSServer front",
    "record layer": "iotdtls record layer (unprotect)",
    "record layer (open)": "iotdtls record layer (open)",
}
_KEYS: Final = {
    "floor": "aesccm_floor",
    "tinydtls": "tinydtls_record",
    "connection": "iotdtls_connection",
    "server front": "iotdtls_server_front",
    "record layer": "iotdtls_record_layer",
    "record layer (open)": "iotdtls_record_layer_open",
}


def main() -> dict[str, float]:
    """Measure everything in this process, print a short table and return the figures.

    Keys: ``<name>_s`` (median seconds per record), ``<name>_vs_floor`` and ``<name>_vs_tinydtls`` (medians of
    per-round ratios) for every iotdtls path, and ``part <piece> s`` for the record-layer pieces.
    """
    dtls.setLogLevel(dtls.DTLS_LOG_EMERG)
    res = interleaved()
    parts = record_breakdown()
    print(f"Record protect + unprotect, {PAYLOAD_LEN}-byte payload, AES-128-CCM-8 "
          "(median per record; ratios: median of per-round ratios)")
    print(f"  {'':34} {'us':>7} {'x floor':>8} {'x tinydtls':>11}")
    figures: dict[str, float] = {}
    for name in res.samples:
        key = _KEYS[name]
        secs = res.median(name)
        vs_floor, vs_tiny = res.ratio(name, "floor"), res.ratio(name, "tinydtls")
        figures[f"{key}_s"] = secs
        if name != "floor":
            figures[f"{key}_vs_floor"] = vs_floor
        if name not in ("floor", "tinydtls"):
            figures[f"{key}_vs_tinydtls"] = vs_tiny
        print(f"  {_LABELS[name]:34} {secs * 1e6:7.2f} {vs_floor:7.2f}x {vs_tiny:10.2f}x")
    print("  record-layer pieces, each alone (us):")
    for name, secs in parts.items():
        print(f"    {name:32} {secs * 1e6:7.2f}")
        figures[f"part {name} s"] = secs
    floor = res.median("floor")
    for name in ("connection", "record layer", "record layer (open)"):
        if name in res.samples:
            verdict = "met" if res.ratio(name, "floor") <= TARGET_FLOOR_RATIO else "NOT met"
            print(f"  target <= {TARGET_FLOOR_RATIO}x floor ({floor * TARGET_FLOOR_RATIO * 1e6:.2f} us), "
                  f"{name}: {verdict}")
    return figures


if __name__ == "__main__":
    if "--profile" in sys.argv[1:]:
        profile()
    else:
        main()
