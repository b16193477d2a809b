"""The spool: a durable outbox in SQLite, bounded, ordered, with deduplication by idempotency key.

:class:`SpoolStore` is the file, used from one thread at a time and given the time by its caller: it appends
messages in one transaction, refuses them when the spool is full (in bytes or in the age of its oldest message),
recognises a resent message by its device and idempotency key within a window, reads messages in order, and
deletes them once delivered. ``spool.sqlite3`` is WAL with ``synchronous=FULL``: a committed message survives a
process crash and a power cut. The thread that commits and the event loop are joined in
:mod:`iotdtls_gateway.spool_writer`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .files import DataDirError, create_private_file

SCHEMA_VERSION = 2
#: What a message is, so the uplink picks its topic: a reading, or the result (or expiry) of a command.
KINDS = ("telemetry", "result")
BUSY_TIMEOUT_MS = 5000
#: Expired idempotency keys are removed at most this often (seconds).
KEY_SWEEP_INTERVAL = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    body BLOB NOT NULL,
    kind TEXT NOT NULL DEFAULT 'telemetry'
);
CREATE TABLE IF NOT EXISTS keys (
    device TEXT NOT NULL,
    key TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (device, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_seen ON keys(seen_at);
"""


class SpoolError(Exception):
    """The spool file cannot be used; one line."""


class SpoolFull(Exception):
    """The spool holds as much as it may: the message was not stored. Retry after ``retry_after`` seconds."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Refused(Exception):
    """The message was refused at its commit (its device was revoked meanwhile): not stored."""


@dataclass(frozen=True)
class SpoolLimits:
    max_bytes: int = 256 * 1024 * 1024
    max_age: float = 7 * 86400.0
    dedup_window: float = 86400.0
    dedup_max_keys: int = 1_000_000
    retry_after: int = 30


@dataclass(frozen=True)
class Message:
    """A message to store: ``key`` is the device's idempotency key (None: no deduplication across sessions)."""

    device: str
    msg_id: str
    key: str | None
    received_at: float
    body: bytes
    kind: str = "telemetry"
    #: Sent by the device (the commit gate refuses it once the device is revoked), or made by the gateway (a
    #: command's expiry, say: never refused). Not stored.
    from_device: bool = True


@dataclass(frozen=True)
class Stored:
    """What became of a message: stored under ``seq``, or a duplicate of one stored earlier (``seq`` None)."""

    msg_id: str
    duplicate: bool
    seq: int | None = None


@dataclass(frozen=True)
class Row:
    seq: int
    device: str
    msg_id: str
    received_at: float
    body: bytes
    kind: str = "telemetry"


@dataclass(frozen=True)
class Totals:
    messages: int
    bytes: int
    oldest_at: float | None
    keys: int


class SpoolStore:
    """One connection to ``spool.sqlite3``. Not thread-safe: one thread uses one store (several stores, in
    several threads or processes, may share the file: SQLite serialises the writers)."""

    def __init__(self, path: str | Path, limits: SpoolLimits = SpoolLimits(), *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.limits = limits
        try:
            if readonly:
                if not self.path.exists():
                    raise SpoolError(f"no spool at {self.path}")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                           check_same_thread=False)
            else:
                create_private_file(self.path)
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not readonly:
                mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise SpoolError(f"{self.path}: cannot use write-ahead logging (journal mode {mode})")
                self._db.execute("PRAGMA synchronous = FULL")
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise SpoolError(f"{self.path} was written by a newer iotdtls-gateway (schema {version})")
                if version == 0:
                    self._db.executescript(_SCHEMA)
                    self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version == 1:  # a spool of 0.x: its messages are readings
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.execute("ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'telemetry'")
                    self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    self._db.execute("COMMIT")
            self.totals = self._count()
        except (sqlite3.DatabaseError, DataDirError, OSError) as exc:
            raise SpoolError(f"{self.path}: {exc}") from None
        self._last_sweep = float("-inf")

    def close(self) -> None:
        self._db.close()

    # -- writing: one transaction per call -----------------------------------------------------------
    def append(self, messages: Iterable[Message], now: float) -> list[Stored | SpoolFull]:
        """Store ``messages`` in one transaction (one fsync at its commit); returns, per message, what became
        of it. A message whose key was seen from its device within the dedup window is not stored again."""
        out: list[Stored | SpoolFull] = []
        db = self._db
        count, size, oldest = self.totals.messages, self.totals.bytes, self.totals.oldest_at
        keys = self.totals.keys
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._sweep_keys(now):
                keys = self._count_keys()
            for m in messages:
                if m.key is not None:
                    seen = db.execute("SELECT msg_id, seen_at FROM keys WHERE device = ? AND key = ?",
                                      (m.device, m.key)).fetchone()
                    if seen is not None and seen[1] >= now - self.limits.dedup_window:
                        out.append(Stored(seen[0], duplicate=True))
                        continue
                full = self._full(count, size, oldest, len(m.body), now)
                if full is not None:
                    out.append(full)
                    continue
                cur = db.execute("INSERT INTO messages (device, msg_id, received_at, body, kind) VALUES "
                                 "(?, ?, ?, ?, ?)", (m.device, m.msg_id, m.received_at, m.body, m.kind))
                if m.key is not None:
                    db.execute("INSERT OR REPLACE INTO keys (device, key, msg_id, seen_at) VALUES (?, ?, ?, ?)",
                               (m.device, m.key, m.msg_id, now))
                    keys += 1
                count, size = count + 1, size + len(m.body)
                oldest = m.received_at if oldest is None else min(oldest, m.received_at)
                out.append(Stored(m.msg_id, duplicate=False, seq=cur.lastrowid))
            if keys > self.limits.dedup_max_keys:  # the oldest keys go first
                db.execute("DELETE FROM keys WHERE (device, key) IN "
                           "(SELECT device, key FROM keys ORDER BY seen_at LIMIT ?)",
                           (keys - self.limits.dedup_max_keys,))
                keys = self.limits.dedup_max_keys
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.totals = Totals(count, size, oldest, keys)
        return out

    def _full(self, count: int, size: int, oldest: float | None, extra: int, now: float) -> SpoolFull | None:
        limits = self.limits
        if size + extra > limits.max_bytes:
            return SpoolFull(f"spool full: {size} of {limits.max_bytes} bytes", limits.retry_after)
        if oldest is not None and now - oldest > limits.max_age:
            return SpoolFull(f"spool full: its oldest message is {now - oldest:.0f} s old (max_age "
                             f"{limits.max_age:g} s)", limits.retry_after)
        return None

    def delete(self, seqs: Iterable[int]) -> int:
        """Delete delivered messages; returns how many there were."""
        ids = list(seqs)
        if not ids:
            return 0
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            removed = 0
            freed = 0
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                freed += db.execute(f"SELECT COALESCE(SUM(LENGTH(body)), 0) FROM messages WHERE seq IN ({marks})",
                                    chunk).fetchone()[0]
                removed += db.execute(f"DELETE FROM messages WHERE seq IN ({marks})", chunk).rowcount
            oldest = db.execute("SELECT received_at FROM messages ORDER BY seq LIMIT 1").fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        t = self.totals
        self.totals = Totals(t.messages - removed, t.bytes - freed, oldest[0] if oldest else None, t.keys)
        return removed

    def _sweep_keys(self, now: float) -> bool:
        """Forget the keys older than the dedup window, at most every KEY_SWEEP_INTERVAL; True if it did."""
        if now - self._last_sweep < KEY_SWEEP_INTERVAL:
            return False
        self._db.execute("DELETE FROM keys WHERE seen_at < ?", (now - self.limits.dedup_window,))
        self._last_sweep = now
        return True

    # -- reading ------------------------------------------------------------------------------------
    def read(self, after: int = 0, limit: int = 100) -> list[Row]:
        """Messages with ``seq`` above ``after``, oldest first (in order per device, and overall)."""
        return [Row(*r) for r in self._db.execute(
            "SELECT seq, device, msg_id, received_at, body, kind FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit))]

    def _count(self) -> Totals:
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM messages").fetchone()
        oldest = self._db.execute("SELECT received_at FROM messages ORDER BY seq LIMIT 1").fetchone()
        return Totals(count, size, oldest[0] if oldest else None, self._count_keys())

    def _count_keys(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM keys").fetchone()[0])

    def totals_now(self) -> Totals:
        """Counted again from the file (another process may have changed it)."""
        return self._count()

