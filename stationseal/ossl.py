"""Ed25519 signing through the OpenSSL library that Python's own ``ssl`` module links.

Why: the gateway agent signs with Ed25519 and talks TLS. Python's ``ssl`` and
``hashlib`` already map the system's ``libcrypto``; the ``cryptography`` package brings
a second OpenSSL inside its Rust extension, which costs ~9 MB of resident memory on a
gateway whose whole budget is 35 MB (docs/agent.md, "Cost"). Signing is done by
OpenSSL's own ``EVP_DigestSign`` here, reached through :mod:`ctypes`; nothing of the
algorithm is implemented in this module.

Safety: the library is used only after it reproduced the RFC 8032 §7.1 test vectors
(public key and signature, byte for byte) in this process; otherwise, or when no
``libcrypto`` is mapped (a statically linked Python, a platform without /proc), the
caller gets ``None`` and falls back to ``cryptography``. Ed25519 signatures are
deterministic, so both paths produce identical frames (tests/test_ossl.py compares them).

Only unencrypted PKCS#8 Ed25519 keys (what `stationseal keys generate` writes) are read
here; anything else (P-256, encrypted or other encodings) goes to ``cryptography``.
"""

from __future__ import annotations

import binascii
import ctypes
import hashlib
import threading
from functools import cache

__all__ = ["OpenSSLEd25519Signer", "ed25519_signer_from_pem", "libcrypto"]

#: OpenSSL's NID for Ed25519 (EVP_PKEY_ED25519).
NID_ED25519 = 1087
#: DER of an unencrypted PKCS#8 v1 Ed25519 private key, up to the 32-byte seed
#: (RFC 8410 §7): SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING {
#: OCTET STRING (32) } }.
PKCS8_ED25519_PREFIX = bytes.fromhex("302e020100300506032b657004220420")

#: RFC 8032 §7.1, TEST 1 and TEST 2: (secret key, public key, message, signature).
_KAT = (
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc6"
     "1e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e45"
     "8f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
)

_lock = threading.Lock()


def _mapped_libcrypto() -> str | None:
    """Path of the libcrypto this process already mapped (through ``_hashlib``)."""
    import _hashlib  # noqa: F401  (links libcrypto where Python links OpenSSL dynamically)

    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
            for line in f:
                path = line.rsplit(" ", 1)[-1].strip()
                if "/libcrypto.so" in path:
                    return path
    except OSError:
        pass
    return None


@cache
def libcrypto() -> ctypes.CDLL | None:
    """The process's libcrypto with the few signatures declared, or None when there is
    none or it fails the known-answer test."""
    path = _mapped_libcrypto()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)  # already mapped: dlopen only takes a reference
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        lib.EVP_PKEY_new_raw_private_key.restype = vp
        lib.EVP_PKEY_new_raw_private_key.argtypes = [ctypes.c_int, vp, ctypes.c_char_p, sz]
        lib.EVP_PKEY_get_raw_public_key.restype = ctypes.c_int
        lib.EVP_PKEY_get_raw_public_key.argtypes = [vp, ctypes.c_char_p,
                                                    ctypes.POINTER(sz)]
        lib.EVP_PKEY_free.restype = None
        lib.EVP_PKEY_free.argtypes = [vp]
        lib.EVP_MD_CTX_new.restype = vp
        lib.EVP_MD_CTX_new.argtypes = []
        lib.EVP_MD_CTX_free.restype = None
        lib.EVP_MD_CTX_free.argtypes = [vp]
        lib.EVP_DigestSignInit.restype = ctypes.c_int
        lib.EVP_DigestSignInit.argtypes = [vp, vp, vp, vp, vp]
        lib.EVP_DigestSign.restype = ctypes.c_int
        lib.EVP_DigestSign.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(sz),
                                       ctypes.c_char_p, sz]
    except (OSError, AttributeError):  # not OpenSSL >= 1.1.1
        return None
    for sk, pk, msg, sig in _KAT:
        try:
            s = OpenSSLEd25519Signer(lib, bytes.fromhex(sk))
            ok = (s.public_key == bytes.fromhex(pk)
                  and s.sign(bytes.fromhex(msg)) == bytes.fromhex(sig))
        except OSError:
            ok = False
        if not ok:
            return None
    return lib


class OpenSSLEd25519Signer:
    """An Ed25519 key held by libcrypto; :meth:`sign` is one ``EVP_DigestSign``."""

    alg = "ed25519"

    def __init__(self, lib: ctypes.CDLL, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 private key is 32 bytes")
        self._lib = lib
        self._pkey = lib.EVP_PKEY_new_raw_private_key(NID_ED25519, None, seed, 32)
        if not self._pkey:
            raise OSError("OpenSSL refused the Ed25519 key")
        buf = ctypes.create_string_buffer(32)
        n = ctypes.c_size_t(32)
        if lib.EVP_PKEY_get_raw_public_key(self._pkey, buf, ctypes.byref(n)) != 1 \
                or n.value != 32:
            raise OSError("OpenSSL gave no Ed25519 public key")
        self.public_key = buf.raw
        #: same derivation as stationseal.signing.key_id_for
        self.key_id = hashlib.sha256(self.public_key).hexdigest()[:16]

    def sign(self, data: bytes) -> bytes:
        lib = self._lib
        sig = ctypes.create_string_buffer(64)
        n = ctypes.c_size_t(64)
        with _lock:  # one EVP_PKEY, used from any thread
            ctx = lib.EVP_MD_CTX_new()
            if not ctx:
                raise MemoryError("EVP_MD_CTX_new")
            try:
                ok = lib.EVP_DigestSignInit(ctx, None, None, None, self._pkey) == 1 and \
                    lib.EVP_DigestSign(ctx, sig, ctypes.byref(n), data, len(data)) == 1
            finally:
                lib.EVP_MD_CTX_free(ctx)
        if not ok or n.value != 64:
            raise OSError("OpenSSL EVP_DigestSign failed")
        return sig.raw

    def __del__(self) -> None:
        pkey, self._pkey = getattr(self, "_pkey", None), None
        if pkey:
            self._lib.EVP_PKEY_free(pkey)


def _pkcs8_seed(pem: bytes) -> bytes | None:
    """The 32-byte seed of an unencrypted PKCS#8 Ed25519 PEM, None for anything else."""
    lines = pem.strip().splitlines()
    if len(lines) < 3 or lines[0].strip() != b"-----BEGIN PRIVATE KEY-----" \
            or lines[-1].strip() != b"-----END PRIVATE KEY-----":
        return None
    try:
        der = binascii.a2b_base64(b"".join(line.strip() for line in lines[1:-1]))
    except binascii.Error:
        return None
    if len(der) != 48 or not der.startswith(PKCS8_ED25519_PREFIX):
        return None
    return der[16:]


def ed25519_signer_from_pem(pem: bytes) -> OpenSSLEd25519Signer | None:
    """A signer for an unencrypted PKCS#8 Ed25519 PEM key, or None (another key type or
    encoding, or no usable libcrypto): the caller then uses ``cryptography``."""
    seed = _pkcs8_seed(pem)
    if seed is None:
        return None
    lib = libcrypto()
    if lib is None:
        return None
    try:
        return OpenSSLEd25519Signer(lib, seed)
    except OSError:
        return None
