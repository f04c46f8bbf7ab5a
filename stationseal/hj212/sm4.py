"""SM4-ECB encryption of the CP region (HJ 212-2025).

What third-party implementations of HJ 212-2025 describe: SM4 with a 16-byte key, ECB
mode, no padding, applied to the characters between ``CP=&&`` and the closing ``&&``;
a tail shorter than one 16-byte block stays plain, and the CRC is computed over the
plaintext data segment. How the ciphertext is written into an ASCII frame is not
stated in any source available here; this module writes each encrypted block as 32
upper-case hex digits followed by the plain tail, which is unambiguous to decode
(``32n`` hex digits + fewer than 16 plain bytes). Change :func:`encrypt_cp` /
:func:`decrypt_cp` together if a platform turns out to use another text form.

ECB with no padding and no MAC hides values from casual readers but protects nothing
against a party who holds the key - which is why StationSeal signs at the gateway.
"""

from __future__ import annotations

import binascii
from typing import Any

from stationseal.hj212.errors import HJ212CryptoError

BLOCK = 16


def _sm4_ecb(key: bytes) -> Any:
    # cryptography is imported only when a CP is really encrypted or decrypted: a gateway
    # hearing a logger without SM4 must not carry its ~9 MB (docs/agent.md, "Cost").
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    return Cipher(algorithms.SM4(key), modes.ECB())


def parse_key(key: bytes | str) -> bytes:
    """A 16-byte key given as bytes or as 32 hex digits (the form configs carry)."""
    if isinstance(key, str):
        try:
            key = bytes.fromhex(key)
        except ValueError:
            raise HJ212CryptoError(
                "SM4 key is not hex", field="key", expected="32 hex digits", got=key
            ) from None
    if len(key) != BLOCK:
        raise HJ212CryptoError(
            "SM4 key has the wrong length", field="key", expected="16 bytes", got=len(key)
        )
    return key


def encrypt_cp(plain: bytes, key: bytes) -> bytes:
    """Encrypt whole blocks of the CP region; the short tail stays plain."""
    key = parse_key(key)
    whole = len(plain) - len(plain) % BLOCK
    enc = _sm4_ecb(key).encryptor()
    cipher: bytes = enc.update(plain[:whole]) + enc.finalize()
    return cipher.hex().upper().encode("ascii") + plain[whole:]


def decrypt_cp(text: bytes, key: bytes, base: int = 0) -> bytes:
    """Inverse of :func:`encrypt_cp`; ``base`` is the CP's byte offset for errors."""
    key = parse_key(key)
    blocks, tail = divmod(len(text), 2 * BLOCK)
    if tail >= BLOCK:
        raise HJ212CryptoError(
            "encrypted CP region has an impossible length",
            field="CP",
            position=base,
            expected="32*n hex digits followed by fewer than 16 plain bytes",
            got=f"{len(text)} bytes",
        )
    hex_part = text[: blocks * 2 * BLOCK]
    try:
        cipher = binascii.unhexlify(hex_part)
    except (binascii.Error, ValueError):
        bad = next(i for i, c in enumerate(hex_part) if chr(c) not in "0123456789abcdefABCDEF")
        raise HJ212CryptoError(
            "encrypted CP region is not hex",
            field="CP",
            position=base + bad,
            got=hex_part[bad : bad + 8],
        ) from None
    dec = _sm4_ecb(key).decryptor()
    out: bytes = dec.update(cipher) + dec.finalize() + text[blocks * 2 * BLOCK :]
    return out
