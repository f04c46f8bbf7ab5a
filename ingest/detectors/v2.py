"""V2 — check-bypass switches or simulated engine signals in the lane software.

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md).
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors import segments
from ingest.detectors.base import Alert


@dataclass(slots=True)
class _OilRun:
    value: float | None = None
    seconds: float = 0.0
    tests: list[segments.TestRecord] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)
    reported_high: set[str] = field(default_factory=set)
    signatures: dict[str, int] = field(default_factory=dict)


class SimulatedEngineSignalDetector(segments.PerTestDetector):
    """V2 — check-bypass switches or simulated engine signals in the lane software.

    Signature: a real oil temperature probe drifts and flickers at its resolution; a simulated
    one stays exactly constant, often across consecutive vehicles. A real tachometer and the
    car's OBD port read engine speed through different sensors, so their values differ in
    most seconds; copying one into the other makes them bit-identical.

    Rule (proposed in the shared falsification-patterns document):

    * oil temperature exactly constant (variance 0) for ``oil_constant_s`` (60) sampled
      seconds, across at least ``min_vehicles`` (3) different vehicles. The run is
      followed per lane across consecutive tests (a lane program that fakes the probe
      fakes it for every vehicle); every test of a run reaching the thresholds is reported,
      once. Vehicles count once per distinct recording (a replayed recording under other
      plates carries its oil temperature along: V6). One car alone proves little:
      a warm engine's oil read at 0.1 or 1 °C resolution holds one value for minutes;
      different cars do not share one to the tenth of a degree. Values the health layer
      found faulty are not judged: a probe pinned at its full scale (a constant outside
      the plausible 10–120 °C, or at a learned sensor ceiling), or reading exactly 0, is
      an I-HEALTH fault, not V2.
    * tachometer ``rpm`` identical to ``obd_rpm`` in at least ``rpm_identical_share``
      (95 %) of the OBD seconds (one miss always tolerated) — equal to the tachometer
      reading of the same second or of the one before or after (instruments polled in
      turn land a second apart at times) —
      over at least ``min_rpm_seconds`` (20) seconds of one test (OBD readings times the
      OBD stream's interval) in which both read a running engine (above ``min_rpm``,
      300 /min) and the engine
      speed varied (at least ``min_distinct_rpm``, 5, distinct values): two zeros from
      dead sensors, or an idle held at one value, are not a copy. (A lane without its own
      tachometer that is configured to take engine speed from OBD shows the same
      signature; its configuration is the explanation to check.)

    Severity (evidence required):

    * rpm copied: high — two independent sensors cannot agree to the last digit on a
      varying engine speed second after second (physical impossibility);
    * oil constant: medium at the thresholds (a stuck but credible probe is the innocent
      explanation); high when the run covers twice ``oil_constant_s`` and twice
      ``min_vehicles``, or the same tests also show rpm copied (a second signal).
    """

    rule: ClassVar[str] = "V2"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "oil_constant_s": 60,
        "min_vehicles": 3,
        "rpm_identical_share": 0.95,
        "min_rpm_seconds": 20,
        "min_rpm": 300.0,
        "min_distinct_rpm": 5,
    }

    def __init__(self, sites: Any, params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        self.runs: dict[tuple[str, str], _OilRun] = {}
        # (site, lane) -> ids of the lane's latest tests with rpm copied (bounded)
        self.copied: dict[tuple[str, str], deque[str]] = defaultdict(lambda: deque(maxlen=200))

    def on_test(self, test: segments.TestRecord) -> list[Alert]:
        rpm = self._rpm(test)
        if rpm:
            self.copied[(test.site, test.lane)].append(test.id)
        return self._oil(test) + rpm

    def _oil(self, test: segments.TestRecord) -> list[Alert]:
        run = self.runs.setdefault((test.site, test.lane), _OilRun())
        # Each reading stands for its stream's interval (a probe read every 2 s).
        dt = next((test.intervals.get(i, 1.0) for i, ss in test.streams.items()
                   if "oil_temp_c" in ss[0].values or "oil_temp_c" in ss[-1].values), 1.0)
        slim: segments.TestRecord | None = None
        for s in test.series("oil_temp_c"):
            v = s.values["oil_temp_c"]
            if v == run.value:
                run.seconds += dt
            else:
                run.value, run.seconds, run.tests = v, dt, []
                run.reported, run.reported_high = set(), set()
                run.signatures = {}
            if not run.tests or run.tests[-1].id != test.id:
                if slim is None:
                    slim = test.slim("oil_temp_c")
                run.tests.append(slim)
        p = self.p
        # Different vehicles with different recordings: the same recording under several
        # plates (a replay, V6) carries its oil temperature along and is not counted twice.
        run.signatures.setdefault(test.id, _signature(test))
        distinct: dict[int, str] = {}
        for t in run.tests:
            distinct.setdefault(run.signatures.get(t.id, hash(t.id)), t.vin or t.vehicle or t.id)
        vehicles = set(distinct.values())
        if run.value is None or run.seconds < p["oil_constant_s"] \
                or len(vehicles) < p["min_vehicles"]:
            return []
        out = []
        ids = [t.id for t in run.tests]
        copied = set(self.copied[(test.site, test.lane)]) & set(ids)
        strong = (run.seconds >= 2 * p["oil_constant_s"]
                  and len(vehicles) >= 2 * p["min_vehicles"]) or bool(copied)
        for t in run.tests:
            if t.id in run.reported and (not strong or t.id in run.reported_high):
                continue
            run.reported.add(t.id)
            if strong:
                run.reported_high.add(t.id)  # escalated: earlier tests are re-emitted
            secs = t.series("oil_temp_c")
            const = [s for s in secs if s.values["oil_temp_c"] == run.value]
            sev: Any = "high" if strong else "medium"
            out.append(self.test_alert(
                t, sev,
                f"Engine oil temperature frozen at {run.value:.1f} °C for {run.seconds:.0f} s "
                f"(≥ {self.p['oil_constant_s']} s) across {len(ids)} test(s): simulated "
                f"sensor suspected",
                f"机油温度连续 {run.seconds:.0f} 秒恒定为 {run.value:.1f}°C（阈值 "
                f"{self.p['oil_constant_s']} 秒，涉及 {len(ids)} 次检测），"
                f"疑似使用模拟信号屏蔽检测",
                {"check": "oil_constant", "oil_temp_c": run.value,
                 "constant_seconds": round(run.seconds, 1), "test_ids": ids,
                 "vehicles": len(vehicles),
                 "rpm_copied_tests": sorted(copied),
                 "threshold_seconds": p["oil_constant_s"],
                 "threshold_vehicles": p["min_vehicles"]},
                const, check="oil_constant"))
        return out

    def _rpm(self, test: segments.TestRecord) -> list[Alert]:
        lo = self.p["min_rpm"]
        both = [s for s in test.seconds if s.values.get("rpm", 0.0) > lo
                and s.values.get("obd_rpm", 0.0) > lo]
        # Seconds stand for the OBD stream's interval (a port read every 2 s).
        dt = next((test.intervals.get(i, 1.0) for i, ss in test.streams.items()
                   if "obd_rpm" in ss[0].values or "obd_rpm" in ss[-1].values), 1.0)
        if len(both) * max(1.0, dt) < self.p["min_rpm_seconds"] or \
                len({s.values["obd_rpm"] for s in both}) < self.p["min_distinct_rpm"]:
            return []
        tach = {s.t: s.values["rpm"] for s in test.seconds if "rpm" in s.values}
        same = [s for s in both if s.values["obd_rpm"] in
                (tach.get(s.t - 1), tach.get(s.t), tach.get(s.t + 1))]
        share = len(same) / len(both)
        # A short test may miss one second to a glitch: one miss is always tolerated.
        if share < self.p["rpm_identical_share"] and len(both) - len(same) > 1:
            return []
        return [self.test_alert(
            test, "high",
            f"Tachometer rpm bit-identical to OBD rpm in {share:.0%} of {len(both)} s "
            f"(≥ {self.p['rpm_identical_share']:.0%}): engine speed copied by software",
            f"转速计读数与 OBD 转速在 {len(both)} 秒中 {share:.0%} 完全相同（阈值 "
            f"{self.p['rpm_identical_share']:.0%}），疑似转速信号由检测软件复制或模拟",
            {"check": "rpm_copied", "identical_seconds": len(same), "aligned_seconds": len(both),
             "share": round(share, 4), "threshold_share": self.p["rpm_identical_share"],
             "distinct_rpm": len({s.values["obd_rpm"] for s in same}),
             "threshold_min_rpm": lo},
            same, check="rpm_copied")]


def _signature(test: segments.TestRecord) -> int:
    """A recording's fingerprint: its engine-speed series (a replay repeats it)."""
    return hash(tuple((s.values.get("rpm"), s.values.get("obd_rpm")) for s in test.seconds))
