"""V6 substitute vehicle / replayed curves and quick fail→pass."""

from __future__ import annotations

import random

from vehicle_helpers import T0, feed, sites, spec

from ingest.detectors.v6 import SubstituteVehicleDetector
from sim.vehicle import random_vehicle, run_test, spec_for


def _replays(n: int, seed: int) -> tuple[list, list, list[str]]:
    rng = random.Random(seed)
    src = spec("vmas", seed, "SRC", emission_factor=1.0)
    samples, events, ids, t = [], [], [], T0
    for i in range(n):
        sp = spec_for(random_vehicle(rng, "gasoline"), "vmas", f"R{i}", site="S1",
                      run_seed=rng.getrandbits(31))
        out = run_test(sp, t, rng, "V6" if i else None, {"source": src} if i else None)
        if i == 0:
            out = run_test(src, t, rng)
        samples += out.samples
        events += out.events
        ids.append(out.events[0].detail["test_id"])
        t = float(int(out.end + 150))
    return samples, events, ids


def test_same_run_under_other_plates_is_flagged() -> None:
    samples, events, ids = _replays(3, 8)
    alerts = feed(SubstituteVehicleDetector(sites()), samples, events)
    named = set()
    for a in alerts:
        assert a.rule == "V6" and a.evidence["check"] == "curves"
        named |= set(a.evidence["test_ids"])
    assert named == set(ids)
    assert len(alerts) == 2  # the 2nd matches the 1st, the 3rd matches both
    assert "替车" in alerts[0].summary_zh


def test_different_cars_on_the_same_trace_are_not_flagged() -> None:
    rng = random.Random(3)
    samples, events, t = [], [], T0
    for i in range(12):
        sp = spec_for(random_vehicle(rng, "gasoline"), "vmas", f"C{i}", site="S1",
                      run_seed=rng.getrandbits(31))
        out = run_test(sp, t, rng)
        samples += out.samples
        events += out.events
        t = float(int(out.end + 150))
    assert feed(SubstituteVehicleDetector(sites()), samples, events) == []


def _fail_then_pass(minutes: float) -> list:
    rng = random.Random(5)
    v = random_vehicle(rng, "gasoline")
    v.emission_factor = 8.0
    first = run_test(spec_for(v, "asm5025", "F1", site="S1"), T0, rng)
    assert first.result == "fail"
    v.emission_factor = 0.3
    second = run_test(spec_for(v, "asm5025", "F2", site="S1"),
                      float(int(first.end + 60 * minutes)), rng)
    assert second.result == "pass"
    return feed(SubstituteVehicleDetector(sites()), first.samples + second.samples,
                first.events + second.events)


def test_pass_minutes_after_a_fail_is_flagged() -> None:
    alerts = _fail_then_pass(8)
    assert len(alerts) == 1
    ev = alerts[0].evidence
    assert ev["check"] == "fail_then_pass" and ev["test_ids"] == ["F1", "F2"]
    assert 7.5 < ev["minutes"] < 9.5


def test_pass_hours_after_a_fail_is_a_repair() -> None:
    assert _fail_then_pass(120) == []
