"""Canonical signal names: the vocabulary profiles, frames, InfluxDB and detectors share.

A profile maps instrument registers to these names, so that a detector written for
``co_pct`` works whichever analyzer brand a station bought. docs/signals.md is generated
from this table (`python -m stationseal.signals > docs/signals.md`) and a test keeps the two
in step.
"""

from __future__ import annotations

from typing import NamedTuple


class Signal(NamedTuple):
    name: str
    unit: str
    domain: str
    description: str


SIGNALS: tuple[Signal, ...] = (
    # Vehicle inspection: dynamometer, engine, exhaust analyzers
    Signal("speed_kmh", "km/h", "vehicle", "Dynamometer roller speed"),
    Signal("target_speed_kmh", "km/h", "vehicle", "Target speed of the drive trace / ASM mode"),
    Signal("power_kw", "kW", "vehicle", "Power absorbed by the dynamometer"),
    Signal("force_n", "N", "vehicle", "Tractive force measured by the dynamometer load cell"),
    Signal("rpm", "1/min", "vehicle", "Engine speed measured by the lane's tachometer"),
    Signal("oil_temp_c", "°C", "vehicle", "Engine oil temperature"),
    Signal("hc_ppm", "ppm", "vehicle", "Hydrocarbons (hexane equivalent), exhaust analyzer"),
    Signal("co_pct", "%vol", "vehicle", "Carbon monoxide, exhaust analyzer"),
    Signal("co2_pct", "%vol", "vehicle", "Carbon dioxide, exhaust analyzer"),
    Signal("o2_pct", "%vol", "vehicle", "Oxygen, exhaust analyzer"),
    Signal("no_ppm", "ppm", "vehicle", "Nitric oxide, exhaust analyzer"),
    Signal("nox_ppm", "ppm", "vehicle", "Nitrogen oxides, exhaust or lug-down analyzer"),
    Signal("lambda", "1", "vehicle", "Excess-air ratio computed by the exhaust analyzer"),
    Signal("dilution_factor", "1", "vehicle", "ASM dilution correction factor"),
    Signal("humidity_factor", "1", "vehicle", "ASM humidity correction factor"),
    Signal("opacity_pct", "%", "vehicle", "Smoke opacity N, opacimeter"),
    Signal("k_m1", "1/m", "vehicle", "Light absorption coefficient K, opacimeter"),
    Signal("flow_o2_pct", "%vol", "vehicle", "VMAS flowmeter O2 (diluted exhaust)"),
    Signal("flow_lps", "L/s", "vehicle", "VMAS flowmeter diluted exhaust flow"),
    Signal("ambient_temp_c", "°C", "vehicle", "Ambient temperature, lane weather station"),
    Signal("ambient_rh_pct", "%", "vehicle", "Ambient relative humidity, lane weather station"),
    Signal("ambient_kpa", "kPa", "vehicle", "Ambient pressure, lane weather station"),
    Signal("obd_rpm", "1/min", "vehicle", "Engine speed read from the vehicle's OBD port"),
    Signal("obd_speed_kmh", "km/h", "vehicle", "Vehicle speed read from the OBD port"),
    Signal("obd_throttle_pct", "%", "vehicle", "Throttle position read from the OBD port"),
    Signal("obd_lambda", "1", "vehicle", "Lambda (equivalence ratio) read from the OBD port"),
    Signal("obd_load_pct", "%", "vehicle", "Calculated engine load read from the OBD port"),
    Signal("obd_odometer_km", "km", "vehicle", "Odometer read from the OBD port"),
    # Lane controller (the lane's test program, read like an instrument; codes in
    # stationseal/lanecodes.py). Text signals carry the unit "text".
    Signal("lane_test_state", "1", "vehicle",
           "Lane test state code: 0 idle, 1 testing, 2 finished, 3 aborted"),
    Signal("lane_test_id", "1", "vehicle", "Serial number of the lane's current or last test"),
    Signal("lane_method", "1", "vehicle", "Test method code of the current test"),
    Signal("lane_phase", "1", "vehicle", "Phase code within the current test method"),
    Signal("lane_result", "1", "vehicle", "Verdict of the last test: 0 none, 1 pass, 2 fail"),
    Signal("lane_vehicle", "text", "vehicle", "Plate of the vehicle under test"),
    Signal("lane_vin", "text", "vehicle", "VIN of the vehicle under test"),
    Signal("lane_calid", "text", "vehicle", "OBD calibration id (CALID) read by the lane"),
    Signal("lane_cvn", "text", "vehicle", "OBD calibration verification number (CVN)"),
    Signal("lane_model", "text", "vehicle",
           "Model group (type-approval family) of the vehicle under test"),
    # Stack CEMS
    Signal("so2_mgm3", "mg/m³", "stack", "SO2 concentration in flue gas"),
    Signal("nox_mgm3", "mg/m³", "stack", "NOx concentration in flue gas (as NO2)"),
    Signal("pm_mgm3", "mg/m³", "stack", "Particulate matter concentration in flue gas"),
    Signal("o2_stack_pct", "%vol", "stack", "O2 in flue gas (dilution reference)"),
    Signal("flow_m3h", "m³/h", "stack", "Flue gas flow"),
    Signal("flue_temp_c", "°C", "stack", "Flue gas temperature"),
    Signal("flue_kpa", "kPa", "stack", "Flue gas static pressure"),
    Signal("moisture_pct", "%vol", "stack", "Flue gas moisture"),
    # Ambient air quality
    Signal("pm25_ugm3", "µg/m³", "air", "PM2.5"),
    Signal("pm10_ugm3", "µg/m³", "air", "PM10"),
    Signal("so2_ugm3", "µg/m³", "air", "SO2"),
    Signal("no2_ugm3", "µg/m³", "air", "NO2"),
    Signal("o3_ugm3", "µg/m³", "air", "O3"),
    Signal("co_mgm3", "mg/m³", "air", "CO"),
    # Water quality
    Signal("cod_mgl", "mg/L", "water", "Chemical oxygen demand"),
    Signal("nh3n_mgl", "mg/L", "water", "Ammonia nitrogen"),
    Signal("tp_mgl", "mg/L", "water", "Total phosphorus"),
    Signal("tn_mgl", "mg/L", "water", "Total nitrogen"),
    Signal("ph", "1", "water", "pH"),
    Signal("water_flow_ls", "L/s", "water", "Effluent flow"),
    Signal("water_temp_c", "°C", "water", "Water temperature"),
    # Instrument parameters (calibration / configuration registers)
    Signal("span_coeff", "1", "parameter", "Span (gain) calibration coefficient of a channel"),
    Signal("zero_offset", "1", "parameter", "Zero offset calibration of a channel"),
)

BY_NAME: dict[str, Signal] = {s.name: s for s in SIGNALS}


def is_known(name: str) -> bool:
    """Calibration parameters are per channel (``span_coeff.so2_mgm3``): the prefix counts."""
    return name in BY_NAME or name.split(".", 1)[0] in BY_NAME


def markdown() -> str:
    lines = [
        "# Canonical signals",
        "",
        "Every reading carries one of these names (generated from `stationseal/signals.py`).",
        "Calibration and configuration parameters are named `<parameter>.<signal>`, e.g.",
        "`span_coeff.so2_mgm3`.",
        "",
        "| name | unit | domain | description |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{s.name}` | {s.unit} | {s.domain} | {s.description} |" for s in SIGNALS]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
