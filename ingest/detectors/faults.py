"""I-HEALTH — instrument faults: dead, disconnected, saturated or impossible readings.

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md); the checks themselves live in
ingest/detectors/health.py, which every falsification rule consults before accusing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors import segments
from ingest.detectors.base import Alert, Category, Severity
from ingest.detectors.common import ALL_KINDS, ENV_KINDS
from ingest.detectors.health import Fault
from stationseal.records import Sample, SiteEvent


@dataclass(slots=True)
class _Run:
    """Consecutive tests of a lane in which one instrument showed one kind of fault."""

    tests: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    count: int = 0
    last_end: float = 0.0


class InstrumentFaultDetector(segments.PerTestDetector):
    """I-HEALTH — instrument faults: dead, disconnected, saturated or impossible readings.

    Signature: an instrument that stopped measuring produces data no honest measurement
    does — and no falsification either: an analyzer whose pump stopped reads 0 % O2 and
    0 % CO2 (neither air nor exhaust), a weather station that lost its cable reads
    0 °C / 0 % / 0 kPa, an oil probe beyond its range reads its full-scale value car after
    car. The health layer (ingest/detectors/health.py) finds such runs — *flagged* (HJ 212
    flag D/B or a gateway fault event), *impossible* (outside the physical range),
    *all_zero*, *zero* (a quantity that is never 0), *no_gas*, *saturated* (a constant at
    a learned sensor ceiling or outside the plausible range) — and every falsification
    rule leaves those values out. This rule reports them, as category ``fault``: a repair
    for the supervisor, not an accusation.

    Vehicle lanes: per test, the faults of each instrument; consecutive tests of a lane
    with the same fault of the same instrument update one alert. Other sites: fault runs
    of at least ``min_env_fault_s`` (10 min) from the streaming health book, except the
    instrument's own D/B flags (E6 judges flags).

    Severity: low for a fault in fewer than ``medium_tests`` (3) consecutive tests (or
    shorter than ``medium_env_fault_h``, 6 h); medium beyond (tests scored, or hours
    reported, with a broken instrument). Never high: a fault is not evidence of fraud.
    """

    rule: ClassVar[str] = "I-HEALTH"
    category: ClassVar[Category] = "fault"
    kinds: ClassVar[tuple[str, ...]] = ALL_KINDS
    uses_health: ClassVar[bool] = True
    #: Vehicle tests are judged from their assembled samples; the book serves the others.
    health_kinds: ClassVar[tuple[str, ...] | None] = ENV_KINDS
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "medium_tests": 3,
        "min_env_fault_s": 600,
        "medium_env_fault_h": 6.0,
    }

    def __init__(self, sites: Any, params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        self.runs: dict[tuple[str, str, str, str], _Run] = {}

    # vehicle lanes ------------------------------------------------------------------------

    def _vehicle(self, site: str) -> bool:
        info = self.sites.get(site)
        return info is None or info.kind == "vehicle_inspection"

    def on_sample(self, s: Sample) -> list[Alert]:
        if self._vehicle(s.site):
            return super().on_sample(s)
        self.observe_health(s)
        return self._env()

    def on_event(self, e: SiteEvent) -> list[Alert]:
        if self._vehicle(e.site):
            return super().on_event(e)
        self.observe_health(e)
        return self._env()

    def on_test(self, test: segments.TestRecord) -> list[Alert]:
        out: list[Alert] = []
        by: dict[tuple[str, str], list[Fault]] = {}
        for f in test.faults:
            by.setdefault((f.instrument, f.kind), []).append(f)
        for (instr, kind), faults in sorted(by.items()):
            key = (test.site, test.lane, instr, kind)
            run = self.runs.get(key)
            if run is None or run.last_end < test.start - 3600.0:
                run = self.runs[key] = _Run()
            run.tests.append(test.id)
            run.count += 1
            run.last_end = test.end
            sev: Severity = "medium" if run.count >= self.p["medium_tests"] else "low"
            out.append(self._alert(test.site, instr, kind, faults, sev, test, run))
        return out

    def _alert(self, site: str, instr: str, kind: str, faults: list[Fault], sev: Severity,
               test: segments.TestRecord | None, run: _Run | None) -> Alert:
        first = faults[0]
        en, zh = first.describe()
        signals = sorted({s for f in faults for s in f.signals})
        samples = sum(f.samples for f in faults)
        if run is not None and test is not None:
            en = f"Instrument fault, not judged as falsification: {en}, test {test.id}" + (
                f" ({run.count} consecutive tests)" if run.count > 1 else "")
            zh = f"仪器故障（不作为造假判定）：{zh}，检测 {test.id}" + (
                f"（连续 {run.count} 次检测）" if run.count > 1 else "")
        else:
            en = f"Instrument fault, not judged as falsification: {en}"
            zh = f"仪器故障（不作为造假判定）：{zh}"
        findings = [f.to_finding(sev, self.rule, test.id if test else None, self.p)
                    for f in faults]
        for fd in findings:
            fd.id = f"{kind}|{instr}"
            if run is not None:
                fd.values["tests"] = list(run.tests)
                fd.values["consecutive_tests"] = run.count
        ev: dict[str, Any] = {"finding": kind, "instrument": instr, "signals": signals,
                              "samples": samples}
        if run is not None:
            ev["test_ids"] = list(run.tests)
            ev["consecutive_tests"] = run.count
        return Alert(rule=self.rule, severity=sev, site=site, instrument=instr,
                     start=min(f.start for f in faults), end=max(f.end for f in faults),
                     summary_en=en, summary_zh=zh, evidence=ev,
                     test_id=test.id if test else None,
                     key=f"I-HEALTH|{site}|{instr}|{kind}", findings=findings,
                     category="fault")

    # other sites ----------------------------------------------------------------------------

    def _env(self) -> list[Alert]:
        book = self.health
        if book is None or not book.new:
            return []
        out: list[Alert] = []
        while book.new:
            f = book.new.popleft()
            if f.kind == "flagged" and f.signals != ("*",):
                continue
            if self._vehicle(f.site) or f.end - f.start < self.p["min_env_fault_s"]:
                continue
            hours = (f.end - f.start) / 3600.0
            sev: Severity = "medium" if hours >= self.p["medium_env_fault_h"] else "low"
            out.append(self._alert(f.site, f.instrument, f.kind, [f], sev, None, None))
        return out

    def on_finish(self) -> list[Alert]:
        if self.health is not None and self.own_health:
            self.health.finish()
        return self._env()
