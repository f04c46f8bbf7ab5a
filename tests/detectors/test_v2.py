"""V2 simulated oil temperature / rpm copied from OBD."""

from __future__ import annotations

from vehicle_helpers import feed, lane_run, one_test, sites

from ingest.detectors.v2 import SimulatedEngineSignalDetector


def test_constant_oil_temperature_across_short_tests_is_flagged() -> None:
    # Three fast-mode ASM tests of ~35 s each: only together do they reach 60 s.
    samples, events, ids = lane_run(["asm5025"] * 3, 7, "V2",
                                    {"variant": "oil", "oil_temp_c": 80.0})
    alerts = feed(SimulatedEngineSignalDetector(sites()), samples, events)
    assert sorted(a.test_id for a in alerts) == sorted(ids)
    ev = alerts[-1].evidence
    assert ev["check"] == "oil_constant" and ev["oil_temp_c"] == 80.0
    assert ev["constant_seconds"] >= 60 and ev["test_ids"] == ids
    assert "机油温度" in alerts[0].summary_zh


def test_one_short_constant_test_is_not_enough() -> None:
    samples, events, _ = lane_run(["asm5025"], 7, "V2", {"variant": "oil", "oil_temp_c": 80.0})
    assert feed(SimulatedEngineSignalDetector(sites()), samples, events) == []


def test_rpm_copied_from_obd_is_flagged() -> None:
    samples, events = one_test("vmas", 2, "V2", {"variant": "rpm"})
    alerts = feed(SimulatedEngineSignalDetector(sites()), samples, events)
    assert len(alerts) == 1
    ev = alerts[0].evidence
    assert ev["check"] == "rpm_copied" and ev["share"] == 1.0 and ev["aligned_seconds"] == 195


def test_clean_lane_is_not_flagged() -> None:
    methods = ["idle", "asm5025", "vmas", "free_accel", "lug_down", "asm2540"] * 2
    samples, events, _ = lane_run(methods, 11)
    assert feed(SimulatedEngineSignalDetector(sites()), samples, events) == []
