"""E1 — sampler blocked or wetted (pattern E1 of the falsification patterns).

Signature: the station reads far below its neighbours (Xi'an cotton case, filters, water
spray on the inlet); PM2.5 above PM10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors.base import Alert, Detector, SiteInfo
from ingest.detectors.common import (
    LOW_MEDIUM_HIGH,
    MeanStd,
    hours_text,
    median,
    num,
    window,
)
from ingest.detectors.hourly import HOUR, HourValues, Origins

_NAMES_ZH = {"pm25_ugm3": "PM2.5", "pm10_ugm3": "PM10"}


def distance_km(a: SiteInfo, b: SiteInfo) -> float:
    if a.lat is None or a.lon is None or b.lat is None or b.lon is None:
        return math.inf
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


@dataclass(slots=True)
class _SiteHour:
    values: dict[str, float] = field(default_factory=dict)
    origins: Origins = field(default_factory=Origins)
    #: Judged already (a site's second instrument closing the same hour late must not make
    #: its CUSUM count the hour twice).
    judged: bool = False


@dataclass(slots=True)
class _Episode:
    """A run of hours in which the one-sided CUSUM of the depression stays below zero."""

    start: float
    last_low: float
    cusum: float = 0.0
    worst_cusum: float = 0.0
    hours: int = 0
    calm: int = 0
    level: int = 0
    worst_z: float = 0.0
    sums: dict[str, list[float]] = field(default_factory=dict)  # sig -> [x, expected, nbr, n]
    #: Per depressed hour, how far below expected the station read (mean over signals).
    drops: list[float] = field(default_factory=list)
    origins: Origins = field(default_factory=Origins)


@dataclass(slots=True)
class _RatioRun:
    start: float
    last: float
    hours: int = 0
    sum25: float = 0.0
    sum10: float = 0.0
    emitted: bool = False
    origins: Origins = field(default_factory=Origins)


class NeighbourDepressionDetector(Detector):
    """E1 — station far below its neighbours for hours (blocked or wetted sampler).

    Each hour, for each signal in `signals`, the station's value is predicted from every
    neighbour: the neighbour's value times the station's typical ratio to that neighbour
    (30-day rolling mean of the log ratio, `history_h`), on ``ln(value + offset)``
    (`offset` in the signal's unit) so that clean hours do not dominate. The residual is
    the station's log value minus the median of those predictions, standardised by the
    residual's own rolling mean and standard deviation σ (hours more than `sigma` σ out
    are clipped before entering σ, and do not update the ratios, so a fraud cannot
    inflate its own yardstick). No
    judgement before `min_history_h` hours of history or with fewer than `min_neighbours`
    neighbours reporting.

    The shared rule is "> 3σ below neighbours' median for ≥ 2 h". Real neighbours differ
    by more than that for a few hours now and then (fronts reach suburban stations first),
    so the hours are accumulated with a one-sided CUSUM of the mean z over signals,
    ``S = min(0, S + z + cusum_k)``, and an alert needs the accumulated depression of
    `sigma` σ sustained for `min_hours` (S below ``-(sigma - cusum_k) * min_hours``): two
    hours at 3σ trigger it, and so do four at 2σ. The episode ends after `recover_hours`
    hours back within `cusum_k` σ; its window and means cover the depressed hours
    (z below ``-cusum_k``). Neighbourhoods also drift apart by 15–25 % for a day or two
    (local sources, a sea breeze); an alert therefore also needs the station to have read
    at least `min_drop_pct` below expected (on ``value + offset``), on average over its
    latest `drop_hours` depressed hours — a blocked or wetted inlet removes far more.

    Neighbours: the site's `neighbours` list in SITES.yaml, else the nearest air-quality
    sites within `radius_km` (at most `max_neighbours`). An hour is judged once the stream
    has moved `lateness_h` hours beyond it, so neighbours arriving a little late still count.

    Second check: PM2.5 above PM10 (``pm25 > pm10 * (1 + ratio_tol) + ratio_abs``, with
    `ratio_tol` and `ratio_abs` absorbing the two analyzers' tolerances) for
    `ratio_hours` consecutive hours — physically impossible when both inlets sample the
    same air, but also seen with separate analyzers in humid air (real Beijing data has
    it every month), hence low severity.

    Severity: low at `min_hours` equivalents, medium at `medium_hours`, high at
    `high_hours` (e.g. 12 h at 3σ). Evidence: station, expected and neighbour-median means
    per signal over the episode, the CUSUM in σ·h, σ, the neighbours, the window and the
    origins of the station's samples.
    """

    rule: ClassVar[str] = "E1"
    kinds: ClassVar[tuple[str, ...]] = ("air_quality",)
    uses_hours: ClassVar[bool] = True
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "signals": ["pm25_ugm3", "pm10_ugm3"],
        "sigma": 3.0,
        "min_hours": 2.0,
        "medium_hours": 6.0,
        "high_hours": 12.0,
        "cusum_k": 1.0,
        "min_drop_pct": 35.0,
        "drop_hours": 6,
        "recover_hours": 3,
        "offset": 10.0,
        "history_h": 720,
        "min_history_h": 168,
        "min_neighbours": 3,
        "radius_km": 50.0,
        "max_neighbours": 6,
        "lateness_h": 1,
        "ratio_tol": 0.1,
        "ratio_abs": 5.0,
        "ratio_hours": 12,
    }

    def __init__(self, sites: dict[str, SiteInfo], params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        p = self.p
        self.signals: list[str] = list(p["signals"])
        self.neighbours: dict[str, list[str]] = {}
        aq = [s for s in sites.values() if s.kind == "air_quality"]
        for s in aq:
            if s.neighbours:
                self.neighbours[s.id] = list(s.neighbours)
            else:
                near = sorted(
                    (distance_km(s, o), o.id) for o in aq
                    if o.id != s.id and distance_km(s, o) <= float(p["radius_km"])
                )
                self.neighbours[s.id] = [i for _, i in near[: int(p["max_neighbours"])]]
        self._hours: dict[str, dict[float, _SiteHour]] = {}
        self._next_eval: float | None = None
        self._clock = -math.inf
        self._bias: dict[tuple[str, str, str], MeanStd] = {}
        self._resid: dict[tuple[str, str], MeanStd] = {}
        self._episodes: dict[str, _Episode] = {}
        self._cusum: dict[str, float] = {}
        self._ratio: dict[str, _RatioRun] = {}
        self._inst: dict[str, str] = {}
        k = float(p["cusum_k"])
        depth = float(p["sigma"]) - k
        self._levels = [depth * float(p[n]) for n in ("min_hours", "medium_hours", "high_hours")]

    # -- input ---------------------------------------------------------------------------

    def on_hour(self, h: HourValues) -> list[Alert]:
        per_site = self._hours.setdefault(h.site, {})
        sh = per_site.get(h.start)
        if sh is None:
            sh = per_site[h.start] = _SiteHour()
        sh.values.update(h.values)
        sh.origins.merge(h.origins)
        self._inst.setdefault(h.site, h.instrument)
        out: list[Alert] = []
        if self._next_eval is not None and h.start < self._next_eval:
            # A late hour: its neighbours' hours have already been judged; judge this site now.
            out += self._evaluate_site(h.site, h.start)
            return out
        if h.start > self._clock:
            self._clock = h.start
        if self._next_eval is None:
            self._next_eval = h.start
        horizon = self._clock - float(self.p["lateness_h"]) * HOUR
        while self._next_eval <= horizon:
            out += self._evaluate_hour(self._next_eval)
            self._next_eval += HOUR
        return out

    def finish(self) -> list[Alert]:
        out: list[Alert] = []
        if self._next_eval is not None:
            while self._next_eval <= self._clock:
                out += self._evaluate_hour(self._next_eval)
                self._next_eval += HOUR
        for site, ep in list(self._episodes.items()):
            if ep.level:
                out.append(self._alert(site, ep, final=True))
        self._episodes.clear()
        for site, rr in list(self._ratio.items()):
            if rr.emitted:
                out.append(self._ratio_alert(site, rr, final=True))
        self._ratio.clear()
        return out

    # -- judgement -----------------------------------------------------------------------

    def _evaluate_hour(self, hour: float) -> list[Alert]:
        out: list[Alert] = []
        for site in self._hours:
            if hour in self._hours[site]:
                out += self._evaluate_site(site, hour)
        keep_from = hour - (float(self.p["lateness_h"]) + 48) * HOUR
        for per_site in self._hours.values():
            for t in [t for t in per_site if t < keep_from]:
                del per_site[t]
        return out

    def _z(self, site: str, sig: str, x: float, hour: float,
           nbr_values: list[tuple[str, float]]) -> tuple[float | None, float, float]:
        """(z, expected value, neighbour median) for one signal of one station-hour."""
        off = float(self.p["offset"])
        lx = math.log(max(x, 0.0) + off)
        preds: list[float] = []
        logs: list[tuple[str, float]] = []
        for n, y in nbr_values:
            ly = math.log(max(y, 0.0) + off)
            logs.append((n, ly))
            b = self._bias.get((site, n, sig))
            preds.append(ly + (b.mean() if b is not None else 0.0))
        pred = median(preds)
        r = lx - pred
        st = self._resid.get((site, sig))
        if st is None:
            st = self._resid[(site, sig)] = MeanStd(int(self.p["history_h"]))
        sigma = float(self.p["sigma"])
        z: float | None = None
        sd = st.std()
        if len(st) >= int(self.p["min_history_h"]) and sd > 0:
            z = (r - st.mean()) / sd
        if z is None:
            st.add(r)
        else:
            st.add(st.mean() + max(-sigma, min(sigma, z)) * sd)
        if z is None or abs(z) <= sigma:
            # Anomalous hours, either way, stay out of the biases: a week of manipulated
            # readings must not become the station's "typical ratio" to its neighbours.
            for n, ly in logs:
                b = self._bias.get((site, n, sig))
                if b is None:
                    b = self._bias[(site, n, sig)] = MeanStd(int(self.p["history_h"]))
                b.add(lx - ly)
        return z, math.exp(pred) - off, median([y for _, y in nbr_values])

    def _evaluate_site(self, site: str, hour: float) -> list[Alert]:
        sh = self._hours[site][hour]
        out: list[Alert] = []
        if sh.judged:
            return out
        sh.judged = True
        zs: list[float] = []
        detail: dict[str, tuple[float, float, float]] = {}
        for sig in self.signals:
            x = sh.values.get(sig)
            if x is None:
                continue
            nbr = []
            for n in self.neighbours.get(site, []):
                nh = self._hours.get(n, {}).get(hour)
                if nh is not None and sig in nh.values:
                    nbr.append((n, nh.values[sig]))
            if len(nbr) < int(self.p["min_neighbours"]):
                continue
            z, expected, nmed = self._z(site, sig, x, hour, nbr)
            if z is not None:
                zs.append(z)
                detail[sig] = (x, expected, nmed)
        out += self._ratio_check(site, hour, sh)
        if not zs:
            return out
        zc = sum(zs) / len(zs)
        k = float(self.p["cusum_k"])
        ep = self._episodes.get(site)
        s = min(0.0, self._cusum.get(site, 0.0) + zc + k)
        if ep is not None and zc >= -k:
            ep.calm += 1
            if ep.calm >= int(self.p["recover_hours"]):
                s = 0.0  # back in line with the neighbours: the episode is over
        self._cusum[site] = s
        if s >= 0.0:
            if ep is not None:
                del self._episodes[site]
                if ep.level:
                    out.append(self._alert(site, ep, final=True))
            return out
        if ep is None:
            ep = self._episodes[site] = _Episode(start=hour, last_low=hour)
        ep.cusum = s
        ep.worst_cusum = min(ep.worst_cusum, s)
        ep.hours += 1
        ep.worst_z = min(ep.worst_z, zc)
        if zc < -k:
            ep.calm = 0
            ep.last_low = hour
            ep.origins.merge(sh.origins)
            off = float(self.p["offset"])
            hour_drops = [1 - (x + off) / (e + off) for x, e, _ in detail.values()]
            if hour_drops:
                ep.drops.append(100 * sum(hour_drops) / len(hour_drops))
            for sig, (x, expected, nmed) in detail.items():
                acc = ep.sums.setdefault(sig, [0.0, 0.0, 0.0, 0.0])
                acc[0] += x
                acc[1] += expected
                acc[2] += nmed
                acc[3] += 1
        level = sum(1 for lv in self._levels if -s >= lv)
        if level > ep.level and self._drop_pct(ep) >= float(self.p["min_drop_pct"]):
            ep.level = level
            out.append(self._alert(site, ep, final=False))
        return out

    def _drop_pct(self, ep: _Episode) -> float:
        """How far below expected the station read in its latest `drop_hours` depressed
        hours, on ``value + offset`` like the residuals (each hour counts the same, however
        polluted: a sampler blocked at night reads 5 instead of 12, which a sum over a
        dirty afternoon would drown; the offset keeps 5-versus-9 at night from counting
        as a 44 % drop)."""
        recent = ep.drops[-int(self.p["drop_hours"]):]
        return sum(recent) / len(recent) if recent else 0.0

    def _alert(self, site: str, ep: _Episode, final: bool) -> Alert:
        sev = LOW_MEDIUM_HIGH[ep.level - 1]
        sigs: dict[str, Any] = {}
        parts_en: list[str] = []
        parts_zh: list[str] = []
        for sig, (x, e, m, n) in ep.sums.items():
            xm, em, mm = x / n, e / n, m / n
            below = 100.0 * (1 - xm / em) if em > 0 else 0.0
            sigs[sig] = {"station_mean": num(xm), "expected_mean": num(em),
                         "neighbour_median_mean": num(mm), "below_expected_pct": num(below, 3)}
            parts_en.append(f"{sig} {xm:.0f} vs {em:.0f} expected from neighbours "
                            f"({below:.0f} % lower)")
            parts_zh.append(f"{_NAMES_ZH.get(sig, sig)}均值{xm:.0f}，按周边站点推算应为{em:.0f}"
                            f"（偏低{below:.0f}%）")
        hours = (ep.last_low - ep.start) / HOUR + 1
        ev: dict[str, Any] = {
            "finding": "below_neighbours",
            "signals": sigs,
            "hours": num(hours, 3),
            "window": window(ep.start, ep.last_low + HOUR),
            "cusum_sigma_hours": num(-ep.worst_cusum, 3),
            "thresholds_sigma_hours": {"low": self._levels[0], "medium": self._levels[1],
                                       "high": self._levels[2]},
            "worst_hour_z": num(ep.worst_z, 3),
            "sigma": self.p["sigma"],
            "drop_pct": num(self._drop_pct(ep), 3),
            "min_drop_pct": self.p["min_drop_pct"],
            "neighbours": self.neighbours.get(site, []),
            "ongoing": not final,
        }
        if ep.origins:
            ev["origins"] = ep.origins.to_json()
        return Alert(
            rule=self.rule, severity=sev, site=site, instrument=self._inst.get(site, ""),
            start=ep.start, end=ep.last_low + HOUR,
            summary_en=(f"{site} read far below its neighbours for {hours_text(hours)} h: "
                        + "; ".join(parts_en)
                        + f" (sustained depression {-ep.worst_cusum:.0f} σ·h beyond "
                        f"{self.p['cusum_k']} σ): sampler inlet blocked or wetted?"),
            summary_zh=(f"站点{site}连续{hours_text(hours)}小时显著低于周边站点："
                        + "；".join(parts_zh)
                        + "。疑似采样口被堵塞（如塞棉纱）或被喷淋、遮挡，导致监测数据失真。"),
            evidence=ev, key=f"E1|{site}|{self._inst.get(site, '')}",
        )

    # -- PM2.5 > PM10 ---------------------------------------------------------------------

    def _ratio_check(self, site: str, hour: float, sh: _SiteHour) -> list[Alert]:
        pm25, pm10 = sh.values.get("pm25_ugm3"), sh.values.get("pm10_ugm3")
        if pm25 is None or pm10 is None:
            return []
        rr = self._ratio.get(site)
        hit = pm25 > pm10 * (1 + float(self.p["ratio_tol"])) + float(self.p["ratio_abs"])
        if not hit or (rr is not None and hour - rr.last > HOUR):
            if rr is not None:
                del self._ratio[site]
                if rr.emitted:
                    return [self._ratio_alert(site, rr, final=True)]
            if not hit:
                return []
            rr = None
        if rr is None:
            rr = self._ratio[site] = _RatioRun(hour, hour)
        rr.last = hour
        rr.hours += 1
        rr.sum25 += pm25
        rr.sum10 += pm10
        rr.origins.merge(sh.origins)
        if not rr.emitted and rr.hours >= int(self.p["ratio_hours"]):
            rr.emitted = True
            return [self._ratio_alert(site, rr, final=False)]
        return []

    def _ratio_alert(self, site: str, rr: _RatioRun, final: bool) -> Alert:
        m25, m10 = rr.sum25 / rr.hours, rr.sum10 / rr.hours
        ev: dict[str, Any] = {
            "finding": "pm25_above_pm10",
            "hours": rr.hours,
            "pm25_mean": num(m25),
            "pm10_mean": num(m10),
            "window": window(rr.start, rr.last + HOUR),
            "rule": f"pm25 > pm10 * (1 + {self.p['ratio_tol']}) + {self.p['ratio_abs']}",
            "ongoing": not final,
        }
        if rr.origins:
            ev["origins"] = rr.origins.to_json()
        inst = self._inst.get(site, "")
        return Alert(
            rule=self.rule, severity="low", site=site, instrument=inst,
            start=rr.start, end=rr.last + HOUR,
            summary_en=(f"{site}: PM2.5 ({m25:.0f}) above PM10 ({m10:.0f}) for {rr.hours} "
                        "consecutive hours: PM10 sampler obstructed or wetted, or an analyzer "
                        "fault."),
            summary_zh=(f"站点{site}连续{rr.hours}小时PM2.5（{m25:.0f}）高于PM10（{m10:.0f}）："
                        "疑似PM10采样口被遮挡或喷淋，或仪器故障。"),
            evidence=ev, key=f"E1|{site}|{inst}|pm25>pm10",
        )
