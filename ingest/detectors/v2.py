"""V2 — check-bypass switches or simulated engine signals in the lane software.

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors import segments
from ingest.detectors.base import Alert


@dataclass(slots=True)
class _OilRun:
    value: float | None = None
    seconds: int = 0
    tests: list[segments.TestRecord] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)


class SimulatedEngineSignalDetector(segments.PerTestDetector):
    """V2 — check-bypass switches or simulated engine signals in the lane software.

    Signature: a real oil temperature probe drifts and flickers at its resolution; a simulated
    one stays exactly constant, often across consecutive vehicles. A real tachometer and the
    car's OBD port read engine speed through different sensors, so their values differ in
    most seconds; copying one into the other makes them bit-identical.

    Rule (proposed in the shared falsification-patterns document):

    * oil temperature exactly constant (variance 0) for ``oil_constant_s`` (60) sampled seconds.
      The run is followed per lane across consecutive tests (a lane program that fakes the
      probe fakes it for every vehicle); every test that contributed to a run reaching the
      threshold is reported, once.
    * tachometer ``rpm`` identical to ``obd_rpm`` in at least ``rpm_identical_share`` (95 %) of
      the aligned seconds, over at least ``min_rpm_seconds`` (20) seconds of one test.
    """

    rule: ClassVar[str] = "V2"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "oil_constant_s": 60,
        "rpm_identical_share": 0.95,
        "min_rpm_seconds": 20,
    }

    def __init__(self, sites: Any, params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        self.runs: dict[tuple[str, str], _OilRun] = {}

    def on_test(self, test: segments.TestRecord) -> list[Alert]:
        return self._oil(test) + self._rpm(test)

    def _oil(self, test: segments.TestRecord) -> list[Alert]:
        run = self.runs.setdefault((test.site, test.lane), _OilRun())
        for s in test.series("oil_temp_c"):
            v = s.values["oil_temp_c"]
            if v == run.value:
                run.seconds += 1
            else:
                run.value, run.seconds, run.tests = v, 1, []
                run.reported = set()
            if not run.tests or run.tests[-1] is not test:
                run.tests.append(test)
        if run.value is None or run.seconds < self.p["oil_constant_s"]:
            return []
        out = []
        ids = [t.id for t in run.tests]
        for t in run.tests:
            if t.id in run.reported:
                continue
            run.reported.add(t.id)
            secs = t.series("oil_temp_c")
            const = [s for s in secs if s.values["oil_temp_c"] == run.value]
            sev: Any = "high" if run.seconds >= 2 * self.p["oil_constant_s"] else "medium"
            out.append(self.test_alert(
                t, sev,
                f"Engine oil temperature frozen at {run.value:.1f} °C for {run.seconds} s "
                f"(≥ {self.p['oil_constant_s']} s) across {len(ids)} test(s): simulated "
                f"sensor suspected",
                f"机油温度连续 {run.seconds} 秒恒定为 {run.value:.1f}°C（阈值 "
                f"{self.p['oil_constant_s']} 秒，涉及 {len(ids)} 次检测），"
                f"疑似使用模拟信号屏蔽检测",
                {"check": "oil_constant", "oil_temp_c": run.value,
                 "constant_seconds": run.seconds, "test_ids": ids,
                 "threshold_seconds": self.p["oil_constant_s"]},
                const))
        return out

    def _rpm(self, test: segments.TestRecord) -> list[Alert]:
        both = [s for s in test.seconds if "rpm" in s.values and "obd_rpm" in s.values]
        if len(both) < self.p["min_rpm_seconds"]:
            return []
        same = [s for s in both if s.values["rpm"] == s.values["obd_rpm"]]
        share = len(same) / len(both)
        if share < self.p["rpm_identical_share"]:
            return []
        return [self.test_alert(
            test, "high",
            f"Tachometer rpm bit-identical to OBD rpm in {share:.0%} of {len(both)} s "
            f"(≥ {self.p['rpm_identical_share']:.0%}): engine speed copied by software",
            f"转速计读数与 OBD 转速在 {len(both)} 秒中 {share:.0%} 完全相同（阈值 "
            f"{self.p['rpm_identical_share']:.0%}），疑似转速信号由检测软件复制或模拟",
            {"check": "rpm_copied", "identical_seconds": len(same), "aligned_seconds": len(both),
             "share": round(share, 4), "threshold_share": self.p["rpm_identical_share"]},
            same)]
