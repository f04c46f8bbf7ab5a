"""E8: calibration register changed, readings stepped right after."""

from __future__ import annotations

from env_helpers import HOUR, T0, only, run, series, site

from stationseal.records import SiteEvent


def readings(scale_from: int | None = None, ratio: float = 1.0, param: bool = False):
    def fn(i: int, t: float) -> dict[str, float]:
        k = ratio if scale_from is not None and i >= scale_from else 1.0
        v = {"so2_mgm3": round((20.0 + (i % 5) * 0.3) * k, 2), "flow_m3h": 9e5}
        if param:
            v["span_coeff.so2_mgm3"] = k
        return v
    return fn


def cal(t: float, old: float, new: float) -> SiteEvent:
    return SiteEvent(t, "S1", "i1", "calibration_change",
                     {"signal": "span_coeff.so2_mgm3", "old": old, "new": new}, ("gw-1", 999))


def test_span_cut_with_step_down_is_high():
    recs = list(series(readings(60, 0.6), 120, step=60.0)) + [cal(T0 + 59.5 * 60, 1.0, 0.6)]
    alerts = only(run(site(), recs, ["E8"]), "E8")
    assert len(alerts) == 1 and alerts[0].severity == "high"
    ev = alerts[0].evidence
    step = ev["steps"]["so2_mgm3"]
    assert step["change_pct"] < -35 and step["explained_by_register"] is True
    assert ev["register_implied_change_pct"] == -40
    assert {"gateway": "gw-1", "first_seq": 999, "last_seq": 999, "count": 1} not in ev["origins"]
    assert ev["origins"][0]["last_seq"] == 999


def test_routine_calibration_is_quiet_even_with_a_coincident_step():
    recs = list(series(readings(), 120, step=60.0)) + [cal(T0 + 3600, 1.0, 1.01)]
    assert only(run(site(), recs, ["E8"]), "E8") == []
    recs = list(series(readings(60, 1.5), 120, step=60.0)) + [cal(T0 + 59.5 * 60, 1.0, 1.01)]
    assert only(run(site(), recs, ["E8"]), "E8") == []


def test_step_after_a_change_without_detail_is_judged_on_direction():
    ev = SiteEvent(T0 + 59.5 * 60, "S1", "i1", "calibration_change", {"signal": "so2_mgm3"})
    recs = list(series(readings(60, 1.5), 120, step=60.0)) + [ev]
    [a] = only(run(site(), recs, ["E8"]), "E8")
    assert a.severity == "medium" and a.evidence["register_implied_change_pct"] is None
    assert a.evidence["steps"]["so2_mgm3"]["change_pct"] > 45


def test_register_read_as_a_sample_value_counts_as_a_change():
    recs = list(series(readings(30, 0.5, param=True), 80, step=HOUR / 4))
    alerts = only(run(site(), recs, ["E8"]), "E8")
    assert len(alerts) == 1 and alerts[0].severity == "high"
    assert alerts[0].evidence["source"] == "register_sample"
    assert alerts[0].evidence["change"] == {"register": "span_coeff.so2_mgm3", "old": 1.0,
                                            "new": 0.5}


def test_big_span_cut_partly_masked_by_the_process_still_alerts():
    def fn(i: int, t: float) -> dict[str, float]:
        return {"so2_mgm3": 20.0 if i < 6 else 20.0 * 1.3 * 0.55, "flow_m3h": 9e5}

    recs = list(series(fn, 14, step=HOUR)) + [cal(T0 + 5.5 * HOUR, 1.0, 0.55)]
    [a] = only(run(site(), recs, ["E8"]), "E8")
    step = a.evidence["steps"]["so2_mgm3"]
    assert -30 < step["change_pct"] < -25 and step["before_n"] == 3 and step["after_n"] == 3
    assert a.severity == "high"
