"""V8 — dynamometer inconsistency.

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from ingest.detectors import segments
from ingest.detectors.base import Alert
from stationseal import vehicle_results as vres

_ASM_MODE = frozenset({"settle", "stable", "fast", "full"})


class DynamometerConsistencyDetector(segments.PerTestDetector):
    """V8 — dynamometer inconsistency.

    Signature: a dynamometer reports the power it absorbs, the force on its load cell and the
    roller speed; physics ties them (P = F·v/3600 with P in kW, F in N, v in km/h). A power
    figure that is set rather than measured, a driver allowed off the ASM speed band, or a car
    that is not really the one on the rollers break these relations.

    Rules (proposed):

    * |P − F·v/3600| > ``max_power_dev`` (5 %) of F·v/3600 and more than
      ``min_power_dev_kw`` (0.2 kW, a dynamometer's accuracy: at a few kW, 5 % is
      sensor noise) in at least ``min_power_seconds`` (3) seconds where the speed exceeds
      ``min_speed_kmh`` (5 km/h) and |F·v/3600| exceeds ``min_power_kw`` (1 kW);
    * ASM: roller speed outside target ± ``asm_tolerance_kmh`` (1.5 km/h) for more than
      ``max_asm_outside_s`` (5) seconds in total once the mode clock has started;
    * |OBD speed − roller speed| > ``max_obd_diff_kmh`` (3 km/h) for at least
      ``min_obd_diff_seconds`` (5) consecutive seconds (consecutive OBD readings, each
      standing for the OBD stream's interval), against the nearest roller speed
      of the second before, the same and the next (instruments polled one after another
      land a second apart at times; during an acceleration that alone is 3 km/h).

    Severity (evidence required): high when one check holds for twice its minimum
    (power: 2 × ``min_power_seconds``; ASM band: 2 × ``max_asm_outside_s``; OBD speed:
    2 × ``min_obd_diff_seconds``) or two checks hold (physics broken over several
    seconds, or two signals agreeing); medium otherwise. Dynamometer or OBD values the
    health layer found faulty are not judged.
    """

    rule: ClassVar[str] = "V8"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "max_power_dev": 0.05,
        "min_power_dev_kw": 0.2,
        "min_power_kw": 1.0,
        "min_speed_kmh": 5.0,
        "min_power_seconds": 3,
        "asm_tolerance_kmh": 1.5,
        "max_asm_outside_s": 5,
        "max_obd_diff_kmh": 3.0,
        "min_obd_diff_seconds": 5,
    }

    def on_test(self, test: segments.TestRecord) -> list[Alert]:
        p = self.p
        t0 = test.seconds[0].t if test.seconds else 0
        en: list[str] = []
        zh: list[str] = []
        ev: dict[str, Any] = {}
        cited: list[segments.Second] = []
        strong = False
        bad_p: list[tuple[segments.Second, float]] = []
        for s in test.seconds:
            v = s.values
            if not all(k in v for k in ("power_kw", "force_n", "speed_kmh")):
                continue
            fv = v["force_n"] * v["speed_kmh"] / 3600.0
            if v["speed_kmh"] <= p["min_speed_kmh"] or abs(fv) <= p["min_power_kw"]:
                continue
            dev = abs(v["power_kw"] - fv) / abs(fv)
            if dev > p["max_power_dev"] and abs(v["power_kw"] - fv) > p["min_power_dev_kw"]:
                bad_p.append((s, dev))
        if len(bad_p) >= p["min_power_seconds"]:
            worst = max(d for _, d in bad_p)
            strong = strong or len(bad_p) >= 2 * p["min_power_seconds"]
            cited += [s for s, _ in bad_p]
            ev["power"] = {"seconds": [s.t - t0 for s, _ in bad_p], "count": len(bad_p),
                           "max_deviation": round(worst, 4),
                           "threshold": p["max_power_dev"]}
            en.append(f"power ≠ F·v/3600 by up to {worst:.0%} in {len(bad_p)} s "
                      f"(> {p['max_power_dev']:.0%})")
            zh.append(f"功率与力×速度/3600 偏差最大 {worst:.0%}，共 {len(bad_p)} 秒"
                      f"（阈值 {p['max_power_dev']:.0%}）")
        if test.method in vres.ASM_SPEED:
            target = vres.ASM_SPEED[test.method]
            tol = p["asm_tolerance_kmh"]
            out = [s for s in test.seconds if s.phase in _ASM_MODE and "speed_kmh" in s.values
                   and abs(s.values["speed_kmh"] - target) > tol]
            if len(out) > p["max_asm_outside_s"]:
                strong = strong or len(out) > 2 * p["max_asm_outside_s"]
                cited += out
                ev["asm_speed"] = {"seconds": [s.t - t0 for s in out], "count": len(out),
                                   "target_kmh": target, "tolerance_kmh": tol,
                                   "threshold_seconds": p["max_asm_outside_s"],
                                   "speeds": [s.values["speed_kmh"] for s in out]}
                en.append(f"roller speed outside {target:.0f} ± {tol} km/h for {len(out)} s "
                          f"(> {p['max_asm_outside_s']} s)")
                zh.append(f"车速超出 {target:.0f}±{tol} km/h 共 {len(out)} 秒"
                          f"（超过 {p['max_asm_outside_s']} 秒）")
        run: list[segments.Second] = []
        best: list[segments.Second] = []
        roller = {s.t: s.values["speed_kmh"] for s in test.seconds if "speed_kmh" in s.values}
        # An OBD port read every 2 s gives a reading every other second: consecutive
        # readings form a run, each standing for the stream's interval.
        dt = max(1.0, next((test.intervals.get(i, 1.0) for i, ss in test.streams.items()
                            if "obd_speed_kmh" in ss[0].values
                            or "obd_speed_kmh" in ss[-1].values), 1.0))
        step = math.ceil(dt)
        for s in test.seconds:
            v = s.values
            if "obd_speed_kmh" not in v:
                continue
            # Instruments polled in turn land a second apart at times: compare with the
            # nearest roller speed of the neighbouring seconds.
            near = [roller[k] for k in (s.t - 1, s.t, s.t + 1) if k in roller]
            if not near:
                continue
            if min(abs(v["obd_speed_kmh"] - x) for x in near) > p["max_obd_diff_kmh"]:
                run = [*run, s] if run and s.t - run[-1].t <= step else [s]
                if len(run) > len(best):
                    best = list(run)
            else:
                run = []
        best_s = len(best) * dt
        if best_s >= p["min_obd_diff_seconds"]:
            diffs = [s.values["obd_speed_kmh"] - roller[s.t] for s in best if s.t in roller] \
                or [0.0]
            mx = max(diffs, key=abs)
            strong = strong or best_s >= 2 * p["min_obd_diff_seconds"]
            cited += best
            ev["obd_speed"] = {"seconds": [s.t - t0 for s in best], "count": len(best),
                               "duration_s": best_s,
                               "max_difference_kmh": round(mx, 2),
                               "threshold_kmh": p["max_obd_diff_kmh"],
                               "threshold_seconds": p["min_obd_diff_seconds"]}
            en.append(f"OBD speed differs from roller speed by up to {abs(mx):.1f} km/h for "
                      f"{best_s:.0f} s (> {p['max_obd_diff_kmh']} km/h)")
            zh.append(f"OBD 车速与滚筒车速相差最大 {abs(mx):.1f} km/h，持续 {best_s:.0f} 秒"
                      f"（阈值 {p['max_obd_diff_kmh']} km/h）")
        if not en:
            return []
        cited.sort(key=lambda s: s.t)
        return [self.test_alert(
            test, "high" if strong or len(en) > 1 else "medium",
            "Dynamometer data inconsistent: " + "; ".join(en),
            "底盘测功机数据不一致：" + "；".join(zh), ev, cited)]
