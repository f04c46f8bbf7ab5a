"""E3: lockstep channels computed in the logger; reported ≠ measured events."""

from __future__ import annotations

import random
from collections import deque

from env_helpers import HOUR, T0, only, overlaps, run, site

from ingest.detectors.e3 import _Sums
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


def test_sliding_sums_match_a_direct_computation():
    rng = random.Random(9)
    pts: deque = deque()
    sums = None
    for i in range(500):
        x = 9.0e5 + rng.gauss(0, 50)  # large mean, small spread: the ill-conditioned case
        y = 0.002 * x + rng.gauss(0, 0.05) if i % 100 < 60 else rng.gauss(3, 1)
        sums = sums or _Sums(x, y, 96)
        pts.append((float(i), x, y, None))
        sums.add(x, y)
        if len(pts) > 24:
            _, ox, oy, _ = pts.popleft()
            sums.add(ox, oy, -1)
        sums.since += 1
        if sums.since >= sums.rebuild:
            sums.reset_from(pts)
        if len(pts) == 24:
            xs = [p[1] for p in pts]
            ys = [p[2] for p in pts]
            mx, my = sum(xs) / 24, sum(ys) / 24
            sxx = sum((v - mx) ** 2 for v in xs)
            syy = sum((v - my) ** 2 for v in ys)
            sxy = sum((u - mx) * (v - my) for u, v in zip(xs, ys, strict=True))
            r, slope, icpt = sums.fit()
            assert abs(r - sxy / (sxx * syy) ** 0.5) < 1e-6
            assert abs(slope - sxy / sxx) < 1e-6 * abs(sxy / sxx) + 1e-9
            assert abs(icpt - (my - sxy / sxx * mx)) < 1e-3
