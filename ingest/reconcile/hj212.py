"""HJ 212 reconciliation: the data logger's reports against the analyzers' readings.

At a site where the gateway reads the analyzers itself (Modbus) *and* hears the site's
HJ 212 data logger (agent/hj212_source.py), both views arrive signed by the same gateway:
samples of instrument ``logger`` (real-time values), ``logger.minute`` / ``logger.hour``
(aggregates) and samples of the analyzers under their own ids, same canonical signals.
Comparing the two is the most direct evidence of tampering between analyzer and platform
(pattern E3) and of status flags used to hide data (pattern E6), so the findings are
raised as E3 / E6 alerts. The detector runs inside the ingest service (records of verified
frames) and offline (`stationseal detect`), like every rule; its registry id is ``HJ212``.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors.base import Alert, Detector, SiteInfo
from ingest.detectors.common import (
    ENV_KINDS,
    FLAGS_ZH,
    Severity,
    hours_text,
    is_parameter,
    num,
    window,
)
from ingest.detectors.hourly import VALID_FLAGS, Origins
from stationseal.hj212.codes import SIGNAL_TO_HJ212
from stationseal.hj212.readings import REVISION_EVENT, logger_base
from stationseal.records import QUALITY_FLAGS, Sample, SiteEvent, from_rfc3339, to_rfc3339
from stationseal.signals import BY_NAME

#: HJ 212 system code (ST) most likely behind each site kind, to name codes in evidence.
_ST_OF_KIND = {"stack_cems": "31", "air_quality": "22", "water_quality": "32"}
_KIND_OF_SUFFIX = {"": "real-time value (Rtd)", "minute": "minute mean (Avg)",
                   "hour": "hourly mean (Avg)", "day": "daily mean (Avg)"}
_PLURAL = {"": "real-time values", "minute": "minute means", "hour": "hourly means",
           "day": "daily means"}
_KIND_ZH = {"": "实时值", "minute": "分钟均值", "hour": "小时均值", "day": "日均值"}
_PERIODS = {"hour": 3600.0, "day": 86400.0}
_MAX_EXAMPLES = 5

Origin = tuple[str, int] | None


def _code(kind: str, signal: str) -> str | None:
    st = _ST_OF_KIND.get(kind)
    code = SIGNAL_TO_HJ212.get((st, signal)) if st else None
    if code is None:
        code = next((c for (s, sig), c in SIGNAL_TO_HJ212.items() if sig == signal), None)
    return code


Raw = tuple[float, dict[str, float], dict[str, str], Origin]


@dataclass(slots=True)
class _Bin:
    """``bin_s`` seconds of one analyzer: per signal [sum of valid, valid count, count]."""

    sums: dict[str, list[float]] = field(default_factory=dict)
    #: per signal, counts of flags other than N
    odd: dict[str, dict[str, int]] = field(default_factory=dict)
    origins: Origins = field(default_factory=Origins)


@dataclass(slots=True)
class _Analyzer:
    """One analyzer instrument: its recent samples as received, and binned sums for
    aggregate windows (one append per sample, whatever the number of signals)."""

    raw: deque[Raw] = field(default_factory=deque)
    bins: dict[int, _Bin] = field(default_factory=dict)
    order: deque[int] = field(default_factory=deque)
    signals: set[str] = field(default_factory=set)
    params: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Pending:
    sample: Sample
    suffix: str
    start: float
    end: float


@dataclass(slots=True)
class _Run:
    """Consecutive findings of one kind for one signal (or channel group)."""

    start: float
    last: float
    n: int = 0
    emitted: int = 0
    examples: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_MAX_EXAMPLES))
    ratios: list[float] = field(default_factory=list)
    reported: Origins = field(default_factory=Origins)
    measured: Origins = field(default_factory=Origins)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Site:
    analyzers: dict[str, _Analyzer] = field(default_factory=dict)
    #: signal -> analyzer instruments that read it
    by_signal: dict[str, list[str]] = field(default_factory=dict)
    #: latest analyzer sample time (comparisons wait until the data cover their window)
    watermark: float = -math.inf
    #: per logger instrument (real-time reports must not wait behind an hourly mean)
    pending: dict[str, deque[_Pending]] = field(default_factory=dict)
    last_time: dict[str, float] = field(default_factory=dict)
    periods: dict[str, float] = field(default_factory=dict)


class HJ212Reconciliation(Detector):
    """HJ212 — the HJ 212 data logger's reports reconciled with the analyzers (alerts E3, E6).

    Applies where the gateway seals both the logger's reports (instrument ids in
    `logger_instruments`, with ``.minute`` / ``.hour`` / ``.day`` for aggregates) and the
    analyzers' own readings (any other instrument of the site, same canonical signals).
    Each logger report is judged once the analyzer data cover its window (identical
    channels at once):

    *Reported ≠ measured* (E3): a real-time value is compared with the analyzer readings
    within `max_skew_s` seconds of its DataTime; it matches if it lies within their range
    widened by `rel_tol` (relative) or `abs_tol` (absolute), whichever is larger. A
    minute/hourly mean is compared with the mean of the analyzer's valid readings over the
    same period (at least `avg_min_samples` of them, spread over at least
    `avg_min_coverage` of the period), within `avg_rel_tol` / `abs_tol`.
    `min_mismatches` consecutive mismatches of a signal raise an alert (high when the
    median reported/measured ratio is off by `mismatch_high_rel` or more): evidence names
    the signal and its HJ 212 code, reported and measured values with their times and
    flags, the ratio, and the origins (gateway, sequence range) of both sides. Values the
    logger flags as not valid are not compared (see below).

    *Identical channels* (E3): channels of the logger's real-time data that carry exactly
    the same value in `identical_min_samples` consecutive reports, with at least
    `identical_min_distinct` distinct values (so two channels that both read 0 do not
    count): one signal wired into several channels. Evidence lists the channels, their
    codes, the shared values and what the analyzers measured for each channel then.

    *Flags not shown by the analyzers* (E6): a logger report flagged with one of
    `hiding_flags` (maintenance, fault, calibration) while every analyzer reading of that
    signal in its window carries ``N``; `flag_min_samples` consecutive such reports raise
    an alert, high when the analyzer measured at or above the site's limit meanwhile (the
    flag hides an exceedance).

    *Values revised after the data time* (E3): a ``reported_revision`` event (the gateway
    saw the logger re-send a past time with another value, same flag) at least
    `revision_late_s` after its data time. Re-sent *flags* are ``flag_changed`` events,
    judged by E6.

    Analyzer data are kept for `history_s` (binned every `bin_s` seconds; raw readings for
    `raw_keep_s`), only at sites where a logger report has been seen. A report whose window
    the analyzer data never cover (analyzer offline, daily means longer than `history_s`)
    is not judged. Alerts update every `update_every` further findings and close when the
    finding stops.
    """

    rule: ClassVar[str] = "HJ212"
    kinds: ClassVar[tuple[str, ...]] = ENV_KINDS
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "logger_instruments": ["logger"],
        "max_skew_s": 5.0,
        "rel_tol": 0.05,
        "abs_tol": 0.0,
        "avg_rel_tol": 0.05,
        "avg_min_samples": 3,
        "avg_min_coverage": 0.5,
        "min_mismatches": 3,
        "mismatch_high_rel": 0.05,
        "identical_min_samples": 10,
        "identical_min_distinct": 3,
        "hiding_flags": ["M", "D", "C"],
        "flag_min_samples": 2,
        "revision_late_s": 3600.0,
        "minute_period_s": 60.0,
        "history_s": 7200.0,
        "raw_keep_s": 600.0,
        "bin_s": 10.0,
        "update_every": 20,
    }

    def __init__(self, sites: dict[str, SiteInfo], params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        p = self.p
        self._loggers = frozenset(str(x) for x in p["logger_instruments"])
        self._hiding = frozenset(str(x) for x in p["hiding_flags"])
        unknown = self._hiding - set(QUALITY_FLAGS)
        if unknown:
            raise ValueError(f"detector HJ212: hiding_flags {sorted(unknown)} are not flags")
        if float(p["bin_s"]) <= 0 or float(p["max_skew_s"]) < 0:
            raise ValueError("detector HJ212: bin_s must be > 0 and max_skew_s >= 0")
        self._skew = float(p["max_skew_s"])
        self._bin = float(p["bin_s"])
        self._sites: dict[str, _Site] = {}
        #: (site, logger instrument, analyzer, signal) -> mismatch run
        self._mismatch: dict[tuple[str, str, str, str], _Run] = {}
        #: (site, logger instrument, signal) -> flag run
        self._flags: dict[tuple[str, str, str], _Run] = {}
        #: (site, logger instrument, signal a, signal b) -> identical run
        self._pairs: dict[tuple[str, str, str, str], _Run] = {}
        #: (site, logger instrument, group) -> emitted group run
        self._groups: dict[tuple[str, str, tuple[str, ...]], _Run] = {}

    # -- input ---------------------------------------------------------------------------

    def _is_logger(self, instrument: str) -> bool:
        return logger_base(instrument) in self._loggers

    def on_sample(self, s: Sample) -> list[Alert]:
        if self._is_logger(s.instrument):
            return self._logger_sample(s)
        st = self._sites.get(s.site)
        if st is None:
            return []  # no logger at this site (yet): nothing to reconcile with
        self._add_analyzer(st, s)
        return self._evaluate(s.site, st, final=False)

    def _add_analyzer(self, st: _Site, s: Sample) -> None:
        a = st.analyzers.get(s.instrument)
        if a is None:
            a = st.analyzers[s.instrument] = _Analyzer()
        t = s.time
        flags = s.flags or {}
        a.raw.append((t, s.values, flags, s.origin))
        b = self._bin
        key_bin = int(t // b)
        bn = a.bins.get(key_bin)
        if bn is None:
            bn = a.bins[key_bin] = _Bin()
            a.order.append(key_bin)
        bn.origins.add(s.origin)
        sums, signals = bn.sums, a.signals
        for sig, v in s.values.items():
            if sig not in signals:
                if sig in a.params:
                    continue
                if is_parameter(sig):
                    a.params.add(sig)
                    continue
                signals.add(sig)
                st.by_signal.setdefault(sig, []).append(s.instrument)
            f = flags.get(sig, "N")
            e = sums.get(sig)
            if e is None:
                e = sums[sig] = [0.0, 0, 0]
            e[2] += 1
            if f in VALID_FLAGS:
                e[0] += v
                e[1] += 1
            if f != "N":
                odd = bn.odd.setdefault(sig, {})
                odd[f] = odd.get(f, 0) + 1
        raw_cut = t - float(self.p["raw_keep_s"])
        while a.raw and a.raw[0][0] < raw_cut:
            a.raw.popleft()
        bin_cut = (t - float(self.p["history_s"])) // b
        while a.order and a.order[0] < bin_cut:
            del a.bins[a.order.popleft()]
        if t > st.watermark:
            st.watermark = t

    def _logger_sample(self, s: Sample) -> list[Alert]:
        st = self._sites.get(s.site)
        if st is None:
            st = self._sites[s.site] = _Site()
        base = logger_base(s.instrument)
        suffix = s.instrument[len(base) + 1:] if s.instrument != base else ""
        if suffix == "":
            start, end = s.time - self._skew, s.time + self._skew
        else:
            period = self._period(st, s.instrument, suffix, s.time)
            start, end = s.time, s.time + period
        item = _Pending(s, suffix, start, end)
        queue = st.pending.setdefault(s.instrument, deque())
        queue.append(item)
        # never wait for ever: reports older than the kept history cannot be judged
        cut = s.time - float(self.p["history_s"])
        while queue and queue[0].sample.time < cut:
            queue.popleft()
        # identical channels need no analyzer data: judged at once
        out = self._identical(s.site, self.sites[s.site].kind, st, item) if suffix == "" \
            else []
        return out + self._evaluate(s.site, st, final=False)

    def _period(self, st: _Site, inst: str, suffix: str, t: float) -> float:
        if suffix in _PERIODS:
            return _PERIODS[suffix]
        prev = st.last_time.get(inst)
        st.last_time[inst] = t
        known = st.periods.get(inst)
        if prev is not None and t > prev:
            gap = t - prev
            st.periods[inst] = gap if known is None else min(known, gap)
        return st.periods.get(inst, float(self.p["minute_period_s"]))

    def on_event(self, e: SiteEvent) -> list[Alert]:
        if e.event != REVISION_EVENT:
            return []
        d = e.detail
        try:
            data_t = from_rfc3339(str(d["data_time"]))
        except (KeyError, ValueError):
            return []
        late = e.time - data_t
        if late < float(self.p["revision_late_s"]):
            return []
        sig = str(d.get("signal", "?"))
        ev: dict[str, Any] = {"finding": "value_revised_after_data_time", **d,
                              "seconds_after_data_time": num(late, 6)}
        if e.origin is not None:
            ev["origins"] = [{"gateway": e.origin[0], "first_seq": e.origin[1],
                              "last_seq": e.origin[1], "count": 1}]
        old, new = d.get("old"), d.get("new")
        return [Alert(
            rule="E3", severity="high", site=e.site, instrument=e.instrument,
            start=data_t, end=e.time,
            summary_en=(f"{sig}: the data logger re-sent data for {d.get('data_time')} "
                        f"{hours_text(late / 3600)} h later with {new} instead of {old}: "
                        "reported data altered after the fact."),
            summary_zh=(f"{sig}：数采仪在数据时间{hours_text(late / 3600)}小时后重新上报，"
                        f"数值由{old}改为{new}：疑似事后篡改上报数据。"),
            evidence=ev, key=f"E3|{e.site}|{e.instrument}|{sig}|revised",
        )]

    def finish(self) -> list[Alert]:
        out: list[Alert] = []
        for site, st in self._sites.items():
            out += self._evaluate(site, st, final=True)
        for key, run in list(self._mismatch.items()):
            if run.emitted:
                out.append(self._mismatch_alert(key, run, final=True))
        self._mismatch.clear()
        for fkey, run in list(self._flags.items()):
            if run.emitted:
                out.append(self._flag_alert(fkey, run, final=True))
        self._flags.clear()
        for gkey, run in list(self._groups.items()):
            out.append(self._group_alert(gkey, run, final=True))
        self._groups.clear()
        return out

    # -- judging -------------------------------------------------------------------------

    def _evaluate(self, site: str, st: _Site, final: bool) -> list[Alert]:
        out: list[Alert] = []
        for queue in st.pending.values():
            while queue and (final or queue[0].end <= st.watermark):
                out += self._judge(site, st, queue.popleft())
        return out

    def _judge(self, site: str, st: _Site, item: _Pending) -> list[Alert]:
        s = item.sample
        out: list[Alert] = []
        kind = self.sites[site].kind
        by_signal = st.by_signal
        for sig, rep in s.values.items():
            if is_parameter(sig):
                continue
            rflag = s.flags.get(sig, "N") if s.flags else "N"
            for inst in by_signal.get(sig, ()):
                m = self._measured(st.analyzers[inst], sig, item)
                if m is None:
                    continue
                out += self._compare_value(site, kind, item, sig, rep, rflag, inst, m)
                out += self._compare_flag(site, kind, item, sig, rep, rflag, inst, m)
        return out

    def _measured(self, a: _Analyzer, sig: str, item: _Pending) -> dict[str, Any] | None:
        """What analyzer ``a`` shows for ``sig`` over the report's window: valid values
        (or their mean), the flags, the origins."""
        flags: dict[str, int] = {}
        o: list[Origin] = []  # made into Origins only for evidence (see _merge_origins)
        bins_o: list[Origins] = []
        if item.suffix == "":
            valid: list[tuple[float, float]] = []
            for t, vals, fl, org in _between(a.raw, item.start, item.end, closed=True):
                v = vals.get(sig)
                if v is None:
                    continue
                f = fl.get(sig, "N")
                flags[f] = flags.get(f, 0) + 1
                o.append(org)
                if f in VALID_FLAGS:
                    valid.append((t, v))
            if not flags:
                return None
            t0 = item.sample.time
            near = min(valid, key=lambda p: abs(p[0] - t0)) if valid else None
            return {"values": [v for _, v in valid], "nearest": near[1] if near else None,
                    "nearest_time": near[0] if near else None, "flags": flags,
                    "origins": (o, bins_o), "n": sum(flags.values())}
        total, n = 0.0, 0
        span = item.end - item.start
        if a.raw and a.raw[0][0] <= item.start:
            # still held sample by sample: the exact window
            first = last = None
            for t, vals, fl, org in _between(a.raw, item.start, item.end, closed=False):
                v = vals.get(sig)
                if v is None:
                    continue
                f = fl.get(sig, "N")
                if f in VALID_FLAGS:
                    total += v
                    n += 1
                flags[f] = flags.get(f, 0) + 1
                o.append(org)
                first = t if first is None else first
                last = t
            if first is None or last is None:
                return None
            covered = last - first
        else:
            # older: whole bins inside the window (windows start on bin boundaries)
            b = self._bin
            lo, hi = math.ceil(item.start / b - 1e-9), math.ceil(item.end / b - 1e-9)
            used = 0
            for k in range(lo, hi):
                bn = a.bins.get(k)
                e = bn.sums.get(sig) if bn is not None else None
                if bn is None or e is None:
                    continue
                used += 1
                total += e[0]
                n += int(e[1])
                odd = bn.odd.get(sig, {})
                normal = int(e[2]) - sum(odd.values())
                if normal:
                    flags["N"] = flags.get("N", 0) + normal
                for f, c in odd.items():
                    flags[f] = flags.get(f, 0) + c
                bins_o.append(bn.origins)
            if not flags:
                return None
            covered = used * b
        if span > 0 and covered < float(self.p["avg_min_coverage"]) * span:
            return None  # the analyzer was not read over most of the period
        return {"mean": total / n if n else None, "n_valid": n, "flags": flags,
                "origins": (o, bins_o),
                "n": sum(flags.values())}

    def _compare_value(self, site: str, kind: str, item: _Pending, sig: str, rep: float,
                       rflag: str, inst: str, m: dict[str, Any]) -> list[Alert]:
        p = self.p
        s = item.sample
        key = (site, s.instrument, inst, sig)
        if rflag not in VALID_FLAGS:
            return []
        if item.suffix == "":
            vals: list[float] = m["values"]
            if not vals:
                return []
            lo, hi = min(vals), max(vals)
            tol = max(float(p["abs_tol"]), float(p["rel_tol"]) * max(abs(lo), abs(hi)))
            bad = rep < lo - tol or rep > hi + tol
            measured = float(m["nearest"])
            mtime = float(m["nearest_time"])
            basis: dict[str, Any] = {"range": [num(lo), num(hi)], "readings": len(vals)}
        else:
            if m["mean"] is None or m["n_valid"] < int(p["avg_min_samples"]):
                return []
            measured = float(m["mean"])
            tol = max(float(p["abs_tol"]), float(p["avg_rel_tol"]) * abs(measured))
            bad = abs(rep - measured) > tol
            mtime = s.time
            basis = {"mean_of": m["n_valid"], "window": window(item.start, item.end)}
        run = self._mismatch.get(key)
        if not bad:
            if run is not None:
                del self._mismatch[key]
                if run.emitted:
                    return [self._mismatch_alert(key, run, final=True)]
            return []
        if run is None:
            run = self._mismatch[key] = _Run(s.time, s.time)
            run.extra = {"suffix": item.suffix, "kind": kind, "unit": BY_NAME[sig].unit
                         if sig in BY_NAME else ""}
        run.last = s.time if item.suffix == "" else item.end
        run.n += 1
        if measured:
            run.ratios.append(rep / measured)
        run.examples.append({
            "time": to_rfc3339(s.time), "reported": num(rep), "reported_flag": rflag,
            "measured": num(measured), "measured_time": to_rfc3339(mtime),
            "measured_flags": m["flags"], **basis})
        run.reported.add(s.origin)
        _merge_origins(run.measured, m["origins"])
        run.extra["tolerance"] = num(tol)
        return self._maybe_emit(run, int(p["min_mismatches"]),
                                lambda: self._mismatch_alert(key, run, final=False))

    def _maybe_emit(self, run: _Run, threshold: int, make: Any) -> list[Alert]:
        every = max(1, int(self.p["update_every"]))
        if run.n >= threshold and (not run.emitted or run.n - run.emitted >= every):
            run.emitted = run.n
            return [make()]
        return []

    def _compare_flag(self, site: str, kind: str, item: _Pending, sig: str, rep: float,
                      rflag: str, inst: str, m: dict[str, Any]) -> list[Alert]:
        s = item.sample
        key = (site, s.instrument, sig)
        flags: dict[str, int] = m["flags"]
        hidden = rflag in self._hiding and set(flags) <= {"N"}
        run = self._flags.get(key)
        if not hidden:
            if run is not None and rflag not in self._hiding:
                del self._flags[key]
                if run.emitted:
                    return [self._flag_alert(key, run, final=True)]
            return []
        if run is None:
            run = self._flags[key] = _Run(s.time, s.time)
            run.extra = {"suffix": item.suffix, "kind": kind, "flags": {}, "analyzer": inst,
                         "limit": self.sites[site].limits.get(sig), "over_limit": 0,
                         "max_measured": None}
        run.last = s.time if item.suffix == "" else item.end
        run.n += 1
        fl = run.extra["flags"]
        fl[rflag] = fl.get(rflag, 0) + 1
        measured = m.get("nearest") if item.suffix == "" else m.get("mean")
        if measured is None and item.suffix == "" and m["values"]:
            measured = m["values"][-1]
        lim = run.extra["limit"]
        if measured is not None:
            mx = run.extra["max_measured"]
            run.extra["max_measured"] = measured if mx is None else max(mx, measured)
            if lim is not None and measured >= lim:
                run.extra["over_limit"] += 1
        run.examples.append({"time": to_rfc3339(s.time), "reported": num(rep),
                             "reported_flag": rflag,
                             "measured": num(measured) if measured is not None else None,
                             "measured_flags": flags})
        run.reported.add(s.origin)
        _merge_origins(run.measured, m["origins"])
        return self._maybe_emit(run, int(self.p["flag_min_samples"]),
                                lambda: self._flag_alert(key, run, final=False))

    def _identical(self, site: str, kind: str, st: _Site, item: _Pending) -> list[Alert]:
        s = item.sample
        p = self.p
        inst = s.instrument
        vals = {k: v for k, v in s.values.items() if not is_parameter(k)}
        sigs = sorted(vals)
        need, distinct = int(p["identical_min_samples"]), int(p["identical_min_distinct"])
        confirmed: set[tuple[str, str]] = set()
        for i, a in enumerate(sigs):
            for b in sigs[i + 1:]:
                key = (site, inst, a, b)
                run = self._pairs.get(key)
                if vals[a] != vals[b]:
                    if run is not None:
                        del self._pairs[key]
                    continue
                if run is None:
                    run = self._pairs[key] = _Run(s.time, s.time)
                    run.extra["values"] = set()
                run.n += 1
                run.last = s.time
                vs: set[float] = run.extra["values"]
                if len(vs) < 1000:
                    vs.add(vals[a])
                if run.n >= need and len(vs) >= distinct:
                    confirmed.add((a, b))
        groups = _components(confirmed)
        out: list[Alert] = []
        live = set()
        for g in groups:
            gkey = (site, inst, g)
            live.add(gkey)
            run = self._groups.get(gkey)
            if run is None:
                first = min(self._pairs[(site, inst, a, b)].start
                            for a, b in confirmed if a in g)
                run = self._groups[gkey] = _Run(first, s.time)
                run.n = min(self._pairs[(site, inst, a, b)].n for a, b in confirmed if a in g)
            else:
                run.n += 1
            run.last = s.time
            run.reported.add(s.origin)
            ex: dict[str, Any] = {"time": to_rfc3339(s.time), "value": num(vals[g[0]])}
            measured: dict[str, float] = {}
            for sig in g:
                m = self._measured_any(st, sig, item)
                if m is not None:
                    measured[sig] = num(m[0])
                    run.measured.merge(m[1])
            if measured:
                ex["measured"] = measured
            run.examples.append(ex)
            if not run.emitted or run.n - run.emitted >= max(1, int(p["update_every"])):
                run.emitted = run.n
                out.append(self._group_alert(gkey, run, final=False))
        for gkey in [k for k in self._groups if k[:2] == (site, inst) and k not in live]:
            out.append(self._group_alert(gkey, self._groups.pop(gkey), final=True))
        return out

    def _measured_any(self, st: _Site, sig: str, item: _Pending
                      ) -> tuple[float, Origins] | None:
        for inst in st.by_signal.get(sig, ()):
            m = self._measured(st.analyzers[inst], sig, item)
            if m is not None and m.get("nearest") is not None:
                o = Origins()
                _merge_origins(o, m["origins"])
                return float(m["nearest"]), o
        return None

    # -- alerts --------------------------------------------------------------------------

    def _origins(self, run: _Run) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if run.reported:
            out["reported"] = run.reported.to_json()
        if run.measured:
            out["measured"] = run.measured.to_json()
        return out

    def _mismatch_alert(self, key: tuple[str, str, str, str], run: _Run, final: bool) -> Alert:
        site, inst, analyzer, sig = key
        x = run.extra
        code = _code(x["kind"], sig)
        ratio = statistics.median(run.ratios) if run.ratios else None
        last = run.examples[-1]
        off = abs(ratio - 1) if ratio is not None else math.inf
        sev: Severity = "high" if off >= float(self.p["mismatch_high_rel"]) else "medium"
        what = _KIND_OF_SUFFIX.get(x["suffix"], x["suffix"])
        ratio_en = f", reported/measured ≈ {ratio:.3f}" if ratio is not None else ""
        ratio_zh = f"，上报值/实测值≈{ratio:.3f}" if ratio is not None else ""
        ev: dict[str, Any] = {
            "finding": "reported_mismatch", "signal": sig, "code": code, "data": what,
            "analyzer": analyzer, "reported": last["reported"], "measured": last["measured"],
            "unit": x["unit"], "data_time": last["time"],
            "ratio": num(ratio, 4) if ratio is not None else None,
            "mismatches": run.n, "tolerance": x.get("tolerance"),
            "rel_tol": self.p["avg_rel_tol"] if x["suffix"] else self.p["rel_tol"],
            "examples": list(run.examples), "window": window(run.start, run.last),
            "ongoing": not final, "origins": self._origins(run),
        }
        return Alert(
            rule="E3", severity=sev, site=site, instrument=inst, start=run.start, end=run.last,
            summary_en=(f"{sig} ({code}): the data logger reported {last['reported']} where "
                        f"analyzer {analyzer} measured {last['measured']} {x['unit']} "
                        f"({run.n} {_PLURAL.get(x['suffix'], 'reports')} off{ratio_en}): "
                        "value altered between analyzer and platform."),
            summary_zh=(f"{sig}（{code}）：数采仪上报{_KIND_ZH.get(x['suffix'], '')}"
                        f"{last['reported']}，分析仪{analyzer}实测{last['measured']}{x['unit']}"
                        f"（连续{run.n}个数据不一致{ratio_zh}）：疑似数据在分析仪至监控平台之间被篡改。"),
            evidence=ev, key=f"E3|{site}|{inst}|{sig}|mismatch",
        )

    def _flag_alert(self, key: tuple[str, str, str], run: _Run, final: bool) -> Alert:
        site, inst, sig = key
        x = run.extra
        code = _code(x["kind"], sig)
        flags = "/".join(sorted(x["flags"]))
        flags_zh = "、".join(f"{f}（{FLAGS_ZH.get(f, f)}）" for f in sorted(x["flags"]))
        over = x["over_limit"] > 0
        sev: Severity = "high" if over else "medium"
        ev: dict[str, Any] = {
            "finding": "flags_not_shown_by_analyzer", "signal": sig, "code": code,
            "data": _KIND_OF_SUFFIX.get(x["suffix"], x["suffix"]), "analyzer": x["analyzer"],
            "reported_flags": x["flags"], "reports": run.n, "limit": x["limit"],
            "measured_max": num(x["max_measured"]) if x["max_measured"] is not None else None,
            "measured_over_limit": x["over_limit"], "examples": list(run.examples),
            "window": window(run.start, run.last), "ongoing": not final,
            "origins": self._origins(run),
        }
        lim_en = (f"; the analyzer measured up to {num(x['max_measured'])}, over the limit "
                  f"{x['limit']}" if over else "")
        lim_zh = (f"；其间分析仪实测最高{num(x['max_measured'])}，超过限值{x['limit']}"
                  if over else "")
        return Alert(
            rule="E6", severity=sev, site=site, instrument=inst, start=run.start,
            end=run.last,
            summary_en=(f"{sig} ({code}): the data logger flagged {run.n} reports {flags} "
                        f"while analyzer {x['analyzer']} showed normal operation (N)"
                        f"{lim_en}: flags set in the logger to hide data?"),
            summary_zh=(f"{sig}（{code}）：数采仪将{run.n}个数据标记为{flags_zh}，而分析仪"
                        f"{x['analyzer']}状态正常（N）{lim_zh}：疑似在数采仪中设置标记以掩盖数据。"),
            evidence=ev, key=f"E6|{site}|{inst}|{sig}|flag_not_shown",
        )

    def _group_alert(self, key: tuple[str, str, tuple[str, ...]], run: _Run,
                     final: bool) -> Alert:
        site, inst, group = key
        kind = self.sites[site].kind
        codes = {sig: _code(kind, sig) for sig in group}
        last = run.examples[-1] if run.examples else {}
        meas = last.get("measured", {})
        source = [sig for sig, v in meas.items()
                  if last.get("value") is not None
                  and abs(v - last["value"]) <= max(float(self.p["abs_tol"]),
                                                    float(self.p["rel_tol"]) * abs(v))]
        ev: dict[str, Any] = {
            "finding": "identical_channels", "channels": list(group), "codes": codes,
            "reports": run.n, "examples": list(run.examples),
            "matches_analyzer": source, "window": window(run.start, run.last),
            "ongoing": not final, "origins": self._origins(run),
        }
        names = ", ".join(f"{s} ({codes[s]})" for s in group)
        src_en = (f"; only {', '.join(source)} matches what the analyzer measured"
                  if source else "")
        src_zh = f"；只有{'、'.join(source)}与分析仪实测值一致" if source else ""
        return Alert(
            rule="E3", severity="high", site=site, instrument=inst, start=run.start,
            end=run.last,
            summary_en=(f"The data logger reported identical values on {len(group)} channels "
                        f"{names} in {run.n} consecutive real-time reports (e.g. "
                        f"{last.get('value')}){src_en}: one signal wired into several "
                        "channels."),
            summary_zh=(f"数采仪{len(group)}个通道{names}连续{run.n}个实时数据完全相同（如"
                        f"{last.get('value')}）{src_zh}：疑似一路信号被接入多个通道。"),
            evidence=ev, key=f"E3|{site}|{inst}|identical|{'+'.join(group)}",
        )


def _merge_origins(into: Origins, lazy: tuple[list[Origin], list[Origins]]) -> None:
    for org in lazy[0]:
        into.add(org)
    for o in lazy[1]:
        into.merge(o)


def _between(raw: deque[Raw], start: float, end: float, *, closed: bool) -> list[Raw]:
    """Samples with start <= t <= end (``closed``) or < end, oldest first. Windows lie
    near the newest samples, so the deque is walked from its end."""
    out: list[Raw] = []
    for p in reversed(raw):
        t = p[0]
        if t < start:
            break
        if t < end or (closed and t == end):
            out.append(p)
    out.reverse()
    return out


def _components(pairs: set[tuple[str, str]]) -> list[tuple[str, ...]]:
    """Connected groups of signals from equal pairs, each sorted, in sorted order."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = {}
    for x in parent:
        groups.setdefault(find(x), []).append(x)
    return sorted(tuple(sorted(g)) for g in groups.values())
