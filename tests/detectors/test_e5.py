"""E5: hourly values held just under the limit."""

from __future__ import annotations

import random

from env_helpers import only, run, series, site

LIM = {"cod_mgl": 50.0}


def test_week_held_under_the_limit_alerts():
    rng = random.Random(1)

    def values(i: int, t: float) -> dict[str, float]:
        held = i >= 100 and rng.random() < 0.85
        cod = rng.uniform(45.5, 49.9) if held else rng.uniform(15, 40)
        return {"cod_mgl": round(cod, 1), "water_flow_ls": 200.0}

    alerts = only(run(site(kind="water_quality", limits=LIM), series(values, 24 * 12),
                      ["E5"]), "E5")
    assert len(alerts) == 1
    a = alerts[0]
    assert a.severity == "high" and a.evidence["max_share_in_band"] >= 0.8
    assert a.evidence["band"] == [45.0, 50.0] and a.evidence["limit"] == 50.0
    assert a.evidence["hours_with_data"] == 168
    assert "贴限" in a.summary_zh


def test_scattered_values_are_quiet_and_stopped_hours_do_not_count():
    rng = random.Random(2)

    def values(i: int, t: float) -> dict[str, float]:
        return {"cod_mgl": round(rng.uniform(20, 52), 1), "water_flow_ls": 200.0}

    assert only(run(site(kind="water_quality", limits=LIM), series(values, 24 * 12),
                     ["E5"]), "E5") == []

    def stopped(i: int, t: float) -> dict[str, float]:
        return {"cod_mgl": 47.0 + (i % 10) / 10, "water_flow_ls": 0.0}

    assert only(run(site(kind="water_quality", limits=LIM), series(stopped, 24 * 10),
                     ["E5"]), "E5") == []
