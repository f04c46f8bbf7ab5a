"""E2: stack O2 abnormally high while pollutants sit near their limits (dilution)."""

from __future__ import annotations

import random

from env_helpers import HOUR, T0, only, overlaps, run, series, site

from sim.cems import cems_series, cems_sites
from sim.envpatterns import inject


def stack(seed: int, days: int = 12) -> list:
    return list(cems_series(T0, days * 24, 600, random.Random(seed)))


def test_dilution_hiding_an_exceedance_is_high():
    start, end = T0 + 9 * 86400 + 10 * HOUR, T0 + 9 * 86400 + 18 * HOUR
    recs = list(inject("E2", stack(4), site="stack-1", kind="stack_cems", start=start, end=end,
                       rng=random.Random(2), limits=cems_sites()["stack-1"].limits,
                       signal="so2_mgm3", excess=1.4))
    hits = [a for a in only(run(cems_sites(), recs, ["E2"]), "E2", "dilution")
            if overlaps(a, start, end)]
    assert len(hits) == 1 and hits[0].severity == "high"
    ev = hits[0].evidence
    so2 = ev["pollutants"]["so2_mgm3"]
    assert so2["measured_mean"] <= 35.0 < so2["corrected_mean"]
    assert ev["o2_mean_pct"] > ev["o2_threshold_pct"]
    assert ev["hidden_exceedance_hours"] >= 2
    assert "稀释" in hits[0].summary_zh


def test_normal_load_cycle_is_quiet():
    assert only(run(cems_sites(), stack(4), ["E2"]), "E2") == []


def test_o2_at_ambient_level_with_flow_is_flagged():
    def values(i: int, t: float) -> dict[str, float]:
        o2 = 20.6 if 30 <= i < 34 else 7.0 + (i % 5) * 0.1
        return {"o2_stack_pct": o2, "flow_m3h": 9e5, "so2_mgm3": 10.0 + i % 3}

    alerts = only(run(site(limits={"so2_mgm3": 35}), series(values, 48), ["E2"]), "E2")
    assert [(a.evidence["finding"], a.severity) for a in alerts] == [("ambient_o2", "medium")]
    assert alerts[0].evidence["hours"] == 4
