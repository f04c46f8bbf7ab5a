"""Checksums against published vectors."""

from __future__ import annotations

from agent.checksums import CHECKSUMS, crc16_hj212, crc16_modbus, lrc, sum8, xor8


def test_hj212_crc_matches_the_standards_example() -> None:
    data = (b"QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
            b"Flag=5;CP=&&RtdInterval=30&&")
    assert crc16_hj212(data) == 0x1C80


def test_hj212_crc_is_not_the_modbus_crc() -> None:
    assert crc16_hj212(b"123456789") != crc16_modbus(b"123456789")


def test_modbus_crc_vectors() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37  # CRC-16/MODBUS check value
    # read holding 0, count 10, slave 1: wire "01 03 00 00 00 0A C5 CD" (low byte first)
    assert crc16_modbus(bytes.fromhex("01030000000A")).to_bytes(2, "little").hex() == "c5cd"


def test_eight_bit_checksums() -> None:
    assert sum8(b"\xA5\x01") == 0xA6
    assert sum8(b"\xff\x02") == 0x01
    assert xor8(b"\x0f\xf0\x01") == 0xFE
    # Modbus ASCII LRC of "01 03 00 00 00 0A" is F2
    assert lrc(bytes.fromhex("01030000000A")) == 0xF2
    assert (sum(bytes.fromhex("01030000000A")) + lrc(bytes.fromhex("01030000000A"))) & 0xFF == 0


def test_table_sizes_and_default_orders() -> None:
    assert CHECKSUMS["crc16_modbus"][1:] == (2, "little")
    assert CHECKSUMS["crc16_hj212"][1:] == (2, "big")
    assert all(CHECKSUMS[k][1] == 1 for k in ("sum8", "xor8", "lrc"))
