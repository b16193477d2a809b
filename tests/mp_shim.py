"""CPython stand-ins for MicroPython firmware modules, for testing the device code in micropython/."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MP_DIR = Path(__file__).resolve().parent.parent / "micropython"


class _Aes:
    """``cryptolib.aes(key, 1)``: ECB, encrypt only."""

    def __init__(self, key: bytes, mode: int) -> None:
        if mode != 1:
            raise ValueError("only ECB (mode 1) is shimmed")
        self._enc = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()

    def encrypt(self, block: bytes) -> bytes:
        if len(block) % 16:
            raise ValueError("blocksize")
        return self._enc.update(bytes(block))


def cryptolib_module() -> types.ModuleType:
    mod = types.ModuleType("cryptolib")
    mod.aes = _Aes
    return mod


def import_device(name: str, cryptolib: bool = True) -> types.ModuleType:
    """Import ``iotdtls_mp.<name>`` freshly, with or without the ``cryptolib`` shim."""
    if str(MP_DIR) not in sys.path:
        sys.path.insert(0, str(MP_DIR))
    full = "iotdtls_mp." + name
    saved = sys.modules.pop("cryptolib", None)
    sys.modules.pop(full, None)
    if cryptolib:
        sys.modules["cryptolib"] = cryptolib_module()
    else:
        sys.modules["cryptolib"] = None  # makes ``import cryptolib`` raise ImportError
    try:
        return importlib.import_module(full)
    finally:
        del sys.modules["cryptolib"]
        if saved is not None:
            sys.modules["cryptolib"] = saved
