"""DetectionEngine: merging into updatable alerts, ordering, configuration errors."""

from __future__ import annotations

import pytest
from env_helpers import HOUR, T0, site

from ingest.detectors.engine import DetectionEngine, UnknownSiteError
from stationseal.records import Sample, SiteEvent

#: Judge flat lines on duration alone: these tests are about the engine, not E4's statistics.
E4 = {"E4": {"max_chance": 1.0}}


def flat(n: int, start: float = T0, value: float = 57.0) -> list[Sample]:
    return [Sample(start + i * HOUR, "S1", "i1", {"pm25_ugm3": value}, origin=("gw", i))
            for i in range(n)]


def test_a_growing_finding_is_one_alert_updated_in_place():
    eng = DetectionEngine(site(kind="air_quality"), E4, rules=["E4"])
    updates = []
    for s in flat(30):
        updates += eng.feed(s)
    updates += eng.finish()
    assert [u.is_new for u in updates] == [True, False, False]
    assert [u.alert.severity for u in updates] == ["medium", "high", "high"]
    assert len({u.id for u in updates}) == 1 and updates[0].id.endswith("#1")
    last = updates[-1]
    assert last.update_count == 2
    assert last.first_seen == T0 + 5 * HOUR and last.last_seen == T0 + 29 * HOUR
    assert last.alert.start == T0 and last.alert.end == T0 + 29 * HOUR
    d = last.to_json()
    assert d["first_seen"] == "2024-01-01T05:00:00.000Z" and d["update_count"] == 2
    [merged] = eng.alerts()
    assert merged.id == last.id and merged.update_count == 2 and not merged.is_new


def test_the_same_finding_much_later_is_a_new_alert():
    eng = DetectionEngine(site(kind="air_quality"), E4, rules=["E4"], merge_gap_s=HOUR)
    recs = flat(8) + [Sample(T0 + 8 * HOUR, "S1", "i1", {"pm25_ugm3": 1.0})] \
        + flat(8, start=T0 + 20 * HOUR, value=44.0)
    for r in recs:
        eng.feed(r)
    eng.finish()
    ids = [u.id for u in eng.alerts()]
    assert ids == ["E4|S1|i1|pm25_ugm3|flat#1", "E4|S1|i1|pm25_ugm3|flat#2"]


def test_reorder_buffer_sorts_backfill_and_counts_what_is_too_late():
    eng = DetectionEngine(site(kind="air_quality"), E4, rules=["E4"], reorder_s=3 * HOUR)
    recs = flat(12)
    order = recs[:4] + [recs[5], recs[4]] + recs[6:]
    for r in order:
        eng.feed(r)
    late = Sample(T0 + 1 * HOUR, "S1", "i1", {"pm25_ugm3": 57.0})
    eng.feed(late)
    eng.finish()
    assert eng.stats.late_samples == 1 and eng.late == {("S1", "i1"): 1}
    [a] = eng.alerts()
    assert a.alert.evidence["samples"] == 12


def test_unknown_site_and_bad_configuration_are_refused():
    eng = DetectionEngine(site(), rules=["E4"])
    with pytest.raises(UnknownSiteError, match="'X'"):
        eng.feed(Sample(T0, "X", "i1", {"so2_mgm3": 1.0}))
    with pytest.raises(ValueError, match="unknown rule"):
        DetectionEngine(site(), rules=["E99"])
    with pytest.raises(ValueError, match=r"E4\.window_hh: unknown parameter"):
        DetectionEngine(site(), {"E4": {"window_hh": 3}})
    with pytest.raises(ValueError, match=r"E4\.window_h: expected a number, got 'six'"):
        DetectionEngine(site(), {"E4": {"window_h": "six"}})
    with pytest.raises(ValueError, match="E77: unknown rule"):
        DetectionEngine(site(), {"E77": {}})


def test_rules_only_see_their_site_kinds():
    sites = {**site("A", kind="vehicle_inspection"), **site("B", kind="stack_cems")}
    eng = DetectionEngine(sites, rules=["E4", "I-DROP"])
    for s in flat(30):
        eng.feed(Sample(s.time, "A", "i1", s.values))
    eng.feed(SiteEvent(T0, "A", "gw", "data_dropped", {}))
    eng.finish()
    assert [u.alert.rule for u in eng.alerts()] == ["I-DROP"]
    assert eng.rules == ("E4", "I-DROP")


def test_a_service_engine_keeps_only_the_latest_alert_per_key():
    eng = DetectionEngine(site(kind="air_quality"), E4, rules=["E4"], merge_gap_s=HOUR,
                          keep_history=False)
    recs = flat(8) + [Sample(T0 + 8 * HOUR, "S1", "i1", {"pm25_ugm3": 1.0})] \
        + flat(8, start=T0 + 20 * HOUR, value=44.0)
    for r in recs:
        eng.feed(r)
    eng.finish()
    assert [u.id for u in eng.alerts()] == ["E4|S1|i1|pm25_ugm3|flat#2"]
