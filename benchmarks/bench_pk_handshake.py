"""ECDHE-ECDSA handshakes per second (raw public keys, P-256), against the bare P-256 operations they need.

Run with ``python -m benchmarks.bench_pk_handshake`` (``--profile`` for a cProfile of the mutual handshake).

Two iotdtls handshakes are timed, both TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 with raw public keys (RFC 7250),
the cookie exchange and the extended master secret, client and server in one process, sans-IO, in memory
(:class:`benchmarks.bench_handshake.IotPair`, a fresh client connection and server front per handshake,
created outside the clock):

* ``server-only`` - the server presents its key, the client pins it; no CertificateRequest.
* ``mutual`` - the server also pins the client's key and requires it (``require_client_auth``).

The **floor** is the P-256 work such a handshake cannot avoid, done bare through ``cryptography`` with the
same calls iotdtls makes, in the same run:

* 2 ephemeral key generations (``ec.derive_private_key`` of 48 random bytes reduced mod n, as
  :func:`iotdtls.keys.derive_scalar_key`) and the encoding of both ephemeral points for the wire,
* 2 ECDH exchanges, each after ``from_encoded_point`` of the peer's share,
* the ServerKeyExchange signature (deterministic ECDSA-SHA256) and its verification after
  ``load_der_public_key`` of the server's SPKI,
* mutual only: the CertificateVerify signature over a transcript digest (deterministic, prehashed), its
  verification and ``load_der_public_key`` of the client's SPKI.

Method as :mod:`benchmarks.bench_handshake`: individually timed handshakes, blocks alternating between
iotdtls and the floor (both modes), the median of the block medians; the ratio (time per handshake / floor
time) and the overhead (difference, in microseconds) are medians of the per-block figures.  For reference
each block also times the default PSK handshake of :mod:`benchmarks.bench_handshake`: the overhead of an RPK
handshake is mostly the same parsing, state handling and record work a PSK handshake consists of.
"""

from __future__ import annotations

import cProfile
import gc
import hashlib
import os
import pstats
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from benchmarks import bench_handshake
from benchmarks.bench_handshake import WARMUP, IotPair, _iotdtls_samples
from iotdtls import DTLSConfiguration
from iotdtls.constants import ECDHE_ECDSA_SUITES
from iotdtls.keys import PrivateKey, derive_scalar_key, fingerprint, spki_der
from iotdtls.trust import TrustStore

__all__ = [
    "MODES",
    "client_config",
    "floor_breakdown",
    "floor_handshake",
    "interleaved",
    "main",
    "profile",
    "server_config",
]

MODES: Final = (("server-only", False), ("mutual", True))
_N: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_CURVE: Final = ec.SECP256R1()
_SIGN: Final = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_SIGN_PREHASHED: Final = ec.ECDSA(utils.Prehashed(hashes.SHA256()), deterministic_signing=True)
_VERIFY: Final = ec.ECDSA(hashes.SHA256())
_VERIFY_PREHASHED: Final = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
_X962: Final = (serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
_RANDOMS: Final = bytes(range(64))  # client_random + server_random, signed with the ECDH parameters
_DIGEST: Final = hashlib.sha256(b"handshake transcript").digest()  # what CertificateVerify signs


def _key(label: str) -> PrivateKey:
    """A deterministic static P-256 key per label (the same derivation as tests/helpers.py: p256_key)."""
    return derive_scalar_key(hashlib.sha512(label.encode()).digest()[:48])


SERVER_KEY: Final = _key("server")
CLIENT_KEY: Final = _key("client")


def client_config(*, mutual: bool, **kw: object) -> DTLSConfiguration:
    """An RPK client pinning the server's key; with ``mutual`` it presents its own key when asked."""
    trust = TrustStore.of([fingerprint(spki_der(SERVER_KEY))])
    key = CLIENT_KEY if mutual else None
    return DTLSConfiguration(is_client=True, private_key=key, trust=trust, **kw)  # type: ignore[arg-type]


def server_config(*, mutual: bool, **kw: object) -> DTLSConfiguration:
    """An RPK server (no PSK); with ``mutual`` it pins the client's key and requires client authentication."""
    trust = TrustStore.of([fingerprint(spki_der(CLIENT_KEY))]) if mutual else None
    return DTLSConfiguration(is_client=False, private_key=SERVER_KEY, trust=trust, require_client_auth=mutual,
                             **kw)  # type: ignore[arg-type]


def _check(mutual: bool) -> None:
    """One handshake of the mode must complete with an ECDHE-ECDSA suite and the expected authentication."""
    pair = IotPair(client_config(mutual=mutual), server_config(mutual=mutual))
    pair.handshake()
    pair.check_established()
    client_event, server_event = pair.completed
    if client_event.cipher_suite not in ECDHE_ECDSA_SUITES or client_event.peer is None:
        raise RuntimeError(f"not an authenticated ECDHE-ECDSA handshake: {client_event!r}")
    if (server_event.peer is not None) != mutual:
        raise RuntimeError(f"client authentication {'missing' if mutual else 'unexpected'}: {server_event!r}")


# --------------------------------------------------------------------------------------------------------
# the floor
# --------------------------------------------------------------------------------------------------------


def _ephemeral(urandom: Callable[[int], bytes] = os.urandom) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(urandom(48), "big") % (_N - 1) + 1, _CURVE)


def floor_handshake(mutual: bool, server_spki: bytes, client_spki: bytes) -> tuple[bytes, bytes]:
    """The P-256 operations of one handshake, in protocol order; returns both premaster secrets."""
    # server flight: ephemeral key, its point, the signed ServerKeyExchange parameters
    server_eph = _ephemeral()
    server_point = server_eph.public_key().public_bytes(*_X962)
    params = b"\x03\x00\x17\x41" + server_point
    ske_signature = SERVER_KEY.sign(_RANDOMS + params, _SIGN)
    # client: judge the server key, verify the signature, own ephemeral key, ECDH
    load_der = serialization.load_der_public_key
    server_pub = load_der(server_spki)
    assert isinstance(server_pub, ec.EllipticCurvePublicKey)
    server_pub.verify(ske_signature, _RANDOMS + params, _VERIFY)
    client_eph = _ephemeral()
    client_point = client_eph.public_key().public_bytes(*_X962)
    client_pm = client_eph.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, server_point))
    cv_signature = CLIENT_KEY.sign(_DIGEST, _SIGN_PREHASHED) if mutual else b""
    # server: ECDH on the client's share; mutual: judge the client key and verify CertificateVerify
    server_pm = server_eph.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, client_point))
    if mutual:
        client_pub = load_der(client_spki)
        assert isinstance(client_pub, ec.EllipticCurvePublicKey)
        client_pub.verify(cv_signature, _DIGEST, _VERIFY_PREHASHED)
    return client_pm, server_pm


def _floor_samples(mutual: bool, handshakes: int) -> list[float]:
    server_spki, client_spki = spki_der(SERVER_KEY), spki_der(CLIENT_KEY)
    perf_counter = time.perf_counter
    samples: list[float] = []
    gc.collect()
    for _ in range(handshakes + WARMUP):
        t0 = perf_counter()
        floor_handshake(mutual, server_spki, client_spki)
        samples.append(perf_counter() - t0)
    return samples[WARMUP:]


def floor_breakdown(*, loops: int = 200, repeats: int = 5) -> list[tuple[str, float, int, int]]:
    """``(operation, seconds per call, calls server-only, calls mutual)`` of each floor operation alone."""
    spki = spki_der(SERVER_KEY)
    eph = _ephemeral()
    peer = _ephemeral().public_key()
    point = peer.public_bytes(*_X962)
    data = _RANDOMS + b"\x03\x00\x17\x41" + point
    ske_sig = SERVER_KEY.sign(data, _SIGN)
    cv_sig = CLIENT_KEY.sign(_DIGEST, _SIGN_PREHASHED)
    pub = SERVER_KEY.public_key()
    cpub = CLIENT_KEY.public_key()
    ops: list[tuple[str, Callable[[], object], int, int]] = [
        ("ec.derive_private_key (ephemeral)", _ephemeral, 2, 2),
        ("public_bytes X9.62 point", lambda: eph.public_key().public_bytes(*_X962), 2, 2),
        ("from_encoded_point (peer share)", lambda: ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, point), 2, 2),
        ("ECDH exchange", lambda: eph.exchange(ec.ECDH(), peer), 2, 2),
        ("ECDSA sign (SKE, hashes 133 B)", lambda: SERVER_KEY.sign(data, _SIGN), 1, 1),
        ("ECDSA sign (CertificateVerify, prehashed)", lambda: CLIENT_KEY.sign(_DIGEST, _SIGN_PREHASHED), 0, 1),
        ("ECDSA verify (SKE)", lambda: pub.verify(ske_sig, data, _VERIFY), 1, 1),
        ("ECDSA verify (CertificateVerify)", lambda: cpub.verify(cv_sig, _DIGEST, _VERIFY_PREHASHED), 0, 1),
        ("load_der_public_key (peer SPKI)", lambda: serialization.load_der_public_key(spki), 1, 2),
    ]
    out = []
    for name, op, n_server_only, n_mutual in ops:
        series = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(loops):
                op()
            series.append((time.perf_counter() - t0) / loops)
        out.append((name, statistics.median(series), n_server_only, n_mutual))
    return out


# --------------------------------------------------------------------------------------------------------
# iotdtls vs floor, alternating
# --------------------------------------------------------------------------------------------------------


def interleaved(*, handshakes: int = 2000, blocks: int = 10) -> dict[str, dict[str, float]]:
    """Per mode: ``handshake_s``, ``floor_s``, ``ratio`` (handshake / floor), ``overhead_s`` and ``setup_s``;
    under ``"psk"``: ``handshake_s`` of the default PSK handshake, timed in the same blocks.

    Each block times ``handshakes // blocks`` iotdtls handshakes and as many floor handshakes of each mode;
    the figures are medians over the blocks of the per-block medians (and of per-block ratio / difference).
    """
    per_block = max(1, handshakes // blocks)
    for _, mutual in MODES:
        _check(mutual)
        a, b = floor_handshake(mutual, spki_der(SERVER_KEY), spki_der(CLIENT_KEY))
        if a != b:
            raise RuntimeError("floor ECDH secrets differ")
    configs = {name: (client_config(mutual=m), server_config(mutual=m)) for name, m in MODES}
    ours: dict[str, list[float]] = {name: [] for name, _ in MODES}
    floor: dict[str, list[float]] = {name: [] for name, _ in MODES}
    setup: dict[str, list[float]] = {name: [] for name, _ in MODES}
    psk: list[float] = []
    psk_configs = (bench_handshake.client_config(), bench_handshake.server_config())
    for _ in range(blocks):
        psk.append(statistics.median(_iotdtls_samples(*psk_configs, per_block)[0]))
        for name, mutual in MODES:
            samples, setups = _iotdtls_samples(*configs[name], per_block)
            ours[name].append(statistics.median(samples))
            setup[name].append(statistics.median(setups))
            floor[name].append(statistics.median(_floor_samples(mutual, per_block)))
    result: dict[str, dict[str, float]] = {"psk": {"handshake_s": statistics.median(psk)}}
    for name, _ in MODES:
        pairs = list(zip(ours[name], floor[name], strict=True))
        result[name] = {
            "handshake_s": statistics.median(ours[name]),
            "floor_s": statistics.median(floor[name]),
            "ratio": statistics.median(o / f for o, f in pairs),
            "overhead_s": statistics.median(o - f for o, f in pairs),
            "setup_s": statistics.median(setup[name]),
        }
    return result


# --------------------------------------------------------------------------------------------------------
# profile
# --------------------------------------------------------------------------------------------------------

#: cProfile entries that are P-256 work inside ``cryptography`` (the floor's operations).
_EC_ENTRY: Final = re.compile(r"openssl\.ec\.|ec\.derive_private_key|ec\.from_public_bytes|load_der_public_key")


_Entry = tuple[tuple[str, int, str], int, float, float]  # (file, line, function), calls, own s, cumulative s


def _profiled(run: Callable[[], object]) -> tuple[list[_Entry], int]:
    """cProfile entries of ``run()`` (the profiler's own entry left out), by own time, and the call count."""
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    rows = [(key, value[1], value[2], value[3]) for key, value in entries.items() if "_lsprof" not in key[2]]
    return sorted(rows, key=lambda r: -r[2]), stats.total_calls  # type: ignore[attr-defined]


def _handshakes(ccfg: DTLSConfiguration, scfg: DTLSConfiguration, n: int) -> Callable[[], None]:
    pairs = [IotPair(ccfg, scfg) for _ in range(n)]

    def run() -> None:
        for pair in pairs:
            pair.handshake()
        for pair in pairs:
            pair.check_established()

    return run


def profile(*, mutual: bool = True, handshakes: int = 300, top: int = 25) -> None:
    """cProfile ``handshakes`` RPK handshakes, as many floor handshakes and as many PSK handshakes.

    Prints the P-256 calls made inside the handshakes next to the same calls in the floor (they run slower
    between Python code than back to back), then the ``top`` other entries by own time next to the same entry
    in the PSK handshakes (what the public-key path adds is the difference).  cProfile adds a fixed cost per
    call, so small Python functions look dearer than they are against C calls; read it for call counts and
    where the non-EC time goes, not for absolute figures.
    """
    n = handshakes
    rows, calls = _profiled(_handshakes(client_config(mutual=mutual), server_config(mutual=mutual), n))
    spkis = spki_der(SERVER_KEY), spki_der(CLIENT_KEY)
    floor_rows, _ = _profiled(lambda: [floor_handshake(mutual, *spkis) for _ in range(n)])
    psk_rows, psk_calls = _profiled(_handshakes(bench_handshake.client_config(), bench_handshake.server_config(), n))
    floor_own = {key[2]: (count, own) for key, count, own, _ in floor_rows}
    psk_own = {key: own for key, _, own, _ in psk_rows}
    total = sum(r[2] for r in rows)
    ec_rows = [r for r in rows if _EC_ENTRY.search(r[0][2])]
    ec_total = sum(r[2] for r in ec_rows)
    print(f"cProfile of {n} iotdtls RPK handshakes ({'mutual' if mutual else 'server-only'}): {calls / n:.0f} calls "
          f"and {total / n * 1e6:.0f} us per handshake under the profiler; P-256 calls {ec_total / n * 1e6:.0f} us "
          f"(in the floor: {sum(own for _, own in floor_own.values()) / n * 1e6:.0f} us), everything else "
          f"{(total - ec_total) / n * 1e6:.0f} us (a PSK handshake: {psk_calls / n:.0f} calls, "
          f"{sum(r[2] for r in psk_rows) / n * 1e6:.0f} us)")
    print(f"  {'calls/hs':>8} {'own us/hs':>9} {'floor':>14}  P-256 (cryptography)")
    for (_file, _line, func), count, own, _cum in ec_rows:
        f_count, f_own = floor_own.get(func, (0, 0.0))
        print(f"  {count / n:8.1f} {own / n * 1e6:9.1f} {f_count / n:4.1f} {f_own / n * 1e6:9.1f}  {func}")
    print(f"  {'calls/hs':>8} {'own us/hs':>9} {'cum us/hs':>9} {'PSK own':>8}  top {top} other entries by own time")
    for key, count, own, cum in [r for r in rows if not _EC_ENTRY.search(r[0][2])][:top]:
        file, line, func = key
        where = func if file == "~" else f"{os.path.relpath(file)}:{line} {func}"
        psk = f"{psk_own[key] / n * 1e6:8.1f}" if key in psk_own else f"{'-':>8}"
        print(f"  {count / n:8.1f} {own / n * 1e6:9.1f} {cum / n * 1e6:9.1f} {psk}  {where}")


def main() -> dict[str, float]:
    """Measure both modes and the floor in this process, print a table and return the figures."""
    res = interleaved()
    print("ECDHE-ECDSA (P-256, raw public keys, AES-128-CCM-8) handshake, cookie exchange + EMS, client and "
          "server in one process (median per handshake; ratio and overhead: medians of per-block figures)")
    print(f"  {'':13} {'us/handshake':>13} {'handshakes/s':>13} {'floor us':>9} {'floor/s':>8} "
          f"{'hs / floor':>10} {'overhead us':>12}")
    for name, _ in MODES:
        r = res[name]
        print(f"  {name:13} {r['handshake_s'] * 1e6:13.1f} {1 / r['handshake_s']:13.0f} {r['floor_s'] * 1e6:9.1f} "
              f"{1 / r['floor_s']:8.0f} {r['ratio']:9.2f}x {r['overhead_s'] * 1e6:12.1f}")
    psk = res["psk"]["handshake_s"]
    print(f"  for reference, PSK handshake (cookie + EMS) in the same blocks: {psk * 1e6:.1f} us "
          f"({1 / psk:.0f}/s); overhead / PSK handshake: "
          + ", ".join(f"{name} {res[name]['overhead_s'] / psk:.2f}x" for name, _ in MODES))
    print("  setup (DTLSConnection + DTLSServer, untimed): "
          + ", ".join(f"{name} {res[name]['setup_s'] * 1e6:.1f} us" for name, _ in MODES))
    breakdown = floor_breakdown()
    print("  floor operations alone (median us per call; calls per handshake):")
    print(f"    {'us':>7} {'server-only':>11} {'mutual':>6}  operation")
    for op, secs, n1, n2 in breakdown:
        print(f"    {secs * 1e6:7.1f} {n1:11d} {n2:6d}  {op}")
    for i, (name, _) in enumerate(MODES):
        summed = sum(secs * (n1, n2)[i] for _, secs, n1, n2 in breakdown)
        print(f"    {summed * 1e6:7.1f}  sum of the operations alone, {name}")
    out: dict[str, float] = {"psk_handshake_s": psk}
    for name, _ in MODES:
        key = name.replace("-", "_")
        r = res[name]
        out |= {f"{key}_handshake_s": r["handshake_s"], f"{key}_handshakes_per_s": 1 / r["handshake_s"],
                f"{key}_floor_s": r["floor_s"], f"{key}_floor_per_s": 1 / r["floor_s"],
                f"{key}_ratio_vs_floor": r["ratio"], f"{key}_overhead_s": r["overhead_s"],
                f"{key}_setup_s": r["setup_s"]}
    out |= {f"floor op {op} s": secs for op, secs, _, _ in breakdown}
    return out


if __name__ == "__main__":
    if "--profile" in sys.argv[1:]:
        profile(mutual="--server-only" not in sys.argv[1:])
    else:
        main()
