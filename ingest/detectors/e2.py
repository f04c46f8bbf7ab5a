"""E2 — dilution with air, nitrogen or water (pattern E2 of the falsification patterns).

Signature: stack O2 abnormally high while a pollutant sits near its limit; the
O2-corrected concentration tells another story than the measured one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors.base import Alert, Detector, SiteInfo
from ingest.detectors.common import MEDIUM_HIGH, FlowState, SortedWindow, num, window
from ingest.detectors.hourly import HOUR, HourValues, Origins

AIR_O2 = 20.9


@dataclass(slots=True)
class _Run:
    start: float
    last: float
    hours: int = 0
    hidden_hours: int = 0
    level: int = 0
    o2_sum: float = 0.0
    threshold: float = 0.0
    polls: dict[str, list[float]] = field(default_factory=dict)  # sig -> [sum, corr_sum, n]
    origins: Origins = field(default_factory=Origins)


def corrected(c: float, o2: float, o2_ref: float) -> float:
    """Concentration at the reference O2 (HJ 75: C × (21 − O2ref) / (21 − O2))."""
    return c * (21.0 - o2_ref) / (21.0 - o2) if o2 < 20.95 else float("inf")


class DilutionDetector(Detector):
    """E2 — stack O2 abnormally high while a pollutant sits near its limit.

    Per stack instrument, on hourly means while the plant runs (flow above `flow_min`):

    *Dilution*: O2 (`o2_signal`) above the `o2_quantile` of the stack's own last
    `history_h` running hours by more than `o2_margin_pct` (after `min_history_h` hours),
    while at least one pollutant with a limit (`pollutants`) reads in
    ``[near_frac * L, L]`` (`near_frac`) — or reads under its limit although its
    O2-corrected value ``C × (21 − o2_ref_pct) / (21 − O2)`` (`o2_ref_pct`, the reference
    O2 of the applicable standard: 6 % for coal-fired boilers) is above it ("hidden exceedance": the
    corrected/measured ratio is what dilution distorts). The shared rule compares with
    same-type stacks; a stack's own history is what every installation has, and a
    regulator can substitute a fleet figure through `o2_quantile`/`o2_margin_pct`.

    *Ambient O2*: O2 at or above `o2_air_pct` while flue gas flows: the analyzer is
    sampling (nearly) ambient air — probe out of the duct, leaking line or deliberate
    dilution; O2 correction of such values is meaningless.

    Hours judged abnormal do not enter the O2 history, so dilution cannot raise its own
    threshold. Severity: dilution — medium after `min_hours` consecutive hours, high after
    `high_hours` or when the hidden exceedance lasted `min_hours`; ambient O2 — medium
    after `min_hours`. Evidence: O2 mean and threshold, each pollutant's measured and
    corrected mean against its limit, the window and the origins.
    """

    rule: ClassVar[str] = "E2"
    kinds: ClassVar[tuple[str, ...]] = ("stack_cems",)
    uses_hours: ClassVar[bool] = True
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "o2_signal": "o2_stack_pct",
        "pollutants": ["so2_mgm3", "nox_mgm3", "pm_mgm3"],
        "o2_ref_pct": 6.0,
        "near_frac": 0.8,
        "o2_quantile": 0.9,
        "o2_margin_pct": 1.0,
        "o2_air_pct": 19.0,
        "history_h": 720,
        "min_history_h": 168,
        "min_hours": 2,
        "high_hours": 6,
        "flow_min": 0.0,
    }

    def __init__(self, sites: dict[str, SiteInfo], params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        self._flow = FlowState(sites, float(self.p["flow_min"]))
        self._o2: dict[tuple[str, str], SortedWindow] = {}
        self._runs: dict[tuple[str, str, str], _Run] = {}

    def on_hour(self, h: HourValues) -> list[Alert]:
        p = self.p
        self._flow.update(h.site, h.values)
        o2 = h.values.get(p["o2_signal"])
        if o2 is None or not self._flow.operating(h.site):
            return []
        key = (h.site, h.instrument)
        hist = self._o2.get(key)
        if hist is None:
            hist = self._o2[key] = SortedWindow(int(p["history_h"]))
        limits = self.sites[h.site].limits
        thr = None
        if len(hist) >= p["min_history_h"]:
            thr = hist.quantile(float(p["o2_quantile"])) + float(p["o2_margin_pct"])
        near: dict[str, tuple[float, float]] = {}
        hidden = False
        for pol in p["pollutants"]:
            lim, c = limits.get(pol), h.values.get(pol)
            if lim is None or c is None:
                continue
            cc = corrected(c, o2, float(p["o2_ref_pct"]))
            if p["near_frac"] * lim <= c <= lim or (c <= lim < cc):
                near[pol] = (c, cc)
                hidden = hidden or c <= lim < cc
        out: list[Alert] = []
        diluted = thr is not None and o2 > thr and bool(near)
        ambient = o2 >= p["o2_air_pct"]
        out += self._step((*key, "dilution"), diluted, h, o2, thr or 0.0, near, hidden)
        out += self._step((*key, "ambient_o2"), ambient, h, o2, float(p["o2_air_pct"]), {},
                          False)
        if not diluted and not ambient:
            hist.add(o2)
        return out

    def _step(self, key: tuple[str, str, str], hit: bool, h: HourValues, o2: float,
              thr: float, near: dict[str, tuple[float, float]], hidden: bool) -> list[Alert]:
        out: list[Alert] = []
        run = self._runs.get(key)
        if run is not None and (not hit or h.start - run.last > HOUR):
            del self._runs[key]
            if run.level:
                out.append(self._alert(key, run, final=True))
            run = None
        if not hit:
            return out
        if run is None:
            run = self._runs[key] = _Run(h.start, h.start)
        run.last = h.start
        run.hours += 1
        run.hidden_hours += hidden
        run.o2_sum += o2
        run.threshold = thr
        run.origins.merge(h.origins)
        for pol, (c, cc) in near.items():
            acc = run.polls.setdefault(pol, [0.0, 0.0, 0.0])
            acc[0] += c
            acc[1] += cc
            acc[2] += 1
        p = self.p
        level = 0
        if run.hours >= p["min_hours"]:
            level = 1
            if key[2] == "dilution" and (run.hours >= p["high_hours"]
                                         or run.hidden_hours >= p["min_hours"]):
                level = 2
        if level > run.level:
            run.level = level
            out.append(self._alert(key, run, final=False))
        return out

    def _alert(self, key: tuple[str, str, str], run: _Run, final: bool) -> Alert:
        site, inst, finding = key
        p = self.p
        o2m = run.o2_sum / run.hours
        limits = self.sites[site].limits
        polls = {
            pol: {"measured_mean": num(s / n), "corrected_mean": num(cs / n),
                  "limit": limits[pol]}
            for pol, (s, cs, n) in run.polls.items()
        }
        ev: dict[str, Any] = {
            "finding": finding,
            "o2_mean_pct": num(o2m, 3),
            "o2_threshold_pct": num(run.threshold, 3),
            "o2_reference_pct": p["o2_ref_pct"],
            "hours": run.hours,
            "hidden_exceedance_hours": run.hidden_hours,
            "pollutants": polls,
            "window": window(run.start, run.last + HOUR),
            "ongoing": not final,
        }
        if run.origins:
            ev["origins"] = run.origins.to_json()
        sev = MEDIUM_HIGH[run.level - 1]
        if finding == "ambient_o2":
            en = (f"Stack O2 averaged {o2m:.1f} % (≥ {p['o2_air_pct']} %, nearly ambient air) "
                  f"for {run.hours} h while flue gas was flowing: the analyzer sampled air "
                  "(probe out of the duct, leaking line or deliberate dilution).")
            zh = (f"烟气O2连续{run.hours}小时均值{o2m:.1f}%（≥{p['o2_air_pct']}%，接近环境空气），"
                  "而烟道仍有烟气流量：疑似采样探头脱离烟道、管路漏气或人为稀释。")
        else:
            pol_en = "; ".join(f"{k} {v['measured_mean']} measured, {v['corrected_mean']} at "
                               f"{p['o2_ref_pct']} % O2, limit {v['limit']}"
                               for k, v in polls.items())
            pol_zh = "；".join(f"{k}实测{v['measured_mean']}，折算（基准氧{p['o2_ref_pct']}%）"
                               f"{v['corrected_mean']}，限值{v['limit']}" for k, v in polls.items())
            en = (f"Stack O2 {o2m:.1f} % for {run.hours} h, above this stack's usual "
                  f"(threshold {run.threshold:.1f} %), while pollutants sat near their limits "
                  f"({pol_en}): flue gas or sample diluted with air/nitrogen?")
            zh = (f"烟气O2连续{run.hours}小时达{o2m:.1f}%，"
                  f"高于本排口常态（阈值{run.threshold:.1f}%），"
                  f"同时污染物浓度紧贴限值（{pol_zh}）：疑似以空气或氮气稀释烟气或样气。")
        return Alert(rule=self.rule, severity=sev, site=site, instrument=inst,
                     start=run.start, end=run.last + HOUR, summary_en=en, summary_zh=zh,
                     evidence=ev, key=f"E2|{site}|{inst}|{finding}")

    def finish(self) -> list[Alert]:
        out = [self._alert(k, r, final=True) for k, r in self._runs.items() if r.level]
        self._runs.clear()
        return out
