"""V7 shortened or spliced tests."""

from __future__ import annotations

import dataclasses

import pytest
from vehicle_helpers import feed, lane_run, one_test, sites, strip_context

from ingest.detectors.base import SiteInfo
from ingest.detectors.v7 import ShortenedTestDetector
from stationseal.records import Sample


def _findings(alert, check: str) -> list[dict]:
    return [f for f in alert.evidence["findings"] if f["check"] == check]


@pytest.mark.parametrize("method", ["idle", "asm5025", "vmas", "free_accel", "lug_down"])
def test_missing_seconds_in_a_scored_phase_are_flagged(method: str) -> None:
    samples, events = one_test(method, 2, "V7", {"variant": "gap", "seconds": 4})
    alerts = feed(ShortenedTestDetector(sites()), samples, events)
    assert len(alerts) == 1 and alerts[0].severity == "high"
    [gap] = _findings(alerts[0], "gap")
    assert gap["corroborated"] and len(gap["streams"]) >= 2
    assert gap["missing_seconds"] == pytest.approx(4, abs=0.5) and gap["in_scored_phase"]
    assert "缺失 4 秒" in alerts[0].summary_zh
    assert alerts[0].findings[0].check == "gap"


def test_shortened_vmas_without_gaps_is_flagged_by_duration() -> None:
    samples, events = one_test("vmas", 2, "V7", {"variant": "short", "seconds": 30})
    alerts = feed(ShortenedTestDetector(sites()), samples, events)
    assert len(alerts) == 1 and alerts[0].severity == "high"
    [f] = alerts[0].evidence["findings"]
    assert (f["check"], f["phase"], f["seconds"], f["expected_seconds"]) == \
        ("phase_short", "trace", 165, 195)
    # Without lane context the duration check still applies to a test guessed as VMAS.
    alerts = feed(ShortenedTestDetector(sites()), strip_context(samples), [])
    assert len(alerts) == 1 and alerts[0].evidence["method"] == "vmas"
    assert alerts[0].severity == "medium"


def test_shortened_idle_phase_is_flagged() -> None:
    samples, events = one_test("idle", 2, "V7", {"variant": "short", "seconds": 10})
    alerts = feed(ShortenedTestDetector(sites()), samples, events)
    assert len(alerts) == 1
    (f,) = alerts[0].evidence["findings"]
    assert f["check"] == "phase_short" and f["seconds"] < 30


def test_complete_tests_are_not_flagged() -> None:
    methods = ["idle", "asm5025", "asm2540", "vmas", "free_accel", "lug_down"] * 2
    samples, events, _ = lane_run(methods, 4)
    assert feed(ShortenedTestDetector(sites()), samples, events) == []
    assert feed(ShortenedTestDetector(sites()), strip_context(samples), []) == []


def _every(samples: list[Sample], instrument: str, step: int) -> list[Sample]:
    """The instrument reports every ``step`` seconds instead of every second."""
    out: list[Sample] = []
    k = 0
    for s in samples:
        if s.instrument == instrument:
            k += 1
            if k % step:
                continue
        out.append(s)
    return out


def test_a_weather_station_reporting_every_5_s_is_not_a_shortened_test() -> None:
    """Before: every test of the day was V7 high (the 5 s spacing counted as gaps)."""
    methods = ["idle", "asm5025", "vmas", "free_accel", "lug_down"]
    samples, events, _ = lane_run(methods, 5)
    slow = _every(samples, "weather", 5)
    assert feed(ShortenedTestDetector(sites()), slow, events) == []
    # ... and a real cut still shows in the 1 Hz streams
    cut, ev = one_test("idle", 2, "V7", {"variant": "gap", "seconds": 6})
    [a] = feed(ShortenedTestDetector(sites()), _every(cut, "weather", 5), ev)
    assert a.severity == "high"


def test_configured_interval_is_used_for_a_stream() -> None:
    samples, events = one_test("vmas", 7)
    slow = _every(samples, "weather", 5)
    cfg = {"S1": SiteInfo("S1", "vehicle_inspection", sample_interval_s={"weather": 5.0})}
    assert feed(ShortenedTestDetector(cfg), slow, events) == []
    # configured at 1 s, the 5 s weather stream is missing seconds but nothing corroborates
    cfg1 = {"S1": SiteInfo("S1", "vehicle_inspection", sample_interval_s={"weather": 1.0})}
    [a] = feed(ShortenedTestDetector(cfg1), slow, events)
    assert a.severity == "low"


def test_one_second_timer_slips_are_not_cuts() -> None:
    """Lane software whose timer slips a second (2 s spacing, then two samples in one
    second) has not shortened anything."""
    samples, events = one_test("idle", 3)
    slipped: list[Sample] = []
    for s in samples:
        t = s.time
        if int(t - samples[0].time) % 17 == 5:
            t += 1.0  # this second's poll came late, the next one on time
        slipped.append(dataclasses.replace(s, time=t))
    assert feed(ShortenedTestDetector(sites()), slipped, events) == []


def test_free_acceleration_without_phase_labels_is_not_judged_on_phase_duration() -> None:
    """Before: the inferred 'measure' phase was compared with 57 s and flagged."""
    samples, events = one_test("free_accel", 4)
    unlabelled = [dataclasses.replace(s, test=dataclasses.replace(s.test, phase=""))
                  if s.test else s for s in samples]
    assert feed(ShortenedTestDetector(sites()), unlabelled, events) == []
    idle, ev = one_test("idle", 4)
    idle = [dataclasses.replace(s, test=dataclasses.replace(s.test, phase="")) for s in idle]
    assert feed(ShortenedTestDetector(sites()), idle, ev) == []


def test_a_gap_in_one_stream_while_the_others_report_is_low() -> None:
    samples, events = one_test("vmas", 8)
    t0 = samples[0].time
    lossy = [s for s in samples if not (s.instrument == "obd" and 60 <= s.time - t0 < 70)]
    [a] = feed(ShortenedTestDetector(sites()), lossy, events)
    assert a.severity == "low"
    [g] = _findings(a, "gap")
    assert g["streams"] == ["obd"] and not g["corroborated"] and len(g["covering_streams"]) > 1
