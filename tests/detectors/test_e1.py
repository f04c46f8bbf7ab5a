"""E1: station far below its neighbours (blocked/wetted sampler); PM2.5 above PM10."""

from __future__ import annotations

import random

from env_helpers import HOUR, T0, only, overlaps, run, series

from ingest.detectors.base import SiteInfo
from ingest.detectors.e1 import NeighbourDepressionDetector
from ingest.detectors.engine import DetectionEngine
from sim.air import air_network, air_sites
from sim.envpatterns import inject


def network(seed: int, days: int = 12) -> list:
    return list(air_network(T0, days * 24, 3600, random.Random(seed)))


def test_cotton_in_the_inlet_is_found_with_traceable_evidence():
    start, end = T0 + 9 * 86400 + 5 * HOUR, T0 + 9 * 86400 + 17 * HOUR
    recs = list(inject("E1", network(3), site="aq-2", kind="air_quality", start=start,
                       end=end, rng=random.Random(1), factor=0.4))
    hits = [a for a in only(run(air_sites(), recs, ["E1"]), "E1", "below_neighbours")
            if a.site == "aq-2" and overlaps(a, start, end)]
    assert len(hits) == 1
    a = hits[0]
    assert a.severity == "high"
    ev = a.evidence
    assert ev["signals"]["pm25_ugm3"]["below_expected_pct"] > 40
    assert set(ev["neighbours"]) == {"aq-1", "aq-3", "aq-4", "aq-5", "aq-6"}
    assert ev["origins"][0]["gateway"] == "gw-aq-2"
    assert "堵塞" in a.summary_zh and "neighbours" in a.summary_en


def test_clean_network_raises_no_neighbour_alert():
    assert only(run(air_sites(), network(3), ["E1"]), "E1", "below_neighbours") == []


def test_pm25_above_pm10_for_hours_is_a_low_alert():
    sites = {"A": SiteInfo("A", "air_quality", 39.9, 116.4)}

    def values(i: int, t: float) -> dict[str, float]:
        pm10 = 80.0 + i % 7
        return {"pm25_ugm3": pm10 * (1.4 if 20 <= i < 34 else 0.6), "pm10_ugm3": pm10}

    recs = list(series(values, 60, site_id="A"))
    alerts = only(run(sites, recs, ["E1"]), "E1", "pm25_above_pm10")
    assert [a.severity for a in alerts] == ["low"]
    assert alerts[0].evidence["hours"] == 14
    assert alerts[0].start == T0 + 20 * HOUR


def test_neighbours_default_to_nearby_air_stations():
    sites = {
        "a": SiteInfo("a", "air_quality", 39.90, 116.40),
        "b": SiteInfo("b", "air_quality", 39.95, 116.40),  # ~5.6 km
        "c": SiteInfo("c", "air_quality", 40.10, 116.40),  # ~22 km
        "far": SiteInfo("far", "air_quality", 41.90, 116.40),  # ~220 km
        "stack": SiteInfo("stack", "stack_cems", 39.91, 116.40),
        "listed": SiteInfo("listed", "air_quality", 39.90, 116.41, neighbours=["far"]),
    }
    det = NeighbourDepressionDetector(sites)
    assert det.neighbours["a"] == ["listed", "b", "c"]
    assert det.neighbours["listed"] == ["far"]
    assert det.neighbours["far"] == []


def test_a_station_whose_data_arrive_hours_late_is_still_judged():
    start, end = T0 + 9 * 86400 + 5 * HOUR, T0 + 9 * 86400 + 17 * HOUR
    recs = list(inject("E1", network(3), site="aq-2", kind="air_quality", start=start,
                       end=end, rng=random.Random(1), factor=0.4))
    # The service receives aq-2 three hours behind everyone else (per station in order).
    arrival = sorted(recs, key=lambda r: r.time + (3 * HOUR if r.site == "aq-2" else 0))
    eng = DetectionEngine(air_sites(), rules=["E1"])
    for r in arrival:
        eng.feed(r)
    eng.finish()
    hits = [u.alert for u in eng.alerts() if u.alert.site == "aq-2"
            and u.alert.evidence["finding"] == "below_neighbours" and overlaps(u.alert, start, end)]
    assert [a.severity for a in hits] == ["high"]
