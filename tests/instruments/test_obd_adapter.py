"""OBD adapter, polled ASCII over a pty: regex with named groups, LRC in hex, a second
request for the configuration (speed correction factor)."""

from __future__ import annotations

from instrument_helpers import (
    ProfileCase,
    check_flags,
    check_parameter_change,
    check_values,
)

CASE = ProfileCase(
    profile="obd_adapter",
    transport="serial",
    values={"obd_rpm": 2475.5, "obd_speed_kmh": 24.8, "obd_throttle_pct": 18.5,
            "obd_lambda": 1.004, "obd_load_pct": 41.2, "obd_odometer_km": 83412.6},
    out_of_range=("obd_throttle_pct", 120.0),
    status=(0x01, "D"),
    parameter=("span_coeff.obd_speed_kmh", 1.035, "config_change"),
)


def test_obd_adapter_decodes_served_values() -> None:
    got = check_values(CASE)
    assert got["obd_odometer_km"].raw == b"83412.6"


def test_obd_adapter_flags() -> None:
    check_flags(CASE)


def test_obd_adapter_speed_factor_change_is_a_config_event() -> None:
    check_parameter_change(CASE)
