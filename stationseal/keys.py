"""Gateway key files; the registry that says which key may sign for what is
:mod:`stationseal.registry` (re-exported here for callers that only need a name).

`keys generate` runs where the key will live (on the gateway, or in the provisioning
station) so the private key never travels; only the public key goes to the registry.
Revocation has two meanings, because they lead to different verdicts on frames sealed
before the revocation:

* ``retired``, ``superseded``, ``decommissioned``: frames created *and first received*
  before ``revoked_at`` stay valid;
* ``compromised``: every frame under the key is rejected, since whoever holds a stolen key
  can also back-date ``created``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from stationseal.frame import NAME_RE
from stationseal.registry import (
    REVOCATION_REASONS,
    KeyEntry,
    KeyLookupError,
    KeyRegistry,
    RegistryError,
)
from stationseal.signing import ALG_IDS, signer_from_private_key, write_private_key

__all__ = [
    "REVOCATION_REASONS", "KeyEntry", "KeyFiles", "KeyLookupError", "KeyRegistry",
    "RegistryError", "generate_keypair",
]


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
    if not isinstance(gateway_id, str) or NAME_RE.match(gateway_id) is None:
        raise RegistryError(
            f"gateway id {gateway_id!r} must be 1..64 of A-Z a-z 0-9 . _ -, starting with a "
            "letter or digit (it is an MQTT topic level and an InfluxDB tag)"
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
