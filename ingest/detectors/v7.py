"""V7 — shortened or spliced tests.

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

from ingest.detectors import segments
from ingest.detectors.base import Alert, Severity
from ingest.detectors.common import SEVERITY_RANK
from stationseal import vehicle_results as vres


@dataclass(slots=True)
class _Gap:
    instrument: str
    a: float  # last sample before the gap
    b: float  # first sample after it
    interval: float

    @property
    def missing(self) -> float:
        return self.b - self.a - self.interval


class ShortenedTestDetector(segments.PerTestDetector):
    """V7 — shortened or spliced tests.

    Signature: seconds cut out of the process data (a gap in the time stamps of every
    instrument at once), or a scored phase shorter than the method prescribes and
    re-timed so that no gap shows (a VMAS trace of 170 s, a 20-second idle phase).

    Every instrument stream is judged at its own rate: its interval is the site's
    configured ``sample_interval_s`` for that instrument, else the median spacing of its
    samples (a weather station reporting every 5 s is complete with one sample per 5 s).

    * **gap**: two consecutive samples of a stream (≥ ``min_stream_samples``, 10) further
      apart than its interval + ``timer_slip_s`` (1 s: lane software whose timer slips a
      second — a 2 s spacing, then two samples in one second — has not cut anything) and
      leaving at least ``min_missing_s`` (2) seconds unsampled beyond the interval.
      A splice cuts every instrument at once, a lost connection one: a gap is
      *corroborated* when at least two streams show it, their gaps share at least
      ``min_missing_s`` of time, and no other instrument reported inside it.
    * **phase shortfall** (only when the lane labelled the phases itself, with the phase
      names of the method): a scored phase lasts less than ``expected_phase_seconds``
      (GB 18285 / GB 3847: high idle and idle 30 s, ASM fast mode 10 s, VMAS trace 195 s,
      lug-down points 10 s each) by more than ``phase_tolerance_s`` (1 s). Its duration is
      the span of its seconds, so a slower stream does not shorten it. A test with a lane
      result but without a scored phase at all is also reported. Phases the engine had
      to infer (no labels, e.g. a free-acceleration test of a lane that sends none) are
      not judged against durations: the inference itself decides them.
    * an inferred test (no lane context) guessed as VMAS must last ``vmas_seconds`` (195)
      less ``inferred_slack_s`` (5 s, how far an inferred start or end may be off) and
      ``phase_tolerance_s``.

    Severity (evidence required):

    * high: a corroborated gap touching a scored phase with ≥ ``high_missing_s`` (4) s
      missing, or a lane-labelled scored phase short by ≥ ``high_shortfall_s`` (5) s;
    * medium: any other corroborated gap, a gap of ≥ ``high_missing_s`` s in a test
      recorded by a single instrument, a smaller phase shortfall, a missing scored
      phase, an inferred VMAS test too short;
    * low: a gap that other instruments did not share (a lost connection, a poll
      timeout: context for I-DROP/I-HEALTH rather than evidence of a splice).
    """

    rule: ClassVar[str] = "V7"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "timer_slip_s": 1.0,
        "min_missing_s": 2.0,
        "high_missing_s": 4.0,
        "min_stream_samples": 10,
        "expected_phase_seconds": {m: dict(d) for m, d in
                                   vres.EXPECTED_PHASE_SECONDS.items() if m != "free_accel"},
        "phase_tolerance_s": 1,
        "high_shortfall_s": 5,
        "vmas_seconds": 195,
        "inferred_slack_s": 5,
    }

    def on_test(self, test: segments.TestRecord) -> list[Alert]:
        if not test.seconds:
            return []
        found: list[tuple[Severity, dict[str, Any], str, str]] = []
        found += self._gaps(test)
        found += self._phases(test)
        if not found:
            return []
        sev: Severity = max((f[0] for f in found), key=SEVERITY_RANK.__getitem__)
        found.sort(key=lambda f: -SEVERITY_RANK[f[0]])
        return [self.test_alert(
            test, sev,
            "Shortened or spliced test: " + "; ".join(f[2] for f in found),
            "疑似缩短或拼接检测过程：" + "；".join(f[3] for f in found),
            {"findings": [{"severity": f[0], **f[1]} for f in found],
             "thresholds": {k: self.p[k] for k in ("timer_slip_s", "min_missing_s",
                                                   "high_missing_s", "phase_tolerance_s",
                                                   "high_shortfall_s")}},
            check=found[0][1]["check"])]

    # -- gaps -----------------------------------------------------------------------------

    def _gaps(self, test: segments.TestRecord) -> list[tuple[Severity, dict[str, Any], str, str]]:
        p = self.p
        t0 = test.seconds[0].t
        spans: dict[str, tuple[float, float]] = {}
        gaps: list[_Gap] = []
        for instr, samples in test.by_instrument().items():
            if len(samples) < p["min_stream_samples"]:
                continue
            dt = test.intervals.get(instr, 1.0)
            spans[instr] = (samples[0].time, samples[-1].time)
            for x, y in itertools.pairwise(samples):
                g = _Gap(instr, x.time, y.time, dt)
                if y.time - x.time > dt + p["timer_slip_s"] and g.missing >= p["min_missing_s"]:
                    gaps.append(g)
        if not gaps:
            return []
        # Group gaps that overlap in time (one splice shows in several streams).
        gaps.sort(key=lambda g: g.a)
        groups: list[list[_Gap]] = []
        for g in gaps:
            if groups and g.a < max(x.b for x in groups[-1]) - p["min_missing_s"] / 2:
                groups[-1].append(g)
            else:
                groups.append([g])
        phase_at = {s.t: s.phase for s in test.seconds}
        streams_all = test.by_instrument()
        out: list[tuple[Severity, dict[str, Any], str, str]] = []
        for grp in groups:
            a = max(g.a for g in grp)
            b = min(g.b for g in grp)
            a0 = min(g.a for g in grp)
            b0 = max(g.b for g in grp)
            streams = sorted({g.instrument for g in grp})
            covering = sorted(i for i, (s0, s1) in spans.items() if s0 < a and s1 > b)
            # Another instrument reporting inside the gap: the lane was recording, this
            # stream lost data (a cable, a poll timeout); a splice leaves nothing inside.
            alive = sorted(i for i, ss in streams_all.items() if i not in streams
                           and any(a + 0.5 < x.time < b - 0.5 for x in ss))
            missing = max(g.missing for g in grp)
            scored = any(phase_at.get(k) in vres.SCORED_PHASES
                         for k in range(segments.second_of(a0), segments.second_of(b0) + 1))
            # A splice removes one span of time from every stream: the gaps must share at
            # least ``min_missing_s`` (two lost connections that merely overlap do not).
            corroborated = len(streams) >= 2 and not alive and b - a >= p["min_missing_s"]
            sev: Severity
            if corroborated:
                sev = "high" if scored and missing >= p["high_missing_s"] else "medium"
            elif not alive and len(spans) == 1 and missing >= p["high_missing_s"]:
                sev = "medium"  # a test recorded by one instrument only: nothing to compare
            else:
                sev = "low"
            ev = {"check": "gap", "streams": streams, "covering_streams": covering,
                  "streams_reporting_inside": alive,
                  "corroborated": corroborated, "missing_seconds": round(missing, 1),
                  "gap": [round(a0 - t0, 1), round(b0 - t0, 1)], "in_scored_phase": scored,
                  "intervals_s": {i: test.intervals.get(i) for i in streams}}
            who = ", ".join(streams)
            alone = f"; {', '.join(alive)} kept reporting" if alive else ""
            out.append((sev, ev,
                        f"{who} {'all ' if corroborated else ''}missing {missing:.0f} s "
                        f"(s {a0 - t0:.0f}–{b0 - t0:.0f}"
                        f"{', in a scored phase' if scored else ''}"
                        f"{alone})",
                        f"{'、'.join(streams)} 缺失 {missing:.0f} 秒（第 {a0 - t0:.0f}–"
                        f"{b0 - t0:.0f} 秒{'，位于计分阶段' if scored else ''}）"))
        return out

    # -- phases ---------------------------------------------------------------------------

    def _phases(self, test: segments.TestRecord
                ) -> list[tuple[Severity, dict[str, Any], str, str]]:
        p = self.p
        out: list[tuple[Severity, dict[str, Any], str, str]] = []
        tol = p["phase_tolerance_s"]
        if test.inferred:
            if test.method == "vmas":
                have = test.seconds[-1].t - test.seconds[0].t + 1
                want = p["vmas_seconds"] - p["inferred_slack_s"]
                if have < want - tol:
                    out.append(("medium", {"check": "phase_short", "phase": "trace",
                                           "seconds": have, "expected_seconds": p["vmas_seconds"],
                                           "phases_from_lane": False},
                                f"VMAS trace lasts {have} s (expected {p['vmas_seconds']})",
                                f"简易瞬态工况曲线仅 {have} 秒（应为 {p['vmas_seconds']} 秒）"))
            return out
        if not test.phases_from_lane:
            return out
        known = set(vres.PHASES.get(test.method, ()))
        labels = {s.phase for s in test.seconds}
        if not known or not labels <= known:
            return out  # phase names of another lane program: durations cannot be judged
        span: dict[str, tuple[int, int]] = {}
        for s in test.seconds:
            lo, hi = span.get(s.phase, (s.t, s.t))
            span[s.phase] = (min(lo, s.t), max(hi, s.t))
        for phase, want in p["expected_phase_seconds"].get(test.method, {}).items():
            if phase not in span:
                if test.result is None:
                    continue
                out.append(("medium", {"check": "phase_missing", "phase": phase,
                                       "expected_seconds": want, "result": test.result},
                            f"lane result '{test.result}' without a '{phase}' phase",
                            f"检测线给出“{test.result}”结论但无“{vres.PHASE_ZH.get(phase, phase)}”"
                            f"阶段数据"))
                continue
            have = span[phase][1] - span[phase][0] + 1
            short = want - have
            if short <= tol:
                continue
            sev: Severity = "high" if short >= p["high_shortfall_s"] else "medium"
            out.append((sev, {"check": "phase_short", "phase": phase, "seconds": have,
                              "expected_seconds": want, "phases_from_lane": True},
                        f"{test.method} phase '{phase}' lasts {have} s (expected {want})",
                        f"{vres.METHOD_ZH.get(test.method, test.method)}计分阶段"
                        f"“{vres.PHASE_ZH.get(phase, phase)}”仅 {have} 秒（应为 {want} 秒）"))
        return out
