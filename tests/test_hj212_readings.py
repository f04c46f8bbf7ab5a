"""stationseal/hj212/readings.py: HJ 212 data frames as readings, revisions."""

from __future__ import annotations

import pytest

from stationseal.hj212 import CP, Frame, parse_data_time
from stationseal.hj212.readings import (
    FLAG_CHANGED,
    REVISION_EVENT,
    RevisionTracker,
    convert,
    frame_event,
    instrument_for,
    logger_base,
)
from stationseal.records import QUALITY_FLAGS

DT = "20240501120000"


def frame(cn: str, items: dict[str, dict[str, str]], st: str = "31", qn: str = "Q1",
          data_time: str | None = DT) -> Frame:
    return Frame(st=st, cn=cn, mn="MN", qn=qn, cp=CP.build(data_time=data_time,
                                                           pollutants=items))


def test_every_data_flag_is_kept_letter_for_letter() -> None:
    codes = ["a21026", "a21002", "a34013", "a19001", "a00000", "a01012", "a01013", "a01014"]
    flags = list(QUALITY_FLAGS)
    conv = convert(frame("2011", {c: {"Rtd": "1.5", "Flag": f}
                                  for c, f in zip(codes, flags, strict=True)}))
    assert [r.quality for r in conv.readings] == flags
    assert conv.codes == codes and not conv.unconverted


def test_mapping_units_times_raw_and_instruments() -> None:
    conv = convert(frame("2061", {"a00000": {"Avg": "10.5", "Min": "9", "Max": "12",
                                             "Cou": "37800", "Flag": "N"},
                                  "a21026": {"Avg": "20", "ZsAvg": "25"}}))
    flow, so2 = conv.readings
    assert conv.instrument == flow.instrument == "logger.hour"
    assert (flow.signal, flow.unit, flow.value) == ("flow_m3h", "m³/h", 10.5 * 3600)
    assert flow.time == parse_data_time(DT)
    assert flow.raw == b"a00000-Avg=10.5,a00000-Min=9,a00000-Max=12,a00000-Cou=37800," \
                       b"a00000-Flag=N"
    assert so2.quality == "N" and so2.raw == b"a21026-Avg=20,a21026-ZsAvg=25"
    air = convert(frame("2011", {"a21026": {"Rtd": "8"}}, st="22"))
    assert air.readings[0].signal == "so2_ugm3"
    assert [instrument_for("lg", cn) for cn in ("2011", "2051", "2061", "2031")] == \
        ["lg", "lg.minute", "lg.hour", "lg.day"]
    assert logger_base("lg.minute") == "lg" and logger_base("cems.1") == "cems.1"


def test_items_that_are_not_readings_are_kept_with_the_reason() -> None:
    conv = convert(frame("2011", {"a01011": {"Rtd": "5.1", "Flag": "N"},
                                  "a21026": {"Rtd": "1.0", "Flag": "K"},
                                  "a21002": {"Flag": "N"},
                                  "a34013": {"Rtd": "St", "Flag": "N"}}))
    assert [(r.signal, r.value) for r in conv.readings] == [("pm_mgm3", "St")]
    reasons = {u.code: u.reason for u in conv.unconverted}
    assert "no canonical signal for code a01011" in reasons["a01011"]
    assert "'K' is not one of" in reasons["a21026"]
    assert "no a21002-Rtd value" in reasons["a21002"]
    ev = frame_event(frame("2011", {}), conv, 1.0, "logger")
    assert ev.kind == "hj212_frame" and len(ev.detail["unconverted"]) == 3
    assert convert(frame("9015", {})).readings == []


def test_missing_data_time_uses_the_receive_time() -> None:
    conv = convert(frame("2011", {"a21026": {"Rtd": "1"}}, data_time=None), received=123.0)
    assert conv.readings[0].time == 123.0 and conv.data_time is None
    assert "no DataTime" in conv.warnings[0]
    with pytest.raises(ValueError, match="no DataTime"):
        convert(frame("2011", {"a21026": {"Rtd": "1"}}, data_time=None))


def test_revisions_flag_and_value_but_not_repeats() -> None:
    tr = RevisionTracker(max_entries=2)
    first = convert(frame("2061", {"a21026": {"Avg": "10", "Flag": "N"},
                                   "a21002": {"Avg": "5", "Flag": "N"}}))
    assert tr.observe("MN", "Q1", first) == []
    assert tr.observe("MN", "Q1", first) == []  # same QN: a resend, not a revision
    again = convert(frame("2061", {"a21026": {"Avg": "10", "Flag": "M"},
                                   "a21002": {"Avg": "4", "Flag": "N"}}, qn="Q2"))
    revs = tr.observe("MN", "Q2", again, resent=True)
    assert [(r.signal, r.old_flag, r.new_flag, r.old_value, r.new_value) for r in revs] == \
        [("so2_mgm3", "N", "M", 10.0, 10.0), ("nox_mgm3", "N", "N", 5.0, 4.0)]
    e1, e2 = (r.event(99.0) for r in revs)
    assert (e1.kind, e1.detail["old"], e1.detail["new"], e1.detail["resent"]) == \
        (FLAG_CHANGED, "N", "M", True)
    assert (e2.kind, e2.detail["old"], e2.detail["new"]) == (REVISION_EVENT, 5.0, 4.0)
    assert e1.detail["data_time"] == "2024-05-01T04:00:00.000Z"
    assert e1.instrument == "logger.hour" and e1.detail["old_qn"] == "Q1"
    # bounded memory: the oldest reported time is forgotten first
    for k in range(3):
        tr.observe("MN", f"R{k}", convert(frame("2061", {"a21026": {"Avg": "1"}},
                                                data_time=f"2024050113{k}000")))
    assert len(tr) == 2
