"""E6: flags hiding data while the plant runs, without a log; flags changed afterwards."""

from __future__ import annotations

from env_helpers import HOUR, T0, only, run, series, site

from stationseal.records import SiteEvent

LIM = {"so2_mgm3": 35.0}


def flagged(a: int, b: int, flag: str = "M"):
    return lambda i, t: {"so2_mgm3": flag} if a <= i < b else {}


def values(flow: float = 9e5, high_before: int | None = None):
    def fn(i: int, t: float) -> dict[str, float]:
        so2 = 33.0 if high_before is not None and i == high_before else 15.0 + i % 4
        return {"so2_mgm3": so2, "flow_m3h": flow}
    return fn


def test_unlogged_maintenance_flags_while_running_alert():
    recs = list(series(values(), 40, flags=flagged(10, 13)))
    alerts = only(run(site(limits=LIM), recs, ["E6"]), "E6")
    assert [a.severity for a in alerts] == ["medium"]
    ev = alerts[0].evidence
    assert ev["flags"] == {"M": 3} and ev["signals"] == ["so2_mgm3"]
    assert ev["hours"] == 3 and ev["log_coverage"] == 0 and ev["running_share"] == 1
    assert ev["origins"][0]["first_seq"] == 11


def test_flags_right_after_near_limit_values_are_high():
    recs = list(series(values(high_before=9), 40, flags=flagged(10, 12, "D")))
    alerts = only(run(site(limits=LIM), recs, ["E6"]), "E6")
    assert [a.severity for a in alerts] == ["high"]
    assert alerts[0].evidence["near_limit_before"][0]["value"] == 33.0
    assert "故障" in alerts[0].summary_zh


def test_logged_maintenance_and_stopped_plant_are_quiet():
    logged = list(series(values(), 40, flags=flagged(10, 13)))
    logged += [SiteEvent(T0 + 9.5 * HOUR, "S1", "i1", "maintenance_start", {}),
               SiteEvent(T0 + 13 * HOUR, "S1", "i1", "maintenance_end", {})]
    assert only(run(site(limits=LIM), logged, ["E6"]), "E6") == []
    window = list(series(values(), 40, flags=flagged(10, 13)))
    window.append(SiteEvent(T0, "S1", "i1", "maintenance",
                            {"start": "2024-01-01T09:30:00Z", "end": "2024-01-01T13:00:00Z"}))
    assert only(run(site(limits=LIM), window, ["E6"]), "E6") == []
    stopped = list(series(values(flow=0.0), 40, flags=flagged(10, 20, "F")))
    assert only(run(site(limits=LIM), stopped, ["E6"]), "E6") == []


def test_flag_changed_after_the_fact():
    late = SiteEvent(T0 + 5 * HOUR, "S1", "i1", "flag_changed",
                     {"signal": "so2_mgm3", "data_time": "2024-01-01T02:00:00Z",
                      "old": "N", "new": "M"})
    prompt = SiteEvent(T0 + 2.1 * HOUR, "S1", "i1", "flag_changed",
                       {"signal": "nox_mgm3", "data_time": "2024-01-01T02:00:00Z",
                        "old": "N", "new": "M"})
    alerts = only(run(site(limits=LIM), [late, prompt], ["E6"]), "E6")
    assert len(alerts) == 1 and alerts[0].severity == "high"
    assert alerts[0].evidence["seconds_after_data_time"] == 3 * HOUR
    assert alerts[0].start == T0 + 2 * HOUR
