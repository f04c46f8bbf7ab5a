"""Word orders byte for byte (docs/profiles.md), and the block decoder against the
one-value decoder for arbitrary layouts."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.codec import (
    NUMERIC_TYPES,
    WORD_ORDERS,
    BlockDecoder,
    Field,
    decode_number,
    decode_string,
    encode_number,
    encode_string,
)

# value 0x11223344 / 0x1122334455667788: bytes A=11 B=22 C=33 D=44 (E=55 ... H=88)
WIRE32 = {"ABCD": "11223344", "BADC": "22114433", "CDAB": "33441122", "DCBA": "44332211"}
WIRE64 = {"ABCD": "1122334455667788", "BADC": "2211443366558877",
          "CDAB": "7788556633441122", "DCBA": "8877665544332211"}


@pytest.mark.parametrize("order", WORD_ORDERS)
def test_32_bit_wire_bytes(order: str) -> None:
    assert encode_number("uint32", order, 0x11223344).hex() == WIRE32[order]
    assert decode_number("uint32", order, bytes.fromhex(WIRE32[order])) == 0x11223344


@pytest.mark.parametrize("order", WORD_ORDERS)
def test_64_bit_wire_bytes(order: str) -> None:
    assert encode_number("uint64", order, 0x1122334455667788).hex() == WIRE64[order]
    assert decode_number("uint64", order, bytes.fromhex(WIRE64[order])) == 0x1122334455667788


def test_float32_known_registers() -> None:
    # 123.456 = 0x42F6E979: the example every vendor manual prints
    assert decode_number("float32", "ABCD", bytes.fromhex("42F6E979")) == pytest.approx(123.456)
    assert decode_number("float32", "CDAB", bytes.fromhex("E97942F6")) == pytest.approx(123.456)
    assert decode_number("float32", "BADC", bytes.fromhex("F64279E9")) == pytest.approx(123.456)
    assert decode_number("float32", "DCBA", bytes.fromhex("79E9F642")) == pytest.approx(123.456)


def test_16_bit_orders_only_swap_bytes() -> None:
    assert encode_number("int16", "ABCD", -2) == encode_number("int16", "CDAB", -2) == b"\xff\xfe"
    assert encode_number("int16", "BADC", -2) == encode_number("int16", "DCBA", -2) == b"\xfe\xff"


def test_integers_saturate_instead_of_wrapping() -> None:
    assert encode_number("uint16", "ABCD", 70000) == b"\xff\xff"
    assert encode_number("int16", "ABCD", -40000) == b"\x80\x00"
    assert encode_number("uint32", "ABCD", -1) == b"\x00\x00\x00\x00"


def test_strings_two_chars_per_register() -> None:
    assert encode_string("FGA5", 6, "ABCD") == b"FGA5\x00\x00"
    assert encode_string("FGA5", 4, "BADC") == b"GF5A"
    assert decode_string(b"GF5A", "BADC") == "FGA5"
    assert decode_string(b"AB\x00\x00", "ABCD") == "AB"


_types = st.sampled_from(sorted(t for t in NUMERIC_TYPES if NUMERIC_TYPES[t][0] >= 2))


def _value(dt: str, data: st.DataObject) -> int | float:
    size, code = NUMERIC_TYPES[dt]
    if code in "fd":
        return data.draw(st.floats(allow_nan=False, width=32 if code == "f" else 64))
    bits = size * 8
    if dt.startswith("u"):
        return data.draw(st.integers(0, 2**bits - 1))
    return data.draw(st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))


@given(dt=_types, order=st.sampled_from(WORD_ORDERS), data=st.data())
def test_encode_decode_round_trip(dt: str, order: str, data: st.DataObject) -> None:
    v = _value(dt, data)
    assert decode_number(dt, order, encode_number(dt, order, v)) == v


@given(data=st.data())
def test_block_decoder_equals_field_by_field(data: st.DataObject) -> None:
    """Random register-aligned layouts, overlaps included (two views of one register)."""
    nregs = data.draw(st.integers(4, 40))
    raw = data.draw(st.binary(min_size=nregs * 2, max_size=nregs * 2))
    fields = []
    for _ in range(data.draw(st.integers(1, 12))):
        dt = data.draw(_types)
        size = NUMERIC_TYPES[dt][0]
        if size // 2 > nregs:
            continue
        reg = data.draw(st.integers(0, nregs - size // 2))
        fields.append(Field(reg * 2, dt, data.draw(st.sampled_from(WORD_ORDERS))))
    if not fields:
        return
    got = BlockDecoder(nregs * 2, fields).decode(raw)
    for f, v in zip(fields, got, strict=True):
        want = decode_number(f.data_type, f.word_order, raw[f.offset:f.offset + NUMERIC_TYPES[
            f.data_type][0]])
        assert v == want or (v != v and want != want)  # NaN == NaN here


def test_block_decoder_rejects_fields_outside_block() -> None:
    with pytest.raises(ValueError, match="outside"):
        BlockDecoder(4, [Field(2, "float32", "ABCD")])


def test_pack_layout_matches_struct() -> None:
    raw = struct.pack(">hHf", -7, 9, 2.5)
    dec = BlockDecoder(8, [Field(0, "int16", "ABCD"), Field(2, "uint16", "ABCD"),
                           Field(4, "float32", "ABCD")])
    assert dec.decode(raw) == [-7, 9, 2.5]
