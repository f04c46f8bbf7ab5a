"""Chassis dynamometer over Modbus TCP: ABCD and CDAB float32, CDAB int32 with scale,
input registers (FC 4) for values, holding (FC 3) for calibration, status by value."""

from __future__ import annotations

import struct

from instrument_helpers import (
    ProfileCase,
    check_flags,
    check_parameter_change,
    check_values,
)

CASE = ProfileCase(
    profile="chassis_dyno",
    transport="tcp",
    values={"speed_kmh": 25.25, "target_speed_kmh": 25.0, "power_kw": 8.75, "force_n": 1247.5},
    out_of_range=("speed_kmh", 250.0),
    status=(2, "C"),
    parameter=("zero_offset.force_n", -3.5, "calibration_change"),
)


def test_chassis_dyno_decodes_served_values() -> None:
    got = check_values(CASE)
    be = struct.pack(">f", 8.75)
    assert got["power_kw"].raw == be[2:] + be[:2]          # CDAB
    assert got["speed_kmh"].raw == struct.pack(">f", 25.25)  # ABCD
    be32 = struct.pack(">i", 12475)
    assert got["force_n"].raw == be32[2:] + be32[:2]


def test_chassis_dyno_flags() -> None:
    check_flags(CASE)


def test_chassis_dyno_zero_offset_change_is_a_calibration_event() -> None:
    ev = check_parameter_change(CASE)
    assert ev.detail["raw_new"] == (-35).to_bytes(2, "big", signed=True).hex()
