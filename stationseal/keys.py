"""Gateway key files and the central key registry.

The registry is a plain JSON file (docs/wire-format.md, "Key registry") so that the
offline verifier needs nothing but the frames file and this file: an enforcement officer
can take both to a court expert. Revocation has two meanings, because they lead to
different verdicts on frames sealed before the revocation:

* ``retired`` (rotation, decommissioning): frames created before ``revoked_at`` stay valid;
* ``compromised``: every frame under the key is rejected, since whoever holds a stolen key
  can also back-date ``created``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from stationseal.records import from_rfc3339, to_rfc3339
from stationseal.signing import (
    ALG_IDS,
    key_id_for,
    load_public_key,
    signer_from_private_key,
    write_private_key,
)

REVOCATION_REASONS = ("compromised", "retired", "superseded", "decommissioned")


class RegistryError(Exception):
    """A registry file or entry that cannot be used; the message names file and entry."""


@dataclass(slots=True)
class KeyFiles:
    gateway_id: str
    key_id: str
    alg: str
    private_key: Path
    public_key: Path


def generate_keypair(
    gateway_id: str, out_dir: str | Path, alg: str = "ed25519", overwrite: bool = False
) -> KeyFiles:
    """Write ``<gateway_id>.key`` (PKCS#8 PEM, mode 0600) and ``<gateway_id>.pub.pem``."""
    if alg not in ALG_IDS:
        raise RegistryError(f"alg {alg!r} unknown; choose one of {sorted(ALG_IDS)}")
    if not gateway_id or len(gateway_id) > 64 or "/" in gateway_id or "+" in gateway_id \
            or "#" in gateway_id:
        raise RegistryError(
            f"gateway id {gateway_id!r} must be 1..64 characters without '/', '+' or '#' "
            "(it is an MQTT topic level)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv_path = out / f"{gateway_id}.key"
    pub_path = out / f"{gateway_id}.pub.pem"
    if not overwrite and (priv_path.exists() or pub_path.exists()):
        raise RegistryError(f"{priv_path} already exists; refusing to overwrite a gateway key")
    if overwrite:
        priv_path.unlink(missing_ok=True)
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if alg == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_key(priv_path, pem)
    pub_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    signer = signer_from_private_key(key)
    return KeyFiles(gateway_id, signer.key_id, alg, priv_path, pub_path)


@dataclass(slots=True)
class KeyEntry:
    gateway_id: str
    key_id: str
    alg: str
    public_key: str
    valid_from: float
    valid_until: float | None = None
    revoked_at: float | None = None
    revocation_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["valid_from"] = to_rfc3339(self.valid_from)
        for k in ("valid_until", "revoked_at"):
            v = d[k]
            d[k] = None if v is None else to_rfc3339(v)
        return d


class KeyLookupError(Exception):
    """Why a frame's key cannot be accepted; ``reason`` is a verification reason code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class KeyRegistry:
    def __init__(self, entries: list[KeyEntry] | None = None):
        self.entries: dict[str, KeyEntry] = {}
        self._pub: dict[str, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey] = {}
        for e in entries or []:
            self._put(e)

    def _put(self, e: KeyEntry) -> None:
        try:
            pub = load_public_key(e.public_key.encode())
        except Exception as ex:
            raise RegistryError(f"key {e.key_id}: public key unusable: {ex}") from None
        if key_id_for(pub) != e.key_id:
            raise RegistryError(
                f"key {e.key_id}: key id does not match the public key "
                f"(expected {key_id_for(pub)})"
            )
        expected_alg = "ed25519" if isinstance(pub, ed25519.Ed25519PublicKey) else "p256"
        if e.alg != expected_alg:
            raise RegistryError(f"key {e.key_id}: alg {e.alg!r} but the key is {expected_alg}")
        self.entries[e.key_id] = e
        self._pub[e.key_id] = pub

    @classmethod
    def load(cls, path: str | Path) -> KeyRegistry:
        p = Path(path)
        try:
            doc = json.loads(p.read_text())
        except FileNotFoundError:
            raise RegistryError(f"{p}: registry file not found") from None
        except json.JSONDecodeError as e:
            raise RegistryError(f"{p}: not JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(
            doc.get("keys"), list
        ):
            raise RegistryError(f"{p}: expected {{\"version\": 1, \"keys\": [...]}}")
        reg = cls()
        for i, k in enumerate(doc["keys"]):
            where = f"{p}: keys[{i}]"
            try:
                entry = KeyEntry(
                    gateway_id=str(k["gateway_id"]),
                    key_id=str(k["key_id"]),
                    alg=str(k["alg"]),
                    public_key=str(k["public_key"]),
                    valid_from=from_rfc3339(k["valid_from"]),
                    valid_until=None if k.get("valid_until") is None
                    else from_rfc3339(k["valid_until"]),
                    revoked_at=None if k.get("revoked_at") is None
                    else from_rfc3339(k["revoked_at"]),
                    revocation_reason=k.get("revocation_reason"),
                )
            except KeyError as e:
                raise RegistryError(f"{where}: missing field {e.args[0]!r}") from None
            except (TypeError, ValueError) as e:
                raise RegistryError(f"{where}: {e}") from None
            try:
                reg._put(entry)
            except RegistryError as e:
                raise RegistryError(f"{where}: {e}") from None
        return reg

    def save(self, path: str | Path) -> None:
        """Atomic replace, so a reloading ingest never reads half a registry."""
        p = Path(path)
        doc = {"version": 1, "keys": [e.to_json() for e in self.entries.values()]}
        fd, tmp = tempfile.mkstemp(dir=p.parent or ".", prefix=p.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)

    def add(
        self,
        gateway_id: str,
        public_key_pem: bytes,
        valid_from: float,
        valid_until: float | None = None,
    ) -> KeyEntry:
        pub = load_public_key(public_key_pem)
        kid = key_id_for(pub)
        if kid in self.entries:
            raise RegistryError(f"key {kid} is already registered (gateway "
                                f"{self.entries[kid].gateway_id})")
        alg = "ed25519" if isinstance(pub, ed25519.Ed25519PublicKey) else "p256"
        e = KeyEntry(gateway_id, kid, alg, public_key_pem.decode(), valid_from, valid_until)
        self._put(e)
        return e

    def revoke(self, key_id: str, at: float, reason: str) -> KeyEntry:
        if reason not in REVOCATION_REASONS:
            raise RegistryError(f"reason {reason!r}: choose one of {REVOCATION_REASONS}")
        e = self.entries.get(key_id)
        if e is None:
            raise RegistryError(f"key {key_id} is not in the registry")
        e.revoked_at = at
        e.revocation_reason = reason
        return e

    def lookup(
        self, gateway_id: str, key_id: str, created: float
    ) -> tuple[KeyEntry, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey]:
        """The key for a frame, or :class:`KeyLookupError` saying why it cannot be used."""
        e = self.entries.get(key_id)
        if e is None:
            raise KeyLookupError("unknown_key", f"key {key_id} is not in the registry")
        if e.gateway_id != gateway_id:
            raise KeyLookupError(
                "gateway_mismatch", f"key {key_id} belongs to {e.gateway_id}, not {gateway_id}"
            )
        if e.revoked_at is not None and (
            e.revocation_reason == "compromised" or created >= e.revoked_at
        ):
            raise KeyLookupError(
                "revoked_key",
                f"key {key_id} revoked ({e.revocation_reason}) at {to_rfc3339(e.revoked_at)}",
            )
        if created < e.valid_from:
            raise KeyLookupError(
                "key_not_yet_valid",
                f"frame created {to_rfc3339(created)} before key valid_from "
                f"{to_rfc3339(e.valid_from)}",
            )
        if e.valid_until is not None and created >= e.valid_until:
            raise KeyLookupError(
                "key_expired",
                f"frame created {to_rfc3339(created)} after key valid_until "
                f"{to_rfc3339(e.valid_until)}",
            )
        return e, self._pub[key_id]
