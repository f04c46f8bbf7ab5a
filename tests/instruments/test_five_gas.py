"""Five-gas analyzer over Modbus RTU (pty line): int16/uint16 with scale, CDAB span floats,
status word bits."""

from __future__ import annotations

from instrument_helpers import (
    ProfileCase,
    check_flags,
    check_parameter_change,
    check_values,
)

CASE = ProfileCase(
    profile="five_gas",
    transport="rtu",
    values={"hc_ppm": 87, "co_pct": 0.412, "co2_pct": 14.23, "o2_pct": 0.51, "no_ppm": 642,
            "lambda": 1.021, "rpm": 2480, "oil_temp_c": -3.5},
    out_of_range=("co_pct", 12.5),
    status=(0b0101, "D"),  # calibration bit and low-flow bit: fault outranks calibration
    parameter=("span_coeff.co_pct", 1.0625, "calibration_change"),
)


def test_five_gas_decodes_served_values() -> None:
    got = check_values(CASE)
    assert got["oil_temp_c"].raw == (-35).to_bytes(2, "big", signed=True)
    assert got["co_pct"].raw == (412).to_bytes(2, "big")


def test_five_gas_flags() -> None:
    check_flags(CASE)


def test_five_gas_span_change_is_a_calibration_event() -> None:
    ev = check_parameter_change(CASE)
    # 1.0625 = 0x3F880000, low word first
    assert ev.detail["raw_new"] == "00003f88"
    assert ev.detail["raw_old"] == "00003f80"
