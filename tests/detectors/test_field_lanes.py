"""The independent lane-recording generator (sim/field_lanes.py) and its evaluation."""

from __future__ import annotations

from collections import Counter

from benchmarks.detect_eval_vehicle import run, score
from sim.field_lanes import RULES, VENDORS, generate


def test_generator_plants_every_rule_and_faults_on_varied_lane_software():
    rec = generate(seed=3, clean=1, faulty=2, per_rule=1, tests_per_lane=14)
    assert set(Counter(lb.rule for lb in rec.labels)) == set(RULES)
    assert sum(r == "faulty" for r in rec.roles.values()) == 2
    # lane programs differ in ids, rates and context; some send no context at all
    instruments = {s.instrument.split(".", 1)[1] for s in rec.samples}
    assert len(instruments) >= 6
    assert any(s.test is None for s in rec.samples) and any(s.test for s in rec.samples)
    assert {v.context for v in VENDORS} == {"full", "no_phase", "events", "none"}
    # same seed, same recording
    again = generate(seed=3, clean=1, faulty=2, per_rule=1, tests_per_lane=14)
    assert [s.values for s in again.samples[:500]] == [s.values for s in rec.samples[:500]]


def test_detectors_on_a_small_independent_recording():
    rec = generate(seed=4, clean=1, faulty=3, per_rule=1, tests_per_lane=14)
    res = score(rec, run(rec))
    assert res["falsification_alerts_on_faulty_clean"] == 0
    assert res["falsification_alerts_on_clean"] == 0
    assert res["fault_alerts_on_faulty_stations"] >= 1
    found = {r for r, row in res["rules"].items() if row["medium"]["detected"]}
    assert len(found) >= 8, res["rules"]
