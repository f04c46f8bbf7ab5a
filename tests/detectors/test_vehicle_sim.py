"""Physics of the vehicle lane simulator (sim/vehicle.py) that the detectors rely on."""

from __future__ import annotations

import random
import statistics

import pytest
from vehicle_helpers import T0, one_test, spec

from ingest.detectors.segments import second_of
from sim.vehicle import (
    DEFAULT_WEATHER,
    run_test,
    simulate_station_day,
    simulate_test,
    vmas_target,
)
from stationseal import vehicle_results as vres
from stationseal.records import EVENT_KINDS
from stationseal.signals import is_known


def _by(samples, instrument, phases=None):
    return [s for s in samples if s.instrument == instrument
            and (phases is None or s.test.phase in phases)]


@pytest.mark.parametrize("method", ["asm5025", "asm2540"])
def test_clean_asm_gases_and_dynamometer(method: str) -> None:
    samples, _events = one_test(method, 4)
    scored = _by(samples, "analyzer", vres.SCORED_PHASES)
    assert scored
    for s in scored:
        v = s.values
        assert 14.0 <= v["co_pct"] + v["co2_pct"] <= 16.0
        assert v["o2_pct"] < 1.0
        assert 0.97 <= v["lambda"] <= 1.03
        assert v["lambda"] == pytest.approx(
            vres.brettschneider(v["co2_pct"], v["co_pct"], v["o2_pct"], v["hc_ppm"]), abs=1e-3)
    dyno = _by(samples, "dyno")
    for s in dyno:
        v = s.values
        fv = v["force_n"] * v["speed_kmh"] / 3600.0
        if v["speed_kmh"] > 5:
            assert v["power_kw"] == pytest.approx(fv, rel=0.02)
    mode = [s.values["speed_kmh"] for s in _by(samples, "dyno", {"settle", "stable", "fast",
                                                                  "full"})]
    assert all(abs(v - vres.ASM_SPEED[method]) <= 1.5 for v in mode)


def test_vmas_follows_the_195_second_urban_cycle() -> None:
    samples, _events = one_test("vmas", 5)
    for instr in ("analyzer", "dyno", "flowmeter", "obd", "weather"):
        assert len(_by(samples, instr)) == 195, instr
    assert max(vmas_target(t) for t in range(195)) == 50.0
    dist_km = sum(s.values["speed_kmh"] for s in _by(samples, "dyno")) / 3600.0
    assert 0.9 < dist_km < 1.1  # the ECE-15 cycle covers about 1.01 km
    targets = [s.values["target_speed_kmh"] for s in _by(samples, "dyno")]
    assert targets[:11] == [0.0] * 11 and targets[143:155] == [50.0] * 12


def test_obd_reads_the_same_engine_but_never_bit_identically() -> None:
    samples, _ = one_test("vmas", 6)
    tach = {second_of(s.time): s.values["rpm"] for s in _by(samples, "analyzer")}
    obd = {second_of(s.time): s.values["obd_rpm"] for s in _by(samples, "obd")}
    pairs = [(tach[k], obd[k]) for k in tach if k in obd]
    assert statistics.fmean(abs(a - b) for a, b in pairs) < 40.0
    assert sum(a == b for a, b in pairs) / len(pairs) < 0.1
    speeds = {second_of(s.time): s.values["speed_kmh"] for s in _by(samples, "dyno")}
    obd_v = {second_of(s.time): s.values["obd_speed_kmh"] for s in _by(samples, "obd")}
    assert max(abs(speeds[k] - obd_v[k]) for k in speeds) < 2.5


def test_two_speed_idle_phases() -> None:
    samples, _events = one_test("idle", 7)
    hi = [s.values["rpm"] for s in _by(samples, "analyzer", {"high_idle"})]
    lo = [s.values["rpm"] for s in _by(samples, "analyzer", {"idle"})]
    assert len(hi) == 30 and len(lo) == 30
    assert all(2300 <= r <= 2700 for r in hi) and all(r < 1100 for r in lo)


def test_diesel_free_acceleration_and_lug_down() -> None:
    samples, events = one_test("free_accel", 8)
    opa = _by(samples, "opacimeter")
    assert len(opa) == 135
    ks = [s.values["k_m1"] for s in opa]
    peaks = [i for i in range(1, len(ks) - 1) if ks[i] > ks[i - 1] and ks[i] >= ks[i + 1]
             and ks[i] > 0.5 * max(ks)]
    assert len(peaks) == 7
    for s in opa:  # K is displayed at 0.01 /m, N at 0.1 %: N = 100 (1 - exp(-K L))
        assert s.values["opacity_pct"] == pytest.approx(vres.opacity_from_k(s.values["k_m1"]),
                                                        abs=0.35)
    samples, events = one_test("lug_down", 8)
    for ph in ("measure_100", "measure_80"):
        assert len(_by(samples, "dyno", {ph})) == 10
    assert "k_m1" in events[-1].detail["values"] and "nox_ppm" in events[-1].detail["values"]


def test_oil_temperature_and_weather_drift_with_sensor_noise() -> None:
    samples, _ = one_test("vmas", 9)
    oil = [s.values["oil_temp_c"] for s in _by(samples, "analyzer")]
    assert len(set(oil)) > 10 and max(oil) - min(oil) < 8.0
    temps = [s.values["ambient_temp_c"] for s in _by(samples, "weather")]
    assert len(set(temps)) > 1 and max(temps) - min(temps) < 2.0


def test_events_and_records_are_consistent() -> None:
    sp = spec("asm5025", 3, "X1", gateway="gw-7", seq_start=100)
    samples, events = simulate_test(sp, T0, random.Random(1))
    assert [e.event for e in events] == ["test_start", "test_end"]
    assert all(e.event in EVENT_KINDS for e in events)
    d = events[-1].detail
    for key in ("test_id", "method", "vehicle", "lane", "result", "vin", "calid", "cvn",
                "odometer_km", "model_group"):
        assert key in d
    assert d["result"] == vres.verdict("asm5025", d["values"])
    seqs = [events[0].origin[1]] + [s.origin[1] for s in samples] + [events[1].origin[1]]
    assert seqs == list(range(100, 100 + len(samples) + 2))
    assert all(s.origin[0] == "gw-7" for s in samples)
    assert [s.time for s in samples] == sorted(s.time for s in samples)
    assert all(is_known(k) for s in samples for k in s.values)
    assert all(s.test is not None and s.test.id == "X1" for s in samples)


def test_simulation_is_reproducible() -> None:
    a = run_test(spec("vmas", 2), T0, random.Random(5))
    b = run_test(spec("vmas", 2), T0, random.Random(5))
    assert [s.values for s in a.samples] == [s.values for s in b.samples]


def test_dirty_vehicles_fail_and_injections_are_validated() -> None:
    fails = [run_test(spec("asm5025", i, emission_factor=8.0), T0, random.Random(i)).result
             for i in range(5)]
    assert fails == ["fail"] * 5
    with pytest.raises(ValueError, match="does not apply"):
        run_test(spec("free_accel", 1), T0, random.Random(1), "V1")
    with pytest.raises(ValueError, match="unknown injection"):
        run_test(spec("idle", 1), T0, random.Random(1), "V11")
    with pytest.raises(ValueError, match="unknown method"):
        spec("ida", 1)


def test_station_day_labels_and_order() -> None:
    samples, events, labels = simulate_station_day("S1", ["L1", "L2"], T0, random.Random(3),
                                                   tests_per_lane=15, inject="V9")
    assert [s.time for s in samples] == sorted(s.time for s in samples)
    assert {s.instrument.split(".")[0] for s in samples} == {"L1", "L2"}
    ends = [e for e in events if e.event == "test_end"]
    assert len(ends) == 30
    assert len(labels) == 12 and {lb.rule for lb in labels} == {"V9"}
    assert len({lb.lane for lb in labels}) == 1
    labelled = {lb.test_id for lb in labels}
    weather = {(s.test.id, tuple(s.values.values())) for s in samples
               if s.instrument.endswith("weather") and s.test.id in labelled}
    assert len({w for _, w in weather}) == 1
    if labels[0].variant == "default":
        assert next(iter(weather))[1] == DEFAULT_WEATHER
