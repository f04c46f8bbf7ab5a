"""E3 — parameter or signal tampering in the data logger (pattern E3).

Signature: displayed value ≠ analyzer value; physically unrelated channels move together.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors.base import Alert, Detector, Severity, SiteInfo
from ingest.detectors.common import ENV_KINDS, MEDIUM_HIGH, num, window
from ingest.detectors.hourly import HOUR, HourValues, Origins, origins_of
from stationseal.records import SiteEvent, from_rfc3339

#: Event the HJ 212 reconciliation seals when a logger reported something other than what
#: the analyzer measured (docs/records.md lists its detail keys).
MISMATCH_EVENT = "reported_mismatch"


class _Sums:
    """Running sums of a sliding window of (x, y) pairs, shifted by the first pair seen.

    The shift keeps ``Σx² − n·x̄²`` well conditioned for channels with a large mean and a
    small spread (flows in m³/h); sums are rebuilt exactly from the window every
    ``rebuild`` additions so rounding cannot accumulate.
    """

    __slots__ = ("cx", "cy", "kx", "ky", "n", "rebuild", "since", "sx", "sxx", "sxy", "sy",
                 "syy")

    def __init__(self, x: float, y: float, rebuild: int) -> None:
        self.kx, self.ky = x, y
        self.n = 0
        self.sx = self.sy = self.sxx = self.syy = self.sxy = 0.0
        self.cx: dict[float, int] = {}
        self.cy: dict[float, int] = {}
        self.rebuild = rebuild
        self.since = 0

    def add(self, x: float, y: float, sign: int = 1) -> None:
        u, v = x - self.kx, y - self.ky
        self.n += sign
        self.sx += sign * u
        self.sy += sign * v
        self.sxx += sign * u * u
        self.syy += sign * v * v
        self.sxy += sign * u * v
        for c, k in ((self.cx, x), (self.cy, y)):
            m = c.get(k, 0) + sign
            if m:
                c[k] = m
            else:
                del c[k]

    def reset_from(self, pts: deque[tuple[float, float, float, Origins]]) -> None:
        self.n = 0
        self.sx = self.sy = self.sxx = self.syy = self.sxy = 0.0
        self.cx.clear()
        self.cy.clear()
        for _, x, y, _ in pts:
            self.add(x, y)
        self.since = 0

    def fit(self) -> tuple[float, float, float] | None:
        """(r, slope, intercept) of y on x, or None if either channel is constant."""
        n = self.n
        sxx = self.sxx - self.sx * self.sx / n
        syy = self.syy - self.sy * self.sy / n
        if sxx <= 1e-12 * max(self.sxx, 1e-300) or syy <= 1e-12 * max(self.syy, 1e-300):
            return None
        sxy = self.sxy - self.sx * self.sy / n
        slope = sxy / sxx
        mx, my = self.sx / n + self.kx, self.sy / n + self.ky
        r = max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
        return r, slope, my - slope * mx


@dataclass(slots=True)
class _Pair:
    pts: deque[tuple[float, float, float, Origins]] = field(default_factory=deque)
    sums: _Sums | None = None
    since: float | None = None
    last: float = 0.0
    level: int = 0
    high_run: int = 0
    best_r: float = 0.0
    fit: tuple[float, float, float, int] = (0.0, 0.0, 0.0, 0)


class ChannelTamperingDetector(Detector):
    """E3 — logger channels that move in lockstep, and reported ≠ measured.

    *Lockstep channels*: for each pair of physically unrelated channels of one instrument
    (`pairs`, per site kind), the Pearson correlation of their hourly means over the last
    `window_h` hours (at least `min_points` hours, each channel with at least
    `min_distinct` distinct values so that quantised or flat data cannot fake a perfect
    fit). A logger that computes one channel from another, or copies it with an offset,
    gives ``|r|`` close to 1; real channels driven by different processes do not stay
    that close. The shared rule is ``|r| > 0.98`` over 24 h (`r_threshold`). Real ambient data
    reach 0.98 now and then (everything accumulates under an inversion), so the defaults
    pair pollutants with O3 (photochemical, not co-emitted) and leave out NO2–O3. Even so,
    O3 is titrated away while primary pollutants accumulate, so winter days in Beijing
    show r ≈ −0.99 between CO or PM2.5 and O3: negative correlations are judged only when
    `negative` is set (a channel computed from another is a positive copy in practice).

    Severity: medium while ``|r| > r_threshold``; high once ``|r| >= r_high`` (`r_high`) for
    `high_hours` consecutive hours (a channel that is a formula of another).

    *Reported ≠ measured*: the HJ 212 reconciliation compares what the logger reported
    with the signed analyzer readings and seals a ``reported_mismatch`` event
    (detail: ``signal``, ``reported``, ``measured``, optional ``data_time``, ``unit``,
    ``frame``); each becomes an alert — high when the relative difference is at least
    `mismatch_high_rel` (or unknown), medium otherwise — because altering monitoring data
    between analyzer and platform is exactly what the 2023 judicial interpretation names.
    """

    rule: ClassVar[str] = "E3"
    kinds: ClassVar[tuple[str, ...]] = ENV_KINDS
    uses_hours: ClassVar[bool] = True
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "pairs": {
            "air_quality": [["pm25_ugm3", "o3_ugm3"], ["pm10_ugm3", "o3_ugm3"],
                            ["so2_ugm3", "o3_ugm3"], ["co_mgm3", "o3_ugm3"]],
            "stack_cems": [["so2_mgm3", "pm_mgm3"], ["nox_mgm3", "pm_mgm3"],
                           ["so2_mgm3", "flue_temp_c"]],
            "water_quality": [["cod_mgl", "ph"], ["nh3n_mgl", "ph"], ["tp_mgl", "ph"],
                              ["nh3n_mgl", "tp_mgl"], ["cod_mgl", "water_temp_c"]],
        },
        "window_h": 24,
        "min_points": 18,
        "min_distinct": 6,
        "r_threshold": 0.98,
        "r_high": 0.999,
        "negative": False,
        "high_hours": 6,
        "mismatch_high_rel": 0.05,
    }

    def __init__(self, sites: dict[str, SiteInfo], params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        self.pairs: dict[str, list[tuple[str, str]]] = {
            kind: [(a, b) for a, b in pairs] for kind, pairs in self.p["pairs"].items()
        }
        self._pairs: dict[tuple[str, str, str, str], _Pair] = {}

    def on_hour(self, h: HourValues) -> list[Alert]:
        out: list[Alert] = []
        p = self.p
        span = float(p["window_h"]) * HOUR
        for a, b in self.pairs.get(self.sites[h.site].kind, ()):
            if a not in h.values or b not in h.values:
                continue
            key = (h.site, h.instrument, a, b)
            x, y = h.values[a], h.values[b]
            st = self._pairs.get(key)
            if st is None:
                st = self._pairs[key] = _Pair()
            sums = st.sums
            if sums is None:
                sums = st.sums = _Sums(x, y, 4 * int(p["window_h"]))
            st.pts.append((h.start, x, y, h.origins))
            sums.add(x, y)
            while st.pts[0][0] <= h.start - span:
                _, ox, oy, _ = st.pts.popleft()
                sums.add(ox, oy, -1)
            sums.since += 1
            if sums.since >= sums.rebuild:
                sums.reset_from(st.pts)
            res = None
            if sums.n >= p["min_points"] and len(sums.cx) >= p["min_distinct"] \
                    and len(sums.cy) >= p["min_distinct"]:
                res = sums.fit()
            r = res[0] if res is not None else 0.0
            if not p["negative"]:
                r = max(r, 0.0)
            if res is not None and abs(r) > p["r_threshold"]:
                if st.since is None:
                    st.since = st.pts[0][0]
                    st.level = 0
                    st.high_run = 0
                    st.best_r = 0.0
                st.last = h.start
                st.high_run = st.high_run + 1 if abs(r) >= p["r_high"] else 0
                if abs(r) >= abs(st.best_r):
                    st.best_r = r
                    st.fit = (r, res[1], res[2], len(st.pts))
                level = 2 if st.high_run >= p["high_hours"] else 1
                if level > st.level:
                    st.level = level
                    out.append(self._alert(key, st, final=False))
            elif st.since is not None:
                out.append(self._alert(key, st, final=True))
                st.since = None
        return out

    def _alert(self, key: tuple[str, str, str, str], st: _Pair, final: bool) -> Alert:
        site, inst, a, b = key
        r, slope, icpt, n = st.fit
        assert st.since is not None
        origins = Origins()
        for _, _, _, o in st.pts:
            origins.merge(o)
        ev: dict[str, Any] = {
            "finding": "lockstep_channels",
            "channels": [a, b],
            "r": num(r, 5),
            "fit": {"slope": num(slope), "intercept": num(icpt)},
            "points": n,
            "window_hours": self.p["window_h"],
            "r_threshold": self.p["r_threshold"],
            "r_high": self.p["r_high"],
            "window": window(st.since, st.last + HOUR),
            "ongoing": not final,
        }
        if origins:
            ev["origins"] = origins.to_json()
        sev = MEDIUM_HIGH[st.level - 1]
        return Alert(
            rule=self.rule, severity=sev, site=site, instrument=inst,
            start=st.since, end=st.last + HOUR,
            summary_en=(f"{a} and {b}, which come from unrelated processes, moved in "
                        f"lockstep (r = {r:.4f} over {n} hourly values, {b} ≈ {num(slope)} × "
                        f"{a} + {num(icpt)}): one channel computed from the other in the "
                        "data logger?"),
            summary_zh=(f"{a}与{b}本应互不相关，却高度同步变化（{n}个小时值相关系数"
                        f"r={r:.4f}，{b}≈{num(slope)}×{a}+{num(icpt)}）：疑似数采仪参数被篡改，"
                        "某一通道数据由另一通道计算生成。"),
            evidence=ev, key=f"E3|{site}|{inst}|{a}~{b}",
        )

    def on_event(self, e: SiteEvent) -> list[Alert]:
        if e.event != MISMATCH_EVENT:
            return []
        d = e.detail
        sig = str(d.get("signal", "?"))
        rep, mea = d.get("reported"), d.get("measured")
        rel: float | None = None
        if isinstance(rep, int | float) and isinstance(mea, int | float) and \
                not isinstance(rep, bool) and not isinstance(mea, bool):
            rel = abs(rep - mea) / abs(mea) if mea else math.inf
        sev: Severity = "high" if rel is None or rel >= self.p["mismatch_high_rel"] else "medium"
        start = e.time
        dt = d.get("data_time")
        if isinstance(dt, str):
            with contextlib.suppress(ValueError):
                start = from_rfc3339(dt)
        ev: dict[str, Any] = {"finding": "reported_mismatch", **d}
        if rel is not None and math.isfinite(rel):
            ev["relative_difference"] = num(rel, 3)
        if e.origin is not None:
            ev["origins"] = origins_of(e.origin)
        diff = f" ({100 * rel:.1f} %)" if rel is not None and math.isfinite(rel) else ""
        return [Alert(
            rule=self.rule, severity=sev, site=e.site, instrument=e.instrument,
            start=min(start, e.time), end=max(start, e.time),
            summary_en=(f"{sig}: the data logger reported {rep} but the analyzer measured "
                        f"{mea}{diff}: value altered between analyzer and platform."),
            summary_zh=(f"{sig}：数采仪上报值为{rep}，而分析仪实测值为{mea}{diff}："
                        "疑似数据在分析仪至监控平台之间被篡改。"),
            evidence=ev, key=f"E3|{e.site}|{e.instrument}|{sig}|mismatch",
        )]

    def finish(self) -> list[Alert]:
        out: list[Alert] = []
        for key, st in self._pairs.items():
            if st.since is not None:
                out.append(self._alert(key, st, final=True))
                st.since = None
        return out
