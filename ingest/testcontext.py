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
* every other sample of the same site and lane (lane = the instrument id's prefix before
  the last dot, ``L1.analyzer`` -> ``L1``, as the detectors define it) between the two
  carries a :class:`TestContext` with the phase the controller reported last.

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
    self._feed(self.lanes.annotate(f, frame_records(f)))
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

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


def lane_of(instrument: str) -> str:
    """Same convention as ingest.detectors.segments.lane_of for records without context."""
    head, dot, _ = instrument.rpartition(".")
    return head if dot else ""


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

    def __init__(self) -> None:
        #: (site, controller instrument) -> test under way
        self.open: dict[tuple[str, str], _OpenTest] = {}
        #: (site, lane) -> controller instrument serving that lane
        self._controller: dict[tuple[str, str], str] = {}
        self.tests_started = 0
        self.tests_ended = 0

    def annotate(self, f: Frame, records: list[Sample | SiteEvent]) -> list[Sample | SiteEvent]:
        """The frame's records with lane context applied and lane events inserted, in
        time order. Frames without controller readings cost one pass over the readings."""
        snaps = _snapshots(f.iter_readings())
        if not snaps and not self.open:
            return records
        origin = (f.gateway_id, f.seq)
        out: list[Sample | SiteEvent] = []
        i = 0
        for r in records:
            while i < len(snaps) and snaps[i].time <= r.time:
                out += self._apply(f.site, snaps[i], origin)
                i += 1
            if isinstance(r, Sample):
                self._tag(r)
            out.append(r)
        for s in snaps[i:]:
            out += self._apply(f.site, s, origin)
        return out

    # -- internals ------------------------------------------------------------------
    def _tag(self, s: Sample) -> None:
        if s.test is not None:
            return
        lane = lane_of(s.instrument)
        ctl = self._controller.get((s.site, lane))
        if ctl is None:
            return
        t = self.open.get((s.site, ctl))
        if t is None:
            return
        c = t.ctx
        s.test = TestContext(c.id, c.method, c.vehicle, c.lane, c.phase)
        odo = s.values.get("obd_odometer_km")
        if t.odometer_km is None and odo is not None and odo > 0 \
                and s.flags.get("obd_odometer_km", "N") == "N":
            t.odometer_km = odo

    def _apply(self, site: str, snap: _Snapshot, origin: tuple[str, int]) -> list[SiteEvent]:
        lane = lane_of(snap.instrument)
        key = (site, snap.instrument)
        self._controller[(site, lane)] = snap.instrument
        state = snap.num("lane_test_state")
        number = snap.num("lane_test_id")
        cur = self.open.get(key)
        out: list[SiteEvent] = []
        if state is None:
            return out
        method = lc.METHOD_BY_CODE.get(snap.num("lane_method") or 0, "")
        tid = lc.test_id(site, lane, number) if number else ""
        if state == lc.STATE_TESTING and tid:
            if cur is not None and cur.ctx.id != tid:
                out.append(self._end(site, snap, cur, origin, result="", aborted=True))
                cur = None
            if cur is None:
                detail: dict[str, Any] = {"test_id": tid, "method": method, "lane": lane,
                                          "number": number, "source": "lane_controller"}
                for sig, name in _TEXT.items():
                    v = snap.values.get(sig)
                    if isinstance(v, str):
                        detail[name] = lc.decode_text(v) if sig == "lane_vehicle" else v
                detail.setdefault("vehicle", "")
                cur = self.open[key] = _OpenTest(
                    TestContext(tid, method, str(detail["vehicle"]), lane), detail)
                self.tests_started += 1
                out.append(SiteEvent(snap.time, site, snap.instrument, "test_start",
                                     {**detail, "result": ""}, origin))
            cur.ctx.phase = lc.phase_name(cur.ctx.method, snap.num("lane_phase") or 0)
        elif cur is not None and state != lc.STATE_TESTING:
            finished = state == lc.STATE_FINISHED and tid == cur.ctx.id
            result = lc.RESULT_BY_CODE.get(snap.num("lane_result") or 0, "") if finished else ""
            out.append(self._end(site, snap, cur, origin, result=result, aborted=not finished))
        return out

    def _end(self, site: str, snap: _Snapshot, cur: _OpenTest, origin: tuple[str, int], *,
             result: str, aborted: bool) -> SiteEvent:
        self.open.pop((site, snap.instrument), None)
        self.tests_ended += 1
        detail = {**cur.detail, "result": result, "aborted": aborted}
        if cur.odometer_km is not None:
            detail["odometer_km"] = cur.odometer_km
        return SiteEvent(snap.time, site, snap.instrument, "test_end", detail, origin)


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
