"""Regression tests for the coverage-guided fuzz targets in fuzz/ (see docs/fuzzing.md).

* Every committed seed (fuzz/corpus/<target>/) and every input that once crashed a target
  (fuzz/crashes/<target>/) is replayed through the target's ``test_one_input``: no exception may escape and no
  connection may end with internal_error. A crash the fuzzer finds is committed to fuzz/crashes/ and gets a
  named test below.
* The seeds still reach deep: replayed against today's code they complete handshakes. When the handshake
  bytes change, regenerate them with ``python fuzz/seeds.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"
if str(FUZZ_DIR) not in sys.path:
    sys.path.insert(0, str(FUZZ_DIR))

import fuzz_client  # noqa: E402
import fuzz_handshake_messages  # noqa: E402
import fuzz_record  # noqa: E402
import fuzz_server  # noqa: E402
from _harness import frames  # noqa: E402
from endpoints import CLIENT_STATES, addr_of, client_pair, seal_for, server_pair  # noqa: E402
from helpers import CLIENT_ADDR, drain, drain_server  # noqa: E402

from iotdtls import HandshakeCompleted  # noqa: E402
from iotdtls.handshake import State  # noqa: E402

TARGETS: dict[str, ModuleType] = {m.__name__: m for m in (fuzz_record, fuzz_handshake_messages, fuzz_server,
                                                          fuzz_client)}


def _inputs(kind: str) -> list[object]:
    return [pytest.param(target, path, id=f"{target}/{path.name}")
            for target in TARGETS for path in sorted((FUZZ_DIR / kind / target).glob("*")) if path.is_file()]


@pytest.mark.parametrize(("target", "path"), _inputs("corpus"))
def test_seed_replays_cleanly(target: str, path: Path) -> None:
    TARGETS[target].test_one_input(path.read_bytes())


@pytest.mark.parametrize(("target", "path"), _inputs("crashes"))
def test_former_crash_replays_cleanly(target: str, path: Path) -> None:
    TARGETS[target].test_one_input(path.read_bytes())


def test_every_target_has_seeds() -> None:
    for target in TARGETS:
        assert len(list((FUZZ_DIR / "corpus" / target).glob("seed-*"))) >= 5, target


def test_server_seeds_still_complete_a_handshake_from_a_fresh_address() -> None:
    completed = 0
    for path in sorted((FUZZ_DIR / "corpus" / "fuzz_server").glob("seed-*")):
        data = path.read_bytes()
        pair = server_pair(data[0])
        for tag, datagram in frames(data[1:]):
            pair.server.receive_datagram(datagram, addr_of(tag), pair.now)
            pair.server.datagrams_to_send(pair.now)
            completed += sum(isinstance(e, HandshakeCompleted) and a != CLIENT_ADDR
                             for a, e in drain_server(pair.server))
    assert completed >= 3, "stale seeds: regenerate them with python fuzz/seeds.py"


def test_client_seeds_still_complete_the_handshake_from_every_state() -> None:
    completed: dict[int, bool] = {}
    for path in sorted((FUZZ_DIR / "corpus" / "fuzz_client").glob("seed-*")):
        data = path.read_bytes()
        pair = client_pair(data[0])
        state = data[0] % len(CLIENT_STATES)
        done = pair.client.is_established
        for tag, datagram in frames(data[1:]):
            if tag & 0x40 and pair.client.state is State.CLIENT_START:
                pair.client.connect(pair.now)
            pair.client.receive_datagram(seal_for(pair.client, datagram) if tag & 0x20 else datagram, pair.now)
            pair.client.datagrams_to_send(pair.now)
        done = done or any(isinstance(e, HandshakeCompleted) for e in drain(pair.client))
        completed[state] = completed.get(state, False) or done
    stale = [CLIENT_STATES[i][0] for i, ok in sorted(completed.items()) if not ok]
    assert len(completed) == len(CLIENT_STATES) and not stale, \
        f"stale seeds for {stale}: regenerate them with python fuzz/seeds.py"
