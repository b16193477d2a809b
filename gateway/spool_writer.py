"""Group commit: the spool's one writer thread, and the event loop's view of it.

The event loop never touches the disk. :meth:`SpoolWriter.append` and :meth:`SpoolWriter.delete` queue an
operation and return a future. The writer thread takes everything queued, waiting up to ``commit_window`` after
the first operation for more, stores it in one transaction (one fsync for all of them, which an SD card takes
2-50 ms for), and then resolves every future on the loop. So a POST is acknowledged only once its message is on
disk, and the fsync latency does not cap throughput: whatever arrives during one commit goes into the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spool import Message, Refused, SpoolError, SpoolFull, SpoolLimits, SpoolStore, Stored, Totals

MAX_BATCH = 1024


@dataclass
class _Op:
    kind: str  # "append" or "delete"
    payload: Any
    future: asyncio.Future[Any]


@dataclass
class CommitStats:
    commits: int = 0
    appended: int = 0
    duplicates: int = 0
    refused_full: int = 0
    deleted: int = 0
    largest_batch: int = 0
    last_commit_seconds: float = 0.0
    max_commit_seconds: float = 0.0
    failures: int = 0
    #: seconds per commit, the last 256 (for percentiles in metrics and benchmarks)
    recent: list[float] = field(default_factory=list)


class SpoolWriter:
    """The writer thread of one spool file. ``start()`` opens the file (raising SpoolError if it cannot),
    ``close()`` commits what is queued and stops."""

    def __init__(self, path: str | Path, limits: SpoolLimits, *, commit_window: float = 0.005,
                 clock: Callable[[], float] = time.time,
                 gate: Callable[[list[Message]], list[str | None]] | None = None) -> None:
        self.path = Path(path)
        self.limits = limits
        self.commit_window = commit_window
        #: Asked in the writer thread, right before each commit: a refusal reason per message (None: store it).
        #: The service refuses messages of devices revoked by then, so that nothing a device sends after its
        #: revocation was committed is stored.
        self.gate = gate
        self._clock = clock
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._store: SpoolStore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = CommitStats()
        #: Set (on the loop) after every commit that stored a new message: the uplink waits on it.
        self.new_messages = asyncio.Event()

    @property
    def alive(self) -> bool:
        """The writer thread runs (``/healthz`` reports it)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def totals(self) -> Totals:
        assert self._store is not None
        return self._store.totals

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._store = await asyncio.to_thread(SpoolStore, self.path, self.limits)
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._thread.start()

    async def append(self, message: Message) -> Stored:
        """Resolves once ``message`` is committed (or recognised as a duplicate); raises SpoolFull or
        SpoolError."""
        result: Stored = await self._submit("append", message)
        return result

    async def delete(self, seqs: list[int]) -> int:
        removed: int = await self._submit("delete", seqs)
        return removed

    def _submit(self, kind: str, payload: Any) -> asyncio.Future[Any]:
        if self._thread is None or self._loop is None:
            raise SpoolError("the spool is not open")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(_Op(kind, payload, future))
        return future

    def set_limits(self, limits: SpoolLimits, commit_window: float) -> None:
        """New bounds and commit window (a configuration reload), used from the next commit: the writer thread
        reads each of them once per use, and swapping a reference is atomic."""
        self.limits = limits
        self.commit_window = commit_window
        if self._store is not None:
            self._store.limits = limits

    async def close(self) -> None:
        """Commit everything queued, then stop the thread and close the file."""
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- the thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch, stop = self._take()
            if batch:
                self._commit(batch)
            if stop:
                return

    def _take(self) -> tuple[list[_Op], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.commit_window
        while len(batch) < MAX_BATCH:
            remaining = deadline - time.monotonic()
            try:
                op = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if op is None:
                return batch, True
            batch.append(op)
        return batch, False

    def _commit(self, batch: list[_Op]) -> None:
        store = self._store
        assert store is not None
        appends = [op for op in batch if op.kind == "append"]
        deletes = [op for op in batch if op.kind == "delete"]
        started = time.monotonic()
        results: list[tuple[_Op, Any]] = []
        try:
            if appends and self.gate is not None:
                verdicts = self.gate([op.payload for op in appends])
                results += [(op, Refused(reason)) for op, reason in zip(appends, verdicts, strict=True)
                            if reason is not None]
                appends = [op for op, reason in zip(appends, verdicts, strict=True) if reason is None]
            if appends:
                outcomes = store.append([op.payload for op in appends], self._clock())
                results += zip(appends, outcomes, strict=True)
            if deletes:
                removed = store.delete([seq for op in deletes for seq in op.payload])
                self.stats.deleted += removed
                results += [(op, removed) for op in deletes]
        except Exception as exc:  # disk full, I/O error: every caller of this batch hears of it
            self.stats.failures += 1
            error = SpoolError(f"spool write failed: {exc}")
            results = [(op, error) for op in batch]
        elapsed = time.monotonic() - started
        s = self.stats
        s.commits += 1
        s.largest_batch = max(s.largest_batch, len(batch))
        s.last_commit_seconds = elapsed
        s.max_commit_seconds = max(s.max_commit_seconds, elapsed)
        s.recent = [*s.recent[-255:], elapsed]
        for _, outcome in results:
            if isinstance(outcome, Stored):
                if outcome.duplicate:
                    s.duplicates += 1
                else:
                    s.appended += 1
            elif isinstance(outcome, SpoolFull):
                s.refused_full += 1
        loop = self._loop
        assert loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed under us (shutdown)
            loop.call_soon_threadsafe(_settle_all, results, self.new_messages)


def _settle_all(results: list[tuple[_Op, Any]], new_messages: asyncio.Event) -> None:
    if any(isinstance(outcome, Stored) and not outcome.duplicate for _, outcome in results):
        new_messages.set()
    for op, outcome in results:
        if op.future.done():
            continue  # the caller gave up (its request was cancelled); what is committed stays committed
        if isinstance(outcome, BaseException):
            op.future.set_exception(outcome)
        else:
            op.future.set_result(outcome)
