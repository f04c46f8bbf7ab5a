"""Weather station, free-running ASCII over a pty: '$' ... '*XX' framing with XOR
checksum, comma-separated tokens, hex status token, a calibration offset field."""

from __future__ import annotations

from instrument_helpers import (
    ProfileCase,
    check_flags,
    check_parameter_change,
    check_values,
)

CASE = ProfileCase(
    profile="weather_station",
    transport="serial",
    values={"ambient_temp_c": 21.35, "ambient_rh_pct": 55.2, "ambient_kpa": 101.325},
    out_of_range=("ambient_rh_pct", 104.5),
    status=(0b01, "D"),
    parameter=("zero_offset.ambient_temp_c", -0.75, "calibration_change"),
)


def test_weather_station_decodes_served_values() -> None:
    got = check_values(CASE)
    assert got["ambient_kpa"].raw == b"101.325"


def test_weather_station_flags() -> None:
    check_flags(CASE)


def test_weather_station_offset_change_is_a_calibration_event() -> None:
    check_parameter_change(CASE)
