"""V1 — sampling probe not in the tailpipe, leaking or restricted sample line.

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from ingest.detectors import segments
from ingest.detectors.base import Alert
from ingest.detectors.health import air_dilution_consistent


class ProbeDilutionDetector(segments.PerTestDetector):
    """V1 — sampling probe not in the tailpipe, leaking or restricted sample line.

    Signature: air dilutes the sample, so CO+CO2 drops while O2 and the analyzer's lambda
    (computed from the diluted gases) rise — yet the engine itself runs at lambda ≈ 1, as the
    car's own OBD lambda shows.

    Rule (shared falsification-patterns document):

    * ``min_co_co2_pct`` (6.0 %, std, GB 18285 dilution check): any scored second with
      CO+CO2 below it. On VMAS, seconds where the trace decelerates, and the
      ``decel_hold_s`` (12) seconds after (sample line delay and response), are skipped
      (``skip_vmas_decel``): fuel cut-off legitimately makes the exhaust lean there.
    * ``max_o2_pct`` (2 %) for ``min_o2_seconds`` (5) consecutive scored seconds while the OBD
      lambda is not above ``obd_lambda_band`` (0.97–1.03; a rich engine, below the band,
      makes even less O2, so only its upper end matters) (proposed): a leak too small to
      trip the CO+CO2 check. Only seconds whose carbon (CO + CO2 + HC as C1, i.e.
      6 × hexane ppm) is also below ``leak_max_carbon_pct`` (14 %), and whose OBD lambda
      (the latest reading, when the port is read less often) stayed at or below the band
      over the preceding ``transport_window_s`` (12 s: the sample line's delay, so lean
      gas from a fuel cut still in the line is not a leak), count. Undiluted exhaust
      carries 14–15.5 % carbon whatever its O2, so a misfiring car at lambda 1 (O2, CO and HC
      all high) is not taken for a leak. VMAS decelerations are skipped as above (the engine
      is lean there, and a fabricated OBD lambda would not say so). Needs an OBD lambda;
      without one only the first check runs.

    Physical possibility: a probe out of the tailpipe samples ambient air, so CO+CO2 falls
    *and O2 rises towards 20.9 %* in proportion (``O2 ≈ 20.9 × (1 − (CO+CO2)/15)``, within
    ``o2_tolerance_pct``, 3 %). Low CO+CO2 with O2 far below that line is an analyzer that
    reads nothing (0 % O2 and 0 % CO2 is neither air nor exhaust) and is left to I-HEALTH;
    so are seconds the health layer found faulty (dead, all-zero, no gas, impossible).
    Seconds without an O2 reading count as *unverified*.

    Applies to the gasoline methods in ``methods``. Severity (evidence required):

    * high: CO+CO2 low with O2 confirming air dilution in ``high_seconds`` (3) scored
      seconds or more (two signals agree, over several seconds); or O2 high while the OBD
      lambda says the engine runs at 1, for twice ``min_o2_seconds``;
    * medium: fewer such seconds, or low CO+CO2 that no O2 reading can confirm, or O2 high
      for ``min_o2_seconds``.
    """

    rule: ClassVar[str] = "V1"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "min_co_co2_pct": 6.0,
        "max_o2_pct": 2.0,
        "min_o2_seconds": 5,
        "obd_lambda_band": [0.97, 1.03],
        "leak_max_carbon_pct": 14.0,
        "methods": ["idle", "asm5025", "asm2540", "vmas"],
        "skip_vmas_decel": True,
        "decel_hold_s": 12,
        "high_seconds": 3,
        "o2_tolerance_pct": 3.0,
        "transport_window_s": 12,
    }

    def on_test(self, test: segments.TestRecord) -> list[Alert]:
        p = self.p
        if test.method not in p["methods"]:
            return []
        scored = [s for s in test.scored() if "co2_pct" in s.values and "co_pct" in s.values]
        if not scored:
            return []
        t0 = test.seconds[0].t
        decel: set[int] = set()
        if test.method == "vmas" and p["skip_vmas_decel"]:
            decel = _decelerating(test, p["decel_hold_s"])
        low: list[segments.Second] = []
        unverified = 0
        for s in scored:
            v = s.values
            c = v["co_pct"] + v["co2_pct"]
            if s.t in decel or c >= p["min_co_co2_pct"]:
                continue
            if "o2_pct" not in v:
                unverified += 1
                low.append(s)
            elif air_dilution_consistent(c, v["o2_pct"], p["o2_tolerance_pct"]):
                low.append(s)
        _, hi_l = p["obd_lambda_band"]
        # Seconds in which the engine ran lean (fuel cut): the analyzer
        # sees their gas up to ``transport_window_s`` later.
        off = [s.t for s in test.seconds if "obd_lambda" in s.values
               and s.values["obd_lambda"] > hi_l]
        w = p["transport_window_s"]
        # The OBD port may be read less often than the analyzer: a reading stands for its
        # stream's interval.
        obd = {s.t: s.values["obd_lambda"] for s in test.seconds if "obd_lambda" in s.values}
        hold = math.ceil(next((test.intervals.get(i, 1.0) for i, ss in test.streams.items()
                               if "obd_lambda" in ss[0].values
                               or "obd_lambda" in ss[-1].values), 1.0))
        lam_at: dict[int, float] = {}
        run: list[segments.Second] = []
        best: list[segments.Second] = []
        k = 0
        for s in scored:
            v = s.values
            while k < len(off) and off[k] < s.t - w:
                k += 1
            recent_off = k < len(off) and off[k] <= s.t
            ol = next((obd[x] for x in range(s.t, s.t - hold, -1) if x in obd), None)
            if ol is not None:
                lam_at[s.t] = ol
            carbon = v["co_pct"] + v["co2_pct"] + 6e-4 * v.get("hc_ppm", 0.0)
            leak = (s.t not in decel and v.get("o2_pct", 0.0) > p["max_o2_pct"]
                    and ol is not None and ol <= hi_l
                    and not recent_off and carbon < p["leak_max_carbon_pct"])
            if leak and (not run or s.t == run[-1].t + 1):
                run.append(s)
            elif leak:
                run = [s]
            else:
                run = []
            if len(run) > len(best):
                best = list(run)
        alerts: list[Alert] = []
        if low:
            cc = [s.values["co_pct"] + s.values["co2_pct"] for s in low]
            o2 = [s.values.get("o2_pct", 0.0) for s in low]
            lam = [s.values["lambda"] for s in low if "lambda" in s.values]
            verified = len(low) - unverified
            sev: Any = "high" if verified >= p["high_seconds"] else "medium"
            ev: dict[str, Any] = {
                "check": "co_co2_low", "seconds": [s.t - t0 for s in low],
                "count": len(low), "scored_seconds": len(scored),
                "min_co_co2_pct": round(min(cc), 2), "mean_co_co2_pct": round(_mean(cc), 2),
                "mean_o2_pct": round(_mean(o2), 2), "threshold_co_co2_pct": p["min_co_co2_pct"],
                "o2_confirmed_seconds": verified,
            }
            if lam:
                ev["mean_lambda"] = round(_mean(lam), 3)
            alerts.append(self.test_alert(
                test, sev,
                f"Sampling probe not in the tailpipe: CO+CO2 {_mean(cc):.1f} % "
                f"(< {p['min_co_co2_pct']} %) in {len(low)} of {len(scored)} scored seconds, "
                f"O2 {_mean(o2):.1f} %",
                f"疑似取样探头未插入排气管：{len(scored)} 个计分秒中有 {len(low)} 秒 CO+CO2 "
                f"仅 {_mean(cc):.1f}%（低于 {p['min_co_co2_pct']}%），O2 为 {_mean(o2):.1f}%",
                ev, low, check="co_co2_low"))
        elif len(best) >= p["min_o2_seconds"]:
            o2 = [s.values["o2_pct"] for s in best]
            ols = [lam_at[s.t] for s in best]
            cc = [s.values["co_pct"] + s.values["co2_pct"] for s in best]
            sev = "high" if len(best) >= 2 * p["min_o2_seconds"] else "medium"
            alerts.append(self.test_alert(
                test, sev,
                f"Sample line leak or probe not fully inserted: O2 {_mean(o2):.1f} % "
                f"(> {p['max_o2_pct']} %) for {len(best)} s while OBD lambda is "
                f"{_mean(ols):.3f}; CO+CO2 {_mean(cc):.1f} %",
                f"疑似取样管路泄漏或探头未插到位：OBD 过量空气系数为 {_mean(ols):.3f} 时，"
                f"O2 连续 {len(best)} 秒高于 {p['max_o2_pct']}%（均值 {_mean(o2):.1f}%），"
                f"CO+CO2 仅 {_mean(cc):.1f}%",
                {"check": "o2_high_obd_lambda_1", "seconds": [s.t - t0 for s in best],
                 "count": len(best), "mean_o2_pct": round(_mean(o2), 2),
                 "mean_obd_lambda": round(_mean(ols), 3), "mean_co_co2_pct": round(_mean(cc), 2),
                 "threshold_o2_pct": p["max_o2_pct"], "threshold_seconds": p["min_o2_seconds"],
                 "obd_lambda_band": list(p["obd_lambda_band"])},
                best, check="o2_high_obd_lambda_1"))
        return alerts


def _decelerating(test: segments.TestRecord, hold: int) -> set[int]:
    """Seconds where the drive trace (or, lacking it, the roller) slows down, plus ``hold``.

    The roller is averaged over 3 s and must lose more than 0.5 km/h per second while
    above 3 km/h: a roller's jitter at standstill is not a deceleration.
    """
    out: set[int] = set()
    target = {s.t: s.values["target_speed_kmh"] for s in test.seconds
              if "target_speed_kmh" in s.values}
    if target:
        speed = target
        drop = 0.3
    else:
        raw = {s.t: s.values["speed_kmh"] for s in test.seconds if "speed_kmh" in s.values}
        speed = {}
        for t in raw:
            win = [raw[k] for k in (t - 1, t, t + 1) if k in raw]
            speed[t] = sum(win) / len(win)
        drop = 0.5
    prev: tuple[int, float] | None = None
    for t in sorted(speed):
        v = speed[t]
        if prev is not None and prev[1] > 3.0 and v < prev[1] - drop * (t - prev[0]):
            out.update(range(t, t + hold + 1))
        prev = (t, v)
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
