"""V9 default or constant weather."""

from __future__ import annotations

import random

from vehicle_helpers import T0, feed, lane_run, one_test, sites

from ingest.detectors.base import SiteInfo
from ingest.detectors.v9 import ConstantWeatherDetector
from sim.vehicle import random_vehicle, run_test, spec_for


def test_software_default_weather_is_flagged_per_test() -> None:
    samples, events = one_test("asm5025", 2, "V9", {"values": (25.0, 80.0, 101.0)})
    alerts = feed(ConstantWeatherDetector(sites()), samples, events)
    assert len(alerts) == 1 and alerts[0].evidence["check"] == "software_default"
    assert "默认值" in alerts[0].summary_zh


def test_frozen_weather_over_ten_tests_flags_every_test_of_the_run() -> None:
    frozen = {"values": (13.4, 52.1, 100.87)}
    samples, events, ids = lane_run(["idle", "vmas", "asm5025"] * 4, 3, "V9", frozen)
    alerts = feed(ConstantWeatherDetector(sites()), samples, events)
    assert sorted(a.test_id for a in alerts) == sorted(ids)
    assert alerts[-1].evidence["tests"] == 12
    assert all(a.evidence["check"] == "identical_over_tests" for a in alerts)


def test_nine_frozen_tests_are_below_the_threshold() -> None:
    frozen = {"values": (13.4, 52.1, 100.87)}
    samples, events, _ = lane_run(["idle"] * 9, 3, "V9", frozen)
    assert feed(ConstantWeatherDetector(sites()), samples, events) == []


def test_real_weather_is_not_flagged() -> None:
    samples, events, _ = lane_run(["idle", "vmas", "asm5025", "free_accel"] * 4, 3)
    assert feed(ConstantWeatherDetector(sites()), samples, events) == []


def test_weather_far_from_the_neighbours_is_flagged() -> None:
    rng = random.Random(1)
    samples, events = [], []
    for site, temp in (("N1", 10.0), ("N2", 10.6), ("S1", 18.5)):
        sp = spec_for(random_vehicle(rng, "gasoline"), "idle", f"{site}-T", site=site,
                      ambient_temp_c=temp)
        out = run_test(sp, T0 + (300 if site == "S1" else 0), rng)
        samples += out.samples
        events += out.events
    cfg = {"N1": SiteInfo("N1", "vehicle_inspection"), "N2": SiteInfo("N2", "vehicle_inspection"),
           "S1": SiteInfo("S1", "vehicle_inspection", neighbours=["N1", "N2"])}
    alerts = feed(ConstantWeatherDetector(cfg), samples, events)
    assert [a.site for a in alerts] == ["S1"]
    assert alerts[0].evidence["check"] == "neighbours"
    assert alerts[0].evidence["temp_c"] - alerts[0].evidence["neighbour_temp_c"] > 5.0
