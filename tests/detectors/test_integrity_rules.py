"""Integrity rules I-*: events to alerts, raised during tests and exceedances."""

from __future__ import annotations

import pytest
from env_helpers import T0, run, site

from ingest.detectors.integrity import event_from_chain_issue, event_from_rejection
from stationseal.chain import ChainIssue
from stationseal.records import Sample, SiteEvent
from stationseal.records import TestContext as Ctx

CASES = [
    ("chain_gap", {"first_seq": 10, "last_seq": 19, "count": 10, "gateway": "gw-1"},
     "I-GAP", "medium"),
    ("chain_fork", {"gateway": "gw-1", "seq": 5}, "I-FORK", "high"),
    ("chain_sequence_reset", {"gateway": "gw-1", "seq": 5}, "I-FORK", "high"),
    ("chain_replay", {"gateway": "gw-1", "seq": 5}, "I-REPLAY", "medium"),
    ("bad_signature", {"gateway": "gw-1"}, "I-SIG", "high"),
    ("revoked_key", {"gateway": "gw-1"}, "I-SIG", "high"),
    ("data_dropped", {"first_seq": 1, "last_seq": 9, "frames": 9, "readings": 40},
     "I-DROP", "medium"),
    ("clock_jump", {"jump_s": 3600}, "I-CLOCK", "low"),
    ("calibration_change", {"signal": "span_coeff.so2_mgm3", "old": 1, "new": 1.02},
     "I-CAL", "low"),
    ("config_change", {"signal": "range.so2_mgm3", "old": 100, "new": 50}, "I-CAL", "low"),
    ("instrument_fault", {"error": "timeout"}, "I-OFFLINE", "low"),
    ("gateway_offline", {"error": "no frames for 300 s"}, "I-OFFLINE", "low"),
]
RULES = ["I-GAP", "I-FORK", "I-REPLAY", "I-SIG", "I-DROP", "I-CLOCK", "I-CAL", "I-OFFLINE"]


@pytest.mark.parametrize(("event", "detail", "rule", "severity"), CASES)
def test_each_event_maps_to_its_rule(event, detail, rule, severity):
    alerts = run(site(), [SiteEvent(T0, "S1", "i1", event, detail, ("gw-1", 42))], RULES)
    assert [(a.rule, a.severity) for a in alerts] == [(rule, severity)]
    a = alerts[0]
    assert a.summary_en and a.summary_zh and "?" not in a.summary_en.split(":")[0]
    assert a.evidence["detail"] == detail
    assert a.evidence["origins"][0]["first_seq"] == 42


def test_unrelated_events_are_not_alerts():
    evs = [SiteEvent(T0, "S1", "i1", "gateway_boot", {}),
           SiteEvent(T0, "S1", "i1", "instrument_recovered", {})]
    assert run(site(), evs, RULES) == []


def test_data_lost_during_a_vehicle_test_is_high_and_keyed_by_test():
    sites = site("L", kind="vehicle_inspection")
    recs = [SiteEvent(T0, "L", "lane1", "test_start", {"test_id": "T-77", "lane": "1"}),
            SiteEvent(T0 + 30, "L", "gw", "data_dropped", {"first_seq": 3, "last_seq": 4}),
            SiteEvent(T0 + 60, "L", "lane1", "test_end", {"test_id": "T-77", "lane": "1"}),
            SiteEvent(T0 + 90, "L", "gw", "data_dropped", {"first_seq": 8, "last_seq": 9})]
    alerts = run(sites, recs, ["I-DROP"])
    assert [(a.severity, a.test_id) for a in alerts] == [("high", "T-77"), ("medium", None)]
    assert "T-77" in alerts[0].summary_en and "T-77" in alerts[0].summary_zh


def test_samples_with_test_context_count_as_a_running_test():
    sites = site("L", kind="vehicle_inspection")
    s = Sample(T0, "L", "analyzer", {"co_pct": 0.1}, test=Ctx("T-9", "asm5025"))
    ev = SiteEvent(T0 + 5, "L", "analyzer", "instrument_fault", {"error": "no reply"})
    alerts = run(sites, [s, ev], ["I-OFFLINE"])
    assert [(a.severity, a.test_id) for a in alerts] == [("high", "T-9")]


def test_fault_during_an_exceedance_is_high():
    sites = site(limits={"so2_mgm3": 35.0})
    s = Sample(T0, "S1", "cems", {"so2_mgm3": 61.0, "flow_m3h": 9e5})
    ev = SiteEvent(T0 + 600, "S1", "cems", "instrument_fault", {"error": "power"})
    alerts = run(sites, [s, ev], ["I-OFFLINE"])
    assert alerts[0].severity == "high"
    assert alerts[0].evidence["during"]["exceedance"] == {
        "signal": "so2_mgm3", "value": 61.0, "limit": 35.0, "time": "2024-01-01T00:00:00.000Z"}


def test_event_builders_for_the_ingest_service():
    e = event_from_chain_issue(ChainIssue("gap", "gw-7", 11, {"first_seq": 11, "last_seq": 12,
                                                                 "count": 2}), "S1", T0)
    assert (e.event, e.instrument, e.origin) == ("chain_gap", "gw-7", ("gw-7", 11))
    r = event_from_rejection("unknown_key", "gw-7", "S1", T0, {"key_id": "k1"})
    assert r.event == "unknown_key" and r.detail == {"gateway": "gw-7", "key_id": "k1"}
    assert [a.rule for a in run(site(), [e, r], RULES)] == ["I-GAP", "I-SIG"]
