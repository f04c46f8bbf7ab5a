"""Deterministic CBOR encoding (RFC 8949 §4.2.1, core deterministic encoding).

The frame body is signed byte-for-byte, and a third-party verifier must be able to
re-derive those bytes from the document alone, so the encoder is written out here for the
handful of types a frame uses rather than delegated to a general library whose float and
map-ordering choices can change between releases. Decoding uses ``cbor2`` (fast C
extension); :func:`is_canonical` re-encodes to reject non-canonical (malleable) input.

Rules (also in docs/wire-format.md):
* integers, lengths: shortest head (0..23 inline, then 1/2/4/8-byte big-endian);
* floats: the shortest of binary16/32/64 that represents the value exactly; NaN is
  always ``f9 7e 00``; infinities are ``f9 7c 00`` / ``f9 fc 00``;
* text strings UTF-8; byte strings as is; arrays and maps definite-length;
* map keys are text strings, ordered bytewise by their encoded form (= shorter first,
  then lexicographic by UTF-8 bytes);
* no tags; ``true``/``false``/``null`` are ``f5``/``f4``/``f6``.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import cbor2

_pack_e = struct.Struct(">e").pack
_unpack_e = struct.Struct(">e").unpack
_pack_f = struct.Struct(">f").pack
_unpack_f = struct.Struct(">f").unpack
_pack_d = struct.Struct(">d").pack


class CBORError(ValueError):
    """Input that is not CBOR, or a type a frame may not contain."""


def head(major: int, n: int) -> bytes:
    mt = major << 5
    if n < 24:
        return bytes((mt | n,))
    if n < 0x100:
        return bytes((mt | 24, n))
    if n < 0x10000:
        return bytes((mt | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((mt | 26,)) + n.to_bytes(4, "big")
    if n < 0x10000000000000000:
        return bytes((mt | 27,)) + n.to_bytes(8, "big")
    raise CBORError(f"integer {n} does not fit in 64 bits")


def encode_float(v: float) -> bytes:
    if v != v:
        return b"\xf9\x7e\x00"
    if math.isinf(v):
        return b"\xf9\x7c\x00" if v > 0 else b"\xf9\xfc\x00"
    try:
        h = _pack_e(v)
        if _unpack_e(h)[0] == v:
            return b"\xf9" + h
    except OverflowError:
        pass
    try:
        f = _pack_f(v)
        if _unpack_f(f)[0] == v:
            return b"\xfa" + f
    except OverflowError:
        pass
    return b"\xfb" + _pack_d(v)


def encode(obj: Any, out: bytearray | None = None) -> bytes:
    buf = bytearray() if out is None else out
    _enc(obj, buf)
    return bytes(buf)


def _enc(obj: Any, buf: bytearray) -> None:
    t = type(obj)
    if t is int:
        if obj >= 0:
            buf += head(0, obj)
        else:
            buf += head(1, -1 - obj)
    elif t is float:
        buf += encode_float(obj)
    elif t is str:
        b = obj.encode("utf-8")
        buf += head(3, len(b))
        buf += b
    elif t is bytes or t is bytearray:
        buf += head(2, len(obj))
        buf += obj
    elif t is list or t is tuple:
        buf += head(4, len(obj))
        for item in obj:
            _enc(item, buf)
    elif t is dict:
        items = []
        for k, v in obj.items():
            if type(k) is not str:
                raise CBORError(f"map key {k!r} is not a text string")
            kb = k.encode("utf-8")
            items.append((head(3, len(kb)) + kb, v))
        items.sort(key=lambda kv: kv[0])
        buf += head(5, len(items))
        for kb, v in items:
            buf += kb
            _enc(v, buf)
    elif obj is None:
        buf += b"\xf6"
    elif obj is True:
        buf += b"\xf5"
    elif obj is False:
        buf += b"\xf4"
    else:
        raise CBORError(f"type {t.__name__} cannot be encoded in a frame")


def decode(data: bytes) -> Any:
    """Decode exactly one CBOR item; trailing bytes, tags and indefinite items are errors."""
    try:
        obj = cbor2.loads(data)
    except Exception as e:  # cbor2 raises several types; the caller needs one
        raise CBORError(f"not valid CBOR: {e}") from None
    return obj


def is_canonical(data: bytes, obj: Any) -> bool:
    try:
        return encode(obj) == data
    except CBORError:
        return False
