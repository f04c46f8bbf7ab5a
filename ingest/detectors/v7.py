"""V7 — shortened or spliced tests.

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md).
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

from ingest.detectors import segments
from ingest.detectors.base import Alert
from stationseal import vehicle_results as vres


class ShortenedTestDetector(segments.PerTestDetector):
    """V7 — shortened or spliced tests.

    Signature: seconds cut out of the process data (a gap in the time stamps, fewer samples
    than the elapsed time), or a protocol run shorter than the method prescribes and re-timed
    so that no gap shows (a VMAS trace of 170 samples, a 20-second idle phase).

    Rules (proposed):

    * per instrument stream of a test: the number of samples differs from the elapsed whole
      seconds + 1, or two consecutive samples are more than ``max_gap_s`` (1 s) apart; a gap
      touching a scored phase makes the alert high. Streams with fewer than
      ``min_stream_samples`` (10) samples are not judged.
    * scored phases must last the seconds of ``expected_phase_seconds`` (GB 18285 / GB 3847:
      high idle and idle 30 s, ASM fast mode 10 s, VMAS trace 195 s, free acceleration
      measuring phase 57 s, lug-down points 10 s each). A test with a lane result but without
      its scored phase is also reported.
    * an inferred test (no lane context) guessed as VMAS must have ``vmas_samples`` (195)
      seconds.
    """

    rule: ClassVar[str] = "V7"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "max_gap_s": 1,
        "min_stream_samples": 10,
        "expected_phase_seconds": {m: dict(d) for m, d in
                                   vres.EXPECTED_PHASE_SECONDS.items()},
        "vmas_samples": 195,
    }

    def on_test(self, test: segments.TestRecord) -> list[Alert]:
        p = self.p
        if not test.seconds:
            return []
        t0 = test.seconds[0].t
        phase_at = {s.t: s.phase for s in test.seconds}
        en: list[str] = []
        zh: list[str] = []
        findings: list[dict[str, Any]] = []
        scored_hit = False
        for instr, samples in sorted(test.by_instrument().items()):
            if len(samples) < p["min_stream_samples"]:
                continue
            secs = [segments.second_of(s.time) for s in samples]
            expected = secs[-1] - secs[0] + 1
            gaps = [(a, b) for a, b in itertools.pairwise(secs) if b - a > p["max_gap_s"]]
            if len(samples) == expected and not gaps:
                continue
            in_scored = [g for g in gaps if phase_at.get(g[0]) in vres.SCORED_PHASES
                         or phase_at.get(g[1]) in vres.SCORED_PHASES]
            scored_hit = scored_hit or bool(in_scored)
            missing = sum(b - a - 1 for a, b in gaps)
            findings.append({
                "check": "stream_count", "instrument": instr, "samples": len(samples),
                "elapsed_seconds": expected, "missing_seconds": missing,
                "gaps": [[a - t0 + 1, b - t0 - 1] for a, b in gaps],
                "gaps_in_scored_phase": len(in_scored),
            })
        if findings:
            worst = max(findings, key=lambda f: f["missing_seconds"])
            gap_txt = ", ".join(f"s {a}–{b}" for a, b in worst["gaps"][:3])
            en.append(f"{worst['instrument']} has {worst['samples']} samples over "
                      f"{worst['elapsed_seconds']} s ({worst['missing_seconds']} s missing: "
                      f"{gap_txt})")
            gap_zh = "、".join(f"第 {a}–{b} 秒" for a, b in worst["gaps"][:3])
            zh.append(f"{worst['instrument']} 在 {worst['elapsed_seconds']} 秒内仅有 "
                      f"{worst['samples']} 个采样点（缺失 {worst['missing_seconds']} 秒："
                      f"{gap_zh}）")
        expected_phases = dict(p["expected_phase_seconds"].get(test.method, {}))
        counts: dict[str, int] = {}
        for s in test.seconds:
            counts[s.phase] = counts.get(s.phase, 0) + 1
        if test.inferred:
            expected_phases = {}
            if test.method == "vmas":
                counts = {"trace": len(test.seconds)}
                expected_phases = {"trace": p["vmas_samples"]}
        for phase, want in expected_phases.items():
            have = counts.get(phase, 0)
            if have == want or (have == 0 and test.result is None):
                continue
            scored_hit = True
            findings.append({"check": "phase_count", "phase": phase, "seconds": have,
                             "expected_seconds": want})
            en.append(f"{test.method} phase '{phase}' has {have} s (expected {want})")
            zh.append(f"{vres.METHOD_ZH.get(test.method, test.method)}计分阶段"
                      f"“{vres.PHASE_ZH.get(phase, phase)}”有 {have} 秒数据（应为 {want} 秒）")
        if not findings:
            return []
        return [self.test_alert(
            test, "high" if scored_hit else "medium",
            "Shortened or spliced test: " + "; ".join(en),
            "疑似缩短或拼接检测过程：" + "；".join(zh),
            {"findings": findings, "max_gap_s": p["max_gap_s"]})]
