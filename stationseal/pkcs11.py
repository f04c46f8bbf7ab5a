"""P-256 signing with a key held in a PKCS#11 token (TPM 2.0, ATECC608A, SoftHSM).

The private key never leaves the token: the gateway can be imaged or stolen without its
key being copied. Only ECDSA P-256 is offered, since that is what the key stores on
Pi-class boards implement. Requires the optional ``python-pkcs11`` package
(``pip install stationseal[pkcs11]``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization

from stationseal.signing import (
    SigningError,
    key_id_for,
    load_public_key,
    raw_p256_signature,
)


class Pkcs11Signer:
    """A :class:`~stationseal.signing.Signer` whose ``sign`` runs inside the token.

    The session stays open for the signer's life: opening one per frame costs more than
    the signature on most tokens.
    """

    alg = "p256"

    def __init__(self, module: str, token_label: str, pin: str, key_label: str):
        try:
            import pkcs11
            from pkcs11.util.ec import encode_ec_public_key
        except ImportError:
            raise SigningError(
                "PKCS#11 signing needs python-pkcs11: pip install 'stationseal[pkcs11]'"
            ) from None
        self._pkcs11: Any = pkcs11
        try:
            lib = pkcs11.lib(module)
            token = lib.get_token(token_label=token_label)
            self._session: Any = token.open(user_pin=pin)
            self._priv: Any = self._session.get_key(
                object_class=pkcs11.ObjectClass.PRIVATE_KEY,
                key_type=pkcs11.KeyType.EC,
                label=key_label,
            )
            pub_obj = self._session.get_key(
                object_class=pkcs11.ObjectClass.PUBLIC_KEY,
                key_type=pkcs11.KeyType.EC,
                label=key_label,
            )
        except Exception as e:  # the library raises many PKCS#11 error classes
            raise SigningError(
                f"PKCS#11 module {module}, token {token_label!r}, key {key_label!r}: "
                f"{type(e).__name__} {e}"
            ) from None
        der = encode_ec_public_key(pub_obj)  # type: ignore[arg-type]
        pub = load_public_key(
            serialization.load_der_public_key(der).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.public_key_pem = pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id = key_id_for(pub)

    def sign(self, data: bytes) -> bytes:
        # Hash here and use plain CKM_ECDSA: every token has it (SoftHSM and the ATECC608A
        # lack CKM_ECDSA_SHA256). The result is r || s, our wire form once s is low.
        digest = hashlib.sha256(data).digest()
        sig: bytes = self._priv.sign(digest, mechanism=self._pkcs11.Mechanism.ECDSA)
        if len(sig) != 64:
            raise SigningError(f"token returned a {len(sig)}-byte signature, expected 64")
        return raw_p256_signature(int.from_bytes(sig[:32], "big"),
                                  int.from_bytes(sig[32:], "big"))

    def close(self) -> None:
        self._session.close()


def generate_token_key(module: str, token_label: str, pin: str, key_label: str) -> bytes:
    """Create a non-extractable P-256 key pair in the token; returns the public key PEM."""
    import pkcs11
    from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

    lib = pkcs11.lib(module)
    token = lib.get_token(token_label=token_label)
    with token.open(user_pin=pin, rw=True) as session:
        params = session.create_domain_parameters(
            pkcs11.KeyType.EC,
            {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        pub, _ = params.generate_keypair(
            store=True,
            label=key_label,
            private_template={pkcs11.Attribute.EXTRACTABLE: False,
                              pkcs11.Attribute.SENSITIVE: True},
        )
        der = encode_ec_public_key(pub)
    pem: bytes = serialization.load_der_public_key(der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem
