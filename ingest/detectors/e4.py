"""E4 — flat-lined or synthetic periodic data (pattern E4 of the falsification patterns).

Signature: zero variance, very few distinct values, exact repeats of earlier days.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors.base import Alert, Detector, Severity, SiteInfo
from ingest.detectors.common import (
    ENV_KINDS,
    FlowState,
    Quantum,
    SortedWindow,
    duration_en,
    duration_zh,
    is_parameter,
    num,
    window,
)
from ingest.detectors.hourly import DAY, HOUR, VALID_FLAGS, HourValues, Origins
from stationseal.records import Sample, to_rfc3339


@dataclass(slots=True)
class _Run:
    """Consecutive identical values of one signal."""

    value: float
    start: float
    last: float
    n: int = 1
    step: float = 0.0
    floor: bool = False
    #: Value only a few reporting steps above zero (`coarse_steps`), floor or not.
    coarse: bool = False
    first_origin: tuple[str, int] | None = None
    #: P(value repeats | previous value repeated) in the signal's history (alerted runs
    #: excluded), when the run started.
    p_same: float = 0.0
    level: int = 0  # 0 nothing emitted, 1 first severity emitted, 2 high emitted
    next_update_h: float = 0.0
    origins: Origins | None = None


@dataclass(slots=True)
class _Persistence:
    """Exponentially decayed counts of repeat outcomes (memory ~ `history_h` values)."""

    #: Outcomes of the values that followed a repeated value: (repeats, cases).
    after: list[float] = field(default_factory=lambda: [0.0, 0.0])
    #: All outcomes, the prior when repeats are too rare to judge persistence on their own.
    all: list[float] = field(default_factory=lambda: [0.0, 0.0])
    last: int = 0


@dataclass(slots=True)
class _Distinct:
    """Sliding window of recent values, for the "≤ N distinct values" test at high rates."""

    buf: deque[tuple[float, float]] = field(default_factory=deque)
    counts: dict[float, int] = field(default_factory=dict)
    since: float | None = None  # start of the current few-distinct episode
    level: int = 0
    values: list[float] = field(default_factory=list)  # the distinct values while it held
    last_hit: float = 0.0
    origins: Origins = field(default_factory=Origins)


@dataclass(slots=True)
class _Repeat:
    """Consecutive hours equal to the same hours ``lag`` days earlier."""

    start: float = 0.0
    last: float = 0.0
    hours: int = 0
    distinct: set[float] = field(default_factory=set)
    emitted: bool = False


class FlatLineDetector(Detector):
    """E4 — flat-lined, few-valued or day-repeating data while the plant runs.

    Looks for three signatures per signal of each instrument, judged only while the site's
    flow signal (``flow_m3h`` for stacks, ``water_flow_ls`` for effluent) is above
    `flow_min`, or always where the site has no flow signal (air quality). Samples carrying a
    flag other than N/T end a run: maintenance holding the last value is E6's business.

    1. *Flat line*: the exact same value for at least `window_h` hours (the shared rule
       "rolling std 0 over 6 h"), and a run that long must be improbable for this signal:
       with ``p`` the share of repeated values among those that followed a repeated value
       in the signal's last `history_h` such cases (alerted runs excluded: repeats cluster
       on calm nights; kept apart for values at most `coarse_steps` reporting steps above
       zero, which repeat far more), ``p ** (samples - 1)`` must be at most `max_chance`. Coarse
       channels (CO reported in 0.1 mg/m³ steps repeats for hours) then need a longer run
       than fine ones.
    2. *Few distinct values*: at most `max_distinct` distinct values over `window_h` hours
       (but more than one), judged only when the window holds at least `min_samples` samples
       — on hourly data six values are naturally few, so this part applies to minute data.
    3. *Repeated days*: at least `repeat_hours` consecutive hourly means exactly equal to the
       same hours 1 to `max_lag_days` days earlier, with at least `min_distinct` distinct
       values among them (a copied day, not a flat line).

    *Floor*: instruments legitimately sit at their detection limit or resolution step for
    long spells (real Beijing data: SO2 at 2 µg/m³ for days). A flat line whose value is at
    most `floor_steps` reporting steps above zero (2 µg/m³, 0.5 mg/m³; the step is the
    channel's usual number of decimals, learnt from its first values)
    and at or below the `floor_quantile` of the signal's own last `history_h` hourly means
    (the lowest value seen, before `min_history_h` hours) is "at the floor": weaker
    evidence. The few-distinct test is skipped
    at the floor for the same reason.

    Severity: flat line — medium from `window_h`, high from `high_hours`; at a value at
    most `coarse_steps` reporting steps above zero (CO at 1.2 mg/m³ in 0.1 steps: a
    coarse channel, where a repeat says less) — low from `window_h`, medium from
    `high_hours`, high from `floor_hours`; at the floor — low from `high_hours`, medium
    from `floor_hours`, never high. Few
    distinct values — medium, high once it has lasted `high_hours`. Repeated days — high:
    a varied day repeating to the digit does not happen by chance. Evidence gives the value,
    duration, sample count, the floor level and the origins (gateway, sequence range) of the
    samples in the run. An alert still growing is re-sent every `update_every_h` hours so
    that live delivery sees its end move. A long flat line is also what a stuck analyzer
    produces, and the summary says so (an enforcement officer decides which).
    """

    rule: ClassVar[str] = "E4"
    kinds: ClassVar[tuple[str, ...]] = ENV_KINDS
    uses_hours: ClassVar[bool] = True
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "window_h": 6.0,
        "high_hours": 24.0,
        "floor_hours": 72.0,
        "max_chance": 1e-5,
        "max_distinct": 3,
        "min_samples": 30,
        "floor_quantile": 0.05,
        "floor_steps": 5,
        "coarse_steps": 20,
        "history_h": 720,
        "min_history_h": 168,
        "repeat_hours": 24,
        "max_lag_days": 7,
        "min_distinct": 4,
        "flow_min": 0.0,
        "update_every_h": 24.0,
    }

    def __init__(self, sites: dict[str, SiteInfo], params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        p = self.p
        self.window_s = float(p["window_h"]) * HOUR
        self._runs: dict[tuple[str, str, str], _Run] = {}
        self._same: dict[tuple[str, str, str], tuple[_Persistence, _Persistence]] = {}
        self._decay = 1 - 1 / float(p["history_h"])
        self._quantum: dict[tuple[str, str, str], Quantum] = {}
        self._distinct: dict[tuple[str, str, str], _Distinct] = {}
        self._history: dict[tuple[str, str, str], SortedWindow] = {}
        self._hours: dict[tuple[str, str, str], dict[float, float]] = {}
        self._repeats: dict[tuple[str, str, str], dict[int, _Repeat]] = {}
        self._lags = range(1, int(p["max_lag_days"]) + 1)
        self._flow = FlowState(sites, float(p["flow_min"]))
        self._last_time: dict[tuple[str, str], float] = {}
        self._max_distinct = int(p["max_distinct"])
        self._min_samples = int(p["min_samples"])
        # Few-distinct windows are only worth keeping when enough samples fit in a window.
        self._max_gap_distinct = self.window_s / float(p["min_samples"])

    # -- helpers -------------------------------------------------------------------------

    def _is_floor(self, key: tuple[str, str, str], v: float) -> tuple[bool, float | None]:
        """At the instrument's floor: among the lowest values the channel reports *and*
        only a few resolution steps above zero (a detection limit, not just a low hour)."""
        h = self._history.get(key)
        if h is None or not len(h):
            low, q = True, None
        elif len(h) < int(self.p["min_history_h"]):
            low, q = v <= max(h.sorted[0], 0.0), h.sorted[0]
        else:
            q = h.quantile(float(self.p["floor_quantile"]))
            low = v <= q
        return low and self._steps(key, v) <= self.p["floor_steps"], q

    def _steps(self, key: tuple[str, str, str], v: float) -> float:
        qt = self._quantum.get(key)
        if qt is None:
            qt = self._quantum[key] = Quantum()
        return qt.steps(v)

    # -- flat line -----------------------------------------------------------------------

    def _flat_alert(self, key: tuple[str, str, str], r: _Run, final: bool) -> Alert:
        site, inst, sig = key
        hours = (r.last - r.start + r.step) / HOUR
        p = self.p
        sev = self._ladder(r)[max(r.level, 1) - 1][1]
        v = num(r.value)
        floor_en = " at the instrument's floor (lowest values it reports)" if r.floor else ""
        floor_zh = "（处于该仪器常见最低读数水平）" if r.floor else ""
        running = self._flow.has_flow(site)
        run_en = " while the plant was running" if running else ""
        run_zh = "，期间排放工况运行" if running else ""
        ev: dict[str, Any] = {
            "finding": "flat_line",
            "signal": sig,
            "value": v,
            "hours": num(hours, 3),
            "samples": r.n,
            "window": window(r.start, r.last),
            "threshold_hours": {sev_: h for h, sev_ in self._ladder(r)},
            "at_floor": r.floor,
            "coarse": r.coarse,
            "p_repeat_after_repeat": num(r.p_same, 3),
            "chance": float(f"{self._chance(r):.3g}"),
            "max_chance": p["max_chance"],
            "ongoing": not final,
        }
        if r.origins:
            ev["origins"] = r.origins.to_json()
        return Alert(
            rule=self.rule, severity=sev, site=site, instrument=inst,
            start=r.start, end=r.last,
            summary_en=(f"{sig} reported exactly {v} for {duration_en(hours)} "
                        f"({r.n} samples){floor_en}{run_en}: analyzer stuck, or data frozen "
                        "or fabricated."),
            summary_zh=(f"{sig}连续{duration_zh(hours)}（{r.n}个数据）数值恒定为{v}"
                        f"{floor_zh}{run_zh}：疑似仪器卡死，或数据被冻结、伪造。"),
            evidence=ev, key=f"E4|{site}|{inst}|{sig}|flat",
        )

    def _end_run(self, key: tuple[str, str, str], out: list[Alert]) -> None:
        r = self._runs.pop(key, None)
        if r is not None and r.level:
            out.append(self._flat_alert(key, r, final=True))

    def _chance(self, r: _Run) -> float:
        return float(r.p_same ** (r.n - 1))

    def _ladder(self, r: _Run) -> list[tuple[float, Severity]]:
        """(hours, severity) steps of a flat line: weaker evidence climbs more slowly."""
        p = self.p
        if r.floor:
            return [(p["high_hours"], "low"), (p["floor_hours"], "medium")]
        if r.coarse:
            return [(p["window_h"], "low"), (p["high_hours"], "medium"),
                    (p["floor_hours"], "high")]
        return [(p["window_h"], "medium"), (p["high_hours"], "high")]

    def _check_run(self, key: tuple[str, str, str], r: _Run, out: list[Alert]) -> None:
        hours = (r.last - r.start + r.step) / HOUR
        p = self.p
        level = 0
        if self._chance(r) <= p["max_chance"]:
            level = sum(1 for h, _ in self._ladder(r) if hours >= h)
        if level > r.level:
            r.level = level
            r.next_update_h = hours + float(p["update_every_h"])
            out.append(self._flat_alert(key, r, final=False))
        elif r.level and hours >= r.next_update_h:
            r.next_update_h = hours + float(p["update_every_h"])
            out.append(self._flat_alert(key, r, final=False))

    def _coarse(self, key: tuple[str, str, str], v: float) -> bool:
        """Values only a few reporting steps above zero (`coarse_steps`) keep their own
        persistence: an analyzer near its detection limit, or a channel reported in coarse
        steps, repeats far more than the same analyzer mid-range."""
        return bool(self._steps(key, v) <= self.p["coarse_steps"])

    def _persistence(self, key: tuple[str, str, str], coarse: bool) -> _Persistence:
        pair = self._same.get(key)
        if pair is None:
            pair = self._same[key] = (_Persistence(), _Persistence())
        return pair[coarse]

    def _note_pair(self, st: _Persistence, same: int) -> None:
        """Record whether a value repeated its predecessor, given the predecessor repeated.

        Repeats cluster (a coarse channel on a calm night repeats for hours), so the chance
        of a run is judged on the persistence of repeats, not on their overall share.
        """
        keep = self._decay
        if st.last:
            st.after[0] = st.after[0] * keep + same
            st.after[1] = st.after[1] * keep + 1
        st.all[0] = st.all[0] * keep + same
        st.all[1] = st.all[1] * keep + 1
        st.last = same

    @staticmethod
    def _p_same(st: _Persistence) -> float:
        """P(repeat | previous repeated), shrunk towards the overall share of repeats.

        Two pseudo-observations at the overall share: a channel that almost never repeats
        has too few "after a repeat" cases to estimate persistence on its own.
        """
        p0 = (st.all[0] + 1) / (st.all[1] + 2)
        return (st.after[0] + 2 * p0) / (st.after[1] + 2)

    # -- few distinct values -----------------------------------------------------------

    def _distinct_alert(self, key: tuple[str, str, str], d: _Distinct, end: float,
                        final: bool) -> Alert:
        site, inst, sig = key
        assert d.since is not None
        hours = (end - d.since) / HOUR + float(self.p["window_h"])
        start = d.since - self.window_s
        sev: Severity = "high" if hours >= self.p["high_hours"] else "medium"
        vals = d.values
        ev: dict[str, Any] = {
            "finding": "few_distinct_values",
            "signal": sig,
            "distinct_values": [num(x) for x in vals],
            "samples_in_window": len(d.buf),
            "window_hours": self.p["window_h"],
            "max_distinct": self.p["max_distinct"],
            "hours": num(hours, 3),
            "window": window(start, end),
            "ongoing": not final,
        }
        if d.origins:
            ev["origins"] = d.origins.to_json()
        shown = ", ".join(str(num(x)) for x in vals)
        return Alert(
            rule=self.rule, severity=sev, site=site, instrument=inst, start=start, end=end,
            summary_en=(f"{sig} took only {len(vals)} distinct values ({shown}) in every "
                        f"{duration_en(float(self.p['window_h']))} window for "
                        f"{duration_en(hours)}: synthetic or frozen data."),
            summary_zh=(f"{sig}在{duration_zh(hours)}内，每{duration_zh(float(self.p['window_h']))}"
                        f"仅出现{len(vals)}个不同数值（{shown}）：疑似数据系人为生成或被冻结。"),
            evidence=ev, key=f"E4|{site}|{inst}|{sig}|distinct",
        )

    def _distinct_step(self, key: tuple[str, str, str], t: float, v: float | None,
                       s: Sample | None, out: list[Alert]) -> None:
        d = self._distinct.get(key)
        if d is None:
            d = self._distinct[key] = _Distinct()
        buf, counts = d.buf, d.counts
        if v is not None:
            buf.append((t, v))
            counts[v] = counts.get(v, 0) + 1
        while buf and buf[0][0] <= t - self.window_s:
            _, old = buf.popleft()
            c = counts[old] - 1
            if c:
                counts[old] = c
            else:
                del counts[old]
        hit = 1 < len(counts) <= self._max_distinct and len(buf) >= self._min_samples \
            and buf[-1][0] - buf[0][0] >= 0.9 * self.window_s
        if not hit and d.since is None:
            return
        run = self._runs.get(key)
        if hit and run is not None and run.level:
            hit = False  # the window is mostly the flat line already reported
        if hit:
            mean = sum(x for _, x in buf) / len(buf)
            floor, _ = self._is_floor(key, mean)
            hit = not floor
        if hit:
            d.values = sorted(counts)
            d.last_hit = t
            if s is not None:
                d.origins.add(s.origin)
            if d.since is None:
                d.since = t
                d.level = 0
                d.origins = Origins()
                d.origins.add(s.origin if s is not None else None)
            hours = (t - d.since) / HOUR + float(self.p["window_h"])
            level = 2 if hours >= self.p["high_hours"] else 1
            if level > d.level:
                d.level = level
                out.append(self._distinct_alert(key, d, t, final=False))
        elif d.since is not None:
            if d.level:
                out.append(self._distinct_alert(key, d, d.last_hit, final=True))
            d.since = None
            d.level = 0

    # -- streaming hooks -----------------------------------------------------------------

    def on_sample(self, s: Sample) -> list[Alert]:
        out: list[Alert] = []
        self._flow.update(s.site, s.values, s.flags)
        operating = self._flow.operating(s.site)
        ikey = (s.site, s.instrument)
        prev_t = self._last_time.get(ikey)
        self._last_time[ikey] = s.time
        dt = s.time - prev_t if prev_t is not None else None
        keep_distinct = dt is not None and dt <= self._max_gap_distinct
        flags = s.flags
        for sig, v in s.values.items():
            if is_parameter(sig):
                continue
            key = (s.site, s.instrument, sig)
            if not operating or (flags and flags.get(sig, "N") not in VALID_FLAGS):
                self._end_run(key, out)
                if key in self._distinct:
                    self._distinct_step(key, s.time, None, None, out)
                continue
            r = self._runs.get(key)
            if r is not None and r.value == v:
                st = self._persistence(key, r.coarse)
                if r.n == 1:
                    # A second equal value: now the run is worth characterising (most
                    # values change at once, and this keeps their cost down).
                    r.step = s.time - r.start
                    r.floor = self._is_floor(key, v)[0]
                    r.p_same = self._p_same(st)
                    r.origins = Origins()
                    r.origins.add(r.first_origin)
                if not r.level:
                    self._note_pair(st, 1)
                r.n += 1
                r.last = s.time
                assert r.origins is not None
                r.origins.add(s.origin)
                self._check_run(key, r, out)
            else:
                if r is not None:
                    self._note_pair(self._persistence(key, r.coarse), 0)
                    self._end_run(key, out)
                r = self._runs[key] = _Run(v, s.time, s.time, coarse=self._coarse(key, v),
                                           first_origin=s.origin)
            if keep_distinct:
                self._distinct_step(key, s.time, v, s, out)
            elif key in self._distinct:
                del self._distinct[key]
        return out

    def _repeat_alert(self, key: tuple[str, str, str], lag: int, rp: _Repeat,
                      final: bool) -> Alert:
        site, inst, sig = key
        ev = {
            "finding": "repeated_day",
            "signal": sig,
            "lag_days": lag,
            "hours": rp.hours,
            "distinct_values": len(rp.distinct),
            "window": window(rp.start, rp.last + HOUR),
            "copied_from": window(rp.start - lag * DAY, rp.last + HOUR - lag * DAY),
            "threshold_hours": self.p["repeat_hours"],
            "ongoing": not final,
        }
        return Alert(
            rule=self.rule, severity="high", site=site, instrument=inst,
            start=rp.start, end=rp.last + HOUR,
            summary_en=(f"{sig}: {rp.hours} consecutive hourly values identical to the same "
                        f"hours {lag} day(s) earlier ({to_rfc3339(rp.start - lag * DAY)} on): "
                        "data copied from an earlier day."),
            summary_zh=(f"{sig}连续{rp.hours}个小时值与{lag}天前同时段完全相同"
                        f"（自{to_rfc3339(rp.start - lag * DAY)}起）：疑似复制历史数据冒充实测。"),
            evidence=ev, key=f"E4|{site}|{inst}|{sig}|repeat",
        )

    def on_hour(self, h: HourValues) -> list[Alert]:
        out: list[Alert] = []
        operating = self._flow.operating(h.site)
        max_lag = int(self.p["max_lag_days"])
        start = h.start
        for sig, v in h.values.items():
            if is_parameter(sig):
                continue
            key = (h.site, h.instrument, sig)
            hist = self._history.get(key)
            if hist is None:
                hist = self._history[key] = SortedWindow(int(self.p["history_h"]))
                self._hours[key] = {}
                self._repeats[key] = {}
            hist.add(v)
            hours = self._hours[key]
            reps = self._repeats[key]
            for lag in self._lags:
                prev = hours.get(start - lag * DAY)
                if operating and prev == v:
                    rp = reps.get(lag)
                    if rp is not None and start - rp.last > HOUR:
                        self._close_repeat(key, lag, out)
                        rp = None
                    if rp is None:
                        rp = reps[lag] = _Repeat(start, start)
                    self._extend_repeat(key, lag, rp, start, v, out)
                elif lag in reps:
                    self._close_repeat(key, lag, out)
            hours[start] = v
            if len(hours) > 24 * (max_lag + 2):
                cutoff = start - max_lag * DAY
                for t in [t for t in hours if t < cutoff]:
                    del hours[t]
        return out

    def _extend_repeat(self, key: tuple[str, str, str], lag: int, rp: _Repeat, start: float,
                       v: float, out: list[Alert]) -> None:
        rp.last = start
        rp.hours += 1
        if len(rp.distinct) < self.p["min_distinct"]:
            rp.distinct.add(v)
        if not rp.emitted and rp.hours >= self.p["repeat_hours"] and \
                len(rp.distinct) >= self.p["min_distinct"]:
            rp.emitted = True
            out.append(self._repeat_alert(key, lag, rp, final=False))

    def _close_repeat(self, key: tuple[str, str, str], lag: int, out: list[Alert]) -> None:
        rp = self._repeats[key].pop(lag, None)
        if rp is not None and rp.emitted:
            out.append(self._repeat_alert(key, lag, rp, final=True))

    def finish(self) -> list[Alert]:
        out: list[Alert] = []
        for key in list(self._runs):
            self._end_run(key, out)
        for key, d in self._distinct.items():
            if d.since is not None and d.level:
                out.append(self._distinct_alert(key, d, d.last_hit, final=True))
        for key, reps in self._repeats.items():
            for lag in list(reps):
                self._close_repeat(key, lag, out)
        return out
