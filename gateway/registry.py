"""The device registry: SQLite, embedded, 0600.

A device has an id, a state (enabled or revoked), free-form JSON metadata, a JSON config document (for downlink,
later) and credentials: PSK identities with their keys, or raw public key pins (SHA-256 of the SubjectPublicKeyInfo),
each with an optional validity window, so that a key can be rotated with no gap (two credentials overlap).

The DTLS server never queries SQLite during a handshake: it reads a :class:`Snapshot`, an immutable in-memory
copy that the service reloads when ``PRAGMA data_version`` says another connection (``iotdtls-provision``)
changed the file. Writers use ``BEGIN IMMEDIATE`` with a busy timeout, so the gateway and the provisioning tool
never corrupt or deadlock each other.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotdtls.keys import KeyFileError, fingerprint, load_public_key, ni_uri, parse_fingerprint, spki_der

from .files import DataDirError, create_private_file

SCHEMA_VERSION = 1
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: PSK identities: printable ASCII without spaces or ':' (the psktool file format splits on the last ':').
PSK_IDENTITY = re.compile(r"[!-9;-~]{1,128}")
PSK_LENGTH = 16
BUSY_TIMEOUT_MS = 5000

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
    not_before REAL,
    not_after REAL,
    created_at REAL NOT NULL,
    UNIQUE (kind, identity)
);
CREATE INDEX IF NOT EXISTS credentials_device ON credentials(device_id);
"""


class RegistryError(Exception):
    """A registry operation that cannot be done; the message is one line, safe to print (no secret)."""


class UnknownDevice(RegistryError):
    pass


class DuplicateDevice(RegistryError):
    pass


class DuplicateIdentity(RegistryError):
    pass


@dataclass(frozen=True)
class Credential:
    kind: str  # "psk" or "rpk"
    #: PSK: the identity; RPK: the SHA-256 fingerprint of the key's SubjectPublicKeyInfo.
    identity: bytes
    secret: bytes | None = field(default=None, repr=False)
    not_before: float | None = None
    not_after: float | None = None

    def valid_at(self, now: float) -> bool:
        return (self.not_before is None or self.not_before <= now) and (self.not_after is None or now < self.not_after)

    @property
    def label(self) -> str:
        """How the credential is shown: the PSK identity, or the key as ``ni:///sha-256;...``."""
        if self.kind == "psk":
            return self.identity.decode("utf-8", "replace")
        return ni_uri(self.identity)


@dataclass(frozen=True)
class Device:
    id: str
    state: str
    metadata: dict[str, Any]
    created_at: float
    credentials: tuple[Credential, ...] = ()
    config: Any = None

    @property
    def enabled(self) -> bool:
        return self.state == "enabled"


class Snapshot:
    """What the DTLS server and the resources read, in memory: enabled devices' credentials by identity."""

    def __init__(self, devices: list[Device], version: int) -> None:
        self.version = version
        self._psk: dict[bytes, tuple[str, Credential]] = {}
        self._rpk: dict[bytes, tuple[str, Credential]] = {}
        self.devices = {d.id: d for d in devices}
        for device in devices:
            if not device.enabled:
                continue
            for cred in device.credentials:
                (self._psk if cred.kind == "psk" else self._rpk)[cred.identity] = (device.id, cred)

    def psk(self, identity: bytes, now: float) -> bytes | None:
        """The key of an enabled device's PSK identity valid at ``now``; None otherwise (unknown, revoked,
        expired: all fail the handshake alike)."""
        found = self._psk.get(identity)
        if found is None or not found[1].valid_at(now):
            return None
        return found[1].secret

    def device_for_psk(self, identity: bytes, now: float) -> str | None:
        found = self._psk.get(identity)
        return found[0] if found is not None and found[1].valid_at(now) else None

    def device_for_key(self, key_fingerprint: bytes, now: float) -> str | None:
        found = self._rpk.get(key_fingerprint)
        return found[0] if found is not None and found[1].valid_at(now) else None


class Registry:
    """One registry file. Thread-safe: one connection, used under a lock."""

    def __init__(self, path: str | Path, *, create: bool = True, clock: Callable[[], float] = time.time,
                 random: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.path = Path(path)
        self._clock = clock
        self._random = random
        self._lock = threading.Lock()
        if not self.path.exists() and not create:
            raise RegistryError(f"no registry at {self.path}")
        try:
            create_private_file(self.path)
        except (DataDirError, OSError) as exc:
            raise RegistryError(str(exc)) from None
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
            raise RegistryError(f"{self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

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

    def snapshot(self) -> Snapshot:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
                devices = self._load_locked(None)
            finally:
                self._db.execute("COMMIT")
        return Snapshot(devices, version)

    def _load(self, device_id: str | None) -> list[Device]:
        with self._lock:
            return self._load_locked(device_id)

    def _load_locked(self, device_id: str | None) -> list[Device]:
        where, args = ("WHERE id = ?", (device_id,)) if device_id is not None else ("", ())
        rows = self._db.execute(f"SELECT id, state, metadata, config, created_at FROM devices {where} ORDER BY id",
                                args).fetchall()
        creds: dict[str, list[Credential]] = {}
        cwhere = "WHERE device_id = ?" if device_id is not None else ""
        for dev, kind, ident, secret, nb, na in self._db.execute(
                f"SELECT device_id, kind, identity, secret, not_before, not_after FROM credentials {cwhere} "
                "ORDER BY id", args):
            creds.setdefault(dev, []).append(Credential(kind, bytes(ident), secret and bytes(secret), nb, na))
        return [Device(i, s, json.loads(m), c, tuple(creds.get(i, ())), json.loads(cfg) if cfg else None)
                for i, s, m, cfg, c in rows]

    # -- writing -----------------------------------------------------------------------------------
    def add_device(self, device_id: str, *, psk_identity: str | None = None, psk: bytes | None = None,
                   key: str | bytes | None = None,
                   metadata: dict[str, Any] | None = None) -> tuple[Device, bytes | None]:
        """Add an enabled device with one credential: a raw public key (``key``: a fingerprint, hex or
        ``ni:///sha-256;...``, or DER/PEM of the key) or a PSK (``psk_identity`` defaults to the device id;
        ``psk`` to 16 random bytes). Returns the device and the PSK (None for a key)."""
        check_device_id(device_id)
        now = self._clock()
        if key is not None:
            if psk_identity is not None or psk is not None:
                raise RegistryError("a device is added with a PSK or with a public key, not both")
            cred = Credential("rpk", _pin(key))
        else:
            identity = psk_identity if psk_identity is not None else device_id
            if not PSK_IDENTITY.fullmatch(identity):
                raise RegistryError(f"bad PSK identity {identity!r}: 1-128 printable ASCII characters, no "
                                    "spaces or ':'")
            if psk is None:
                psk = self._random(PSK_LENGTH)
            elif not 16 <= len(psk) <= 64:
                raise RegistryError("a PSK has 16 to 64 bytes")
            cred = Credential("psk", identity.encode(), psk)
        try:
            with self._write():
                self._db.execute("INSERT INTO devices (id, state, metadata, created_at, updated_at) VALUES "
                                 "(?, 'enabled', ?, ?, ?)", (device_id, json.dumps(metadata or {}), now, now))
                self._insert_credential(device_id, cred, now)
        except sqlite3.IntegrityError as exc:
            if "devices.id" in str(exc):
                raise DuplicateDevice(f"device {device_id!r} exists already") from None
            raise DuplicateIdentity(f"{'PSK identity' if cred.kind == 'psk' else 'key'} {cred.label!r} belongs to "
                                    "another device") from None
        return self.get(device_id), cred.secret

    def _insert_credential(self, device_id: str, cred: Credential, now: float) -> None:
        self._db.execute("INSERT INTO credentials (device_id, kind, identity, secret, not_before, not_after, "
                         "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (device_id, cred.kind, cred.identity, cred.secret, cred.not_before, cred.not_after, now))

    def revoke(self, device_id: str) -> Device:
        """Revoke a device: its handshakes fail from the next snapshot on (the service reloads within 1 s)."""
        with self._write():
            cur = self._db.execute("UPDATE devices SET state = 'revoked', updated_at = ? WHERE id = ?",
                                   (self._clock(), device_id))
            if cur.rowcount == 0:
                raise UnknownDevice(f"no device {device_id!r}")
        return self.get(device_id)


def check_device_id(device_id: str) -> None:
    if not DEVICE_ID.fullmatch(device_id):
        raise RegistryError(f"bad device id {device_id!r}: 1-64 characters of A-Z a-z 0-9 . _ -, starting "
                            "with a letter or digit")


def _pin(key: str | bytes) -> bytes:
    """A raw public key pin: the SHA-256 fingerprint, from a fingerprint (hex or ``ni:``) or a key's PEM/DER."""
    try:
        if isinstance(key, str):
            return parse_fingerprint(key)
        return fingerprint(spki_der(load_public_key(key)))
    except KeyFileError as exc:
        raise RegistryError(f"bad public key: {exc}") from None
