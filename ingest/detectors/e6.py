"""E6 — status flags (M/D/C/F...) abused to hide exceedances (pattern E6).

Signature: flags set after the fact, or covering periods with flow > 0, without a
maintenance log.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors.base import Alert, Detector, SiteInfo
from ingest.detectors.common import (
    ENV_KINDS,
    FLAGS_ZH,
    MEDIUM_HIGH,
    FlowState,
    hours_text,
    is_parameter,
    num,
    window,
)
from ingest.detectors.hourly import HOUR, VALID_FLAGS, Origins, origins_of
from stationseal.records import QUALITY_FLAGS, Sample, SiteEvent, from_rfc3339

#: Events that open / close a logged maintenance or fault interval (docs/records.md).
LOG_OPEN = {"maintenance_start": "maintenance", "instrument_fault": "fault"}
LOG_CLOSE = {"maintenance_end": "maintenance", "instrument_recovered": "fault"}
FLAG_CHANGED = "flag_changed"


@dataclass(slots=True)
class _Period:
    start: float
    last: float
    step: float
    n: int = 0
    running: int = 0
    flags: dict[str, int] = field(default_factory=dict)
    signals: set[str] = field(default_factory=set)
    before: list[dict[str, Any]] = field(default_factory=list)
    level: int = 0
    origins: Origins = field(default_factory=Origins)


class FlagAbuseDetector(Detector):
    """E6 — data flagged away (maintenance, fault, stopped...) while the plant ran, unlogged.

    *Flagged periods*: consecutive samples of an instrument in which some signal carries a
    flag from `hiding_flags` form a period. It is judged once it lasts `min_minutes`:
    it is suspect when the plant ran (site flow above `flow_min` for at least half of its
    samples — always, where the site has no flow signal) and the site's maintenance/fault
    log does not cover at least `min_log_coverage` of it. The log is the sealed events
    ``maintenance_start``/``maintenance_end``, ``maintenance`` (detail ``start``, ``end``)
    and ``instrument_fault``/``instrument_recovered`` for that instrument (or detail
    ``instrument: "*"`` for the whole site), kept for `log_retention_days`.

    Severity: medium; high when the period lasts `high_hours` or when a limited signal
    read at least `near_frac` of its limit within `lookback_h` hours before the flags
    appeared (the flags then hide a likely exceedance).

    *Flags changed after the fact*: a ``flag_changed`` event (detail ``signal``,
    ``data_time``, ``old``, ``new``), sealed when a logger re-sends data with another
    flag, alerts when the new flag is in `hiding_flags` and the change came at least
    `late_flag_s` after the data time: high when valid (``N``) data were re-flagged,
    medium otherwise. Evidence: the flags and their counts, signals, running share, log
    coverage, the values near the limit just before, the window and the origins.
    """

    rule: ClassVar[str] = "E6"
    kinds: ClassVar[tuple[str, ...]] = ENV_KINDS
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "hiding_flags": ["M", "D", "F", "S"],
        "min_minutes": 60.0,
        "high_hours": 6.0,
        "near_frac": 0.8,
        "lookback_h": 2.0,
        "min_log_coverage": 0.5,
        "late_flag_s": 3600.0,
        "flow_min": 0.0,
        "log_retention_days": 30,
    }

    def __init__(self, sites: dict[str, SiteInfo], params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        self._hiding = frozenset(self.p["hiding_flags"])
        unknown = self._hiding - set(QUALITY_FLAGS)
        if unknown:
            raise ValueError(f"detector E6: hiding_flags {sorted(unknown)} are not flags")
        self._flow = FlowState(sites, float(self.p["flow_min"]))
        self._periods: dict[tuple[str, str], _Period] = {}
        self._last_t: dict[tuple[str, str], float] = {}
        self._high: dict[tuple[str, str], deque[tuple[float, str, float, float]]] = {}
        #: (site, instrument or "*") -> [start, end, kind]; end is inf while open.
        self._log: dict[tuple[str, str], list[list[Any]]] = {}

    # -- maintenance log -----------------------------------------------------------------

    def on_event(self, e: SiteEvent) -> list[Alert]:
        if e.event == FLAG_CHANGED:
            return self._flag_changed(e)
        inst = str(e.detail.get("instrument", e.instrument))
        logs = self._log.setdefault((e.site, inst), [])
        if e.event in LOG_OPEN:
            logs.append([e.time, float("inf"), LOG_OPEN[e.event]])
        elif e.event in LOG_CLOSE:
            kind = LOG_CLOSE[e.event]
            for iv in reversed(logs):
                if iv[2] == kind and iv[1] == float("inf"):
                    iv[1] = e.time
                    break
        elif e.event == "maintenance":
            try:
                a = from_rfc3339(str(e.detail["start"]))
                b = from_rfc3339(str(e.detail["end"]))
            except (KeyError, ValueError):
                a, b = e.time, e.time
            logs.append([a, b, "maintenance"])
        cutoff = e.time - float(self.p["log_retention_days"]) * 86400
        logs[:] = [iv for iv in logs if iv[1] >= cutoff]
        return []

    def _coverage(self, site: str, inst: str, a: float, b: float) -> float:
        if b <= a:
            b = a + 1.0
        covered = 0.0
        for k in ((site, inst), (site, "*")):
            for s, e, _ in self._log.get(k, ()):
                covered += max(0.0, min(b, e) - max(a, s))
        return min(1.0, covered / (b - a))

    # -- flagged periods -----------------------------------------------------------------

    def on_sample(self, s: Sample) -> list[Alert]:
        key = (s.site, s.instrument)
        prev = self._last_t.get(key)
        self._last_t[key] = s.time
        self._flow.update(s.site, s.values, s.flags)
        out: list[Alert] = []
        hidden = [sig for sig, f in s.flags.items() if f in self._hiding
                  and not is_parameter(sig)] if s.flags else []
        per = self._periods.get(key)
        if not hidden:
            if per is not None:
                out += self._close(key, per)
            self._note_values(s)
            return out
        if per is None:
            step = s.time - prev if prev is not None else 0.0
            per = self._periods[key] = _Period(s.time, s.time, min(step, HOUR) if step else 0.0)
            per.before = [{"time": window(t, t)["start"], "signal": sig, "value": num(v),
                           "limit": lim} for t, sig, v, lim in self._high.get(key, ())
                          if t >= s.time - float(self.p["lookback_h"]) * HOUR]
        per.last = s.time
        per.n += 1
        per.running += self._flow.operating(s.site)
        for sig in hidden:
            f = s.flags[sig]
            per.flags[f] = per.flags.get(f, 0) + 1
            per.signals.add(sig)
        per.origins.add(s.origin)
        out += self._judge(key, per, final=False)
        return out

    def _note_values(self, s: Sample) -> None:
        limits = self.sites[s.site].limits
        if not limits:
            return
        key = (s.site, s.instrument)
        q = self._high.get(key)
        near = float(self.p["near_frac"])
        for sig, v in s.values.items():
            lim = limits.get(sig)
            if lim is not None and v >= near * lim and s.flags.get(sig, "N") in VALID_FLAGS:
                if q is None:
                    q = self._high[key] = deque()
                q.append((s.time, sig, v, lim))
        if q:
            cutoff = s.time - float(self.p["lookback_h"]) * HOUR
            while q and q[0][0] < cutoff:
                q.popleft()

    def _judge(self, key: tuple[str, str], per: _Period, final: bool) -> list[Alert]:
        p = self.p
        dur = per.last - per.start + per.step
        if dur < p["min_minutes"] * 60:
            return []
        running = per.running / per.n >= 0.5
        cov = self._coverage(key[0], key[1], per.start, per.start + dur)
        level = 0
        if running and cov < p["min_log_coverage"]:
            level = 2 if (dur >= p["high_hours"] * HOUR or per.before) else 1
        if level > per.level or (final and per.level):
            per.level = max(level, per.level)
            return [self._alert(key, per, dur, cov, final)]
        return []

    def _close(self, key: tuple[str, str], per: _Period) -> list[Alert]:
        del self._periods[key]
        return self._judge(key, per, final=True)

    def _alert(self, key: tuple[str, str], per: _Period, dur: float, cov: float,
               final: bool) -> Alert:
        site, inst = key
        flags = "/".join(sorted(per.flags))
        flags_zh = "、".join(f"{f}（{FLAGS_ZH.get(f, f)}）" for f in sorted(per.flags))
        h = dur / HOUR
        has_flow = self._flow.has_flow(site)
        ev: dict[str, Any] = {
            "finding": "flags_while_running",
            "flags": per.flags,
            "signals": sorted(per.signals),
            "hours": num(h, 3),
            "samples": per.n,
            "running_share": num(per.running / per.n, 3) if has_flow else None,
            "log_coverage": num(cov, 3),
            "near_limit_before": per.before,
            "window": window(per.start, per.last),
            "ongoing": not final,
        }
        if per.origins:
            ev["origins"] = per.origins.to_json()
        run_en = " while flue gas/effluent was flowing" if has_flow else ""
        run_zh = "，期间排放流量不为零" if has_flow else ""
        before_en = " right after values near the limit" if per.before else ""
        before_zh = "，且标记前数据已接近限值" if per.before else ""
        sev = MEDIUM_HIGH[per.level - 1]
        return Alert(
            rule=self.rule, severity=sev, site=site, instrument=inst,
            start=per.start, end=per.last,
            summary_en=(f"{', '.join(sorted(per.signals))} flagged {flags} for {hours_text(h)} h"
                        f"{run_en}{before_en}, with no maintenance or fault log covering it "
                        f"({100 * cov:.0f} % covered): flags used to hide data?"),
            summary_zh=(f"{'、'.join(sorted(per.signals))}被标记为{flags_zh}持续{hours_text(h)}小时"
                        f"{run_zh}{before_zh}，但无对应运维或故障记录（覆盖{100 * cov:.0f}%）："
                        "疑似滥用数据标记掩盖超标数据。"),
            evidence=ev, key=f"E6|{site}|{inst}",
        )

    def _flag_changed(self, e: SiteEvent) -> list[Alert]:
        d = e.detail
        new, old = d.get("new"), d.get("old")
        if new not in self._hiding:
            return []
        try:
            data_t = from_rfc3339(str(d["data_time"]))
        except (KeyError, ValueError):
            data_t = e.time
        late = e.time - data_t
        if late < self.p["late_flag_s"]:
            return []
        sig = str(d.get("signal", "?"))
        ev: dict[str, Any] = {"finding": "flag_changed_after_the_fact", **d,
                              "seconds_after_data_time": num(late, 6)}
        if e.origin is not None:
            ev["origins"] = origins_of(e.origin)
        return [Alert(
            rule=self.rule, severity="high" if old == "N" else "medium", site=e.site,
            instrument=e.instrument, start=data_t, end=e.time,
            summary_en=(f"{sig}: flag changed from {old} to {new} {hours_text(late / HOUR)} h "
                        "after the data time: data re-flagged after the fact."),
            summary_zh=(f"{sig}：数据标记在数据时间{hours_text(late / HOUR)}小时后由{old}改为{new}"
                        f"（{FLAGS_ZH.get(str(new), new)}）：疑似事后篡改数据标记。"),
            evidence=ev, key=f"E6|{e.site}|{e.instrument}|{sig}|late_flag",
        )]

    def finish(self) -> list[Alert]:
        out: list[Alert] = []
        for key in list(self._periods):
            out += self._close(key, self._periods[key])
        return out
