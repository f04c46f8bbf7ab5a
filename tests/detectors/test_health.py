"""Instrument health (ingest/detectors/health.py): faults told apart from falsification."""

from __future__ import annotations

import pytest

from ingest.detectors import health
from ingest.detectors.health import CeilingTracker, HealthBook, assess
from stationseal.records import Sample, SiteEvent

T0 = 1_767_225_600.0


def rows(instrument: str, values: list[dict[str, float]], flags: list[dict[str, str]] | None
         = None, step: float = 1.0) -> list[Sample]:
    return [Sample(T0 + i * step, "S1", instrument, v, (flags or [{}] * len(values))[i],
                   origin=("gw", 100 + i)) for i, v in enumerate(values)]


def kinds(faults: list[health.Fault]) -> set[str]:
    return {f.kind for f in faults}


def test_a_dead_analyzer_and_a_dead_weather_station_are_all_zero():
    zeros = rows("L1.analyzer", [{"o2_pct": 0.0, "co2_pct": 0.0, "co_pct": 0.0,
                                  "hc_ppm": 0.0, "rpm": 0.0}] * 20)
    [f] = assess("S1", "L1.analyzer", zeros)
    assert f.kind == "all_zero" and f.signals == ("*",) and f.samples == 20
    assert f.affects("co2_pct") and f.origins[0] == ("gw", 100)
    weather = rows("L1.weather", [{"ambient_temp_c": 0.0, "ambient_rh_pct": 0.0,
                                   "ambient_kpa": 0.0}] * 5, step=5.0)
    assert kinds(assess("S1", "L1.weather", weather)) == {"all_zero"}
    # a dynamometer at rest reads zeros and is healthy
    dyno = rows("L1.dyno", [{"speed_kmh": 0.0, "power_kw": 0.0, "force_n": 0.0}] * 20)
    assert assess("S1", "L1.dyno", dyno) == []
    # two zero rows are not yet a run
    assert assess("S1", "L1.analyzer", zeros[:2]) == []


def test_impossible_values_and_sampling_no_gas():
    vals = [{"o2_pct": 20.8, "co2_pct": 0.05}] * 5 + [{"o2_pct": 23.5, "co2_pct": 0.0}]
    faults = assess("S1", "a", rows("a", vals))
    assert kinds(faults) == {"impossible"} and faults[0].detail["range"] == [-0.5, 22.0]
    # probe in ambient air is possible; O2 and carbon both ~0 is not gas at all
    assert health.gas_possible({"o2_pct": 20.7, "co2_pct": 0.04}) is True
    assert health.gas_possible({"o2_pct": 0.3, "co2_pct": 14.8, "co_pct": 0.4}) is True
    assert health.gas_possible({"o2_pct": 0.1, "co2_pct": 0.3}) is False
    assert health.gas_possible({"co2_pct": 0.3}) is None
    nogas = rows("a", [{"o2_pct": 0.1, "co2_pct": 0.3, "co_pct": 0.01}] * 4)
    assert kinds(assess("S1", "a", nogas)) == {"no_gas"}


def test_air_dilution_consistency_both_sides():
    # probe half out: CO+CO2 7.5 % -> O2 about 10 %
    assert health.air_dilution_consistent(7.5, 10.2)
    assert not health.air_dilution_consistent(7.5, 2.0)
    # probe fully out: ambient air
    assert health.air_dilution_consistent(0.1, 20.8)
    assert not health.air_dilution_consistent(0.0, 0.0)
    assert not health.air_dilution_consistent(0.0, 23.0)


def test_zero_on_a_signal_that_cannot_be_zero():
    vals = [{"oil_temp_c": 0.0, "rpm": 820.0 + i} for i in range(12)]
    [f] = assess("S1", "a", rows("a", vals))
    assert f.kind == "zero" and f.signals == ("oil_temp_c",)


def test_saturation_learned_from_the_clipping_signature_and_outside_plausible_range():
    key = "S1/L1/"
    pinned = rows("a", [{"oil_temp_c": 118.0}] * 30)
    ceil = CeilingTracker()
    # earlier cars: real oil temperatures, some just below a sensor ceiling at 118 °C,
    # two hot cars read the ceiling throughout
    for test in ([88.1, 88.2, 88.2], [113.2, 115.9, 116.4], [117.1, 117.4, 116.9],
                 [118.0] * 40):
        ceil.observe(key + "oil_temp_c", test)
    assert not ceil.is_limit(key + "oil_temp_c", 118.0)  # one episode is not yet a ceiling
    ceil.observe(key + "oil_temp_c", [118.0] * 40)
    # ... nor two, until the stream is once seen running into it (not a switched-in value)
    assert not ceil.is_limit(key + "oil_temp_c", 118.0)
    ceil.observe(key + "oil_temp_c", [117.5, 117.8] + [118.0] * 30)
    [f] = assess("S1", "a", pinned, ceilings=ceil, stream_key=key)
    assert f.kind == "saturated" and f.detail["ceiling"] == 118.0
    ceil.observe(key + "oil_temp_c", [118.5])  # the stream goes beyond: no ceiling there
    assert assess("S1", "a", pinned, ceilings=ceil, stream_key=key) == []
    # a credible constant with nothing approaching it is not a fault (V2 judges it)
    ceil2 = CeilingTracker()
    for _ in range(5):
        ceil2.observe(key + "oil_temp_c", [88.0] * 200)
    assert assess("S1", "a", rows("a", [{"oil_temp_c": 88.0}] * 30), ceilings=ceil2,
                  stream_key=key) == []
    # a slowly rising reading at its running maximum is no point mass
    ceil3 = CeilingTracker()
    for k in range(4):
        ceil3.observe(key + "t", [19.0 + 0.1 * i for i in range(13)] + [20.3] * (1 + k % 2))
    assert not ceil3.is_limit(key + "t", 20.3)
    # a constant no engine oil reaches at an inspection is a clipped or stuck sensor
    [g] = assess("S1", "a", rows("a", [{"oil_temp_c": 150.0}] * 10))
    assert g.kind == "saturated" and g.detail["plausible_range"] == [10.0, 120.0]


def test_health_book_streams_faults_from_values_flags_and_events():
    book = HealthBook()
    for s in rows("i1", [{"so2_mgm3": 10.0 + i} for i in range(5)]):
        book.on_sample(s)
    for s in rows("i1", [{"so2_mgm3": 3.0}] * 4, flags=[{"so2_mgm3": "D"}] * 4)[:4]:
        s.time += 10
        book.on_sample(s)
    book.on_sample(Sample(T0 + 20, "S1", "i1", {"so2_mgm3": 12.0}))
    [f] = book.faults_during("S1", "i1", T0, T0 + 100)
    assert (f.kind, f.signals, f.samples) == ("flagged", ("so2_mgm3",), 4)
    assert book.healthy("S1", "i1", T0, T0 + 5)
    assert not book.healthy("S1", "i1", T0 + 9, T0 + 11, "so2_mgm3")
    assert book.healthy("S1", "i1", T0 + 9, T0 + 11, "nox_mgm3")
    # a gateway event opens a fault on the whole instrument until recovery
    book.on_event(SiteEvent(T0 + 100, "S1", "i1", "instrument_fault", {"error": "timeout"}))
    assert not book.healthy("S1", "i1", T0 + 150, T0 + 160, "nox_mgm3")
    book.on_event(SiteEvent(T0 + 200, "S1", "i1", "instrument_recovered", {}))
    assert book.healthy("S1", "i1", T0 + 201, T0 + 300)
    assert [x.kind for x in book.new] == ["flagged", "flagged"]


@pytest.mark.parametrize("signal,value,ok", [("ambient_kpa", 0.0, False), ("ambient_kpa", 101.2, True),
                                             ("o2_pct", 20.9, True), ("o2_pct", 25.0, False),
                                             ("ph", 14.5, False), ("pm25_ugm3", 1e6, True)])
def test_physical_ranges(signal: str, value: float, ok: bool):
    assert health.physically_possible(signal, value) is ok
