"""Ed25519 through the process's own libcrypto (stationseal/ossl.py) against cryptography."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stationseal import ossl
from stationseal.keys import generate_keypair
from stationseal.signing import (
    Ed25519Signer,
    P256Signer,
    SigningError,
    load_public_key,
    load_signer,
    verify_with_key,
)

needs_libcrypto = pytest.mark.skipif(
    ossl.libcrypto() is None,
    reason="this Python does not link a libcrypto that passes the RFC 8032 vectors")


@needs_libcrypto
def test_lean_signer_signs_exactly_like_cryptography(tmp_path: Path) -> None:
    for i in range(5):
        kf = generate_keypair(f"gw-{i}", tmp_path / str(i))
        ref = load_signer(kf.private_key)
        lean = load_signer(kf.private_key, lean=True)
        assert isinstance(ref, Ed25519Signer)
        assert isinstance(lean, ossl.OpenSSLEd25519Signer)
        assert lean.key_id == ref.key_id and lean.alg == "ed25519"
        pub = load_public_key(kf.public_key.read_bytes())
        for msg in (b"", b"x", os.urandom(1000), os.urandom(70_000)):
            sig = lean.sign(msg)
            assert sig == ref.sign(msg)
            assert verify_with_key("ed25519", pub, msg, sig)
            assert not verify_with_key("ed25519", pub, msg + b"!", sig)


@needs_libcrypto
def test_known_answers_reject_a_library_that_signs_wrong(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    # The vectors are what stands between a broken binding and forged-looking frames:
    # a library whose signatures differ from RFC 8032 must not be used.
    lib = ossl.libcrypto()
    assert lib is not None
    bad = list(ossl._KAT)
    sk, pk, msg, sig = bad[0]
    bad[0] = (sk, pk, msg, sig[:-2] + ("00" if sig[-2:] != "00" else "01"))
    monkeypatch.setattr(ossl, "_KAT", tuple(bad))
    ossl.libcrypto.cache_clear()
    try:
        assert ossl.libcrypto() is None
    finally:
        monkeypatch.undo()
        ossl.libcrypto.cache_clear()
    assert ossl.libcrypto() is not None


def test_other_keys_fall_back_to_cryptography(tmp_path: Path) -> None:
    kf = generate_keypair("gw-p", tmp_path, alg="p256")
    assert isinstance(load_signer(kf.private_key, lean=True), P256Signer)
    assert ossl.ed25519_signer_from_pem(kf.private_key.read_bytes()) is None
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n")
    bad.chmod(0o600)
    assert ossl.ed25519_signer_from_pem(bad.read_bytes()) is None
    with pytest.raises(SigningError, match="not a usable PEM private key"):
        load_signer(bad, lean=True)


def test_lean_loading_keeps_the_file_mode_check(tmp_path: Path) -> None:
    kf = generate_keypair("gw-m", tmp_path)
    kf.private_key.chmod(0o644)
    with pytest.raises(SigningError, match="must be 0600"):
        load_signer(kf.private_key, lean=True)
