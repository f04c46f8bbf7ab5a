"""E7 — probe moved to clean water or clean air (pattern E7 of the falsification patterns).

Signature: variability far below the site's own history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors.base import Alert, Detector, SiteInfo
from ingest.detectors.common import (
    ENV_KINDS,
    MEDIUM_HIGH,
    FlowState,
    Quantum,
    SortedWindow,
    is_parameter,
    num,
    window,
)
from ingest.detectors.hourly import DAY, HourValues, Origins


@dataclass(slots=True)
class _Day:
    start: float
    values: list[float] = field(default_factory=list)
    origins: Origins = field(default_factory=Origins)


@dataclass(slots=True)
class _Run:
    start: float
    last: float
    days: list[dict[str, Any]] = field(default_factory=list)
    baseline: float = 0.0
    level: int = 0
    origins: Origins = field(default_factory=Origins)


class LowVariabilityDetector(Detector):
    """E7 — variability far below the site's own history, day after day.

    Per signal (all measured signals, or only those in `signals` when set), each UTC day
    with at least `min_hours_per_day` hourly means (plant running — flow above `flow_min` —
    where the site has a flow signal) gets a coefficient of variation CV = std / mean of
    its hourly means. A day is "quiet" when its CV is below `ratio` times the median CV of
    the site's previous `history_days` judged days (at least `min_history_days` of them;
    quiet days do not enter the history, so a week of fraud cannot lower its own bar).

    Days whose mean is within `min_mean_steps` reporting steps of zero are skipped (SO2 at
    its detection limit, CO in 0.1 mg/m³ steps on a clean day: quantisation, not a moved
    probe), and so are flat days (one value all day: E4's business) and days with a mean
    at or below zero (CV undefined). Skipped days and days with too few hours neither
    extend nor end a run, unless more than `max_gap_days` pass without a judged day.

    A single calm day happens; a week of it does not. Severity: medium after `min_days`
    consecutive quiet days, high after `high_days`. Evidence: each quiet day's CV, the
    baseline median CV, the ratio, the window and the origins of the samples.
    """

    rule: ClassVar[str] = "E7"
    kinds: ClassVar[tuple[str, ...]] = ENV_KINDS
    uses_hours: ClassVar[bool] = True
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "ratio": 0.2,
        "history_days": 30,
        "min_history_days": 14,
        "min_days": 2,
        "high_days": 4,
        "min_hours_per_day": 18,
        "min_mean_steps": 10,
        "max_gap_days": 2,
        "signals": [],
        "flow_min": 0.0,
    }

    def __init__(self, sites: dict[str, SiteInfo], params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        self._flow = FlowState(sites, float(self.p["flow_min"]))
        self._days: dict[tuple[str, str, str], _Day] = {}
        self._hist: dict[tuple[str, str, str], SortedWindow] = {}
        self._runs: dict[tuple[str, str, str], _Run] = {}
        self._quantum: dict[tuple[str, str, str], Quantum] = {}
        self._only = set(self.p["signals"])

    def on_hour(self, h: HourValues) -> list[Alert]:
        self._flow.update(h.site, h.values)
        out: list[Alert] = []
        if not self._flow.operating(h.site):
            return out
        day = h.start - h.start % DAY
        for sig, v in h.values.items():
            if is_parameter(sig) or (self._only and sig not in self._only):
                continue
            key = (h.site, h.instrument, sig)
            d = self._days.get(key)
            if d is None or d.start != day:
                if d is not None:
                    out += self._close_day(key, d)
                d = self._days[key] = _Day(day)
            d.values.append(v)
            d.origins.merge(h.origins)
        return out

    def _close_day(self, key: tuple[str, str, str], d: _Day) -> list[Alert]:
        p = self.p
        out: list[Alert] = []
        run = self._runs.get(key)
        xs = d.values
        cv: float | None = None
        if len(xs) >= p["min_hours_per_day"] and max(xs) > min(xs):
            mean = sum(xs) / len(xs)
            q = self._quantum.get(key)
            if q is None:
                q = self._quantum[key] = Quantum()
            if not q.step:
                for x in xs:  # learn the reporting step from hourly values, not the mean
                    q.steps(x)
            if mean > 0 and q.steps(mean) > p["min_mean_steps"]:
                cv = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)) / mean
        hist = self._hist.get(key)
        if hist is None:
            hist = self._hist[key] = SortedWindow(int(p["history_days"]))
        quiet = False
        if cv is not None and len(hist) >= p["min_history_days"]:
            base = hist.quantile(0.5)
            quiet = base > 0 and cv < p["ratio"] * base
        if cv is None:
            if run is not None and d.start - run.last > (1 + p["max_gap_days"]) * DAY:
                out += self._end_run(key)
            return out
        if quiet:
            if run is not None and d.start - run.last > (1 + p["max_gap_days"]) * DAY:
                out += self._end_run(key)
                run = None
            if run is None:
                run = self._runs[key] = _Run(d.start, d.start, baseline=base)
            run.last = d.start
            run.days.append({"day": window(d.start, d.start + DAY)["start"][:10],
                             "cv": num(cv, 3), "ratio": num(cv / base, 3), "hours": len(xs)})
            run.origins.merge(d.origins)
            n = len(run.days)
            level = 2 if n >= p["high_days"] else 1 if n >= p["min_days"] else 0
            if level > run.level:
                run.level = level
                out.append(self._alert(key, run, final=False))
        else:
            hist.add(cv)
            if run is not None:
                out += self._end_run(key)
        return out

    def _end_run(self, key: tuple[str, str, str]) -> list[Alert]:
        run = self._runs.pop(key, None)
        if run is not None and run.level:
            return [self._alert(key, run, final=True)]
        return []

    def _alert(self, key: tuple[str, str, str], run: _Run, final: bool) -> Alert:
        site, inst, sig = key
        p = self.p
        n = len(run.days)
        worst = max(d["ratio"] for d in run.days)
        ev: dict[str, Any] = {
            "finding": "low_variability",
            "signal": sig,
            "days": run.days,
            "baseline_median_cv": num(run.baseline, 3),
            "ratio_threshold": p["ratio"],
            "history_days": p["history_days"],
            "window": window(run.start, run.last + DAY),
            "ongoing": not final,
        }
        if run.origins:
            ev["origins"] = run.origins.to_json()
        sev = MEDIUM_HIGH[run.level - 1]
        return Alert(
            rule=self.rule, severity=sev, site=site, instrument=inst,
            start=run.start, end=run.last + DAY,
            summary_en=(f"{sig}: {n} consecutive days with variability at most "
                        f"{100 * worst:.0f} % of the site's usual (CV vs 30-day median "
                        f"{run.baseline:.2f}; threshold {100 * p['ratio']:.0f} %): probe in "
                        "clean water/air or a steady reference, not the monitored medium?"),
            summary_zh=(f"{sig}连续{n}天波动幅度仅为本站常态的{100 * worst:.0f}%以下"
                        f"（变异系数对比近30天中位数{run.baseline:.2f}，阈值"
                        f"{100 * p['ratio']:.0f}%）：疑似探头被移至清水/洁净空气或接入稳定气源，"
                        "未监测实际排放。"),
            evidence=ev, key=f"E7|{site}|{inst}|{sig}",
        )

    def finish(self) -> list[Alert]:
        out: list[Alert] = []
        for key, d in list(self._days.items()):
            out += self._close_day(key, d)
        self._days.clear()
        for key in list(self._runs):
            out += self._end_run(key)
        return out
