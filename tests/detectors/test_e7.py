"""E7: variability far below the site's own history for days."""

from __future__ import annotations

import random

from env_helpers import T0, only, overlaps, run

from sim.envpatterns import inject
from sim.water import water_series, water_sites


def outfall(seed: int, days: int = 32) -> list:
    return list(water_series(T0, days * 24, 3600, random.Random(seed)))


def test_week_of_squashed_variability_is_high():
    start, end = T0 + 22 * 86400, T0 + 29 * 86400
    recs = list(inject("E7", outfall(6), site="outfall-1", kind="water_quality", start=start,
                       end=end, rng=random.Random(1), signals=["cod_mgl"], squash=0.08))
    hits = [a for a in only(run(water_sites(), recs, ["E7"]), "E7") if overlaps(a, start, end)]
    assert [(a.evidence["signal"], a.severity) for a in hits] == [("cod_mgl", "high")]
    ev = hits[0].evidence
    assert len(ev["days"]) >= 6 and all(d["ratio"] < 0.2 for d in ev["days"])
    assert "探头" in hits[0].summary_zh


def test_normal_variability_is_quiet():
    assert only(run(water_sites(), outfall(6), ["E7"]), "E7") == []
