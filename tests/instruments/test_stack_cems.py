"""Stack CEMS cabinet over Modbus RTU: CDAB float32 and uint32, int16 with scale (negative
pressure), status from four coils (FC 1), calibration and configuration registers."""

from __future__ import annotations

import struct

import pytest
from instrument_helpers import (
    ProfileCase,
    check_flags,
    check_parameter_change,
    check_values,
)

CASE = ProfileCase(
    profile="stack_cems",
    transport="rtu",
    values={"so2_mgm3": 35.5, "nox_mgm3": 81.25, "pm_mgm3": 4.5, "o2_stack_pct": 9.125,
            "flow_m3h": 123457, "flue_temp_c": 55.3, "flue_kpa": -0.32, "moisture_pct": 8.07},
    out_of_range=("so2_mgm3", 1800.0),
    status=(0b0001, "M"),  # blow-back purge coil
    parameter=("span_coeff.so2_mgm3", 0.875, "calibration_change"),
)


def test_stack_cems_decodes_served_values() -> None:
    got = check_values(CASE)
    assert got["flow_m3h"].raw == struct.pack(">I", 123457)[2:] + struct.pack(">I", 123457)[:2]
    assert got["flow_m3h"].value == 123457 and isinstance(got["flow_m3h"].value, int)


def test_stack_cems_flags() -> None:
    check_flags(CASE)


def test_stack_cems_span_change_is_a_calibration_event() -> None:
    check_parameter_change(CASE)


def test_stack_cems_velocity_coefficient_change_is_a_config_event() -> None:
    ev = check_parameter_change(ProfileCase(**{**CASE.__dict__, "parameter": (
        "span_coeff.flow_m3h", 1.25, "config_change")}))
    assert ev.detail["new"] == pytest.approx(1.25)
