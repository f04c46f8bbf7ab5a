"""V5 — analyzer output scaled down (a circuit or software factor on the gas bench).

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ingest.detectors import segments
from ingest.detectors.base import Alert


class AnalyzerScalingDetector(segments.PerTestDetector):
    """V5 — analyzer output scaled down (a circuit or software factor on the gas bench).

    Signature: a gasoline engine at lambda ≈ 1 burns to about 15 % CO+CO2 whatever the car;
    scaling every channel by the same factor leaves the computed lambda at 1 and O2 near
    zero, but CO+CO2 falls far below what combustion can produce.

    Rule (proposed): at least ``min_seconds`` (5) scored seconds with CO+CO2 below
    ``max_co_co2_pct`` (13 %), O2 below ``max_o2_pct`` (0.5 %) and the analyzer's lambda within
    ``lambda_band`` (0.95–1.05, GB 18285's normal lambda range: combustion anywhere in
    it gives 14.5 % carbon or more). Gasoline methods only. Seconds the health layer found
    faulty (a dead bench reads 0 % CO2 *and* 0 % O2: no gas at all) are not judged.

    Severity (evidence required): high when at least half of the scored seconds qualify
    (combustion cannot produce that composition — a physical impossibility held over the
    test); medium for ``min_seconds`` or more.
    """

    rule: ClassVar[str] = "V5"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "max_co_co2_pct": 13.0,
        "max_o2_pct": 0.5,
        "lambda_band": [0.95, 1.05],
        "min_seconds": 5,
        "methods": ["idle", "asm5025", "asm2540", "vmas"],
    }

    def on_test(self, test: segments.TestRecord) -> list[Alert]:
        p = self.p
        if test.method not in p["methods"]:
            return []
        lo, hi = p["lambda_band"]
        scored = [s for s in test.scored()
                  if all(k in s.values for k in ("co_pct", "co2_pct", "o2_pct", "lambda"))]
        bad = [s for s in scored
               if s.values["co_pct"] + s.values["co2_pct"] < p["max_co_co2_pct"]
               and s.values["o2_pct"] < p["max_o2_pct"] and lo <= s.values["lambda"] <= hi]
        if len(bad) < p["min_seconds"]:
            return []
        cc = sum(s.values["co_pct"] + s.values["co2_pct"] for s in bad) / len(bad)
        o2 = sum(s.values["o2_pct"] for s in bad) / len(bad)
        lam = sum(s.values["lambda"] for s in bad) / len(bad)
        t0 = test.seconds[0].t
        return [self.test_alert(
            test, "high" if 2 * len(bad) >= len(scored) else "medium",
            f"Analyzer output scaled down suspected: CO+CO2 {cc:.1f} % (< {p['max_co_co2_pct']} %) "
            f"with O2 {o2:.2f} % and lambda {lam:.3f} in {len(bad)} of {len(scored)} scored "
            f"seconds",
            f"疑似分析仪输出被按比例缩小：过量空气系数 {lam:.3f}、O2 {o2:.2f}% 时 CO+CO2 仅 "
            f"{cc:.1f}%（低于 {p['max_co_co2_pct']}%），{len(scored)} 个计分秒中有 {len(bad)} 秒",
            {"seconds": [s.t - t0 for s in bad], "count": len(bad),
             "scored_seconds": len(scored), "mean_co_co2_pct": round(cc, 2),
             "mean_o2_pct": round(o2, 3), "mean_lambda": round(lam, 3),
             "expected_co_co2_pct": "14-15.5", "thresholds": {
                 k: p[k] for k in ("max_co_co2_pct", "max_o2_pct", "lambda_band", "min_seconds")}},
            bad)]
