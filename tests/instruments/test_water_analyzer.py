"""Effluent water analyzer over Modbus TCP: ABCD and DCBA float32, uint32 flow with scale,
int16 pH, a configuration register (flowmeter K-factor)."""

from __future__ import annotations

import struct

from instrument_helpers import (
    ProfileCase,
    check_flags,
    check_parameter_change,
    check_values,
)

CASE = ProfileCase(
    profile="water_analyzer",
    transport="tcp",
    values={"cod_mgl": 32.5, "nh3n_mgl": 1.25, "tp_mgl": 0.3125, "tn_mgl": 8.5, "ph": 7.21,
            "water_flow_ls": 25.123, "water_temp_c": 18.4},
    out_of_range=("ph", 14.5),
    status=(1, "M"),
    parameter=("span_coeff.water_flow_ls", 1.0321, "config_change"),
)


def test_water_analyzer_decodes_served_values() -> None:
    got = check_values(CASE)
    assert got["tp_mgl"].raw == struct.pack("<f", 0.3125)       # DCBA
    assert got["water_flow_ls"].raw == struct.pack(">I", 25123)  # mL/s


def test_water_analyzer_flags() -> None:
    check_flags(CASE)


def test_water_analyzer_k_factor_change_is_a_config_event() -> None:
    check_parameter_change(CASE)
