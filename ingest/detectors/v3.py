"""V3 — fabricated OBD data stream.

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ingest.detectors import segments
from ingest.detectors.base import Alert


class FabricatedObdDetector(segments.PerTestDetector):
    """V3 — fabricated OBD data stream.

    Signature: a generated OBD stream has throttle positions from a short list, engine speed
    that ignores what the rollers and the tachometer do, a vehicle speed made of the
    dynamometer's speed plus a few fixed offsets, and an odometer value reused across VINs.

    Indicators per test (proposed thresholds of the shared falsification-patterns document):

    * ``max_distinct_throttle`` (20): at most this many distinct ``obd_throttle_pct`` values
      over ``min_throttle_seconds`` (60) seconds; only for ``throttle_methods`` (VMAS), as
      steady-state and snap tests legitimately show few throttle positions.
    * ``max_abs_corr`` (0.3): corr(OBD rpm, dyno speed) below it (a negative correlation
      is no more physical than none: in gear, engine speed rises with road speed) while
      the speed varies
      (std ≥ ``min_speed_std_kmh``, 5 km/h); likewise against the lane tachometer's rpm when
      that varies (std ≥ ``min_rpm_std``, 100 /min) — the tachometer case covers tests without
      a dynamometer. At least ``min_corr_seconds`` (20) aligned seconds.
    * ``max_distinct_offsets`` (6): at most this many distinct OBD−dyno speed differences,
      rounded to ``offset_resolution`` (0.01 km/h; the dyno's resolution, which must be finer
      than OBD's 1 km/h), over ``min_offset_seconds`` (20) seconds above ``min_moving_kmh``
      (each OBD reading taken against the roller speed of the second before, the same or
      the next, whichever difference is most common: instruments land a second apart).
    * Across tests of a site: the same odometer (``obd_odometer_km`` at test start, or the lane's
      ``odometer_km``) on ``min_vins_same_odometer`` (3) different VINs within
      ``odometer_window_days`` (30). The document says "different VINs"; two VINs are not
      enough: at 0.1 km resolution a station testing 80 cars a day sees two unrelated cars
      share a reading about once a month, three practically never.

    Severity (evidence required): high when two or more stream indicators hold (two
    independent signals of fabrication in one test) or one odometer is shared by several
    VINs (a physical impossibility across cars); medium for one stream indicator.
    """

    rule: ClassVar[str] = "V3"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "max_distinct_throttle": 20,
        "throttle_methods": ["vmas"],
        "min_throttle_seconds": 60,
        "max_abs_corr": 0.3,
        "min_speed_std_kmh": 5.0,
        "min_rpm_std": 100.0,
        "min_corr_seconds": 20,
        "max_distinct_offsets": 6,
        "offset_resolution": 0.01,
        "min_offset_seconds": 20,
        "min_moving_kmh": 5.0,
        "min_vins_same_odometer": 3,
        "odometer_window_days": 30,
    }

    def __init__(self, sites: Any, params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        # (site, odometer) -> {vin: (test start, test id)}
        self.odometers: dict[tuple[str, float], dict[str, tuple[float, str]]] = {}
        self._seen_tests = 0

    def on_test(self, test: segments.TestRecord) -> list[Alert]:
        return self._stream(test) + self._odometer(test)

    def _stream(self, test: segments.TestRecord) -> list[Alert]:
        p = self.p
        found_en: list[str] = []
        found_zh: list[str] = []
        ev: dict[str, Any] = {}
        thr = [s.values["obd_throttle_pct"] for s in test.series("obd_throttle_pct")]
        if test.method in p["throttle_methods"] and len(thr) >= p["min_throttle_seconds"]:
            distinct = len(set(thr))
            ev["distinct_throttle"] = distinct
            if distinct <= p["max_distinct_throttle"]:
                found_en.append(f"only {distinct} distinct throttle values in {len(thr)} s "
                                f"(≤ {p['max_distinct_throttle']})")
                found_zh.append(f"{len(thr)} 秒内节气门开度仅 {distinct} 个不同取值"
                                f"（阈值 ≤ {p['max_distinct_throttle']}）")
        for ref, min_std, name_en, name_zh in (
            ("speed_kmh", p["min_speed_std_kmh"], "dyno speed", "测功机车速"),
            ("rpm", p["min_rpm_std"], "tachometer rpm", "转速计转速"),
        ):
            pairs = [(s.values["obd_rpm"], s.values[ref]) for s in test.seconds
                     if "obd_rpm" in s.values and ref in s.values]
            if len(pairs) < p["min_corr_seconds"]:
                continue
            xs = [a for a, _ in pairs]
            ys = [b for _, b in pairs]
            if segments.pstdev(ys) < min_std:
                continue
            r = segments.pearson(xs, ys)
            key = f"corr_obd_rpm_{'speed' if ref == 'speed_kmh' else 'rpm'}"
            ev[key] = None if r is None else round(r, 3)
            if r is None or r < p["max_abs_corr"]:
                rs = "undefined" if r is None else f"{r:.2f}"
                found_en.append(f"OBD rpm unrelated to {name_en} (r = {rs}, "
                                f"r < {p['max_abs_corr']})")
                found_zh.append(f"OBD 转速与{name_zh}无相关性（r = {rs}，阈值 "
                                f"r < {p['max_abs_corr']}）")
        offs = self._offsets(test)
        if len(offs) >= p["min_offset_seconds"]:
            distinct_offs = sorted(set(offs))
            ev["distinct_speed_offsets"] = len(distinct_offs)
            if len(distinct_offs) <= p["max_distinct_offsets"]:
                ev["speed_offsets_kmh"] = distinct_offs
                found_en.append(f"OBD speed = dyno speed + {len(distinct_offs)} fixed offsets "
                                f"{distinct_offs} over {len(offs)} s")
                found_zh.append(f"OBD 车速等于测功机车速加 {len(distinct_offs)} 个固定偏差 "
                                f"{distinct_offs}（{len(offs)} 秒）")
        if not found_en:
            return []
        ev["indicators"] = len(found_en)
        ev["thresholds"] = {k: p[k] for k in ("max_distinct_throttle", "max_abs_corr",
                                              "max_distinct_offsets")}
        obd = [s for s in test.seconds if "obd_rpm" in s.values or "obd_speed_kmh" in s.values]
        return [self.test_alert(
            test, "high" if len(found_en) >= 2 else "medium",
            "Fabricated OBD data stream suspected: " + "; ".join(found_en),
            "疑似伪造 OBD 数据流：" + "；".join(found_zh), ev, obd)]

    def _offsets(self, test: segments.TestRecord) -> list[float]:
        """OBD − roller speed per OBD second, rounded to ``offset_resolution``.

        Instruments polled in turn land a second apart at times, so each OBD reading is
        compared with the roller speed of the second before, the same and the next; of
        those three differences the one most common over the test is taken (a fabricated
        stream reuses a few offsets; a real one gives a new difference every second).
        """
        p = self.p
        res = p["offset_resolution"]
        roller = {s.t: s.values["speed_kmh"] for s in test.seconds if "speed_kmh" in s.values}
        cands: list[list[float]] = []
        for s in test.seconds:
            v = s.values
            if "obd_speed_kmh" not in v or roller.get(s.t, 0.0) <= p["min_moving_kmh"]:
                continue
            cands.append([round(round((v["obd_speed_kmh"] - roller[k]) / res) * res, 6)
                          for k in (s.t - 1, s.t, s.t + 1) if k in roller])
        freq: dict[float, int] = {}
        for c in cands:
            for x in set(c):
                freq[x] = freq.get(x, 0) + 1
        return [max(c, key=lambda x: (freq[x], -abs(x))) for c in cands]

    def _odometer(self, test: segments.TestRecord) -> list[Alert]:
        odo = test.detail("odometer_km")
        if odo is None:
            first = test.series("obd_odometer_km")
            odo = first[0].values["obd_odometer_km"] if first else None
        vin = test.vin or test.vehicle
        if odo is None or not vin or float(odo) <= 0.0:
            return []
        key = (test.site, round(float(odo), 1))
        horizon = test.start - self.p["odometer_window_days"] * 86400.0
        self._seen_tests += 1
        if self._seen_tests % 5000 == 0:  # forget readings nobody can match any more
            self.odometers = {k: v for k, v in self.odometers.items()
                              if max(t for t, _ in v.values()) >= horizon}
        seen = self.odometers.setdefault(key, {})
        for v in [v for v, (t, _) in seen.items() if t < horizon]:
            del seen[v]
        new_vin = vin not in seen
        seen[vin] = (test.start, test.id)
        if not new_vin or len(seen) < self.p["min_vins_same_odometer"]:
            return []
        ids = [tid for _, tid in seen.values()]
        vins = sorted(seen)
        en = (f"Odometer {key[1]:.1f} km reported for {len(vins)} different VINs "
              f"(≥ {self.p['min_vins_same_odometer']}): fabricated OBD stream suspected")
        zh = (f"{len(vins)} 个不同车辆识别代号（VIN）上报相同里程 {key[1]:.1f} km（阈值 ≥ "
              f"{self.p['min_vins_same_odometer']}），疑似伪造 OBD 数据流")
        ev = {"check": "odometer_shared", "odometer_km": key[1], "vins": vins, "test_ids": ids,
              "threshold_vins": self.p["min_vins_same_odometer"]}
        first_seconds = [s for s in test.seconds if "obd_odometer_km" in s.values][:1]
        alert = self.test_alert(test, "high", en, zh, ev, first_seconds)
        alert.key = f"V3|{test.site}|odometer|{key[1]:.1f}"
        return [alert]
