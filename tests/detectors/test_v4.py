"""V4 same CALID/CVN across unrelated model groups."""

from __future__ import annotations

import random

from vehicle_helpers import T0, feed, sites

from ingest.detectors.v4 import SharedCalibrationDetector
from sim.vehicle import MODEL_BY_NAME, random_vehicle, run_test, spec_for


def _tests(groups: list[str], inject: bool) -> tuple[list, list]:
    rng = random.Random(4)
    samples, events, t = [], [], T0
    for i, g in enumerate(groups):
        v = random_vehicle(rng, MODEL_BY_NAME[g].fuel)
        v.model = MODEL_BY_NAME[g]
        v.calid, v.cvn = MODEL_BY_NAME[g].calibrations[0]
        out = run_test(spec_for(v, "idle", f"T{i}", site="S1"), t, rng,
                       "V4" if inject else None, {"calid": "CB12345678", "cvn": "DEADBEEF"})
        samples += out.samples
        events += out.events
        t = float(int(out.end + 60))
    return samples, events


def test_cheat_box_on_three_model_groups_is_flagged() -> None:
    samples, events = _tests(["G01", "G02", "G03", "G04"], inject=True)
    alerts = feed(SharedCalibrationDetector(sites()), samples, events)
    assert alerts, "three model groups share one CALID/CVN"
    last = alerts[-1]
    assert last.rule == "V4" and last.key == "V4|S1|CB12345678/DEADBEEF"
    assert last.evidence["model_groups"] == ["G01", "G02", "G03", "G04"]
    assert last.evidence["test_ids"] == ["T0", "T1", "T2", "T3"]
    assert last.evidence["event_origins"]
    assert "作弊器" in last.summary_zh


def test_two_groups_or_genuine_calibrations_are_not_flagged() -> None:
    samples, events = _tests(["G01", "G02", "G01", "G02"], inject=True)
    assert feed(SharedCalibrationDetector(sites()), samples, events) == []
    samples, events = _tests(["G01", "G02", "G03", "G04", "G05"], inject=False)
    assert feed(SharedCalibrationDetector(sites()), samples, events) == []
