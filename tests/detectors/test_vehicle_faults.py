"""Instrument failure is not falsification: dead, zero and saturated instruments on a lane."""

from __future__ import annotations

import dataclasses

from vehicle_helpers import lane_run, sites

from ingest.detectors.base import Alert
from ingest.detectors.engine import DetectionEngine
from stationseal.records import Sample

V_RULES = [f"V{i}" for i in range(1, 11)]


def run(samples: list[Sample], events, rules=(*V_RULES, "I-HEALTH")) -> list[Alert]:
    eng = DetectionEngine(sites(), rules=list(rules))
    for r in sorted([*events, *samples], key=lambda r: (r.time, hasattr(r, "values"))):
        eng.feed(r)
    eng.finish()
    return [u.alert for u in eng.alerts()]


def _with(samples: list[Sample], instrument: str, fn) -> list[Sample]:
    return [dataclasses.replace(s, values=fn(dict(s.values))) if s.instrument == instrument
            else s for s in samples]


def _zero(v: dict[str, float]) -> dict[str, float]:
    return dict.fromkeys(v, 0.0)


def test_a_dead_analyzer_and_weather_station_raise_faults_not_falsification():
    """Before: V1 'probe not in tailpipe' high and V2 'rpm copied' high on every test."""
    methods = ["idle", "asm5025", "vmas", "asm2540", "idle"]
    samples, events, ids = lane_run(methods, 21)
    dead = _with(_with(samples, "analyzer", _zero), "weather", _zero)
    dead = _with(dead, "obd", lambda v: {**v, "obd_rpm": 0.0})
    alerts = run(dead, events)
    accusing = [a for a in alerts if a.category == "falsification" and a.severity != "low"]
    assert accusing == [], [(a.rule, a.summary_en) for a in accusing]
    faults = [a for a in alerts if a.rule == "I-HEALTH"]
    assert {a.instrument for a in faults} >= {"analyzer", "weather"}
    assert all(a.category == "fault" for a in faults)
    analyzer = next(a for a in faults if a.instrument == "analyzer")
    assert analyzer.evidence["finding"] == "all_zero"
    assert analyzer.severity == "medium" and analyzer.evidence["consecutive_tests"] == len(ids)
    assert analyzer.findings[0].origins and analyzer.findings[0].category == "fault"


def test_v1_needs_oxygen_that_ambient_air_could_give():
    """CO+CO2 near 0 with O2 near 0 is no gas at all, not a probe in the open air."""
    samples, events, _ = lane_run(["idle", "asm5025", "vmas"], 22)
    nogas = _with(samples, "analyzer", lambda v: {**v, "co_pct": 0.0, "co2_pct": 0.2,
                                                  "o2_pct": 0.3, "hc_ppm": 0.0})
    alerts = run(nogas, events)
    assert not [a for a in alerts if a.rule == "V1"]
    assert {a.evidence["finding"] for a in alerts if a.rule == "I-HEALTH"} == {"no_gas"}
    # ... while ambient air in the probe is V1 (O2 at 20.8 %)
    air = _with(samples, "analyzer", lambda v: {**v, "co_pct": 0.0, "co2_pct": 0.05,
                                                "o2_pct": 20.8, "hc_ppm": 3.0})
    v1 = [a for a in run(air, events, ["V1"]) if a.rule == "V1"]
    assert len(v1) == 3 and all(a.severity == "high" for a in v1)


def test_an_oil_probe_at_its_full_scale_is_not_a_simulated_sensor():
    """Hot cars read the oil probe's 125 °C ceiling test after test: I-HEALTH, not V2."""
    samples, events, ids = lane_run(["vmas"] * 6, 23)
    pinned = _with(samples, "analyzer", lambda v: {**v, "oil_temp_c": 125.0}
                   if "oil_temp_c" in v else v)
    alerts = run(pinned, events)
    assert not [a for a in alerts if a.rule == "V2"]
    [f] = [a for a in alerts if a.rule == "I-HEALTH"]
    assert f.evidence["finding"] == "saturated" and f.evidence["consecutive_tests"] == 6
    # the same constant at a credible temperature across six cars is V2
    faked = _with(samples, "analyzer", lambda v: {**v, "oil_temp_c": 86.0}
                  if "oil_temp_c" in v else v)
    v2 = [a for a in run(faked, events) if a.rule == "V2"]
    assert sorted(a.test_id for a in v2) == sorted(ids) and {a.severity for a in v2} == {"high"}
