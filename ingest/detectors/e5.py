"""E5 — emissions held just under the limit, 贴限 (pattern E5 of the falsification patterns).

Signature: most hourly values sit in [0.9 L, L].
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors.base import Alert, Detector, SiteInfo
from ingest.detectors.common import (
    ENV_KINDS,
    MEDIUM_HIGH,
    FlowState,
    is_parameter,
    num,
    window,
)
from ingest.detectors.hourly import HOUR, HourValues, Origins

BELOW, IN_BAND, ABOVE = 0, 1, 2


@dataclass(slots=True)
class _Channel:
    hours: deque[tuple[float, int, float, Origins]] = field(default_factory=deque)
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])
    since: float | None = None
    level: int = 0
    next_update: float = 0.0
    max_share: float = 0.0


class NearLimitDetector(Detector):
    """E5 — most hourly values held in a narrow band just under the emission limit.

    For every signal that has a limit in SITES.yaml (or only those in `signals`, when set),
    the hourly means of the last `window_h` hours are sorted into below the band, in the
    band ``[band_low * L, band_high * L]`` (`band_low`, `band_high`) and above the limit.
    Hours in which the plant is stopped (site flow signal at or below `flow_min`) are left
    out: a stopped stack reads
    near zero and would hide the pattern. The window is judged only when at least
    `min_coverage` of its hours have a value.

    A well-controlled process scatters; one steered against the limit (by a controller
    aimed at the number the regulator sees, or by editing values) piles up under it. The
    shared rule is "more than `share` of hourly values in [0.9 L, L] over 7 days".

    Severity: medium when the share in the band exceeds `share`; high from `high_share`.
    An ongoing finding is re-sent every `update_every_h` hours.
    Holding values near a limit is not unlawful in itself, which is why the default is not
    high. Evidence: limit, band, share, counts below/in/above, coverage, mean of the in-band
    values, the window and the origins of the in-band hours.
    """

    rule: ClassVar[str] = "E5"
    kinds: ClassVar[tuple[str, ...]] = ENV_KINDS
    uses_hours: ClassVar[bool] = True
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "band_low": 0.9,
        "band_high": 1.0,
        "share": 0.5,
        "high_share": 0.8,
        "window_h": 168,
        "min_coverage": 0.75,
        "signals": [],
        "flow_min": 0.0,
        "update_every_h": 24,
    }

    def __init__(self, sites: dict[str, SiteInfo], params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        self._flow = FlowState(sites, float(self.p["flow_min"]))
        self._ch: dict[tuple[str, str, str], _Channel] = {}
        self._only = set(self.p["signals"])

    def on_hour(self, h: HourValues) -> list[Alert]:
        site = self.sites[h.site]
        self._flow.update(h.site, h.values)
        if not site.limits or not self._flow.operating(h.site):
            return []
        out: list[Alert] = []
        p = self.p
        span = float(p["window_h"]) * HOUR
        for sig, v in h.values.items():
            lim = site.limits.get(sig)
            if lim is None or is_parameter(sig) or (self._only and sig not in self._only):
                continue
            key = (h.site, h.instrument, sig)
            ch = self._ch.get(key)
            if ch is None:
                ch = self._ch[key] = _Channel()
            code = ABOVE if v > lim * p["band_high"] else \
                IN_BAND if v >= lim * p["band_low"] else BELOW
            ch.hours.append((h.start, code, v, h.origins))
            ch.counts[code] += 1
            while ch.hours[0][0] <= h.start - span:
                ch.counts[ch.hours.popleft()[1]] -= 1
            n = len(ch.hours)
            share = ch.counts[IN_BAND] / n
            judged = n >= p["min_coverage"] * p["window_h"]
            level = 0
            if judged and share > p["share"]:
                level = 2 if share >= p["high_share"] else 1
            if level:
                if ch.since is None:
                    # The finding starts with the first in-band hour of the window.
                    ch.since = next(t for t, c, _, _ in ch.hours if c == IN_BAND)
                    ch.level = 0
                    ch.max_share = 0.0
                ch.max_share = max(ch.max_share, share)
                if level > ch.level or h.start >= ch.next_update:
                    ch.level = max(level, ch.level)
                    ch.next_update = h.start + float(p["update_every_h"]) * HOUR
                    out.append(self._alert(key, ch, lim, final=False))
            elif ch.since is not None:
                if ch.level:
                    out.append(self._alert(key, ch, lim, final=True))
                ch.since = None
                ch.level = 0
        return out

    def _alert(self, key: tuple[str, str, str], ch: _Channel, lim: float, final: bool) -> Alert:
        site, inst, sig = key
        p = self.p
        n = len(ch.hours)
        inband = [(v, o) for _, c, v, o in ch.hours if c == IN_BAND]
        share = len(inband) / n
        origins = Origins()
        for _, o in inband:
            origins.merge(o)
        assert ch.since is not None
        start, end = ch.since, ch.hours[-1][0] + HOUR
        lo, hi = lim * p["band_low"], lim * p["band_high"]
        ev: dict[str, Any] = {
            "finding": "held_under_limit",
            "signal": sig,
            "limit": lim,
            "band": [num(lo), num(hi)],
            "share_in_band": num(share, 3),
            "max_share_in_band": num(ch.max_share, 3),
            "threshold_share": p["share"],
            "hours_below_band": ch.counts[BELOW],
            "hours_in_band": ch.counts[IN_BAND],
            "hours_above_limit": ch.counts[ABOVE],
            "hours_with_data": n,
            "window_hours": p["window_h"],
            "in_band_mean": num(sum(v for v, _ in inband) / len(inband)) if inband else None,
            "window": window(start, end),
            "ongoing": not final,
        }
        if origins:
            ev["origins"] = origins.to_json()
        sev = MEDIUM_HIGH[ch.level - 1]
        days = p["window_h"] / 24
        return Alert(
            rule=self.rule, severity=sev, site=site, instrument=inst, start=start, end=end,
            summary_en=(f"{sig}: {100 * share:.0f} % of hourly values over {days:.0f} days "
                        f"sat in [{num(lo)}, {num(hi)}], just under the limit {lim} "
                        f"({ch.counts[ABOVE]} h above it): emissions held at the limit."),
            summary_zh=(f"{sig}：近{days:.0f}天内{100 * share:.0f}%的小时值落在"
                        f"[{num(lo)}, {num(hi)}]区间，紧贴排放限值{lim}"
                        f"（超限{ch.counts[ABOVE]}小时）：疑似人为控制数据贴限。"),
            evidence=ev, key=f"E5|{site}|{inst}|{sig}",
        )

    def finish(self) -> list[Alert]:
        out: list[Alert] = []
        for key, ch in self._ch.items():
            if ch.since is not None and ch.level:
                lim = self.sites[key[0]].limits[key[2]]
                out.append(self._alert(key, ch, lim, final=True))
                ch.since = None
        return out
