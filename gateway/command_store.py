"""The durable downlink state in ``downlink.sqlite3``: each device's queue of commands, and the ETag of the
configuration each device was last served.

:class:`CommandStore` is one connection, used from one thread at a time (the downlink runs it in a worker thread,
never on the event loop), and given the time by its caller. WAL with ``synchronous=FULL``: a command is
acknowledged to the broker only once :meth:`CommandStore.add` returned, and survives a crash from then on.
A finished command (a result came, or it expired) is kept as ``done`` for a day, so that a command the broker
delivers again (QoS 1 allows it) is recognised and not run twice.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .commands import Command
from .files import DataDirError, create_private_file

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
#: How long a finished command's id is remembered (seconds).
DONE_KEPT = 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    args TEXT NOT NULL,
    received_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    delivered_at REAL,
    done_at REAL,
    UNIQUE (device, id)
);
CREATE INDEX IF NOT EXISTS commands_pending ON commands(device, done_at, seq);
CREATE INDEX IF NOT EXISTS commands_expiry ON commands(done_at, expires_at);
CREATE TABLE IF NOT EXISTS config_served (
    device TEXT PRIMARY KEY,
    etag BLOB NOT NULL,
    at REAL NOT NULL
) WITHOUT ROWID;
"""

Added = Literal["queued", "duplicate", "full"]


class CommandStoreError(Exception):
    """The downlink file cannot be used; one line."""


@dataclass(frozen=True)
class Pending:
    """The commands waiting, per device (the hint on a 2.04 says how many)."""

    counts: dict[str, int]


class CommandStore:
    def __init__(self, path: str | Path, *, max_per_device: int = 16) -> None:
        self.path = Path(path)
        self.max_per_device = max_per_device
        try:
            create_private_file(self.path)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise CommandStoreError(f"{self.path}: cannot use write-ahead logging (journal mode {mode})")
            self._db.execute("PRAGMA synchronous = FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CommandStoreError(f"{self.path} was written by a newer iotdtls-gateway (schema {version})")
            if version == 0:
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (sqlite3.DatabaseError, DataDirError, OSError) as exc:
            raise CommandStoreError(f"{self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    # -- commands ------------------------------------------------------------------------------------
    def add(self, command: Command) -> Added:
        """Queue a command: "queued", "duplicate" (its id was seen from this device: not queued again), or "full"
        (the device has ``max_per_device`` waiting)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM commands WHERE device = ? AND id = ?",
                          (command.device, command.id)).fetchone() is not None:
                outcome: Added = "duplicate"
            elif db.execute("SELECT COUNT(*) FROM commands WHERE device = ? AND done_at IS NULL",
                            (command.device,)).fetchone()[0] >= self.max_per_device:
                outcome = "full"
            else:
                db.execute("INSERT INTO commands (device, id, name, args, received_at, expires_at) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           (command.device, command.id, command.name, json.dumps(command.args),
                            command.received_at, command.expires_at))
                outcome = "queued"
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return outcome

    def pending(self, device: str, now: float, limit: int = 16) -> list[Command]:
        """The device's commands waiting and not expired, oldest first."""
        return [_command(r) for r in self._db.execute(
            "SELECT device, id, name, args, received_at, expires_at, delivered_at FROM commands "
            "WHERE device = ? AND done_at IS NULL AND expires_at > ? ORDER BY seq LIMIT ?", (device, now, limit))]

    def mark_delivered(self, device: str, ids: list[str], now: float) -> None:
        if ids:
            self._db.executemany("UPDATE commands SET delivered_at = COALESCE(delivered_at, ?) "
                                 "WHERE device = ? AND id = ?", [(now, device, i) for i in ids])

    def get(self, device: str, command_id: str) -> tuple[Command, bool] | None:
        """A command (waiting or finished) and whether it is finished."""
        row = self._db.execute("SELECT device, id, name, args, received_at, expires_at, delivered_at, done_at "
                               "FROM commands WHERE device = ? AND id = ?", (device, command_id)).fetchone()
        return None if row is None else (_command(row[:7]), row[7] is not None)

    def finish(self, device: str, command_id: str, now: float) -> None:
        self._db.execute("UPDATE commands SET done_at = ? WHERE device = ? AND id = ? AND done_at IS NULL",
                         (now, device, command_id))

    def due(self, now: float, limit: int = 500) -> list[Command]:
        """Waiting commands whose TTL is over."""
        return [_command(r) for r in self._db.execute(
            "SELECT device, id, name, args, received_at, expires_at, delivered_at FROM commands "
            "WHERE done_at IS NULL AND expires_at <= ? ORDER BY seq LIMIT ?", (now, limit))]

    def waiting_for(self, devices: set[str] | None = None) -> list[Command]:
        """Every waiting command (of ``devices``, if given)."""
        rows = self._db.execute("SELECT device, id, name, args, received_at, expires_at, delivered_at "
                                "FROM commands WHERE done_at IS NULL ORDER BY seq").fetchall()
        return [_command(r) for r in rows if devices is None or r[0] in devices]

    def counts(self) -> Pending:
        return Pending({d: n for d, n in self._db.execute(
            "SELECT device, COUNT(*) FROM commands WHERE done_at IS NULL GROUP BY device")})

    def purge(self, now: float) -> int:
        """Forget finished commands older than DONE_KEPT."""
        return self._db.execute("DELETE FROM commands WHERE done_at IS NOT NULL AND done_at < ?",
                                (now - DONE_KEPT,)).rowcount

    # -- configuration served ------------------------------------------------------------------------
    def served(self) -> dict[str, bytes]:
        return {d: bytes(e) for d, e in self._db.execute("SELECT device, etag FROM config_served")}

    def set_served(self, device: str, etag: bytes, now: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO config_served (device, etag, at) VALUES (?, ?, ?)",
                         (device, etag, now))


def _command(row: tuple[object, ...]) -> Command:
    device, cid, name, args, received, expires, delivered = row
    return Command(str(device), str(cid), str(name), json.loads(str(args)), float(received),  # type: ignore[arg-type]
                   float(expires), None if delivered is None else float(delivered))  # type: ignore[arg-type]
