"""Shared pytest configuration for iotdtls tests. Keep this file small; helpers live in modules.

Real-peer helpers (openssl, gnutls, tinydtls): ``tests/peers.py`` (``from peers import ...``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# --------------------------------------------------------------------------------------------------
# Import paths: the repo root (for `iotdtls` without an install) and tests/ (for `peers`).
# --------------------------------------------------------------------------------------------------

_TESTS_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _TESTS_DIR.parent
for _path in (_REPO_ROOT, _TESTS_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# --------------------------------------------------------------------------------------------------
# Fixtures (none yet)
# --------------------------------------------------------------------------------------------------
