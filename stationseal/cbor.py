"""Deterministic CBOR encoding (RFC 8949 §4.2.1, core deterministic encoding).

The frame body is signed byte-for-byte, and a third-party verifier must be able to
re-derive those bytes from the document alone, so the encoder is written out here for the
handful of types a frame uses rather than delegated to a general library whose float and
map-ordering choices can change between releases. Decoding uses ``cbor2`` (fast C
extension) behind :func:`check_wellformed`; :func:`is_canonical` re-encodes to reject
non-canonical (malleable) input.

Why a structural check runs before ``cbor2`` sees any byte: its C decoder leaks the
exception it raises on several error paths (invalid UTF-8 in a text string, most semantic
tags with a bad content), and with the exception its traceback and every frame on the
stack, i.e. the whole batch being processed: a two-byte payload leaked about 100 kB per
message in a measurement (tests/test_decoder_soak.py). Frames use a small subset of CBOR
(no tags, no indefinite lengths, text-keyed maps, bounded nesting); input outside that
subset is refused here, and text strings are decoded with ``str_errors="replace"`` so
that invalid UTF-8 never raises inside the C code (the canonical re-encoding then
differs from the input, which rejects it as not canonical).

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

import functools
import math
import re
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


#: Deepest nesting of arrays and maps a frame may contain (the body is 3 deep, event
#: details add a few levels).
MAX_DEPTH = 16


def _str_pattern(major: int, max_len: int) -> bytes:
    """A byte or text string of at most ``max_len`` bytes, as a regex alternative."""
    alts = [re.escape(bytes([major << 5 | n])) + (b".{%d}" % n if n else b"")
            for n in range(24)]
    alts += [re.escape(bytes([major << 5 | 24, n])) + b".{%d}" % n
             for n in range(24, max_len + 1)]
    return b"(?:" + b"|".join(alts) + b")"


_INT = rb"(?:[\x00-\x17\x20-\x37]|[\x18\x38].|[\x19\x39].{2}|[\x1a\x3a].{4}|[\x1b\x3b].{8})"
_UINT = rb"(?:[\x00-\x17]|\x18.|\x19.{2}|\x1a.{4}|\x1b.{8})"
_FLOAT = rb"(?:\xf9.{2}|\xfa.{4}|\xfb.{8})"
#: One reading ``[channel, dt, value, quality, raw]`` as the encoder writes it (strings up
#: to 64 bytes): a frame's readings are checked a block at a time by the regex engine
#: instead of item by item in Python. Anything else goes through the general walk.
_READING = (rb"\x85" + _UINT + _INT + b"(?:" + _INT + b"|" + _FLOAT + b"|" + _str_pattern(3, 64)
            + rb")\x61[\x00-\x7f](?:\xf6|" + _str_pattern(2, 64) + b")")
#: One channel-table entry ``[instrument, signal, unit]``: three text strings.
_CHANNEL = rb"\x83" + _str_pattern(3, 64) * 3
_BLOCK = 64


@functools.lru_cache(maxsize=_BLOCK + 1)
def _readings_re(n: int) -> re.Pattern[bytes]:
    return re.compile(b"(?:" + _READING + b"){%d}" % n, re.DOTALL)


@functools.lru_cache(maxsize=_BLOCK + 1)
def _channels_re(n: int) -> re.Pattern[bytes]:
    return re.compile(b"(?:" + _CHANNEL + b"){%d}" % n, re.DOTALL)


_BLOCKS = {0x85: _readings_re, 0x83: _channels_re}


def check_wellformed(data: bytes, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`CBORError` unless ``data`` is exactly one well-formed item of the
    subset frames use: no tags, no indefinite lengths, no simple values other than
    false/true/null, map keys text strings, nesting at most ``max_depth`` deep, no count
    larger than the bytes left could hold. Walks heads only; decodes nothing."""
    i = _walk(data, 0, max_depth)
    if i != len(data):
        raise CBORError(f"{len(data) - i} trailing byte(s) after the item")


def item_ends(data: bytes, start: int, count: int, max_depth: int = MAX_DEPTH) -> list[int]:
    """The end offsets of ``count`` consecutive items of the subset starting at
    ``start``, each walked as :func:`check_wellformed` walks one (``max_depth`` applies to
    each). The body of a frame is an array head and its items: walking the items one by
    one gives their boundaries, so each can be decoded and checked on its own."""
    out: list[int] = []
    i = start
    for _ in range(count):
        i = _walk(data, i, max_depth)
        out.append(i)
    return out


def _walk(data: bytes, i: int, max_depth: int) -> int:
    """The end of the one well-formed item of the subset starting at ``i``."""
    n = len(data)
    stack: list[tuple[int, int]] = []
    left = 1  # items still to read at this level
    keys = 0  # 0: not in a map; 1: a key is next; 2: a value is next
    while True:
        if left == 0:
            if not stack:
                break
            left, keys = stack.pop()
            continue
        if i >= n:
            raise CBORError(f"truncated at byte {i}")
        b = data[i]
        mt = b >> 5
        ai = b & 31
        if ai < 24:
            v = ai
            i += 1
        elif ai < 28:
            w = 1 << (ai - 24)
            if i + 1 + w > n:
                raise CBORError(f"truncated at byte {i}")
            v = int.from_bytes(data[i + 1 : i + 1 + w], "big")
            i += 1 + w
        else:
            raise CBORError(f"byte {i}: indefinite length or reserved value (0x{b:02x})")
        left -= 1
        if keys:
            if keys == 1 and mt != 3:
                raise CBORError(f"byte {i}: map key is not a text string")
            keys = 3 - keys
        if mt <= 1:
            continue
        if mt <= 3:
            i += v
            if i > n:
                raise CBORError(f"truncated string ending at byte {i}")
            continue
        if mt == 4 or mt == 5:
            if v == 0:
                continue
            if len(stack) >= max_depth:
                raise CBORError(f"byte {i}: nested deeper than {max_depth}")
            items = v if mt == 4 else 2 * v
            if items > n - i:
                raise CBORError(f"byte {i}: {v} items announced, {n - i} bytes left")
            stack.append((left, keys))
            left, keys = items, (0 if mt == 4 else 1)
            if mt == 4 and i < n and len(stack) < max_depth and data[i] in _BLOCKS:
                # Maybe a readings array or a channel table: skip whole blocks of
                # well-formed entries at regex speed.
                block = _BLOCKS[data[i]]
                while left >= _BLOCK:
                    m = block(_BLOCK).match(data, i)
                    if m is None:
                        break
                    i = m.end()
                    left -= _BLOCK
                if 0 < left < _BLOCK:
                    m = block(left).match(data, i)
                    if m is not None:
                        i = m.end()
                        left = 0
            continue
        if mt == 6:
            raise CBORError(f"byte {i - 1}: tags do not occur in frames")
        if ai not in (20, 21, 22, 25, 26, 27):
            raise CBORError(f"byte {i - 1}: simple value 0x{b:02x} does not occur in frames")
    return i


def decode(data: bytes) -> Any:
    """Decode exactly one CBOR item of the frame subset (:func:`check_wellformed`)."""
    check_wellformed(data)
    try:
        obj = cbor2.loads(data, str_errors="replace")
    except Exception as e:  # cbor2 raises several types; the caller needs one
        raise CBORError(f"not valid CBOR: {e}") from None
    return obj


def is_canonical(data: bytes, obj: Any) -> bool:
    try:
        return encode(obj) == data
    except CBORError:
        return False
