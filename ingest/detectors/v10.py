"""V10 — results nudged just under the limit (station-level statistics).

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors import segments
from ingest.detectors.base import Alert
from stationseal import vehicle_results as vres


@dataclass(slots=True)
class _Counts:
    n: int = 0
    near: int = 0
    passed: int = 0

    def add(self, near: bool, passed: bool, sign: int = 1) -> None:
        self.n += sign
        self.near += sign * near
        self.passed += sign * passed


@dataclass(slots=True)
class _Station:
    by_method: dict[str, _Counts] = field(default_factory=dict)
    near_tests: list[str] = field(default_factory=list)
    first: float = math.inf
    last: float = -math.inf
    n: int = 0


#: Signals a result is computed from: a test whose instruments were faulty is not scored.
_RESULT_SIGNALS = ("co_pct", "co2_pct", "hc_ppm", "no_ppm", "nox_ppm", "k_m1", "o2_pct")


class NudgedResultsDetector(segments.PerTestDetector):
    """V10 — results nudged just under the limit (station-level statistics).

    Signature: when a station edits failing results down, its results pile up in the band
    just below the limit and its pass rate rises above what the same vehicle mix achieves
    elsewhere. One test proves nothing; the distribution does.

    Each test is scored from what its instruments measured (GB 18285 / GB 3847 formulas,
    limits overridable per site with ``"<method>.<field>"`` keys in SiteInfo.limits). A test
    is *near the limit* when any limited result lies in [``near_low`` (0.9) × L, L). The fleet
    baseline is kept per method over all other sites this detector has seen; the station's
    expected count is the sum of its tests' per-method baselines (so a station testing many
    VMAS cars is compared with VMAS cars). Baselines use add-half smoothing so that a method
    never seen near its limit does not make the ratio infinite.

    Rule (proposed): after at least ``min_station_tests`` (40) tests at the station and
    ``min_fleet_tests`` (200) elsewhere,

    * near-limit share > ``max_share_ratio`` (3) × the fleet baseline, with at least
      ``min_near_tests`` (5) such tests and a one-sided binomial p-value ≤ ``max_p_value``
      (0.001) — the ratio alone fires on small counts by chance — while the pass-rate
      z-score is at least ``min_share_z`` (−1): nudging turns failures into passes, so a
      cluster under the limit at a station passing clearly fewer cars than the fleet is
      its clientele, not editing; and/or
    * pass-rate z-score (observed passes vs per-method fleet pass rates) > ``max_z`` (3).

    The baseline leaves out other stations whose own results cluster under the limit (the
    share test alone), so that a few nudging stations do not raise the fleet's
    near-limit share and hide one another.

    Tests whose analyzer or opacimeter the health layer found faulty are not scored (a
    dead analyzer "passes" every car and is an I-HEALTH fault, not a nudged result).

    Severity (evidence required): high when both statistics hold (two independent
    signals: where results lie, how often cars pass); medium when one holds. Evaluated
    every ``check_every_tests`` (50) tests of a station and at end of stream; repeated
    findings share one alert key per station.
    """

    rule: ClassVar[str] = "V10"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "near_low": 0.9,
        "max_share_ratio": 3.0,
        "min_near_tests": 5,
        "max_p_value": 0.001,
        "max_z": 3.0,
        "min_station_tests": 40,
        "min_fleet_tests": 200,
        "check_every_tests": 50,
        "min_share_z": -1.0,
    }

    def __init__(self, sites: Any, params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        self.stations: dict[str, _Station] = {}
        self.fleet: dict[str, _Counts] = {}

    def on_test(self, test: segments.TestRecord) -> list[Alert]:
        if test.method not in vres.LIMITS or not test.healthy(*_RESULT_SIGNALS):
            return []
        site = self.sites.get(test.site)
        overrides = site.limits if site else None
        res = test.results()
        lim = vres.limits_for(test.method, overrides)
        if not res or not any(f in res for f in lim):
            return []
        ratios = {f: res[f] / L for f, L in lim.items() if f in res and L > 0}
        near = any(self.p["near_low"] <= r < 1.0 for r in ratios.values())
        result = test.result or vres.verdict(test.method, res, overrides)
        st = self.stations.setdefault(test.site, _Station())
        st.by_method.setdefault(test.method, _Counts()).add(near, result == "pass")
        self.fleet.setdefault(test.method, _Counts()).add(near, result == "pass")
        st.n += 1
        st.first = min(st.first, test.start)
        st.last = max(st.last, test.end)
        if near:
            st.near_tests.append(test.id)
        if st.n % self.p["check_every_tests"] == 0:
            return self._evaluate(test.site)
        return []

    def on_finish(self) -> list[Alert]:
        out: list[Alert] = []
        for site in sorted(self.stations):
            out += self._evaluate(site)
        return out

    def _outliers(self, site_id: str) -> dict[str, _Counts]:
        """Per method, the counts of *other* stations whose own results cluster under the
        limit (share test alone): left out of the baseline, so that a few nudging stations
        do not raise the fleet's near-limit share and hide each other."""
        p = self.p
        out: dict[str, _Counts] = {}
        for sid, st in self.stations.items():
            if sid == site_id or st.n < p["min_station_tests"]:
                continue
            n = exp = 0.0
            near = 0
            for method, c in st.by_method.items():
                f = self.fleet[method]
                on, onear = f.n - c.n, f.near - c.near
                if on <= 0:
                    continue
                n += c.n
                near += c.near
                exp += c.n * (onear + 0.5) / (on + 1.0)
            if n <= 0 or near < p["min_near_tests"] or exp <= 0:
                continue
            base = exp / n
            if (near / n) / base > p["max_share_ratio"] and \
                    _binomial_tail(int(n), near, base) <= p["max_p_value"]:
                for method, c in st.by_method.items():
                    o = out.setdefault(method, _Counts())
                    o.n += c.n
                    o.near += c.near
                    o.passed += c.passed
        return out

    def _evaluate(self, site_id: str) -> list[Alert]:
        p = self.p
        st = self.stations[site_id]
        n = exp_near = exp_pass = var_pass = 0.0
        near = passed = 0
        others_n = 0
        skip = self._outliers(site_id)
        for method, c in st.by_method.items():
            f = self.fleet[method]
            x = skip.get(method, _Counts())
            on, onear, opass = f.n - c.n - x.n, f.near - c.near - x.near, \
                f.passed - c.passed - x.passed
            if on <= 0:
                continue
            p_near = (onear + 0.5) / (on + 1.0)
            p_pass = (opass + 0.5) / (on + 1.0)
            others_n += on
            n += c.n
            near += c.near
            passed += c.passed
            exp_near += c.n * p_near
            exp_pass += c.n * p_pass
            var_pass += c.n * p_pass * (1.0 - p_pass)
        if n < p["min_station_tests"] or others_n < p["min_fleet_tests"]:
            return []
        baseline = exp_near / n
        ratio = (near / n) / baseline
        p_value = _binomial_tail(int(n), near, baseline)
        z = (passed - exp_pass) / math.sqrt(var_pass) if var_pass > 0 else 0.0
        # Nudging turns failures into passes just under the limit: a cluster under the
        # limit at a station that passes clearly fewer cars than the fleet is its clientele.
        share_hit = (ratio > p["max_share_ratio"] and near >= p["min_near_tests"]
                     and p_value <= p["max_p_value"] and z >= p["min_share_z"])
        z_hit = z > p["max_z"]
        if not (share_hit or z_hit):
            return []
        share, pr, pf = near / n, passed / n, exp_pass / n
        ev = {
            "tests": int(n), "near_limit_tests": near, "near_limit_share": round(share, 4),
            "fleet_near_limit_share": round(baseline, 4), "share_ratio": round(ratio, 2),
            "p_value": float(f"{p_value:.3g}"), "pass_rate": round(pr, 4),
            "fleet_pass_rate": round(pf, 4), "pass_rate_z": round(z, 2),
            "fleet_tests": others_n, "near_limit_test_ids": st.near_tests[:200],
            "thresholds": {k: p[k] for k in ("near_low", "max_share_ratio", "max_p_value",
                                             "max_z", "min_near_tests")},
        }
        return [Alert(
            rule=self.rule, severity="high" if share_hit and z_hit else "medium",
            site=site_id, instrument="station", start=st.first, end=st.last,
            summary_en=(f"Results cluster just under the limit: {near}/{int(n)} tests "
                        f"({share:.0%}) in [{p['near_low']} L, L) vs fleet {baseline:.1%} "
                        f"({ratio:.1f}×, p = {p_value:.1e}); pass rate {pr:.0%} vs fleet "
                        f"{pf:.0%} (z = {z:.1f})"),
            summary_zh=(f"检测结果集中在限值下方：{int(n)} 次检测中 {near} 次（{share:.0%}）"
                        f"落在 [{p['near_low']}L, L) 区间，为全网基线 {baseline:.1%} 的 "
                        f"{ratio:.1f} 倍（p = {p_value:.1e}）；合格率 {pr:.0%}，全网同类 "
                        f"{pf:.0%}（z = {z:.1f}），疑似修改检测结果使其贴近限值"),
            evidence=ev, key=f"V10|{site_id}|station")]


def _binomial_tail(n: int, k: int, prob: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, prob), summed in log space."""
    if k <= 0:
        return 1.0
    if prob <= 0.0:
        return 0.0
    if prob >= 1.0:
        return 1.0
    lp, lq = math.log(prob), math.log1p(-prob)
    total = 0.0
    for i in range(k, n + 1):
        total += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                          + i * lp + (n - i) * lq)
    return min(1.0, total)
