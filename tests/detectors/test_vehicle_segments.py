"""Test assembly and inference (ingest/detectors/segments.py)."""

from __future__ import annotations

import random

import pytest
from vehicle_helpers import T0, lane_run, strip_context

from ingest.detectors import segments
from sim.vehicle import simulate_station_day
from stationseal.records import Sample


def _assemble(asm: segments.TestAssembler, records) -> list[segments.TestRecord]:
    out = []
    for r in records:
        out += asm.on_sample(r) if isinstance(r, Sample) else asm.on_event(r)
    return out + asm.finish()


def _ordered(samples, events):
    recs = [(e.time, 0, e) for e in events] + [(s.time, 1, s) for s in samples]
    return [r for _, _, r in sorted(recs, key=lambda x: (x[0], x[1]))]


METHODS = ["idle", "asm5025", "asm2540", "vmas", "free_accel", "lug_down"]


def test_tests_are_assembled_from_context() -> None:
    samples, events, ids = lane_run(METHODS, 3)
    tests = _assemble(segments.TestAssembler(), _ordered(samples, events))
    assert [t.id for t in tests] == ids
    assert [t.method for t in tests] == METHODS
    assert sum(len(t.samples) for t in tests) == len(samples)
    assert all(t.result in ("pass", "fail") and not t.inferred for t in tests)
    assert all(len(t.event_origins) == 2 for t in tests)


def test_events_ahead_of_samples_do_not_cut_tests() -> None:
    """A service releases samples late (reordering) while events pass straight through."""
    samples, events, ids = lane_run(METHODS, 3)
    asm = segments.TestAssembler()
    recs = sorted([(e.time - 120.0, 0, e) for e in events] + [(s.time, 1, s) for s in samples],
                  key=lambda x: (x[0], x[1]))
    tests = _assemble(asm, [r for _, _, r in recs])
    assert [t.id for t in tests] == ids
    assert sum(len(t.samples) for t in tests) == len(samples) and asm.late == 0


@pytest.mark.parametrize("with_events", [False, True])
def test_without_sample_context_tests_and_methods_are_inferred(with_events: bool) -> None:
    samples, events, ids = lane_run(METHODS * 2, 5)
    tests = _assemble(segments.TestAssembler(),
                      _ordered(strip_context(samples), events if with_events else []))
    assert len(tests) == len(ids)
    assert [t.method for t in tests] == METHODS * 2
    assert sum(len(t.samples) for t in tests) == len(samples)
    if with_events:  # the lane's events name the tests the signals delimited
        assert [t.id for t in tests] == ids and not any(t.inferred for t in tests)
    else:
        assert all(t.inferred for t in tests)
    scored = {t.method: len(t.scored()) for t in tests}
    assert scored["vmas"] == 195
    assert scored["idle"] == 60


def test_inferred_results_match_the_lane() -> None:
    samples, events, _ = lane_run(METHODS, 6)
    ctx = _assemble(segments.TestAssembler(), _ordered(samples, events))
    inf = _assemble(segments.TestAssembler(), _ordered(strip_context(samples), []))
    for a, b in zip(ctx, inf, strict=True):
        ra, rb = a.results(), b.results()
        assert ra.keys() == rb.keys()
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=0.1, abs=0.02), (a.method, k)


def test_two_lanes_of_a_station_stay_apart() -> None:
    samples, events, _ = simulate_station_day("S1", ["L1", "L2"], T0, random.Random(4),
                                              tests_per_lane=8)
    tests = _assemble(segments.TestAssembler(), _ordered(samples, events))
    assert len(tests) == 16
    for t in tests:
        assert {s.instrument.split(".")[0] for s in t.samples} == {t.lane}
    inferred = _assemble(segments.TestAssembler(), _ordered(strip_context(samples), []))
    assert len(inferred) == 16 and {t.lane for t in inferred} == {"L1", "L2"}


def test_pearson() -> None:
    assert segments.pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert segments.pearson([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    assert segments.pearson([1, 1, 1], [1, 2, 3]) is None
    assert segments.pearson([1e6 + 1, 1e6 + 2, 1e6 + 4], [1, 2, 4]) == pytest.approx(1.0)
