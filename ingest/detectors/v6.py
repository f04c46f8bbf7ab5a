"""V6 — substitute car or standard gas for many vehicles (替车替气).

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md).
"""

from __future__ import annotations

import itertools
import math
import operator
import statistics
from dataclasses import dataclass
from typing import Any, ClassVar

from ingest.detectors import segments
from ingest.detectors.base import Alert
from ingest.detectors.common import num
from stationseal import vehicle_results as vres


@dataclass(slots=True)
class _Curve:
    test_id: str
    plate: str
    vin: str
    start: float
    method: str
    raw: dict[str, list[float | None]]
    curves: dict[str, list[float | None]]  # smoothed (VMAS shape)
    #: Smoothed curves standardised over their whole length (only those without gaps).
    z: dict[str, list[float]]
    #: Robust per-second noise of each signal (1.4826 × MAD of differences / √2).
    noise: dict[str, float]
    levels: dict[str, tuple[float, float]]  # signal -> (mean, standard error)
    fingerprint: int
    #: Each second's values of all compared signals, as a set (for the identical check).
    rows: set[tuple[float | None, ...]]
    #: Mean O2 and carbon (CO + CO2 + HC as C1) over the scored seconds, when measured.
    o2: float | None
    carbon: float | None

    def combustion(self, lo: float, hi: float, max_o2: float) -> bool | None:
        """Whether the gas is exhaust of a running engine (carbon in the combustion band
        at low O2); None without the signals, True for lean gas (O2 above ``max_o2``)."""
        if self.o2 is None or self.carbon is None:
            return None
        return self.o2 > max_o2 or lo <= self.carbon <= hi


_GASOLINE_SIGNALS = ["co2_pct", "o2_pct", "hc_ppm", "no_ppm", "co_pct"]
#: Signals computed from others (opacity from K): not an independent level.
_DERIVED = frozenset({"opacity_pct", "lambda"})
_DIESEL_SIGNALS = ["k_m1", "opacity_pct", "nox_ppm", "co2_pct", "rpm"]


class SubstituteVehicleDetector(segments.PerTestDetector):
    """V6 — substitute car or standard gas for many vehicles (替车替气).

    Signature: one clean car (or a replayed recording) tested under other plates gives
    near-identical 1 Hz curves; a bottle of standard gas held to the probe gives the same
    flat gas levels for every "vehicle"; a failed vehicle "passes" a few minutes later,
    too soon for any repair.

    Tests of every method are compared with the earlier tests of the same method at the
    site within ``window_h`` (24 h), when the two vehicles differ (plate and VIN), on their
    scored seconds aligned on the first scored second with a shift of up to ``max_lag_s``
    (2 s); at least ``min_curve_seconds`` (60) aligned seconds for VMAS and
    ``min_steady_seconds`` (8) for the other methods. Signals: ``signals``/
    ``level_signals`` for gasoline methods, ``diesel_signals`` for diesel ones. Values
    the health layer found faulty are not compared. Pairs whose main level (mean CO2, or
    K for diesel) differs by more than ``prefilter_rel`` (25 %) plus six standard errors
    are not compared further: the same car, gas or recording has the same level. A pair
    matches when:

    * **identical** — at least ``identical_share`` (90 %) of the aligned seconds carry
      bit-identical values on every compared signal (a copied recording);
    * **replay** — the two recordings differ second by second by far less than the
      instruments' own noise: the median absolute deviation of the differences is at most
      ``replay_max_noise_ratio`` (0.35) × the per-second noise (robust: 1.4826 × the
      median absolute second-to-second change / √2, so protocol transients do not count
      as noise) on every signal that carries noise in both (at least two). Two runs of
      different cars, or of one car twice, differ at least by both runs' noise (ratio ≈ 1);
      a replayed recording, even re-quantized or jittered a little, does not. This is what
      catches steady-state replays (ASM, idle, lug-down), whose curves are otherwise flat;
    * **shape** (VMAS, the ``curve_methods``) — the curves averaged over ``smooth_s``
      (3 s) correlate with r > ``min_r`` (0.98, the shared document's value) on every
      signal of ``signals`` (CO2 and HC);
    * **level** — the mean levels of the gas signals agree within instrument noise: the
      sum of squared z-scores of the mean differences (noise from second-to-second
      differences) stays below the chi-square quantile for ``level_alpha`` (1e-5: a test
      is compared with every test of its method within the window, hundreds of pairs a
      day), over at least ``min_level_signals`` (3) independent signals that carry noise
      (opacity, computed from K, does not count), also across the steady methods (a
      bottle gives the same gas whatever the protocol). Exhaust-like gas (carbon in the
      combustion band, below) must agree more closely — within the chi-square quantile
      for ``exhaust_level_alpha`` (0.01) — as every clean car at lambda 1 burns to about
      the same CO2 and O2. Judged for the steady methods of
      ``level_methods`` (a transient protocol's levels say little); on VMAS only when the
      CO2 shapes also agree (r > ``level_min_r``, 0.95). Two different cars
      practically never share five exhaust levels to within noise; a bottle of standard
      gas always does.

    * fail→pass — the same plate (or VIN) fails and then passes within ``max_retest_min`` (30)
      minutes at the site. The lane's ``result`` is used; without one the test is scored from
      its samples against the site's limits.

    Severity (evidence required):

    * high: identical or replayed curves, or shape agreement on VMAS (the same recording
      under two plates); matching levels of a gas no engine produces (carbon outside
      ``combustion_carbon_pct``, 12.5–16.5 %, at O2 below ``combustion_max_o2_pct``,
      1 %: a gas bottle); a pass within half of ``max_retest_min`` after a fail;
    * medium: matching levels of exhaust-like gas shared by three or more tests; a pass
      after a fail within ``max_retest_min``;
    * low: matching levels of exhaust-like gas in just two tests (chance, at hundreds of
      pairs a day, is not negligible).
    """

    rule: ClassVar[str] = "V6"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "min_r": 0.98,
        "signals": ["co2_pct", "hc_ppm"],
        "smooth_s": 3,
        "level_signals": list(_GASOLINE_SIGNALS),
        "diesel_signals": list(_DIESEL_SIGNALS),
        "level_min_r": 0.95,
        "level_alpha": 1e-5,
        "exhaust_level_alpha": 0.01,
        "min_level_signals": 3,
        "level_methods": ["idle", "asm5025", "asm2540", "lug_down"],
        "curve_methods": ["vmas"],
        "max_lag_s": 2,
        "min_curve_seconds": 60,
        "min_steady_seconds": 8,
        "identical_share": 0.9,
        "replay_max_noise_ratio": 0.35,
        "combustion_carbon_pct": [12.5, 16.5],
        "combustion_max_o2_pct": 1.0,
        "prefilter_rel": 0.25,
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

    def _signals(self, method: str) -> list[str]:
        p = self.p
        if method in vres.DIESEL_METHODS:
            return list(p["diesel_signals"])
        return list(dict.fromkeys([*p["signals"], *p["level_signals"]]))

    def _curves(self, test: segments.TestRecord) -> list[Alert]:
        p = self.p
        scored = test.scored()
        need = p["min_curve_seconds"] if test.method in p["curve_methods"] \
            else p["min_steady_seconds"]
        if len(scored) < need or not test.method:
            return []
        mine = self._describe(test, scored, need)
        if mine is None:
            return []
        pool = self.curves.setdefault((test.site, test.method), [])
        horizon = test.start - p["window_h"] * 3600.0
        pool[:] = [c for c in pool if c.start >= horizon]
        matches = []
        for other in pool:
            if other.plate == mine.plate or (mine.vin and other.vin == mine.vin):
                continue
            found = self._match(mine, other, need)
            if found is not None:
                matches.append((other, found))
        pool.append(mine)
        # A bottle gives the same gas whatever the protocol: levels are also compared with
        # the other steady methods' tests.
        if test.method in p["level_methods"]:
            for method in p["level_methods"]:
                if method == test.method:
                    continue
                if (method in vres.DIESEL_METHODS) != (test.method in vres.DIESEL_METHODS):
                    continue
                for other in self.curves.get((test.site, method), ()):
                    if other.start < horizon or other.plate == mine.plate or \
                            (mine.vin and other.vin == mine.vin):
                        continue
                    found = self._levels(mine, other, None)
                    if found is not None:
                        matches.append((other, found))
        if not matches:
            return []
        order = {"identical": 0, "replay": 1, "shape": 2, "level": 3}
        best = min(matches, key=lambda x: (order[x[1]["by"]], -x[1].get("score", 0.0)))
        by = best[1]["by"]
        sev: Any = "high"
        if by == "level":
            lo, hi = p["combustion_carbon_pct"]
            bottled = mine.combustion(lo, hi, p["combustion_max_o2_pct"]) is False
            for _, f in matches:
                if f["by"] == "level":
                    f["non_combustion_gas"] = bottled
            if not bottled:
                sev = "medium" if len(matches) >= 2 else "low"
        plates = sorted({m.plate for m, _ in matches})
        how = {"identical": "bit-identical values", "replay": "the same fluctuations",
               "shape": "shape", "level": "the same gas levels within noise"}[by]
        how_zh = {"identical": "数值完全相同", "replay": "波动完全一致", "shape": "曲线形状",
                  "level": "各气体浓度在噪声范围内一致"}[by]
        detail = best[1]
        if by == "level":
            what = "standard gas or " if detail.get("non_combustion_gas") else ""
            what_zh = "标准气或" if detail.get("non_combustion_gas") else ""
        else:
            what = what_zh = ""
        figures = ", ".join(f"{k} {v}" for k, v in detail.get("r", {}).items())
        return [self.test_alert(
            test, sev,
            f"Near-identical {test.method} curves under different plates ({how}): "
            f"{test.vehicle} vs {', '.join(plates)}"
            f"{f' (r {figures})' if figures else ''}: {what}substitute vehicle or "
            f"replayed data suspected",
            f"不同号牌车辆的{vres.METHOD_ZH.get(test.method, test.method)}过程曲线几乎相同"
            f"（{how_zh}）：{test.vehicle} 与 {'、'.join(plates)}"
            f"{f'（相关系数 {figures}）' if figures else ''}，疑似{what_zh}替车检测或回放数据",
            {"check": "curves", "by": by, "matched_tests": {m.test_id: f for m, f in matches},
             "test_ids": [test.id, *(m.test_id for m, _ in matches)],
             "plates": [test.vehicle, *plates], "best_match": best[0].test_id,
             "thresholds": {k: p[k] for k in ("min_r", "replay_max_noise_ratio", "identical_share",
                                              "level_min_r", "level_alpha", "smooth_s",
                                              "max_lag_s")}},
            scored, check=f"curves_{by}")]

    def _describe(self, test: segments.TestRecord, scored: list[segments.Second],
                  need: int) -> _Curve | None:
        t0 = scored[0].t
        length = scored[-1].t - t0 + 1
        half = max(0, int(self.p["smooth_s"]) // 2)
        vmas = test.method in self.p["curve_methods"]
        raw_all: dict[str, list[float | None]] = {}
        curves: dict[str, list[float | None]] = {}
        noise: dict[str, float] = {}
        levels: dict[str, tuple[float, float]] = {}
        for sig in self._signals(test.method):
            raw: list[float | None] = [None] * length
            for s in scored:
                v = s.values.get(sig)
                if v is not None:
                    raw[s.t - t0] = v
            vals = [v for v in raw if v is not None]
            if len(vals) < need:
                continue
            raw_all[sig] = raw
            if vmas:
                curves[sig] = _moving_mean(raw, half)
            steps = [y - x for x, y in itertools.pairwise(raw) if x is not None and y is not None]
            noise[sig] = 1.4826 * _mad(steps) / math.sqrt(2.0) if len(steps) > 2 else 0.0
            sd = segments.pstdev(steps) / math.sqrt(2.0) if len(steps) > 1 else 0.0
            levels[sig] = (math.fsum(vals) / len(vals), sd / math.sqrt(len(vals)))
        if not raw_all:
            return None
        fp = hash(tuple((k, tuple(v)) for k, v in sorted(raw_all.items())))
        cols = [raw_all[k] for k in sorted(raw_all)]
        rows = set(zip(*cols, strict=True))
        o2 = levels["o2_pct"][0] if "o2_pct" in levels else None
        carbon = None
        if "co2_pct" in levels and "o2_pct" in levels:
            carbon = levels["co2_pct"][0] + levels.get("co_pct", (0.0, 0.0))[0] \
                + 6e-4 * levels.get("hc_ppm", (0.0, 0.0))[0]
        z = {k: zs for k, c in curves.items() if (zs := _standardise(c)) is not None}
        return _Curve(test.id, test.vehicle, test.vin, test.start, test.method, raw_all,
                      curves, z, noise, levels, fp, rows, o2, carbon)

    def _main_level(self, a: _Curve, b: _Curve) -> bool:
        """Cheap pre-filter: the same car, gas or recording has about the same main level."""
        for sig in ("co2_pct", "k_m1", "opacity_pct", "nox_ppm"):
            if sig in a.levels and sig in b.levels:
                (ma, sa), (mb, sb) = a.levels[sig], b.levels[sig]
                tol = float(self.p["prefilter_rel"]) * max(abs(ma), abs(mb)) \
                    + 6.0 * math.hypot(sa, sb)
                return abs(ma - mb) <= tol
        return True

    def _match(self, a: _Curve, b: _Curve, need: int) -> dict[str, Any] | None:
        p = self.p
        if a.fingerprint == b.fingerprint:
            return {"by": "identical", "identical_share": 1.0, "score": 1.0}
        if not self._main_level(a, b):
            return None
        common = sorted(a.raw.keys() & b.raw.keys())
        if not common:
            return None
        lags = range(-p["max_lag_s"], p["max_lag_s"] + 1)
        # identical values (only when enough whole seconds coincide at all: a set check)
        best_share = 0.0
        shared = len(a.rows & b.rows)
        for lag in lags if shared >= p["identical_share"] * need else ():
            n = same = 0
            ra, rb = a.raw, b.raw
            first = ra[common[0]]
            for i in range(len(first)):
                j = i + lag
                if j < 0 or j >= len(rb[common[0]]):
                    continue
                row_a = [ra[s][i] for s in common]
                row_b = [rb[s][j] if j < len(rb[s]) else None for s in common]
                if None in row_a or None in row_b:
                    continue
                n += 1
                same += row_a == row_b
            if n >= need:
                best_share = max(best_share, same / n)
        if best_share >= p["identical_share"]:
            return {"by": "identical", "identical_share": round(best_share, 4), "score": 1.0}
        # replayed: the seconds differ by far less than the instrument's own noise (only
        # when every mean agrees within that noise: a replay leaves the means in place)
        close = all(abs(a.levels[sig][0] - b.levels[sig][0])
                    <= 3.0 * max(a.noise[sig], b.noise[sig]) for sig in common)
        best: tuple[int, dict[str, float]] | None = None
        for lag in lags if close else ():
            ratios: dict[str, float] = {}
            for sig in common:
                noise = max(a.noise[sig], b.noise[sig])
                if noise <= 0.0:
                    continue
                d = _lagged_diffs(a.raw[sig], b.raw[sig], lag)
                if len(d) < need:
                    continue
                ratios[sig] = _mad(d) / noise
            if len(ratios) >= 2 and (best is None or max(ratios.values()) < max(best[1].values())):
                best = (lag, ratios)
        if best is not None and max(best[1].values()) <= p["replay_max_noise_ratio"]:
            return {"by": "replay", "lag_s": best[0],
                    "difference_to_noise": _rounded(best[1]), "score": -max(best[1].values())}
        vmas = a.method in p["curve_methods"]
        gate_r: float | None = None
        if vmas:
            shape = self._shape(a, b, need)
            if shape is not None:
                rs = shape[1]
                shape_sigs = [s for s in p["signals"] if s in rs]
                if len(shape_sigs) == len(p["signals"]) and \
                        all(rs[s] > p["min_r"] for s in shape_sigs):
                    return {"by": "shape", "lag_s": shape[0], "r": _rounded(rs),
                            "score": min(rs.values())}
                gate_r = rs.get("co2_pct")
            if gate_r is None or gate_r <= p["level_min_r"]:
                return None
        elif a.method not in p["level_methods"]:
            return None
        return self._levels(a, b, gate_r)

    def _shape(self, a: _Curve, b: _Curve, need: int) -> tuple[int, dict[str, float]] | None:
        p = self.p
        sigs = sorted({*p["signals"], "co2_pct"} & a.curves.keys() & b.curves.keys())
        if not sigs:
            return None
        lags = range(-p["max_lag_s"], p["max_lag_s"] + 1)
        if all(sig in a.z and sig in b.z for sig in sigs):
            # Standardised over the whole curve, r is a mean product (exact but for the
            # seconds a shift trims): find the best shift that way, then compute r exactly
            # there — and not at all when the CO2 curves are far from the gate.
            approx = {lag: {sig: _zdot(a.z[sig], b.z[sig], lag) for sig in sigs} for lag in lags}
            lag = max(approx, key=lambda k: min(approx[k].values()))
            if approx[lag].get("co2_pct", 1.0) < p["level_min_r"] - 0.05:
                return None
            lags = range(lag, lag + 1)
        best: tuple[int, dict[str, float]] | None = None
        for lag in lags:
            rs: dict[str, float] = {}
            for sig in sigs:
                r = _lagged_r(a.curves[sig], b.curves[sig], lag, need)
                if r is None:
                    break
                rs[sig] = r
            else:
                if best is None or min(rs.values()) > min(best[1].values()):
                    best = (lag, rs)
        return best

    def _levels(self, a: _Curve, b: _Curve, gate_r: float | None) -> dict[str, Any] | None:
        p = self.p
        common = [s for s in self._signals(a.method) if s in a.levels and s in b.levels
                  and s not in _DERIVED]
        informative = [s for s in common if a.levels[s][1] > 0 or b.levels[s][1] > 0]
        if len(informative) < p["min_level_signals"]:
            return None
        zs = {}
        for s in common:
            (ma, sa), (mb, sb) = a.levels[s], b.levels[s]
            se = math.hypot(sa, sb)
            zs[s] = abs(ma - mb) / se if se > 0 else (0.0 if ma == mb else math.inf)
        chi2 = sum(z * z for z in zs.values())
        lo, hi = p["combustion_carbon_pct"]
        bottled = a.combustion(lo, hi, p["combustion_max_o2_pct"]) is False and \
            b.combustion(lo, hi, p["combustion_max_o2_pct"]) is False
        alpha = p["level_alpha"] if bottled else p["exhaust_level_alpha"]
        if chi2 > _chi2_quantile(len(zs), 1.0 - alpha):
            return None
        out: dict[str, Any] = {"by": "level", "level_chi2": round(chi2, 2),
                               "level_z": {k: round(v, 2) for k, v in zs.items()},
                               "levels": {k: num(a.levels[k][0]) for k in common},
                               "score": -chi2}
        if gate_r is not None:
            out["r"] = {"co2_pct": round(gate_r, 4)}
        return out

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


def _standardise(c: list[float | None]) -> list[float] | None:
    if any(v is None for v in c) or len(c) < 3:
        return None
    vals = [float(v) for v in c if v is not None]
    m = math.fsum(vals) / len(vals)
    sd = segments.pstdev(vals, m)
    if sd <= 0.0:
        return None
    return [(v - m) / sd for v in vals]


def _zdot(za: list[float], zb: list[float], lag: int) -> float:
    """Mean product of two standardised curves shifted by ``lag`` (≈ Pearson r)."""
    if lag >= 0:
        xs, ys = za, zb[lag:]
    else:
        xs, ys = za[-lag:], zb
    n = min(len(xs), len(ys))
    return math.fsum(map(operator.mul, xs[:n], ys[:n])) / n if n else 0.0


def _mad(xs: list[float]) -> float:
    """Median absolute deviation from the median."""
    if not xs:
        return 0.0
    m = statistics.median(xs)
    return statistics.median(abs(x - m) for x in xs)


def _lagged_diffs(xa: list[float | None], xb: list[float | None], lag: int) -> list[float]:
    out: list[float] = []
    for i, va in enumerate(xa):
        j = i + lag
        if 0 <= j < len(xb):
            vb = xb[j]
            if va is not None and vb is not None:
                out.append(va - vb)
    return out


def _moving_mean(raw: list[float | None], half: int) -> list[float | None]:
    """Centred moving mean over ``2 * half + 1`` seconds (None where the value is missing)."""
    n = len(raw)
    out: list[float | None] = [None] * n
    csum = [0.0] * (n + 1)
    ccnt = [0] * (n + 1)
    for i, v in enumerate(raw):
        csum[i + 1] = csum[i] + (v if v is not None else 0.0)
        ccnt[i + 1] = ccnt[i] + (v is not None)
    for i in range(n):
        if raw[i] is None:
            continue
        lo, hi = max(0, i - half), min(n, i + half + 1)
        c = ccnt[hi] - ccnt[lo]
        out[i] = (csum[hi] - csum[lo]) / c
    return out


def _rounded(rs: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in rs.items()}


def _chi2_quantile(k: int, q: float) -> float:
    """Chi-square quantile (Wilson–Hilferty), good to ~1 % for the few degrees used here."""
    z = statistics.NormalDist().inv_cdf(q)
    a = 2.0 / (9.0 * k)
    return k * (1.0 - a + z * math.sqrt(a)) ** 3
