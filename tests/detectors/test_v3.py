"""V3 fabricated OBD stream."""

from __future__ import annotations

import pytest
from vehicle_helpers import feed, lane_run, one_test, sites

from ingest.detectors.v3 import FabricatedObdDetector


@pytest.mark.parametrize("method", ["vmas", "asm5025", "lug_down"])
def test_fabricated_stream_on_a_dynamometer_is_flagged(method: str) -> None:
    samples, events = one_test(method, 3, "V3")
    alerts = [a for a in feed(FabricatedObdDetector(sites()), samples, events)
              if "indicators" in a.evidence]
    assert len(alerts) == 1
    a = alerts[0]
    assert a.evidence["indicators"] >= 2 and a.severity == "high"
    assert a.evidence["distinct_speed_offsets"] <= 6
    assert "OBD" in a.summary_zh


def test_fabricated_rpm_without_dyno_is_caught_against_the_tachometer() -> None:
    samples, events = one_test("idle", 3, "V3")
    alerts = feed(FabricatedObdDetector(sites()), samples, events)
    assert len(alerts) == 1
    assert abs(alerts[0].evidence["corr_obd_rpm_rpm"]) < 0.3


def test_same_odometer_on_three_vins_is_flagged_but_two_are_not() -> None:
    # Fabricated streams with one canned odometer; clean dynamometer data otherwise.
    params = {"odometer_km": 4242.4}
    samples, events, ids = lane_run(["free_accel"] * 3, 5, "V3", params)
    det = FabricatedObdDetector(sites())
    odo = [a for a in feed(det, samples, events) if a.evidence.get("check") == "odometer_shared"]
    assert odo and set(odo[-1].evidence["test_ids"]) == set(ids)
    assert odo[-1].evidence["odometer_km"] == 4242.4
    samples, events, _ = lane_run(["free_accel"] * 2, 5, "V3", params)
    det = FabricatedObdDetector(sites())
    assert not [a for a in feed(det, samples, events) if "odometer_km" in a.evidence]


def test_clean_obd_streams_are_not_flagged() -> None:
    methods = ["vmas", "asm5025", "asm2540", "idle", "free_accel", "lug_down"] * 2
    samples, events, _ = lane_run(methods, 21)
    assert feed(FabricatedObdDetector(sites()), samples, events) == []
