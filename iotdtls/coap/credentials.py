"""aiocoap credentials -> iotdtls configuration.

aiocoap's own format works unchanged: ``{"coaps://host/*": {"dtls": {"psk": ..., "client-identity": ...}}}`` for
clients and identity-keyed entries (``":name": {"dtls": ...}``) on servers, with ``{"ascii": ...}`` and
``{"hex": ...}`` values. iotdtls adds one credential type for raw public keys (RFC 7250)::

    {"coaps://gw.example/*": {"iotdtls-rpk": {"private-key": "device.key", "peer-keys": ["gw.pub"]}}}
    {":sensor-7": {"iotdtls-rpk": {"peer-keys": ["ni:///sha-256;..."]}}}          # server: a trusted client
    {"coaps://*": {"iotdtls-rpk": {"private-key": "server.key"}}}                    # server: its own key

``private-key`` is a key file (PEM/DER, PKCS#8/SEC1); ``peer-keys`` lists public-key files or SHA-256
fingerprints (hex or ``ni:``). Registering the type uses aiocoap's private ``CredentialsMap._class_map``
(checked with aiocoap 0.4.17).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiocoap.credentials import CredentialsLoadError, CredentialsMap

from ..config import DTLSConfiguration
from ..keys import KeyFileError, PrivateKey, load_private_key, read_pin
from ..trust import PeerCredential, TrustStore

RPK_TYPE = "iotdtls-rpk"


@dataclass
class RawPublicKeyCredential:
    """An ``iotdtls-rpk`` entry: our key (optional) and the peer keys we pin (optional)."""

    private_key: PrivateKey | None = None
    peer_keys: set[bytes] = field(default_factory=set)
    authenticated_claims: list[str] = field(default_factory=list)

    @classmethod
    def from_item(cls, data: Any) -> RawPublicKeyCredential:
        if not isinstance(data, dict) or not set(data) <= {"private-key", "peer-keys"} or not data:
            raise CredentialsLoadError(f'{RPK_TYPE} takes an object with "private-key" and/or "peer-keys"')
        key = None
        try:
            if "private-key" in data:
                path = data["private-key"]
                if not isinstance(path, str):
                    raise CredentialsLoadError(f"{RPK_TYPE}: private-key must be a file name")
                try:
                    key = load_private_key(Path(path).read_bytes())
                except OSError as exc:
                    raise CredentialsLoadError(f"{RPK_TYPE}: cannot read {path}: {exc.strerror}") from None
                except KeyFileError as exc:
                    raise CredentialsLoadError(f"{RPK_TYPE}: {path}: {exc}") from None
            peers = data.get("peer-keys", [])
            if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
                raise CredentialsLoadError(f"{RPK_TYPE}: peer-keys must be a list of files or fingerprints")
            pins = {read_pin(p) for p in peers}
        except KeyFileError as exc:
            raise CredentialsLoadError(f"{RPK_TYPE}: {exc}") from None
        return cls(private_key=key, peer_keys=pins)


def register() -> None:
    """Make ``iotdtls-rpk`` known to every aiocoap CredentialsMap (idempotent)."""
    CredentialsMap._class_map.setdefault(RPK_TYPE, lambda: RawPublicKeyCredential)


def load_credentials(source: CredentialsMap | dict[str, Any] | str | Path | None) -> CredentialsMap:
    """A CredentialsMap from a map, a dict or a JSON file (as ``aiocoap-client --credentials`` reads)."""
    register()
    if isinstance(source, CredentialsMap):
        return source
    cmap = CredentialsMap()
    if source is None:
        return cmap
    if isinstance(source, str | Path):
        import json

        try:
            source = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CredentialsLoadError(f"cannot read credentials {source}: {exc}") from None
        if not isinstance(source, dict):
            raise CredentialsLoadError("credentials file must hold a JSON object")
    cmap.load_from_dict(source)
    return cmap


def client_config(credential: object, base: DTLSConfiguration) -> DTLSConfiguration:
    """The client configuration for one credential entry matched to a request URI."""
    if isinstance(credential, RawPublicKeyCredential):
        if not credential.peer_keys:
            raise CredentialsLoadError(f"{RPK_TYPE} for a server needs peer-keys (the server's key)")
        return replace(base, is_client=True, psk=None, psk_identity=None, private_key=credential.private_key,
                       trust=TrustStore.of(credential.peer_keys))
    as_psk = getattr(credential, "as_dtls_psk", None)
    if as_psk is None:
        raise CredentialsLoadError(f"credentials of type {type(credential).__name__} do not work with coaps://")
    identity, psk = as_psk()
    return replace(base, is_client=True, psk_identity=identity, psk=psk)


def _credential_items(cmap: CredentialsMap) -> Iterable[tuple[str, object]]:
    return cmap.items()  # type: ignore[no-any-return]


def server_config(cmap: CredentialsMap, base: DTLSConfiguration) -> DTLSConfiguration:
    """A server configuration serving every PSK identity and raw public key in ``cmap`` at once."""
    register()
    psk_entries: dict[bytes, tuple[bytes, str]] = {}
    pins: dict[bytes, str] = {}
    own_key: PrivateKey | None = base.private_key
    for name, item in _credential_items(cmap):
        if isinstance(item, RawPublicKeyCredential):
            if item.private_key is not None:
                own_key = item.private_key
            for pin in item.peer_keys:
                pins[pin] = name
        elif hasattr(item, "as_dtls_psk"):
            identity, psk = item.as_dtls_psk()
            psk_entries[identity] = (psk, name)

    def lookup_psk(identity: bytes) -> bytes | None:
        entry = psk_entries.get(identity)
        return entry[0] if entry else None

    def judge(cred: PeerCredential) -> str | None:
        return pins.get(cred.fingerprint)

    return replace(base, is_client=False, psk_store=lookup_psk if psk_entries else base.psk_store,
                   private_key=own_key, trust=TrustStore(callback=judge) if pins else base.trust)


def claims_for(cmap: CredentialsMap, identity: bytes, peer: PeerCredential | None) -> list[str]:
    """aiocoap ``authenticated_claims`` of a session: the name of the credential entry that authenticated it."""
    if peer is not None:
        return [peer.name] if peer.name else []
    try:
        _psk, name = cmap.find_dtls_psk(identity)
    except KeyError:
        return []
    return [name]
