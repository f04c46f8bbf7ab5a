"""V6 substitute vehicle / replayed curves and quick fail→pass."""

from __future__ import annotations

import random

import pytest
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


def _lane(methods: list[str], seed: int) -> tuple[list, list, list[str]]:
    from vehicle_helpers import lane_run

    return lane_run(methods, seed, gap_s=90.0)


def _copy_test(samples, events, src_id: str, new_id: str, plate: str, t_new: float,
               fn=None) -> tuple[list, list]:
    """Replay test ``src_id`` at ``t_new`` as test ``new_id`` of another plate; ``fn``
    may alter each copied sample's values (re-quantization, jitter, bottled gas)."""
    import dataclasses

    src = [s for s in samples if s.test and s.test.id == src_id]
    t0 = min(s.time for s in src)
    t_new = t0 + round(t_new - t0)  # whole seconds: the lane's clock keeps its phase
    out = []
    for k, s in enumerate(src):
        values = fn(k, s.instrument, dict(s.values)) if fn else dict(s.values)
        ctx = dataclasses.replace(s.test, id=new_id, vehicle=plate)
        out.append(dataclasses.replace(s, time=t_new + (s.time - t0), values=values, test=ctx))
    evs = []
    for e in events:
        if e.detail.get("test_id") == src_id:
            d = {**e.detail, "test_id": new_id, "vehicle": plate, "vin": "LREPLAY" + new_id}
            evs.append(dataclasses.replace(e, time=t_new + (e.time - t0), detail=d))
    return out, evs


@pytest.mark.parametrize("method", ["asm5025", "idle", "lug_down", "asm2540"])
def test_replayed_steady_state_tests_are_flagged(method: str) -> None:
    """Before: only VMAS curves were compared; steady-state replays went unflagged."""
    samples, events, ids = _lane([method] * 4, 31)
    t_end = max(s.time for s in samples) + 300.0
    rep, rev = _copy_test(samples, events, ids[1], "REPLAY", "京A00001", t_end)
    # near-identical: re-quantized, with one least-significant digit of jitter now and then
    rng = random.Random(4)

    def jitter(k: int, instr: str, v: dict) -> dict:
        return {n: (x + (0.01 if rng.random() < 0.2 else 0.0)) if n == "co2_pct" else x
                for n, x in v.items()}

    near, nev = _copy_test(samples, events, ids[2], "NEAR", "京A00002", t_end + 600.0, jitter)
    alerts = feed(SubstituteVehicleDetector(sites()), samples + rep + near, events + rev + nev)
    by = {a.test_id: a for a in alerts if a.evidence.get("check") == "curves"}
    assert set(by) == {"REPLAY", "NEAR"}
    assert by["REPLAY"].evidence["by"] == "identical" and by["REPLAY"].severity == "high"
    assert ids[1] in by["REPLAY"].evidence["test_ids"]
    assert by["NEAR"].evidence["by"] in ("identical", "replay") and ids[2] in \
        by["NEAR"].evidence["test_ids"]


def test_standard_gas_for_several_vehicles_is_flagged() -> None:
    """A bottle of span gas held to the probe: flat levels no engine gives, shared."""
    samples, events, ids = _lane(["asm5025"] * 6, 32)
    rng = random.Random(9)
    bottle = {"co_pct": 0.50, "co2_pct": 6.00, "hc_ppm": 200.0, "no_ppm": 300.0, "o2_pct": 0.0}
    gas_ids = set(ids[3:])

    def bottled(v: dict) -> dict:
        out = dict(v)
        for k, lvl in bottle.items():
            if k in out:
                step = 1.0 if k.endswith("ppm") else 0.01
                out[k] = round((lvl + rng.gauss(0, 2 * step)) / step) * step
        return out

    import dataclasses

    gassed = [dataclasses.replace(s, values=bottled(s.values))
              if s.test and s.test.id in gas_ids and s.instrument == "analyzer" else s
              for s in samples]
    alerts = [a for a in feed(SubstituteVehicleDetector(sites()), gassed, events)
              if a.evidence.get("check") == "curves"]
    named = {t for a in alerts for t in a.evidence["test_ids"]}
    assert named == gas_ids
    assert all(a.evidence["by"] == "level" and a.severity == "high" for a in alerts)
    assert all(m["non_combustion_gas"] for a in alerts
               for m in a.evidence["matched_tests"].values())


def test_different_cars_in_steady_state_are_not_flagged() -> None:
    samples, events, _ = _lane(["asm5025", "idle", "lug_down", "asm2540"] * 8, 33)
    alerts = feed(SubstituteVehicleDetector(sites()), samples, events)
    assert [a for a in alerts if a.evidence.get("check") == "curves"] == []
