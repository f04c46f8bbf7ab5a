"""V5 analyzer output scaled down."""

from __future__ import annotations

import pytest
from vehicle_helpers import feed, one_test, sites

from ingest.detectors.v5 import AnalyzerScalingDetector


@pytest.mark.parametrize("method", ["idle", "asm5025", "vmas"])
def test_scaled_analyzer_is_flagged(method: str) -> None:
    samples, events = one_test(method, 6, "V5", {"scale": 0.8})
    alerts = feed(AnalyzerScalingDetector(sites()), samples, events)
    assert len(alerts) == 1
    ev = alerts[0].evidence
    assert ev["mean_co_co2_pct"] < 13.0 and ev["mean_o2_pct"] < 0.5
    assert 0.97 <= ev["mean_lambda"] <= 1.03
    assert alerts[0].severity == "high"
    assert "缩小" in alerts[0].summary_zh


@pytest.mark.parametrize("method", ["idle", "asm5025", "asm2540", "vmas"])
def test_unscaled_analyzer_is_not_flagged(method: str) -> None:
    for seed, factor in ((1, 1.0), (2, 0.2), (3, 6.0)):
        samples, events = one_test(method, seed, emission_factor=factor)
        assert feed(AnalyzerScalingDetector(sites()), samples, events) == []


def test_slight_scaling_stays_below_the_threshold() -> None:
    # 0.95 x 15 % = 14.3 %: within what a real analyzer may read, by design not flagged.
    samples, events = one_test("asm5025", 6, "V5", {"scale": 0.95})
    assert feed(AnalyzerScalingDetector(sites()), samples, events) == []
