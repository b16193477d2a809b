"""The garbage collector's thresholds that ``iotdtls-gateway run`` sets (gateway/gc_tuning.py)."""

from __future__ import annotations

import gc

from iotdtls_gateway.gc_tuning import THRESHOLDS, tune_collector


def test_tune_collector_sets_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_threshold() == THRESHOLDS
        assert THRESHOLDS[0] >= 10_000  # young collections rare enough that a request's objects die before one
    finally:
        gc.set_threshold(*before)
