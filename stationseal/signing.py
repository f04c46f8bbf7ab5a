"""Signing behind one small interface, so the key can live in a file or in hardware.

Ed25519 is the default (fast, deterministic signatures). ECDSA P-256 exists because the
key stores on Pi-class boards (TPM 2.0, ATECC608A) sign only P-256; with those the private
key never leaves the chip and is used through PKCS#11 (:mod:`stationseal.pkcs11`).
P-256 signatures travel as raw ``r || s`` (32 + 32 bytes, big-endian), the COSE form, so
that every signature in a frame is 64 bytes whatever the algorithm.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

#: Algorithm name -> the number carried in the frame body.
ALG_IDS: dict[str, int] = {"ed25519": 1, "p256": 2}
ALG_NAMES: dict[int, str] = {v: k for k, v in ALG_IDS.items()}
SIGNATURE_LEN = 64


class SigningError(Exception):
    """A key file that cannot be used, named with its path and the reason."""


@runtime_checkable
class Signer(Protocol):
    alg: str
    key_id: str

    def sign(self, data: bytes) -> bytes: ...


def public_key_raw(pub: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> bytes:
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pub.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def key_id_for(pub: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> str:
    """Key id = first 8 bytes of SHA-256 over the raw public key, as 16 hex digits.

    Derived rather than chosen, so a key id can never be re-used for a different key and
    anyone holding the public key can recompute it.
    """
    return hashlib.sha256(public_key_raw(pub)).hexdigest()[:16]


class Ed25519Signer:
    alg = "ed25519"

    def __init__(self, key: ed25519.Ed25519PrivateKey):
        self._key = key
        self.key_id = key_id_for(key.public_key())

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


class P256Signer:
    alg = "p256"

    def __init__(self, key: ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise SigningError(f"ECDSA key is on {key.curve.name}, expected secp256r1 (P-256)")
        self._key = key
        self.key_id = key_id_for(key.public_key())

    def sign(self, data: bytes) -> bytes:
        der = self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def signer_from_private_key(
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
) -> Signer:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return Ed25519Signer(key)
    return P256Signer(key)


def load_signer(path: str | Path) -> Signer:
    """Load a PEM private key written by `stationseal keys generate`.

    Refuses a key file readable by group or others: on a gateway that is the difference
    between a signature and a forgeable one.
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise SigningError(f"{p}: cannot read private key: {e.strerror}") from None
    if st.st_mode & 0o077:
        raise SigningError(
            f"{p}: private key file mode is {oct(st.st_mode & 0o777)}; it must be 0600 "
            f"(run: chmod 600 {p})"
        )
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise SigningError(f"{p}: not a usable PEM private key: {e}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise SigningError(f"{p}: key type {type(key).__name__} is not Ed25519 or P-256")
    return signer_from_private_key(key)


def load_public_key(pem: bytes) -> ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(pem)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise SigningError(f"public key type {type(key).__name__} is not Ed25519 or P-256")


def verify_with_key(
    alg: str,
    pub: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey,
    data: bytes,
    sig: bytes,
) -> bool:
    if len(sig) != SIGNATURE_LEN:
        return False
    try:
        if alg == "ed25519" and isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(sig, data)
            return True
        if alg == "p256" and isinstance(pub, ec.EllipticCurvePublicKey):
            der = encode_dss_signature(
                int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            )
            pub.verify(der, data, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False


def verify_signature(alg: str, public_key_pem: bytes, data: bytes, sig: bytes) -> bool:
    return verify_with_key(alg, load_public_key(public_key_pem), data, sig)


def write_private_key(path: Path, pem: bytes) -> None:
    """Create the file 0600 from the start: a chmod afterwards leaves a window."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
