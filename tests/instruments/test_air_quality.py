"""Ambient air rack over Modbus TCP: float64 in ABCD and CDAB (64-bit word order),
BADC float32, uint16 with scale, status by value in an input register."""

from __future__ import annotations

import struct

from instrument_helpers import (
    ProfileCase,
    check_flags,
    check_parameter_change,
    check_values,
)

CASE = ProfileCase(
    profile="air_quality",
    transport="tcp",
    values={"pm25_ugm3": 37.123456789, "pm10_ugm3": 64.0078125, "so2_ugm3": 8.5,
            "no2_ugm3": 31.25, "o3_ugm3": 60.75, "co_mgm3": 0.612},
    out_of_range=("pm25_ugm3", 1500.0),
    status=(3, "D"),
    parameter=("span_coeff.o3_ugm3", 1.125, "calibration_change"),
)


def test_air_quality_decodes_served_values() -> None:
    got = check_values(CASE)
    be = struct.pack(">d", 64.0078125)
    words = [be[i:i + 2] for i in range(0, 8, 2)]
    assert got["pm10_ugm3"].raw == b"".join(reversed(words))  # CDAB on 64 bits: GH EF CD AB
    assert got["pm25_ugm3"].value == 37.123456789              # float64 keeps every digit
    f = struct.pack(">f", 8.5)
    assert got["so2_ugm3"].raw == bytes([f[1], f[0], f[3], f[2]])  # BADC


def test_air_quality_flags() -> None:
    check_flags(CASE)


def test_air_quality_span_change_is_a_calibration_event() -> None:
    check_parameter_change(CASE)
