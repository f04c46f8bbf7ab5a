"""V8 — dynamometer inconsistency.

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md).
"""

from __future__ import annotations

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

    * |P − F·v/3600| > ``max_power_dev`` (5 %) of F·v/3600 in at least ``min_power_seconds``
      (3) seconds where the speed exceeds ``min_speed_kmh`` (5 km/h) and |F·v/3600|
      exceeds ``min_power_kw`` (1 kW) (below that the ratio is sensor noise);
    * ASM: roller speed outside target ± ``asm_tolerance_kmh`` (1.5 km/h) for more than
      ``max_asm_outside_s`` (5) seconds in total once the mode clock has started;
    * |OBD speed − roller speed| > ``max_obd_diff_kmh`` (3 km/h) for at least
      ``min_obd_diff_seconds`` (5) consecutive seconds.

    Severity (evidence required): high when one check holds for twice its minimum
    (power: 2 × ``min_power_seconds``; ASM band: 2 × ``max_asm_outside_s``; OBD speed:
    2 × ``min_obd_diff_seconds``) or two checks hold (physics broken over several
    seconds, or two signals agreeing); medium otherwise. Dynamometer or OBD values the
    health layer found faulty are not judged.
    """

    rule: ClassVar[str] = "V8"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "max_power_dev": 0.05,
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
            if dev > p["max_power_dev"]:
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
        for s in test.seconds:
            v = s.values
            if "obd_speed_kmh" not in v or "speed_kmh" not in v:
                continue
            if abs(v["obd_speed_kmh"] - v["speed_kmh"]) > p["max_obd_diff_kmh"]:
                run = [*run, s] if run and s.t == run[-1].t + 1 else [s]
                if len(run) > len(best):
                    best = list(run)
            else:
                run = []
        if len(best) >= p["min_obd_diff_seconds"]:
            diffs = [s.values["obd_speed_kmh"] - s.values["speed_kmh"] for s in best]
            mx = max(diffs, key=abs)
            strong = strong or len(best) >= 2 * p["min_obd_diff_seconds"]
            cited += best
            ev["obd_speed"] = {"seconds": [s.t - t0 for s in best], "count": len(best),
                               "max_difference_kmh": round(mx, 2),
                               "threshold_kmh": p["max_obd_diff_kmh"],
                               "threshold_seconds": p["min_obd_diff_seconds"]}
            en.append(f"OBD speed differs from roller speed by up to {abs(mx):.1f} km/h for "
                      f"{len(best)} s (> {p['max_obd_diff_kmh']} km/h)")
            zh.append(f"OBD 车速与滚筒车速相差最大 {abs(mx):.1f} km/h，持续 {len(best)} 秒"
                      f"（阈值 {p['max_obd_diff_kmh']} km/h）")
        if not en:
            return []
        cited.sort(key=lambda s: s.t)
        return [self.test_alert(
            test, "high" if strong or len(en) > 1 else "medium",
            "Dynamometer data inconsistent: " + "; ".join(en),
            "底盘测功机数据不一致：" + "；".join(zh), ev, cited)]
