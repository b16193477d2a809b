"""The gateway's registry and spool, without a network and with a fake clock: durability settings, bounds,
deduplication, order, permissions, two processes on one file, and the group-commit writer."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from iotdtls_gateway.registry import DuplicateDevice, DuplicateIdentity, Registry, RegistryError, UnknownDevice
from iotdtls_gateway.spool import Message, SpoolError, SpoolFull, SpoolLimits, SpoolStore, Stored
from iotdtls_gateway.spool_writer import SpoolWriter

from iotdtls.keys import fingerprint, generate_private_key, ni_uri, public_key_pem, spki_der


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- registry ----------------------------------------------------------------------------------------------


def seeded_random(n: int) -> bytes:
    return bytes(range(n))


def test_registry_adds_psk_devices_and_serves_them_from_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    with Registry(path, clock=lambda: 1000.0, random=seeded_random) as reg:
        device, psk = reg.add_device("sensor-1")
        assert psk == bytes(range(16)) and device.enabled and device.credentials[0].identity == b"sensor-1"
        reg.add_device("sensor-2", psk_identity="s2", psk=b"\x01" * 16, metadata={"room": "lab"})
        snap = reg.snapshot()
    assert snap.psk(b"sensor-1", 1000.0) == bytes(range(16)) and snap.psk(b"s2", 1000.0) == b"\x01" * 16
    assert snap.device_for_psk(b"s2", 1000.0) == "sensor-2" and snap.psk(b"nobody", 1000.0) is None
    assert snap.devices["sensor-2"].metadata == {"room": "lab"}
    assert mode(path) == 0o600
    assert all(mode(p) == 0o600 for p in tmp_path.iterdir() if p.name.startswith("registry"))


def test_registry_refuses_duplicates_and_bad_names_with_one_line(tmp_path: Path) -> None:
    with Registry(tmp_path / "r.sqlite3") as reg:
        reg.add_device("a")
        with pytest.raises(DuplicateDevice, match="exists already"):
            reg.add_device("a")
        with pytest.raises(DuplicateIdentity, match="belongs to another device"):
            reg.add_device("b", psk_identity="a")
        for bad in ("", "-x", "a b", "x" * 65, "ü"):
            with pytest.raises(RegistryError, match="bad device id"):
                reg.add_device(bad)
        with pytest.raises(RegistryError, match="bad PSK identity"):
            reg.add_device("c", psk_identity="has:colon")
        with pytest.raises(UnknownDevice):
            reg.revoke("nobody")
        assert [d.id for d in reg.devices()] == ["a"]


def test_revoked_device_is_gone_from_the_next_snapshot(tmp_path: Path) -> None:
    with Registry(tmp_path / "r.sqlite3") as reg:
        _, psk = reg.add_device("a")
        before = reg.snapshot()
        reg.revoke("a")
        after = reg.snapshot()
    assert before.psk(b"a", 0.0) == psk and after.psk(b"a", 0.0) is None
    assert after.device_for_psk(b"a", 0.0) is None and after.devices["a"].state == "revoked"


def test_raw_public_key_devices_by_pin_and_by_key_file(tmp_path: Path) -> None:
    k1, k2 = generate_private_key(b"\x01" * 48), generate_private_key(b"\x02" * 48)
    with Registry(tmp_path / "r.sqlite3") as reg:
        reg.add_device("rpk-1", key=ni_uri(fingerprint(spki_der(k1))))
        reg.add_device("rpk-2", key=public_key_pem(k2))
        with pytest.raises(DuplicateIdentity):
            reg.add_device("rpk-3", key=public_key_pem(k1))
        with pytest.raises(RegistryError, match="bad public key"):
            reg.add_device("rpk-4", key="ni:///sha-256;nonsense")
        snap = reg.snapshot()
    assert snap.device_for_key(fingerprint(spki_der(k1)), 0.0) == "rpk-1"
    assert snap.device_for_key(fingerprint(spki_der(k2)), 0.0) == "rpk-2"


def test_data_version_tells_the_service_another_process_changed_the_registry(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    with Registry(path) as service:
        v0 = service.data_version()
        assert service.data_version() == v0
        script = ("import sys; from iotdtls_gateway.registry import Registry; "
                  "Registry(sys.argv[1]).add_device('from-elsewhere')")
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
        assert service.data_version() != v0
        assert "from-elsewhere" in service.snapshot().devices


def test_registry_secrets_never_in_repr(tmp_path: Path) -> None:
    with Registry(tmp_path / "r.sqlite3") as reg:
        device, psk = reg.add_device("a")
    assert psk is not None and psk.hex() not in repr(device) and repr(psk) not in repr(device)


def test_corrupt_registry_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RegistryError, match=r"r\.sqlite3"):
        Registry(path)


# -- spool ---------------------------------------------------------------------------------------------------


def msg(device: str, n: int, key: str | None = None, at: float = 0.0, size: int = 10) -> Message:
    return Message(device, f"id-{device}-{n}", key, at, b"x" * size)


def test_spool_is_wal_with_synchronous_full_and_private(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    store = SpoolStore(path)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.append([msg("a", 1)], now=0.0)
    store.close()
    assert all(mode(p) == 0o600 for p in tmp_path.iterdir())


def test_spool_keeps_order_and_deletes_what_was_delivered(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path / "s.sqlite3")
    out = store.append([msg("a", 1), msg("b", 1), msg("a", 2)], now=5.0)
    assert [o.seq for o in out if isinstance(o, Stored)] == [1, 2, 3]
    rows = store.read()
    assert [(r.device, r.msg_id) for r in rows] == [("a", "id-a-1"), ("b", "id-b-1"), ("a", "id-a-2")]
    assert store.delete([1, 3]) == 2 and [r.seq for r in store.read()] == [2]
    assert store.totals.messages == 1 and store.totals.bytes == 10
    store.append([msg("a", 3)], now=6.0)
    assert [r.seq for r in store.read(after=2)] == [4]  # AUTOINCREMENT: a seq is never reused


def test_spool_dedups_by_device_and_key_within_the_window(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path / "s.sqlite3", SpoolLimits(dedup_window=100.0))
    first = store.append([msg("a", 1, key="b1.7")], now=0.0)[0]
    again = store.append([msg("a", 99, key="b1.7"), msg("b", 1, key="b1.7")], now=50.0)
    assert isinstance(first, Stored) and not first.duplicate
    assert again[0] == Stored("id-a-1", duplicate=True)  # the same reading: the first message's id
    assert isinstance(again[1], Stored) and not again[1].duplicate  # another device's key space
    assert store.totals.messages == 2
    in_one_batch = store.append([msg("c", 1, key="k"), msg("c", 2, key="k")], now=60.0)
    assert [getattr(o, "duplicate", None) for o in in_one_batch] == [False, True]
    late = store.append([msg("a", 5, key="b1.7")], now=200.0)[0]  # outside the window: new
    assert isinstance(late, Stored) and not late.duplicate


def test_spool_dedup_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    SpoolStore(path).append([msg("a", 1, key="k1")], now=0.0)
    again = SpoolStore(path).append([msg("a", 2, key="k1")], now=1.0)[0]
    assert again == Stored("id-a-1", duplicate=True)


def test_spool_refuses_when_full_in_bytes_and_in_age(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path / "s.sqlite3", SpoolLimits(max_bytes=100, max_age=60.0, retry_after=7))
    out = store.append([msg("a", i, size=30) for i in range(4)], now=0.0)
    assert [type(o).__name__ for o in out] == ["Stored", "Stored", "Stored", "SpoolFull"]
    full = out[3]
    assert isinstance(full, SpoolFull) and full.retry_after == 7 and "bytes" in full.reason
    store.delete([1])
    assert isinstance(store.append([msg("a", 9, size=30)], now=1.0)[0], Stored)
    aged = store.append([msg("a", 10, size=1)], now=61.0)[0]
    assert isinstance(aged, SpoolFull) and "old" in aged.reason  # the oldest waits 61 s: nothing new
    store.delete([r.seq for r in store.read()])
    assert isinstance(store.append([msg("a", 11)], now=62.0)[0], Stored)


def test_spool_key_table_is_bounded(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path / "s.sqlite3", SpoolLimits(dedup_max_keys=5))
    for i in range(20):
        store.append([msg("a", i, key=f"k{i}")], now=float(i))
    assert store.totals.keys == 5 and store._count_keys() == 5
    assert store.append([msg("a", 50, key="k19")], now=30.0)[0] == Stored("id-a-19", duplicate=True)


def test_unusable_spool_files_are_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"garbage" * 1000)
    with pytest.raises(SpoolError, match=r"bad\.sqlite3"):
        SpoolStore(bad)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(SpoolError):
            SpoolStore(ro / "spool.sqlite3")


def test_two_writers_on_one_spool_do_not_corrupt_it(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    SpoolStore(path).close()
    script = ("import sys; from iotdtls_gateway.spool import SpoolStore, Message\n"
              "s = SpoolStore(sys.argv[1])\n"
              "for i in range(200): s.append([Message(sys.argv[2], str(i), None, 0.0, b'x')], 0.0)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), d]) for d in ("p", "q")]
    assert [p.wait(60) for p in procs] == [0, 0]
    rows = SpoolStore(path).read(limit=1000)
    assert len(rows) == 400
    for d in ("p", "q"):
        assert [r.msg_id for r in rows if r.device == d] == [str(i) for i in range(200)]
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- the group-commit writer ------------------------------------------------------------------------------------


def test_writer_groups_concurrent_appends_into_few_commits(tmp_path: Path) -> None:
    async def main() -> None:
        writer = SpoolWriter(tmp_path / "s.sqlite3", SpoolLimits(), commit_window=0.02, clock=lambda: 0.0)
        await writer.start()
        results = await asyncio.gather(*(writer.append(msg(f"d{i % 7}", i)) for i in range(500)))
        assert all(isinstance(r, Stored) and not r.duplicate for r in results)
        assert writer.stats.commits < 50 and writer.stats.largest_batch > 10
        assert await writer.delete([r.seq for r in results[:100] if r.seq is not None]) == 100
        await writer.close()
        store = SpoolStore(tmp_path / "s.sqlite3")
        assert store.totals.messages == 400

    asyncio.run(main())


def test_writer_reports_full_and_errors_to_each_caller(tmp_path: Path) -> None:
    async def main() -> None:
        writer = SpoolWriter(tmp_path / "s.sqlite3", SpoolLimits(max_bytes=25), commit_window=0.0, clock=lambda: 0.0)
        await writer.start()
        ok = await writer.append(msg("a", 1))
        assert isinstance(ok, Stored)
        await writer.append(msg("a", 2))
        with pytest.raises(SpoolFull):
            await writer.append(msg("a", 3))
        await writer.close()
        with pytest.raises(SpoolError):
            await writer.append(msg("a", 4))

    asyncio.run(main())


def test_the_event_loop_never_waits_for_the_disk(tmp_path: Path) -> None:
    """A commit that takes 200 ms (a slow SD card) does not stop the loop: a 10 ms ticker keeps ticking."""
    async def main() -> None:
        writer = SpoolWriter(tmp_path / "s.sqlite3", SpoolLimits(), commit_window=0.0, clock=lambda: 0.0)
        await writer.start()
        store = writer._store
        assert store is not None
        slow_append = store.append

        def slow(messages: list[Message], now: float) -> list[Stored | SpoolFull]:
            import time

            time.sleep(0.2)
            return slow_append(messages, now)

        store.append = slow  # type: ignore[method-assign]
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.ensure_future(ticker())
        await writer.append(msg("a", 1))
        task.cancel()
        assert ticks >= 10
        await writer.close()

    asyncio.run(main())
