"""V4 — OBD cheat box: one calibration identity reported by unrelated vehicles.

The rule, its data signature and its parameters are documented on the detector class
(rendered into docs/detectors.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ingest.detectors import segments
from ingest.detectors.base import Alert


class SharedCalibrationDetector(segments.PerTestDetector):
    """V4 — OBD cheat box: one calibration identity reported by unrelated vehicles.

    Signature: CALID/CVN identify the engine control software; vehicles of unrelated
    type-approval families cannot share them, but a box plugged between the OBD port and the
    lane's scan tool answers with the same canned identity for every car.

    Rule (proposed): the same CALID/CVN pair on at least ``min_model_groups`` (3) model groups
    within ``window_days`` (90). The pairs are followed across all sites (a cheat-box model is
    sold to many stations); one alert per site and pair lists every test involved. Needs the
    lane's ``test_start``/``test_end`` detail (``calid``, ``cvn``, ``model_group``).

    Severity (evidence required): high — one software identity on unrelated type-approval
    families is impossible for genuine control units, and the evidence spans several
    vehicles.
    """

    rule: ClassVar[str] = "V4"
    DEFAULTS: ClassVar[dict[str, Any]] = {"min_model_groups": 3, "window_days": 90}

    def __init__(self, sites: Any, params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        # (calid, cvn) -> list of (time, site, test id, model group, vin)
        self.pairs: dict[tuple[str, str], list[tuple[float, str, str, str, str]]] = {}

    def on_test(self, test: segments.TestRecord) -> list[Alert]:
        calid, cvn = str(test.detail("calid") or ""), str(test.detail("cvn") or "")
        group = str(test.detail("model_group") or "")
        if not calid or not cvn or not group:
            return []
        seen = self.pairs.setdefault((calid, cvn), [])
        horizon = test.start - self.p["window_days"] * 86400.0
        seen[:] = [x for x in seen if x[0] >= horizon and x[2] != test.id]
        seen.append((test.start, test.site, test.id, group, test.vin))
        groups = sorted({x[3] for x in seen})
        if len(groups) < self.p["min_model_groups"]:
            return []
        here = [x for x in seen if x[1] == test.site]
        ev = {
            "calid": calid, "cvn": cvn, "model_groups": groups,
            "test_ids": [x[2] for x in here], "vins": sorted({x[4] for x in here if x[4]}),
            "other_sites": sorted({x[1] for x in seen if x[1] != test.site}),
            "fleet_tests": len(seen), "threshold_model_groups": self.p["min_model_groups"],
        }
        alert = self.test_alert(
            test, "high",
            f"CALID/CVN {calid}/{cvn} reported by {len(groups)} unrelated model groups "
            f"({', '.join(groups)}): OBD cheat box suspected",
            f"同一 CALID/CVN（{calid}/{cvn}）出现在 {len(groups)} 个不同车型系族"
            f"（{'、'.join(groups)}）上，疑似加装 OBD 作弊器",
            ev, [])
        alert.start = min(x[0] for x in here)
        alert.key = f"V4|{test.site}|{calid}/{cvn}"
        return [alert]
