"""Lane controller readings -> test context and ``test_start``/``test_end`` events.

A lane controller (profile ``lane_controller``, codes in stationseal/lanecodes.py) is read
by the gateway like any instrument, so which test, vehicle and phase a second belongs to
arrives signed, as numbers and register text. Detectors reason on tests
(ingest/detectors/segments.py): they want ``Sample.test`` and the lane's
``test_start``/``test_end`` events, the form simulated and imported lane records have.
:class:`LaneContexts` makes that translation on verified frames, in stream order:

* a state change to *testing* (or a new test number while testing) opens a test: a
  ``test_start`` event at the time of that controller reading, with the test's identity
  (``test_id``, ``method``, ``vehicle``, ``lane``, ``vin``, ``calid``, ``cvn``,
  ``model_group``, ``number``);
* *finished* / *aborted* / *idle* closes it: ``test_end`` with ``result`` (pass/fail, ""
  when aborted), ``aborted`` and the first OBD odometer reading seen during the test;
  for ``AFTER_S`` seconds in which the controller goes on naming that test as finished
  (aborted), the lane's samples carry its context with the phase ``finished``
  (``aborted``) — what the lane says about those seconds, and a phase no method scores
  (the probe may already be out); later seconds are between tests, without context;
* every other sample of the same site and lane (lane = the instrument id's prefix before
  the last dot, ``L1.analyzer`` -> ``L1``, as the detectors define it) carries a
  :class:`TestContext` with the phase the controller reported *for the same second*
  (UTC second, aligned as in ingest/detectors/segments.py). A gateway polls its
  instruments in turn, so the controller's reading of a second may come after the
  analyzer's; samples of a lane with a controller are therefore held (at most ``hold_s``
  seconds of stream time, for a controller that stopped answering) until the controller's
  reading of their second has arrived, and released in time order with the lane events.

Events are derived, not signed: their ``origin`` cites the frame whose controller reading
produced them, and their detail says ``"source": "lane_controller"``, so an auditor can
re-derive them from the signed readings.

State is kept per (site, lane controller) in memory. After an ingest restart in the middle
of a test the next controller reading opens the test again (a second ``test_start`` for
the same id, which the test assembler merges); nothing is lost, the test's first seconds
before the restart are simply not re-tagged.

Wiring (ingest/pipeline.py, where verified frames become detector records)::

    self.lanes = LaneContexts()
    ...
    self._feed(self.lanes.annotate(f, frame_records(f)))   # per accepted frame
    ...
    self._feed(self.lanes.flush())                          # at shutdown, before finish()
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ingest.detectors.segments import lane_of, second_of
from stationseal import lanecodes as lc
from stationseal.frame import Frame
from stationseal.records import Reading, Sample, SiteEvent, TestContext

#: Signals of the lane controller profile.
LANE_SIGNALS: frozenset[str] = frozenset({
    "lane_test_state", "lane_test_id", "lane_method", "lane_phase", "lane_result",
    "lane_vehicle", "lane_vin", "lane_calid", "lane_cvn", "lane_model",
})
_TEXT = {"lane_vehicle": "vehicle", "lane_vin": "vin", "lane_calid": "calid",
         "lane_cvn": "cvn", "lane_model": "model_group"}


#: Longest a sample waits for its lane controller's reading (seconds of stream time).
HOLD_S = 3.0
#: Seconds of controller states kept per lane.
KEEP_SECONDS = 120
#: Seconds after a test's end that carry its context with the phase "finished"/"aborted"
#: (car and probe typically still in place while the lane shows the verdict).
AFTER_S = 10


@dataclass(slots=True)
class _Snapshot:
    """One poll of a lane controller: every register it answered at that instant."""

    time: float
    instrument: str
    values: dict[str, Any] = field(default_factory=dict)

    def num(self, signal: str) -> int | None:
        v = self.values.get(signal)
        if isinstance(v, bool) or not isinstance(v, int | float):
            return None
        return int(v)


@dataclass(slots=True)
class _OpenTest:
    ctx: TestContext
    detail: dict[str, Any]
    odometer_km: float | None = None


class LaneContexts:
    """Streaming translator; one instance per ingest worker (see the module docstring)."""

    def __init__(self, hold_s: float = HOLD_S) -> None:
        self.hold_s = hold_s
        #: (site, controller instrument) -> test under way
        self.open: dict[tuple[str, str], _OpenTest] = {}
        self._lanes: dict[tuple[str, str], _Lane] = {}
        #: records waiting for their lane's controller reading of the same second
        self._held: list[tuple[float, int, Sample | SiteEvent]] = []
        self._tiebreak = 0
        self._newest: dict[str, float] = {}
        self.tests_started = 0
        self.tests_ended = 0

    def annotate(self, f: Frame, records: list[Sample | SiteEvent]) -> list[Sample | SiteEvent]:
        """Records ready for the detectors, in time order: this frame's records and earlier
        held ones, with lane context applied and lane events inserted. A sample of a lane
        with a controller waits (at most ``hold_s`` of stream time) until the controller's
        reading of the same second has arrived, so phase boundaries fall on the right
        second whatever order the gateway polled its instruments in."""
        snaps = _snapshots(f.readings)
        if not snaps and not self._held and not any(k[0] == f.site for k in self._lanes):
            return records  # a site without lane controllers: nothing to do
        origin = (f.gateway_id, f.seq)
        for snap in snaps:
            for ev in self._apply(f.site, snap, origin):
                self._hold(ev)
        newest = self._newest.get(f.site, -math.inf)
        for r in records:
            newest = max(newest, r.time)
            self._hold(r)
        self._newest[f.site] = newest
        return self._release(f.site, newest - self.hold_s)

    def flush(self) -> list[Sample | SiteEvent]:
        """Everything still held (end of stream or shutdown)."""
        out = [self._tag(r) for _, _, r in sorted(self._held)]
        self._held.clear()
        return out

    # -- internals ------------------------------------------------------------------
    def _hold(self, r: Sample | SiteEvent) -> None:
        self._tiebreak += 1
        heapq.heappush(self._held, (r.time, self._tiebreak, r))

    def _ready(self, r: Sample | SiteEvent, site: str, timeout: float) -> bool:
        if r.site != site:
            return False
        lane = self._lanes.get((site, lane_of(r.instrument)))
        if lane is None or r.time <= timeout or isinstance(r, SiteEvent):
            return True
        return lane.last_second >= second_of(r.time)

    def _release(self, site: str, timeout: float) -> list[Sample | SiteEvent]:
        out: list[Sample | SiteEvent] = []
        keep: list[tuple[float, int, Sample | SiteEvent]] = []
        # in time order, stopping a lane at its first record that must still wait, so a
        # lane's records leave in order
        blocked: set[str] = set()
        while self._held:
            item = heapq.heappop(self._held)
            r = item[2]
            lane = lane_of(r.instrument)
            if r.site != site or lane in blocked or not self._ready(r, site, timeout):
                if r.site == site:
                    blocked.add(lane)
                keep.append(item)
                continue
            out.append(self._tag(r))
        for item in keep:
            heapq.heappush(self._held, item)
        return out

    def _tag(self, r: Sample | SiteEvent) -> Sample | SiteEvent:
        if not isinstance(r, Sample) or r.test is not None:
            return r
        lane = self._lanes.get((r.site, lane_of(r.instrument)))
        if lane is None:
            return r
        state = lane.state_at(second_of(r.time))
        if state is None:
            return r
        r.test = TestContext(state.id, state.method, state.vehicle, state.lane, state.phase)
        t = self.open.get((r.site, lane.controller))
        odo = r.values.get("obd_odometer_km")
        if t is not None and t.ctx.id == state.id and t.odometer_km is None \
                and odo is not None and odo > 0 and r.flags.get("obd_odometer_km", "N") == "N":
            t.odometer_km = odo
        return r

    def _apply(self, site: str, snap: _Snapshot, origin: tuple[str, int]) -> list[SiteEvent]:
        lane_name = lane_of(snap.instrument)
        key = (site, snap.instrument)
        lane = self._lanes.get((site, lane_name))
        if lane is None:
            lane = self._lanes[(site, lane_name)] = _Lane(snap.instrument)
        state = snap.num("lane_test_state")
        number = snap.num("lane_test_id")
        cur = self.open.get(key)
        out: list[SiteEvent] = []
        if state is None:
            return out
        method = lc.METHOD_BY_CODE.get(snap.num("lane_method") or 0, "")
        tid = lc.test_id(site, lane_name, number) if number else ""
        if state == lc.STATE_TESTING and tid:
            if cur is not None and cur.ctx.id != tid:
                out.append(self._end(site, snap, cur, origin, result="", aborted=True))
                cur = None
            if cur is None:
                detail: dict[str, Any] = {"test_id": tid, "method": method, "lane": lane_name,
                                          "number": number, "source": "lane_controller"}
                for sig, name in _TEXT.items():
                    v = snap.values.get(sig)
                    if isinstance(v, str):
                        detail[name] = lc.decode_text(v) if sig == "lane_vehicle" else v
                detail.setdefault("vehicle", "")
                cur = self.open[key] = _OpenTest(
                    TestContext(tid, method, str(detail["vehicle"]), lane_name), detail)
                self.tests_started += 1
                out.append(SiteEvent(snap.time, site, snap.instrument, "test_start",
                                     {**detail, "result": ""}, origin))
            cur.ctx.phase = lc.phase_name(cur.ctx.method, snap.num("lane_phase") or 0)
            lane.record(second_of(snap.time), replace(cur.ctx))
        else:
            if cur is not None:
                finished = state == lc.STATE_FINISHED and tid == cur.ctx.id
                result = lc.RESULT_BY_CODE.get(snap.num("lane_result") or 0, "") \
                    if finished else ""
                out.append(self._end(site, snap, cur, origin, result=result,
                                     aborted=not finished))
                lane.last = replace(cur.ctx, phase="")
                lane.last_end = second_of(snap.time)
            # After a test the controller still names it, as finished or aborted: the
            # seconds right after it say so (a phase no method scores) instead of carrying
            # no context; later ones are between tests.
            after = lane.last if lane.last is not None and lane.last.id == tid \
                and second_of(snap.time) - lane.last_end < AFTER_S else None
            label = lc.STATES.get(state, "") if state != lc.STATE_IDLE else ""
            lane.record(second_of(snap.time),
                        replace(after, phase=label) if after is not None and label else None)
        return out

    def _end(self, site: str, snap: _Snapshot, cur: _OpenTest, origin: tuple[str, int], *,
             result: str, aborted: bool) -> SiteEvent:
        self.open.pop((site, snap.instrument), None)
        self.tests_ended += 1
        detail = {**cur.detail, "result": result, "aborted": aborted}
        if cur.odometer_km is not None:
            detail["odometer_km"] = cur.odometer_km
        return SiteEvent(snap.time, site, snap.instrument, "test_end", detail, origin)


@dataclass(slots=True)
class _Lane:
    """A lane's recent controller states by UTC second (None: no test under way)."""

    controller: str
    by_second: dict[int, TestContext | None] = field(default_factory=dict)
    last_second: int = -(2**62)
    #: the lane's last test, while the controller still shows it finished or aborted
    last: TestContext | None = None
    last_end: int = 0

    def record(self, sec: int, ctx: TestContext | None) -> None:
        self.by_second.setdefault(sec, ctx)  # the first reading of a second decides it
        if sec > self.last_second:
            self.last_second = sec
        if len(self.by_second) > 4 * KEEP_SECONDS:
            for old in [s for s in self.by_second if s < self.last_second - KEEP_SECONDS]:
                del self.by_second[old]

    def state_at(self, sec: int) -> TestContext | None:
        if sec in self.by_second:
            return self.by_second[sec]
        earlier = [s for s in self.by_second if s < sec]
        return self.by_second[max(earlier)] if earlier else None


def _snapshots(readings: Iterable[Reading]) -> list[_Snapshot]:
    by: dict[tuple[str, float], _Snapshot] = {}
    for r in readings:
        if r.signal not in LANE_SIGNALS:
            continue
        key = (r.instrument, r.time)
        s = by.get(key)
        if s is None:
            s = by[key] = _Snapshot(r.time, r.instrument)
        if r.quality == "N":
            s.values[r.signal] = r.value
    return sorted(by.values(), key=lambda s: s.time)
