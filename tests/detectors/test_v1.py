"""V1 probe out of the tailpipe / sample line leak."""

from __future__ import annotations

import pytest
from vehicle_helpers import feed, one_test, sites, strip_context

from ingest.detectors.v1 import ProbeDilutionDetector


@pytest.mark.parametrize("method", ["idle", "asm5025", "asm2540", "vmas"])
def test_probe_out_is_flagged(method: str) -> None:
    samples, events = one_test(method, 3, "V1", {"variant": "probe_out", "dilution": 0.3})
    alerts = feed(ProbeDilutionDetector(sites()), samples, events)
    assert [a.rule for a in alerts] == ["V1"]
    a = alerts[0]
    assert a.test_id == "T1" and a.severity == "high"
    assert a.evidence["check"] == "co_co2_low"
    assert a.evidence["min_co_co2_pct"] < 6.0
    assert a.evidence["origins"] and all(len(o) == 2 for o in a.evidence["origins"])
    assert "探头" in a.summary_zh and "probe" in a.summary_en


def test_leak_is_flagged_by_o2_while_obd_lambda_is_one() -> None:
    samples, events = one_test("vmas", 4, "V1", {"variant": "leak", "dilution": 0.82})
    alerts = feed(ProbeDilutionDetector(sites()), samples, events)
    assert len(alerts) == 1
    ev = alerts[0].evidence
    assert ev["check"] == "o2_high_obd_lambda_1"
    assert ev["count"] >= 5 and ev["mean_o2_pct"] > 2.0
    assert 0.97 <= ev["mean_obd_lambda"] <= 1.03


def test_without_lane_context_the_test_is_inferred() -> None:
    samples, _ = one_test("asm5025", 5, "V1", {"variant": "probe_out", "dilution": 0.3})
    alerts = feed(ProbeDilutionDetector(sites()), strip_context(samples), [])
    assert len(alerts) == 1
    assert alerts[0].evidence["inferred_test"] is True
    assert alerts[0].evidence["method"] == "asm5025"


@pytest.mark.parametrize("method", ["idle", "asm5025", "asm2540", "vmas"])
@pytest.mark.parametrize("factor", [0.3, 1.0, 6.0])
def test_clean_and_dirty_cars_are_not_flagged(method: str, factor: float) -> None:
    # A dirty car has high CO and O2 at lambda 1 (misfire) but an intact CO+CO2.
    for seed in (1, 2, 3):
        samples, events = one_test(method, seed, emission_factor=factor)
        assert feed(ProbeDilutionDetector(sites()), samples, events) == []


def test_diesel_tests_are_ignored_and_thresholds_are_parameters() -> None:
    samples, events = one_test("lug_down", 1)
    assert feed(ProbeDilutionDetector(sites()), samples, events) == []
    samples, events = one_test("idle", 1)
    strict = ProbeDilutionDetector(sites(), {"min_co_co2_pct": 20.0})
    assert feed(strict, samples, events), "a threshold above any exhaust must fire"
    with pytest.raises(ValueError, match="unknown parameter"):
        ProbeDilutionDetector(sites(), {"min_co2": 5})
