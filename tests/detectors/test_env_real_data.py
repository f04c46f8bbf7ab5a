"""Environmental detectors on real Beijing data (../shared): the documented stuck run."""

from __future__ import annotations

import pytest

from benchmarks.detect_beijing import DATA, beijing_sites, load_station
from ingest.detectors.engine import DetectionEngine

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")


def test_the_166_hour_so2_stuck_run_is_reported_with_csv_rows():
    samples = load_station(DATA, "aotizhongxin")
    eng = DetectionEngine(beijing_sites(), rules=["E4"])
    for s in samples:
        eng.feed_sample(s)
    eng.finish()
    runs = [u.alert for u in eng.alerts()
            if u.alert.evidence["signal"] == "so2_ugm3" and u.alert.evidence["hours"] >= 166]
    assert runs, "the 166-hour SO2 run of the dataset README was not reported"
    a = runs[0]
    assert a.evidence["value"] == 2.0 and a.evidence["at_floor"] is True
    assert a.severity == "medium"  # at the detection floor: a fault, weaker fraud evidence
    [origin] = a.evidence["origins"]
    assert origin["gateway"] == "csv-aotizhongxin"
    assert origin["last_seq"] - origin["first_seq"] + 1 >= 166
