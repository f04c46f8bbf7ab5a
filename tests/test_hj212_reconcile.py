"""HJ 212 reconciliation (ingest/reconcile/hj212.py): logger reports against analyzer
readings, as E3/E6 alerts, through the detection engine and `stationseal detect`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingest.detectors.base import SiteInfo
from ingest.detectors.engine import DetectionEngine
from ingest.detectors.io import write_records
from sim.hj212_logger import Tamper
from stationseal.cli import main
from stationseal.hj212 import CP, Frame, format_data_time, format_number, signal_map
from stationseal.hj212.codes import SIGNAL_TO_HJ212
from stationseal.hj212.readings import convert
from stationseal.records import Sample, SiteEvent, to_rfc3339

SITE = "cems-1"
T0 = 1_700_000_000.0 // 3600 * 3600
LIMITS = {"so2_mgm3": 440.0}


def canonical(t: float) -> dict[str, float]:
    ph = (t - T0) / 600
    return {"so2_mgm3": 400 + 50 * math.sin(ph), "nox_mgm3": 100 + 20 * math.cos(ph),
            "pm_mgm3": 8 + math.sin(ph / 3), "o2_stack_pct": 9 + 0.3 * math.sin(ph / 2),
            "flow_m3h": 120000 + 5000 * math.sin(ph), "moisture_pct": 8 + 0.1 * math.sin(ph)}


def logger_sample(t: float, cn: str, codes: dict[str, tuple[float, str]], seq: int,
                  field: str = "Rtd") -> Sample:
    """What the gateway seals for one logger frame, through the real HJ 212 mapping."""
    frame = Frame(st="31", cn=cn, mn="MN1", qn=f"{seq:017d}", cp=CP.build(
        data_time=format_data_time(t),
        pollutants={c: {field: format_number(v, 2), "Flag": f} for c, (v, f) in codes.items()}))
    conv = convert(frame)
    s = Sample(t, SITE, conv.instrument, {}, {}, None, ("gw-1", seq))
    for r in conv.readings:
        assert isinstance(r.value, float)
        s.values[r.signal] = r.value
        s.flags[r.signal] = r.quality
    return s


def transmitted(v: dict[str, float]) -> dict[str, tuple[float, str]]:
    out = {}
    for sig, x in v.items():
        code = SIGNAL_TO_HJ212[("31", sig)]
        sm = signal_map("31", code)
        assert sm is not None
        out[code] = (x / sm.factor, "N")
    return out


def site_records(seconds: int, tamper: Tamper | None = None, *, rtd_every: int = 30,
                 minute: bool = False,
                 analyzer_flags: Callable[[float], str] = lambda t: "N") -> list[Any]:
    recs: list[Any] = []
    window: list[dict[str, tuple[float, str]]] = []
    for k in range(seconds):
        t = T0 + k
        v = canonical(t)
        recs.append(Sample(t, SITE, "stack1.cems", dict(v), {s: analyzer_flags(t) for s in v},
                           None, ("gw-1", 100_000 + k)))
        if k % rtd_every == 0:
            rep = tamper.apply(transmitted(v)) if tamper else transmitted(v)
            window.append(rep)
            recs.append(logger_sample(t, "2011", rep, 200_000 + k))
        if minute and k % 60 == 59:
            agg = {}
            for code in window[0]:
                xs = [w[code][0] for w in window]
                flags = [w[code][1] for w in window if w[code][1] != "N"]
                agg[code] = (sum(xs) / len(xs), flags[0] if flags else "N")
            recs.append(logger_sample(t - 59, "2051", agg, 300_000 + k, "Avg"))
            window = []
    recs.sort(key=lambda r: r.time)
    return recs


def run_engine(recs: list[Any], rules: list[str] | None = None,
               params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    eng = DetectionEngine({SITE: SiteInfo(SITE, "stack_cems", limits=LIMITS)}, params,
                          rules or ["HJ212"])
    for r in recs:
        eng.feed(r)
    eng.finish()
    return [u.to_json() for u in eng.alerts()]


def by_key(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["key"]: a for a in alerts}


def test_honest_logger_raises_nothing() -> None:
    assert run_engine(site_records(1800, minute=True, rtd_every=10)) == []


def test_scaled_so2_is_e3_with_measured_and_reported_evidence() -> None:
    alerts = by_key(run_engine(site_records(900, Tamper(scale={"a21026": 294.49 / 554}))))
    assert set(alerts) == {f"E3|{SITE}|logger|so2_mgm3|mismatch"}
    a = alerts[f"E3|{SITE}|logger|so2_mgm3|mismatch"]
    ev = a["evidence"]
    assert (a["rule"], a["severity"], a["instrument"]) == ("E3", "high", "logger")
    assert ev["finding"] == "reported_mismatch" and ev["code"] == "a21026"
    assert ev["ratio"] == pytest.approx(0.5316, abs=0.001)
    assert ev["analyzer"] == "stack1.cems" and ev["mismatches"] == 30
    ex = ev["examples"][-1]
    assert ex["reported"] == pytest.approx(0.5316 * ex["measured"], rel=0.01)
    assert ex["measured_flags"] == {"N": 11}  # readings within ±5 s
    assert ev["origins"]["reported"][0]["gateway"] == "gw-1"
    assert ev["origins"]["measured"][0]["first_seq"] >= 100_000
    assert a["start"] == to_rfc3339(T0) and not ev["ongoing"]
    assert "0.532" in a["summary_en"] and "a21026" in a["summary_zh"]


def test_copied_channels_are_e3_identical_and_mismatching() -> None:
    tamper = Tamper(copy_from="a21002", copy_to=("a34013", "a19001", "a01014"))
    alerts = by_key(run_engine(site_records(600, tamper, rtd_every=10)))
    group = f"E3|{SITE}|logger|identical|moisture_pct+nox_mgm3+o2_stack_pct+pm_mgm3"
    assert group in alerts
    ev = alerts[group]["evidence"]
    assert ev["codes"] == {"moisture_pct": "a01014", "nox_mgm3": "a21002",
                           "o2_stack_pct": "a19001", "pm_mgm3": "a34013"}
    assert ev["matches_analyzer"] == ["nox_mgm3"]  # the source channel
    assert ev["reports"] == 60
    ex = ev["examples"][-1]
    assert ex["measured"]["nox_mgm3"] == pytest.approx(ex["value"], rel=0.01)
    assert ex["measured"]["pm_mgm3"] < 10
    for sig in ("pm_mgm3", "o2_stack_pct", "moisture_pct"):
        assert f"E3|{SITE}|logger|{sig}|mismatch" in alerts
    assert f"E3|{SITE}|logger|nox_mgm3|mismatch" not in alerts


def test_flags_not_shown_by_the_analyzer_are_e6() -> None:
    tamper = Tamper(flag_limits={"a21026": 430.0}, flag_as="D")
    alerts = by_key(run_engine(site_records(1800, tamper, minute=True, rtd_every=10)))
    a = alerts[f"E6|{SITE}|logger|so2_mgm3|flag_not_shown"]
    ev = a["evidence"]
    assert (a["rule"], a["severity"]) == ("E6", "high")  # the analyzer read over the limit
    assert ev["reported_flags"] == {"D": ev["reports"]} and ev["reports"] > 20
    assert ev["measured_max"] > LIMITS["so2_mgm3"] and ev["measured_over_limit"] > 0
    assert all(x["measured_flags"] == {"N": x["measured_flags"]["N"]}
               for x in ev["examples"])
    assert f"E6|{SITE}|logger.minute|so2_mgm3|flag_not_shown" in alerts
    # flagged values are not compared as values: no mismatch besides
    assert not [k for k in alerts if k.startswith("E3")]


def test_flags_the_analyzer_shows_too_are_not_alerted() -> None:
    def maintenance(t: float) -> str:
        return "M" if canonical(t)["so2_mgm3"] > 430 else "N"

    tamper = Tamper(flag_limits={"a21026": 430.0}, flag_as="M")
    alerts = run_engine(site_records(1800, tamper, rtd_every=10, analyzer_flags=maintenance))
    assert [a["key"] for a in alerts if "flag_not_shown" in a["key"]] == []


def test_minute_means_compared_with_the_analyzer_mean() -> None:
    tamper = Tamper(scale={"a21002": 1.2})
    alerts = by_key(run_engine(site_records(600, tamper, minute=True, rtd_every=10)))
    a = alerts[f"E3|{SITE}|logger.minute|nox_mgm3|mismatch"]
    ev = a["evidence"]
    assert ev["data"] == "minute mean (Avg)" and ev["ratio"] == pytest.approx(1.2, abs=0.01)
    assert ev["examples"][0]["mean_of"] == 60
    assert a["severity"] == "high"


def test_revisions_after_the_data_time() -> None:
    dt = to_rfc3339(T0)
    ev_flag = SiteEvent(T0 + 7200, SITE, "logger.hour", "flag_changed",
                        {"signal": "so2_mgm3", "data_time": dt, "old": "N", "new": "M"},
                        ("gw-1", 9))
    ev_value = SiteEvent(T0 + 7200, SITE, "logger.hour", "reported_revision",
                         {"signal": "so2_mgm3", "data_time": dt, "old": 412.5, "new": 212.5,
                          "flag": "N"}, ("gw-1", 9))
    early = SiteEvent(T0 + 60, SITE, "logger.hour", "reported_revision",
                      {"signal": "nox_mgm3", "data_time": dt, "old": 1.0, "new": 2.0,
                       "flag": "N"}, ("gw-1", 3))
    alerts = by_key(run_engine([early, ev_flag, ev_value], rules=["E6", "HJ212"]))
    assert set(alerts) == {f"E6|{SITE}|logger.hour|so2_mgm3|late_flag",
                           f"E3|{SITE}|logger.hour|so2_mgm3|revised"}
    rev = alerts[f"E3|{SITE}|logger.hour|so2_mgm3|revised"]
    assert rev["severity"] == "high" and rev["evidence"]["seconds_after_data_time"] == 7200
    assert rev["evidence"]["origins"][0] == {"gateway": "gw-1", "first_seq": 9, "last_seq": 9,
                                             "count": 1}


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="hiding_flags"):
        run_engine([], params={"HJ212": {"hiding_flags": ["X"]}})
    with pytest.raises(ValueError, match="unknown parameter"):
        run_engine([], params={"HJ212": {"tolerance": 1}})
    # a looser tolerance lets a 3 % offset through, the default does not
    recs = site_records(600, Tamper(scale={"a21026": 1.1}))
    assert run_engine(recs)
    assert run_engine(recs, params={"HJ212": {"rel_tol": 0.2}}) == []


def test_offline_detect_command_on_records(tmp_path: Path) -> None:
    recs = site_records(900, Tamper(scale={"a21026": 0.53},
                                    copy_from="a21002", copy_to=("a34013",)), rtd_every=10)
    records = tmp_path / "records.jsonl"
    write_records(records, recs)
    sites = tmp_path / "SITES.yaml"
    sites.write_text(yaml.safe_dump({"sites": {SITE: {
        "kind": "stack_cems", "location": {"lat": 32.0, "lon": 120.9}, "limits": LIMITS}}}))
    out = tmp_path / "alerts.jsonl"
    assert main(["detect", "--in", str(records), "--sites", str(sites), "--out", str(out),
                 "--rules", "HJ212"]) == 0
    keys = {json.loads(ln)["key"] for ln in out.read_text().splitlines()}
    assert {f"E3|{SITE}|logger|so2_mgm3|mismatch", f"E3|{SITE}|logger|pm_mgm3|mismatch",
            f"E3|{SITE}|logger|identical|nox_mgm3+pm_mgm3"} <= keys


def test_real_time_reports_do_not_wait_behind_an_hourly_mean() -> None:
    recs = site_records(300, Tamper(scale={"a21026": 0.5}), rtd_every=10)
    hour = logger_sample(T0, "2061", transmitted(canonical(T0)), 1, "Avg")
    eng = DetectionEngine({SITE: SiteInfo(SITE, "stack_cems", limits=LIMITS)}, None,
                          ["HJ212"])
    first: dict[str, float] = {}
    for r in sorted([hour, *recs], key=lambda r: r.time):
        for u in eng.feed(r):
            first.setdefault(u.alert.key, r.time)
    key = f"E3|{SITE}|logger|so2_mgm3|mismatch"
    assert first[key] - T0 <= 30  # third report (T0 + 20) judged 5 s later
