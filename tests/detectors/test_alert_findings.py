"""Alerts keep every distinct finding; an update never discards evidence."""

from __future__ import annotations

import json

from vehicle_helpers import T0, feed, one_test, sites

from ingest.detectors.base import Alert, Finding, origin_runs
from ingest.detectors.engine import DetectionEngine, merge_findings
from ingest.detectors.segments import second_of
from ingest.detectors.v2 import SimulatedEngineSignalDetector
from stationseal.records import Sample


def _alert(check: str, start: float, end: float, sev: str = "medium",
           origins: list[tuple[str, int]] | None = None) -> Alert:
    f = Finding(rule="V2", check=check, severity=sev, start=start, end=end,  # type: ignore[arg-type]
                summary_en=f"{check} en", summary_zh=f"{check} zh", values={"n": end - start},
                thresholds={"threshold_s": 60}, origins=origin_runs(origins or []))
    return Alert("V2", sev, "S1", "L1.lane", start, end, f"{check} en", f"{check} zh",  # type: ignore[arg-type]
                 {"check": check}, test_id="T1", findings=[f])


def test_two_findings_with_one_key_both_survive_the_merge():
    eng = DetectionEngine(sites(), rules=[])
    eng._merge([_alert("oil_constant", T0, T0 + 100, "medium", [("gw", 1), ("gw", 2)])], T0)
    [upd] = eng._merge([_alert("rpm_copied", T0, T0 + 120, "high", [("gw", 9)])], T0 + 1)
    checks = [f.check for f in upd.alert.findings]
    assert checks == ["oil_constant", "rpm_copied"]
    assert upd.alert.severity == "high"
    # the alert text names both findings, strongest first
    assert upd.alert.summary_en.startswith("rpm_copied en") and "oil_constant en" in \
        upd.alert.summary_en
    d = upd.to_json()
    assert [f["check"] for f in d["findings"]] == ["oil_constant", "rpm_copied"]
    assert d["findings"][0]["origins"] == [{"gateway": "gw", "first_seq": 1, "last_seq": 2,
                                            "count": 2}]
    json.dumps(d)  # machine-readable


def test_a_growing_finding_keeps_what_its_earlier_version_cited():
    eng = DetectionEngine(sites(), rules=[])
    eng._merge([_alert("oil_constant", T0, T0 + 60, "medium", [("gw", 1), ("gw", 2)])], T0)
    [upd] = eng._merge([_alert("oil_constant", T0 + 30, T0 + 200, "medium",
                               [("gw", 3), ("gw", 7)])], T0 + 5)
    [f] = upd.alert.findings
    assert (f.start, f.end, f.emissions) == (T0, T0 + 200, 2)
    assert f.origins == [{"gateway": "gw", "first_seq": 1, "last_seq": 3, "count": 3},
                         {"gateway": "gw", "first_seq": 7, "last_seq": 7, "count": 1}]
    # a later, weaker re-emission does not lower the finding's severity
    merged = merge_findings([f.merged_with(f)], [_alert("oil_constant", T0, T0 + 1,
                                                        "low").findings[0]])
    assert merged[0].severity == "medium"


def test_alerts_without_findings_get_one_from_their_evidence():
    eng = DetectionEngine(sites(), rules=[])
    a = Alert("E4", "high", "S1", "i1", T0, T0 + 10, "en", "zh",
              {"finding": "flat_line", "value": 3.0, "threshold_hours": 6,
               "origins": [{"gateway": "g", "first_seq": 4, "last_seq": 9, "count": 6}]})
    [upd] = eng._merge([a], T0)
    [f] = upd.alert.findings
    assert f.check == "flat_line" and f.values == {"finding": "flat_line", "value": 3.0}
    assert f.thresholds == {"threshold_hours": 6}
    assert f.origins[0]["first_seq"] == 4


def test_v2_oil_and_rpm_findings_on_one_test_are_one_alert_with_both():
    """Before: both V2 findings share the key V2|site|test and only the newer survived."""
    samples, events = one_test("vmas", seed=3)
    # Copy rpm from OBD and freeze the oil temperature in every second of the test.
    out: list[Sample] = []
    obd = {second_of(s.time): s.values["obd_rpm"] for s in samples if "obd_rpm" in s.values}
    for s in samples:
        v = dict(s.values)
        if "rpm" in v and second_of(s.time) in obd:
            v["rpm"] = obd[second_of(s.time)]
        if "oil_temp_c" in v:
            v["oil_temp_c"] = 88.0
        out.append(Sample(s.time, s.site, s.instrument, v, s.flags, s.test, s.origin))
    direct = feed(SimulatedEngineSignalDetector(sites(), {"min_vehicles": 1}), out, events)
    assert {a.evidence["check"] for a in direct} == {"oil_constant", "rpm_copied"}
    eng = DetectionEngine(sites(), {"V2": {"min_vehicles": 1}}, rules=["V2"])
    for r in sorted([*events, *out], key=lambda r: r.time):
        eng.feed(r)
    eng.finish()
    [a] = eng.alerts()
    assert {f.check for f in a.alert.findings} == {"oil_constant", "rpm_copied"}
    for f in a.alert.findings:
        assert f.rule == "V2" and f.test_id == a.alert.test_id and f.origins
        assert f.parameters["rpm_identical_share"] == 0.95
        assert f.thresholds


def test_integrity_alerts_are_not_falsification():
    from stationseal.records import SiteEvent

    eng = DetectionEngine(sites(), rules=["I-DROP"])
    ups = eng.feed(SiteEvent(T0, "S1", "gw", "data_dropped",
                             {"first_seq": 1, "last_seq": 5, "frames": 5, "readings": 50},
                             ("gw", 6)))
    assert ups and ups[0].alert.category == "integrity"
    assert ups[0].to_json()["findings"][0]["category"] == "integrity"
