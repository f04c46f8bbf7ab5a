"""V7 shortened or spliced tests."""

from __future__ import annotations

import pytest
from vehicle_helpers import feed, lane_run, one_test, sites, strip_context

from ingest.detectors.v7 import ShortenedTestDetector


@pytest.mark.parametrize("method", ["idle", "asm5025", "vmas", "free_accel", "lug_down"])
def test_missing_seconds_in_a_scored_phase_are_flagged(method: str) -> None:
    samples, events = one_test(method, 2, "V7", {"variant": "gap", "seconds": 4})
    alerts = feed(ShortenedTestDetector(sites()), samples, events)
    assert len(alerts) == 1 and alerts[0].severity == "high"
    streams = [f for f in alerts[0].evidence["findings"] if f["check"] == "stream_count"]
    assert streams and all(f["missing_seconds"] == 4 for f in streams)
    assert all(f["gaps_in_scored_phase"] == 1 for f in streams)
    assert "缺失 4 秒" in alerts[0].summary_zh


def test_shortened_vmas_without_gaps_is_flagged_by_count() -> None:
    samples, events = one_test("vmas", 2, "V7", {"variant": "short", "seconds": 30})
    alerts = feed(ShortenedTestDetector(sites()), samples, events)
    assert len(alerts) == 1
    f = alerts[0].evidence["findings"]
    assert f == [{"check": "phase_count", "phase": "trace", "seconds": 165,
                  "expected_seconds": 195}]
    # Without lane context the count check still applies to a test guessed as VMAS.
    alerts = feed(ShortenedTestDetector(sites()), strip_context(samples), [])
    assert len(alerts) == 1 and alerts[0].evidence["method"] == "vmas"


def test_shortened_idle_phase_is_flagged() -> None:
    samples, events = one_test("idle", 2, "V7", {"variant": "short", "seconds": 10})
    alerts = feed(ShortenedTestDetector(sites()), samples, events)
    assert len(alerts) == 1
    (f,) = alerts[0].evidence["findings"]
    assert f["check"] == "phase_count" and f["seconds"] < 30


def test_complete_tests_are_not_flagged() -> None:
    methods = ["idle", "asm5025", "asm2540", "vmas", "free_accel", "lug_down"] * 2
    samples, events, _ = lane_run(methods, 4)
    assert feed(ShortenedTestDetector(sites()), samples, events) == []
    assert feed(ShortenedTestDetector(sites()), strip_context(samples), []) == []
