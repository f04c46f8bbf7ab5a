"""Grafana dashboards: JSON and provisioning consistency, every InfluxQL query run against
the real InfluxDB after the ingest's line builder wrote representative data, and the API
upload against a recording HTTP server (no Grafana server exists in Debian; the fake
stands in for the upload path only, never for query semantics)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519

from dashboards import catalog
from dashboards.check import (
    ALL,
    QueryResult,
    VarState,
    check_dashboard,
    escape_regex,
    http_runner,
    interpolate,
    interval_ms,
)
from dashboards.grafana import BuildContext, validate, variable_refs
from dashboards.provisioning import Sources, datasources_yaml, render, write
from ingest.config import InfluxConfig
from ingest.convert import LineBuilder, alert_line, integrity_line
from ingest.detectors.base import Alert, SiteInfo
from ingest.influx import V1Writer
from ingest.metrics import Metrics, MetricsServer
from stack.manager import StackInfo
from stationseal.cli import main as cli_main
from stationseal.frame import ZERO_HASH, Frame, seal
from stationseal.records import Event, Reading
from stationseal.signing import Ed25519Signer

LANE, STACK, AIR = "V-LANE-1", "S-STACK-1", "A.AIR-1"  # AIR: a regex metacharacter (names allow . _ -)
SITES = {
    STACK: SiteInfo(STACK, "stack_cems", 39.9, 116.4, {"so2_mgm3": 35.0, "nox_mgm3": 50.0}),
    AIR: SiteInfo(AIR, "air_quality", 39.9, 116.5, {"pm25_ugm3": 75.0}),
    LANE: SiteInfo(LANE, "vehicle_inspection", 39.8, 116.3),
}
CTX = BuildContext()
FLUX = BuildContext(flavor="flux", influx_uid="stationseal-flux")


# --------------------------------------------------------------------------- data


class Gateway:
    """Seals frames like an agent, so the lines come from real frames through the
    ingest's LineBuilder (the same code the ingest pipeline runs)."""

    def __init__(self, gw: str, site: str):
        self.gw, self.site = gw, site
        self.signer = Ed25519Signer(ed25519.Ed25519PrivateKey.from_private_bytes(
            bytes([len(gw)]) * 32))
        self.seq = 0
        self.prev = ZERO_HASH

    def frame(self, t: float, readings: list[Reading], events: Sequence[Event] = ()
              ) -> Frame:
        self.seq += 1
        f = seal(self.signer, gateway_id=self.gw, site=self.site, boot_id=b"\x01" * 16,
                 seq=self.seq, prev_hash=self.prev, created=t, clock_sync="synced",
                 readings=readings, events=list(events))
        self.prev = f.frame_hash
        return f


def _lane_sample(t: float, i: int, q: str = "N") -> list[Reading]:
    speed = min(25.0, i * 2.5)
    co, co2 = 0.3 + 0.01 * (i % 5), 14.2 - 0.02 * (i % 7)
    vals = {"co_pct": (co, "%vol"), "co2_pct": (co2, "%vol"), "hc_ppm": (40.0 + i % 9, "ppm"),
            "no_ppm": (300.0 + i, "ppm"), "o2_pct": (0.4, "%vol"), "lambda": (1.01, "1")}
    out = [Reading("analyzer-1", s, v, u, t, q) for s, (v, u) in vals.items()]
    out += [Reading("dyno-1", "speed_kmh", speed, "km/h", t, q),
            Reading("dyno-1", "target_speed_kmh", 25.0, "km/h", t, q),
            Reading("dyno-1", "power_kw", 5.0 + speed / 10, "kW", t, q)]
    return out


def representative_lines(now: float) -> list[str]:
    """Three sites over the last 3 h: a vehicle lane with two tests (one of them with a
    forked second history), a stack CEMS with a maintenance period, a calibration change
    and a signed drop, an air station whose gateway went silent 40 minutes ago; integrity
    findings of each kind; alerts of each severity."""
    lb = LineBuilder()
    lines: list[str] = []
    lane = Gateway("gw-lane-1", LANE)
    for test_id, start, n in (("T-0001", now - 600, 60), ("T-0002", now - 120, 30)):
        detail = {"test_id": test_id, "method": "asm5025", "vehicle": "京A12345", "lane": "L1"}
        for i in range(n):
            t = start + i
            ev: list[Event] = []
            if i == 0:
                ev = [Event("lane-1", "test_start", t, detail)]
            elif i == n - 1:
                ev = [Event("lane-1", "test_end", t, {**detail, "result": "pass"})]
            q = "C" if test_id == "T-0001" and 10 <= i < 13 else "N"
            ctl = [Reading("L1.lane", "lane_test_state", 1 if i < n - 1 else 2, "1", t),
                   Reading("L1.lane", "lane_test_id", int(test_id[-1]), "1", t)]
            lines += lb.frame_lines(lane.frame(t + 0.5, _lane_sample(t, i, q) + ctl, ev))
    # A second history for one sequence number of the lane gateway: stored apart.
    forked = Gateway("gw-lane-1", LANE)
    forked.seq, forked.prev = 5, b"\x0b" * 32  # links to a predecessor nobody has seen
    lines += lb.frame_lines(forked.frame(now - 590, _lane_sample(now - 590, 5)),
                            branch="fork-0badf00d")

    stack = Gateway("gw-stack-1", STACK)
    for k in range(180):
        t = now - 3 * 3600 + 60 * k + 30
        q = "M" if 60 <= k < 80 else "N"
        r = [Reading("cems-1", "so2_mgm3", 30.0 + (k % 6), "mg/m³", t, q),
             Reading("cems-1", "nox_mgm3", 40.0 + (k % 4), "mg/m³", t, q),
             Reading("cems-1", "pm_mgm3", 5.0, "mg/m³", t, q),
             Reading("cems-1", "o2_stack_pct", 9.5, "%vol", t, q),
             Reading("cems-1", "flow_m3h", 120000.0, "m³/h", t, q),
             Reading("cems-1", "flue_temp_c", 60.0, "°C", t, q)]
        ev = []
        if k == 120:
            ev = [Event("cems-1", "calibration_change", t,
                        {"signal": "span_coeff.so2_mgm3", "old": 1.0, "new": 0.8})]
        if k == 150:
            ev = [Event("gateway", "data_dropped", t, {"first_seq": 140, "last_seq": 141,
                                                "frames": 2, "readings": 12,
                                                "last_hash": "00" * 32})]
        lines += lb.frame_lines(stack.frame(t, r, ev))

    air = Gateway("gw-old-1", AIR)
    for k in range(28):
        t = now - 3 * 3600 + 300 * k
        q = "D" if k == 3 else "N"
        ev = [Event("aqm-1", "config_change", t, {"signal": "interval", "old": 60,
                                                   "new": 300})] if k == 10 else []
        lines += lb.frame_lines(air.frame(t, [
            Reading("aqm-1", s, v + k, u, t, q) for s, v, u in (
                ("pm25_ugm3", 35.0, "µg/m³"), ("pm10_ugm3", 60.0, "µg/m³"),
                ("so2_ugm3", 8.0, "µg/m³"), ("no2_ugm3", 30.0, "µg/m³"),
                ("o3_ugm3", 90.0, "µg/m³"), ("co_mgm3", 0.6, "mg/m³"))], ev))

    def ns(t: float) -> int:
        return int(t * 1e9)

    lines += [
        integrity_line(kind="gap", severity="medium", site=STACK, gateway="gw-stack-1",
                       seq=77, detail={"missing": [77]}, ts_ns=ns(now - 3000)),
        integrity_line(kind="fork", severity="high", site=LANE, gateway="gw-lane-1", seq=5,
                       detail={"hash": "ab"}, ts_ns=ns(now - 590)),
        integrity_line(kind="bad_signature", severity="high", site=STACK,
                       gateway="gw-stack-1", seq=99, detail={"detail": "sig"},
                       ts_ns=ns(now - 2000), quarantine_id=1),
        integrity_line(kind="duplicate", severity="low", site=STACK, gateway="gw-stack-1",
                       seq=98, detail={}, ts_ns=ns(now - 1900)),
    ]
    alerts = [
        Alert("V1", "high", LANE, "analyzer-1", now - 590, now - 560,
              "CO+CO2 below 6 %", "CO+CO2 低于 6 %", {"min": 4.2}, test_id="T-0001"),
        Alert("V8", "medium", LANE, "dyno-1", now - 110, now - 100,
              "power mismatch", "功率不符", {}, test_id="T-0002"),
        Alert("E5", "medium", STACK, "cems-1", now - 7200, now - 3600,
              "held under limit", "贴限排放", {"share": 0.7}),
        Alert("integrity", "high", STACK, "", now - 2000, now - 2000,
              "Data integrity: bad_signature", "数据完整性异常", {}),
        Alert("E1", "low", AIR, "aqm-1", now - 9000, now - 8000,
              "below neighbours", "低于周边站点", {}),
    ]
    for a in alerts:
        doc = {**a.to_json(), "state": "new", "count": 1, "key": a.key}
        lines.append(alert_line(doc, a.start))
    return lines


@pytest.fixture(scope="module")
def influx(stack: StackInfo) -> Iterator[tuple[StackInfo, str, float]]:
    """A database of its own in the session stack, filled once for the module."""
    db = f"dash_{uuid.uuid4().hex[:8]}"
    w = V1Writer(InfluxConfig(url=stack.influx_url, database=db))
    w.create_database()
    now = time.time()
    w.write(representative_lines(now))
    try:
        yield stack, db, now
    finally:
        w.query(f'DROP DATABASE "{db}"')
        w.close()


CHOICES = {
    catalog.UID_SITE: {"site": [STACK]},
    catalog.UID_LANE: {"site": [LANE], "test_id": ["T-0001"]},
    catalog.UID_ENV: {"site": [STACK]},
}


@pytest.fixture(scope="module")
def checked(influx: tuple[StackInfo, str, float]) -> dict[str, Any]:
    stack, db, now = influx
    run = http_runner(stack.influx_url, db)
    end = int(now * 1000) + 60_000
    return {uid: check_dashboard(d, run, start_ms=end - 6 * 3600_000, end_ms=end,
                                 choices=CHOICES.get(uid))
            for uid, d in render(CTX, SITES).items()}


def _result(checked: dict[str, Any], uid: str, where: str) -> QueryResult:
    hits = [r for r in checked[uid].results if where in r.where]
    assert len(hits) == 1, f"{uid}: {len(hits)} results match {where!r}: " \
                           f"{[r.where for r in checked[uid].results]}"
    hit: QueryResult = hits[0]
    return hit


def _scalar(r: QueryResult) -> Any:
    assert r.ok, r.error
    rows = r.rows()
    assert len(rows) == 1, rows
    return next(v for k, v in rows[0].items() if k != "time")


# --------------------------------------------------------------------------- stack tests


@pytest.mark.stack
def test_every_query_parses_and_returns_data(checked: dict[str, Any]) -> None:
    problems = [f"{r.dashboard}: {r.where}: {r.error or 'empty'}\n    {r.query}"
                for c in checked.values() for r in c.results if not r.ok or r.empty]
    assert not problems, "\n".join(problems)
    n = sum(len(c.results) for c in checked.values())
    assert n > 80, n  # every panel, repeat, variable and annotation was run


@pytest.mark.stack
def test_overview_counts_match_the_data(checked: dict[str, Any]) -> None:
    uid = catalog.UID_OVERVIEW
    assert _scalar(_result(checked, uid, "Sites reporting")) == 3
    assert _scalar(_result(checked, uid, "Gateways online")) == 2  # gw-old-1 silent 40 min
    assert _scalar(_result(checked, uid, "Gateways seen")) == 3
    assert _scalar(_result(checked, uid, "Sequence gaps")) == 1
    assert _scalar(_result(checked, uid, "Forks and resets")) == 1
    assert _scalar(_result(checked, uid, "Quarantined frames")) == 1
    assert _scalar(_result(checked, uid, "Data dropped at gateways / 网关丢弃数据")) == 1
    assert _scalar(_result(checked, uid, "High-severity alerts in range")) == 2
    assert _scalar(_result(checked, uid, "Integrity events (medium, high) / 完整性事件'")) == 3
    table = [r for r in checked[uid].results if "High-severity" in r.where and r.rows()
             and "summary_en" in r.rows()[0]]
    assert {row["rule"] for row in table[0].rows()} == {"V1", "integrity"}
    activity = _result(checked, uid, "Gateway activity")
    old = [row for row in activity.rows() if row["gateway"] == "gw-old-1"]
    assert any(row["count"] == 0 for row in old), "a silent gateway must show empty buckets"
    assert any(row["count"] > 0 for row in old)
    rate = _result(checked, uid, "Readings per second")
    assert rate.tag_values("site") == {LANE, STACK, AIR}
    assert max(row["sum"] for row in rate.rows()) > 0


@pytest.mark.stack
def test_site_detail_variables_and_escaping(checked: dict[str, Any],
                                            influx: tuple[StackInfo, str, float]) -> None:
    c = checked[catalog.UID_SITE]
    assert c.variables["site"].options == sorted([LANE, STACK, AIR])
    assert c.variables["instrument"].options == ["cems-1"]
    assert set(c.variables["signal"].options) == {"so2_mgm3", "nox_mgm3", "pm_mgm3",
                                                  "o2_stack_pct", "flow_m3h", "flue_temp_c"}
    repeated = {m.group(1): r for r in c.results
                if (m := re.fullmatch(r"panel \d+ '(\w+)' A", r.where))}
    assert set(repeated) == set(c.variables["signal"].options)  # repeat over "All"
    assert all(r.rows() and r.tag_values("instrument") == {"cems-1"}
               for r in repeated.values())
    # A site id with regex and path characters selects exactly that site.
    stack, db, now = influx
    end = int(now * 1000) + 60_000
    dash = render(CTX)[catalog.UID_SITE]
    air = check_dashboard(dash, http_runner(stack.influx_url, db),
                          start_ms=end - 6 * 3600_000, end_ms=end, choices={"site": [AIR]})
    assert [r for r in air.results if not r.ok] == []
    assert air.variables["instrument"].options == ["aqm-1"]
    sig = [r for r in air.results if "'pm25_ugm3' A" in r.where]
    assert sig and sig[0].rows()


@pytest.mark.stack
def test_vehicle_lane_test_selection(checked: dict[str, Any]) -> None:
    c = checked[catalog.UID_LANE]
    assert c.variables["site"].options == [LANE]  # only sites that run tests
    assert c.variables["test_id"].options == ["T-0002", "T-0001"]  # newest first
    sel = _result(checked, catalog.UID_LANE, "Selected test")
    assert sel.rows() and all('"test_id":"T-0001"' in r["detail"] for r in sel.rows())
    assert {r["kind"] for r in sel.rows()} == {"test_start", "test_end"}
    alerts = _result(checked, catalog.UID_LANE, "Alerts for the selected test")
    assert [r["rule"] for r in alerts.rows()] == ["V1"]
    co = _result(checked, catalog.UID_LANE, "'CO / 一氧化碳' A")
    assert co.tag_values("branch") == {"", "fork-0badf00d"}  # the second history, apart
    probe = _result(checked, catalog.UID_LANE, "CO + CO2")
    sums = [r["sum"] for r in probe.rows()]
    assert sums and all(14.0 < s < 15.0 for s in sums)  # co + co2 per second, main only
    tests = _result(checked, catalog.UID_LANE, "Tests in range")
    assert len(tests.rows()) == 4
    state = _result(checked, catalog.UID_LANE, "Lane controller / 检测线控制器' A")
    assert {r["last"] for r in state.rows()} == {1.0, 2.0}


@pytest.mark.stack
def test_environment_limits_and_hourly_means(checked: dict[str, Any]) -> None:
    c = checked[catalog.UID_ENV]
    assert AIR in c.variables["site"].options and LANE not in c.variables["site"].options
    assert c.variables["pollutant"].options == ["nox_mgm3", "pm_mgm3", "so2_mgm3"]
    hourly = [r for r in c.results if r.where.endswith(" B")
              and "so2_mgm3" in r.where]
    assert len(hourly) == 1
    rows = hourly[0].rows()
    # 3 h of minute data, 20 minutes flagged M: hourly means over valid data only.
    assert 3 <= len(rows) <= 4 and all(30.0 <= r["mean"] <= 35.0 for r in rows)
    site = checked[catalog.env_uid(STACK)]
    assert site.variables["site"].options == [STACK]
    assert not [r for r in site.results if not r.ok]


@pytest.mark.stack
def test_check_command_against_the_stack(influx: tuple[StackInfo, str, float],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    stack, db, _ = influx
    rc = cli_main(["dashboards", "check", "--influx-url", stack.influx_url, "--database", db,
                   "--var", f"site={STACK}", "--dashboard", catalog.UID_OVERVIEW,
                   "--dashboard", catalog.UID_SITE, "--dashboard", catalog.UID_LANE,
                   "--require-data"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"{catalog.UID_SITE}: " in out and " 0 errors, 0 empty" in out
    # STACK runs no vehicle tests: the lane dashboard falls back to its default site.
    assert f"note  {catalog.UID_LANE}: variable site: ['{STACK}'] not among" in out
    rc = cli_main(["dashboards", "check", "--influx-url", stack.influx_url, "--database",
                   f"{db}_missing", "--dashboard", catalog.UID_OVERVIEW])
    out = capsys.readouterr().out
    assert rc == 1 and "ERROR" in out and "database not found" in out


# --------------------------------------------------------------------------- JSON


@pytest.mark.parametrize("ctx", [CTX, FLUX], ids=["influxql", "flux"])
def test_dashboards_are_consistent(ctx: BuildContext) -> None:
    dashes = render(ctx, SITES)
    assert set(dashes) >= {catalog.UID_OVERVIEW, catalog.UID_SITE, catalog.UID_LANE,
                           catalog.UID_ENV, catalog.UID_INGEST, catalog.env_uid(STACK),
                           catalog.env_uid(AIR)}
    assert catalog.env_uid(LANE) not in dashes  # vehicle sites have the lane dashboard
    for uid, d in dashes.items():
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", uid), uid
        assert json.loads(json.dumps(d)) == d
        assert " / " in d["title"] and re.search(r"[\u4e00-\u9fff]", d["title"]), d["title"]
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids))
        for p in d["panels"]:
            if p["type"] == "row":
                continue
            assert re.search(r"[\u4e00-\u9fff]", p["title"]) or p["title"].startswith("$"), \
                p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] in (ctx.influx_uid, ctx.prometheus_uid)
                text = t.get("query") or t["expr"]
                if t["datasource"]["type"] == "influxdb" and ctx.flavor == "flux":
                    _flux_shape(text)
                elif t["datasource"]["type"] == "influxdb":
                    assert text.startswith("SELECT "), text
                    assert "$timeFilter" in text or "now() - 5m" in text, text
        assert validate(d, (ctx.influx_uid, ctx.prometheus_uid)) == []


def _flux_shape(q: str) -> None:
    """No Flux engine here (InfluxDB 1.6): check what can be checked without one."""
    assert q.startswith(("from(bucket: v.defaultBucket)", 'import "influxdata')), q
    assert "$timeFilter" not in q and "$__interval" not in q and "$site" not in q, q
    for o, c in ("()", "[]", "{}"):
        assert q.count(o) == q.count(c), (o, q)
    if q.startswith("from("):
        assert "range(start: " in q and "v.timeRangeStop" in q


def test_validate_reports_what_grafana_would_not() -> None:
    d = render(CTX)[catalog.UID_SITE]
    d["panels"][2]["id"] = d["panels"][1]["id"]
    d["panels"][1]["targets"][0]["query"] += " AND $nosuchvar"
    d["panels"][4]["targets"][0]["datasource"] = {"type": "influxdb", "uid": "other"}
    d["panels"][5]["gridPos"] = {**d["panels"][4]["gridPos"], "w": 6}
    errs = "\n".join(validate(d, (CTX.influx_uid, CTX.prometheus_uid)))
    assert f"overlaps panel {d['panels'][4]['id']}" in errs
    assert "not unique" in errs
    assert "undefined variable(s) ['nosuchvar']" in errs
    assert "'other'" in errs


def test_variable_refs_skip_grafana_builtins() -> None:
    q = 'SELECT mean("v") FROM x WHERE "s" =~ /^${site:regex}$/ AND $timeFilter ' \
        'GROUP BY time($__interval) [[sig]] $tag_site'
    assert variable_refs(q) == {"site", "sig"}


def test_interpolation_follows_grafana() -> None:
    site = VarState("site", ["a.b", "c/d"], ["a.b"])
    many = VarState("sig", ["x", "y+z"], ["x", "y+z"], multi=True, include_all=True,
                    all_value=".*")
    every = VarState("inst", ["p", "q"], [ALL], multi=True, include_all=True, all_value=".*")
    listed = VarState("lst", ["p", "q"], [ALL], multi=True, include_all=True)
    v = {x.name: x for x in (site, many, every, listed)}
    assert interpolate("/^${site:regex}$/", v, {}) == r"/^a\.b$/"
    assert interpolate("$site", v, {}) == "a.b"  # single value, default format: raw
    assert interpolate("/^$sig$/", v, {}) == r"/^(x|y\+z)$/"
    assert interpolate("/^${inst:regex}$/", v, {}) == "/^.*$/"  # custom all value, as is
    assert interpolate("/^${lst:regex}$/", v, {}) == "/^(p|q)$/"
    assert interpolate("time($__interval) $unknown", v, {"__interval": "1m"}) == \
        "time(1m) $unknown"
    assert escape_regex("c/d") == r"c\/d"
    assert interval_ms(6 * 3600_000, 1000) == 20_000
    assert interval_ms(60_000, 1000, "1s") == 1000
    assert interval_ms(2 * 86_400_000, 1000, "5m") == 300_000


# --------------------------------------------------------------------------- build + YAML


def test_build_writes_dashboards_and_provisioning(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    sites = tmp_path / "SITES.yaml"
    sites.write_text(yaml.safe_dump({"sites": {
        STACK: {"kind": "stack_cems", "location": {"lat": 39.9, "lon": 116.4},
                "limits": {"so2_mgm3": 35.0}}}}), encoding="utf-8")
    out = tmp_path / "grafana"
    (out / "dashboards").mkdir(parents=True)
    (out / "dashboards" / "stationseal-env-gone.json").write_text("{}")
    (out / "dashboards" / "mine.json").write_text("{}")
    assert cli_main(["dashboards", "build", "--out", str(out), "--sites", str(sites),
                     "--influx-user", "grafana"]) == 0
    files = sorted(p.name for p in (out / "dashboards").glob("*.json"))
    assert "stationseal-env-gone.json" not in files and "mine.json" in files
    assert f"{catalog.env_uid(STACK)}.json" in files
    site_dash = json.loads((out / "dashboards" / f"{catalog.env_uid(STACK)}.json").read_text())
    so2 = next(p for p in site_dash["panels"] if "(so2_mgm3," in p["title"])
    steps = [s["value"] for s in so2["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, pytest.approx(31.5), 35.0]

    prov = yaml.safe_load((out / "provisioning/dashboards/stationseal.yaml").read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]) == (out / "dashboards").resolve()
    ds = yaml.safe_load((out / "provisioning/datasources/stationseal.yaml").read_text())
    by_uid = {d["uid"]: d for d in ds["datasources"]}
    assert set(by_uid) == {CTX.influx_uid, CTX.prometheus_uid}
    influx = by_uid[CTX.influx_uid]
    assert influx["jsonData"]["dbName"] == "stationseal" and influx["user"] == "grafana"
    assert influx["secureJsonData"]["password"] == "${STATIONSEAL_INFLUX_PASSWORD}"
    used = {t["datasource"]["uid"] for f in (out / "dashboards").glob("stationseal-*.json")
            for p in json.loads(f.read_text())["panels"] for t in p.get("targets", [])}
    assert used == set(by_uid)
    capsys.readouterr()

    assert cli_main(["dashboards", "build", "--out", str(tmp_path / "f"), "--flavor", "flux",
                     "--org", "epa", "--bucket", "raw"]) == 0
    ds = yaml.safe_load((tmp_path / "f/provisioning/datasources/stationseal.yaml").read_text())
    flux = ds["datasources"][0]
    assert flux["uid"] == "stationseal-flux" and flux["jsonData"]["version"] == "Flux"
    assert flux["jsonData"]["defaultBucket"] == "raw"
    assert flux["secureJsonData"] == {"token": "${STATIONSEAL_INFLUX_TOKEN}"}


def test_build_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "SITES.yaml"
    bad.write_text("sites:\n  x:\n    kind: stack_cems\n    location: {lat: 1, lon: 2}\n"
                   "    limits: {so2_mgm: 35}\n", encoding="utf-8")
    assert cli_main(["dashboards", "build", "--out", str(tmp_path), "--sites", str(bad)]) == 2
    assert "so2_mgm" in capsys.readouterr().err
    assert cli_main(["dashboards", "build", "--out", str(tmp_path), "--datasource-uid",
                     "stationseal-prometheus"]) == 2


def test_datasource_yaml_has_no_secrets() -> None:
    text = yaml.safe_dump(datasources_yaml(CTX, Sources(influx_user="u")))
    assert "${STATIONSEAL_INFLUX_PASSWORD}" in text


def test_write_is_idempotent(tmp_path: Path) -> None:
    a = write(tmp_path, CTX, Sources())
    before = {p: p.read_bytes() for p in a}
    b = write(tmp_path, CTX, Sources())
    assert a == b and {p: p.read_bytes() for p in b} == before


# --------------------------------------------------------------------------- upload


class FakeGrafana:
    """Records API requests and answers like Grafana 11 for the calls the upload makes."""

    def __init__(self, fail: dict[str, int] | None = None):
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.folders: set[str] = set()
        self.datasources: set[str] = set()
        self.fail = fail or {}
        fake = self

        class H(BaseHTTPRequestHandler):
            def _do(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                fake.requests.append((self.command, self.path, dict(self.headers), body))
                code, resp = fake.answer(self.command, self.path, body)
                data = json.dumps(resp).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _do

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        for prefix, code in self.fail.items():
            if f"{method} {path}".startswith(prefix):
                return code, {"message": "refused by test"}
        if path == "/api/frontend/settings":
            return 200, {"buildInfo": {"version": "11.2.0"}}
        if method == "GET" and path.startswith("/api/folders/"):
            uid = path.rsplit("/", 1)[1]
            return (200, {"uid": uid}) if uid in self.folders else (404, {"message": "nf"})
        if method == "POST" and path == "/api/folders":
            self.folders.add(body["uid"])
            return 200, {"uid": body["uid"], "title": body["title"]}
        if method == "GET" and path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[1]
            return (200, {"uid": uid}) if uid in self.datasources else (404, {"message": "nf"})
        if method == "POST" and path == "/api/datasources":
            self.datasources.add(body["uid"])
            return 200, {"datasource": body}
        if method == "PUT" and path.startswith("/api/datasources/uid/"):
            return 200, {"datasource": body}
        if method == "POST" and path == "/api/dashboards/db":
            uid = body["dashboard"]["uid"]
            return 200, {"status": "success", "uid": uid, "url": f"/d/{uid}/x", "version": 1}
        return 404, {"message": f"no route {method} {path}"}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_grafana() -> Iterator[FakeGrafana]:
    pytest.importorskip("grafana_client", reason="grafana-client (dashboards extra) missing")
    g = FakeGrafana()
    yield g
    g.close()


def test_provision_uploads_folder_datasources_and_dashboards(
        fake_grafana: FakeGrafana, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    tok = tmp_path / "token"
    tok.write_text("glsa_test\n")
    monkeypatch.setenv("STATIONSEAL_INFLUX_PASSWORD", "s3cret")
    args = ["dashboards", "provision", "--url", fake_grafana.url, "--token-file", str(tok),
            "--with-datasources", "--influx-user", "grafana"]
    assert cli_main(args) == 0
    posted = [b for m, p, h, b in fake_grafana.requests if p == "/api/dashboards/db"]
    expected = render(CTX)
    assert [b["dashboard"]["uid"] for b in posted] == list(expected)
    for b in posted:
        assert b["overwrite"] is True and b["folderUid"] == "stationseal"
        assert b["dashboard"] == {**expected[b["dashboard"]["uid"]], "id": None}
    assert all(h.get("Authorization") == "Bearer glsa_test"
               for _, _, h, _ in fake_grafana.requests)
    ds = [b for m, p, h, b in fake_grafana.requests if p == "/api/datasources"]
    assert {d["uid"] for d in ds} == {CTX.influx_uid, CTX.prometheus_uid}
    assert next(d for d in ds if d["type"] == "influxdb")["secureJsonData"] == {
        "password": "s3cret"}
    assert "/d/stationseal-overview/x" in capsys.readouterr().out
    # Second run: folder and datasources exist -> updated in place, not created again.
    n = len(fake_grafana.requests)
    assert cli_main(args) == 0
    again = [(m, p) for m, p, _, _ in fake_grafana.requests[n:]]
    assert ("POST", "/api/folders") not in again
    assert ("PUT", f"/api/datasources/uid/{CTX.influx_uid}") in again


def test_provision_reports_refusal(fake_grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", "t")
    fake_grafana.fail = {"POST /api/dashboards/db": 403}
    assert cli_main(["dashboards", "provision", "--url", fake_grafana.url]) == 1
    err = capsys.readouterr().err
    assert "stationseal-overview" in err and "403" in err and "refused by test" in err


def test_provision_unreachable_and_usage(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("grafana_client")
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    assert cli_main(["dashboards", "provision", "--url", "http://127.0.0.1:1"]) == 2
    monkeypatch.setenv("GRAFANA_TOKEN", "t")
    assert cli_main(["dashboards", "provision", "--url", "http://127.0.0.1:1",
                     "--timeout", "2"]) == 1
    assert "not reachable" in capsys.readouterr().err


def test_provision_without_grafana_client(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "grafana_client", None)
    monkeypatch.setenv("GRAFANA_TOKEN", "t")
    assert cli_main(["dashboards", "provision", "--url", "http://127.0.0.1:1"]) == 1
    assert "pip install 'grafana-client>=4'" in capsys.readouterr().err


# --------------------------------------------------------------------------- Prometheus


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the ingest's own /metrics endpoint (ingest.metrics) every
    second while counters move, so rate() and histogram_quantile() have data."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package 'prometheus')")
    m = Metrics()
    server = MetricsServer("127.0.0.1", 0, m.render, lambda: {"ok": True}).start()
    stop = threading.Event()

    def churn() -> None:
        while not stop.wait(0.1):
            m.inc("frames_total", 5, result="accepted")
            m.inc("frames_total", result="duplicate")
            m.inc("readings_total", 40)
            m.inc("verification_failures_total", reason="bad_signature")
            m.inc("chain_events_total", kind="gap")
            m.inc("alerts_total", rule="V1", state="new")
            m.inc("write_batches_total", result="ok")
            m.inc("write_retries_total")
            m.inc("write_rejected_lines_total")
            m.inc("webhook_deliveries_total", result="ok")
            m.inc("registry_reloads_total", result="ok")
            m.set("influx_up", 1)
            m.set("mqtt_connected", 1)
            m.set("backlog_messages", 12)
            m.set("webhook_outbox", 0)
            m.observe("write_latency_seconds", 0.02)
            m.observe("reading_latency_seconds", 0.7)

    threading.Thread(target=churn, daemon=True).start()
    d = tmp_path_factory.mktemp("prometheus")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = d / "prometheus.yml"
    cfg.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "stationseal-ingest",
                            "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}],
    }))
    proc = subprocess.Popen(
        [binary, f"--config.file={cfg}", f"--storage.tsdb.path={d / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=(d / "log").open("wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        # Prometheus 2.42 scrapes a new target only after ~5 s (discovery update delay);
        # three scrapes give rate() two samples in any 4 s window.
        while True:
            try:
                r = _prom(url, "count_over_time(stationseal_ingest_readings_total[1m])")
                if r and float(r[0]["value"][1]) >= 3:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (d / "log").read_text()
            assert time.monotonic() < deadline, "prometheus did not scrape in 30 s"
            time.sleep(0.25)
        yield url
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server.close()


def _prom(url: str, expr: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=10) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{expr}: HTTP {e.code}: {e.read().decode()[:300]}") from None
    assert body["status"] == "success", body
    res: list[dict[str, Any]] = body["data"]["result"]
    return res


def test_ingest_health_promql_runs_on_prometheus(prometheus: str) -> None:
    dash = render(CTX)[catalog.UID_INGEST]
    macros = {"__rate_interval": "4s", "__range": "1m", "__interval": "1s"}
    n = 0
    for p in dash["panels"]:
        for t in p.get("targets", []):
            if t["datasource"]["type"] != "prometheus":
                continue
            expr = interpolate(t["expr"], {}, macros)
            assert "$" not in expr, expr
            res = _prom(prometheus, expr)
            assert res, f"{p['title']}: no series for {expr}"
            assert all(v["value"][1] not in ("NaN", "+Inf") for v in res), (expr, res)
            n += 1
    assert n >= 20, n


def test_check_time_arguments() -> None:
    """--from/--to take now, a duration back from now, or RFC 3339 with an offset."""
    from dashboards.cli import _time_arg
    from stationseal.errors import UsageError

    now = 1_704_067_200.0
    assert _time_arg("now", now, "--to") == 1_704_067_200_000
    assert _time_arg("6h", now, "--from") == 1_704_067_200_000 - 6 * 3600 * 1000
    assert _time_arg("2024-01-01T08:00:00+08:00", now, "--from") == 1_704_067_200_000
    with pytest.raises(UsageError, match=r"^--from '2024-01-01T00:00:00': .*no UTC offset"):
        _time_arg("2024-01-01T00:00:00", now, "--from")
    with pytest.raises(UsageError, match=r"^--to 'yesterday': not now, a duration"):
        _time_arg("yesterday", now, "--to")
