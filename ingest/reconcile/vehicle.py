"""Vehicle test results reported by a station versus the sealed 1 Hz process data.

The supervision platform receives one row per test (docs/reconciliation.md). The sealed
samples are assembled into tests exactly as the detectors assemble them
(:class:`ingest.detectors.segments.TestAssembler`) and scored with the same formulas the
lane uses (:mod:`stationseal.vehicle_results`), so that any difference comes from the
report, not from two ways of computing a mean. Three findings:

* ``R-MISMATCH`` — a reported value differs from the measured one by more than
  ``abs + rel × |measured|`` (per field), or the reported verdict differs from the verdict
  on the measured values, or the reported method is not what the instruments show;
* ``R-NOSEAL`` — a reported test has no sealed samples at all (a test that never ran);
* ``R-UNREPORTED`` — a sealed test never appears in the report. Only tests of a site that
  the report covers, and inside the time the report covers for that site (first start to
  last end, widened by ``time_s``), are judged, so a report for one day does not make the
  rest of the week "unreported".

Rows are matched to sealed tests by test id; rows whose id matches nothing are matched by
site, vehicle (plate or VIN) and start time within ``time_s``; tests without any lane
context (inferred from the signals) are matched by site, lane and overlapping time.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.detectors.base import Alert, SiteInfo
from ingest.detectors.segments import Second, TestAssembler, TestRecord, origins
from stationseal import vehicle_results as vres
from stationseal.records import TEST_METHODS, Sample, SiteEvent, from_rfc3339

REQUIRED_COLUMNS: tuple[str, ...] = (
    "test_id", "site", "lane", "vehicle", "vin", "method", "start", "end", "result")

#: Every result field any method reports (docs/reconciliation.md).
VALUE_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(
    f for m in TEST_METHODS for f in vres.RESULT_FIELDS[m]))

#: Chinese platforms often export the verdict in Chinese.
_RESULTS = {"pass": "pass", "fail": "fail", "合格": "pass", "不合格": "fail",
            "p": "pass", "f": "fail"}


class ReportError(ValueError):
    """A reported row that cannot be read: ``str()`` is ``FILE:LINE: COLUMN: why``."""


@dataclass(slots=True)
class ReportedTest:
    """One row of what a station reported to the supervision platform."""

    test_id: str
    site: str
    lane: str
    vehicle: str
    vin: str
    method: str
    start: float
    end: float
    result: str
    values: dict[str, float] = field(default_factory=dict)
    #: Where the row came from (``FILE:LINE``), cited in alerts.
    source: str = ""


@dataclass(slots=True)
class Tolerance:
    """How far a reported value may be from the measured one: ``abs + rel × |measured|``.

    The absolute floors are about one display step of each quantity (a report rounds).
    """

    rel: float = 0.05
    abs: dict[str, float] = field(default_factory=lambda: {
        "co_pct": 0.02, "co_pct_hi": 0.02, "hc_ppm": 3.0, "hc_ppm_hi": 3.0, "no_ppm": 10.0,
        "lambda_hi": 0.01, "co_gkm": 0.1, "hcnox_gkm": 0.05, "k_m1": 0.03,
        "opacity_pct": 1.0, "nox_ppm": 15.0})
    #: Matching window (s) for rows whose test id matches no sealed test.
    time_s: float = 300.0

    def allowed(self, fld: str, measured: float) -> float:
        return self.abs.get(fld, 0.0) + self.rel * abs(measured)


# --------------------------------------------------------------------------- reading


def parse_reported_rows(rows: Iterable[Mapping[str, Any]], source: str = "report",
                        first_line: int = 1) -> list[ReportedTest]:
    """Validate rows (CSV dicts or JSON objects); the first bad one raises ReportError.

    JSON rows may carry the values flat (like CSV columns) or in a ``values`` object.
    Empty cells mean "not reported". Unknown columns are an error, so that a misspelt
    pollutant column cannot silently go unchecked.
    """
    out: list[ReportedTest] = []
    known = set(REQUIRED_COLUMNS) | set(VALUE_COLUMNS) | {"values"}
    for n, row in enumerate(rows, first_line):
        where = f"{source}:{n}"
        if not isinstance(row, Mapping):
            raise ReportError(f"{where}: not an object")
        unknown = sorted(str(k) for k in row if k not in known)
        if unknown:
            raise ReportError(f"{where}: {unknown[0]}: unknown column (known: "
                              f"{', '.join(REQUIRED_COLUMNS + VALUE_COLUMNS)})")
        cells: dict[str, Any] = {k: v for k, v in row.items() if k != "values"}
        nested = row.get("values")
        if nested is not None:
            if not isinstance(nested, Mapping):
                raise ReportError(f"{where}: values: not an object")
            for k, v in nested.items():
                if k not in VALUE_COLUMNS:
                    raise ReportError(f"{where}: values.{k}: unknown result field")
                cells[str(k)] = v
        for col in REQUIRED_COLUMNS:
            v = cells.get(col)
            if v is None or (isinstance(v, str) and not v.strip()):
                if col in ("lane", "vin"):
                    cells[col] = ""
                    continue
                raise ReportError(f"{where}: {col}: missing")
        method = str(cells["method"]).strip()
        if method not in TEST_METHODS:
            raise ReportError(f"{where}: method: {method!r} is not one of "
                              f"{', '.join(TEST_METHODS)}")
        result = _RESULTS.get(str(cells["result"]).strip().lower())
        if result is None:
            raise ReportError(f"{where}: result: {cells['result']!r} is not pass or fail")
        times = {}
        for col in ("start", "end"):
            try:
                times[col] = from_rfc3339(str(cells[col]).strip())
            except ValueError as e:
                raise ReportError(f"{where}: {col}: {e}") from None
        if times["end"] < times["start"]:
            raise ReportError(f"{where}: end: before start")
        values: dict[str, float] = {}
        for col in VALUE_COLUMNS:
            v = cells.get(col)
            if v is None or (isinstance(v, str) and not v.strip()):
                continue
            try:
                x = float(v) if not isinstance(v, bool) else math.nan
            except (TypeError, ValueError):
                x = math.nan
            if not math.isfinite(x):
                raise ReportError(f"{where}: {col}: {v!r} is not a number")
            values[col] = x
        out.append(ReportedTest(
            test_id=str(cells["test_id"]).strip(), site=str(cells["site"]).strip(),
            lane=str(cells["lane"]).strip(), vehicle=str(cells["vehicle"]).strip(),
            vin=str(cells["vin"]).strip(), method=method, start=times["start"],
            end=times["end"], result=result, values=values, source=where))
    return out


def read_reported(path: str | Path) -> list[ReportedTest]:
    """A report file: CSV (header row), a JSON array of objects, or JSON Lines."""
    p = Path(path)
    text = p.read_text(encoding="utf-8-sig")
    name = str(path)
    if p.suffix.lower() == ".csv" or text.lstrip()[:1] not in ("[", "{"):
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None:
            raise ReportError(f"{name}:1: empty file")
        missing = [c for c in REQUIRED_COLUMNS if c not in reader.fieldnames]
        if missing:
            raise ReportError(f"{name}:1: {missing[0]}: missing column")
        # Line numbers in errors count the header as line 1.
        return parse_reported_rows(list(reader), name, first_line=2)
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ReportError(f"{name}:{e.lineno}: not valid JSON: {e.msg}") from None
        if not isinstance(data, list):
            raise ReportError(f"{name}:1: expected an array of test objects")
        return parse_reported_rows(data, name)
    parsed: list[ReportedTest] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{name}:{n}: not valid JSON: {e.msg}") from None
        parsed += parse_reported_rows([obj], name, first_line=n)
    return parsed


# --------------------------------------------------------------------------- reconciling


def assemble_tests(samples: Iterable[Sample], events: Iterable[SiteEvent]) -> list[TestRecord]:
    """Sealed tests from records (any order), as the detectors see them."""
    recs: list[tuple[float, int, Sample | SiteEvent]] = [(e.time, 0, e) for e in events]
    recs += [(s.time, 1, s) for s in samples]
    recs.sort(key=lambda r: (r[0], r[1]))
    asm = TestAssembler()
    tests: list[TestRecord] = []
    for _, _, r in recs:
        tests += asm.on_sample(r) if isinstance(r, Sample) else asm.on_event(r)
    return tests + asm.finish()


def reconcile_vehicle(
    reported_rows: Iterable[ReportedTest | Mapping[str, Any]],
    samples: Iterable[Sample],
    events: Iterable[SiteEvent],
    tolerance: Tolerance | float | None = None,
    sites: Mapping[str, SiteInfo] | None = None,
    asm_corrected: bool = False,
) -> list[Alert]:
    """Alerts R-MISMATCH / R-NOSEAL / R-UNREPORTED (module docstring), ordered by start.

    ``tolerance`` may be a :class:`Tolerance` or just its relative part. ``sites`` gives
    per-site limit overrides for the measured verdict. ``asm_corrected``: the platform
    reports ASM values corrected by the dilution and humidity factors.
    """
    tol = tolerance if isinstance(tolerance, Tolerance) else Tolerance(
        rel=0.05 if tolerance is None else float(tolerance))
    rows = [r if isinstance(r, ReportedTest) else parse_reported_rows([r], "row")[0]
            for r in reported_rows]
    tests = [t for t in assemble_tests(samples, events) if t.samples]
    by_id: dict[tuple[str, str], TestRecord] = {(t.site, t.id): t for t in tests}
    matched: dict[int, TestRecord] = {}
    used: set[int] = set()
    for i, r in enumerate(rows):
        t = by_id.get((r.site, r.test_id))
        if t is not None and id(t) not in used:
            matched[i] = t
            used.add(id(t))
    for i, r in enumerate(rows):
        if i in matched:
            continue
        t = _match_loose(r, tests, used, tol)
        if t is not None:
            matched[i] = t
            used.add(id(t))
    alerts: list[Alert] = []
    for i, r in enumerate(rows):
        t = matched.get(i)
        if t is None:
            alerts.append(_noseal(r))
        else:
            site = (sites or {}).get(r.site)
            a = _compare(r, t, tol, site.limits if site else None, asm_corrected)
            if a is not None:
                alerts.append(a)
    covered: dict[str, tuple[float, float]] = {}
    for r in rows:
        lo, hi = covered.get(r.site, (math.inf, -math.inf))
        covered[r.site] = (min(lo, r.start), max(hi, r.end))
    for t in tests:
        if id(t) in used or t.site not in covered:
            continue
        lo, hi = covered[t.site]
        if lo - tol.time_s <= t.start <= hi + tol.time_s:
            alerts.append(_unreported(t))
    alerts.sort(key=lambda a: (a.start, a.rule, a.site))
    return alerts


def _match_loose(r: ReportedTest, tests: Sequence[TestRecord], used: set[int],
                 tol: Tolerance) -> TestRecord | None:
    best: TestRecord | None = None
    best_d = math.inf
    for t in tests:
        if id(t) in used or t.site != r.site:
            continue
        same_vehicle = bool(r.vehicle and r.vehicle == t.vehicle) or bool(r.vin and r.vin == t.vin)
        if t.inferred and not t.vehicle and not t.vin:
            overlap = min(r.end, t.end) - max(r.start, t.start)
            if (r.lane and t.lane and r.lane != t.lane) or overlap < -tol.time_s:
                continue
            d = abs(t.start - r.start)
        elif same_vehicle:
            d = abs(t.start - r.start)
            if d > tol.time_s:
                continue
        else:
            continue
        if d < best_d:
            best, best_d = t, d
    return best


def _compare(r: ReportedTest, t: TestRecord, tol: Tolerance,
             limits: Mapping[str, float] | None, asm_corrected: bool) -> Alert | None:
    measured = vres.compute_results(
        t.method, [s.values for s in t.seconds], [s.phase for s in t.seconds],
        corrected=asm_corrected) if t.method in vres.PHASES else {}
    diffs: dict[str, dict[str, float]] = {}
    for fld, rep in r.values.items():
        if fld not in measured:
            continue
        meas = measured[fld]
        allowed = tol.allowed(fld, meas)
        if abs(rep - meas) > allowed:
            diffs[fld] = {"reported": rep, "measured": round(meas, 4),
                          "difference": round(rep - meas, 4), "tolerance": round(allowed, 4)}
    verdict = vres.verdict(t.method, measured, limits) if measured else None
    problems_en: list[str] = []
    problems_zh: list[str] = []
    if r.method != t.method and t.method in vres.PHASES:
        problems_en.append(f"method reported {r.method}, instruments show {t.method}")
        problems_zh.append(f"上报检测方法为{_mzh(r.method)}，仪器数据显示为{_mzh(t.method)}")
    if verdict is not None and r.method == t.method and verdict != r.result:
        problems_en.append(f"reported {r.result}, measured values {verdict}")
        problems_zh.append(f"上报结论为{_zh(r.result)}，实测结果为{_zh(verdict)}")
    for fld, d in diffs.items():
        problems_en.append(f"{fld} reported {d['reported']:g}, measured {d['measured']:g} "
                           f"(tolerance ±{d['tolerance']:g})")
        problems_zh.append(f"{fld} 上报 {d['reported']:g}，实测 {d['measured']:g}"
                           f"（允许偏差 ±{d['tolerance']:g}）")
    if not problems_en:
        return None
    strong = (verdict is not None and verdict == "fail" and r.result == "pass") or any(
        abs(d["difference"]) > 3 * d["tolerance"] for d in diffs.values())
    scored: list[Second] = t.scored() or t.seconds
    ev: dict[str, Any] = {
        "test_id": t.id, "reported_test_id": r.test_id, "report_row": r.source,
        "method": t.method, "vehicle": r.vehicle, "lane": t.lane,
        "reported_result": r.result, "measured_result": verdict, "fields": diffs,
        "measured": {k: round(v, 4) for k, v in measured.items()},
        "reported": dict(r.values), "tolerance_rel": tol.rel,
        "inferred_test": t.inferred, **origins(scored)}
    return Alert(
        rule="R-MISMATCH", severity="high" if strong else "medium", site=t.site,
        instrument=f"{t.lane}.lane" if t.lane else "lane", start=t.start, end=t.end,
        summary_en=f"Reported result differs from what the sealed instruments measured "
                   f"({r.vehicle}, test {r.test_id}): " + "; ".join(problems_en),
        summary_zh=f"上报监管平台的检测结果与封存仪器实测数据不符（{r.vehicle}，检测 "
                   f"{r.test_id}）：" + "；".join(problems_zh),
        evidence=ev, test_id=t.id, key=f"R-MISMATCH|{t.site}|{t.id}")


def _noseal(r: ReportedTest) -> Alert:
    return Alert(
        rule="R-NOSEAL", severity="high", site=r.site,
        instrument=f"{r.lane}.lane" if r.lane else "lane", start=r.start, end=r.end,
        summary_en=f"Reported {r.method} test {r.test_id} of {r.vehicle} ({r.result}) has no "
                   f"sealed instrument data: the test may never have run",
        summary_zh=f"上报的 {r.vehicle} 检测（{r.test_id}，{_mzh(r.method)}，结论{_zh(r.result)}）"
                   f"没有对应的封存仪器数据，疑似虚构检测",
        evidence={"reported_test_id": r.test_id, "report_row": r.source,
                  "vehicle": r.vehicle, "vin": r.vin, "method": r.method, "lane": r.lane,
                  "reported_result": r.result, "reported": dict(r.values)},
        test_id=r.test_id, key=f"R-NOSEAL|{r.site}|{r.test_id}")


def _unreported(t: TestRecord) -> Alert:
    measured = t.results()
    verdict = vres.verdict(t.method, measured) if measured else None
    ev: dict[str, Any] = {
        "test_id": t.id, "method": t.method, "vehicle": t.vehicle, "vin": t.vin,
        "lane": t.lane, "seconds": len(t.seconds), "measured_result": verdict,
        "lane_result": t.result, "measured": {k: round(v, 4) for k, v in measured.items()},
        "inferred_test": t.inferred, **origins(t.seconds)}
    return Alert(
        rule="R-UNREPORTED", severity="high" if verdict == "fail" else "medium", site=t.site,
        instrument=f"{t.lane}.lane" if t.lane else "lane", start=t.start, end=t.end,
        summary_en=f"Sealed {t.method or 'vehicle'} test {t.id} "
                   f"({t.vehicle or 'unknown vehicle'}, {len(t.seconds)} s"
                   f"{', measured ' + verdict if verdict else ''}) was never reported to the "
                   f"supervision platform",
        summary_zh=f"封存仪器数据中的检测 {t.id}（{t.vehicle or '车辆未知'}，{len(t.seconds)} 秒"
                   f"{'，实测' + _zh(verdict) if verdict else ''}）未上报监管平台，"
                   f"疑似隐瞒不合格检测或重复检测",
        evidence=ev, test_id=t.id, key=f"R-UNREPORTED|{t.site}|{t.id}")


def _zh(result: str | None) -> str:
    return {"pass": "合格", "fail": "不合格"}.get(result or "", "未知")


def _mzh(method: str) -> str:
    return vres.METHOD_ZH.get(method, method)
