"""Signing behind one small interface, so the key can live in a file or in hardware.

Ed25519 is the default (fast, deterministic signatures). ECDSA P-256 exists because the
key stores on Pi-class boards (TPM 2.0, ATECC608A) sign only P-256; with those the private
key never leaves the chip and is used through PKCS#11 (:mod:`stationseal.pkcs11`).
P-256 signatures travel as raw ``r || s`` (32 + 32 bytes, big-endian), the COSE form, so
that every signature in a frame is 64 bytes whatever the algorithm.

Signatures are unique per (key, body): ECDSA accepts both ``s`` and ``n - s``, so
verification requires the low one (``s <= n/2``) and signers normalise to it; Ed25519
requires ``S < L`` (RFC 8032 §5.1.7). Without that, one frame would exist as two payloads
with the same body, and anything keyed on the payload bytes would see two frames.
P-256 signing is deterministic (RFC 6979) where the installed ``cryptography`` offers it,
so test vectors regenerate byte for byte and no signature depends on the gateway's RNG.
"""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

# ``cryptography`` is imported by the functions that use it, not here: the gateway agent
# imports this module (through stationseal.frame) and signs with Ed25519 through the
# OpenSSL its Python already links (stationseal/ossl.py); loading cryptography's Rust
# library would cost it ~9 MB of its 35 MB budget (docs/agent.md, "Cost").

#: Algorithm name -> the number carried in the frame body.
ALG_IDS: dict[str, int] = {"ed25519": 1, "p256": 2}
ALG_NAMES: dict[int, str] = {v: k for k, v in ALG_IDS.items()}
SIGNATURE_LEN = 64
#: Order of the P-256 group and of the Ed25519 base point.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ED25519_L = 2**252 + 27742317777372353535851937790883648493


@cache
def _ecdsa_sign() -> ec.ECDSA:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        return ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    except Exception:  # cryptography < 42, or an OpenSSL without RFC 6979
        return ec.ECDSA(hashes.SHA256())


@cache
def _ecdsa_verify() -> ec.ECDSA:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.ECDSA(hashes.SHA256())


def __getattr__(name: str) -> Any:
    # P256_DETERMINISTIC: True when P-256 signatures are deterministic (RFC 6979) here.
    # Computed on first use, as it needs cryptography.
    if name == "P256_DETERMINISTIC":
        return bool(getattr(_ecdsa_sign(), "deterministic_signing", False))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def raw_p256_signature(r: int, s: int) -> bytes:
    """``r || s`` with ``s`` normalised to the low half of the group order."""
    if s > P256_N // 2:
        s = P256_N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class SigningError(Exception):
    """A key file that cannot be used, named with its path and the reason."""


@runtime_checkable
class Signer(Protocol):
    alg: str
    key_id: str

    def sign(self, data: bytes) -> bytes: ...


def public_key_raw(pub: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

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
        from cryptography.hazmat.primitives.asymmetric import ec

        if not isinstance(key.curve, ec.SECP256R1):
            raise SigningError(f"ECDSA key is on {key.curve.name}, expected secp256r1 (P-256)")
        self._key = key
        self.key_id = key_id_for(key.public_key())

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        der = self._key.sign(data, _ecdsa_sign())
        r, s = decode_dss_signature(der)
        return raw_p256_signature(r, s)


def signer_from_private_key(
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
) -> Signer:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if isinstance(key, ed25519.Ed25519PrivateKey):
        return Ed25519Signer(key)
    return P256Signer(key)


def load_signer(path: str | Path, *, lean: bool = False) -> Signer:
    """Load a PEM private key written by `stationseal keys generate`.

    Refuses a key file readable by group or others: on a gateway that is the difference
    between a signature and a forgeable one.

    ``lean``: sign an Ed25519 key with the OpenSSL library Python's ``ssl`` module
    already loaded (:mod:`stationseal.ossl`) instead of loading ``cryptography``, when
    that library passes its known-answer test. Same signatures, byte for byte (Ed25519
    is deterministic); the gateway agent uses it to stay inside its memory budget.
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
        pem = p.read_bytes()
    except OSError as e:
        raise SigningError(f"{p}: cannot read private key: {e.strerror}") from None
    if lean:
        from stationseal import ossl

        signer = ossl.ed25519_signer_from_pem(pem)
        if signer is not None:
            return signer
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise SigningError(f"{p}: not a usable PEM private key: {e}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise SigningError(f"{p}: key type {type(key).__name__} is not Ed25519 or P-256")
    return signer_from_private_key(key)


def load_public_key(pem: bytes) -> ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

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
    invalid_signature, ec, ed25519, encode_dss_signature = _verify_api()
    if len(sig) != SIGNATURE_LEN:
        return False
    try:
        if alg == "ed25519" and isinstance(pub, ed25519.Ed25519PublicKey):
            if int.from_bytes(sig[32:], "little") >= ED25519_L:
                return False
            pub.verify(sig, data)
            return True
        if alg == "p256" and isinstance(pub, ec.EllipticCurvePublicKey):
            r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            if not (0 < r < P256_N and 0 < s <= P256_N // 2):
                return False
            pub.verify(encode_dss_signature(r, s), data, _ecdsa_verify())
            return True
    except invalid_signature:
        return False
    return False


@cache
def _verify_api() -> tuple[type[Exception], Any, Any, Any]:
    """What verification needs of cryptography, imported once (per-frame hot path)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    return InvalidSignature, ec, ed25519, encode_dss_signature


def verify_signature(alg: str, public_key_pem: bytes, data: bytes, sig: bytes) -> bool:
    return verify_with_key(alg, load_public_key(public_key_pem), data, sig)


def write_private_key(path: Path, pem: bytes) -> None:
    """Create the file 0600 from the start: a chmod afterwards leaves a window."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
