"""The device registry: SQLite, embedded, 0600.

A device has an id, a state (enabled or revoked), free-form JSON metadata, a JSON config document (for downlink)
and credentials: PSK identities with their keys, or raw public key pins (SHA-256 of the SubjectPublicKeyInfo),
each with a validity window and a generation, so that a key can be rotated with no gap (old and new overlap).
Every change is recorded in an audit log (``history``), without secrets, in the same transaction.

The DTLS server never queries SQLite during a handshake: it reads a :class:`~.devices.Snapshot`, which the
service reloads when ``PRAGMA data_version`` says another connection (``iotdtls-provision``) changed the file.
Writers use ``BEGIN IMMEDIATE`` with a busy timeout, so the gateway and provisioning processes never corrupt or
deadlock each other.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotdtls.keys import KeyFileError, fingerprint, load_public_key, parse_fingerprint, spki_der

from .devices import (
    GENERATION_MARK,
    PSK_LENGTH,
    Credential,
    Device,
    DuplicateDevice,
    DuplicateIdentity,
    RegistryError,
    RegistryUnavailable,
    Snapshot,
    UnknownDevice,
    check_config,
    check_device_id,
    check_psk,
    check_psk_identity,
    config_etag,
)
from .files import DataDirError, create_private_file

__all__ = ["Credential", "Device", "DuplicateDevice", "DuplicateIdentity", "HistoryEntry", "NewDevice", "Registry",
           "RegistryError", "RegistryUnavailable", "Snapshot", "UnknownDevice", "check_device_id", "parse_pin"]

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('enabled', 'revoked')),
    metadata TEXT NOT NULL DEFAULT '{}',
    config TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS credentials (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('psk', 'rpk')),
    identity BLOB NOT NULL,
    secret BLOB,
    generation INTEGER NOT NULL DEFAULT 1,
    not_before REAL,
    not_after REAL,
    first_used_at REAL,
    retired_at REAL,
    created_at REAL NOT NULL,
    UNIQUE (kind, identity)
);
CREATE INDEX IF NOT EXISTS credentials_device ON credentials(device_id);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    device TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS history_device ON history(device, id);
"""


@dataclass(frozen=True)
class NewDevice:
    """One device to add: with a PSK (``psk_identity`` defaults to the id) or a raw public key pin (``pin``).
    ``state`` and ``generation`` (of its one credential) are for devices moved from another registry."""

    device_id: str
    psk_identity: str | None = None
    psk: bytes | None = None
    pin: bytes | None = None
    metadata: dict[str, Any] | None = None
    state: str = "enabled"
    generation: int = 1


@dataclass(frozen=True)
class HistoryEntry:
    at: float
    device: str
    action: str
    detail: dict[str, Any]


class Registry:
    """One registry file. Thread-safe: one connection, used under a lock."""

    def __init__(self, path: str | Path, *, create: bool = True, clock: Callable[[], float] = time.time,
                 random: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.path = Path(path)
        self._clock = clock
        self._random = random
        self._lock = threading.Lock()
        if not self.path.exists() and not create:
            raise RegistryUnavailable(f"no registry at {self.path}")
        try:
            create_private_file(self.path)
        except (DataDirError, OSError) as exc:
            raise RegistryUnavailable(str(exc)) from None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RegistryError(f"{self.path} was written by a newer iotdtls-gateway (schema {version})")
            if version == 0:
                with self._lock:
                    self._db.executescript(_SCHEMA)  # IF NOT EXISTS: two processes creating it race harmlessly
                    self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise RegistryUnavailable(f"{self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise RegistryUnavailable(f"{self.path}: {exc}") from None
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _log(self, db: sqlite3.Connection, now: float, device: str, action: str, **detail: Any) -> None:
        db.execute("INSERT INTO history (at, device, action, detail) VALUES (?, ?, ?, ?)",
                   (now, device, action, json.dumps(detail, sort_keys=True)))

    # -- reading -----------------------------------------------------------------------------------
    def data_version(self) -> int:
        """Changes whenever another connection commits to the file (the service polls it)."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def get(self, device_id: str) -> Device:
        devices = self._load(device_id)
        if not devices:
            raise UnknownDevice(f"no device {device_id!r}")
        return devices[0]

    def devices(self) -> list[Device]:
        return self._load(None)

    def revoked(self) -> set[str]:
        """The ids of the revoked devices (the spool's commit gate reads them when the file changed)."""
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT id FROM devices WHERE state = 'revoked'")}

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM devices").fetchone()[0])

    def snapshot(self) -> Snapshot:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
                devices = self._load_locked(None)
            finally:
                self._db.execute("COMMIT")
        return Snapshot(devices, version)

    def history(self, device_id: str) -> list[HistoryEntry]:
        with self._lock:
            rows = self._db.execute("SELECT at, device, action, detail FROM history WHERE device = ? ORDER BY id",
                                    (device_id,)).fetchall()
        if not rows:
            self.get(device_id)  # UnknownDevice for a device that never existed
        return [HistoryEntry(at, dev, action, json.loads(detail)) for at, dev, action, detail in rows]

    def _load(self, device_id: str | None) -> list[Device]:
        with self._lock:
            return self._load_locked(device_id)

    def _load_locked(self, device_id: str | None) -> list[Device]:
        where, args = ("WHERE id = ?", (device_id,)) if device_id is not None else ("", ())
        rows = self._db.execute(f"SELECT id, state, metadata, config, created_at FROM devices {where} ORDER BY id",
                                args).fetchall()
        creds: dict[str, list[Credential]] = {}
        cwhere = "WHERE device_id = ?" if device_id is not None else ""
        for dev, kind, ident, secret, gen, nb, na, used, retired in self._db.execute(
                "SELECT device_id, kind, identity, secret, generation, not_before, not_after, first_used_at, "
                f"retired_at FROM credentials {cwhere} ORDER BY id", args):
            creds.setdefault(dev, []).append(Credential(kind, bytes(ident), secret and bytes(secret), nb, na, gen,
                                                        used, retired))
        return [Device(i, s, json.loads(m), c, tuple(creds.get(i, ())), json.loads(cfg) if cfg else None)
                for i, s, m, cfg, c in rows]

    # -- adding ------------------------------------------------------------------------------------
    def add_device(self, device_id: str, *, psk_identity: str | None = None, psk: bytes | None = None,
                   key: str | bytes | None = None,
                   metadata: dict[str, Any] | None = None) -> tuple[Device, bytes | None]:
        """Add an enabled device with one credential: a raw public key (``key``: a fingerprint, hex or
        ``ni:///sha-256;...``, or DER/PEM of the key) or a PSK (``psk_identity`` defaults to the device id;
        ``psk`` to 16 random bytes). Returns the device and the PSK (None for a key)."""
        if key is not None and (psk_identity is not None or psk is not None):
            raise RegistryError("a device is added with a PSK or with a public key, not both")
        pin = parse_pin(key) if key is not None else None
        ((device, secret),) = self.add_devices([NewDevice(device_id, psk_identity, psk, pin, metadata)])
        return device, secret

    def add_devices(self, batch: Sequence[NewDevice], *, action: str = "added",
                    progress: Callable[[int], None] | None = None) -> list[tuple[Device, bytes | None]]:
        """Add every device of ``batch`` in one transaction: all or none. Checks names, keys and duplicates
        (within the batch and against the registry) first; the first problem raises RegistryError.
        ``progress(n)`` is called after the n-th device is written (before the commit)."""
        now = self._clock()
        prepared: list[tuple[NewDevice, Credential]] = []
        for item in batch:
            check_device_id(item.device_id)
            if item.state not in ("enabled", "revoked"):
                raise RegistryError(f"bad state {item.state!r}: enabled or revoked")
            if item.generation < 1:
                raise RegistryError(f"bad credential generation {item.generation}")
            if item.pin is not None:
                prepared.append((item, Credential("rpk", item.pin, generation=item.generation)))
                continue
            identity = item.psk_identity if item.psk_identity is not None else item.device_id
            check_psk_identity(identity)
            psk = item.psk if item.psk is not None else self._random(PSK_LENGTH)
            check_psk(psk)
            prepared.append((item, Credential("psk", identity.encode(), psk, generation=item.generation)))
        try:
            with self._write() as db:
                for n, (item, cred) in enumerate(prepared, 1):
                    db.execute("INSERT INTO devices (id, state, metadata, created_at, updated_at) VALUES "
                               "(?, ?, ?, ?, ?)", (item.device_id, item.state, json.dumps(item.metadata or {}), now,
                                                   now))
                    self._insert_credential(db, item.device_id, cred, now)
                    self._log(db, now, item.device_id, action, credential=cred.kind, identity=cred.label)
                    if item.state == "revoked":
                        self._log(db, now, item.device_id, "revoked")
                    if progress is not None:
                        progress(n)
        except sqlite3.IntegrityError as exc:
            raise _integrity(exc, prepared) from None
        out = {d.id: d for d in self._load(None)} if len(batch) > 50 else None
        return [((out[item.device_id] if out else self.get(item.device_id)), cred.secret) for item, cred in prepared]

    def _insert_credential(self, db: sqlite3.Connection, device_id: str, cred: Credential, now: float) -> None:
        db.execute("INSERT INTO credentials (device_id, kind, identity, secret, generation, not_before, not_after, "
                   "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (device_id, cred.kind, cred.identity, cred.secret, cred.generation, cred.not_before,
                    cred.not_after, now))

    # -- changing ----------------------------------------------------------------------------------
    def revoke(self, device_id: str) -> Device:
        """Revoke a device: its handshakes are refused and its live session ends (the gateway reloads within
        1 s), and nothing it sends from now on is stored."""
        return self._set_state(device_id, "revoked")

    def enable(self, device_id: str) -> Device:
        return self._set_state(device_id, "enabled")

    def _set_state(self, device_id: str, state: str) -> Device:
        now = self._clock()
        with self._write() as db:
            cur = db.execute("UPDATE devices SET state = ?, updated_at = ? WHERE id = ?", (state, now, device_id))
            if cur.rowcount == 0:
                raise UnknownDevice(f"no device {device_id!r}")
            self._log(db, now, device_id, "revoked" if state == "revoked" else "enabled")
        return self.get(device_id)

    def set_meta(self, device_id: str, key: str, value: Any) -> Device:
        """Set (``value`` not None) or remove (None) one metadata key."""
        now = self._clock()
        with self._write() as db:
            row = db.execute("SELECT metadata FROM devices WHERE id = ?", (device_id,)).fetchone()
            if row is None:
                raise UnknownDevice(f"no device {device_id!r}")
            meta = json.loads(row[0])
            if value is None:
                meta.pop(key, None)
            else:
                meta[key] = value
            db.execute("UPDATE devices SET metadata = ?, updated_at = ? WHERE id = ?",
                       (json.dumps(meta, sort_keys=True), now, device_id))
            self._log(db, now, device_id, "metadata", key=key, value=value)
        return self.get(device_id)

    def set_config(self, device_id: str, config: Any) -> Device:
        """Store the device's configuration document (a JSON object; None removes it). The running gateway
        notifies the device's observers of ``/config`` within a second, and hints the change on its next 2.04."""
        if config is not None:
            check_config(config)
        now = self._clock()
        text = None if config is None else json.dumps(config, sort_keys=True, separators=(",", ":"))
        with self._write() as db:
            cur = db.execute("UPDATE devices SET config = ?, updated_at = ? WHERE id = ?", (text, now, device_id))
            if cur.rowcount == 0:
                raise UnknownDevice(f"no device {device_id!r}")
            self._log(db, now, device_id, "config", etag=None if config is None else config_etag(config).hex(),
                      size=0 if text is None else len(text))
        return self.get(device_id)

    def rotate(self, device_id: str, *, grace: float, psk: bytes | None = None) -> tuple[Credential, bytes]:
        """A new PSK next to the device's current one: valid from now, under a new identity (``DEVICE#N`` for
        generation N). The current credentials stay valid for ``grace`` seconds more, or until the device
        authenticates with the new one (:meth:`mark_used`), whichever comes first."""
        now = self._clock()
        psk = psk if psk is not None else self._random(PSK_LENGTH)
        check_psk(psk)
        with self._write() as db:
            row = db.execute("SELECT state FROM devices WHERE id = ?", (device_id,)).fetchone()
            if row is None:
                raise UnknownDevice(f"no device {device_id!r}")
            if row[0] != "enabled":
                raise RegistryError(f"device {device_id!r} is revoked: enable it before rotating its key")
            current = db.execute("SELECT COALESCE(MAX(generation), 0), COUNT(*) FROM credentials WHERE "
                                 "device_id = ? AND kind = 'psk'", (device_id,)).fetchone()
            if current[1] == 0:
                raise RegistryError(f"device {device_id!r} has no PSK to rotate (raw public keys are the "
                                    "device's own)")
            generation = current[0] + 1
            cred = Credential("psk", f"{device_id}{GENERATION_MARK}{generation}".encode(), psk, now, None,
                              generation)
            until = now + grace
            db.execute("UPDATE credentials SET not_after = ? WHERE device_id = ? AND kind = 'psk' AND "
                       "retired_at IS NULL AND (not_after IS NULL OR not_after > ?)", (until, device_id, until))
            try:
                self._insert_credential(db, device_id, cred, now)
            except sqlite3.IntegrityError:
                raise DuplicateIdentity(f"PSK identity {cred.label!r} belongs to another device") from None
            self._log(db, now, device_id, "rotated", identity=cred.label, generation=generation,
                      grace_until=until)
        return cred, psk

    def mark_used(self, kind: str, identity: bytes) -> list[Credential]:
        """A device authenticated with this credential: record its first use and retire the device's older
        generations of the same kind (their sessions should end). Returns the credentials it retired."""
        now = self._clock()
        with self._write() as db:
            row = db.execute("SELECT device_id, generation, first_used_at FROM credentials WHERE kind = ? AND "
                             "identity = ?", (kind, identity)).fetchone()
            if row is None or row[2] is not None:
                return []
            device_id, generation, _ = row
            db.execute("UPDATE credentials SET first_used_at = ? WHERE kind = ? AND identity = ?",
                       (now, kind, identity))
            older = db.execute("SELECT identity FROM credentials WHERE device_id = ? AND kind = ? AND "
                               "generation < ? AND retired_at IS NULL", (device_id, kind, generation)).fetchall()
            db.execute("UPDATE credentials SET retired_at = ? WHERE device_id = ? AND kind = ? AND generation < ? "
                       "AND retired_at IS NULL", (now, device_id, kind, generation))
            label = Credential(kind, identity).label
            self._log(db, now, device_id, "credential_used", identity=label, generation=generation)
            for (old,) in older:
                self._log(db, now, device_id, "credential_retired", identity=Credential(kind, bytes(old)).label)
        return [Credential(kind, bytes(old), retired_at=now) for (old,) in older]


def parse_pin(key: str | bytes) -> bytes:
    """A raw public key pin: the SHA-256 fingerprint, from a fingerprint (hex or ``ni:``) or a key's PEM/DER."""
    try:
        if isinstance(key, str):
            return parse_fingerprint(key)
        return fingerprint(spki_der(load_public_key(key)))
    except KeyFileError as exc:
        raise RegistryError(f"bad public key: {exc}") from None


def _integrity(exc: sqlite3.IntegrityError, prepared: list[tuple[NewDevice, Credential]]) -> RegistryError:
    """The duplicate behind a failed insert, named: the first device or identity of the batch that exists."""
    text = str(exc)
    if "devices.id" in text:
        return DuplicateDevice("device exists already" if len(prepared) != 1 else
                               f"device {prepared[0][0].device_id!r} exists already")
    if len(prepared) == 1:
        cred = prepared[0][1]
        return DuplicateIdentity(f"{'PSK identity' if cred.kind == 'psk' else 'key'} {cred.label!r} belongs to "
                                 "another device")
    return DuplicateIdentity("an identity or key of the batch belongs to another device")
