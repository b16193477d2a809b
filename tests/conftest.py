"""Shared pytest configuration for iotdtls tests. Keep this file small; helpers live in modules.

Real-peer helpers (openssl, gnutls, tinydtls): ``tests/peers.py`` (``from peers import ...``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture(autouse=True)
def _logging_state() -> Iterator[None]:
    """A command-line tool's main() run in-process sets up logging for its process (levels of the iotdtls loggers,
    the root handlers: iotdtls.cli.runtime.setup_logging); put it back after each test, so that a later test's
    log capture sees what it expects."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("iotdtls", "iotdtls_gateway", "aiocoap", "mqtt")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)
