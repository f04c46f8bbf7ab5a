"""Register and byte-field codecs: the four word orders, shared by reader, simulator and probe.

Definition (docs/profiles.md, "Word orders"): write the value big-endian as bytes
``A B C D`` (32-bit) or ``A B C D E F G H`` (64-bit), ``A`` most significant. The four
letters name the order those bytes travel in, register by register, high byte first:

=====  =============  ====================  ==============================
order  32-bit wire    64-bit wire           meaning
=====  =============  ====================  ==============================
ABCD   AB CD          AB CD EF GH           big-endian
BADC   BA DC          BA DC FE HG           bytes swapped inside each word
CDAB   CD AB          GH EF CD AB           least significant word first
DCBA   DC BA          HG FE DC BA           little-endian
=====  =============  ====================  ==============================

16-bit values have one word, so ABCD = CDAB (``AB``) and BADC = DCBA (``BA``).

The decoder never shuffles bytes one by one: swapping the two bytes of every word turns
BADC into ABCD and CDAB into DCBA, so each order is one ``struct`` unpack, big- or
little-endian, of either the raw block or its word-swapped copy (``array.byteswap`` in
C). A whole read block is decoded with at most four precompiled ``Struct`` calls.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

WORD_ORDERS: tuple[str, ...] = ("ABCD", "BADC", "CDAB", "DCBA")

#: data type -> (bytes, struct code). ``bits`` and ``string`` are decoded separately.
NUMERIC_TYPES: dict[str, tuple[int, str]] = {
    "int8": (1, "b"),
    "uint8": (1, "B"),
    "int16": (2, "h"),
    "uint16": (2, "H"),
    "int32": (4, "i"),
    "uint32": (4, "I"),
    "int64": (8, "q"),
    "uint64": (8, "Q"),
    "float32": (4, "f"),
    "float64": (8, "d"),
}
INTEGER_TYPES = frozenset(t for t, (_, c) in NUMERIC_TYPES.items() if c not in "fd")

#: word order -> (decode from the word-swapped copy?, struct endianness)
_ORDER: dict[str, tuple[bool, str]] = {
    "ABCD": (False, ">"),
    "DCBA": (False, "<"),
    "BADC": (True, ">"),
    "CDAB": (True, "<"),
}


def swap_words(data: bytes) -> bytes:
    """Swap the two bytes of every 16-bit word (length must be even)."""
    a = array("H", data)
    a.byteswap()
    return a.tobytes()


def order_plan(word_order: str) -> tuple[bool, str]:
    """(decode from the word-swapped bytes?, struct endianness) for a word order."""
    return _ORDER[word_order]


def _plain(data: bytes, word_order: str) -> tuple[bytes, str]:
    swapped, endian = _ORDER[word_order]
    if swapped and len(data) > 1:
        data = swap_words(data)
    return data, endian


def decode_number(data_type: str, word_order: str, data: bytes) -> int | float:
    """Decode one value from exactly its wire bytes."""
    size, code = NUMERIC_TYPES[data_type]
    if len(data) != size:
        raise ValueError(f"{data_type} needs {size} bytes, got {len(data)}")
    plain, endian = _plain(data, word_order)
    value: int | float = struct.unpack(endian + code, plain)[0]
    return value


def encode_number(data_type: str, word_order: str, value: int | float) -> bytes:
    """Inverse of :func:`decode_number`; integers are clamped to the type's range (an
    instrument saturates rather than wrapping)."""
    size, code = NUMERIC_TYPES[data_type]
    swapped, endian = _ORDER[word_order]
    if data_type in INTEGER_TYPES:
        bits = size * 8
        lo, hi = (0, 2**bits - 1) if data_type.startswith("u") else (-(2 ** (bits - 1)),
                                                                      2 ** (bits - 1) - 1)
        value = min(hi, max(lo, round(value)))
    data = struct.pack(endian + code, value)
    return swap_words(data) if swapped and size > 1 else data


def registers_to_bytes(registers: Sequence[int]) -> bytes:
    return struct.pack(f">{len(registers)}H", *registers)


@dataclass(frozen=True, slots=True)
class Field:
    """One numeric value inside a byte block: byte offset, data type, word order."""

    offset: int
    data_type: str
    word_order: str


class BlockDecoder:
    """Decodes every numeric field of one block of bytes in at most four struct calls.

    Fields are grouped by (swapped source, endianness); each group becomes one Struct
    with pad bytes between fields. Overlapping fields of one group go into a further
    Struct. ``decode`` returns values in the order the fields were given.
    """

    __slots__ = ("_needs_swap", "_plans", "_size")

    def __init__(self, size: int, fields: Sequence[Field]) -> None:
        self._size = size
        groups: dict[tuple[bool, str], list[tuple[int, int, str]]] = {}
        for i, f in enumerate(fields):
            nbytes, code = NUMERIC_TYPES[f.data_type]
            if f.offset < 0 or f.offset + nbytes > size:
                raise ValueError(f"field at byte {f.offset} ({f.data_type}) outside "
                                 f"{size}-byte block")
            swapped, endian = _ORDER[f.word_order]
            if nbytes == 1:
                swapped, endian = False, ">"
            elif swapped and (f.offset % 2 or nbytes % 2):
                raise ValueError(f"word-swapped field at odd byte offset {f.offset}")
            groups.setdefault((swapped, endian), []).append((f.offset, i, code))
        # plan: (use swapped copy, Struct, indexes of fields in result order)
        plans: list[tuple[bool, struct.Struct, tuple[int, ...]]] = []
        for (swapped, endian), items in groups.items():
            items.sort()
            lanes: list[list[tuple[int, int, str]]] = []
            for item in items:
                for lane in lanes:
                    last = lane[-1]
                    if last[0] + NUMERIC_TYPES_BY_CODE[last[2]] <= item[0]:
                        lane.append(item)
                        break
                else:
                    lanes.append([item])
            for lane in lanes:
                fmt, pos = endian, 0
                for off, _, code in lane:
                    if off > pos:
                        fmt += f"{off - pos}x"
                    fmt += code
                    pos = off + NUMERIC_TYPES_BY_CODE[code]
                plans.append((swapped, struct.Struct(fmt), tuple(i for _, i, _ in lane)))
        self._plans = tuple(plans)
        self._needs_swap = any(p[0] for p in plans)

    def decode(self, data: bytes) -> list[int | float]:
        out: list[int | float] = [0] * sum(len(p[2]) for p in self._plans)
        swapped_data = swap_words(data) if self._needs_swap else data
        for use_swapped, st, idx in self._plans:
            values = st.unpack_from(swapped_data if use_swapped else data)
            for i, v in zip(idx, values, strict=True):
                out[i] = v
        return out


NUMERIC_TYPES_BY_CODE: dict[str, int] = {code: n for n, code in NUMERIC_TYPES.values()}


def decode_string(data: bytes, word_order: str) -> str:
    """Strings: two characters per register, high byte first (ABCD) or swapped (BADC);
    trailing NULs and spaces are padding."""
    if word_order in ("BADC", "DCBA"):
        data = swap_words(data)
    return data.decode("latin-1").rstrip("\x00 ")


def encode_string(text: str, nbytes: int, word_order: str) -> bytes:
    data = text.encode("latin-1", errors="replace")[:nbytes].ljust(nbytes, b"\x00")
    return swap_words(data) if word_order in ("BADC", "DCBA") else data
