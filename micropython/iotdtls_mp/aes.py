"""Single-block AES encryption for CCM: firmware cryptolib (ECB) or the pure-Python AES-128 of softaes.py.

``ops`` counts block encryptions, for footprint reports.
"""

try:
    import cryptolib
except ImportError:
    cryptolib = None

ops = 0


def new_ecb(key, soft=False):
    """Return a function encrypting one 16-byte block under ``key``."""
    if cryptolib is None or soft:
        from .softaes import Soft

        e = Soft(key).encrypt
    else:
        e = cryptolib.aes(bytes(key), 1).encrypt

    def enc(block):
        global ops
        ops += 1
        return e(block)

    return enc
