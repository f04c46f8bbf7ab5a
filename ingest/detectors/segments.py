"""Vehicle tests as units: assemble a lane's samples into tests, or infer tests from signals.

Most vehicle falsification shows only across a whole test (CO+CO2 over the scored
seconds, sample counts, curves compared between plates), so the V detectors judge
completed tests. :class:`TestAssembler` turns the streaming records of a site into
:class:`TestRecord` objects, one per test and lane:

* **With lane context** (``Sample.test`` and/or ``test_start``/``test_end`` events): a test
  is the records carrying one test id. It closes once the site's samples have moved
  ``grace_s`` (5 s) past its ``test_end`` and its last sample, or — if no end event
  comes — after ten quiet gaps, or at end of stream. Samples without context that fall
  between a test's start and end events (an untagged weather station, or a lane whose
  instruments are not tagged at all) join it; a run of untagged samples that an end
  event names afterwards is adopted by that test.
* **Without context** the test is inferred: a lane is *active* while the analyzer sees
  exhaust (``co2_pct`` > 1 %), the dynamometer turns (``speed_kmh`` > 0.5) or an engine
  speed is read (``rpm``/``obd_rpm`` > 300); a test is a run of active seconds with no
  quiet spell longer than ``gap_s`` (30 s: longer than any pause inside a protocol,
  shorter than a vehicle change). Quiet records outside any test belong to none and are
  counted in ``unassigned``.
* The **method** of an inferred test is guessed from its speed profile: opacimeter data
  and a turning dyno → lug_down, opacimeter alone → free_accel; dyno speed held in
  25 ± 3 km/h (40 ± 3) for most moving seconds → asm5025 (asm2540); ≥ 150 s with
  several stops → vmas; exhaust gases without a dyno → idle; otherwise "unknown".
  Its **phases** are inferred as a lane would label them (see :func:`infer_phases`).

The lane of a sample is ``Sample.test.lane`` when present, else the instrument id's prefix
before the last dot (``L2.analyzer`` → ``L2``), else the site's only lane if just one
has been named (by events or tagged samples), else "".

Values carrying a data flag other than N (normal) or T (over range) are left out of the
per-second view: the instrument itself said they are not measurements (calibration gas,
fault). Seconds are aligned across instruments on the UTC second: a sample stamped at t belongs
to second ``floor(t + 0.1)`` (lanes poll their instruments within the second; the 0.1 s
allows for a clock a little ahead).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors.base import (
    Alert,
    Detector,
    Severity,
    SiteInfo,
    finding_from_evidence,
    origin_runs,
)
from ingest.detectors.health import (
    FAULT_EVENTS,
    RECOVERY_EVENTS,
    CeilingTracker,
    Fault,
    assess,
)
from ingest.detectors.hourly import VALID_FLAGS
from stationseal import vehicle_results as vres
from stationseal.records import Sample, SiteEvent

ALIGN_S = 0.1
#: Signals whose sensor ceilings are learned per lane: those that clip in practice (an oil
#: probe at its full scale) and that a rule judges on being constant (V2). Weather is
#: judged on all channels together (V9), which one clipping channel cannot mimic.
CEILING_SIGNALS: tuple[str, ...] = ("oil_temp_c",)


def lane_of(instrument: str, test_lane: str | None = None) -> str:
    """Lane of a record: the lane context if any, else the instrument id's prefix."""
    if test_lane:
        return test_lane
    head, dot, _ = instrument.rpartition(".")
    return head if dot else ""


def second_of(t: float) -> int:
    return math.floor(t + ALIGN_S)


@dataclass(slots=True)
class Second:
    """All instruments' values in one second of a test."""

    t: int
    phase: str
    values: dict[str, float]
    origins: list[tuple[str, int]]
    instruments: set[str]


@dataclass(slots=True)
class TestRecord:
    """A completed test: its samples, lane events and per-second merged view."""

    id: str
    site: str
    lane: str
    method: str
    vehicle: str
    inferred: bool
    samples: list[Sample]
    start_detail: dict[str, Any] = field(default_factory=dict)
    end_detail: dict[str, Any] = field(default_factory=dict)
    start_event_time: float | None = None
    end_event_time: float | None = None
    seconds: list[Second] = field(default_factory=list)
    #: (gateway, seq) of the lane's test_start / test_end events.
    event_origins: list[tuple[str, int]] = field(default_factory=list)
    #: Whether the lane labelled the phases (else they were inferred from the signals).
    phases_from_lane: bool = False
    #: Each instrument's samples, in time order.
    streams: dict[str, list[Sample]] = field(default_factory=dict)
    #: Each instrument's sampling interval (s): configured for the site, else as seen.
    intervals: dict[str, float] = field(default_factory=dict)
    #: Instrument faults found in the test (their values are left out of ``seconds``).
    faults: list[Fault] = field(default_factory=list)

    @property
    def start(self) -> float:
        if self.samples:
            return self.samples[0].time
        return self.start_event_time or self.end_event_time or 0.0

    @property
    def end(self) -> float:
        if self.samples:
            return self.samples[-1].time
        return self.end_event_time or self.start_event_time or 0.0

    @property
    def result(self) -> str | None:
        r = self.end_detail.get("result")
        return str(r) if r in ("pass", "fail") else None

    def detail(self, key: str) -> Any:
        """A lane-reported attribute (vin, calid, ...) from the end or start event."""
        if key in self.end_detail:
            return self.end_detail[key]
        return self.start_detail.get(key)

    @property
    def vin(self) -> str:
        return str(self.detail("vin") or "")

    def series(self, signal: str, phases: Iterable[str] | None = None) -> list[Second]:
        """Seconds carrying ``signal`` (optionally only in the given phases)."""
        ph = set(phases) if phases is not None else None
        return [s for s in self.seconds
                if signal in s.values and (ph is None or s.phase in ph)]

    def scored(self) -> list[Second]:
        return [s for s in self.seconds if s.phase in vres.SCORED_PHASES]

    def slim(self, *signals: str) -> TestRecord:
        """A light copy for rules that hold tests across a run of tests: only the first and
        last sample (its interval) and the seconds carrying ``signals``."""
        keep = [sec for sec in self.seconds if any(x in sec.values for x in signals)]
        return TestRecord(self.id, self.site, self.lane, self.method, self.vehicle,
                          self.inferred, self.samples[:1] + self.samples[-1:],
                          self.start_detail, self.end_detail, self.start_event_time,
                          self.end_event_time, keep, self.event_origins,
                          self.phases_from_lane, {}, dict(self.intervals), list(self.faults))

    def healthy(self, *signals: str) -> bool:
        """No instrument fault touched any of ``signals`` during the test."""
        return not any(f.affects(sig) for f in self.faults for sig in signals)

    def by_instrument(self) -> dict[str, list[Sample]]:
        if self.streams:
            return self.streams
        out: dict[str, list[Sample]] = {}
        for s in self.samples:
            out.setdefault(s.instrument, []).append(s)
        return out

    def results(self) -> dict[str, float]:
        """The test scored from what the instruments measured (GB 18285 / GB 3847)."""
        if self.method not in vres.PHASES:
            return {}
        return vres.compute_results(self.method, [s.values for s in self.seconds],
                                    [s.phase for s in self.seconds])


@dataclass(slots=True)
class _Building:
    id: str
    site: str
    lane: str
    method: str = ""
    vehicle: str = ""
    inferred: bool = False
    samples: list[Sample] = field(default_factory=list)
    start_detail: dict[str, Any] = field(default_factory=dict)
    end_detail: dict[str, Any] = field(default_factory=dict)
    start_event_time: float | None = None
    end_event_time: float | None = None
    last_active: float = -math.inf
    last_time: float = -math.inf
    event_origins: list[tuple[str, int]] = field(default_factory=list)


def is_active(values: Mapping[str, float]) -> bool:
    """Whether a sample shows a test going on (exhaust, turning rollers, running engine)."""
    return (values.get("co2_pct", 0.0) > 1.0 or values.get("speed_kmh", 0.0) > 0.5
            or values.get("rpm", 0.0) > 300.0 or values.get("obd_rpm", 0.0) > 300.0)


class TestAssembler:
    """Streaming assembly of tests per (site, lane); see the module docstring.

    Tests close on the progress of *sample* time of every instrument of their lane, never
    on event time or on other lanes: a service may hold each instrument's samples back to
    reorder them while lane events pass straight through, and an idle instrument's last
    samples stay held until it reports again — a test must not close before its last
    samples are in. An instrument silent for ``max_hold_s`` (1 h) no longer holds tests
    open. Tests are handed out in the lane's order. (So a lane's tests are judged when its
    instruments have all reported past them, or at end of stream.)
    """

    def __init__(self, gap_s: float = 30.0, grace_s: float = 5.0, max_hold_s: float = 3600.0,
                 sites: Mapping[str, SiteInfo] | None = None):
        self.sites = sites or {}
        #: Sensor ceilings learned per lane and signal, across the lane's tests.
        self.ceilings = CeilingTracker()
        #: (site, instrument) -> [start, end or inf, event, origin] of reported faults.
        self.fault_spans: dict[tuple[str, str], list[list[Any]]] = {}
        self.gap_s = gap_s
        self.grace_s = grace_s
        self.max_hold_s = max_hold_s
        self.pending: dict[tuple[str, str], list[TestRecord]] = {}
        self.open: dict[tuple[str, str], dict[str, _Building]] = {}
        self.watermark: dict[tuple[str, str], float] = {}
        self.inst_watermark: dict[tuple[str, str], float] = {}
        self.lane_instruments: dict[tuple[str, str], set[str]] = {}
        self._checked: dict[tuple[str, str], float] = {}
        self.closed: dict[tuple[str, str], list[str]] = {}
        self.lanes: dict[str, set[str]] = {}
        self._routes: dict[tuple[str, str, str | None], tuple[tuple[str, str],
                                                              tuple[str, str]]] = {}
        #: Quiet samples outside any test, and samples of a test that had already closed.
        self.unassigned = 0
        self.late = 0

    # -- feeding
    def _route(self, s: Sample) -> tuple[tuple[str, str], tuple[str, str]]:
        """(site, lane) and (site, instrument) of a sample; cached per instrument once its
        lane is known (the per-sample cost of assembly is mostly this bookkeeping)."""
        ctx = s.test
        ckey = (s.site, s.instrument, ctx.lane if ctx else None)
        hit = self._routes.get(ckey)
        if hit is not None:
            return hit
        lane = lane_of(s.instrument, ckey[2])
        known = self.lanes.setdefault(s.site, set())
        if lane:
            known.add(lane)
        elif len(known) == 1:
            lane = next(iter(known))  # a single-lane site's untagged instrument
        key = (s.site, lane)
        ikey = (s.site, s.instrument)
        self.lane_instruments.setdefault(key, set()).add(s.instrument)
        if lane and (ckey[2] or lane_of(s.instrument)):
            self._routes[ckey] = (key, ikey)
        return key, ikey

    def on_sample(self, s: Sample) -> list[TestRecord]:
        ctx = s.test
        key, ikey = self._route(s)
        t = s.time
        wm = self.watermark.get(key, -math.inf)
        if t > wm:
            wm = self.watermark[key] = t
        if t > self.inst_watermark.get(ikey, -math.inf):
            self.inst_watermark[ikey] = t
        blds = self.open.get(key)
        if blds is None:
            blds = self.open[key] = {}
        active = is_active(s.values)
        b: _Building | None
        if ctx is not None and ctx.id:
            b = blds.get(ctx.id)
            if b is None:
                if ctx.id in self.closed.get(key, ()):
                    self.late += 1
                    return self._expire(key, wm)
                b = blds[ctx.id] = _Building(ctx.id, s.site, key[1])
            if not b.method:
                b.method = ctx.method
            if not b.vehicle:
                b.vehicle = ctx.vehicle
        else:
            b = self._covering(blds, t)
            if b is None:
                inferred = [x for x in blds.values() if x.inferred
                            and t - x.last_active <= self.gap_s]
                if inferred:
                    b = inferred[-1]
                elif active:
                    tid = f"{s.site}/{key[1] or '-'}/{second_of(t)}"
                    b = blds[tid] = _Building(tid, s.site, key[1], inferred=True)
                else:
                    self.unassigned += 1
                    return self._expire(key, wm)
        b.samples.append(s)
        if t > b.last_time:
            b.last_time = t
        if active and t > b.last_active:
            b.last_active = t
        if wm - self._checked.get(key, -math.inf) < 1.0:
            return []  # tests are checked for closing once per second of lane time
        return self._expire(key, wm)

    def on_event(self, e: SiteEvent) -> list[TestRecord]:
        if e.event in FAULT_EVENTS or e.event in RECOVERY_EVENTS:
            self._fault_event(e)
            return []
        if e.event not in ("test_start", "test_end"):
            return []
        d = e.detail
        tid = str(d.get("test_id") or "")
        if not tid:
            return []
        lane = lane_of(e.instrument, str(d.get("lane") or ""))
        known = self.lanes.setdefault(e.site, set())
        if lane and lane not in known:
            known.add(lane)
            if len(known) == 1 and (e.site, "") in self.open:
                # Untagged samples seen before the lane was named belong to it.
                self.open[(e.site, lane)] = self.open.pop((e.site, ""))
                for moved in self.open[(e.site, lane)].values():
                    moved.lane = lane
        key = (e.site, lane)
        blds = self.open.setdefault(key, {})
        b = blds.get(tid)
        if b is None:
            # Samples without context may already have formed this test: adopt it.
            run = [x for x in blds.values() if x.inferred and x.samples
                   and x.samples[0].time - self.grace_s <= e.time
                   and (e.event == "test_end" or e.time <= x.samples[0].time)]
            if run:
                b = run[-1]
                del blds[b.id]
                b.id, b.inferred = tid, False
            else:
                b = _Building(tid, e.site, key[1])
            blds[tid] = b
        b.method = b.method or str(d.get("method") or "")
        b.vehicle = b.vehicle or str(d.get("vehicle") or "")
        if e.origin is not None:
            b.event_origins.append(e.origin)
        if e.event == "test_start":
            b.start_detail = dict(d)
            b.start_event_time = e.time
        else:
            b.end_detail = dict(d)
            b.end_event_time = e.time
        return []

    def finish(self) -> list[TestRecord]:
        for key in list(self.open):
            for tid in list(self.open[key]):
                self._close(key, tid)
        out = [r for recs in self.pending.values() for r in recs]
        self.pending.clear()
        out.sort(key=lambda r: r.start)
        return out

    # -- internals
    def _fault_event(self, e: SiteEvent) -> None:
        """Gateway-reported instrument faults, so a test sees them (bounded per instrument)."""
        key = (e.site, e.instrument)
        spans = self.fault_spans.setdefault(key, [])
        if e.event in FAULT_EVENTS:
            if not spans or spans[-1][1] != math.inf:
                spans.append([e.time, math.inf, e.event, e.origin])
        elif spans and spans[-1][1] == math.inf:
            spans[-1][1] = e.time
        del spans[:-32]

    def _covering(self, blds: dict[str, _Building], t: float) -> _Building | None:
        """The lane's test with context whose span covers ``t`` (latest start wins)."""
        best: _Building | None = None
        best_start = -math.inf
        for b in blds.values():
            if b.inferred:
                continue
            first = b.start_event_time if b.start_event_time is not None else (
                b.samples[0].time if b.samples else None)
            if first is None or t < first - self.grace_s:
                continue
            if b.end_event_time is not None and t > b.end_event_time + self.grace_s:
                continue
            if first > best_start:
                best, best_start = b, first
        return best

    def _expire(self, key: tuple[str, str], wm: float) -> list[TestRecord]:
        if wm - self._checked.get(key, -math.inf) < 1.0:
            return []  # once per second of lane time is enough
        self._checked[key] = wm
        out: list[TestRecord] = []
        blds = self.open.get(key, {})
        # Every instrument of the lane must have moved on, not just the fastest: one that
        # is held back (or idle) may still carry a test's samples. Bounded by max_hold_s.
        slow = min((self.inst_watermark[(key[0], i)] for i in self.lane_instruments.get(key, ())),
                   default=wm)
        for tid, b in list(blds.items()):
            last = b.last_time
            if b.inferred:
                ref, need = b.last_active, self.gap_s
            elif b.end_event_time is not None:
                ref, need = max(b.end_event_time, last), self.grace_s
            else:
                # A test whose end event never came closes once its lane falls silent.
                ref, need = (last if b.samples else (b.start_event_time or wm)), 10 * self.gap_s
            if slow - ref > need or wm - ref > need + self.max_hold_s:
                self._close(key, tid)
        # Hand tests out in the lane's order: a test still open holds back later ones.
        ready = self.pending.get(key, [])
        if ready:
            first_open = min((b.samples[0].time if b.samples else
                              (b.start_event_time or math.inf) for b in blds.values()),
                             default=math.inf)
            ready.sort(key=lambda r: r.start)
            while ready and ready[0].start < first_open:
                out.append(ready.pop(0))
        return out

    def _close(self, key: tuple[str, str], tid: str) -> None:
        b = self.open[key].pop(tid)
        recent = self.closed.setdefault(key, [])
        recent.append(b.id)
        del recent[:-20]
        b.samples.sort(key=lambda s: s.time)
        rec = TestRecord(b.id, b.site, b.lane, b.method, b.vehicle, b.inferred, b.samples,
                         b.start_detail, b.end_detail, b.start_event_time, b.end_event_time)
        streams: dict[str, list[Sample]] = {}
        for smp in b.samples:
            streams.setdefault(smp.instrument, []).append(smp)
        rec.streams = streams
        site = self.sites.get(b.site)
        configured = site.sample_interval_s if site is not None else {}
        rec.intervals = {i: configured.get(i) or seen_interval(ss) for i, ss in streams.items()}
        rec.faults = self._health(b.site, b.lane, streams)
        rec.seconds = _seconds(b.samples, _faulty_values(rec.faults, streams))
        rec.event_origins = b.event_origins
        if not rec.method:
            rec.method = guess_method(rec.seconds)
        rec.phases_from_lane = bool(rec.seconds) and all(s.phase for s in rec.seconds)
        if not rec.phases_from_lane:
            infer_phases(rec.method, rec.seconds)
        self.pending.setdefault(key, []).append(rec)

    def _health(self, site: str, lane: str, streams: dict[str, list[Sample]]) -> list[Fault]:
        """Instrument faults of a test (:func:`ingest.detectors.health.assess`), with the
        sensor ceilings learned over the lane's earlier tests and this one."""
        faults: list[Fault] = []
        for instr, ss in streams.items():
            role = instr[len(lane) + 1:] if lane and instr.startswith(lane + ".") else instr
            key = f"{site}/{lane}/{role}/"
            for sig in CEILING_SIGNALS:
                if sig in ss[0].values or sig in ss[-1].values:
                    self.ceilings.observe(key + sig, [x.values[sig] for x in ss
                                                      if sig in x.values])
            faults += assess(site, instr, ss, ceilings=self.ceilings, stream_key=key)
            for t0, t1, ev, origin in self.fault_spans.get((site, instr), ()):
                if t0 <= ss[-1].time and ss[0].time <= t1:
                    inside = [x for x in ss if t0 <= x.time <= t1]
                    if inside:
                        faults.append(Fault(site, instr, ("*",), "flagged", inside[0].time,
                                            inside[-1].time, len(inside), {"event": ev},
                                            [o for o in (origin,) if o is not None]))
        return faults


def seen_interval(samples: Sequence[Sample]) -> float:
    """A stream's sampling interval as seen: the median spacing of its samples (s).

    Rounded to 0.1 s; a stream with fewer than two samples counts as 1 Hz. The median
    ignores the odd timer slip (a 2 s spacing followed by a 0 s one) and isolated losses.
    """
    if len(samples) < 2:
        return 1.0
    d = sorted(b.time - a.time for a, b in itertools.pairwise(samples))
    med = d[len(d) // 2]
    return max(0.1, round(med, 1))


def _faulty_values(faults: Sequence[Fault], streams: Mapping[str, Sequence[Sample]]
                   ) -> dict[int, set[str]]:
    """id(sample) -> the signals of it that a fault covers (``"*"``: all)."""
    out: dict[int, set[str]] = {}
    for f in faults:
        for smp in streams.get(f.instrument, ()):
            if f.start <= smp.time <= f.end:
                out.setdefault(id(smp), set()).update(f.signals)
    return out


def _seconds(samples: Sequence[Sample], drop: Mapping[int, set[str]] | None = None
             ) -> list[Second]:
    by: dict[int, Second] = {}
    for s in samples:
        k = second_of(s.time)
        sec = by.get(k)
        if sec is None:
            sec = by[k] = Second(k, "", {}, [], set())
        bad = drop.get(id(s)) if drop else None
        if bad is not None:
            # Values of a faulty instrument are not measurements: no rule judges them.
            if "*" not in bad:
                sec.values.update({n: v for n, v in s.values.items() if n not in bad
                                   and s.flags.get(n, "N") in VALID_FLAGS})
        elif s.flags:
            # Values the instrument marked invalid (calibration, fault...) are not judged.
            sec.values.update({n: v for n, v in s.values.items()
                               if s.flags.get(n, "N") in VALID_FLAGS})
        else:
            sec.values.update(s.values)
        if s.test is not None and s.test.phase and not sec.phase:
            sec.phase = s.test.phase
        if s.origin is not None:
            sec.origins.append(s.origin)
        sec.instruments.add(s.instrument)
    return [by[k] for k in sorted(by)]


def guess_method(seconds: Sequence[Second]) -> str:
    """Method of a test from its signals alone (see the module docstring)."""
    speeds = [s.values["speed_kmh"] for s in seconds if "speed_kmh" in s.values]
    has_k = any("k_m1" in s.values for s in seconds)
    has_gas = any("co_pct" in s.values for s in seconds)
    top = max(speeds, default=0.0)
    if has_k:
        return "lug_down" if top > 20.0 else "free_accel"
    if top > 10.0:
        moving = [v for v in speeds if v > 5.0]
        near = {m: sum(abs(v - c) <= 3.0 for v in moving) / len(moving)
                for m, c in vres.ASM_SPEED.items()}
        stops = sum(1 for a, b in itertools.pairwise(speeds) if a >= 1.0 > b)
        if len(seconds) >= 150 and stops >= 2:
            return "vmas"
        best = max(near, key=lambda m: near[m])
        if near[best] >= 0.6:
            return best
        return "vmas" if len(seconds) >= 150 else "unknown"
    return "idle" if has_gas else "unknown"


def infer_phases(method: str, seconds: Sequence[Second]) -> None:
    """Label unlabelled seconds the way the lane would have, from the signals.

    idle: the last 30 s of the run at 2500 ± 200 rpm are high_idle (earlier ones
    high_idle_settle), the last 30 s below 1100 rpm after it are idle; asm: the mode clock
    starts the second after the dyno first reaches the speed band (5 s settle, 10 s
    stable, fast to 25 s, full after); vmas: every second is trace; free_accel: every
    second is measure (the result takes the last three snaps anyway); lug_down: the last
    10 s are the 80 % point and seconds 25..15 before the end the 100 % point (GB 3847
    order).
    """
    n = len(seconds)
    labels = ["" for _ in range(n)]
    if method == "idle":
        rpm = [s.values.get("rpm", s.values.get("obd_rpm", 0.0)) for s in seconds]
        hi = [i for i in range(n) if 2300.0 <= rpm[i] <= 2700.0]
        last_hi = hi[-1] if hi else -1
        for i in range(n):
            labels[i] = "precondition"
        run = [i for i in hi if i > last_hi - 45]
        for j, i in enumerate(run):
            labels[i] = "high_idle" if j >= len(run) - 30 else "high_idle_settle"
        low = [i for i in range(last_hi + 1, n) if 0.0 < rpm[i] < 1100.0]
        for j, i in enumerate(low):
            labels[i] = "idle" if j >= len(low) - 30 else "idle_settle"
    elif method in vres.ASM_SPEED:
        target = vres.ASM_SPEED[method]
        band = vres.ASM_SPEED_TOLERANCE
        t0 = next((s.t for s in seconds if abs(s.values.get("speed_kmh", -99.0) - target)
                   <= band), None)
        for i, s in enumerate(seconds):
            m = s.t - t0 - 1 if t0 is not None else -1
            labels[i] = ("accel" if m < 0 else "settle" if m < 5 else "stable" if m < 15
                         else "fast" if m < 25 else "full")
    elif method == "vmas":
        labels = ["trace"] * n
    elif method == "free_accel":
        labels = ["measure"] * n
    elif method == "lug_down":
        t_end = seconds[-1].t if seconds else 0
        for i, s in enumerate(seconds):
            back = t_end - s.t
            labels[i] = ("measure_80" if back < 10 else "settle_80" if back < 15
                         else "measure_100" if back < 25 else "scan")
    for s, lab in zip(seconds, labels, strict=True):
        if not s.phase:
            s.phase = lab


# --------------------------------------------------------------------------- helpers


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson r from running sums (shifted by the first pair for numerical stability)."""
    n = len(xs)
    if n != len(ys):
        raise ValueError("pearson: sequences differ in length")
    if n < 3:
        return None
    x0, y0 = xs[0], ys[0]
    sx = sy = sxx = syy = sxy = 0.0
    for x, y in zip(xs, ys, strict=True):
        dx, dy = x - x0, y - y0
        sx += dx
        sy += dy
        sxx += dx * dx
        syy += dy * dy
        sxy += dx * dy
    vx = n * sxx - sx * sx
    vy = n * syy - sy * sy
    if vx <= 1e-12 * max(1.0, n * sxx) or vy <= 1e-12 * max(1.0, n * syy):
        return None
    return (n * sxy - sx * sy) / math.sqrt(vx * vy)


def pstdev(xs: Sequence[float], mu: float | None = None) -> float:
    """Population standard deviation in floating point (``statistics.pstdev`` computes it
    exactly with fractions, which costs more than the rest of a rule together)."""
    n = len(xs)
    if n < 2:
        return 0.0
    m = math.fsum(xs) / n if mu is None else mu
    return math.sqrt(math.fsum((x - m) * (x - m) for x in xs) / n)


def origins(seconds: Iterable[Second], limit: int = 500) -> dict[str, Any]:
    """Evidence: the (gateway, seq) of the frames involved, capped at ``limit``."""
    allo = [list(o) for s in seconds for o in s.origins]
    out: dict[str, Any] = {"origins": allo[:limit]}
    if len(allo) > limit:
        out["origins_total"] = len(allo)
    return out


class PerTestDetector(Detector):
    """A detector that judges completed tests (:meth:`on_test`); stateful per site/lane.

    Run on its own, it assembles tests itself. Inside the detection engine all per-test
    detectors share one :class:`TestHub`: each test is assembled (and its health and
    stream rates worked out) once, then handed to every rule.
    """

    kinds: ClassVar[tuple[str, ...]] = ("vehicle_inspection",)

    def __init__(self, sites: dict[str, SiteInfo], params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        self.assembler = TestAssembler(sites=sites)

    def on_sample(self, s: Sample) -> list[Alert]:
        return self._judge(self.assembler.on_sample(s))

    def on_event(self, e: SiteEvent) -> list[Alert]:
        return self._judge(self.assembler.on_event(e))

    def finish(self) -> list[Alert]:
        return self._judge(self.assembler.finish()) + self.on_finish()

    def _judge(self, tests: list[TestRecord]) -> list[Alert]:
        out: list[Alert] = []
        for t in tests:
            if t.seconds or t.start_detail or t.end_detail:
                out += self.on_test(t)
        return out

    def on_test(self, test: TestRecord) -> list[Alert]:
        return []

    def on_finish(self) -> list[Alert]:
        """Cross-test findings still pending at end of stream."""
        return []

    def test_alert(
        self, test: TestRecord, severity: Severity, summary_en: str, summary_zh: str,
        evidence: dict[str, Any], seconds: Sequence[Second] | None = None,
        instrument: str = "", *, check: str = "", thresholds: dict[str, Any] | None = None,
    ) -> Alert:
        """An alert about one test, citing its frames (all its seconds unless given).

        The alert carries one :class:`Finding` (``check``, the figures of ``evidence``,
        ``thresholds`` and the threshold-named keys of ``evidence``, the rule's parameters,
        the test's interval and the cited frames as runs of sequence numbers).
        """
        ev = {"test_id": test.id, "method": test.method, "vehicle": test.vehicle,
              "lane": test.lane, "inferred_test": test.inferred, **evidence}
        cited = test.seconds if seconds is None else seconds
        ev.update(origins(cited))
        if test.event_origins:
            ev["event_origins"] = [list(o) for o in test.event_origins]
        a = Alert(rule=self.rule, severity=severity, site=test.site,
                  instrument=instrument or _lane_instrument(test), start=test.start,
                  end=test.end, summary_en=summary_en, summary_zh=summary_zh, evidence=ev,
                  test_id=test.id, category=self.category)
        f = finding_from_evidence(a, self.p)
        if check:
            f.check = f.id = check
        if thresholds:
            f.thresholds.update(thresholds)
        f.values.pop("origins_total", None)
        f.values.pop("event_origins", None)
        f.origins = origin_runs([*(o for s in cited for o in s.origins), *test.event_origins])
        a.findings = [f]
        return a


class TestHub:
    """One test assembly shared by every per-test rule (the engine's vehicle path).

    Assembling a test — sorting its samples, merging instruments into seconds, inferring
    method and phases, judging instrument health — is most of the cost of a vehicle rule;
    done once here instead of once per rule, ten rules cost little more than one.
    """

    def __init__(self, detectors: Sequence[PerTestDetector],
                 sites: Mapping[str, SiteInfo] | None = None):
        self.detectors = list(detectors)
        self.assembler = TestAssembler(sites=sites)

    def on_sample(self, s: Sample) -> list[Alert]:
        tests = self.assembler.on_sample(s)
        return self._judge(tests) if tests else []

    def on_event(self, e: SiteEvent) -> list[Alert]:
        tests = self.assembler.on_event(e)
        return self._judge(tests) if tests else []

    def finish(self) -> list[Alert]:
        out = self._judge(self.assembler.finish())
        for d in self.detectors:
            out += d.on_finish()
        return out

    def _judge(self, tests: list[TestRecord]) -> list[Alert]:
        out: list[Alert] = []
        for t in tests:
            if t.seconds or t.start_detail or t.end_detail:
                for d in self.detectors:
                    out += d.on_test(t)
        return out


def _lane_instrument(test: TestRecord) -> str:
    return f"{test.lane}.lane" if test.lane else "lane"
