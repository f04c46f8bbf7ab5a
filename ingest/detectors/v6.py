"""V6 — substitute car or standard gas for many vehicles (替车替气).

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md).
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from typing import Any, ClassVar

from ingest.detectors import segments
from ingest.detectors.base import Alert
from stationseal import vehicle_results as vres


@dataclass(slots=True)
class _Curve:
    test_id: str
    plate: str
    vin: str
    start: float
    curves: dict[str, list[float | None]]
    levels: dict[str, tuple[float, float]]  # signal -> (mean, standard error)


class SubstituteVehicleDetector(segments.PerTestDetector):
    """V6 — substitute car or standard gas for many vehicles (替车替气).

    Signature: one clean car (or a replayed recording) tested under other plates gives
    near-identical 1 Hz curves; a failed vehicle "passes" a few minutes later, too soon for
    any repair.

    Rules (proposed):

    * curves — tests of ``curve_methods`` (VMAS: the only protocol whose curves carry a
      car's own transients; steady-state curves of any two runs are noise) at one site within
      ``window_h`` (24 h), of two different vehicles (plate and VIN differ), compared on their
      scored seconds aligned on the first scored second, with a shift of up to ``max_lag_s``
      (2 s). Curves are first averaged over ``smooth_s`` (3 s, about an analyzer's T90) so
      that bench noise does not hide identity. Near-identical when either

      - **shape**: Pearson r > ``min_r`` (0.98, the shared document's value) on every signal
        of ``signals`` (CO2 and HC), or
      - **level**: r > ``level_min_r`` (0.95) on CO2 and the mean levels of
        ``level_signals`` (CO2, O2, HC, NO, CO) agree: the sum of squared z-scores of the
        mean differences (noise estimated from second-to-second differences) stays below the
        chi-square quantile for ``level_alpha`` (0.001), i.e. the runs differ by no more than
        instrument noise. On simulated fleets shape alone misses substitutes whose HC is
        mostly analyzer noise (very clean cars), while two different cars practically never
        share five exhaust levels (benchmarks/detect_bench_vehicle.py measures both).
    * fail→pass — the same plate (or VIN) fails and then passes within ``max_retest_min`` (30)
      minutes at the site. The lane's ``result`` is used; without one the test is scored from
      its samples against the site's limits.
    """

    rule: ClassVar[str] = "V6"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "min_r": 0.98,
        "signals": ["co2_pct", "hc_ppm"],
        "smooth_s": 3,
        "level_signals": ["co2_pct", "o2_pct", "hc_ppm", "no_ppm", "co_pct"],
        "level_min_r": 0.95,
        "level_alpha": 0.001,
        "curve_methods": ["vmas"],
        "max_lag_s": 2,
        "min_curve_seconds": 60,
        "window_h": 24,
        "max_retest_min": 30,
    }

    def __init__(self, sites: Any, params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        self.curves: dict[tuple[str, str], list[_Curve]] = {}
        # (site, plate or vin) -> (end time, test id) of the last failed test
        self.fails: dict[tuple[str, str], tuple[float, str]] = {}

    def on_test(self, test: segments.TestRecord) -> list[Alert]:
        return self._curves(test) + self._retest(test)

    def _curves(self, test: segments.TestRecord) -> list[Alert]:
        p = self.p
        if test.method not in p["curve_methods"]:
            return []
        scored = test.scored()
        if len(scored) < p["min_curve_seconds"]:
            return []
        mine = self._describe(test, scored)
        pool = self.curves.setdefault((test.site, test.method), [])
        horizon = test.start - p["window_h"] * 3600.0
        pool[:] = [c for c in pool if c.start >= horizon]
        matches = []
        for other in pool:
            if other.plate == mine.plate or (mine.vin and other.vin == mine.vin):
                continue
            found = self._match(mine, other)
            if found is not None:
                matches.append((other, found))
        pool.append(mine)
        if not matches:
            return []
        rs = {m.test_id: f for m, f in matches}
        best = max(matches, key=lambda x: min(x[1]["r"].values()))
        rtxt = ", ".join(f"{k} {v:.3f}" for k, v in best[1]["r"].items())
        plates = sorted({m.plate for m, _ in matches})
        how = {"shape": "shape", "level": "shape and exhaust levels"}[best[1]["by"]]
        how_zh = {"shape": "曲线形状", "level": "曲线形状及各排放水平"}[best[1]["by"]]
        return [self.test_alert(
            test, "high",
            f"Near-identical {test.method} curves under different plates ({how}): "
            f"{test.vehicle} vs {', '.join(plates)} (r {rtxt}): substitute vehicle or "
            f"replayed data suspected",
            f"不同号牌车辆的{vres.METHOD_ZH.get(test.method, test.method)}过程曲线几乎相同"
            f"（{how_zh}）：{test.vehicle} 与 "
            f"{'、'.join(plates)}（相关系数 {rtxt}），疑似替车检测或回放数据",
            {"check": "curves", "matched_tests": rs, "test_ids": [test.id, *rs],
             "plates": [test.vehicle, *plates], "best_match": best[0].test_id,
             "thresholds": {k: p[k] for k in ("min_r", "level_min_r", "level_alpha",
                                              "smooth_s", "max_lag_s")}},
            scored)]

    def _describe(self, test: segments.TestRecord, scored: list[segments.Second]) -> _Curve:
        t0 = scored[0].t
        length = scored[-1].t - t0 + 1
        half = max(0, int(self.p["smooth_s"]) // 2)
        curves: dict[str, list[float | None]] = {}
        levels: dict[str, tuple[float, float]] = {}
        for sig in {*self.p["signals"], *self.p["level_signals"], "co2_pct"}:
            raw: list[float | None] = [None] * length
            for s in scored:
                if sig in s.values:
                    raw[s.t - t0] = s.values[sig]
            vals = [v for v in raw if v is not None]
            if len(vals) < self.p["min_curve_seconds"]:
                continue
            sm: list[float | None] = []
            for i in range(length):
                win = [v for v in raw[max(0, i - half): i + half + 1] if v is not None]
                sm.append(sum(win) / len(win) if raw[i] is not None and win else None)
            curves[sig] = sm
            diffs = [b - a for a, b in itertools.pairwise(raw) if a is not None and b is not None]
            noise = statistics.pstdev(diffs) / math.sqrt(2.0) if len(diffs) > 1 else 0.0
            levels[sig] = (statistics.fmean(vals), noise / math.sqrt(len(vals)))
        return _Curve(test.id, test.vehicle, test.vin, test.start, curves, levels)

    def _match(self, a: _Curve, b: _Curve) -> dict[str, Any] | None:
        p = self.p
        shape_sigs = [s for s in p["signals"] if s in a.curves and s in b.curves]
        gate = "co2_pct"
        sigs = sorted({*shape_sigs, gate} & a.curves.keys() & b.curves.keys())
        if not sigs:
            return None
        best: tuple[int, dict[str, float]] | None = None
        for lag in range(-p["max_lag_s"], p["max_lag_s"] + 1):
            rs: dict[str, float] = {}
            for sig in sigs:
                r = _lagged_r(a.curves[sig], b.curves[sig], lag, p["min_curve_seconds"])
                if r is None:
                    break
                rs[sig] = r
            else:
                if best is None or min(rs.values()) > min(best[1].values()):
                    best = (lag, rs)
        if best is None:
            return None
        lag, rs = best
        if shape_sigs and len(shape_sigs) == len(p["signals"]) and \
                all(rs[s] > p["min_r"] for s in shape_sigs):
            return {"by": "shape", "lag_s": lag, "r": _rounded(rs)}
        common = [s for s in p["level_signals"] if s in a.levels and s in b.levels]
        if gate not in rs or rs[gate] <= p["level_min_r"] or len(common) < 2:
            return None
        zs = {}
        for s in common:
            (ma, sa), (mb, sb) = a.levels[s], b.levels[s]
            se = math.hypot(sa, sb)
            zs[s] = abs(ma - mb) / se if se > 0 else (0.0 if ma == mb else math.inf)
        chi2 = sum(z * z for z in zs.values())
        if chi2 > _chi2_quantile(len(zs), 1.0 - p["level_alpha"]):
            return None
        return {"by": "level", "lag_s": lag, "r": _rounded(rs), "level_chi2": round(chi2, 2),
                "level_z": {k: round(v, 2) for k, v in zs.items()}}

    def _retest(self, test: segments.TestRecord) -> list[Alert]:
        result = test.result
        if result is None:
            if test.method not in vres.PHASES:
                return []
            site = self.sites.get(test.site)
            result = vres.verdict(test.method, test.results(), site.limits if site else None)
        keys = [(test.site, k) for k in (test.vehicle, test.vin) if k]
        if not keys:
            return []
        if result == "fail":
            if len(self.fails) > 10000:  # cars that never came back can no longer match
                cut = test.start - 60.0 * self.p["max_retest_min"]
                self.fails = {k: v for k, v in self.fails.items() if v[0] >= cut}
            for k in keys:
                self.fails[k] = (test.end, test.id)
            return []
        prior = [self.fails[k] for k in keys if k in self.fails]
        for k in keys:
            self.fails.pop(k, None)
        if not prior:
            return []
        fail_end, fail_id = max(prior)
        minutes = (test.start - fail_end) / 60.0
        if minutes >= self.p["max_retest_min"] or minutes < 0:
            return []
        return [self.test_alert(
            test, "high" if minutes < self.p["max_retest_min"] / 2 else "medium",
            f"{test.vehicle} failed (test {fail_id}) and passed {minutes:.0f} min later "
            f"(< {self.p['max_retest_min']} min), too soon for a repair: substitute vehicle "
            f"or gas suspected",
            f"{test.vehicle} 检测不合格（{fail_id}）后仅 {minutes:.0f} 分钟（少于 "
            f"{self.p['max_retest_min']} 分钟）复检即合格，来不及维修，疑似替车或替气复检",
            {"check": "fail_then_pass", "failed_test": fail_id, "minutes": round(minutes, 1),
             "test_ids": [fail_id, test.id], "threshold_min": self.p["max_retest_min"]})]


def _lagged_r(xa: list[float | None], xb: list[float | None], lag: int,
              min_n: int) -> float | None:
    xs: list[float] = []
    ys: list[float] = []
    for i, va in enumerate(xa):
        j = i + lag
        if 0 <= j < len(xb):
            vb = xb[j]
            if va is not None and vb is not None:
                xs.append(va)
                ys.append(vb)
    return segments.pearson(xs, ys) if len(xs) >= min_n else None


def _rounded(rs: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in rs.items()}


def _chi2_quantile(k: int, q: float) -> float:
    """Chi-square quantile (Wilson–Hilferty), good to ~1 % for the few degrees used here."""
    z = statistics.NormalDist().inv_cdf(q)
    a = 2.0 / (9.0 * k)
    return k * (1.0 - a + z * math.sqrt(a)) ** 3
