"""V9 — default or constant weather data.

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors import segments
from ingest.detectors.base import Alert

_CH = ("ambient_temp_c", "ambient_rh_pct", "ambient_kpa")


@dataclass(slots=True)
class _Run:
    signature: tuple[float, ...] | None = None
    tests: list[segments.TestRecord] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)
    reported_high: set[str] = field(default_factory=set)


class ConstantWeatherDetector(segments.PerTestDetector):
    """V9 — default or constant weather data.

    Signature: the ambient temperature, humidity and pressure enter the ASM/VMAS correction
    factors; a lane program that writes software defaults, or keeps one reading for every
    test, produces weather that no real sensor delivers: exactly constant, identical from test
    to test, or far from the region's weather.

    Rules:

    * identical T/RH/P over at least ``min_identical_tests`` (10) consecutive tests of a lane
      (proposed). Each test's weather is summarised by the minimum and maximum of every
      channel, so a real sensor (which flickers at its resolution) almost never repeats;
      every test of such a run is reported.
    * software defaults (``defaults``: 25 °C / 80 % / 101 kPa and 25 °C / 80 % / 101.3 kPa,
      within ``default_tolerance``) in every weather reading of a test whose weather
      readings span at least ``min_default_seconds`` (10) seconds (a station reporting
      every 5 s has as much weather per test as one reporting every second).
    * more than ``max_temp_diff_c`` (5 °C) or ``max_kpa_diff`` (3 kPa) from the median of the
      site's configured neighbours (SiteInfo.neighbours, the nearest stations) measured within
      ``neighbour_window_s`` (30 min) (proposed). Runs only when neighbours are configured.

    A dead or disconnected weather station (0 °C / 0 % / 0 kPa), or one reading the
    physically impossible, is an I-HEALTH fault and its readings are not judged here.

    Severity (evidence required):

    * high: software defaults throughout a test (values no sensor reads, test after test);
      weather identical over twice ``min_identical_tests`` tests spanning at least
      ``high_span_h`` (2 h) — real weather moves in two hours;
    * medium: weather identical over ``min_identical_tests`` tests (a frozen but credible
      station is the innocent explanation); weather far from the neighbours'.
    """

    rule: ClassVar[str] = "V9"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "min_identical_tests": 10,
        "defaults": [[25.0, 80.0, 101.0], [25.0, 80.0, 101.3]],
        "default_tolerance": [0.05, 0.05, 0.005],
        "min_default_seconds": 10,
        "max_temp_diff_c": 5.0,
        "max_kpa_diff": 3.0,
        "neighbour_window_s": 1800,
        "high_span_h": 2.0,
    }

    def __init__(self, sites: Any, params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        self.runs: dict[tuple[str, str], _Run] = {}
        self.latest: dict[str, tuple[float, float, float]] = {}  # site -> (time, T, P)

    def on_test(self, test: segments.TestRecord) -> list[Alert]:
        secs = [s for s in test.seconds if all(c in s.values for c in _CH)]
        if not secs:
            return []
        cols = {c: [s.values[c] for s in secs] for c in _CH}
        return (self._defaults(test, secs, cols) + self._identical(test, secs, cols)
                + self._neighbours(test, secs, cols))

    def _defaults(self, test: segments.TestRecord, secs: list[segments.Second],
                  cols: dict[str, list[float]]) -> list[Alert]:
        if secs[-1].t - secs[0].t + 1 < self.p["min_default_seconds"]:
            return []
        tol = self.p["default_tolerance"]
        for d in self.p["defaults"]:
            if all(abs(x - d[i]) <= tol[i] for i, c in enumerate(_CH) for x in cols[c]):
                return [self.test_alert(
                    test, "high",
                    f"Weather equals software default {d[0]} °C / {d[1]} % / {d[2]} kPa in all "
                    f"{len(secs)} s of the test: no weather station connected",
                    f"环境参数在整个检测过程（{len(secs)} 秒）中恒为软件默认值 {d[0]}°C / "
                    f"{d[1]}% / {d[2]} kPa，疑似未接入气象站或使用默认气象数据",
                    {"check": "software_default", "default": list(d), "seconds": len(secs),
                     "threshold_seconds": self.p["min_default_seconds"]},
                    secs, check="software_default")]
        return []

    def _identical(self, test: segments.TestRecord, secs: list[segments.Second],
                   cols: dict[str, list[float]]) -> list[Alert]:
        sig = tuple(x for c in _CH for x in (min(cols[c]), max(cols[c])))
        run = self.runs.setdefault((test.site, test.lane), _Run())
        if sig != run.signature:
            run.signature, run.tests, run.reported, run.reported_high = sig, [], set(), set()
        run.tests.append(test.slim(*_CH))
        need = self.p["min_identical_tests"]
        if len(run.tests) < need:
            return []
        ids = [t.id for t in run.tests]
        vals = f"{sig[0]}–{sig[1]} °C / {sig[2]}–{sig[3]} % / {sig[4]}–{sig[5]} kPa"
        span_h = (run.tests[-1].end - run.tests[0].start) / 3600.0
        sev: Any = "high" if len(ids) >= 2 * need and span_h >= self.p["high_span_h"] \
            else "medium"
        out = []
        for t in run.tests:
            if t.id in run.reported and (sev == "medium" or t.id in run.reported_high):
                continue
            run.reported.add(t.id)
            if sev == "high":
                run.reported_high.add(t.id)
            out.append(self.test_alert(
                t, sev,
                f"Weather identical over {len(ids)} consecutive tests (≥ {need}): {vals}; "
                f"frozen or fabricated weather data suspected",
                f"环境参数连续 {len(ids)} 次检测完全相同（阈值 {need} 次）：{vals}，"
                f"疑似使用固定或伪造的气象数据",
                {"check": "identical_over_tests", "tests": len(ids), "test_ids": ids,
                 "span_h": round(span_h, 2),
                 "weather": {c: [sig[2 * i], sig[2 * i + 1]] for i, c in enumerate(_CH)},
                 "threshold_tests": need, "threshold_span_h": self.p["high_span_h"]},
                [s for s in t.seconds if "ambient_temp_c" in s.values],
                check="identical_over_tests"))
        return out

    def _neighbours(self, test: segments.TestRecord, secs: list[segments.Second],
                    cols: dict[str, list[float]]) -> list[Alert]:
        temp = statistics.fmean(cols["ambient_temp_c"])
        kpa = statistics.fmean(cols["ambient_kpa"])
        self.latest[test.site] = (test.end, temp, kpa)
        site = self.sites.get(test.site)
        if site is None or not site.neighbours:
            return []
        near = [self.latest[n] for n in site.neighbours if n in self.latest
                and abs(self.latest[n][0] - test.end) <= self.p["neighbour_window_s"]]
        if not near:
            return []
        t_ref = statistics.median(x[1] for x in near)
        p_ref = statistics.median(x[2] for x in near)
        dt, dp = temp - t_ref, kpa - p_ref
        if abs(dt) <= self.p["max_temp_diff_c"] and abs(dp) <= self.p["max_kpa_diff"]:
            return []
        return [self.test_alert(
            test, "medium",
            f"Lane weather {temp:.1f} °C / {kpa:.2f} kPa differs from nearby stations "
            f"({t_ref:.1f} °C / {p_ref:.2f} kPa) by {dt:+.1f} °C / {dp:+.2f} kPa "
            f"(limits {self.p['max_temp_diff_c']} °C / {self.p['max_kpa_diff']} kPa)",
            f"检测线气象数据 {temp:.1f}°C / {kpa:.2f} kPa 与附近站点（{t_ref:.1f}°C / "
            f"{p_ref:.2f} kPa）相差 {dt:+.1f}°C / {dp:+.2f} kPa（阈值 "
            f"{self.p['max_temp_diff_c']}°C / {self.p['max_kpa_diff']} kPa），疑似气象数据不真实",
            {"check": "neighbours", "temp_c": round(temp, 2), "kpa": round(kpa, 3),
             "neighbour_temp_c": round(t_ref, 2), "neighbour_kpa": round(p_ref, 3),
             "neighbours": len(near), "threshold_temp_c": self.p["max_temp_diff_c"],
             "threshold_kpa": self.p["max_kpa_diff"]},
            secs, check="neighbours")]
