"""V10 results nudged under the limit (station vs fleet)."""

from __future__ import annotations

import functools
import random

import pytest
from vehicle_helpers import T0, feed

from ingest.detectors.base import SiteInfo
from ingest.detectors.v10 import NudgedResultsDetector, _binomial_tail
from sim.vehicle import simulate_station_day


@functools.lru_cache(maxsize=1)
def _clean_stations() -> tuple[list, list]:
    samples, events = [], []
    for i in range(4):
        s, e, _ = simulate_station_day(f"S{i}", ["L1", "L2"], T0, random.Random(100 + i),
                                       tests_per_lane=30)
        samples += s
        events += e
    return samples, events


def _run(extra: str | None) -> list:
    """Four clean stations plus S9, which nudges results when ``extra`` is "V10"."""
    samples, events = _clean_stations()
    s, e, labels = simulate_station_day("S9", ["L1", "L2"], T0, random.Random(7),
                                        tests_per_lane=30, inject=extra)
    assert (len(labels) >= 5) == (extra == "V10")
    cfg = {f"S{i}": SiteInfo(f"S{i}", "vehicle_inspection") for i in (0, 1, 2, 3, 9)}
    det = NudgedResultsDetector(cfg, {"min_fleet_tests": 150})
    return feed(det, samples + s, events + e)


def test_station_nudging_results_is_flagged_and_clean_ones_are_not() -> None:
    alerts = _run("V10")
    assert {a.site for a in alerts} == {"S9"}
    ev = alerts[-1].evidence
    assert ev["share_ratio"] > 3.0 and ev["p_value"] <= 0.001
    assert ev["near_limit_tests"] >= 5 and len(ev["near_limit_test_ids"]) == ev["near_limit_tests"]
    assert alerts[-1].test_id is None and alerts[-1].key == "V10|S9|station"
    assert "贴近限值" in alerts[-1].summary_zh


def test_clean_fleet_is_not_flagged() -> None:
    assert _run(None) == []


def test_binomial_tail() -> None:
    assert _binomial_tail(10, 0, 0.3) == 1.0
    assert _binomial_tail(10, 10, 0.5) == pytest.approx(0.5 ** 10)
    assert _binomial_tail(4, 2, 0.5) == pytest.approx(11 / 16)
