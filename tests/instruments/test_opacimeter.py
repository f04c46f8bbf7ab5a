"""Smoke opacimeter, binary request/response over a pty: length framing, sum8, a
little-endian field among big-endian ones, a status byte, a parameters request."""

from __future__ import annotations

from instrument_helpers import (
    ProfileCase,
    check_flags,
    check_parameter_change,
    check_values,
)

CASE = ProfileCase(
    profile="opacimeter",
    transport="serial",
    values={"opacity_pct": 12.34, "k_m1": 0.287, "rpm": 2350, "oil_temp_c": 81.5},
    out_of_range=("k_m1", 20.5),
    status=(0b010, "M"),
    parameter=("span_coeff.k_m1", 1.015625, "calibration_change"),
)


def test_opacimeter_decodes_served_values() -> None:
    got = check_values(CASE)
    assert got["rpm"].raw == (2350).to_bytes(2, "little")
    assert got["opacity_pct"].raw == (1234).to_bytes(2, "big")


def test_opacimeter_flags() -> None:
    check_flags(CASE)


def test_opacimeter_span_change_is_a_calibration_event() -> None:
    check_parameter_change(CASE)
