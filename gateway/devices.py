"""Devices and their credentials as values, the rules for names and keys, and the in-memory :class:`Snapshot` the
DTLS server reads during handshakes (never SQLite). :mod:`.registry` stores them."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

import cbor2

from iotdtls.keys import ni_uri

DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: PSK identities: printable ASCII without spaces or ':' (the psktool file format splits on the last ':').
PSK_IDENTITY = re.compile(r"[!-9;-~]{1,128}")
PSK_LENGTH = 16
#: A rotated credential's PSK identity: the device id and the credential's generation (``sensor-1#2``).
GENERATION_MARK = "#"


class RegistryError(Exception):
    """A registry operation that cannot be done; the message is one line, safe to print (no secret)."""


class RegistryUnavailable(RegistryError):
    """The registry file cannot be opened, locked or written (not a problem of the request itself)."""


class UnknownDevice(RegistryError):
    pass


class DuplicateDevice(RegistryError):
    pass


class DuplicateIdentity(RegistryError):
    pass


def check_device_id(device_id: str) -> None:
    if not DEVICE_ID.fullmatch(device_id):
        raise RegistryError(f"bad device id {device_id!r}: 1-64 characters of A-Z a-z 0-9 . _ -, starting "
                            "with a letter or digit")


def check_psk_identity(identity: str) -> None:
    if not PSK_IDENTITY.fullmatch(identity):
        raise RegistryError(f"bad PSK identity {identity!r}: 1-128 printable ASCII characters, no spaces or ':'")


def check_psk(psk: bytes) -> None:
    if not 16 <= len(psk) <= 64:
        raise RegistryError(f"a PSK has 16 to 64 bytes, not {len(psk)}")


#: The largest device configuration document, CBOR-encoded: it travels to the device in one CoAP message.
MAX_CONFIG_BYTES = 384


def check_config(config: Any) -> None:
    """A device configuration document: a JSON object whose CBOR form fits in MAX_CONFIG_BYTES."""
    if not isinstance(config, dict):
        raise RegistryError("a device configuration is a JSON object ({...})")
    try:
        size = len(cbor2.dumps(config))
    except (TypeError, ValueError, RecursionError, cbor2.CBOREncodeError) as exc:
        raise RegistryError(f"the configuration cannot be encoded: {exc}") from None
    if size > MAX_CONFIG_BYTES:
        raise RegistryError(f"the configuration takes {size} bytes as CBOR; at most {MAX_CONFIG_BYTES}")


def config_etag(config: Any) -> bytes:
    """The CoAP ETag of a configuration document: 8 bytes of SHA-256 over its canonical JSON."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()[:8]


def derive_psk(master: bytes, device_id: str) -> bytes:
    """A device's PSK derived from a factory master key: the first 16 bytes of HMAC-SHA256(master, the device id
    in UTF-8). A production line computes it without the registry (docs/provisioning.md)."""
    if len(master) < 16:
        raise RegistryError("a master key has at least 16 bytes")
    return hmac.digest(master, device_id.encode("utf-8"), "sha256")[:PSK_LENGTH]


@dataclass(frozen=True)
class Credential:
    kind: str  # "psk" or "rpk"
    #: PSK: the identity; RPK: the SHA-256 fingerprint of the key's SubjectPublicKeyInfo.
    identity: bytes
    secret: bytes | None = field(default=None, repr=False)
    not_before: float | None = None
    not_after: float | None = None
    generation: int = 1
    #: When a device first authenticated with this credential (None: never yet).
    first_used_at: float | None = None
    #: When the credential was retired (a newer one was used, or the device was given a new key).
    retired_at: float | None = None

    def valid_at(self, now: float) -> bool:
        if self.retired_at is not None and self.retired_at <= now:
            return False
        return (self.not_before is None or self.not_before <= now) and (self.not_after is None or now < self.not_after)

    @property
    def label(self) -> str:
        """How the credential is shown: the PSK identity, or the key as ``ni:///sha-256;...``."""
        if self.kind == "psk":
            return self.identity.decode("utf-8", "replace")
        return ni_uri(self.identity)

    def describe(self) -> dict[str, Any]:
        """Everything but the secret."""
        return {"kind": self.kind, "identity": self.label, "generation": self.generation,
                "not_before": self.not_before, "not_after": self.not_after, "first_used_at": self.first_used_at,
                "retired_at": self.retired_at}


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

    def newest(self, kind: str = "psk") -> Credential | None:
        """The credential of the highest generation of ``kind`` not retired: the one the device should use."""
        found = [c for c in self.credentials if c.kind == kind and c.retired_at is None]
        return max(found, key=lambda c: c.generation) if found else None

    def stale(self, now: float) -> bool:
        """A rotation the device slept through: no credential it has used is valid any more, and the newest one
        was never used (the device cannot get in, and no one told it)."""
        if not self.enabled or not self.credentials:
            return False
        usable = [c for c in self.credentials if c.valid_at(now)]
        return bool(self.credentials) and all(c.first_used_at is None for c in usable) and any(
            c.first_used_at is not None for c in self.credentials)

    def describe(self, now: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"device": self.id, "state": self.state, "metadata": self.metadata,
                               "created_at": self.created_at,
                               "credentials": [c.describe() for c in self.credentials]}
        if now is not None:
            out["stale"] = self.stale(now)
        return out


class Snapshot:
    """What the DTLS server and the resources read, in memory: enabled devices' credentials by identity."""

    def __init__(self, devices: list[Device], version: int) -> None:
        self.version = version
        self._psk: dict[bytes, tuple[str, Credential]] = {}
        self._rpk: dict[bytes, tuple[str, Credential]] = {}
        self._all: dict[tuple[str, bytes], tuple[str, Credential]] = {}
        self.devices = {d.id: d for d in devices}
        for device in devices:
            for cred in device.credentials:
                self._all[(cred.kind, cred.identity)] = (device.id, cred)
                if device.enabled:
                    (self._psk if cred.kind == "psk" else self._rpk)[cred.identity] = (device.id, cred)

    def psk(self, identity: bytes, now: float) -> bytes | None:
        """The key of an enabled device's PSK identity valid at ``now``; None otherwise (unknown, revoked,
        expired, retired: all fail the handshake alike)."""
        found = self._psk.get(identity)
        if found is None or not found[1].valid_at(now):
            return None
        return found[1].secret

    def credential(self, kind: str, identity: bytes) -> tuple[str, Credential] | None:
        """``(device, credential)`` of any device, enabled or not, the credential valid or not."""
        return self._all.get((kind, identity))

    def device_for_psk(self, identity: bytes, now: float) -> str | None:
        found = self._psk.get(identity)
        return found[0] if found is not None and found[1].valid_at(now) else None

    def device_for_key(self, key_fingerprint: bytes, now: float) -> str | None:
        found = self._rpk.get(key_fingerprint)
        return found[0] if found is not None and found[1].valid_at(now) else None

    def note_used(self, kind: str, identity: bytes, now: float) -> None:
        """Record in this snapshot that a credential was used (the registry has it too), so that the next
        handshake with it does not ask the registry again."""
        found = self._all.get((kind, identity))
        if found is None or found[1].first_used_at is not None:
            return
        used = (found[0], replace(found[1], first_used_at=now))
        self._all[(kind, identity)] = used
        table = self._psk if kind == "psk" else self._rpk
        if identity in table:
            table[identity] = used

    def enabled(self, device_id: str) -> bool:
        device = self.devices.get(device_id)
        return device is not None and device.enabled
