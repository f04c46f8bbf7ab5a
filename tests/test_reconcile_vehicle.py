"""Reconciliation of reported vehicle results with sealed process data."""

from __future__ import annotations

import argparse
import csv
import functools
import json
import random
from pathlib import Path

import pytest

from ingest.detectors.io import write_records
from ingest.reconcile import cli
from ingest.reconcile.vehicle import (
    REQUIRED_COLUMNS,
    ReportError,
    parse_reported_rows,
    read_reported,
    reconcile_vehicle,
)
from sim.vehicle import reported_rows, simulate_station_day
from stationseal.records import Sample, from_rfc3339

T0 = 1_767_254_400.0


@functools.lru_cache(maxsize=1)
def _day() -> tuple[list, list]:
    samples, events, _ = simulate_station_day("S1", ["L1", "L2"], T0, random.Random(31),
                                              tests_per_lane=12)
    return samples, events


def _rows() -> list[dict]:
    return reported_rows(_day()[1])


def _rules(alerts) -> list[tuple[str, str | None]]:
    return sorted((a.rule, a.test_id) for a in alerts)


def test_faithful_report_matches() -> None:
    samples, events = _day()
    assert reconcile_vehicle(_rows(), samples, events) == []


def test_edited_value_is_a_mismatch() -> None:
    samples, events = _day()
    rows = _rows()
    row = next(r for r in rows if r["method"] in ("asm5025", "asm2540", "idle"))
    row["co_pct"] = round(row["co_pct"] * 0.5 + 0.1, 3) if row["co_pct"] > 0.3 else 0.9
    alerts = reconcile_vehicle(rows, samples, events)
    assert _rules(alerts) == [("R-MISMATCH", row["test_id"])]
    f = alerts[0].evidence["fields"]["co_pct"]
    assert f["reported"] == row["co_pct"] and abs(f["difference"]) > f["tolerance"]
    assert alerts[0].evidence["origins"] and alerts[0].evidence["report_row"] == "row:1"
    assert "不符" in alerts[0].summary_zh


def test_failed_test_reported_as_pass_is_high() -> None:
    samples, events = _day()
    rows = _rows()
    failed = [r for r in rows if r["result"] == "fail"]
    assert failed, "the simulated day has failing vehicles"
    failed[0]["result"] = "合格"  # platforms export Chinese verdicts too
    alerts = reconcile_vehicle(rows, samples, events)
    assert _rules(alerts) == [("R-MISMATCH", failed[0]["test_id"])]
    a = alerts[0]
    assert a.severity == "high"
    assert a.evidence["reported_result"] == "pass" and a.evidence["measured_result"] == "fail"


def test_unreported_and_unsealed_tests() -> None:
    samples, events = _day()
    rows = _rows()
    hidden = rows.pop(3)
    ghost = dict(rows[0], test_id="GHOST-1", vehicle="京A00000", vin="LGHOST00000000000",
                 start="2026-01-01T06:00:00Z", end="2026-01-01T06:03:15Z")
    rows.append(ghost)
    alerts = reconcile_vehicle(rows, samples, events)
    assert _rules(alerts) == sorted([("R-UNREPORTED", hidden["test_id"]),
                                     ("R-NOSEAL", "GHOST-1")])
    unrep = next(a for a in alerts if a.rule == "R-UNREPORTED")
    assert unrep.evidence["seconds"] > 20 and unrep.evidence["origins"]


def test_tests_outside_the_reported_time_are_not_unreported() -> None:
    """A report covering the first hour says nothing about the rest of the day."""
    samples, events = _day()
    rows = _rows()[:5]
    alerts = reconcile_vehicle(rows, samples, events)
    assert {a.rule for a in alerts} <= {"R-UNREPORTED"}
    lo = min(r["start"] for r in rows)
    hi = max(r["end"] for r in rows)
    for a in alerts:
        assert from_rfc3339(lo) - 300 <= a.start <= from_rfc3339(hi) + 300
    assert len(_rows()) - 5 > len(alerts) + 10


def test_platform_ids_differ_rows_match_by_vehicle_and_time() -> None:
    samples, events = _day()
    rows = _rows()
    for i, r in enumerate(rows):
        r["test_id"] = f"PLATFORM-{i}"
    assert reconcile_vehicle(rows, samples, events) == []


def test_untagged_instruments_match_by_lane_and_time() -> None:
    samples, _events = _day()
    bare = [Sample(s.time, s.site, s.instrument, s.values, s.flags, None, s.origin)
            for s in samples]
    rows = _rows()
    assert reconcile_vehicle(rows, bare, []) == []
    rows[2]["result"] = "fail" if rows[2]["result"] == "pass" else "pass"
    alerts = reconcile_vehicle(rows, bare, [])
    assert [a.rule for a in alerts] == ["R-MISMATCH"]
    assert alerts[0].evidence["reported_test_id"] == rows[2]["test_id"]
    assert alerts[0].evidence["inferred_test"] is True


def test_report_validation_names_row_and_column() -> None:
    good = _rows()[0]
    with pytest.raises(ReportError, match=r"^rep:1: method: 'asm' is not one of"):
        parse_reported_rows([dict(good, method="asm")], "rep")
    with pytest.raises(ReportError, match=r"^rep:1: start: .*no UTC offset"):
        parse_reported_rows([dict(good, start="2026-01-01T08:00:00")], "rep")
    with pytest.raises(ReportError, match=r"^rep:1: co_ppm: unknown column"):
        parse_reported_rows([dict(good, co_ppm=3)], "rep")
    with pytest.raises(ReportError, match=r"^rep:1: result: 'ok' is not pass or fail"):
        parse_reported_rows([dict(good, result="ok")], "rep")
    with pytest.raises(ReportError, match=r"^rep:2: hc_ppm: 'n/a' is not a number"):
        parse_reported_rows([good, dict(good, hc_ppm="n/a")], "rep")
    bad = dict(good)
    del bad["vehicle"]
    with pytest.raises(ReportError, match=r"^rep:1: vehicle: missing"):
        parse_reported_rows([bad], "rep")


def _write_csv(path: Path, rows: list[dict]) -> None:
    cols = list(REQUIRED_COLUMNS) + sorted({k for r in rows for k in r} - set(REQUIRED_COLUMNS))
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def test_csv_and_json_files(tmp_path: Path) -> None:
    rows = _rows()
    _write_csv(tmp_path / "r.csv", rows)
    (tmp_path / "r.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "r.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    parsed = [read_reported(tmp_path / n) for n in ("r.csv", "r.json", "r.jsonl")]
    assert [len(p) for p in parsed] == [len(rows)] * 3
    assert parsed[0][0].values == parsed[1][0].values == parsed[2][0].values
    rows[4]["method"] = "ida"
    _write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(ReportError, match=r"bad\.csv:6: method"):  # header is line 1
        read_reported(tmp_path / "bad.csv")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples, events = _day()
    rows = _rows()
    rows[1]["result"] = "fail" if rows[1]["result"] == "pass" else "pass"
    _write_csv(tmp_path / "rep.csv", rows)
    write_records(tmp_path / "rec.jsonl", sorted([*samples, *events], key=lambda r: r.time))
    p = argparse.ArgumentParser()
    cli.register(p)
    args = p.parse_args(["--reported", str(tmp_path / "rep.csv"), "--in",
                         str(tmp_path / "rec.jsonl"), "--out", str(tmp_path / "alerts.jsonl")])
    assert args.func(args) == 0
    out = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(a["rule"], a["test_id"]) for a in out] == [("R-MISMATCH", rows[1]["test_id"])]
    assert "1 mismatched" in capsys.readouterr().err
    args = p.parse_args(["--reported", str(tmp_path / "nope.csv"), "--in",
                         str(tmp_path / "rec.jsonl")])
    with pytest.raises(cli.UsageError, match=r"nope\.csv: cannot read"):
        args.func(args)
