"""V8 dynamometer inconsistency."""

from __future__ import annotations

import pytest
from vehicle_helpers import feed, lane_run, one_test, sites

from ingest.detectors.v8 import DynamometerConsistencyDetector


@pytest.mark.parametrize("method", ["asm5025", "vmas", "lug_down"])
def test_power_not_equal_to_force_times_speed_is_flagged(method: str) -> None:
    samples, events = one_test(method, 3, "V8", {"variant": "power"})
    alerts = feed(DynamometerConsistencyDetector(sites()), samples, events)
    assert len(alerts) == 1
    ev = alerts[0].evidence["power"]
    assert ev["max_deviation"] > 0.05 and ev["count"] >= 3


def test_asm_speed_outside_the_band_is_flagged() -> None:
    samples, events = one_test("asm5025", 3, "V8", {"variant": "speed"})
    alerts = feed(DynamometerConsistencyDetector(sites()), samples, events)
    assert len(alerts) == 1
    ev = alerts[0].evidence["asm_speed"]
    assert ev["count"] > 5 and all(abs(v - 25.0) > 1.5 for v in ev["speeds"])
    assert "超出 25±1.5 km/h" in alerts[0].summary_zh


@pytest.mark.parametrize("method", ["asm2540", "vmas"])
def test_obd_speed_off_the_rollers_is_flagged(method: str) -> None:
    samples, events = one_test(method, 3, "V8", {"variant": "obd"})
    alerts = feed(DynamometerConsistencyDetector(sites()), samples, events)
    assert len(alerts) == 1
    ev = alerts[0].evidence["obd_speed"]
    assert ev["count"] >= 5 and abs(ev["max_difference_kmh"]) > 3.0


def test_consistent_dynamometer_is_not_flagged() -> None:
    methods = ["asm5025", "asm2540", "vmas", "lug_down", "idle", "free_accel"] * 2
    samples, events, _ = lane_run(methods, 9)
    assert feed(DynamometerConsistencyDetector(sites()), samples, events) == []
