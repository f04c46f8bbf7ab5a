"""Instrument health: a dead, disconnected, saturated or impossible instrument is not fraud.

A falsification rule looks for data that no honest measurement produces. A broken
instrument also produces such data — an analyzer that lost its sample pump reads 0 % O2
and 0 % CO2, a weather station that lost its cable reads 0 °C / 0 % / 0 kPa, an oil
probe beyond its range reads its full-scale value car after car — and a rule that does not
tell the two apart accuses a station of fraud for a repair job. Every rule therefore asks
this module, before it accuses, whether the signals its accusation rests on were healthy
in the seconds or hours it judges; what is not healthy becomes a *fault* finding (rule
I-HEALTH, category ``fault``) with its own, lower severity.

The checks are generic — any site kind, any signal of docs/signals.md:

* **flagged**: the instrument itself marked the value as not a measurement (HJ 212 flag
  ``D`` fault or ``B`` communication failure), or a gateway event said it was faulty
  or disconnected (``instrument_fault`` … ``instrument_recovered``,
  ``instrument_disconnected``);
* **impossible**: a value outside what the quantity can physically take
  (:data:`PHYSICAL_RANGE`: 0 kPa air pressure, 23 % O2, a negative engine speed);
* **all_zero**: every signal of an instrument reads exactly 0 while at least one of them
  cannot be 0 (a dead or disconnected device whose software shows zeros);
* **zero**: a signal that is never exactly 0 in operation (:data:`DEAD_AT_ZERO`: oil
  temperature, engine speed) reads exactly 0 for a run of samples;
* **no_gas**: an exhaust analyzer whose O2 and carbon are both far below what any mixture
  of ambient air and exhaust contains (:func:`gas_possible`): it is not sampling gas at all;
* **saturated**: a run pinned at a sensor's ceiling (or floor): at the most extreme value
  the stream ever reported while its other values approach that value continuously (the
  signature of clipping, learned per stream by :class:`CeilingTracker`) and while the
  instrument's other channels keep moving (a sensor clips one channel; a frozen
  instrument freezes them all), or a constant
  outside the signal's plausible operating range (:data:`PLAUSIBLE_RANGE`), which a program
  faking a signal would not choose.

A constant, plausible value (a frozen but credible oil temperature, identical weather test
after test) is *not* a fault here: it is the signature of a faked signal that the V2, V9
and E4 rules judge, with a severity that allows for a stuck sensor.

Two ways to use it:

* batch, over a window the rule already holds (a vehicle test, an hour):
  :func:`assess` returns the :class:`Fault` runs of one instrument's samples;
* streaming, for rules that judge over hours or days: a :class:`HealthBook` is fed every
  sample and event of the sites it watches and answers :meth:`HealthBook.faults_during`.
  The detection engine keeps one book for all detectors that set ``uses_health``.

What cannot be detected: an instrument that fails into plausible values (a drifting span,
a stuck-but-credible reading) looks like a healthy one; a station that fakes a fault
(pulls a cable during a test) gets a fault finding, not a falsification one — but the
fault is recorded with its time and origins, and I-OFFLINE / V7 still see the missing data.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ingest.detectors.base import Finding, Severity, origin_runs
from stationseal.records import Sample, SiteEvent

FaultKind = Literal["flagged", "impossible", "all_zero", "zero", "no_gas", "saturated"]

#: Ambient air: what an exhaust analyzer reads when its probe is in the open air.
AMBIENT_O2_PCT = 20.9
#: Carbon (CO + CO2 + HC as C1, %vol) of undiluted gasoline exhaust near lambda 1.
EXHAUST_CARBON_PCT = 15.0

#: Values a quantity can physically take (with room for the small negative readings of an
#: instrument near its zero). Outside: the instrument is broken, not the data faked.
PHYSICAL_RANGE: dict[str, tuple[float, float]] = {
    # vehicle inspection
    "speed_kmh": (-1.0, 300.0), "target_speed_kmh": (-1.0, 300.0),
    "power_kw": (-1000.0, 2000.0), "force_n": (-100_000.0, 100_000.0),
    "rpm": (0.0, 15_000.0), "obd_rpm": (0.0, 15_000.0),
    "oil_temp_c": (-50.0, 200.0),
    "hc_ppm": (-100.0, 100_000.0), "co_pct": (-0.5, 20.0), "co2_pct": (-0.5, 20.0),
    "o2_pct": (-0.5, 22.0), "no_ppm": (-100.0, 10_000.0), "nox_ppm": (-100.0, 10_000.0),
    "lambda": (0.2, 100.0), "obd_lambda": (0.0, 100.0),
    "dilution_factor": (0.2, 20.0), "humidity_factor": (0.2, 5.0),
    "opacity_pct": (-2.0, 100.5), "k_m1": (-0.5, 50.0),
    "flow_o2_pct": (-0.5, 22.0), "flow_lps": (-5.0, 10_000.0),
    "ambient_temp_c": (-60.0, 60.0), "ambient_rh_pct": (0.5, 100.5),
    "ambient_kpa": (50.0, 110.0),
    "obd_speed_kmh": (0.0, 300.0), "obd_throttle_pct": (0.0, 100.5),
    "obd_load_pct": (0.0, 100.5), "obd_odometer_km": (0.0, 5_000_000.0),
    # stacks
    "o2_stack_pct": (-0.5, 22.0), "moisture_pct": (-1.0, 100.0), "flue_temp_c": (-60.0, 1500.0),
    "flow_m3h": (-1e5, 1e9),
    # water
    "ph": (0.0, 14.0), "water_temp_c": (-5.0, 100.0),
}

#: Where a signal lies when an instrument delivers it in normal operation. A *constant*
#: outside this band is a clipped or stuck sensor, not a faked signal: a program that fakes
#: an oil temperature fakes a credible one. (Single readings outside it are not faults.)
PLAUSIBLE_RANGE: dict[str, tuple[float, float]] = {
    "oil_temp_c": (10.0, 120.0),
    "ambient_temp_c": (-45.0, 50.0),
    "ambient_rh_pct": (2.0, 100.0),
    "ambient_kpa": (55.0, 108.0),
}

#: Signals that are never exactly 0 while the instrument works (engine speed during a
#: test, oil temperature of a running engine): a run of exact zeros is a dead sensor.
DEAD_AT_ZERO: frozenset[str] = frozenset({"oil_temp_c", "rpm", "obd_rpm", "ambient_kpa",
                                          "lambda"})

#: HJ 212 flags by which an instrument says a value is not a measurement because it is
#: broken: ``D`` fault, ``B`` communication failure. (``M``/``C``/``F`` are operation.)
FAULT_FLAGS: frozenset[str] = frozenset({"D", "B"})

#: Gateway events that open and close an instrument fault.
FAULT_EVENTS: frozenset[str] = frozenset({"instrument_fault", "instrument_disconnected"})
RECOVERY_EVENTS: frozenset[str] = frozenset({"instrument_recovered"})

FAULT_TEXT: dict[str, tuple[str, str]] = {
    "flagged": ("reported faulty by the instrument or gateway", "仪器或采集器报告故障"),
    "impossible": ("physically impossible values", "物理上不可能的数值"),
    "all_zero": ("every channel exactly 0 (dead or disconnected)",
                 "全部通道恒为 0（仪器失效或断开）"),
    "zero": ("exactly 0 where the quantity cannot be 0 (dead sensor)", "恒为 0（传感器失效）"),
    "no_gas": ("neither ambient air nor exhaust (O2 and carbon both near 0): not sampling gas",
               "既非环境空气也非尾气（O2 与碳均接近 0），未在采样"),
    "saturated": ("pinned at the sensor's ceiling or floor", "读数卡在传感器量程上限或下限"),
}


def physically_possible(signal: str, value: float) -> bool:
    r = PHYSICAL_RANGE.get(signal)
    return r is None or (r[0] <= value <= r[1] and math.isfinite(value))


#: ``O2 + 20.9 × carbon / 15`` below this (%vol): the analyzer sees neither air nor exhaust.
#: A quarter of the air/exhaust line: an analyzer scaled down (V5) or a bottle of span gas
#: stays above it; a dead bench, a stopped pump or zero gas (nitrogen) falls below.
NO_GAS_BELOW = 5.0


def gas_possible(values: Mapping[str, float], tolerance_pct: float = 4.0) -> bool | None:
    """Whether an exhaust analyzer's O2 and carbon can come from air mixed with exhaust.

    Any mixture of ambient air (20.9 % O2, no carbon) and exhaust (≈ 15 % carbon, little
    O2) satisfies ``O2 + 20.9 × carbon / 15 ≈ 20.9`` (lean exhaust and rich exhaust stay
    within a few %). Below :data:`NO_GAS_BELOW` the analyzer is not sampling gas at all
    (dead, pump stopped, zero gas); O2 above 20.9 + tolerance is a broken cell. (More
    carbon than combustion gives is a real gas — span gas — and is left to V5/V6.)
    ``None`` when the analyzer does not report both O2 and CO2.
    """
    if "o2_pct" not in values or "co2_pct" not in values:
        return None
    carbon = values["co2_pct"] + values.get("co_pct", 0.0) + 6e-4 * values.get("hc_ppm", 0.0)
    mix = values["o2_pct"] + AMBIENT_O2_PCT * carbon / EXHAUST_CARBON_PCT
    return mix >= NO_GAS_BELOW and values["o2_pct"] <= AMBIENT_O2_PCT + tolerance_pct


def air_dilution_consistent(co_co2_pct: float, o2_pct: float, tolerance_pct: float = 3.0
                            ) -> bool:
    """Whether O2 is what exhaust diluted by ambient air to this CO+CO2 would show.

    A probe out of the tailpipe samples ambient air: CO+CO2 falls *and O2 rises towards
    20.9 %* in proportion. Low CO+CO2 with O2 far below that line is not dilution but an
    analyzer that reads nothing (V1 must not call it a probe out of the tailpipe).
    """
    expected = AMBIENT_O2_PCT * max(0.0, 1.0 - co_co2_pct / EXHAUST_CARBON_PCT)
    return expected - tolerance_pct <= o2_pct <= AMBIENT_O2_PCT + 1.0


@dataclass(slots=True)
class Fault:
    """A run of samples of one instrument that are not trustworthy measurements."""

    site: str
    instrument: str
    #: Affected signals; ``("*",)`` means every signal of the instrument.
    signals: tuple[str, ...]
    kind: FaultKind
    start: float
    end: float
    samples: int
    detail: dict[str, Any] = field(default_factory=dict)
    origins: list[tuple[str, int]] = field(default_factory=list)

    def affects(self, signal: str) -> bool:
        return self.signals == ("*",) or signal in self.signals

    def overlaps(self, start: float, end: float) -> bool:
        return self.start <= end and start <= self.end

    def describe(self) -> tuple[str, str]:
        en, zh = FAULT_TEXT[self.kind]
        sig = "all signals" if self.signals == ("*",) else ", ".join(self.signals)
        sig_zh = "全部信号" if self.signals == ("*",) else "、".join(self.signals)
        return (f"{self.instrument} {sig}: {en} in {self.samples} sample(s)",
                f"{self.instrument} {sig_zh}：{zh}（{self.samples} 个数据）")

    def to_finding(self, severity: Severity, rule: str = "I-HEALTH",
                   test_id: str | None = None, parameters: dict[str, Any] | None = None
                   ) -> Finding:
        en, zh = self.describe()
        return Finding(
            rule=rule, check=self.kind, severity=severity, start=self.start, end=self.end,
            summary_en=en, summary_zh=zh,
            values={"signals": list(self.signals), "samples": self.samples, **self.detail},
            thresholds={k: v for k, v in self.detail.items() if k in ("range", "ceiling",
                                                                      "plausible_range")},
            parameters=dict(parameters or {}), origins=origin_runs(self.origins),
            category="fault", site=self.site, instrument=self.instrument, test_id=test_id,
            id=f"{self.kind}|{self.instrument}|{'+'.join(self.signals)}")


# --------------------------------------------------------------------------- batch


def _runs(flags: Sequence[bool]) -> list[tuple[int, int]]:
    """Index ranges ``[i, j)`` where ``flags`` is true."""
    out: list[tuple[int, int]] = []
    i = 0
    n = len(flags)
    while i < n:
        if flags[i]:
            j = i
            while j < n and flags[j]:
                j += 1
            out.append((i, j))
            i = j
        else:
            i += 1
    return out


def constant_runs(values: Sequence[float | None], min_len: int) -> list[tuple[int, int]]:
    """Index ranges ``[i, j)`` of at least ``min_len`` exactly equal values (None breaks)."""
    out: list[tuple[int, int]] = []
    i = 0
    n = len(values)
    while i < n:
        v = values[i]
        j = i + 1
        if v is not None:
            while j < n and values[j] == v:
                j += 1
            if j - i >= min_len:
                out.append((i, j))
        i = j
    return out


def _zero_row(values: Mapping[str, float]) -> bool:
    """Every channel exactly 0 although one of them cannot be (a dead device)."""
    if len(values) < 2:
        return False
    for v in values.values():
        if v != 0.0:
            return False
    return any(not physically_possible(k, 0.0) or k in DEAD_AT_ZERO or k in _GAS
               for k in values)


_GAS = frozenset({"o2_pct", "co2_pct"})
_NO_GAS_SIGNALS = ("o2_pct", "co2_pct", "co_pct", "hc_ppm", "lambda")


def _frozen_together(cols: Mapping[str, Sequence[float | None]], sig: str, i: int, j: int
                     ) -> bool:
    """Every other signal of the instrument is constant too over ``[i, j)``.

    A sensor clips one channel; a frozen instrument (or a lane program holding its last
    reading) freezes all of them — that is not a ceiling, it is for the rules to judge.
    """
    others = [c for k, c in cols.items() if k != sig]
    if not others:
        return False
    for c in others:
        vals = {v for v in c[i:j] if v is not None}
        if len(vals) > 1:
            return False
    return True


def assess(
    site: str, instrument: str, samples: Sequence[Sample], *,
    min_run: int = 3, min_constant: int = 10, ceilings: CeilingTracker | None = None,
    stream_key: str = "",
) -> list[Fault]:
    """Fault runs among one instrument's samples (time order), by the checks above.

    ``min_run`` samples in a row make a zero/all-zero/no-gas run (a single odd sample is
    noise), ``min_constant`` a saturated one (a slow quantity read at a coarse resolution
    holds one value for a few seconds); one sample suffices for *flagged* and
    *impossible*. ``ceilings``: learned sensor ceilings per stream (``stream_key +
    signal``), for *saturated*.

    Cost: one pass per signal with the builtin min/max; the run searches only start when
    a column's extremes say a fault is possible, so a healthy window costs little.
    """
    n = len(samples)
    if n == 0:
        return []
    faults: list[Fault] = []

    def add(kind: FaultKind, signals: tuple[str, ...], i: int, j: int, **detail: Any) -> None:
        faults.append(Fault(site, instrument, signals, kind, samples[i].time,
                            samples[j - 1].time, j - i, detail,
                            [s.origin for s in samples[i:j] if s.origin is not None]))

    signals: dict[str, None] = {}
    for s in samples:
        for k in s.values:
            signals.setdefault(k)
    # flagged by the instrument (D/B) — per signal
    if any(s.flags and not FAULT_FLAGS.isdisjoint(s.flags.values()) for s in samples):
        for sig in signals:
            marks = [s.flags.get(sig, "N") in FAULT_FLAGS for s in samples]
            for i, j in _runs(marks):
                add("flagged", (sig,), i, j, flag=samples[i].flags.get(sig))
    # all channels exactly zero while one of them cannot be
    in_zero_row: set[int] = set()
    if any(_zero_row(s.values) for s in samples):
        for i, j in _runs([_zero_row(s.values) for s in samples]):
            if j - i >= min_run:
                add("all_zero", ("*",), i, j)
                in_zero_row.update(range(i, j))
    cols: dict[str, list[float | None]] = {sig: [s.values.get(sig) for s in samples]
                                           for sig in signals}
    for sig in signals:
        col = cols[sig]
        present = [v for v in col if v is not None]
        lo, hi = min(present), max(present)
        r = PHYSICAL_RANGE.get(sig)
        if r is not None and (lo < r[0] or hi > r[1] or hi != hi):
            bad = [v is not None and k not in in_zero_row and not (r[0] <= v <= r[1])
                   for k, v in enumerate(col)]
            for i, j in _runs(bad):
                vals = [v for v in col[i:j] if v is not None]
                add("impossible", (sig,), i, j, range=list(r),
                    min_value=min(vals), max_value=max(vals))
        if sig in DEAD_AT_ZERO and lo <= 0.0 <= hi:
            zeros = [v == 0.0 and k not in in_zero_row for k, v in enumerate(col)]
            for i, j in _runs(zeros):
                if j - i >= min_run:
                    add("zero", (sig,), i, j)
        # saturated: a constant at a learned ceiling, or a constant outside plausible range
        pr = PLAUSIBLE_RANGE.get(sig)
        outside = pr is not None and (lo < pr[0] or hi > pr[1])
        limit = ceilings is not None and (ceilings.is_limit(stream_key + sig, hi)
                                          or ceilings.is_limit(stream_key + sig, lo))
        if outside or limit:
            for i, j in constant_runs(col, min_constant):
                v = col[i]
                assert v is not None
                if (v == 0.0 and sig in DEAD_AT_ZERO) or not physically_possible(sig, v):
                    continue
                if pr is not None and not (pr[0] <= v <= pr[1]):
                    add("saturated", (sig,), i, j, value=v, plausible_range=list(pr))
                elif ceilings is not None and ceilings.is_limit(stream_key + sig, v) \
                        and not _frozen_together(cols, sig, i, j):
                    add("saturated", (sig,), i, j, value=v, ceiling=v)
    # exhaust analyzer sampling no gas at all
    if "o2_pct" in cols and "co2_pct" in cols:
        o2 = [v for v in cols["o2_pct"] if v is not None]
        co2 = [v for v in cols["co2_pct"] if v is not None]
        if o2 and co2 and min(o2) + AMBIENT_O2_PCT / EXHAUST_CARBON_PCT * min(co2) < NO_GAS_BELOW:
            nogas = [k not in in_zero_row and gas_possible(s.values) is False
                     for k, s in enumerate(samples)]
            for i, j in _runs(nogas):
                if j - i >= min_run:
                    add("no_gas", _NO_GAS_SIGNALS, i, j,
                        mean_o2_pct=round(sum(s.values.get("o2_pct", 0.0)
                                              for s in samples[i:j]) / (j - i), 3))
    return faults


class CeilingTracker:
    """Learns, per stream, the values at which a sensor clips (ceiling or floor).

    Clipping leaves a point mass at the most extreme value a stream ever reports: the true
    value crosses the ceiling gradually (the stream's other readings approach it), then
    every reading above it is reported as the ceiling. So ``v`` is a limit of a stream
    when it is the stream's maximum (minimum), was reported in at least ``min_episodes``
    (2) separate windows (tests), at least ``min_approach`` (3) readings lie within
    ``band`` (5 %) below (above) it, and the count at ``v`` is at least ``mass_ratio``
    (5) times the mean count per distinct value in that band, and at least once the
    stream ran into ``v`` gradually within one window (the reading before it lay in the
    band). A faked constant has no approach, or the stream goes beyond it, or it starts
    at a window's edge (a lane program switched to a default value); a slowly varying
    reading at its running maximum has no point mass.
    """

    __slots__ = ("band", "mass_ratio", "min_approach", "min_episodes", "streams")

    def __init__(self, band: float = 0.05, min_approach: int = 3, min_episodes: int = 2,
                 mass_ratio: float = 5.0) -> None:
        self.band = band
        self.min_approach = min_approach
        self.min_episodes = min_episodes
        self.mass_ratio = mass_ratio
        # key -> (max side, min side); each side: [extreme, count at it, episodes at it,
        # {value: count} within the band on the inner side, episodes entered gradually]
        self.streams: dict[str, tuple[list[Any], list[Any]]] = {}

    def observe(self, key: str, values: Iterable[float]) -> None:
        vals = list(values)
        if not vals:
            return
        st = self.streams.get(key)
        if st is None:
            st = self.streams[key] = ([-math.inf, 0, 0, {}, 0], [math.inf, 0, 0, {}, 0])
        for side, ext, sign in ((st[0], max(vals), 1.0), (st[1], min(vals), -1.0)):
            if sign * ext > sign * side[0]:
                # a new extreme: the old one and its band no longer count as a limit
                side[0], side[1], side[2], side[4] = ext, 0, 0, 0
                side[3] = {v: c for v, c in side[3].items() if self._near(ext, v, sign)}
            top = side[0]
            at = 0
            entered = False
            near: dict[float, int] = side[3]
            prev: float | None = None
            for v in vals:
                if v == top:
                    at += 1
                    entered = entered or (prev is not None and self._near(top, prev, sign))
                elif self._near(top, v, sign):
                    near[v] = near.get(v, 0) + 1
                prev = v
            if at:
                side[1] += at
                side[2] += 1
                side[4] += entered
            if len(near) > 256:  # bounded: keep the values closest to the extreme
                keep = sorted(near, key=lambda v: abs(top - v))[:128]
                side[3] = {v: near[v] for v in keep}

    def _near(self, top: float, v: float, sign: float) -> bool:
        d = sign * (top - v)
        return 0.0 < d <= self.band * max(abs(top), 1.0)

    def is_limit(self, key: str, value: float) -> bool:
        st = self.streams.get(key)
        if st is None:
            return False
        for side in st:
            if value != side[0] or side[2] < self.min_episodes or side[4] < 1:
                continue
            near = side[3]
            n = sum(near.values())
            if n >= self.min_approach and side[1] >= self.mass_ratio * n / len(near):
                return True
        return False


# --------------------------------------------------------------------------- streaming


@dataclass(slots=True)
class _Open:
    kind: FaultKind
    signals: tuple[str, ...]
    start: float
    last: float
    samples: int
    detail: dict[str, Any]
    origins: deque[tuple[str, int]]


class HealthBook:
    """Streaming instrument health for rules that judge long windows (hours, days).

    Fed every sample and event (``on_sample``/``on_event``, O(values) per sample), it keeps
    per instrument the fault runs of the last ``horizon_s`` (default 40 days; at most
    ``max_faults`` each) and answers whether a signal was faulty in a window. Runs of
    zero/all-zero/no-gas need ``min_run`` samples; flagged and impossible values count
    from one sample; gateway fault events open a fault on the whole instrument until
    ``instrument_recovered``.
    """

    def __init__(self, min_run: int = 3, horizon_s: float = 40 * 86400.0,
                 max_faults: int = 512) -> None:
        self.min_run = min_run
        self.horizon_s = horizon_s
        self.max_faults = max_faults
        self.closed: dict[tuple[str, str], deque[Fault]] = {}
        self._open: dict[tuple[str, str], dict[tuple[FaultKind, str], _Open]] = {}
        #: Faults that just closed, for a detector to report (it empties the queue).
        self.new: deque[Fault] = deque(maxlen=10_000)

    def on_sample(self, s: Sample) -> None:
        key = (s.site, s.instrument)
        opened = self._open.get(key)
        now: dict[tuple[FaultKind, str], tuple[tuple[str, ...], dict[str, Any]]] = {}
        vals = s.values
        if len(vals) >= 2 and all(v == 0.0 for v in vals.values()) and any(
                not physically_possible(k, 0.0) or k in DEAD_AT_ZERO
                or k in ("o2_pct", "co2_pct") for k in vals):
            now[("all_zero", "*")] = (("*",), {})
        else:
            for k, v in vals.items():
                r = PHYSICAL_RANGE.get(k)
                if r is not None and not (r[0] <= v <= r[1]):
                    now[("impossible", k)] = ((k,), {"range": list(r)})
                elif v == 0.0 and k in DEAD_AT_ZERO:
                    now[("zero", k)] = ((k,), {})
            if "o2_pct" in vals and "co2_pct" in vals and gas_possible(vals) is False:
                now[("no_gas", "o2_pct")] = (("o2_pct", "co2_pct", "co_pct", "hc_ppm"), {})
        if s.flags:
            for k, f in s.flags.items():
                if f in FAULT_FLAGS:
                    now[("flagged", k)] = ((k,), {"flag": f})
        if not now and not opened:
            return
        opened = self._open.setdefault(key, {})
        # Runs that did not continue in this sample close (a fault opened by a gateway
        # event lasts until the instrument_recovered event).
        for fk in [fk for fk in opened if fk not in now and fk != ("flagged", "*")]:
            self._close(key, opened.pop(fk))
        for fk, (sigs, detail) in now.items():
            o = opened.get(fk)
            if o is None:
                o = opened[fk] = _Open(fk[0], sigs, s.time, s.time, 0, detail, deque(maxlen=4096))
            o.last = s.time
            o.samples += 1
            if s.origin is not None:
                o.origins.append(s.origin)

    def on_event(self, e: SiteEvent) -> None:
        key = (e.site, e.instrument)
        if e.event in FAULT_EVENTS:
            opened = self._open.setdefault(key, {})
            fk: tuple[FaultKind, str] = ("flagged", "*")
            if fk not in opened:
                opened[fk] = _Open("flagged", ("*",), e.time, e.time, 0,
                                   {"event": e.event, "error": e.detail.get("error")},
                                   deque(maxlen=4096))
            if e.origin is not None:
                opened[fk].origins.append(e.origin)
        elif e.event in RECOVERY_EVENTS:
            o = self._open.get(key, {}).pop(("flagged", "*"), None)
            if o is not None:
                o.last = e.time
                self._close(key, o, force=True)

    def _close(self, key: tuple[str, str], o: _Open, force: bool = False) -> None:
        need = 1 if o.kind in ("flagged", "impossible") else self.min_run
        if o.samples < need and not force:
            return
        f = Fault(key[0], key[1], o.signals, o.kind, o.start, o.last, o.samples, o.detail,
                  list(o.origins))
        q = self.closed.setdefault(key, deque(maxlen=self.max_faults))
        while q and q[0].end < o.last - self.horizon_s:
            q.popleft()
        q.append(f)
        self.new.append(f)

    def faults_during(self, site: str, instrument: str, start: float, end: float,
                      signal: str | None = None) -> list[Fault]:
        """Faults of an instrument overlapping ``[start, end]`` (of ``signal`` if given),
        including runs still open."""
        key = (site, instrument)
        out = [f for f in self.closed.get(key, ()) if f.overlaps(start, end)
               and (signal is None or f.affects(signal))]
        for o in self._open.get(key, {}).values():
            need = 1 if o.kind in ("flagged", "impossible") else self.min_run
            if o.samples >= need or o.kind == "flagged":
                # A fault a gateway event opened lasts until its recovery event.
                last = math.inf if o.signals == ("*",) and o.kind == "flagged" else o.last
                f = Fault(site, instrument, o.signals, o.kind, o.start, last, o.samples,
                          o.detail, [])
                if f.overlaps(start, end) and (signal is None or f.affects(signal)):
                    out.append(f)
        return out

    def healthy(self, site: str, instrument: str, start: float, end: float,
                signal: str | None = None) -> bool:
        return not self.faults_during(site, instrument, start, end, signal)

    def finish(self) -> None:
        for key, opened in self._open.items():
            for o in opened.values():
                self._close(key, o)
        self._open.clear()
