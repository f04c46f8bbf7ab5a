"""E3: lockstep channels computed in the logger; reported ≠ measured events."""

from __future__ import annotations

import random

from env_helpers import HOUR, T0, only, overlaps, run, site

from sim.cems import cems_series, cems_sites
from sim.envpatterns import inject
from stationseal.records import SiteEvent


def stack(seed: int, days: int = 6) -> list:
    return list(cems_series(T0, days * 24, 600, random.Random(seed)))


def test_channel_computed_from_another_is_high():
    start, end = T0 + 3 * 86400, T0 + 5 * 86400
    recs = list(inject("E3", stack(5), site="stack-1", kind="stack_cems", start=start, end=end,
                       rng=random.Random(3)))
    hits = [a for a in only(run(cems_sites(), recs, ["E3"]), "E3", "lockstep_channels")
            if overlaps(a, start, end)]
    assert len(hits) == 1 and hits[0].severity == "high"
    ev = hits[0].evidence
    assert ev["channels"] == ["so2_mgm3", "pm_mgm3"]
    assert ev["r"] > 0.999 and ev["points"] >= 18
    assert "篡改" in hits[0].summary_zh


def test_independent_channels_are_quiet():
    assert only(run(cems_sites(), stack(5), ["E3"]), "E3") == []


def test_reported_mismatch_event_becomes_an_alert():
    ev = SiteEvent(T0, "S1", "logger", "reported_mismatch",
                   {"signal": "so2_mgm3", "reported": 20.0, "measured": 42.5,
                    "data_time": "2023-12-31T23:00:00Z"}, ("gw-1", 77))
    small = SiteEvent(T0 + 10, "S1", "logger", "reported_mismatch",
                      {"signal": "nox_mgm3", "reported": 40.0, "measured": 40.4})
    alerts = run(site(), [ev, small], ["E3"])
    by_sig = {a.evidence["signal"]: a for a in alerts}
    assert by_sig["so2_mgm3"].severity == "high"
    assert by_sig["so2_mgm3"].start == T0 - HOUR
    assert by_sig["so2_mgm3"].evidence["relative_difference"] == 0.529
    assert by_sig["so2_mgm3"].evidence["origins"][0]["first_seq"] == 77
    assert by_sig["nox_mgm3"].severity == "medium"
