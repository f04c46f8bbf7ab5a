"""E4: flat lines, few distinct values, repeated days."""

from __future__ import annotations

import random

from env_helpers import HOUR, T0, noisy, only, run, series, site

AQ = {"pm25_ugm3": 60.0, "no2_ugm3": 40.0}


def test_flat_line_escalates_and_cites_its_frames():
    rng = random.Random(1)
    base = noisy(rng, AQ, res=1)

    def values(i: int, t: float) -> dict[str, float]:
        v = base(i, t)
        if 200 <= i < 230:
            v["pm25_ugm3"] = 57.0
        return v

    alerts = only(run(site(kind="air_quality"), series(values, 260), ["E4"]), "E4")
    assert len(alerts) == 1
    a = alerts[0]
    assert a.severity == "high" and a.evidence["finding"] == "flat_line"
    assert a.evidence["signal"] == "pm25_ugm3" and a.evidence["value"] == 57.0
    assert a.evidence["hours"] == 30 and a.evidence["samples"] == 30
    assert a.evidence["origins"] == [{"gateway": "gw-1", "first_seq": 201, "last_seq": 230,
                                      "count": 30}]
    assert a.start == T0 + 200 * HOUR and a.end == T0 + 229 * HOUR


def test_short_flat_line_is_medium_and_noise_is_quiet():
    rng = random.Random(2)
    base = noisy(rng, AQ, res=1)

    def values(i: int, t: float) -> dict[str, float]:
        v = base(i, t)
        if 100 <= i < 108:
            v["no2_ugm3"] = 41.0
        return v

    alerts = only(run(site(kind="air_quality"), series(values, 200), ["E4"]), "E4")
    assert [(a.severity, a.evidence["signal"]) for a in alerts] == [("medium", "no2_ugm3")]
    assert only(run(site(kind="air_quality"), series(noisy(random.Random(2), AQ, res=1), 400),
                    ["E4"]), "E4") == []


def test_flat_line_at_the_detection_floor_is_low():
    rng = random.Random(3)

    def values(i: int, t: float) -> dict[str, float]:
        if 300 <= i < 330:
            return {"so2_ugm3": 2.0}
        return {"so2_ugm3": float(rng.choice([2, 3, 4, 5, 6, 7, 9, 12]))}

    alerts = only(run(site(kind="air_quality"), series(values, 360), ["E4"]), "E4")
    assert len(alerts) == 1
    assert alerts[0].severity == "low" and alerts[0].evidence["at_floor"] is True


def test_plant_stopped_is_not_a_flat_line():
    def values(i: int, t: float) -> dict[str, float]:
        return {"so2_mgm3": 0.0, "flow_m3h": 0.0}

    assert only(run(site(), series(values, 48), ["E4"]), "E4") == []


def test_day_copied_from_an_earlier_day_is_high():
    rng = random.Random(4)
    base = noisy(rng, {"cod_mgl": 30.0}, res=0.1)
    days: dict[int, float] = {}

    def values(i: int, t: float) -> dict[str, float]:
        if 24 * 9 <= i < 24 * 10:
            return {"cod_mgl": days[i - 24]}
        days[i] = base(i, t)["cod_mgl"]
        return {"cod_mgl": days[i]}

    alerts = only(run(site(kind="water_quality"), series(values, 24 * 13), ["E4"]), "E4",
                  "repeated_day")
    assert len(alerts) == 1 and alerts[0].severity == "high"
    assert alerts[0].evidence["lag_days"] == 1 and alerts[0].evidence["hours"] == 24
    assert alerts[0].start == T0 + 24 * 9 * HOUR
    assert alerts[0].evidence["copied_from"]["start"] == "2024-01-09T00:00:00.000Z"


def test_few_distinct_values_on_minute_data():
    rng = random.Random(5)

    def values(i: int, t: float) -> dict[str, float]:
        if 600 <= i < 1100:
            return {"nox_mgm3": [31.2, 31.4, 31.3][i % 3], "flow_m3h": 8e5}
        return {"nox_mgm3": round(30 + rng.gauss(0, 2), 1), "flow_m3h": 8e5}

    alerts = only(run(site(), series(values, 1300, step=60.0), ["E4"]), "E4",
                  "few_distinct_values")
    assert len(alerts) == 1 and alerts[0].severity == "medium"
    assert alerts[0].evidence["distinct_values"] == [31.2, 31.3, 31.4]
